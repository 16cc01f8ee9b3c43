"""make ablation, scaled down: every loss and seed trains on one frozen pre-trained encoder and
the report's numbers are the mean and spread of the per-run results; a real-music held-out set
gets the real-music report's numbers and a paired bootstrap whose point estimate is recomputed
here from the stored per-clip scores."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from click.testing import CliRunner
from safetensors.torch import load_file
from scipy import stats

from deramos.data.synth.corpus import latent_mi
from deramos.data.synth.degrade import add_noise, hard_clip, low_pass
from deramos.training.ablation import main

pytestmark = pytest.mark.usefixtures("torch_single_thread")

CLEAN = Path(__file__).parent / "data" / "realmusic_clean"
# system -> degradations (name -> severity): clean, medium, heavy (latent MI <= 2)
SYSTEMS = {"S001": {}, "S002": {"noise": 0.4, "lowpass": 0.5}, "S003": {"noise": 1.0, "clipping": 1.0}}
APPLY = {"noise": add_noise, "clipping": hard_clip, "lowpass": low_pass}


def real_music_heldout(root: Path, rate: int = 16000) -> Path:
    """A deramos-realmusic-layout held-out set from the shipped clean clips: 3 systems of 11 clips
    (clean, medium and heavily degraded; MI from the degradations), every other clip with its
    mismatched prompt (TA 1.8 instead of 4.2)."""
    clips = [json.loads(line) for line in (CLEAN / "clips.jsonl").read_text().splitlines()]
    (root / "wav").mkdir(parents=True)
    (root / "sets").mkdir()
    (root / "system_mos").mkdir()
    rng = np.random.default_rng(0)
    meta, listed, system_mos = [], [], {}
    for index, clip in enumerate(clips):
        system = list(SYSTEMS)[index % 3]
        wave, clip_rate = sf.read(CLEAN / clip["path"], dtype="float32", always_2d=True)
        wave = wave.mean(axis=1)[: clip_rate * 4]
        for name, severity in SYSTEMS[system].items():
            wave = APPLY[name](wave, severity, rng, clip_rate)
        name = f"audiomos2025-track1-{system}_P{index:03d}.wav"   # the MusicEval naming
        sf.write(root / "wav" / name, wave, clip_rate)
        own = index % 2 == 0   # every other clip is described wrongly
        mi, ta = latent_mi(SYSTEMS[system]), 4.2 if own else 1.8
        prompt = clip["prompt"] if own else clip["mismatched_prompt"]
        meta.append({"wav": name, "system": system, "prompt": prompt, "rendered_attributes": clip["attributes"],
                     "degradations": SYSTEMS[system], "mi": mi, "ta": ta})
        listed.append(f"{name},{mi},{ta}\n")
        system_mos.setdefault(system, []).append((mi, ta))
    (root / "synth_meta.jsonl").write_text("".join(json.dumps(m) + "\n" for m in meta))
    (root / "sources.json").write_text(json.dumps({"set": "heldout", "clips": len(meta), "source": str(CLEAN)}))
    (root / "sets" / "test_mos_list.txt").write_text("".join(listed))
    (root / "sets" / "train_mos_list.txt").write_text("")
    (root / "sets" / "dev_mos_list.txt").write_text("")
    (root / "prompt_info.txt").write_text("".join(f"P{i:03d}\t{m['prompt']}\n" for i, m in enumerate(meta)))
    (root / "system_mos" / "system_mos_phase1.csv").write_text(
        "sysID,MI,TA\n" + "".join(f"{s},{np.mean(v, axis=0)[0]:.6f},{np.mean(v, axis=0)[1]:.6f}\n" for s, v in system_mos.items()))
    return root


def test_ablation_report_matches_its_runs(tmp_path):
    out, report = tmp_path / "ablation", tmp_path / "ablation.md"
    real = real_music_heldout(tmp_path / "real")
    result = CliRunner().invoke(main, ["--out", str(out), "--report", str(report), "--preset", "tiny", "--clips", "60",
                                       "--heldout-clips", "40", "--pretrain-epochs", "1", "--epochs", "1",
                                       "--seeds", "1,2", "--losses", "dera,pointwise", "--counterfactual-prompts", "2",
                                       "--heldout", f"real={real}", "--resamples", "200"])
    assert result.exit_code == 0, (result.output, result.exception)
    runs = {name: json.loads((out / f"{name}.json").read_text())
            for name in ("dera-seed1", "dera-seed2", "pointwise-seed1", "pointwise-seed2")}
    summary = json.loads((out / "summary.json").read_text())
    text = report.read_text()
    for heldout in ("synthetic", "real"):
        for loss in ("dera", "pointwise"):
            values = [runs[f"{loss}-seed{s}"]["heldout"][heldout]["metrics"]["utterance"]["TA"]["SRCC"] for s in (1, 2)]
            mean, std = summary["table"][heldout][loss]["utterance TA SRCC"]
            assert mean == pytest.approx(np.mean(values)) and std == pytest.approx(np.std(values))
        assert f"## Held-out set `{heldout}`" in text
    assert summary["table"]["real"]["dera"]["runs"] == 2 and summary["table"]["real"]["dera"]["clips"] == 48
    assert "AUC" in summary["table"]["real"]["dera"] and "AUC" not in summary["table"]["synthetic"]["dera"]
    # the bootstrap's point estimate: seed-averaged scores, SRCC against the labels (scipy as the oracle)
    averaged = {loss: {k: np.mean([runs[f"{loss}-seed{s}"]["heldout"]["real"]["predictions"][k] for s in (1, 2)], axis=0)
                       for k in ("mi", "mi_true", "ta_matched", "ta_mismatched")} for loss in ("dera", "pointwise")}
    srcc = {loss: stats.spearmanr(a["mi"], a["mi_true"]).statistic for loss, a in averaged.items()}
    wins = {loss: np.mean(a["ta_matched"] > a["ta_mismatched"]) for loss, a in averaged.items()}
    compared = summary["bootstrap"]["real"]["pointwise"]
    assert compared["utterance MI SRCC"]["difference"] == pytest.approx(srcc["dera"] - srcc["pointwise"], abs=1e-9)
    assert compared["paired wins"]["difference"] == pytest.approx(wins["dera"] - wins["pointwise"], abs=1e-9)
    low, high = compared["utterance MI SRCC"]["ci95"]
    assert low <= high and 0.0 <= compared["utterance MI SRCC"]["p_ahead"] <= 1.0
    assert "DeRA-MOS minus each baseline on `real`" in text and "| pointwise | " in text
    encoder = load_file(str(out / "pretrain" / "audio_encoder.safetensors"))
    for name in runs:   # frozen: every run kept the shared pre-trained encoder as it was
        weights = load_file(str(out / "runs" / name / "last" / "model.safetensors"))
        assert all(np.array_equal(weights[f"audio_encoder.{k}"].numpy(), v.numpy()) for k, v in encoder.items())
    assert "pre-trained once" in text and "2 counterfactual prompts per clip" in text


def test_pretrained_presets_need_their_corpus_and_heldout_set(tmp_path):
    result = CliRunner().invoke(main, ["--out", str(tmp_path / "a"), "--preset", "musicnn"])
    assert result.exit_code == 2
    assert "--preset musicnn: give the training corpus (--data) and at least one --heldout" in result.output
    result = CliRunner().invoke(main, ["--out", str(tmp_path / "a"), "--preset", "musicnn", "--data", str(tmp_path),
                                       "--heldout", "real"])
    assert result.exit_code == 2 and "'real': expected NAME=DIR" in result.output
