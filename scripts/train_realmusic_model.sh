#!/usr/bin/env bash
# `make default-model` (INSTALL=1) and `make realmusic-model`: the embedded default model (issue 10), the `musicnn`
# preset (frozen musicnn MTT + MSD backbones and frozen MiniLM, both inside the packages; only
# the DeRA-MOS heads are trained) on real music (deramos-realmusic corpus: music21 scores through
# fluidsynth and Debian game-soundtrack recordings) together with a synthetic corpus.
# 1. corpora: the real-music training and held-out sets, a synthetic corpus, the synthetic
#    held-out corpus (another seed: a different corpus, not just another split);
# 2. one training directory (deramos-realmusic merge): the real training clips listed REAL_REPEAT times, the synthetic
#    ones SYNTH_REPEAT times, the dev list both corpora's dev clips (SYNTH_DEV of the synthetic ones);
# 3. DeRA-MOS training of the heads with counterfactual prompts (encoder outputs cached);
# 4. held-out evaluations: the real-music report (deramos-realmusic report) and deramos-eval on the
#    synthetic held-out set.
# Deterministic for its seeds on a CPU. Each stage's wall time goes to $WORK/stages.tsv.
set -euo pipefail
BIN=${BIN:-.venv/bin}
PY=${PY:-$BIN/python}
WORK=${WORK:-build/realmusic-model}
SYNTH_CLIPS=${SYNTH_CLIPS:-1000}
SYNTH_DEV=${SYNTH_DEV:-90}
SYNTH_REPEAT=${SYNTH_REPEAT:-1}
REAL_REPEAT=${REAL_REPEAT:-1}
# The real training corpus: 8 systems x REAL_CLIPS_PER_SYSTEM clips from REAL_PIECES scores (and
# the recordings); 150 x 240 gives 1200 clips of ~320 pieces and recordings (runs A-C).
REAL_CLIPS_PER_SYSTEM=${REAL_CLIPS_PER_SYSTEM:-150}
REAL_PIECES=${REAL_PIECES:-240}
# Issue 19: 40 % of the real clips are folk tunes arranged in six styles (drums, bass, chords),
# 25 % recordings (game soundtracks of several genres), the rest scores; half the training
# prompts are written as people write them (realmusic/phrasing.py), with not-music counterfactuals.
ARRANGEMENTS=${ARRANGEMENTS:-0.4}
PEOPLE_PROMPTS=${PEOPLE_PROMPTS:-0.5}
# Issue 19, item 5: ONE_FAMILY_SYSTEMS further training systems degrade each clip with one family
# alone at a uniform severity (the archetypes leave reverb and wobble rare and mix the rest). 0 for
# the shipped default; 2 was tried (docs/realmusic.md, "One family at a time"): no family's
# within-clip SRCC moved beyond its interval, reverb stayed unheard, and the model was not shipped.
ONE_FAMILY_SYSTEMS=${ONE_FAMILY_SYSTEMS:-0}
# The signal-processing features beside musicnn's in each frame (deramos-train --signal-features);
# empty: the preset's (rhythm tonality tuning; tuning hears wobble and detuning, shipped: docs/realmusic.md,
# "Tuning features"). "rhythm tonality envelope" swaps it for the envelope (reverb, floor): tried, not
# shipped ("Envelope features"): no family's MI ladder improved.
SIGNAL_FEATURES=${SIGNAL_FEATURES:-}
HELDOUT_CLIPS_PER_SYSTEM=${HELDOUT_CLIPS_PER_SYSTEM:-25}
EPOCHS=${EPOCHS:-30}
LR=${LR:-1e-3}
COUNTERFACTUALS=${COUNTERFACTUALS:-8}
STOP_AFTER=${STOP_AFTER:-$EPOCHS}
# The checkpoint kept: best_combined among the epochs whose dev clips give prompts about something
# else TA <= 2 on >= 90 % (deramos-train). Plain best_combined can pick an epoch before the TA branch
# has learnt those (three of four seeds did; docs/realmusic.md, "Seed spread"). For the shipped
# default both pick seed 7, epoch 16: the same weights.
SELECTION=${SELECTION:-best_combined_unrelated}
# The heads' MI branch differs a lot between seeds (dev utterance SRCC MI 0.65 vs 0.70 for seeds
# 1984 and 7, same corpus): each seed is trained and the one whose $SELECTION checkpoint has the
# higher (dev utterance SRCC MI + TA) / 2 becomes $WORK/run (scripts/pick_seed.py).
SEEDS=${SEEDS:-1984 7}
CONTRAST=${CONTRAST:-1.0}
# TA by attributes (deramos-train --ta-attributes): a reader fitted on the corpus's rendered
# attributes and on generated prompts says per kind what the clip has and what the prompt
# asserts; TA_ATTRIBUTES=0 trains the cross-attention TA branch instead (the default before).
TA_ATTRIBUTES=${TA_ATTRIBUTES:-1}
# CORPORA_ONLY=1 (`make ablation`) stops after the corpora and their merge.
CORPORA_ONLY=${CORPORA_ONLY:-0}
# INSTALL=1 (`make default-model`) copies the result into src/deramos/default_model/ (the embedded default;
# see docs/realmusic.md).
INSTALL=${INSTALL:-0}
export HF_HUB_OFFLINE=1
mkdir -p "$WORK"
: > "$WORK/stages.tsv"
stage() {   # stage NAME COMMAND...: run it and log its wall time
    local name=$1 started=$SECONDS
    shift
    echo "== $name"
    "$@"
    printf '%s\t%d\n' "$name" $((SECONDS - started)) | tee -a "$WORK/stages.tsv"
}

real_corpora() {
    rm -rf "$WORK/real-train" "$WORK/real-heldout"
    "$BIN/deramos-realmusic" corpus --set train --out "$WORK/real-train" --clips-per-system "$REAL_CLIPS_PER_SYSTEM" \
        --pieces "$REAL_PIECES" --arrangement-share "$ARRANGEMENTS" --people-prompts "$PEOPLE_PROMPTS" \
        --one-family-systems "$ONE_FAMILY_SYSTEMS" --no-progress
    # held-out prompts stay the five-kind template (the table comparable with earlier models); the
    # hand-written free-form prompts (tests/data/freeform) are paired with these clips separately
    "$BIN/deramos-realmusic" corpus --set heldout --out "$WORK/real-heldout" --clips-per-system "$HELDOUT_CLIPS_PER_SYSTEM" \
        --pieces 40 --arrangement-share "$ARRANGEMENTS" --no-progress
}
synthetic_corpora() {
    rm -rf "$WORK/synth" "$WORK/heldout"
    "$BIN/deramos-synth" --out "$WORK/synth" --clips "$SYNTH_CLIPS" --systems 12 --seed 11 --min-seconds 3 --max-seconds 4 --no-progress
    "$BIN/deramos-synth" --out "$WORK/heldout" --clips 600 --systems 12 --seed 12 --min-seconds 3 --max-seconds 4 --no-progress
    cat "$WORK"/heldout/sets/{train,dev,test}_mos_list.txt > "$WORK/heldout/all_mos_list.txt"
}
merge() {
    rm -rf "$WORK/merged"
    "$BIN/deramos-realmusic" merge --out "$WORK/merged" --corpus "$WORK/real-train:repeat=$REAL_REPEAT" \
        --corpus "$WORK/synth:repeat=$SYNTH_REPEAT:dev=$SYNTH_DEV"
}
train() {   # one run per seed; $WORK/run is the one whose $SELECTION checkpoint did best on dev
    local seed
    for seed in $SEEDS; do
        "$BIN/deramos-train" --data "$WORK/merged" --preset musicnn --epochs "$EPOCHS" --patience "$EPOCHS" --seed "$seed" \
            --batch-size 24 --lr "$LR" --counterfactual-prompts "$COUNTERFACTUALS" --contrast-weight "$CONTRAST" --stop-after "$STOP_AFTER" \
            --out "$WORK/run-seed$seed" --cache-dir "$WORK/cache" --no-progress $([ "$TA_ATTRIBUTES" = 1 ] && echo --ta-attributes) \
            $(for f in $SIGNAL_FEATURES; do echo --signal-features "$f"; done)
    done
    "$PY" scripts/pick_seed.py --selection "$SELECTION" --link "$WORK/run" "$WORK"/run-seed*
}
real_heldout() {
    "$BIN/deramos-realmusic" report --data "$WORK/real-heldout" --model "default=$WORK/run/$SELECTION" \
        --freeform tests/data/freeform --cache-dir "$WORK/cache" --json "$WORK/realmusic-heldout.json" --markdown "$WORK/realmusic-heldout.md"
}
severity_ladders() {   # MI against severity, one family at a time, on the 48 clean held-out clips
    "$BIN/deramos-realmusic" ladders --clips tests/data/realmusic_clean/clips.jsonl --model "default=$WORK/run/$SELECTION" \
        --json "$WORK/severity-ladders.json" --markdown "$WORK/severity-ladders.md" --no-progress > /dev/null
}
synthetic_heldout() {
    "$BIN/deramos-eval" --data "$WORK/heldout" --checkpoint "$WORK/run/$SELECTION" \
        --list "$WORK/heldout/all_mos_list.txt" --cache-dir "$WORK/cache" --json > "$WORK/heldout-metrics.json"
    "$PY" -c 'import json,sys; m=json.load(open(sys.argv[1]))["metrics"]; [print(l, k, {n: round(v, 3) for n, v in m[l][k].items()}) for l in m for k in m[l]]' "$WORK/heldout-metrics.json"
}

stage "real-music corpora" real_corpora
stage "synthetic corpora" synthetic_corpora
stage "merge" merge
[ "$CORPORA_ONLY" = 1 ] && exit 0
stage "training (encoding included)" train
stage "real-music held-out" real_heldout
stage "synthetic held-out" synthetic_heldout
stage "severity ladders" severity_ladders

cat "$WORK/realmusic-heldout.md" "$WORK/severity-ladders.md"
cat "$WORK/stages.tsv"
[ "$INSTALL" = 1 ] || exit 0
rm -rf src/deramos/default_model
mkdir -p src/deramos/default_model
cp "$WORK/run/$SELECTION/"{config.json,model.safetensors,tokenizer.json} src/deramos/default_model/
cp "$WORK/heldout-metrics.json" src/deramos/default_model/heldout-metrics.json
"$PY" -c 'import json,sys; json.dump(json.load(open(sys.argv[1]))["default"], open(sys.argv[2], "w"), indent=1)' \
    "$WORK/realmusic-heldout.json" src/deramos/default_model/realmusic-heldout.json
"$PY" -c 'import json,sys; json.dump(json.load(open(sys.argv[1]))["default"], open(sys.argv[2], "w"), indent=1)' \
    "$WORK/severity-ladders.json" src/deramos/default_model/severity-ladders.json
echo "default model written to src/deramos/default_model ($(du -sh src/deramos/default_model | cut -f1))"
