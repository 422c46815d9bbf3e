"""Compile (without linking) every C++ and CUDA source of oneshot against the headers of another torch, e.g. the
torch 2.11 + CUDA 13.0 a GPU machine has, without installing that torch:

    python -m pip download torch==2.11.0 --no-deps --only-binary=:all: --python-version 3.12 \\
        --platform manylinux_2_28_x86_64 -d /tmp/torch211
    python scripts/check_torch_headers.py --wheel /tmp/torch211/torch-2.11.0-*.whl [--cuda-arch 9.0] [--no-cuda]

The wheel's torch/include and torch/utils/cpp_extension.py are read from the zip (nothing is installed). The
flags are what that torch's cpp_extension passes on Linux, read from its cpp_extension.py: its C++ standard
(-std=c++17 up to torch 2.12, c++20 later) and COMMON_NVCC_FLAGS (e.g. -D__CUDA_NO_HALF_OPERATORS__, which
hides __half arithmetic operators), plus csrc/build.json's flags and macros as setup.py adds them. C++ sources
are checked with ``-fsyntax-only``; CUDA sources are compiled to a throw-away object by nvcc (device code
included) for one architecture. Prints one line per source; exit status 1 if any fails.
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import re
import subprocess
import sys
import sysconfig
import tempfile
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CSRC = ROOT / "csrc"


def _extract(wheel: Path, dest: Path) -> tuple[Path, str, str]:
    """Unpack torch/include and read (version, cpp_extension.py source) from the wheel."""
    with zipfile.ZipFile(wheel) as z:
        for name in z.namelist():
            if name.startswith("torch/include/"):
                z.extract(name, dest)
        version = re.search(r"__version__ = '([^']+)'", z.read("torch/version.py").decode()).group(1)
        cpp_ext = z.read("torch/utils/cpp_extension.py").decode()
    return dest / "torch" / "include", version, cpp_ext


def _torch_flags(cpp_ext: str) -> tuple[str, list[str]]:
    """(the -std= flag that torch's cpp_extension appends on Linux, its COMMON_NVCC_FLAGS)."""
    std = re.search(r"cpp_flag = cpp_flag_prefix \+ '(c\+\+\d+)'", cpp_ext)
    nvcc = re.search(r"^COMMON_NVCC_FLAGS = (\[.*?\])", cpp_ext, re.S | re.M)
    if not std or not nvcc:
        raise SystemExit("could not read the C++ standard or COMMON_NVCC_FLAGS from that torch's cpp_extension.py")
    return f"-std={std.group(1)}", ast.literal_eval(nvcc.group(1))


def _run(cmd: list[str]) -> tuple[bool, str]:
    p = subprocess.run(cmd, capture_output=True, text=True)
    return p.returncode == 0, (p.stdout + p.stderr).strip()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--wheel", required=True, type=Path, help="a torch wheel (only read)")
    p.add_argument("--cuda-arch", default="9.0", help="the architecture nvcc compiles for (default 9.0)")
    p.add_argument("--no-cuda", action="store_true", help="check the C++ sources only")
    p.add_argument("--jobs", type=int, default=int(os.environ.get("MAX_JOBS", "2")))
    a = p.parse_args(argv)
    cfg = json.loads((CSRC / "build.json").read_text())
    cuda_home = Path(os.environ.get("CUDA_HOME", "/usr/local/cuda"))
    with tempfile.TemporaryDirectory(prefix="torch_headers.") as tmp:
        inc, version, cpp_ext = _extract(a.wheel, Path(tmp))
        std, nvcc_common = _torch_flags(cpp_ext)
        with_cuda = not a.no_cuda
        includes = [f"-I{CSRC / d}" for d in cfg["include_dirs"]] + [
            f"-I{inc}", f"-I{inc / 'torch' / 'csrc' / 'api' / 'include'}", f"-I{sysconfig.get_paths()['include']}"]
        if with_cuda:
            includes.append(f"-I{cuda_home / 'include'}")
        macros = ["-DTORCH_API_INCLUDE_EXTENSION_H", "-DTORCH_EXTENSION_NAME=_C",
                  f'-DONESHOT_TORCH_VERSION="{version}"', "-D_GLIBCXX_USE_CXX11_ABI=1"]
        macros += ["-DONESHOT_WITH_CUDA=1"] if with_cuda else []
        jobs = []
        for src in cfg["cpu_sources"] + cfg["python_module_sources"]:
            jobs.append((src, ["g++", "-fsyntax-only", "-fPIC", *cfg["cxx_flags"], std, *includes, *macros,
                               str(CSRC / src)]))
        if with_cuda:
            arch = a.cuda_arch.replace(".", "")
            for src in cfg["cuda_sources"]:
                obj = str(Path(tmp) / (Path(src).stem + ".o"))
                jobs.append((src, [str(cuda_home / "bin" / "nvcc"), "-c", "-o", obj,
                                   *nvcc_common, "--compiler-options", "-fPIC", *cfg["nvcc_flags"], std,
                                   f"-gencode=arch=compute_{arch},code=sm_{arch}", *includes, *macros,
                                   str(CSRC / src)]))
        print(f"torch {version} headers ({std}; nvcc adds {' '.join(nvcc_common)}): {len(jobs)} sources")
        with ThreadPoolExecutor(max(1, a.jobs)) as pool:
            results = list(pool.map(lambda job: (job[0], *_run(job[1])), jobs))
    failed = 0
    for src, ok, out in results:
        print(f"  {'ok  ' if ok else 'FAIL'} {src}")
        if not ok:
            failed += 1
            print("\n".join("      " + line for line in out.splitlines()[:40]))
    print(f"{len(results) - failed} of {len(results)} sources compile against torch {version}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
