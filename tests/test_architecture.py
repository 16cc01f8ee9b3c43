"""The layering of docs/architecture.md, read from the source: which folder imports which.

Every `import` and `from ... import` of every module (at top level or inside a function: a lazy
import is still a dependency) is resolved to a module of the project and mapped to its folder
with the layer table below (src/deramos/<layer>). `python tests/test_architecture.py` prints the measured
folder graph, the edges with the imports behind them, and the cycles.
"""
from __future__ import annotations

import ast
import sys
from collections import defaultdict
from functools import lru_cache
from pathlib import Path


REPO = Path(__file__).resolve().parents[1]
SRC = REPO / "src"
# package -> folder (relative to src/): each subpackage of the one tree is a layer of its own;
# longest package first, so deramos.export's modules are not taken for deramos'.
_LAYERS = ("model", "data", "training", "export", "calibration", "runtime", "bench", "build", "scale", "serve")
FOLDERS = {**{f"deramos.{layer}": layer for layer in _LAYERS}, "deramos": "deramos"}


def _source_dir(package: str) -> Path:
    return SRC.joinpath(*package.split("."))
TORCH_SIDE = ("torch", "transformers", "safetensors.torch", "onnxscript")
# The only modules of deramos/ the runtime may use: they import nothing but the standard library.
LIGHT_DERAMOS_MODULES = {"deramos"}
# The torch-free build stage of issue 11: calibration/ and the build module's folder, once it exists.
BUILD_STAGE = tuple(f for f in ("calibration", "build") if f in FOLDERS.values())


@lru_cache(maxsize=None)
def module_files() -> dict[str, Path]:
    """Module name -> source file, for every module of every layer."""
    found = {}
    for package, folder in FOLDERS.items():
        for path in sorted(_source_dir(package).rglob("*.py")):
            parts = list(path.relative_to(_source_dir(package)).with_suffix("").parts)
            if package == "deramos" and parts[0] in _LAYERS:
                continue   # a layer of its own
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join([package, *parts])] = path
    return found


def _absolute(node: ast.ImportFrom, module: str, is_package: bool) -> list[str]:
    """The modules a `from X import a, b` may load: X itself and X.a, X.b (submodules)."""
    if node.level:
        base = module.split(".") if is_package else module.split(".")[:-1]
        base = base[: len(base) - (node.level - 1)]
        target = ".".join(base + ([node.module] if node.module else []))
    else:
        target = node.module or ""
    return [target] + [f"{target}.{alias.name}" for alias in node.names]


@lru_cache(maxsize=None)
def imports() -> dict[str, list[tuple[str, int]]]:
    """Module -> every (imported module name, line) in it, relative imports made absolute."""
    result = {}
    for module, path in module_files().items():
        found = []
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                found += [(alias.name, node.lineno) for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                found += [(name, node.lineno) for name in _absolute(node, module, path.name == "__init__.py")]
        result[module] = found
    return result


@lru_cache(maxsize=None)
def project_module(name: str) -> str | None:
    """The project module `name` refers to (a name inside a module maps to that module), or None."""
    known = module_files()
    while name and name not in known:
        name = name.rpartition(".")[0]
    return name or None


def folder_of(module: str) -> str:
    return next(folder for package, folder in FOLDERS.items() if module == package or module.startswith(package + "."))


@lru_cache(maxsize=None)
def folder_edges() -> dict[tuple[str, str], list[str]]:
    """(importing folder, imported folder) -> 'file:line module' for every import crossing folders."""
    edges = defaultdict(list)
    for module, found in imports().items():
        for name, line in found:
            target = project_module(name)
            if target is None or folder_of(target) == folder_of(module):
                continue
            where = f"{module_files()[module].relative_to(REPO)}:{line} {target}"
            if where not in edges[folder_of(module), folder_of(target)]:
                edges[folder_of(module), folder_of(target)].append(where)
    return dict(edges)


@lru_cache(maxsize=None)
def module_edges() -> frozenset[tuple[str, str]]:
    """(importing module, imported module) for every import between two files of the project."""
    found = set()
    for module, names in imports().items():
        for name, _ in names:
            target = project_module(name)
            # a package's own modules and a module importing its package's __init__ are not circles
            if target and target != module and not module.startswith(target + ".") and not target.startswith(module + "."):
                found.add((module, target))
    return frozenset(found)


def cycles(edges) -> list[tuple[str, ...]]:
    """Every elementary cycle of the folder graph, each once, starting at its smallest folder."""
    graph = defaultdict(set)
    for a, b in edges:
        graph[a].add(b)
    found = set()

    def walk(path):
        for nxt in sorted(graph[path[-1]]):
            if nxt == path[0]:
                found.add(tuple(path))
            elif nxt not in path and nxt > path[0]:
                walk(path + [nxt])

    for start in sorted(graph):
        walk([start])
    return sorted(found, key=lambda c: (len(c), c))


def torch_side_imports(module: str) -> list[str]:
    return [f"{name} (line {line})" for name, line in imports()[module]
            if any(name == t or name.startswith(t + ".") for t in TORCH_SIDE)]


def reaches_torch(module: str) -> list[str]:
    """The project modules importing a torch-side package that importing `module` can load,
    lazy imports included (what a torch-free install would trip over)."""
    seen, todo = set(), [module]
    while todo:
        current = todo.pop()
        if current not in seen:
            seen.add(current)
            todo += [target for name, _ in imports()[current] if (target := project_module(name))]
    return sorted(m for m in seen if torch_side_imports(m))


def edges_from(folder: str, to: tuple[str, ...]) -> dict[str, list[str]]:
    return {b: where for (a, b), where in folder_edges().items() if a == folder and b in to}


# ---------------------------------------------------------------------------------------------
# the rules that hold today

def test_the_graph_is_read_from_every_folder():
    modules = module_files()
    assert {folder_of(m) for m in modules} == set(FOLDERS.values())
    assert {"deramos.training.train", "deramos.data.synth.corpus", "deramos.export.api", "deramos.calibration.quantize",
            "deramos.runtime.scorer", "deramos.bench.cli", "deramos.model.network", "deramos.extras"} <= set(modules)
    # known edges are seen, with the file and line they come from
    assert any(e.startswith("src/deramos/bench/cli.py:") for e in folder_edges()["bench", "runtime"])
    assert "deramos.runtime.scorer" in {e.split()[-1] for e in folder_edges()["bench", "runtime"]}
    assert "deramos.model.network" in reaches_torch("deramos.training.train")


def test_the_cycle_finder_finds_cycles():
    edges = {("a", "b"): [], ("b", "a"): [], ("b", "c"): [], ("c", "d"): [], ("d", "b"): [], ("d", "e"): []}
    assert cycles(edges) == [("a", "b"), ("b", "c", "d")]
    assert cycles({("a", "b"): [], ("b", "c"): []}) == []


def test_runtime_imports_no_torch_side_package():
    offenders = {m: torch_side_imports(m) for m in module_files() if folder_of(m) == "runtime"}
    assert {m: found for m, found in offenders.items() if found} == {}


def test_no_runtime_module_can_load_torch():
    """Not even through another folder or a lazy import."""
    offenders = {m: reaches_torch(m) for m in module_files() if folder_of(m) == "runtime"}
    assert {m: found for m, found in offenders.items() if found} == {}


def test_runtime_uses_only_light_modules_of_deramos():
    used = {e.split()[-1] for e in folder_edges().get(("runtime", "deramos"), [])}
    assert used <= LIGHT_DERAMOS_MODULES, used - LIGHT_DERAMOS_MODULES
    for module in used:   # and those import nothing of the project and nothing torch-side
        assert not torch_side_imports(module)
        assert [name for name, _ in imports()[module] if project_module(name)] == []


def test_the_package_docstring_names_every_subpackage():
    import pkgutil

    import deramos

    listed = {line.split()[0] for line in deramos.__doc__.splitlines() if line.startswith("    deramos.")}
    assert listed == {f"deramos.{m.name}" for m in pkgutil.iter_modules(deramos.__path__)}


def test_importing_deramos_is_light():
    assert imports()["deramos"] == []


# Which folder may import which (besides its own): the torch side is model <- data <- training,
# all three over the runtime; the export starts from the model; nothing imports training but the
# entry points of deramos/extras.py (by name, at run time).
ALLOWED = {
    "deramos": {"runtime"},
    "model": {"runtime"},
    "data": {"runtime", "model"},
    "training": {"runtime", "model", "data"},
    "export": {"runtime", "model", "build", "calibration", "deramos"},
    "calibration": {"runtime", "data"},
    "build": {"runtime", "calibration"},
    "runtime": set(),
    "scale": {"runtime"},
    "serve": {"runtime"},
    "bench": {"runtime", "model", "data", "scale", "calibration"},
}


def test_every_folder_imports_only_what_it_may():
    assert set(ALLOWED) == set(FOLDERS.values())
    extra = {(a, b): where for (a, b), where in folder_edges().items() if b not in ALLOWED[a]}
    assert extra == {}


def test_no_import_circle_between_files():
    """The one-way rule holds per file too (lazy imports count): a circle is closed by moving the
    shared helper down, never by importing inside a function."""
    assert cycles(module_edges()) == []


def test_the_cycle_finder_sees_a_file_circle():
    assert cycles({("deramos.a", "deramos.b"): [], ("deramos.b", "deramos.a"): []}) == [("deramos.a", "deramos.b")]


def test_scale_and_serve_never_reach_torch():
    offenders = {m: reaches_torch(m) for m in module_files() if folder_of(m) in ("scale", "serve")}
    assert {m: found for m, found in offenders.items() if found} == {}


def test_the_torch_free_data_modules_stay_torch_free():
    """The build stage renders calibration clips with these: they must not pull torch in."""
    for module in ("deramos.data.musiceval", "deramos.data.synth.music", "deramos.data.synth.degrade"):
        assert reaches_torch(module) == [], module


def test_nothing_imports_bench():
    assert {a: where for (a, b), where in folder_edges().items() if b == "bench"} == {}


# ---------------------------------------------------------------------------------------------
# the target of issue 11 (section 5): these pass once the cycles are gone (then drop the marks)

def test_runtime_imports_neither_export_nor_calibration():
    assert edges_from("runtime", ("export", "calibration")) == {}


def test_the_build_stage_does_not_import_export():
    assert {folder: edges_from(folder, ("export",)) for folder in BUILD_STAGE} == dict.fromkeys(BUILD_STAGE, {})


def test_the_build_stage_can_run_without_torch():
    offenders = {m: reaches_torch(m) for m in module_files() if folder_of(m) in BUILD_STAGE}
    assert {m: found for m, found in offenders.items() if found} == {}


def test_the_folder_graph_has_no_cycles():
    assert cycles(folder_edges()) == []


def graph_summary() -> list[str]:
    """The measured folder graph as docs/architecture.md shows it: an edge a line, then the cycles."""
    edges = [f"{a} -> {b}  ({len(where)} imports)" for (a, b), where in sorted(folder_edges().items())]
    return edges + ["cycles: " + str([" -> ".join(c + (c[0],)) for c in cycles(folder_edges())] or "none"),
                    "file circles: " + str([" -> ".join(c + (c[0],)) for c in cycles(module_edges())] or "none")]


def lines_per_folder() -> str:
    lines = defaultdict(int)
    for module, path in module_files().items():
        lines[folder_of(module)] += len(path.read_text().splitlines())
    return "lines per folder: " + ", ".join(f"{f} {n}" for f, n in sorted(lines.items()))


def test_the_architecture_doc_shows_the_graph_as_measured():
    """docs/architecture.md's block is this file's output (the line counts aside: any edit moves them)."""
    doc = (REPO / "docs" / "architecture.md").read_text()
    block = doc.split("## Measured now", 1)[1].split("```", 2)[1].strip().splitlines()
    assert [line for line in block if not line.startswith("lines per folder")] == graph_summary()


def update_doc() -> None:
    """Rewrite docs/architecture.md's measured block with the graph as measured now."""
    path = REPO / "docs" / "architecture.md"
    head, rest = path.read_text().split("## Measured now", 1)
    before, _, after = rest.split("```", 2)
    block = "\n".join([*graph_summary(), lines_per_folder()])
    path.write_text(f"{head}## Measured now{before}```\n{block}\n```{after}")


if __name__ == "__main__" and sys.argv[1:] == ["--update-doc"]:
    update_doc()
elif __name__ == "__main__":
    for (a, b), where in sorted(folder_edges().items()):
        print(f"{a} -> {b}  ({len(where)} imports)")
        print("\n".join(f"    {line}" for line in where))
    print("\n".join(graph_summary()[len(folder_edges()):]))
    print(lines_per_folder())
