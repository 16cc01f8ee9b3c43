#!/usr/bin/env bash
# `make small-model`: the previous default model (`small` preset, synthetic data only), from scratch.
# It was the embedded default until the musicnn one (scripts/train_realmusic_model.sh) replaced it;
# INSTALL=1 writes it into src/deramos/default_model/ again.
# 1. a synthetic corpus; 2. pre-train the from-scratch audio encoder to tag its attributes and
# degradations (the paper's MuQ arrives pre-trained; ours has to learn what music is made of);
# 3. DeRA-MOS training from that encoder (fine-tuned at a fifth of the heads' learning rate),
# with counterfactual prompts so the TA branch must read the prompt; 4. a held-out evaluation.
# Deterministic for its seeds on a CPU: corpus seed 11, training seed 1984; the held-out
# evaluation corpus uses seed 12 (a different corpus, not just a different split).
set -euo pipefail
BIN=${BIN:-.venv/bin}
WORK=${WORK:-build/default-model}
CLIPS=${CLIPS:-6000}
EPOCHS=${EPOCHS:-24}
PRETRAIN_EPOCHS=${PRETRAIN_EPOCHS:-6}
# STOP_AFTER < EPOCHS time-boxes a run: the LR schedule still spans $EPOCHS epochs.
STOP_AFTER=${STOP_AFTER:-$EPOCHS}
export HF_HUB_OFFLINE=1

"$BIN/deramos-synth" --out "$WORK/corpus" --clips "$CLIPS" --systems 12 --seed 11 --min-seconds 3 --max-seconds 4 --no-progress
"$BIN/deramos-pretrain" --data "$WORK/corpus" --preset small --epochs "$PRETRAIN_EPOCHS" --seed 1984 \
    --out "$WORK/pretrain" --no-progress
"$BIN/deramos-train" --data "$WORK/corpus" --preset small --epochs "$EPOCHS" --patience 6 --seed 1984 \
    --batch-size 16 --lr 1e-3 --init-audio-encoder "$WORK/pretrain" --audio-encoder-lr-scale 0.2 \
    --counterfactual-prompts 4 --stop-after "$STOP_AFTER" --out "$WORK/run" --cache-dir "$WORK/cache" --no-progress

"$BIN/deramos-synth" --out "$WORK/heldout" --clips 600 --systems 12 --seed 12 --min-seconds 3 --max-seconds 4 --no-progress
cat "$WORK"/heldout/sets/{train,dev,test}_mos_list.txt > "$WORK/heldout/all_mos_list.txt"
"$BIN/deramos-eval" --data "$WORK/heldout" --checkpoint "$WORK/run" --list "$WORK/heldout/all_mos_list.txt" --json \
    > "$WORK/heldout-metrics.json"
"$BIN/deramos-eval" --data "$WORK/heldout" --checkpoint "$WORK/run" --list "$WORK/heldout/all_mos_list.txt"

[ "${INSTALL:-0}" = 1 ] || { echo "model in $WORK/run/best_combined (INSTALL=1 installs it as the default)"; exit 0; }
rm -rf src/deramos/default_model
mkdir -p src/deramos/default_model
cp "$WORK/run/best_combined/"{config.json,model.safetensors,tokenizer.json} src/deramos/default_model/
cp "$WORK/heldout-metrics.json" src/deramos/default_model/heldout-metrics.json
echo "default model written to src/deramos/default_model ($(du -sh src/deramos/default_model | cut -f1))"
