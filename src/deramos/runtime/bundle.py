"""The bundle: the contract between `deramos-export` and the runtime.

    bundle/
      manifest.json                 schema below; every file listed with its sha256
      tokenizer.json                a `tokenizers` fast tokenizer
      audio_encoder.onnx            waveform [B, N] f32, lengths [B] i64 -> frames [B, T, Da] f32, frame_mask [B, T] bool
      text_encoder.onnx             input_ids, attention_mask [B, L] i64 -> tokens [B, L, Dt] f32
      heads.onnx                    frames, frame_mask, tokens, token_mask -> mi, ta [B], mi_dist, ta_dist [B, K]
      *.fp16.onnx, *.int8.onnx      the same graphs in FP16 / INT8 (QDQ); inputs and outputs stay FP32
      <graph file>.data             the weights of a graph over 16 MB (runtime/contract.py), listed
                                    after the graph in graphs.<graph>.files.<precision>
      calibration/                  INT8 calibration cache and drift report
      trt/<device-tag>/             TensorRT engines + build.json, built for one GPU

manifest.json:
    format: "deramos-bundle", format_version: int
    model: {name, config}            config = deramos ModelConfig as a dict
    sample_rate, window_seconds, samples_per_frame, min_tail_samples
    score: {min, max, bins}
    tokenizer: {file, max_tokens}
    graphs: {<graph>: {inputs: [io], outputs: [io], files: {<precision>: [file, ...]}}}
            io = {name, dtype, shape}; shape entries are ints or axis names (dynamic)
    files: {<relative path>: sha256}
    versions: {deramos, torch, onnx, onnxruntime, opset}
    parity: {<precision>: report}    the export's validation against PyTorch

Every number the runtime reads is range-checked on load (one BundleError line naming the field
and the allowed range; NaN, inf and true/false are refused too). The bounds are wide enough for
any model this runtime can serve and narrow enough that nothing derived from them (a window in
samples, token arrays, audio buffers) overflows or allocates absurdly:

    sample_rate          integer, 8000..192000 (Hz)
    window_seconds       number, 0.5..600 (600 s at 192 kHz is 115 M samples, 461 MB of float32)
    samples_per_frame    integer, 1..one window in samples
    min_tail_samples     integer, 0..one window in samples
    tokenizer.max_tokens integer, 1..8192
    score.min, score.max finite numbers in -1e6..1e6, min < max (when `score` is present)
    score.bins           integer, 2..1000

Every file name must be a relative POSIX path inside the bundle, without a NUL byte.

`Bundle` is the one reader and writer of manifest.json: typed, read-only fields for readers,
writer methods and save() (rehash every file, replace manifest.json atomically) for the steps
that add to a bundle. json and hashlib only: the runtime never imports torch.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Iterable, Mapping, Sequence, Set
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path, PurePosixPath, PureWindowsPath
from types import MappingProxyType

from .contract import GRAPH_IO, GRAPHS, PRECISIONS, graph_file_name, seconds_to_samples  # noqa: F401 - re-exported
from .hashmemo import HashMemo, sha256_file  # noqa: F401 - sha256_file re-exported

FORMAT = "deramos-bundle"
FORMAT_VERSION = 1
_SHA256 = re.compile(r"[0-9a-f]{64}")
MISSING = object()   # a manifest key that is absent (unlike one that is null)

# The allowed ranges of the manifest's numbers (the module docstring says why these).
SAMPLE_RATE_RANGE = (8000, 192000)        # Hz
WINDOW_SECONDS_RANGE = (0.5, 600.0)
MAX_TOKENS_RANGE = (1, 8192)
SCORE_BINS_RANGE = (2, 1000)
SCORE_LIMITS = (-1e6, 1e6)


class BundleError(ValueError):
    """A bundle that cannot be used; the message names the file and the cause."""


@dataclass(frozen=True)
class GraphEntry:
    """One graph as the manifest lists it (its I/O names are runtime/contract.py's GraphSpec's)."""

    inputs: tuple[str, ...]                  # names, in the order the graph declares them
    outputs: tuple[str, ...]
    files: Mapping[str, tuple[str, ...]]     # precision -> bundle-relative files (first: the graph)
    # each input / output as listed ({name, dtype, shape}; shape entries are ints or axis names)
    input_specs: tuple[Mapping, ...] = ()
    output_specs: tuple[Mapping, ...] = ()


@dataclass(frozen=True)
class Manifest:
    """manifest.json, checked field by field (parse_manifest); read-only (sections the runtime does
    not interpret are frozen mappings: `plain()` turns one back into JSON data)."""

    format_version: int
    sample_rate: int
    window_seconds: float
    samples_per_frame: int
    min_tail_samples: int
    tokenizer_file: str
    max_tokens: int
    graphs: Mapping[str, GraphEntry]
    files: Mapping[str, str]                 # bundle-relative path -> sha256 hex
    score: tuple[float, float, int] | None = None   # (min, max, bins); None when the manifest has none
    model_name: str | None = None            # None: the manifest names no model
    model_config: Mapping | None = None      # deramos ModelConfig as a mapping
    int8: Mapping | None = None              # the build stage's INT8 record (target, scheme, quantized share ...)

    @property
    def int8_target(self) -> str | None:
        """The processor the INT8 graphs were built for (None: no INT8 record)."""
        return (self.int8 or {}).get("target")


class Bundle:
    """A bundle folder and its manifest.json.

    Readers use `manifest` (typed, read-only) and the shortcuts below. The build steps change the
    manifest through the writer methods (list_files, set_graph_files, drop_precision, record_*),
    then save(): it rehashes every listed file and replaces manifest.json atomically. The JSON
    document is the one source of truth; `manifest` is parsed from it, again after each change.
    A file listed since the last save() has no sha256 yet (read_verified refuses it)."""

    def __init__(self, root: str | Path, document: dict, verified: bool = False):
        self.root = Path(root)
        # True when load_bundle checked every file's sha256: then read_verified() checks again the
        # bytes it returns (what a backend hands to ONNX Runtime or TensorRT is what was checked).
        self.verified = verified
        self._document = document
        self._unhashed: set[str] = set()
        self._manifest = parse_manifest(document, self.manifest_path)

    def __repr__(self) -> str:
        return f"Bundle({str(self.root)!r}, verified={self.verified})"

    @property
    def manifest_path(self) -> Path:
        return self.root / "manifest.json"

    @property
    def manifest(self) -> Manifest:
        if self._manifest is None:
            self._manifest = parse_manifest(self._document, self.manifest_path, unhashed=self._unhashed)
        return self._manifest

    @property
    def sample_rate(self) -> int:
        return self.manifest.sample_rate

    @property
    def window_seconds(self) -> float:
        return self.manifest.window_seconds

    @property
    def window_samples(self) -> int:
        return seconds_to_samples(self.manifest.window_seconds, self.sample_rate)

    @property
    def min_tail_samples(self) -> int:
        return self.manifest.min_tail_samples

    @property
    def samples_per_frame(self) -> int:
        return self.manifest.samples_per_frame

    @property
    def tokenizer_file(self) -> Path:
        return self.root / self.manifest.tokenizer_file

    @property
    def max_tokens(self) -> int:
        return self.manifest.max_tokens

    @property
    def files(self) -> Mapping[str, str]:
        return self.manifest.files

    def precisions(self) -> list[str]:
        """Precisions for which every graph has a file."""
        graphs = self.manifest.graphs
        return [p for p in PRECISIONS if all(p in graphs[g].files for g in GRAPHS)]

    def graph_path(self, graph: str, precision: str) -> Path:
        files = self.manifest.graphs[graph].files
        if precision not in files:
            have = ", ".join(self.precisions()) or "none"
            raise BundleError(f"{self.root}: no {precision} {graph} graph in this bundle "
                              f"(it has: {have}; export with --{precision} to add it)")
        return self.root / files[precision][0]

    def graph_files(self, graph: str, precision: str) -> list[Path]:
        """The graph file first, then the side files its weights live in (external data)."""
        return [self.root / name for name in self.graph_names(graph, precision)]

    def graph_names(self, graph: str, precision: str) -> tuple[str, ...]:
        """graph_files() as bundle-relative names (the keys of files{})."""
        self.graph_path(graph, precision)          # BundleError naming what the bundle has
        return self.manifest.graphs[graph].files[precision]

    def read_verified(self, name: str) -> bytes:
        """The bytes of the listed file `name`, read once. In a verified bundle their sha256 must
        be the manifest's, so a caller that hands these bytes on (never the path) uses exactly
        what was checked: a file replaced after load_bundle, or while being read, is refused."""
        if name not in self.files:
            raise BundleError(f"{self.root / name}: not listed (with its sha256) in manifest.json")
        path = resolve_inside(self.root, name)
        try:
            data = path.read_bytes()
        except OSError as error:
            raise BundleError(f"{path}: cannot be read ({error.strerror or error})") from None
        if self.verified and hashlib.sha256(data).hexdigest() != self.files[name]:
            raise BundleError(f"{path}: sha256 does not match manifest.json (file modified or corrupt)")
        return data

    def as_json(self) -> dict:
        """manifest.json as save() writes it (a copy: changing it changes nothing here)."""
        return json.loads(json.dumps(self._document))

    # --- writing: each change is parsed again on the next read; save() makes it manifest.json ----

    def list_files(self, names: Iterable[str]) -> None:
        """List files written into the bundle in files{} (save() hashes them)."""
        files = self._document["files"]
        for name in names:
            if name not in files:
                files[name] = ""
                self._unhashed.add(name)
        self._changed()

    def unlist_files(self, names: Iterable[str]) -> None:
        """Take files out of files{} (the runtime opens listed files only); the files stay on disk."""
        for name in list(names):
            self._document["files"].pop(name, None)
            self._unhashed.discard(name)
        self._changed()

    def set_graph_files(self, graph: str, precision: str, names: Sequence[str]) -> None:
        """`graph` in `precision` is these files (the graph first, then its side files), listed."""
        self._document["graphs"][graph]["files"][precision] = list(names)
        self.list_files(names)

    def drop_precision(self, precision: str, written: Iterable[str]) -> None:
        """Unlist `precision` from every graph, unlist and delete the files of `written` no graph
        still uses, and for INT8 its record."""
        for graph in GRAPHS:
            self._document["graphs"][graph]["files"].pop(precision, None)
        still_used = {n for g in GRAPHS for names in self._document["graphs"][g]["files"].values() for n in names}
        for name in written:
            if name not in still_used:
                self.unlist_files([name])
                (self.root / name).unlink(missing_ok=True)
        if precision == "int8":
            self._document.pop("int8", None)
        self._changed()

    def record_parity(self, precision: str, report: dict) -> None:
        """The export's validation of `precision` against PyTorch."""
        self._document.setdefault("parity", {})[precision] = report
        self._changed()

    def record_checks(self, reports: Mapping[str, dict]) -> None:
        """Each artefact's comparison with FP32 (precision or tensorrt-<precision> -> report)."""
        self._document.setdefault("checks", {}).update(reports)
        self._changed()

    def record_speed(self, report: dict) -> None:
        self._document["speed"] = report
        self._changed()

    def set_int8(self, record: dict) -> None:
        """The INT8 record: target, scheme, method, what is quantised, the calibration set."""
        self._document["int8"] = record
        self._changed()

    def record_int8_search(self, graph: str, search: dict, quantized: dict | None = None) -> None:
        """The INT8 search's result for `graph` and, when it passed, what of the graph is INT8."""
        self._document["int8"].setdefault("search", {})[graph] = search
        if quantized is not None:
            self._document["int8"]["quantized"][graph] = quantized
        self._changed()

    def save(self) -> None:
        """Rehash every listed file, then replace manifest.json atomically."""
        write_manifest(self.root, self._document)
        self._unhashed.clear()
        self._changed()

    def _changed(self) -> None:
        self._manifest = None


def load_bundle(root: str | Path, verify: bool = True) -> Bundle:
    """Read and validate manifest.json; every listed file must lie inside the bundle and
    (by default) match its sha256."""
    root = Path(root)
    manifest_path = root / "manifest.json"
    if not root.is_dir():
        raise BundleError(f"{root}: bundle directory not found")
    if not manifest_path.is_file():
        raise BundleError(f"{manifest_path}: missing (not a deramos bundle; create one with deramos-export)")
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except RecursionError:
        raise BundleError(f"{manifest_path}: not valid JSON (nested too deeply)") from None
    except ValueError as err:   # JSONDecodeError, UnicodeDecodeError, an integer of > 4300 digits
        raise BundleError(f"{manifest_path}: not valid JSON ({err.msg if hasattr(err, 'msg') else err})") from None
    bundle = Bundle(root, manifest)
    for name in bundle.files:
        resolve_inside(root, name)
    if verify:
        verify_files(root, bundle.files)
        bundle.verified = True
    return bundle


# --- manifest validation: every field the runtime reads, with a one-line error naming it ---------


def parse_manifest(raw, path: Path, unhashed: Set[str] = frozenset()) -> Manifest:
    """The typed manifest of the JSON document `raw`; the files of `unhashed` (listed by a writer
    since the last save) may have no sha256 yet."""
    _check_header(raw, path)
    check = _FieldChecks(path)
    files = _files(raw["files"], check, unhashed)
    tokenizer = check.mapping("tokenizer", raw["tokenizer"])
    tokenizer_file = check.listed("tokenizer.file", tokenizer.get("file", MISSING), files)
    sample_rate = check.integer("sample_rate", raw["sample_rate"], *SAMPLE_RATE_RANGE, unit=" Hz")
    window_seconds = check.number("window_seconds", raw["window_seconds"], *WINDOW_SECONDS_RANGE, unit=" seconds")
    window = seconds_to_samples(window_seconds, sample_rate)
    return Manifest(
        format_version=raw["format_version"],
        sample_rate=sample_rate,
        window_seconds=window_seconds,
        samples_per_frame=check.integer("samples_per_frame", raw.get("samples_per_frame", MISSING), 1, window,
                                        unit=" (one window)"),
        min_tail_samples=check.integer("min_tail_samples", raw.get("min_tail_samples", MISSING), 0, window,
                                       unit=" (one window)"),
        tokenizer_file=tokenizer_file,
        max_tokens=check.integer("tokenizer.max_tokens", tokenizer.get("max_tokens", MISSING), *MAX_TOKENS_RANGE),
        graphs=MappingProxyType({graph: _graph(graph, check.mapping("graphs", raw["graphs"])[graph], check, files)
                                 for graph in GRAPHS}),
        files=MappingProxyType(dict(files)), score=_score(raw.get("score", MISSING), check),
        **_model(raw.get("model")), int8=frozen(raw["int8"]) if isinstance(raw.get("int8"), dict) else None)


def _model(model) -> dict:
    """The model's name and config, as far as the manifest has them (the runtime does not need them)."""
    model = model if isinstance(model, dict) else {}
    name, config = model.get("name"), model.get("config")
    return {"model_name": name if isinstance(name, str) else None,
            "model_config": frozen(config) if isinstance(config, dict) else None}


def frozen(value):
    """JSON data, read-only: objects as mappings that cannot be changed, lists as tuples."""
    if isinstance(value, dict):
        return MappingProxyType({key: frozen(item) for key, item in value.items()})
    if isinstance(value, list):
        return tuple(frozen(item) for item in value)
    return value


def plain(value):
    """A frozen manifest section as JSON data again (dicts and lists), e.g. for a report."""
    if isinstance(value, Mapping):
        return {key: plain(item) for key, item in value.items()}
    if isinstance(value, tuple):
        return [plain(item) for item in value]
    return value


class _FieldChecks:
    """Type and range checks whose errors read '<manifest>: field <name> ...'."""

    def __init__(self, path: Path):
        self.path = path

    def fail(self, name: str, problem: str) -> BundleError:
        return BundleError(f"{self.path}: field {name} {problem}")

    def mapping(self, name: str, value) -> dict:
        if not isinstance(value, dict):
            raise self.fail(name, f"must be an object, got {_json_type(value)}")
        return value

    def integer(self, name: str, value, low: int, high: int, unit: str = "") -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.fail(name, f"must be an integer, got {_json_type(value)}")
        if not low <= value <= high:
            raise self.fail(name, f"must be between {low} and {high}{unit}, got {_shown(value)}")
        return value

    def number(self, name: str, value, low: float, high: float, unit: str = "") -> float:
        """A finite number in [low, high] (compared before any conversion: 10**400 is refused,
        not an OverflowError)."""
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise self.fail(name, f"must be a number, got {_json_type(value)}")
        if not (low <= value <= high):      # NaN fails every comparison; inf is out of range
            raise self.fail(name, f"must be between {low:g} and {high:g}{unit}, got {_shown(value)}")
        return float(value)

    def listed(self, name: str, value, files: dict[str, str]) -> str:
        if not isinstance(value, str) or not value:
            raise self.fail(name, f"must be a file name, got {_json_type(value)}")
        if value not in files:
            raise self.fail(name, f"names {value!r}, which is not in files{{}} (every file the runtime "
                                  f"opens must be listed with its sha256)")
        return value


def _score(value, check: _FieldChecks) -> tuple[float, float, int] | None:
    """score: {min, max, bins}, optional (the runtime does not read it, but a bundle that has it
    must have sensible values: serving layers and reports do)."""
    if value is MISSING:
        return None
    score = check.mapping("score", value)
    low = check.number("score.min", score.get("min", MISSING), *SCORE_LIMITS)
    high = check.number("score.max", score.get("max", MISSING), *SCORE_LIMITS)
    if not low < high:
        raise check.fail("score.max", f"must be greater than score.min ({_shown(low)}), got {_shown(high)}")
    bins = check.integer("score.bins", score.get("bins", MISSING), *SCORE_BINS_RANGE)
    return low, high, bins


def _files(value, check: _FieldChecks, unhashed: Set[str]) -> dict[str, str]:
    files = check.mapping("files", value)
    for name, digest in files.items():
        problem = relative_path_problem(name)
        if problem:
            raise check.fail(f"files[{name!r}]", problem)
        if name in unhashed and digest == "":
            continue
        if not isinstance(digest, str) or not _SHA256.fullmatch(digest):
            raise check.fail(f"files[{name!r}]", f"must be a sha256 (64 hex digits), got {_json_type(digest)}")
    return files


def _graph(graph: str, spec, check: _FieldChecks, files: dict[str, str]) -> GraphEntry:
    where = f"graphs.{graph}"
    spec = check.mapping(where, spec)
    names, listed_specs = [], []
    for side, expected in zip(("inputs", "outputs"), GRAPH_IO[graph]):
        ios = spec.get(side)
        got = [io.get("name") if isinstance(io, dict) else io for io in ios] if isinstance(ios, list) else ios
        if got != list(expected):
            raise check.fail(f"{where}.{side}", f"must list {list(expected)} (name, dtype, shape), got {got!r}")
        names.append(tuple(expected))
        listed_specs.append(frozen(ios))
    precisions = check.mapping(f"{where}.files", spec.get("files", MISSING))
    by_precision = {}
    for precision, listed in precisions.items():
        name = f"{where}.files.{precision}"
        if precision not in PRECISIONS:
            raise check.fail(name, f"is not a precision ({', '.join(PRECISIONS)})")
        if not isinstance(listed, list) or not listed:
            raise check.fail(name, f"must be a non-empty list of files, got {_json_type(listed)}")
        by_precision[precision] = tuple(check.listed(name, f, files) for f in listed)
    return GraphEntry(names[0], names[1], MappingProxyType(by_precision), *listed_specs)


def relative_path_problem(name) -> str | None:
    """Why `name` cannot be a file of the bundle (None: it can): a bundle-relative POSIX path."""
    if not isinstance(name, str) or not name:
        return "must be a non-empty relative path"
    if "\0" in name:
        return "contains a NUL byte (not a file name)"
    try:
        os.fsencode(name)
    except UnicodeEncodeError:
        return "cannot be encoded as a file name on this system"
    pure = PurePosixPath(name)
    if pure.is_absolute() or PureWindowsPath(name).drive or name.startswith("\\"):
        return "is an absolute path (files must be inside the bundle)"
    if ".." in pure.parts or ".." in PureWindowsPath(name).parts:
        return "leaves the bundle ('..'; files must be inside the bundle)"
    return None


def resolve_inside(root: Path, name: str) -> Path:
    """root/name, refused when it (or a symlink on the way) leads outside the bundle."""
    path = root / name
    try:
        path.resolve().relative_to(root.resolve())
    except ValueError:
        raise BundleError(f"{path}: resolves outside the bundle ({path.resolve()}); "
                          f"a bundle's files must be inside it") from None
    except RuntimeError:   # a symlink loop (Python < 3.13 raises RuntimeError)
        raise BundleError(f"{path}: symlink loop") from None
    return path


def _shown(value) -> str:
    """A manifest number as an error shows it: 1e-09, 6.0, nan, 16000; 1.00e+40 for a huge integer
    (an integer of thousands of digits stays one short line)."""
    if isinstance(value, int) and abs(value) >= 10 ** 15:
        return f"{Decimal(value):.3g}"
    return repr(value)


def _json_type(value) -> str:
    if value is MISSING:
        return "missing"
    kinds = {bool: "a boolean", int: "an integer", float: "a number", str: "a string", list: "a list",
             dict: "an object", type(None): "null"}
    shown = repr(value) if isinstance(value, (bool, int, float, str)) else ""
    return f"{kinds.get(type(value), type(value).__name__)} {shown}".strip()


def _check_header(manifest, path: Path) -> None:
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise BundleError(f"{path}: not a deramos bundle manifest (format is not {FORMAT!r})")
    version = manifest.get("format_version", MISSING)
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise BundleError(f"{path}: field format_version must be a positive integer, got {_json_type(version)}")
    if version > FORMAT_VERSION:
        raise BundleError(f"{path}: bundle format {version} is newer than this runtime supports "
                          f"({FORMAT_VERSION}); upgrade deramos")
    for key in ("graphs", "files", "tokenizer", "sample_rate", "window_seconds"):
        if key not in manifest:
            raise BundleError(f"{path}: manifest has no {key!r} entry")
    if isinstance(manifest["graphs"], dict):
        for graph in GRAPHS:
            if graph not in manifest["graphs"]:
                raise BundleError(f"{path}: manifest lists no {graph} graph")


def verify_files(root: Path, files: Mapping[str, str], memo: bool | None = None) -> None:
    """Every file of `files` (name -> sha256) is inside the bundle and matches its sha256. A file
    unchanged since it last matched is not read again (runtime/hashmemo.py); memo=False (or
    DERAMOS_VERIFY=full) reads every byte."""
    hashes = HashMemo(root, enabled=memo)
    try:
        for name, expected in sorted(files.items()):
            path = resolve_inside(root, name)
            if not path.is_file():
                raise BundleError(f"{path}: missing from the bundle (listed in manifest.json)")
            if hashes.sha256(name) != expected:
                hashes.forget(name)
                raise BundleError(f"{path}: sha256 does not match manifest.json (file modified or corrupt)")
    finally:
        hashes.save()


def write_manifest(root: Path, manifest: dict) -> None:
    """Rehash every listed file, then replace manifest.json atomically (readers never see half).
    Bundle.save() writes through this; tools and tests that write a manifest by hand may too."""
    root = Path(root)
    manifest["files"] = {name: sha256_file(root / name) for name in sorted(manifest["files"])}
    scratch = root / "manifest.json.tmp"
    scratch.write_text(json.dumps(manifest, indent=2))
    scratch.replace(root / "manifest.json")


def check_graph_io(bundle: Bundle, graph: str, precision: str, inputs: list[str], outputs: list[str]) -> None:
    """The names a loaded graph declares must be the ones the manifest promises."""
    spec = bundle.manifest.graphs[graph]
    want_in, want_out = list(spec.inputs), list(spec.outputs)
    if list(inputs) != want_in or list(outputs) != want_out:
        path = bundle.graph_path(graph, precision)
        raise BundleError(f"{path}: graph inputs/outputs {list(inputs)} -> {list(outputs)} do not match "
                          f"manifest.json ({want_in} -> {want_out})")
