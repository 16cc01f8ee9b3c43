"""Write the example clips in examples/ (deterministic): each with a prompt that describes it
and one that does not, so `make demo` can show TA dropping for the mismatch."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import soundfile as sf

from deramos.synth import change_attribute, prompt_for, render_clip
from deramos.synth.music import SAMPLE_RATE, ClipAttributes

EXAMPLES = {
    "calm_piano.wav": ClipAttributes(instrument="piano", tempo_bpm=70, mode="minor", genre="ambient", dynamics="soft", key=9),
    "fast_rock_synth.wav": ClipAttributes(instrument="synth", tempo_bpm=140, mode="major", genre="rock", dynamics="loud", key=4),
    "waltz_flute.wav": ClipAttributes(instrument="flute", tempo_bpm=100, mode="major", genre="waltz", dynamics="soft", key=7),
}


def main(out: str = "examples") -> None:
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    lines = []
    for index, (name, attrs) in enumerate(EXAMPLES.items()):
        rng = np.random.default_rng(index)
        audio = render_clip(attrs, rng, SAMPLE_RATE, seconds=6.0)
        sf.write(out_dir / name, audio, SAMPLE_RATE, subtype="PCM_16")
        other = attrs
        for kind in ("instrument", "tempo", "mood", "genre", "dynamics"):
            other = change_attribute(other, kind, rng)
        lines.append({"path": name, "prompt": prompt_for(attrs), "mismatched_prompt": prompt_for(other)})
    (out_dir / "prompts.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))


if __name__ == "__main__":
    main(*sys.argv[1:])
