"""csrc/build.json is the one list of sources: every C++/CUDA file under csrc/ is in it, so setup.py, CMake and the
ONESHOT_JIT=1 build cannot drift apart, and none of them lists sources of its own."""

from __future__ import annotations

import json
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CSRC = ROOT / "csrc"
CFG = json.loads((CSRC / "build.json").read_text())


def _rel(paths):
    return sorted(p.relative_to(CSRC).as_posix() for p in paths)


def test_cpu_sources_are_every_cpp_but_the_python_module():
    every = _rel(CSRC.rglob("*.cpp"))
    assert "module.cpp" in every
    assert sorted(CFG["cpu_sources"]) == [p for p in every if p != "module.cpp"]
    assert len(CFG["cpu_sources"]) == len(set(CFG["cpu_sources"])), "duplicates in cpu_sources"


def test_python_module_and_cuda_sources():
    assert CFG["python_module_sources"] == ["module.cpp"]
    assert sorted(CFG["cuda_sources"]) == _rel(CSRC.rglob("*.cu"))


def test_listed_files_and_include_dirs_exist():
    for rel in CFG["cpu_sources"] + CFG["cuda_sources"] + CFG["python_module_sources"]:
        assert (CSRC / rel).is_file(), rel
    for d in CFG["include_dirs"]:
        assert (CSRC / d).is_dir(), d


def test_pinned_arithmetic_flag():
    """rasterize_points' exactness contract needs no fused multiply-add contraction in the CPU build."""
    assert "-ffp-contract=off" in CFG["cxx_flags"]
    assert not any("fast-math" in f for f in CFG["cxx_flags"] + CFG["nvcc_flags"])


def test_build_scripts_read_build_json_and_list_no_sources():
    from oneshot import _extension

    assert _extension.build_config() == CFG  # the JIT path reads the same file
    for script in ("setup.py", "CMakeLists.txt"):
        text = (ROOT / script).read_text()
        assert "build.json" in text, script
        code = [line.split("#", 1)[0] for line in text.splitlines()]  # comments may name files
        for rel in CFG["cpu_sources"] + CFG["cuda_sources"]:
            assert not any(Path(rel).name in line for line in code), f"{script} names {rel} itself"
