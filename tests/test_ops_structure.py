"""The structure of oneshot.ops and oneshot.models, read from the source (AST, nothing imported) (issue 24).

* No import cycle among the ``oneshot.ops`` modules, imports inside functions included; no op module imports
  another op module (they share only the helpers below them: ``_common``, ``_backend``, ``_registry``,
  ``reference``); ``_common`` holds no backend logic (imports nothing from oneshot).
* No private name crosses a module border in ``oneshot.ops`` and ``oneshot.models``: no ``from m import _x`` of
  another module, no ``m._x`` on an imported module, and a private module (``oneshot.ops._backend``) is imported
  only from inside its own package.
* ``import oneshot`` imports neither triton nor ``oneshot.kernels`` (the Triton twins register on first use).
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parent.parent / "oneshot"
OP_MODULES = ("triplane", "raymarch", "raster", "render", "mesh")


def _module_name(path: Path) -> str:
    parts = path.relative_to(PKG.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _resolve(module: str, is_package: bool, node: ast.ImportFrom) -> str:
    if node.level == 0:
        return node.module or ""
    base = module.split(".") if is_package else module.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _imports(path: Path, module: str | None = None) -> list[tuple[str, str | None, int]]:
    """(imported module, imported name or None, line) of every import in the file, at any depth."""
    module, is_package = module or _module_name(path), path.name == "__init__.py"
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out += [(alias.name, None, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            target = _resolve(module, is_package, node)
            out += [(target, alias.name, node.lineno) for alias in node.names]
    return out


def _files(*subpackages: str) -> list[Path]:
    return sorted(p for sub in subpackages for p in (PKG / sub).glob("*.py"))


def _known_modules() -> set[str]:
    return {_module_name(p) for p in PKG.rglob("*.py")}


def _ops_graph() -> dict[str, set[str]]:
    known = _known_modules()
    graph: dict[str, set[str]] = {}
    for path in _files("ops"):
        src = _module_name(path)
        deps = graph.setdefault(src, set())
        for target, name, _ in _imports(path):
            # `from . import reference` imports the module oneshot.ops.reference
            full = f"{target}.{name}" if name and f"{target}.{name}" in known else target
            if full.startswith("oneshot.ops") and full != src:
                deps.add(full)
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for dep in sorted(graph.get(node, ())):
            if state.get(dep) == 1:
                return stack[stack.index(dep):] + [dep]
            if dep not in state and (found := visit(dep)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_the_cycle_finder_finds_a_cycle():  # (so that the next test can fail)
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None


def test_no_import_cycle_among_the_ops_modules():
    graph = _ops_graph()
    assert "oneshot.ops.reference" in graph["oneshot.ops.triplane"]  # (the graph is read at all)
    assert _cycle(graph) is None, f"import cycle: {' -> '.join(_cycle(graph))}"


def test_no_op_module_imports_another_op_module():
    graph = _ops_graph()
    ops = {f"oneshot.ops.{m}" for m in OP_MODULES}
    crossing = {m: sorted(graph[m] & ops) for m in ops if graph[m] & ops}
    assert not crossing, f"op modules importing op modules: {crossing}"


def test_common_holds_no_backend_logic():
    deps = [t for t, _, _ in _imports(PKG / "ops" / "_common.py") if t.startswith("oneshot")]
    assert deps == [], f"ops/_common.py imports {deps}: backend facts belong in ops/_backend.py"


def _private_crossings(paths: list[Path], module_names: list[str] | None = None) -> list[str]:
    known = _known_modules()
    bad = []
    for k, path in enumerate(paths):
        module = module_names[k] if module_names else _module_name(path)
        package = module if path.name == "__init__.py" else module.rpartition(".")[0]
        tree = ast.parse(path.read_text(), str(path))
        module_aliases: dict[str, str] = {}  # local name -> oneshot module it is bound to
        for target, name, line in _imports(path, module):
            if not target.startswith("oneshot"):
                continue
            full = f"{target}.{name}" if name and f"{target}.{name}" in known else target
            # a private module may be used only inside the package that holds it
            parts = full.split(".")
            for i, part in enumerate(parts):
                if part.startswith("_") and not part.startswith("__"):
                    owner = ".".join(parts[:i])
                    if not (package == owner or package.startswith(owner + ".")):
                        bad.append(f"{module}:{line} imports the private module {'.'.join(parts[:i + 1])}")
                    break
            if name and name.startswith("_") and not name.startswith("__") and full == target:
                bad.append(f"{module}:{line} imports the private name {target}.{name}")
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                for alias in node.names:
                    full = f"{_resolve(module, path.name == '__init__.py', node)}.{alias.name}"
                    if full in known:
                        module_aliases[alias.asname or alias.name] = full
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name.startswith("oneshot") and alias.asname:
                        module_aliases[alias.asname] = alias.name
        for node in ast.walk(tree):
            if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
                    and node.value.id in module_aliases and node.attr.startswith("_")
                    and not node.attr.startswith("__")):
                bad.append(f"{module}:{node.lineno} uses {module_aliases[node.value.id]}.{node.attr}")
    return bad


def test_the_private_name_finder_finds_crossings(tmp_path):  # (so that the next test can fail)
    sample = tmp_path / "probe.py"  # read as if it were oneshot/models/probe.py
    sample.write_text("from .. import cameras\nfrom ..ops._backend import kernel_registered\n"
                      "from .volume import _rand\n\ndef f():\n    return cameras._resolution(3)\n")
    found = _private_crossings([sample], ["oneshot.models.probe"])
    assert any("private module oneshot.ops._backend" in b for b in found), found
    assert any("private name oneshot.models.volume._rand" in b for b in found), found
    assert any("uses oneshot.cameras._resolution" in b for b in found), found


def test_no_private_name_crosses_a_module_border_in_ops_and_models():
    bad = _private_crossings(_files("ops", "models"))
    assert not bad, "\n".join(bad)


def test_import_oneshot_imports_no_triton():
    code = ("import sys, oneshot, oneshot.models\n"
            "print(sorted(m for m in sys.modules if m == 'triton' or m.startswith(('triton.', 'oneshot.kernels'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]", out.stdout


@pytest.mark.parametrize("name", OP_MODULES)
def test_each_op_module_registers_its_own_triton_twin(name):
    """The op modules with a Triton twin define it themselves (``oneshot::<op>_triton``), lazily."""
    text = (PKG / "ops" / f"{name}.py").read_text()
    tree = ast.parse(text)
    lazy = [n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef) and n.name == "_register_triton"]
    if name == "mesh":
        assert not lazy and "triton_op" not in text
        return
    assert len(lazy) == 1 and "triton_op" in ast.unparse(lazy[0])
    top_level = [t for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))
                 for t in ([a.name for a in n.names] if isinstance(n, ast.Import) else [n.module or ""])]
    assert not any("kernels" in t or t.startswith("triton") for t in top_level), top_level
