"""Plain helpers shared by the tests/test_runtime_*.py modules (fixtures are in conftest.py)."""
from __future__ import annotations

import numpy as np
import soundfile as sf
from click.testing import CliRunner

RATE = 16000   # the tiny preset's sample rate
WINDOW_SECONDS = 6.0


def music(seconds: float, seed: int, rate: int = RATE) -> np.ndarray:
    """A rendered music clip (float32 mono) and nothing random beyond the seed."""
    from deramos.data.synth.music import SAMPLE_RATE, random_attributes, render_clip
    from deramos.runtime.audio import resample

    rng = np.random.default_rng(seed)
    clip = render_clip(random_attributes(rng), rng, SAMPLE_RATE, seconds).astype(np.float32)
    return resample(clip, SAMPLE_RATE, rate)


def write_wav(path, wave: np.ndarray, rate: int = RATE, subtype: str = "PCM_16"):
    sf.write(str(path), wave, rate, subtype=subtype)
    return path


def run_cli(args: list[str], stdin: str | None = None):
    """deramos-run in-process; result.stdout / result.stderr / result.exit_code."""
    from deramos.runtime.cli import main

    return CliRunner().invoke(main, [str(a) for a in args], input=stdin, catch_exceptions=False)


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error: ")]


def set_field(path: str, value):
    """A manifest change that sets manifest[a][b]... = value (path 'a.b')."""
    *parents, last = path.split(".")

    def change(manifest):
        target = manifest
        for key in parents:
            target = target[key]
        target[last] = value
    return change
