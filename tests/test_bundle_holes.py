"""Bundle integrity holes, each closed through the API (Scorer.load / load_bundle) and the CLI
(deramos-run --bundle B ...), on real files and real ONNX Runtime:

 6. every manifest number is range-checked (one line naming the field and the allowed range);
 7. a NUL byte in a manifest path names the field;
 8. a forged hash-memo entry cannot make a tampered file load (entries are HMAC-signed with a
    private per-user key; memo files not private to the user are ignored);
 9. the bytes ONNX Runtime runs are the bytes that were hashed (sessions are built from memory);
10. a graph that returns NaN fails the self-check (exit 1), naming the graph, not the input;
11. probes.json is validated on load, naming the file and the probe.
"""
from __future__ import annotations

import hashlib
import hmac
import json
import os
import shutil
import stat
from pathlib import Path

import numpy as np
import pytest
from runtime_helpers import RATE, music, run_cli, set_field, write_wav

from deramos.runtime import BundleError, Scorer
from deramos.runtime.bundle import load_bundle, write_manifest

PROMPT = "calm solo piano"
SHA_MISMATCH = "sha256 does not match manifest.json (file modified or corrupt)"


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch) -> Path:
    """Each test its own user cache (hash memo and key), and the memo on."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv("DERAMOS_VERIFY", raising=False)
    return tmp_path / "cache" / "deramos"


@pytest.fixture
def copy(runtime_bundle, tmp_path) -> Path:
    return Path(shutil.copytree(runtime_bundle, tmp_path / "bundle"))


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    return write_wav(tmp_path_factory.mktemp("clip") / "clip.wav", music(2.0, seed=4))


def manifest_of(root: Path) -> dict:
    return json.loads((root / "manifest.json").read_text())


def edit_manifest(root: Path, change) -> None:
    manifest = manifest_of(root)
    change(manifest)
    (root / "manifest.json").write_text(json.dumps(manifest))


def api_refusal(root: Path, error=BundleError, **load) -> str:
    with pytest.raises(error) as raised:
        Scorer.load(root, backend="onnxruntime-cpu", **load)
    message = str(raised.value)
    assert "\n" not in message
    return message


def cli_refusal(root: Path, *args) -> str:
    """deramos-run must print exactly one error line and exit 2; returns the message."""
    result = run_cli(["--bundle", root, "--backend", "onnxruntime-cpu", *args])
    assert (result.exit_code, result.stdout) == (2, ""), result.output
    assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1, result.stderr
    return result.stderr[len("error: "):-1]


def refused(root: Path, clip) -> str:
    message = api_refusal(root)
    assert cli_refusal(root, clip, PROMPT) == message
    return message


# --- 6. manifest numbers: range-checked, non-finite and booleans refused ------------------------------


WINDOW = "field window_seconds must be between 0.5 and 600 seconds, got "
RATE_FIELD = "field sample_rate must be between 8000 and 192000 Hz, got "
TOKENS = "field tokenizer.max_tokens must be between 1 and 8192, got "
NUMBER_CASES = {
    # As reported: a crash inside range(), OverflowErrors naming nothing, an allocation failure
    # per item, and a 50 ms window accepted.
    "window 1e-9": (set_field("window_seconds", 1e-9), WINDOW + "1e-09"),
    "window 1e308": (set_field("window_seconds", 1e308), WINDOW + "1e+308"),
    "window 0.05": (set_field("window_seconds", 0.05), WINDOW + "0.05"),
    "sample_rate 10**40": (set_field("sample_rate", 10 ** 40), RATE_FIELD + "1.00e+40"),
    "sample_rate 10**12": (set_field("sample_rate", 10 ** 12), RATE_FIELD + "1000000000000"),
    "max_tokens 10**30": (set_field("tokenizer.max_tokens", 10 ** 30), TOKENS + "1.00e+30"),
    # Non-finite numbers (Python's json reads NaN and Infinity) and booleans.
    "window NaN": (set_field("window_seconds", float("nan")), WINDOW + "nan"),
    "window Infinity": (set_field("window_seconds", float("inf")), WINDOW + "inf"),
    "window true": (set_field("window_seconds", True), "field window_seconds must be a number, got a boolean True"),
    "sample_rate NaN": (set_field("sample_rate", float("nan")), "field sample_rate must be an integer, got a number nan"),
    "sample_rate 4000": (set_field("sample_rate", 4000), RATE_FIELD + "4000"),
    "max_tokens 8193": (set_field("tokenizer.max_tokens", 8193), TOKENS + "8193"),
    "max_tokens false": (set_field("tokenizer.max_tokens", False),
                         "field tokenizer.max_tokens must be an integer, got a boolean False"),
    "samples_per_frame 10**9": (set_field("samples_per_frame", 10 ** 9),
                                "field samples_per_frame must be between 1 and 96000 (one window), got 1000000000"),
    "min_tail past the window": (set_field("min_tail_samples", 96001),
                                 "field min_tail_samples must be between 0 and 96000 (one window), got 96001"),
    "score.min NaN": (set_field("score.min", float("nan")), "field score.min must be between -1e+06 and 1e+06, got nan"),
    "score.max -Infinity": (set_field("score.max", float("-inf")),
                            "field score.max must be between -1e+06 and 1e+06, got -inf"),
    "score reversed": (set_field("score.max", 0.5), "field score.max must be greater than score.min (1.0), got 0.5"),
    "score.bins 1": (set_field("score.bins", 1), "field score.bins must be between 2 and 1000, got 1"),
    "score.bins true": (set_field("score.bins", True), "field score.bins must be an integer, got a boolean True"),
    "score null": (set_field("score", None), "field score must be an object, got null"),
}


@pytest.mark.parametrize("case", sorted(NUMBER_CASES))
def test_manifest_numbers_are_range_checked(copy, clip, case):
    change, expected = NUMBER_CASES[case]
    edit_manifest(copy, change)
    assert refused(copy, clip) == f"{copy / 'manifest.json'}: {expected}"


def test_the_bounds_themselves_load(copy):
    edit_manifest(copy, lambda m: m.update(sample_rate=192000, window_seconds=600))
    manifest = load_bundle(copy).manifest
    assert (manifest.sample_rate, manifest.window_seconds) == (192000, 600.0)
    edit_manifest(copy, lambda m: m.update(sample_rate=8000, window_seconds=0.5, min_tail_samples=4000))
    assert load_bundle(copy).window_samples == 4000
    assert load_bundle(copy).manifest.score == (1.0, 5.0, 20)


def test_a_manifest_nested_too_deeply_is_one_line(copy, clip):
    (copy / "manifest.json").write_text("[" * 100_000 + "]" * 100_000)
    assert refused(copy, clip) == f"{copy / 'manifest.json'}: not valid JSON (nested too deeply)"


# --- 7. a NUL byte in a path names the field ----------------------------------------------------------


NUL_CASES = {
    "files key": (lambda m: m["files"].update({"probes/00.flac\0": m["files"]["probes/00.flac"]}),
                  "field files['probes/00.flac\\x00'] contains a NUL byte (not a file name)"),
    "graph file": (set_field("graphs.heads.files.fp32", ["heads.onnx\0"]),
                   "field graphs.heads.files.fp32 names 'heads.onnx\\x00', which is not in files{} "
                   "(every file the runtime opens must be listed with its sha256)"),
    "tokenizer file": (set_field("tokenizer.file", "tokenizer.json\0"),
                       "field tokenizer.file names 'tokenizer.json\\x00', which is not in files{} "
                       "(every file the runtime opens must be listed with its sha256)"),
}


@pytest.mark.parametrize("case", sorted(NUL_CASES))
def test_a_nul_byte_in_a_manifest_path_names_the_field(copy, clip, case):
    change, expected = NUL_CASES[case]
    edit_manifest(copy, change)
    assert refused(copy, clip) == f"{copy / 'manifest.json'}: {expected}"


# --- 8. the hash memo: a forged entry is useless --------------------------------------------------------


def _identity(path: Path) -> list[int]:
    st = os.stat(path)
    return [st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns]


def _memo_path(cache: Path) -> Path:
    (path,) = (cache / "verified").glob("*.json")
    return path


def _forge(cache: Path, root: Path, name: str, tail: list) -> None:
    """Say in the memo that root/name, as it is now, has the manifest's sha256; `tail` is what
    follows the digest (an attacker's signature, or none)."""
    path = _memo_path(cache)
    memo = json.loads(path.read_text())
    memo["files"][name] = _identity(root / name) + [manifest_of(root)["files"][name], *tail]
    path.write_text(json.dumps(memo))


def _signed_with_the_real_key(cache: Path, root: Path, name: str) -> list:
    """What only someone who can read the user's key could write (out of the memo's reach)."""
    from deramos.runtime.hashmemo import HashMemo

    return [HashMemo(root)._sign(name, _identity(root / name), manifest_of(root)["files"][name])]


def test_the_memo_is_signed_and_private(copy, private_cache):
    load_bundle(copy)
    key, memo = private_cache / "verified.key", _memo_path(private_cache)
    assert stat.S_IMODE(key.stat().st_mode) == 0o600 and key.stat().st_size == 32
    assert stat.S_IMODE(memo.stat().st_mode) == 0o600
    entries = json.loads(memo.read_text())["files"]
    assert sorted(entries) == sorted(manifest_of(copy)["files"])
    assert all(len(entry) == 7 and len(entry[6]) == 64 for entry in entries.values())


# (a forged entry's tail) -> how it was made: without the key, whatever an attacker writes is refused
FORGERIES = {
    "unsigned (the old format)": lambda cache, root, name, old: [],
    "the file's previous signature": lambda cache, root, name, old: [old],
    "signed with a guessed key": lambda cache, root, name, old: [
        hmac.new(b"\0" * 32, json.dumps([str(root.resolve()), name, _identity(root / name),
                                         manifest_of(root)["files"][name]], separators=(",", ":")).encode(),
                 hashlib.sha256).hexdigest()],
}


@pytest.mark.parametrize("forgery", sorted(FORGERIES))
@pytest.mark.parametrize("name", ["heads.onnx", "tokenizer.json"])
def test_a_forged_memo_entry_does_not_let_a_tampered_file_load(copy, clip, private_cache, forgery, name):
    """Before: heads.onnx replaced, its memo entry rewritten, and deramos-run scored with it (exit 0)."""
    Scorer.load(copy, backend="onnxruntime-cpu").close()
    old = json.loads(_memo_path(private_cache).read_text())["files"][name][6]
    if name == "heads.onnx":      # another valid graph with the same inputs and outputs
        shutil.copyfile(copy / "heads.fp16.onnx", copy / name)
    else:                         # still a valid tokenizer file
        (copy / name).write_text((copy / name).read_text() + "\n")
    expected = f"{copy / name}: {SHA_MISMATCH}"
    tail = FORGERIES[forgery](private_cache, copy, name, old)
    _forge(private_cache, copy, name, tail)
    assert api_refusal(copy) == expected
    _forge(private_cache, copy, name, tail)        # the refusal dropped it from the memo
    assert cli_refusal(copy, clip, PROMPT) == expected


def test_a_validly_signed_entry_is_trusted_for_files_but_never_for_graphs(copy, clip, private_cache):
    """With the user's own key (an attacker who can write your files: out of scope) the memo is
    believed by load_bundle, which shows it is used; a graph's bytes are still hashed when the
    session is built from them, so a tampered graph never runs."""
    load_bundle(copy)
    shutil.copyfile(copy / "heads.fp16.onnx", copy / "heads.onnx")
    _forge(private_cache, copy, "heads.onnx", _signed_with_the_real_key(private_cache, copy, "heads.onnx"))
    load_bundle(copy)                               # the memo's word, for an unchanged identity
    assert api_refusal(copy) == f"{copy / 'heads.onnx'}: {SHA_MISMATCH}"
    _forge(private_cache, copy, "heads.onnx", _signed_with_the_real_key(private_cache, copy, "heads.onnx"))
    assert cli_refusal(copy, clip, PROMPT) == f"{copy / 'heads.onnx'}: {SHA_MISMATCH}"


def _tampered_tokenizer_with_a_signed_entry(copy, cache) -> str:
    load_bundle(copy)
    tokenizer = copy / "tokenizer.json"
    tokenizer.write_text(tokenizer.read_text() + "\n")
    _forge(cache, copy, "tokenizer.json", _signed_with_the_real_key(cache, copy, "tokenizer.json"))
    load_bundle(copy)     # signed with the user's own key: believed (what the memo cannot protect against)
    return f"{tokenizer}: {SHA_MISMATCH}"


def test_a_memo_file_others_may_write_is_ignored(copy, clip, private_cache):
    expected = _tampered_tokenizer_with_a_signed_entry(copy, private_cache)
    memo = _memo_path(private_cache)
    memo.chmod(0o664)                               # group-writable: anyone in the group could have written it
    assert api_refusal(copy) == expected            # the memo was ignored: the file was hashed
    assert stat.S_IMODE(memo.stat().st_mode) == 0o600    # and the memo rewritten private
    _forge(private_cache, copy, "tokenizer.json", _signed_with_the_real_key(private_cache, copy, "tokenizer.json"))
    memo.chmod(0o646)
    assert cli_refusal(copy, clip, PROMPT) == expected


def test_a_memo_symlink_or_a_readable_key_turns_the_memo_off(copy, clip, private_cache, tmp_path):
    expected = _tampered_tokenizer_with_a_signed_entry(copy, private_cache)
    memo = _memo_path(private_cache)
    elsewhere = tmp_path / "elsewhere.json"
    shutil.move(memo, elsewhere)
    memo.symlink_to(elsewhere)                      # a link is not followed
    assert api_refusal(copy) == expected
    _forge(private_cache, copy, "tokenizer.json", _signed_with_the_real_key(private_cache, copy, "tokenizer.json"))
    (private_cache / "verified.key").chmod(0o644)   # a key others can read signs nothing
    assert cli_refusal(copy, clip, PROMPT) == expected


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() != 0, reason="chown to another user needs root")
def test_a_memo_owned_by_another_user_is_ignored(copy, clip, private_cache):
    expected = _tampered_tokenizer_with_a_signed_entry(copy, private_cache)
    os.chown(_memo_path(private_cache), 4321, 4321)
    assert api_refusal(copy) == expected
    _forge(private_cache, copy, "tokenizer.json", _signed_with_the_real_key(private_cache, copy, "tokenizer.json"))
    os.chown(_memo_path(private_cache), 4321, 4321)
    assert cli_refusal(copy, clip, PROMPT) == expected


# --- 9. ONNX Runtime runs the bytes that were hashed -----------------------------------------------------


@pytest.fixture
def external(copy) -> Path:
    """The bundle with the text encoder's weights in a side file, text_encoder.onnx.data (as the
    export writes graphs over 16 MB)."""
    import onnx

    from deramos.build.onnxio import save_onnx

    written = save_onnx(onnx.load(str(copy / "text_encoder.onnx")), copy / "text_encoder.onnx", external_min_bytes=0)
    assert [p.name for p in written] == ["text_encoder.onnx", "text_encoder.onnx.data"]
    manifest = manifest_of(copy)
    manifest["graphs"]["text_encoder"]["files"]["fp32"] = [p.name for p in written]
    manifest["files"].update({p.name: "" for p in written})
    write_manifest(copy, manifest)
    return copy


def _overwrite_in_place(path: Path, byte: bytes = b"\x7f") -> None:
    """Same inode, other bytes (what a memory map of the file would see), then gone."""
    with open(path, "r+b") as handle:
        handle.write(byte * path.stat().st_size)
    path.unlink()


@pytest.mark.parametrize("name", ["heads.onnx", "text_encoder.onnx.data"])
def test_a_graph_changed_after_it_was_hashed_is_refused_when_opened(external, name):
    """The window the tester hit (9 of 30 loads ran a swapped graph), made deterministic: the
    bundle is verified, then the file changes before the backend opens it."""
    from deramos.runtime.backends import select_backend

    bundle = load_bundle(external)
    if name == "heads.onnx":
        shutil.copyfile(external / "heads.fp16.onnx", external / name)
    else:
        data = bytearray((external / name).read_bytes())
        data[len(data) // 2] ^= 0xFF
        (external / name).write_bytes(bytes(data))
    with pytest.raises(BundleError) as raised:
        select_backend(bundle, "onnxruntime-cpu")
    assert str(raised.value) == f"{external / name}: {SHA_MISMATCH}"


def test_the_sessions_are_built_from_the_verified_bytes(external, runtime_scorer):
    """After load, the graph files may change or vanish: the sessions hold their own copy. (ONNX
    Runtime memory-maps a side file it opens by path: rewriting it in place made the scores NaN.)"""
    wave = music(2.0, seed=8)
    with Scorer.load(external, backend="onnxruntime-cpu") as scorer:
        assert scorer.score(wave, PROMPT, sample_rate=RATE).ok
        for graph in ("text_encoder.onnx", "text_encoder.onnx.data", "heads.onnx", "audio_encoder.onnx"):
            _overwrite_in_place(external / graph)
        prompt = "a prompt encoded only after the files changed"
        got = scorer.score(wave, prompt, sample_rate=RATE)
    want = runtime_scorer.score(wave, prompt, sample_rate=RATE)     # the same graphs, untouched
    assert np.allclose([got.mi, got.ta], [want.mi, want.ta], atol=1e-5)


@pytest.mark.parametrize("how", ["tensors", "files", "copy"])
def test_every_way_of_handing_over_the_weights_gives_the_same_encoder(external, runtime_bundle, how):
    """tensors: arrays viewing the verified side file (the default, no copy); files: the side file
    in memory (ORT >= 1.23); copy: a private temporary folder (an older ORT)."""
    import onnxruntime as ort

    from deramos.runtime.backends import session_from_bytes, verified_graph
    from deramos.runtime.text import PromptTokenizer

    bundle = load_bundle(external)
    model, weights = verified_graph(bundle, "text_encoder", "fp32")
    assert list(weights) == ["text_encoder.onnx.data"]
    ids, mask = PromptTokenizer(bundle.tokenizer_file, bundle.max_tokens).encode([PROMPT])
    feeds = {"input_ids": ids, "attention_mask": mask}
    session = session_from_bytes(ort, model, weights, ort.SessionOptions(), ["CPUExecutionProvider"], how=how)
    reference = ort.InferenceSession(str(runtime_bundle / "text_encoder.onnx"), providers=["CPUExecutionProvider"])
    got, want = session.run(None, feeds)[0], reference.run(None, feeds)[0]
    assert np.allclose(got, want, atol=1e-6) and np.abs(want).sum() > 0


def test_the_external_weights_are_read_from_the_graph_bytes_as_onnx_reads_them(external):
    import onnx

    from deramos.runtime.onnx_external import external_tensors

    model = (external / "text_encoder.onnx").read_bytes()
    ours = [(t.name, t.dtype, t.dims, t.location, t.offset, t.length) for t in external_tensors(model)]
    proto = onnx.load(str(external / "text_encoder.onnx"), load_external_data=False)
    theirs = []
    for tensor in proto.graph.initializer:
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            info = {entry.key: entry.value for entry in tensor.external_data}
            theirs.append((tensor.name, np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type)),
                           tuple(tensor.dims), info["location"], int(info.get("offset", 0)), int(info["length"])))
    assert ours == theirs and len(ours) > 10
    assert external_tensors((external / "heads.onnx").read_bytes()) == []     # weights inside the graph
    assert external_tensors(model[: len(model) // 2]) is None                 # cut short: not guessed at


def test_a_graph_with_a_subgraph_falls_back_to_whole_files(tmp_path):
    """The reader takes only top-level initializers; a graph with an If is handed over as files."""
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    from deramos.build.onnxio import save_onnx
    from deramos.runtime.backends import session_from_bytes
    from deramos.runtime.onnx_external import external_tensors

    table = numpy_helper.from_array(np.arange(4096, dtype=np.float32).reshape(1024, 4), "table")
    branch = lambda name, value: helper.make_graph(  # noqa: E731
        [helper.make_node("Constant", [], [name], value=numpy_helper.from_array(np.float32(value)))], name, [],
        [helper.make_tensor_value_info(name, TensorProto.FLOAT, [])])
    graph = helper.make_graph(
        [helper.make_node("Gather", ["table", "ids"], ["rows"]),
         helper.make_node("If", ["flag"], ["scale"], then_branch=branch("one", 1.0), else_branch=branch("two", 2.0)),
         helper.make_node("Mul", ["rows", "scale"], ["out"])], "g",
        [helper.make_tensor_value_info("ids", TensorProto.INT64, ["n"]), helper.make_tensor_value_info("flag", TensorProto.BOOL, [])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["n", 4])], [table])
    path = tmp_path / "g.onnx"
    written = save_onnx(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path, external_min_bytes=0)
    model, weights = path.read_bytes(), {written[1].name: written[1].read_bytes()}
    assert external_tensors(model) is None
    session = session_from_bytes(ort, model, weights, ort.SessionOptions(), ["CPUExecutionProvider"])
    out = session.run(None, {"ids": np.array([2], np.int64), "flag": np.array(False)})[0]
    assert np.allclose(out, [[16.0, 18.0, 20.0, 22.0]])
    with pytest.raises(ValueError, match="cannot be handed over as tensors"):
        session_from_bytes(ort, model, weights, ort.SessionOptions(), ["CPUExecutionProvider"], how="tensors")


def test_a_bundle_with_external_weights_scores_alike_through_the_cli(external, clip):
    with Scorer.load(external, backend="onnxruntime-cpu") as scorer:
        api = scorer.score(clip, PROMPT)
    result = run_cli(["--bundle", external, "--backend", "onnxruntime-cpu", "--json", clip, PROMPT])
    assert result.exit_code == 0, result.output
    line = json.loads(result.stdout)
    assert line["error"] is None and np.allclose([line["mi"], line["ta"]], [api.mi, api.ta], atol=1e-3)


def test_a_tampered_side_file_that_the_memo_vouches_for_is_refused_by_the_cli(external, clip, private_cache):
    load_bundle(external)
    _overwrite = bytearray((external / "text_encoder.onnx.data").read_bytes())
    _overwrite[100] ^= 0xFF
    (external / "text_encoder.onnx.data").write_bytes(bytes(_overwrite))
    _forge(private_cache, external, "text_encoder.onnx.data",
           _signed_with_the_real_key(private_cache, external, "text_encoder.onnx.data"))
    assert cli_refusal(external, clip, PROMPT) == f"{external / 'text_encoder.onnx.data'}: {SHA_MISMATCH}"


# --- 10. a graph that returns NaN fails the self-check ----------------------------------------------------


@pytest.fixture
def nan_heads(copy) -> Path:
    """heads.onnx returning mi + NaN, listed with its new sha256 (probes keep the true scores)."""
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.load(str(copy / "heads.onnx"))
    for node in model.graph.node:
        node.output[:] = ["mi_before_nan" if name == "mi" else name for name in node.output]
        node.input[:] = ["mi_before_nan" if name == "mi" else name for name in node.input]
    model.graph.initializer.append(numpy_helper.from_array(np.array(np.nan, np.float32), "nan_value"))
    model.graph.node.append(helper.make_node("Add", ["mi_before_nan", "nan_value"], ["mi"]))
    onnx.save(model, str(copy / "heads.onnx"))
    write_manifest(copy, manifest_of(copy))
    return copy


def _probe_count(root: Path) -> int:
    return len(json.loads((root / "probes" / "probes.json").read_text())["clips"])


def test_a_graph_that_returns_nan_fails_the_self_check(nan_heads):
    from deramos.runtime import SelfCheckFailed

    n = _probe_count(nan_heads)
    problem = f"the graph produced non-finite scores (NaN or inf) for {n} of {n} probe clips"
    message = api_refusal(nan_heads, SelfCheckFailed, self_check=True)
    with Scorer.load(nan_heads, backend="onnxruntime-cpu") as scorer:
        describe = scorer.backend.describe()
    assert message == f"{nan_heads}: self-check failed for {describe}: {problem}"
    result = run_cli(["--bundle", nan_heads, "--backend", "onnxruntime-cpu", "--self-check"])
    assert result.exit_code == 1, result.output
    assert result.stdout.splitlines()[-1] == f"FAIL: {problem}"
    assert "Traceback" not in result.output and "NaN in the input" not in result.output
    result = run_cli(["--bundle", nan_heads, "--backend", "onnxruntime-cpu", "--self-check", "--json"])
    report = json.loads(result.stdout)
    assert result.exit_code == 1 and report["passed"] is False and report["failures"] == [problem]


def test_a_nan_score_blames_the_graph_not_the_input(nan_heads, clip):
    from deramos.runtime.scorer import ScoringError

    with Scorer.load(nan_heads, backend="onnxruntime-cpu") as scorer, pytest.raises(ScoringError) as raised:
        scorer.score(clip, PROMPT)
    assert str(raised.value) == f"{clip}: the graph produced a non-finite score (NaN or inf)"
    result = run_cli(["--bundle", nan_heads, "--backend", "onnxruntime-cpu", clip, PROMPT])
    assert result.exit_code == 1
    assert f"error: {clip}: the graph produced a non-finite score (NaN or inf)" in result.stderr.splitlines()


# --- 11. probes.json validated on load ----------------------------------------------------------------


def _probe_edit(number: int, **values):
    def change(index):
        index["clips"][number].update(values)
    return change


def _probe_drop(number: int, key: str):
    def change(index):
        del index["clips"][number][key]
    return change


PROBE_CASES = {
    "mi NaN": (_probe_edit(3, mi=float("nan")),
               "probe 3 (probes/03.flac): field mi must be a number between -1e+06 and 1e+06 (the stored FP32 score), got a number nan"),
    "ta Infinity": (_probe_edit(0, ta=float("inf")),
                    "probe 0 (probes/00.flac): field ta must be a number between -1e+06 and 1e+06 (the stored FP32 score), got a number inf"),
    "ta -Infinity": (_probe_edit(5, ta=float("-inf")),
                     "probe 5 (probes/05.flac): field ta must be a number between -1e+06 and 1e+06 (the stored FP32 score), got a number -inf"),
    "mi true": (_probe_edit(1, mi=True),
                "probe 1 (probes/01.flac): field mi must be a number between -1e+06 and 1e+06 (the stored FP32 score), got a boolean True"),
    "mi text": (_probe_edit(2, mi="3.1"),
                "probe 2 (probes/02.flac): field mi must be a number between -1e+06 and 1e+06 (the stored FP32 score), got a string '3.1'"),
    "mi 1e300": (_probe_edit(2, mi=1e300),
                 "probe 2 (probes/02.flac): field mi must be a number between -1e+06 and 1e+06 (the stored FP32 score), got a number 1e+300"),
    "no prompt": (_probe_drop(4, "prompt"), "probe 4 (probes/04.flac): field prompt must be a non-empty string, got missing"),
    "NUL in file": (_probe_edit(1, file="probes/01.flac\0"), "probe 1: field file contains a NUL byte (not a file name)"),
    "file outside": (_probe_edit(1, file="../manifest.json"),
                     "probe 1: field file leaves the bundle ('..'; files must be inside the bundle)"),
    "file unlisted": (_probe_edit(2, file="probes/99.flac"),
                      "probe 2 (probes/99.flac): probe clip not listed (with its sha256) in manifest.json"),
    "file null": (_probe_edit(0, file=None), "probe 0: field file must be a file name, got null"),
    "clips object": (lambda index: index.update(clips={}), "field clips must be a non-empty list of probes, got an object"),
    "clip a number": (lambda index: index["clips"].__setitem__(6, 7), "probe 6 must be an object, got an integer 7"),
}


@pytest.mark.parametrize("case", sorted(PROBE_CASES))
def test_probes_json_is_validated_on_load(copy, case):
    change, expected = PROBE_CASES[case]
    index_path = copy / "probes" / "probes.json"
    index = json.loads(index_path.read_text())
    change(index)
    index_path.write_text(json.dumps(index))
    write_manifest(copy, manifest_of(copy))         # listed with its new sha256: only the content is wrong
    message = api_refusal(copy, self_check=True)
    assert message == f"{index_path}: {expected}"
    assert cli_refusal(copy, "--self-check") == message


def test_probes_json_that_is_not_json_names_the_file(copy):
    index_path = copy / "probes" / "probes.json"
    index_path.write_text('{"clips": [')
    write_manifest(copy, manifest_of(copy))
    message = api_refusal(copy, self_check=True)
    assert message == f"{index_path}: unreadable probe index (not valid JSON: Expecting value)"
    assert cli_refusal(copy, "--self-check") == message


def test_the_untouched_bundle_passes_its_self_check(copy):
    with Scorer.load(copy, backend="onnxruntime-cpu", self_check=True) as scorer:
        assert scorer.self_check_report.passed and scorer.self_check_report.problems == []
    result = run_cli(["--bundle", copy, "--backend", "onnxruntime-cpu", "--self-check"])
    assert result.exit_code == 0 and result.stdout.splitlines()[-1] == "PASS"
