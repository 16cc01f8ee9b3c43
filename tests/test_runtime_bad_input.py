"""Bad input never crashes and never stops a batch: through the API and through deramos-run."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from runtime_helpers import RATE, error_lines, music, run_cli, write_wav

from deramos.runtime import BundleError, Scorer, ScoringError
from deramos.runtime.bundle import load_bundle

PROMPT = "a calm piano piece"
TEN_MINUTES = 600.0


def tone(seconds: float, rate: int = RATE) -> np.ndarray:
    """500 Hz at 16 kHz repeats every 32 samples, so every 6 s window of it is identical."""
    t = np.arange(int(seconds * rate)) / rate
    return (0.3 * np.sin(2 * np.pi * 500 * t)).astype(np.float32)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("inputs")
    good = music(3.0, seed=1)
    nan_wave = good.copy()
    nan_wave[100] = np.nan
    inf_wave = good.copy()
    inf_wave[-1] = np.inf
    six_channels = np.stack([music(2.0, seed=10 + c, rate=96000) for c in range(6)], axis=1)
    (root / "empty.wav").write_bytes(b"")
    (root / "garbage.wav").write_bytes(bytes(np.random.default_rng(0).integers(0, 256, 4000, dtype=np.uint8)))
    paths = {
        "good": write_wav(root / "good.wav", good),
        "missing": root / "missing.wav",
        "empty": root / "empty.wav",
        "garbage": root / "garbage.wav",
        "zero_frames": write_wav(root / "zero_frames.wav", np.zeros(0, np.float32)),
        "ten_ms": write_wav(root / "ten_ms.wav", good[:160]),
        "silence": write_wav(root / "silence.wav", np.zeros(2 * RATE, np.float32)),
        "nan": write_wav(root / "nan.wav", nan_wave, subtype="FLOAT"),
        "inf": write_wav(root / "inf.wav", inf_wave, subtype="FLOAT"),
        "pcm_u8": write_wav(root / "pcm_u8.wav", good, subtype="PCM_U8"),
        "float32": write_wav(root / "float32.wav", good, subtype="FLOAT"),
        "six_channels_96k": write_wav(root / "six.flac", six_channels, rate=96000, subtype="PCM_24"),
        "ten_minutes": write_wav(root / "ten_minutes.wav", tone(TEN_MINUTES)),
        "fifo": root / "fifo.wav",
        "symlink_loop": root / "loop.wav",
    }
    os.mkfifo(paths["fifo"])                   # reading it would block forever: refused by type
    paths["symlink_loop"].symlink_to("loop.wav")
    assert sf.info(str(paths["pcm_u8"])).subtype == "PCM_U8" and sf.info(str(paths["six_channels_96k"])).channels == 6
    return paths


# name -> the one-line error (after "<path>: "), or None when the clip must be scored
FILE_CASES = {
    "missing": "file not found",
    "empty": "empty file (0 bytes)",
    "garbage": "cannot decode audio (",
    "zero_frames": "no samples",
    "ten_ms": "too short (0.010 s < 0.100 s minimum)",
    "nan": "contains NaN or infinite samples",
    "inf": "contains NaN or infinite samples",
    "silence": None,
    "pcm_u8": None,
    "float32": None,
    "six_channels_96k": None,
    "ten_minutes": None,
    "fifo": "not a regular file (a FIFO / named pipe)",
    "symlink_loop": "symlink loop (the link points back to itself)",
}


# --- API -----------------------------------------------------------------------------------


@pytest.mark.parametrize("case", sorted(FILE_CASES))
def test_file_inputs_through_the_api(runtime_scorer, files, case):
    path, expected = files[case], FILE_CASES[case]
    scores = runtime_scorer.score_batch([files["good"], path, files["good"]], PROMPT)
    assert scores[0].ok and scores[2].ok                        # the batch mates are scored
    assert scores[0].mi == pytest.approx(scores[2].mi, abs=1e-5)     # batch mates: equal up to rounding
    if expected is None:
        assert scores[1].ok, scores[1].error
        assert 1.0 <= scores[1].mi <= 5.0 and 1.0 <= scores[1].ta <= 5.0
    else:
        assert scores[1].mi is None and scores[1].ta is None
        assert scores[1].error.startswith(f"{path}: {expected}")
        assert "\n" not in scores[1].error
        with pytest.raises(ScoringError) as raised:
            runtime_scorer.score(path, PROMPT)
        assert str(raised.value) == scores[1].error


def test_ten_minute_clip_is_scored_in_windows(runtime_scorer, files):
    whole = runtime_scorer.score(files["ten_minutes"], PROMPT)
    decoded = sf.read(str(files["ten_minutes"]), dtype="float32", frames=6 * RATE)[0]   # PCM_16-rounded
    one_window = runtime_scorer.score(decoded, PROMPT, sample_rate=RATE)
    assert whole.windows == 100 and whole.seconds == pytest.approx(TEN_MINUTES)
    assert whole.mi == pytest.approx(one_window.mi, abs=1e-4)    # identical windows, same mean
    assert whole.ta == pytest.approx(one_window.ta, abs=1e-4)


def test_decoded_formats_score_like_the_array(runtime_scorer, files):
    reference = runtime_scorer.score(sf.read(str(files["float32"]), dtype="float32")[0], PROMPT, sample_rate=RATE)
    assert runtime_scorer.score(files["float32"], PROMPT).mi == pytest.approx(reference.mi, abs=1e-6)
    assert runtime_scorer.score(files["pcm_u8"], PROMPT).mi == pytest.approx(reference.mi, abs=0.05)
    six, rate = sf.read(str(files["six_channels_96k"]), dtype="float32")
    from_file = runtime_scorer.score(files["six_channels_96k"], PROMPT)
    from_array = runtime_scorer.score(six, PROMPT, sample_rate=rate)       # (samples, 6) at 96 kHz
    assert from_file.mi == pytest.approx(from_array.mi, abs=1e-6) and from_file.seconds == pytest.approx(2.0)


@pytest.mark.parametrize("wave, expected", [
    (np.zeros(0, np.float32), "no samples"),
    (np.ones(160, np.float32) * 0.1, "too short (0.010 s < 0.100 s minimum)"),
    (np.array([0.1, np.nan] * 8000, np.float32), "contains NaN or infinite samples"),
    (np.array([0.1, -np.inf] * 8000, np.float64), "contains NaN or infinite samples"),
    (np.zeros((2, 3, 4000), np.float32), "expected a 1-D or 2-D array, got 3-D"),
], ids=["zero-length", "10ms", "nan", "inf", "3d"])
def test_bad_arrays_fail_alone(runtime_scorer, wave, expected):
    good = music(2.0, seed=3)
    scores = runtime_scorer.score_batch([good, wave, good], PROMPT, sample_rate=RATE)
    assert scores[0].ok and scores[2].ok
    assert scores[1].error == f"item 1: {expected}"


def test_digital_silence_array_is_scored(runtime_scorer):
    score = runtime_scorer.score(np.zeros(3 * RATE, np.float32), PROMPT, sample_rate=RATE)
    assert score.ok and 1.0 <= score.mi <= 5.0


@pytest.mark.parametrize("prompt", ["", "   \t\n "])
def test_empty_prompts_are_item_errors(runtime_scorer, files, prompt):
    scores = runtime_scorer.score_batch([files["good"], files["good"]], [prompt, PROMPT])
    assert scores[0].error == f"{files['good']}: empty prompt"
    assert scores[1].ok


def test_a_20000_character_prompt_is_truncated(runtime_scorer, files):
    huge = ("calm piano with strings " * 900)[:20000]
    assert len(huge) == 20000
    scored = runtime_scorer.score(files["good"], huge)
    prefix = runtime_scorer.score(files["good"], "calm piano with strings " * 40)   # > 32 tokens too
    assert scored.ta == pytest.approx(prefix.ta, abs=1e-6)


@pytest.mark.parametrize("prompt", ["música tranquila para piano", "穏やかなピアノ曲", "🎹 calm piano 🎻", "Ärger über ñ"])
def test_non_ascii_prompts_are_scored(runtime_scorer, files, prompt):
    score = runtime_scorer.score(files["good"], prompt)
    assert score.ok and 1.0 <= score.ta <= 5.0


# --- CLI -----------------------------------------------------------------------------------


@pytest.mark.parametrize("case", sorted(FILE_CASES))
def test_file_inputs_through_the_cli(runtime_bundle, files, case):
    path, expected = files[case], FILE_CASES[case]
    result = run_cli(["--bundle", runtime_bundle, "--json", "--prompt", PROMPT, files["good"], path])
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert [row["path"] for row in rows] == [str(files["good"]), str(path)]
    assert rows[0]["error"] is None and 1.0 <= rows[0]["mi"] <= 5.0
    assert "Traceback" not in result.stderr
    if expected is None:
        assert result.exit_code == 0, result.stderr
        assert rows[1]["error"] is None and 1.0 <= rows[1]["mi"] <= 5.0
    else:
        assert result.exit_code == 1
        assert rows[1]["mi"] is None and rows[1]["error"].startswith(f"{path}: {expected}")
        assert error_lines(result.stderr) == [f"error: {rows[1]['error']}"]


def test_cli_text_output_for_a_person(runtime_bundle, files):
    result = run_cli(["--bundle", runtime_bundle, files["good"], PROMPT])
    assert result.exit_code == 0
    line = result.stdout.strip()
    assert line.startswith(f"{files['good']}  MI ") and "  TA " in line
    mi = float(line.split("MI ")[1].split()[0])
    assert 1.0 <= mi <= 5.0


def test_cli_many_files_one_bad(runtime_bundle, files):
    result = run_cli(["--bundle", runtime_bundle, "--prompt", PROMPT, files["good"], files["missing"], files["silence"]])
    assert result.exit_code == 1
    assert [line.split("  ")[0] for line in result.stdout.splitlines()] == [str(files["good"]), str(files["silence"])]
    assert error_lines(result.stderr) == [f"error: {files['missing']}: file not found"]


@pytest.mark.parametrize("prompt", ["", "  "])
def test_cli_empty_prompt(runtime_bundle, files, prompt):
    result = run_cli(["--bundle", runtime_bundle, files["good"], prompt])
    assert result.exit_code == 1 and result.stdout == ""
    assert error_lines(result.stderr) == [f"error: {files['good']}: empty prompt"]


def test_cli_huge_and_non_ascii_prompts(runtime_bundle, files):
    lines = [json.dumps({"path": str(files["good"]), "prompt": p}, ensure_ascii=False)
             for p in ("calm piano " * 2000, "穏やかなピアノ曲 🎹", "música tranquila")]
    result = run_cli(["--bundle", runtime_bundle, "--jsonl", "-"], stdin="\n".join(lines) + "\n")
    assert result.exit_code == 0, result.stderr
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert [row["prompt"] for row in rows] == [json.loads(line)["prompt"] for line in lines]
    assert all(row["error"] is None and 1.0 <= row["ta"] <= 5.0 for row in rows)


def test_cli_jsonl_bad_lines_are_item_errors_in_order(runtime_bundle, files, tmp_path):
    lines = [
        json.dumps({"path": str(files["good"]), "prompt": PROMPT, "id": "a"}),
        "{not json",
        json.dumps({"prompt": PROMPT}),
        json.dumps({"path": str(files["good"])}),
        json.dumps(["a list"]),
        "",                                                      # blank lines are skipped
        json.dumps({"path": str(files["garbage"]), "prompt": PROMPT}),
        json.dumps({"path": str(files["silence"]), "prompt": PROMPT, "id": "z"}),
    ]
    source = tmp_path / "items.jsonl"
    source.write_text("\n".join(lines) + "\n")
    out = tmp_path / "scores.jsonl"
    result = run_cli(["--bundle", runtime_bundle, "--jsonl", source, "--out", out])
    assert result.exit_code == 1 and result.stdout == ""
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 7
    assert rows[0]["id"] == "a" and rows[0]["error"] is None and 1.0 <= rows[0]["mi"] <= 5.0
    assert rows[1] == {"line": 2, "mi": None, "ta": None, "error": "line 2: not valid JSON (Expecting property name enclosed in double quotes)"}
    assert rows[2]["error"] == 'line 3: missing "path" (a string)'
    assert rows[3]["error"] == f'line 4 ({files["good"]}): missing "prompt" (a string)'
    assert rows[4]["error"].startswith("line 5: expected an object")
    assert rows[5]["error"].startswith(f"{files['garbage']}: cannot decode audio")
    assert rows[6]["id"] == "z" and rows[6]["error"] is None
    assert len(error_lines(result.stderr)) == 5


# --- broken bundles --------------------------------------------------------------------------


@pytest.fixture
def bundle_copy(runtime_bundle, tmp_path):
    return shutil.copytree(runtime_bundle, tmp_path / "bundle")


def _bundle_failure(bundle, files) -> tuple[str, str]:
    with pytest.raises(BundleError) as raised:
        Scorer.load(bundle, backend="onnxruntime-cpu")
    result = run_cli(["--bundle", bundle, files["good"], PROMPT])
    assert result.exit_code == 2 and result.stdout == ""
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    return str(raised.value), result.stderr.strip()


def test_bundle_with_a_missing_file(bundle_copy, files):
    (bundle_copy / "heads.onnx").unlink()
    api, cli = _bundle_failure(bundle_copy, files)
    assert api == f"{bundle_copy / 'heads.onnx'}: missing from the bundle (listed in manifest.json)"
    assert cli == f"error: {api}"


def test_bundle_with_a_tampered_file(bundle_copy, files):
    graph = bundle_copy / "text_encoder.onnx"
    data = bytearray(graph.read_bytes())
    data[len(data) // 2] ^= 0xFF
    graph.write_bytes(bytes(data))
    api, cli = _bundle_failure(bundle_copy, files)
    assert api == f"{graph}: sha256 does not match manifest.json (file modified or corrupt)"
    assert cli == f"error: {api}"


def test_bundle_from_a_newer_format(bundle_copy, files):
    manifest = json.loads((bundle_copy / "manifest.json").read_text())
    manifest["format_version"] = 99
    (bundle_copy / "manifest.json").write_text(json.dumps(manifest))
    api, cli = _bundle_failure(bundle_copy, files)
    assert "bundle format 99 is newer than this runtime supports (1); upgrade deramos" in api
    assert cli == f"error: {api}"


def test_missing_bundle_directory(tmp_path, files):
    result = run_cli(["--bundle", tmp_path / "nowhere", files["good"], PROMPT])
    assert result.exit_code == 2
    assert result.stderr == f"error: {tmp_path / 'nowhere'}: bundle directory not found\n"


def test_bundle_loads_unchanged(runtime_bundle):
    assert load_bundle(runtime_bundle).precisions() == ["fp32", "fp16"]


# --- prompts of the wrong kind ----------------------------------------------------------------


@pytest.mark.parametrize("prompts, kind", [(5, "int"), (b"calm piano", "bytes"), ({"p": 1}, "dict"), (None, "NoneType"),
                                           (3.5, "float")])
def test_a_prompt_that_is_not_a_string_fails_every_item(runtime_scorer, files, prompts, kind):
    scores = runtime_scorer.score_batch([files["good"], files["silence"]], prompts)
    assert [s.error for s in scores] == [f"{files['good']}: prompt must be a string, got {kind}",
                                         f"{files['silence']}: prompt must be a string, got {kind}"]
    with pytest.raises(ScoringError, match=f"prompt must be a string, got {kind}"):
        runtime_scorer.score(files["good"], prompts)


def test_one_bad_prompt_in_a_list_fails_only_its_item(runtime_scorer, files):
    scores = runtime_scorer.score_batch([files["good"]] * 4, (PROMPT, None, 7, PROMPT))
    assert [s.error for s in scores] == [None, f"{files['good']}: prompt must be a string, got NoneType",
                                         f"{files['good']}: prompt must be a string, got int", None]
    assert scores[0].mi == pytest.approx(scores[3].mi, abs=1e-5)


@pytest.mark.parametrize("prompt", ["\u200b\u200d\t", "\ufeff", "\x00\x07 \x1b", "\u2028\u00a0\u3000", "\u200e\u2060"])
def test_invisible_prompts_are_empty(runtime_scorer, files, prompt):
    scores = runtime_scorer.score_batch([files["good"], files["good"]], [prompt, PROMPT])
    assert scores[0].error == f"{files['good']}: empty prompt" and scores[1].ok


def test_a_zero_width_character_inside_words_is_fine(runtime_scorer, files):
    assert runtime_scorer.score(files["good"], "calm\u200bpiano").ok


def test_a_lone_surrogate_in_a_prompt_is_an_item_error(runtime_scorer, files):
    scores = runtime_scorer.score_batch([files["good"], files["good"]], ["calm \ud800 piano", PROMPT])
    assert scores[0].error == (f"{files['good']}: prompt holds a lone surrogate (U+D800 at character 5), "
                               f"which is not text")
    assert scores[1].ok


# --- names and encodings (a real deramos-run process: its real stdout and stderr) ----------------


def deramos_run(*args, stdin: bytes | None = None) -> subprocess.CompletedProcess:
    script = Path(sys.executable).parent / "deramos-run"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONIOENCODING": ""}
    return subprocess.run([script, *args], input=stdin, capture_output=True, env=env, timeout=120)


def printable(text: str) -> str:
    return text.encode("utf-8", "backslashreplace").decode()


@pytest.fixture(scope="module")
def odd_names(files, tmp_path_factory):
    """A valid WAV and an empty file whose names are not UTF-8 (byte 0xff)."""
    root = os.fsencode(tmp_path_factory.mktemp("names"))
    good, empty = os.path.join(root, b"clip-\xff.wav"), os.path.join(root, b"empty-\xff.wav")
    shutil.copyfile(files["good"], good)
    open(empty, "wb").close()
    return good, empty


def test_a_file_name_that_is_not_utf8_is_scored(runtime_scorer, files, odd_names):
    good, empty = odd_names
    name = os.fsdecode(good)
    assert "\udcff" in name
    scores = runtime_scorer.score_batch([good, name, Path(name), empty, files["good"]], PROMPT)
    assert [s.ok for s in scores] == [True, True, True, False, True]
    assert [scores[i].mi for i in (1, 2, 4)] == pytest.approx([scores[0].mi] * 3, abs=1e-5)
    assert scores[0].name == name
    assert scores[3].error == f"{os.fsdecode(empty)}: empty file (0 bytes)"


def test_a_file_name_that_is_not_utf8_through_the_cli(runtime_bundle, odd_names):
    good, empty = odd_names
    text = deramos_run(b"--bundle", os.fsencode(runtime_bundle), b"--prompt", PROMPT.encode(), good, empty)
    assert text.returncode == 1 and b"Traceback" not in text.stderr
    assert text.stdout.decode().startswith(f"{printable(os.fsdecode(good))}  MI ")
    assert text.stderr.decode() == f"error: {printable(os.fsdecode(empty))}: empty file (0 bytes)\n"
    as_json = deramos_run(b"--bundle", os.fsencode(runtime_bundle), b"--json", b"--prompt", PROMPT.encode(), good, empty)
    rows = [json.loads(line) for line in as_json.stdout.decode().splitlines()]
    assert [os.fsencode(row["path"]) for row in rows] == [good, empty]       # the bytes survive the round trip
    assert rows[0]["error"] is None and rows[1]["error"] == f"{os.fsdecode(empty)}: empty file (0 bytes)"


def test_the_console_script_writes_everything_before_its_fast_exit(runtime_bundle, files, tmp_path):
    """deramos-run skips interpreter teardown (runtime/cli.py entry): every line must still
    reach a pipe and a --out file, with the exit status main() chose."""
    clips = [str(files["good"])] * 60 + [str(files["missing"])]
    piped = deramos_run("--bundle", str(runtime_bundle), "--json", "-q", "--prompt", PROMPT, *clips)
    assert piped.returncode == 1
    rows = [json.loads(line) for line in piped.stdout.decode().splitlines()]
    assert len(rows) == 61 and all(r["error"] is None for r in rows[:60]) and "not found" in rows[60]["error"]
    out = tmp_path / "scores.jsonl"
    written = deramos_run("--bundle", str(runtime_bundle), "--json", "-q", "--out", str(out), "--prompt", PROMPT, *clips[:60])
    assert written.returncode == 0 and written.stdout == b""
    assert [json.loads(line)["mi"] for line in out.read_text().splitlines()] == [r["mi"] for r in rows[:60]]
    usage = deramos_run("--bundle", str(runtime_bundle), str(files["good"]))
    assert usage.returncode == 2 and b"give one clip and its prompt" in usage.stderr


def test_lone_surrogates_in_jsonl_fail_their_lines_only(runtime_bundle, files):
    lines = [json.dumps({"path": str(files["good"]), "prompt": "calm \ud800 piano"}),
             json.dumps({"path": "clip-\ud800.wav", "prompt": PROMPT}),
             json.dumps({"path": str(files["good"]), "prompt": PROMPT, "id": 3})]
    assert "\\ud800" in lines[0]                                   # JSON's escape, as a producer writes it
    result = deramos_run("--bundle", str(runtime_bundle), "--jsonl", "-", stdin="\n".join(lines).encode() + b"\n")
    assert result.returncode == 1 and b"Traceback" not in result.stderr
    rows = [json.loads(line) for line in result.stdout.decode().splitlines()]
    assert [row["prompt"] for row in rows] == ["calm \ud800 piano", PROMPT, PROMPT]
    assert rows[0]["error"] == f"{files['good']}: prompt holds a lone surrogate (U+D800 at character 5), which is not text"
    assert rows[1]["error"] == "clip-\ud800.wav: file name holds a lone surrogate (U+D800), which names no file"
    assert rows[2]["id"] == 3 and rows[2]["error"] is None and 1.0 <= rows[2]["mi"] <= 5.0
    assert error_lines(result.stderr.decode()) == [printable(f"error: {rows[0]['error']}"),
                                                   printable(f"error: {rows[1]['error']}")]


def test_jsonl_file_and_stdin_agree_on_a_bom_and_on_latin1(runtime_bundle, files, tmp_path):
    good = json.dumps({"path": str(files["good"]), "prompt": PROMPT}).encode()
    latin1 = json.dumps({"path": str(files["good"]), "prompt": "café"}, ensure_ascii=False).encode("latin-1")
    data = b"\xef\xbb\xbf" + good + b"\n" + latin1 + b"\n" + good + b"\n"
    source = tmp_path / "items.jsonl"
    source.write_bytes(data)
    from_file = deramos_run("--bundle", str(runtime_bundle), "--jsonl", str(source))
    from_stdin = deramos_run("--bundle", str(runtime_bundle), "--jsonl", "-", stdin=data)
    at = latin1.index(b"\xe9")
    for result in (from_file, from_stdin):
        assert result.returncode == 1, result.stderr
        rows = [json.loads(line) for line in result.stdout.decode().splitlines()]
        assert [row["error"] for row in rows] == [
            None, f"line 2: not UTF-8 text (byte 0xe9 at byte {at}; save the file as UTF-8)", None]
        assert rows[0]["mi"] == pytest.approx(rows[2]["mi"], abs=1e-3)   # printed rounded: a last digit may differ
    assert from_file.stdout == from_stdin.stdout and from_file.stderr == from_stdin.stderr


# --- newcomer frictions -------------------------------------------------------------------------


def test_two_clips_without_prompt_are_refused(runtime_bundle, files, tmp_path):
    result = run_cli(["--bundle", runtime_bundle, files["good"], files["silence"]])
    assert result.exit_code == 2 and result.stdout == ""
    assert f"the prompt '{files['silence']}' is an audio file; to score several clips give their prompt " \
           f"with --prompt" in result.stderr
    with_prompt = run_cli(["--bundle", runtime_bundle, "--prompt", PROMPT, files["good"], files["silence"]])
    assert with_prompt.exit_code == 0 and len(with_prompt.stdout.splitlines()) == 2
    notes = tmp_path / "notes.txt"                  # an existing file that is not audio is a prompt
    notes.write_text("x")
    assert run_cli(["--bundle", runtime_bundle, files["good"], notes]).exit_code == 0


def test_quiet_still_reports_errors(runtime_bundle, files):
    result = run_cli(["-q", "--bundle", runtime_bundle, "--prompt", PROMPT, files["good"], files["missing"]])
    assert result.exit_code == 1
    assert result.stdout.startswith(f"{files['good']}  MI ") and len(result.stdout.splitlines()) == 1
    assert result.stderr == f"error: {files['missing']}: file not found\n"


# --- memory ---------------------------------------------------------------------------------------


def test_decoding_ahead_stays_within_its_byte_budget(runtime_bundle, tmp_path):
    """Three 20-minute files: with a budget that fits one decoded file, one is held at a time;
    with the default 1 GiB all three are decoded ahead. Measured with tracemalloc (numpy's
    buffers are traced), on the real decoder and backend."""
    import tracemalloc

    seconds = 20 * 60
    paths = [write_wav(tmp_path / f"long{i}.wav", tone(seconds)) for i in range(3)]
    one_file = seconds * RATE * 4                 # float32 mono at the model's rate: 76.8 MB

    def peak(budget: int) -> tuple[int, list]:
        with Scorer.load(runtime_bundle, backend="onnxruntime-cpu", decode_budget=budget) as scorer:
            tracemalloc.start()
            try:
                scores = scorer.score_batch(paths, PROMPT)
                return tracemalloc.get_traced_memory()[1], scores
            finally:
                tracemalloc.stop()

    bounded, scores = peak(200 * 10**6)
    assert [(s.ok, s.windows) for s in scores] == [(True, 200)] * 3
    assert [scores[i].mi for i in (1, 2)] == pytest.approx([scores[0].mi] * 2, abs=1e-5)
    unbounded, _ = peak(1 << 30)
    print(f"peak traced: bounded {bounded / 1e6:.1f} MB, unbounded {unbounded / 1e6:.1f} MB, one file {one_file / 1e6:.1f} MB")
    assert one_file < bounded < 1.5 * one_file, bounded
    assert unbounded > 2.5 * one_file, unbounded
