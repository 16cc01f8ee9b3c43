"""deramos-run on hostile input and a hostile environment: nested or oversized JSONL lines, a
terminal that cannot encode a name, closed standard streams, SIGTERM, --out naming an input,
arguments that are clips rather than prompts, invisible prompts, absurd --threads, a first-use
export held by another process, ONNX Runtime's own log lines, and where JSONL paths lead.

Every test runs the real CLI (in-process through click, or the real console script in a
subprocess where the process's own streams, signals and exit matter) on a real bundle."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from runtime_helpers import RATE, error_lines, music, run_cli, write_wav

from deramos.runtime import Scorer

PROMPT = "a calm piano piece"
REPO = Path(__file__).resolve().parents[1]
SCRIPT = Path(sys.executable).parent / "deramos-run"


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    root = tmp_path_factory.mktemp("clips")
    good = write_wav(root / "good.wav", music(3.0, seed=21))
    silence = write_wav(root / "silence.wav", np.zeros(2 * RATE, np.float32))
    return {"root": root, "good": good, "silence": silence, "missing": root / "missing.wav"}


def deramos_run(*args, data: bytes | None = None, env: dict | None = None, close_fd: int | None = None, **popen):
    """The real console script, `data` on its stdin; `close_fd` 1 or 2 starts it with stdout or
    stderr closed (>&-); other keywords go to subprocess.run."""
    environment = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONIOENCODING": "", **(env or {})}
    environment.pop("DERAMOS_BUNDLE", None)
    preexec = (lambda: os.close(close_fd)) if close_fd is not None else None
    return subprocess.run([str(SCRIPT), *map(str, args)], input=data, capture_output=close_fd is None,
                          env=environment, timeout=180, preexec_fn=preexec, **popen)


def jsonl(*records) -> str:
    return "".join((r if isinstance(r, str) else json.dumps(r, ensure_ascii=False)) + "\n" for r in records)


def rows_of(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines()]


# --- 1. a JSONL line nested 100 000 deep, or with a 5000-digit number ------------------------------


def _nested(levels: int) -> str:
    """An object whose "x" holds lists nested so that the line is `levels` deep in all."""
    return ('{"path": "%s", "prompt": "%s", "x": ' % ("{path}", PROMPT)) + "[" * (levels - 1) + "]" * (levels - 1) + "}"


@pytest.mark.parametrize("source", ["file", "stdin"])
def test_deep_and_huge_jsonl_lines_fail_alone(runtime_bundle, clips, tmp_path, source):
    good = {"path": str(clips["good"]), "prompt": PROMPT}
    lines = jsonl(good,
                  "[" * 100_000 + "]" * 100_000,
                  '{"path": "%s", "prompt": "%s", "n": %s}' % (clips["good"], PROMPT, "9" * 5000),
                  _nested(100).replace("{path}", str(clips["good"])),      # at the limit: scored
                  _nested(101).replace("{path}", str(clips["good"])),      # one deeper: refused
                  {**good, "id": 6})
    if source == "file":
        items = tmp_path / "items.jsonl"
        items.write_text(lines)
        result = run_cli(["--bundle", runtime_bundle, "--jsonl", items])
    else:
        result = run_cli(["--bundle", runtime_bundle, "--jsonl", "-"], stdin=lines)
    assert result.exit_code == 1, result.stderr
    rows = rows_of(result.stdout)
    assert [row.get("error") for row in rows] == [
        None,
        "line 2: JSON nested more than 100 levels deep",
        "line 3: holds a number of more than 4300 digits",
        None,
        "line 5: JSON nested more than 100 levels deep",
        None]
    assert rows[1] == {"line": 2, "mi": None, "ta": None, "error": "line 2: JSON nested more than 100 levels deep"}
    assert all(1.0 <= rows[i]["mi"] <= 5.0 for i in (0, 3, 5)) and rows[5]["id"] == 6
    assert rows[3]["x"] == json.loads(_nested(100).replace("{path}", "p"))["x"]     # echoed back whole
    assert error_lines(result.stderr) == [f"error: {rows[i]['error']}" for i in (1, 2, 4)]


# --- 2. a terminal encoding without the characters of a name or prompt -----------------------------


@pytest.fixture(scope="module")
def emoji_clip(clips):
    path = clips["root"] / "clip-🎹.wav"
    shutil.copyfile(clips["good"], path)
    return path


@pytest.mark.parametrize("encoding", ["ascii", "latin-1"])
def test_a_terminal_encoding_never_stops_the_run(runtime_bundle, emoji_clip, encoding):
    missing = emoji_clip.with_name("nope-🎹.wav")
    env = {"PYTHONIOENCODING": encoding}
    text = deramos_run("--bundle", runtime_bundle, "--prompt", "calm 🎹 piano", emoji_clip, missing, env=env)
    assert text.returncode == 1, text.stderr
    assert text.stdout.decode(encoding).startswith(f"{emoji_clip.parent}/clip-\\U0001f3b9.wav  MI ")
    assert text.stderr.decode(encoding) == f"error: {missing.parent}/nope-\\U0001f3b9.wav: file not found\n"

    as_json = deramos_run("--bundle", runtime_bundle, "--json", "--prompt", "calm 🎹 piano", emoji_clip, missing,
                          env=env)
    assert as_json.returncode == 1
    assert as_json.stdout.isascii()                                 # JSON's own escapes: valid JSON
    rows = rows_of(as_json.stdout.decode("ascii"))
    assert [row["path"] for row in rows] == [str(emoji_clip), str(missing)]
    assert rows[0]["prompt"] == "calm 🎹 piano" and rows[0]["error"] is None and 1.0 <= rows[0]["ta"] <= 5.0
    assert rows[1]["error"] == f"{missing}: file not found"


# --- 3. stdout or stderr closed -------------------------------------------------------------------


def test_stdout_closed_with_out_scores_everything(runtime_bundle, clips, tmp_path):
    out = tmp_path / "scores.jsonl"
    result = deramos_run("--bundle", runtime_bundle, "--json", "--out", out, "--prompt", PROMPT,
                         clips["good"], clips["silence"], close_fd=1, stderr=subprocess.PIPE)
    assert result.returncode == 0 and result.stderr == b""
    rows = rows_of(out.read_text())
    assert [row["path"] for row in rows] == [str(clips["good"]), str(clips["silence"])]
    assert all(row["error"] is None and 1.0 <= row["mi"] <= 5.0 for row in rows)


def test_stdout_closed_without_out_is_one_clear_error(runtime_bundle, clips):
    result = deramos_run("--bundle", runtime_bundle, clips["good"], PROMPT, close_fd=1, stderr=subprocess.PIPE)
    assert result.returncode == 2
    assert result.stderr == b"error: stdout is closed: nowhere to write the scores; give --out FILE\n"


def test_stderr_closed_still_writes_every_result(runtime_bundle, clips, tmp_path):
    args = ("--bundle", runtime_bundle, "--json", "--prompt", PROMPT, clips["good"], clips["missing"], clips["silence"])
    piped = deramos_run(*args, close_fd=2, stdout=subprocess.PIPE)
    assert piped.returncode == 1
    rows = rows_of(piped.stdout.decode())                            # nothing but the JSON lines
    assert [row["error"] for row in rows] == [None, f"{clips['missing']}: file not found", None]
    out = tmp_path / "scores.jsonl"
    written = deramos_run(*args[:3], "--out", out, *args[3:], close_fd=2, stdout=subprocess.PIPE)
    assert written.returncode == 1 and written.stdout == b""
    assert [row["path"] for row in rows_of(out.read_text())] == [str(clips[k]) for k in ("good", "missing", "silence")]


# --- 4. SIGTERM (and SIGINT) keep what was scored ----------------------------------------------------


@pytest.mark.parametrize("sig, code, said", [(signal.SIGTERM, 143, "terminated"), (signal.SIGINT, 130, "interrupted")],
                         ids=["SIGTERM", "SIGINT"])
def test_a_stopped_run_keeps_every_line_written(runtime_bundle, clips, tmp_path, sig, code, said):
    """Lines come from a stdin that stays open, so the run can only end by the signal; each
    result must reach the file whole as soon as it is scored (not at exit, not 8 KiB at a time)."""
    out = tmp_path / "scores.jsonl"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("DERAMOS_BUNDLE", None)
    process = subprocess.Popen([str(SCRIPT), "--bundle", str(runtime_bundle), "-q", "--batch-size", "1",
                                "--jsonl", "-", "--out", str(out)],
                               stdin=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    try:
        lines = jsonl(*[{"path": str(clips["good"]), "prompt": PROMPT, "n": n} for n in range(48)])
        process.stdin.write(lines.encode())
        process.stdin.flush()
        deadline = time.monotonic() + 120
        while not (out.exists() and out.stat().st_size) and time.monotonic() < deadline and process.poll() is None:
            time.sleep(0.05)
        seen = out.read_text() if out.exists() else ""
        assert seen.endswith("\n"), f"no whole line reached {out} while the run went on: {seen[-80:]!r}"
        written_then = rows_of(seen)                                 # every line whole
        process.send_signal(sig)
        stderr = process.stderr.read()
        assert process.wait(timeout=60) == code
    finally:
        process.kill()
        process.wait()
    assert stderr.decode() == f"error: {said}\n"
    rows = rows_of(out.read_text())
    assert len(rows) >= len(written_then) >= 1
    assert [row["n"] for row in rows] == list(range(len(rows)))
    assert all(row["error"] is None and 1.0 <= row["mi"] <= 5.0 for row in rows)


# --- 5. --out naming an input -----------------------------------------------------------------------


@pytest.fixture
def inputs(clips, tmp_path):
    """A copy of the good clip, a symlink to it and a JSONL file naming it (relatively)."""
    clip = shutil.copyfile(clips["good"], tmp_path / "clip.wav")
    (tmp_path / "link.wav").symlink_to(clip)
    items = tmp_path / "items.jsonl"
    items.write_text(jsonl({"path": "clip.wav", "prompt": PROMPT}))
    return clip, tmp_path / "link.wav", items


def test_out_naming_an_input_clip_is_refused(runtime_bundle, inputs, clips, monkeypatch):
    clip, link, items = inputs
    before = clip.read_bytes()
    monkeypatch.chdir(clip.parent)
    cases = [
        (["--out", clip, clip, PROMPT], f"--out {clip} is the input clip {clip}"),
        (["--out", link, "--prompt", PROMPT, clips["good"], "clip.wav"], f"--out {link} is the input clip clip.wav"),
        (["--out", "./clip.wav", "--jsonl", items], f"--out ./clip.wav is the input clip {clip.parent}/clip.wav"),
    ]
    for args, message in cases:
        result = run_cli(["--bundle", runtime_bundle, *args])
        assert result.exit_code == 2 and result.stdout == ""
        assert result.stderr == f"error: {message}; refusing to overwrite it (choose another --out)\n"
        assert clip.read_bytes() == before


def test_out_naming_the_jsonl_input_is_refused(runtime_bundle, inputs):
    clip, link, items = inputs
    before = items.read_bytes()
    dotted = f"{items.parent}/./{items.name}"
    result = run_cli(["--bundle", runtime_bundle, "--jsonl", items, "--out", dotted])
    assert result.exit_code == 2
    assert result.stderr == f"error: --out {dotted} is the --jsonl input; refusing to overwrite it\n"
    with open(items, "rb") as stdin:
        piped = deramos_run("--bundle", runtime_bundle, "--jsonl", "-", "--out", items, stdin=stdin)
    assert piped.returncode == 2
    assert piped.stderr.decode() == f"error: --out {items} is the --jsonl input (stdin); refusing to overwrite it\n"
    assert items.read_bytes() == before


def test_a_stdin_line_naming_the_out_file_fails_alone(runtime_bundle, clips, tmp_path):
    out = tmp_path / "scores.jsonl"
    lines = jsonl({"path": str(clips["good"]), "prompt": PROMPT}, {"path": str(out), "prompt": PROMPT})
    result = deramos_run("--bundle", runtime_bundle, "--jsonl", "-", "--out", out, data=lines.encode())
    assert result.returncode == 1
    rows = rows_of(out.read_text())
    assert rows[0]["error"] is None
    assert rows[1]["error"] == f"{out}: is the --out file (being written); not read as a clip"
    assert error_lines(result.stderr.decode()) == [f"error: {rows[1]['error']}"]


# --- 12. a second argument that is a clip, not a prompt ------------------------------------------------


def test_a_second_argument_that_is_or_looks_like_a_clip_is_refused(runtime_bundle, clips, tmp_path):
    no_extension = shutil.copyfile(clips["good"], tmp_path / "take2")
    for second, what in ((clips["missing"], "looks like an audio file name (no such file)"),
                         (no_extension, "is an audio file")):
        result = run_cli(["--bundle", runtime_bundle, clips["good"], second])
        assert result.exit_code == 2 and result.stdout == ""
        assert (f"the prompt '{second}' {what}; to score several clips give their prompt with --prompt "
                f'(deramos-run --prompt "..." CLIPS...)') in result.stderr
    notes = tmp_path / "notes"                                  # a file, but not audio: it may be a prompt
    notes.write_text("calm piano\n")
    assert run_cli(["--bundle", runtime_bundle, clips["good"], notes]).exit_code == 0
    both = run_cli(["--bundle", runtime_bundle, "--prompt", PROMPT, clips["good"], no_extension, clips["missing"]])
    assert both.exit_code == 1 and len(both.stdout.splitlines()) == 2
    assert error_lines(both.stderr) == [f"error: {clips['missing']}: file not found"]


# --- 13. prompts of invisible "filler" characters ------------------------------------------------------

FILLERS = ["\u3164", "\u3164\u3164 \u3164", "\u2800\u2800", "\u115f\u1160", "\uffa0", "\u180e", "\ufe0f\ufe00",
           "\U000e0100", "\u034f", "\u17b4\u17b5", " \u2800\u3164\u200b\t"]


@pytest.mark.parametrize("prompt", FILLERS, ids=lambda p: "+".join(f"U{ord(c):04X}" for c in p))
def test_filler_prompts_are_empty(runtime_scorer, clips, prompt):
    scores = runtime_scorer.score_batch([clips["good"], clips["good"]], [prompt, PROMPT])
    assert scores[0].error == f"{clips['good']}: empty prompt" and scores[1].ok


def test_fillers_inside_words_are_fine_and_the_cli_refuses_filler_prompts(runtime_scorer, runtime_bundle, clips):
    assert runtime_scorer.score(clips["good"], "calm\u3164piano \u2800").ok
    result = run_cli(["--bundle", runtime_bundle, clips["good"], "\u3164\u2800\u3164"])
    assert result.exit_code == 1 and result.stdout == ""
    assert error_lines(result.stderr) == [f"error: {clips['good']}: empty prompt"]


# --- 14. --threads --------------------------------------------------------------------------------------


def test_threads_above_the_core_count_are_refused(runtime_bundle, clips):
    cores = os.cpu_count()
    for threads in (cores + 1, 10000):
        result = run_cli(["--bundle", runtime_bundle, "--threads", threads, clips["good"], PROMPT])
        assert result.exit_code == 2 and result.stdout == ""
        assert result.stderr == (f"error: --threads {threads}: more than this machine's {cores} CPU cores "
                                 f"(give 1 to {cores})\n")
    assert run_cli(["--bundle", runtime_bundle, "--threads", 1, clips["good"], PROMPT]).exit_code == 0


@pytest.mark.parametrize("threads", [0, -1, 10000, "cpu+1", True])
def test_scorer_load_refuses_absurd_threads(runtime_bundle, threads):
    cores = os.cpu_count()
    value = cores + 1 if threads == "cpu+1" else threads
    with pytest.raises(ValueError) as raised:
        Scorer.load(runtime_bundle, backend="onnxruntime-cpu", threads=value)
    assert str(raised.value) == f"threads={value!r}: give 1 to {cores} (the CPU cores of this machine)"


def test_scorer_load_refuses_threads_that_are_not_a_number(runtime_bundle):
    with pytest.raises(ValueError, match=r"^threads must be a whole number, got '4'$"):
        Scorer.load(runtime_bundle, backend="onnxruntime-cpu", threads="4")
    with Scorer.load(runtime_bundle, backend="onnxruntime-cpu", threads=1) as scorer:
        assert scorer.backend.threads == 1


# --- 15. a first-use export held by another process; ONNX Runtime's log lines -------------------------------


def test_waiting_for_another_process_export_says_so(runtime_bundle, clips, tmp_path):
    """Another process holds the export lock (this test); deramos-run says in one line that it
    waits, and once the bundle is there and the lock released it scores with it."""
    import fcntl

    from deramos.runtime import default as default_module

    if not default_module.export_available():
        pytest.skip("the first-use export needs torch and onnx")
    checkpoint = tmp_path / "default_model"
    checkpoint.mkdir()
    (checkpoint / "model.safetensors").write_bytes(b"stands in for the weights")
    env = {"XDG_CACHE_HOME": str(tmp_path / "cache"), "DERAMOS_DEFAULT_CHECKPOINT": str(checkpoint)}
    target = tmp_path / "cache" / "deramos" / "bundles" / f"default-{default_module.checkpoint_hash(checkpoint)}"
    target.parent.mkdir(parents=True)
    with open(target.with_name(target.name + ".lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        process = subprocess.Popen([str(SCRIPT), "--backend", "onnxruntime-cpu", str(clips["good"]), PROMPT],
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                   env={**os.environ, "OMP_NUM_THREADS": "1", **env})
        try:
            first: list[bytes] = []
            reader = threading.Thread(target=lambda: first.append(process.stderr.readline()), daemon=True)
            reader.start()
            reader.join(timeout=120)
            assert first == [f"deramos: waiting for another process to finish exporting the default model to "
                             f"{target} (first use; a few minutes)\n".encode()]
            shutil.copytree(runtime_bundle, target)                 # the other process's export, done
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
        try:
            stdout, stderr = process.communicate(timeout=120)
        finally:
            process.kill()
    assert process.returncode == 0, stderr
    assert stderr == b"" and stdout.decode().startswith(f"{clips['good']}  MI ")


def test_quiet_run_leaves_stderr_empty(runtime_bundle, clips):
    """Nothing but deramos's own error lines on stderr with -q: no ONNX Runtime log lines."""
    for precision in ("fp32", "fp16"):
        result = deramos_run("-q", "--bundle", runtime_bundle, "--precision", precision, clips["good"], PROMPT)
        assert result.returncode == 0 and result.stderr == b""
        assert result.stdout.decode().startswith(f"{clips['good']}  MI ")
    failed = deramos_run("-q", "--bundle", runtime_bundle, "--prompt", PROMPT, clips["good"], clips["missing"])
    assert failed.returncode == 1 and failed.stderr.decode() == f"error: {clips['missing']}: file not found\n"


# --- JSONL paths are relative to the JSONL file ----------------------------------------------------------------


def test_jsonl_paths_are_relative_to_the_jsonl_file(runtime_bundle, tmp_path, monkeypatch):
    expected = [json.loads(line)["path"] for line in (REPO / "examples" / "prompts.jsonl").read_text().splitlines()]
    assert len(expected) == 6
    for cwd, source in ((REPO, "examples/prompts.jsonl"), (tmp_path, REPO / "examples" / "prompts.jsonl"),
                        (REPO / "examples", "prompts.jsonl")):
        monkeypatch.chdir(cwd)
        result = run_cli(["--bundle", runtime_bundle, "--jsonl", source])
        assert result.exit_code == 0, result.stderr
        rows = rows_of(result.stdout)
        assert [row["path"] for row in rows] == expected             # echoed as written in the file
        assert all(row["error"] is None and 1.0 <= row["mi"] <= 5.0 for row in rows)


def test_stdin_jsonl_paths_are_relative_to_the_working_directory(runtime_bundle, monkeypatch):
    lines = (REPO / "examples" / "prompts.jsonl").read_text()
    monkeypatch.chdir(REPO / "examples")
    assert run_cli(["--bundle", runtime_bundle, "--jsonl", "-"], stdin=lines).exit_code == 0
    monkeypatch.chdir(REPO)
    result = run_cli(["--bundle", runtime_bundle, "--jsonl", "-"], stdin=lines)
    assert result.exit_code == 1
    assert error_lines(result.stderr)[0] == f"error: {json.loads(lines.splitlines()[0])['path']}: file not found"


def test_help_states_the_rules():
    text = " ".join(run_cli(["--help"]).stdout.split())
    assert "a relative path is relative to the JSONL file's folder, or for stdin to the current directory" in text
    assert "--out never overwrites an input clip or the JSONL file" in text
    assert "143 terminated (SIGTERM)" in text
    assert "at most the machine's CPU cores" in text
