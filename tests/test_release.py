"""The release: the source distribution carries everything the build reads and nothing else, the distribution's
name is the one the README tells users to install, and the version has one source (issue 23).

The sdist is built here the way CI builds it (PEP 517, setuptools), without build isolation so the test needs no
network; CI also builds it isolated and installs it into a fresh environment (`.ci/install_check.sh`).
"""

from __future__ import annotations

import importlib.metadata as md
import json
import re
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

import oneshot

ROOT = Path(__file__).resolve().parent.parent
CSRC = ROOT / "csrc"
DIST = "oneshot-avatar"
# Build outputs and per-user files that may lie in a working tree and must never reach the sdist.
FORBIDDEN = re.compile(r"(^|/)(\.venv[^/]*|build|dist|\.git|__pycache__|\.hypothesis|\.pytest_cache)(/|$)"
                       r"|\.(so|o|pyc)$|_C_build\.json$|^benchmarks/|^tests/|^docs/|^scripts/")


def _normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


@pytest.fixture(scope="module")
def sdist_members(tmp_path_factory) -> set[str]:
    out = tmp_path_factory.mktemp("sdist")
    r = subprocess.run([sys.executable, "-m", "build", "--sdist", "--no-isolation", "--outdir", str(out), str(ROOT)],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    (tar,) = out.glob("*.tar.gz")
    assert tar.name == f"oneshot_avatar-{oneshot.__version__}.tar.gz"
    prefix = tar.name[: -len(".tar.gz")] + "/"
    with tarfile.open(tar) as t:
        names = [m.name for m in t.getmembers() if m.isfile()]
    assert all(n.startswith(prefix) for n in names), names[:5]
    return {n[len(prefix):] for n in names}


def _includes(path: Path) -> list[str]:
    return re.findall(r'^\s*#\s*include\s+"([^"]+)"', path.read_text(), flags=re.M)


def _needed_by_build() -> set[str]:
    """build.json, CMakeLists.txt, the sources build.json lists and every header they include (transitively,
    resolved against the including file's folder and build.json's include dirs), as csrc-rooted paths."""
    cfg = json.loads((CSRC / "build.json").read_text())
    todo = [CSRC / s for s in cfg["cpu_sources"] + cfg["cuda_sources"] + cfg["python_module_sources"]]
    dirs = [CSRC / d for d in cfg["include_dirs"]]
    seen: set[Path] = set()
    while todo:
        f = todo.pop()
        if f in seen:
            continue
        assert f.is_file(), f"{f} is listed or included but does not exist"
        seen.add(f)
        for inc in _includes(f):
            hits = [d / inc for d in [f.parent, *dirs] if (d / inc).is_file()]
            assert hits, f"{f.relative_to(ROOT)} includes {inc!r}, found in neither its folder nor {cfg['include_dirs']}"
            todo.append(hits[0].resolve())
    return {p.relative_to(ROOT).as_posix() for p in seen} | {"csrc/build.json", "CMakeLists.txt"}


def test_include_graph_is_found():
    """The walk itself: it reaches a header only included by another header (a walk that stopped at the sources
    would pass the sdist test below with headers missing)."""
    needed = _needed_by_build()
    assert "csrc/common/macros.h" in needed and "csrc/render/render_args.h" in needed
    assert any(p.endswith(".cuh") for p in needed) and any(p.endswith(".cu") for p in needed)


def test_sdist_carries_what_the_build_reads(sdist_members):
    missing = _needed_by_build() - sdist_members
    assert not missing, f"the sdist leaves out files the build reads: {sorted(missing)} (MANIFEST.in)"
    every_csrc = {p.relative_to(ROOT).as_posix() for p in CSRC.rglob("*") if p.is_file()
                  and not FORBIDDEN.search(p.relative_to(ROOT).as_posix())}
    assert not every_csrc - sdist_members, f"files under csrc/ missing from the sdist: {sorted(every_csrc - sdist_members)}"
    for f in ("setup.py", "pyproject.toml", "README.md", "LICENSE", "MANIFEST.in", "PKG-INFO"):
        assert f in sdist_members, f
    py = {p.relative_to(ROOT).as_posix() for p in (ROOT / "oneshot").rglob("*.py")}
    assert not py - sdist_members, sorted(py - sdist_members)


def test_sdist_carries_nothing_else(sdist_members):
    stray = sorted(m for m in sdist_members if FORBIDDEN.search(m))
    assert not stray, f"the sdist carries working-tree files that do not belong: {stray[:20]}"
    allowed_top = {"csrc", "oneshot", "oneshot_avatar.egg-info", "setup.py", "setup.cfg", "pyproject.toml",
                   "README.md", "LICENSE", "MANIFEST.in", "PKG-INFO", "CMakeLists.txt"}
    assert {m.split("/")[0] for m in sdist_members} <= allowed_top


def test_forbidden_pattern_catches_build_outputs():
    for bad in (".venv/lib/x.py", "build/temp/ext.o", "oneshot/_C.cpython-311-x86_64-linux-gnu.so",
                "oneshot/_C_build.json", "tests/test_ops.py", "benchmarks/results/cpu.csv", ".venv-cuda/bin/python"):
        assert FORBIDDEN.search(bad), bad
    for good in ("csrc/render/render.h", "oneshot/ops/render.py", "CMakeLists.txt"):
        assert not FORBIDDEN.search(good), good


def pip_commands(markdown: str) -> list[str]:
    """The `pip install ...` commands of a markdown text: lines of fenced code blocks and inline code spans."""
    cmds, fenced = [], False
    for line in markdown.splitlines():
        if line.lstrip().startswith("```"):
            fenced = not fenced
            continue
        spans = [line] if fenced else re.findall(r"`([^`]+)`", line)
        for span in spans:
            m = re.search(r"\bpip install (.*)", span)
            if m:
                cmds.append(m.group(1).split("#")[0])
    return cmds


def _readme_install_names() -> set[str]:
    """Distribution names the README tells users to `pip install` (flags, paths, local files and torch and the build
    tools left out)."""
    names = set()
    for cmd in pip_commands((ROOT / "README.md").read_text()):
        for tok in cmd.split():
            tok = tok.strip("'\"")
            if tok.startswith("-") or "/" in tok or tok.startswith(".") or tok.endswith((".tar.gz", ".whl")):
                continue
            name = re.match(r"[A-Za-z0-9][A-Za-z0-9._-]*", tok)
            if name and _normalize(name.group(0)) not in {"torch", "torchvision", "setuptools", "wheel", "ninja"}:
                names.add(_normalize(name.group(0)))
    return names


def test_readme_installs_the_installed_distribution():
    """The installed package's metadata name is the one the README tells users to `pip install`, and not the
    unrelated `oneshot` on PyPI."""
    owners = md.packages_distributions().get("oneshot", [])
    assert {_normalize(o) for o in owners} == {DIST}, owners
    ours = {n for n in _readme_install_names() if "oneshot" in n}  # others: lpips' heads, for example
    assert ours == {DIST}, _readme_install_names()
    assert md.version(DIST) == oneshot.__version__


def test_version_has_one_source():
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert re.search(r'^dynamic = \["version"\]', pyproject, re.M)
    assert not re.search(r"^version\s*=\s*\"", pyproject, re.M), "a second version in pyproject.toml"
    assert re.search(r'version = \{ attr = "oneshot.__version__" \}', pyproject)
