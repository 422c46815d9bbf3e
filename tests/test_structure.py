"""The package's structure holds (issue 24): read from the source with the ast module (nothing is imported), the
import graph of ``oneshot`` has no cycle, every import goes down the layers (ops -> face3d -> models / data -> train /
eval -> cli), no private name is used outside its module, no benchmark or library module reaches the command layer,
and no module outgrows a few hundred lines."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PKG = ROOT / "oneshot"

#: Lowest first. A module imports only from its own layer or below; within a layer, only from its own package
#: (no imports between peers such as models and data), except the pairs in PEER_IMPORTS.
LAYERS = [
    ["oneshot._extension", "oneshot._checkpoint", "oneshot._progress", "oneshot._resume", "oneshot.kernels",
     "oneshot.imageio", "oneshot.video"],
    ["oneshot.ops"],
    ["oneshot.cameras"],
    ["oneshot.face3d"],
    ["oneshot.models", "oneshot.data", "oneshot.compat"],
    ["oneshot.export"],
    ["oneshot.train", "oneshot.eval"],
    ["oneshot.cli"],
    ["oneshot.__main__", "oneshot"],
]
PEER_IMPORTS: set[tuple[str, str]] = set()
MAX_LINES = 450


def _module_name(path: Path) -> tuple[str, bool]:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    is_pkg = parts[-1] == "__init__"
    return ".".join(parts[:-1] if is_pkg else parts), is_pkg


def modules(root: Path = PKG) -> dict[str, tuple[Path, bool]]:
    return {_module_name(f)[0]: (f, _module_name(f)[1]) for f in sorted(root.rglob("*.py"))}


def _target(mod: str, is_pkg: bool, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    base = mod.split(".") if is_pkg else mod.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def imports(mods: dict) -> dict[str, dict[str, int]]:
    """{module: {imported oneshot module: line}}, imports inside functions included."""
    out = {}
    for mod, (path, is_pkg) in mods.items():
        found: dict[str, int] = {}
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                tgt = _target(mod, is_pkg, node)
                names = [f"{tgt}.{a.name}" if f"{tgt}.{a.name}" in mods else tgt for a in node.names]
            for n in names:
                if n != "oneshot" and not n.startswith("oneshot."):
                    continue
                while n not in mods and "." in n:
                    n = n.rsplit(".", 1)[0]
                if n != mod:
                    found.setdefault(n, node.lineno)
        out[mod] = found
    return out


def cycles(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, comps, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph.get(v, {}):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                comps.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return comps


def home(mod: str) -> tuple[int, str]:
    """(layer, the LAYERS entry) of a module: the longest entry that is it or a package above it."""
    best = None
    for i, layer in enumerate(LAYERS):
        for entry in layer:
            if (mod == entry or mod.startswith(entry + ".")) and (best is None or len(entry) > len(best[1])):
                best = (i, entry)
    assert best is not None, f"{mod} is in no layer: add it to LAYERS in {__file__}"
    return best


def layer_violations(graph) -> list[str]:
    bad = []
    for mod, targets in graph.items():
        lm, pm = home(mod)
        for tgt, line in targets.items():
            if tgt == "oneshot" and mod != "oneshot":  # `from oneshot import x` names a submodule
                continue
            lt, pt = home(tgt)
            if lt > lm:
                bad.append(f"{mod}:{line} imports {tgt}, a higher layer ({pt})")
            elif lt == lm and pt != pm and (pm, pt) not in PEER_IMPORTS:
                bad.append(f"{mod}:{line} imports {tgt}, a peer package of the same layer")
    return bad


def private_uses(mods) -> list[str]:
    """`from x import _name` and `module._name` for another module of oneshot's."""
    bad = []
    for mod, (path, is_pkg) in mods.items():
        tree = ast.parse(path.read_text(), str(path))
        aliases = {}
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                tgt = _target(mod, is_pkg, node)
                if not (tgt == "oneshot" or tgt.startswith("oneshot.")):
                    continue
                for a in node.names:
                    full = f"{tgt}.{a.name}"
                    if full in mods:
                        aliases[a.asname or a.name] = full
                    elif a.name.startswith("_") and not a.name.startswith("__"):
                        bad.append(f"{mod}:{node.lineno} imports the private {a.name} of {tgt}")
            elif isinstance(node, ast.Import):
                for a in node.names:
                    if a.name.startswith("oneshot") and a.asname:
                        aliases[a.asname] = a.name
        for node in ast.walk(tree):
            if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in aliases
                    and node.attr.startswith("_") and not node.attr.startswith("__")):
                bad.append(f"{mod}:{node.lineno} uses {aliases[node.value.id]}.{node.attr}, a private name")
    return bad


def test_the_graph_reader_sees_what_it_must():
    """The checks themselves, on a made-up package: a cycle, an upward import, a peer import and a private name."""
    graph = {"oneshot.ops.a": {"oneshot.ops.b": 1}, "oneshot.ops.b": {"oneshot.ops.a": 2},
             "oneshot.face3d.x": {"oneshot.models.y": 3}, "oneshot.models.y": {"oneshot.data.z": 4},
             "oneshot.data.z": {}}
    assert cycles(graph) == [["oneshot.ops.a", "oneshot.ops.b"]]
    bad = layer_violations(graph)
    assert any("face3d.x:3 imports oneshot.models.y, a higher layer" in b for b in bad)
    assert any("models.y:4 imports oneshot.data.z, a peer package" in b for b in bad)


def test_private_names_are_found(tmp_path):
    pkg = tmp_path / "oneshot"
    (pkg / "ops").mkdir(parents=True)
    for f in ("__init__.py", "ops/__init__.py"):
        (pkg / f).write_text("")
    (pkg / "ops" / "a.py").write_text("def _hidden():\n    pass\n")
    (pkg / "ops" / "b.py").write_text("from .a import _hidden\nfrom . import a\na._hidden()\n")
    global ROOT
    old, ROOT = ROOT, tmp_path
    try:
        bad = private_uses(modules(pkg))
    finally:
        ROOT = old
    assert len(bad) == 2 and "private _hidden of oneshot.ops.a" in bad[0] and "oneshot.ops.a._hidden" in bad[1]


@pytest.fixture(scope="module")
def graph():
    return imports(modules())


def test_no_import_cycles(graph):
    assert not cycles(graph), cycles(graph)


def test_imports_go_down_the_layers(graph):
    bad = layer_violations(graph)
    assert not bad, "\n".join(bad)


def test_no_private_name_crosses_a_module_border():
    bad = private_uses(modules())
    assert not bad, "\n".join(bad)


def test_nothing_below_the_command_layer_or_in_benchmarks_imports_it(graph):
    for mod, targets in graph.items():
        if home(mod)[1] not in ("oneshot.cli", "oneshot.__main__"):
            assert not any(t == "oneshot.cli" or t.startswith("oneshot.cli.") for t in targets), mod
    for script in (ROOT / "benchmarks").glob("*.py"):
        tree = ast.parse(script.read_text())
        names = [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
        names += [n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
        assert not [n for n in names if n == "oneshot.cli" or n.startswith("oneshot.cli.")], script.name


def test_modules_stay_small():
    big = {m: len(p.read_text().splitlines()) for m, (p, _) in modules().items()}
    big = {m: n for m, n in big.items() if n > MAX_LINES}
    assert not big, f"modules over {MAX_LINES} lines (split out their second responsibility): {big}"
