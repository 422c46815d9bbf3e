"""Build script for oneshot's compiled extension (``oneshot._C``); the distribution is ``oneshot-avatar``.

Install against the torch that is already in the environment (never in an isolated build environment, which would
download another torch and compile against its headers)::

    pip install --no-build-isolation oneshot-avatar    # from the index, or a source distribution's .tar.gz
    pip install --no-build-isolation .                 # from a clone (-e . for development)

Environment variables:
    FORCE_CUDA=1            build the CUDA kernels even when no GPU is visible (needs nvcc and a CUDA torch)
    BUILD_NO_CUDA=1         never build the CUDA kernels
    TORCH_CUDA_ARCH_LIST    CUDA architectures (default "8.0;8.6;8.9;9.0+PTX")
    MAX_JOBS                parallel compile jobs (respected by torch's ninja build)

Sources and flags come from csrc/build.json, shared with CMakeLists.txt and the ONESHOT_JIT=1 path. Building a
source distribution (``python -m build --sdist``) needs no torch: MANIFEST.in lists what it carries, and
tests/test_release.py checks that against what the build reads.
"""

import json
import os
import sys
from pathlib import Path

import setuptools
from setuptools import find_packages, setup

if tuple(int(x) for x in setuptools.__version__.split(".")[:2]) < (77, 0):
    # pyproject.toml's SPDX licence needs it; without build isolation pip uses the environment's setuptools.
    sys.exit(f"oneshot-avatar: building needs setuptools >= 77, found {setuptools.__version__}: "
             "pip install -U setuptools wheel ninja")

ROOT = Path(__file__).resolve().parent
CSRC = ROOT / "csrc"

# Commands that only describe or pack the sources need no torch (an isolated `python -m build --sdist` has none).
_METADATA_ONLY = {"sdist", "egg_info", "dist_info", "--name", "--version", "check"}
_NO_TORCH_MSG = (
    "oneshot-avatar: building the extension needs PyTorch (>= 2.11) installed in this environment, and pip must "
    "see it. Install torch (and the build tools) first, then build without build isolation:\n"
    "    pip install torch setuptools wheel ninja\n"
    "    pip install --no-build-isolation oneshot-avatar      # or: . in a clone, or the .tar.gz\n"
    "(Without --no-build-isolation pip builds in a fresh environment that has no torch, which ends here; an "
    "isolated build that did install one would download another torch and compile against the wrong headers.)"
)

try:
    import torch
    from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension
except ImportError:  # pragma: no cover - exercised by the isolated sdist build and by misconfigured installs
    torch = None
    if not _METADATA_ONLY.intersection(sys.argv[1:]):
        sys.exit(_NO_TORCH_MSG)


def _flag(name: str) -> bool:
    return os.environ.get(name, "0").lower() in ("1", "true", "yes", "on")


def _config() -> dict:
    return json.loads((CSRC / "build.json").read_text())


def _want_cuda(cfg: dict) -> bool:
    if _flag("BUILD_NO_CUDA") or not cfg["cuda_sources"]:
        return False
    if torch.version.cuda is None or CUDA_HOME is None:
        if _flag("FORCE_CUDA"):
            sys.exit("oneshot: FORCE_CUDA=1 needs a CUDA build of torch and nvcc (set CUDA_HOME); "
                     f"found torch {torch.__version__} (CUDA {torch.version.cuda}), CUDA_HOME={CUDA_HOME}")
        return False
    return _flag("FORCE_CUDA") or torch.cuda.is_available()


def _extensions():
    cfg = _config()
    with_cuda = _want_cuda(cfg)
    rel = lambda paths: [str(Path("csrc") / p) for p in paths]  # noqa: E731  (setuptools wants relative paths)
    sources = rel(cfg["cpu_sources"] + cfg["python_module_sources"])
    extra = {"cxx": list(cfg["cxx_flags"])}
    macros = [("ONESHOT_TORCH_VERSION", f'"{torch.__version__}"')]
    ext_cls = CppExtension
    if with_cuda:
        os.environ.setdefault("TORCH_CUDA_ARCH_LIST", cfg["default_cuda_arch_list"])
        sources += rel(cfg["cuda_sources"])
        extra["nvcc"] = list(cfg["nvcc_flags"])
        macros.append(("ONESHOT_WITH_CUDA", "1"))
        ext_cls = CUDAExtension
    ext = ext_cls(
        name="oneshot._C",
        sources=sources,
        include_dirs=[str(CSRC / d) for d in cfg["include_dirs"]],
        define_macros=macros,
        extra_compile_args=extra,
        extra_link_args=list(cfg["link_flags"]),
    )
    return [ext], with_cuda


class BuildExt(BuildExtension if torch is not None else object):
    """Writes ``_C_build.json`` next to the compiled module: which torch/CUDA it was built against.

    ``oneshot._extension`` reads it *before* loading the library, so an extension built against another torch
    is reported ("rebuild with ...") instead of failing with an unreadable symbol error or crashing.
    """

    def run(self):
        super().run()
        for ext in self.extensions:
            out = Path(self.get_ext_fullpath(ext.name)).parent / "_C_build.json"
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(json.dumps({
                "torch": torch.__version__,
                "cuda": torch.version.cuda if WITH_CUDA else None,
                "with_cuda": WITH_CUDA,
                "cuda_arch_list": os.environ.get("TORCH_CUDA_ARCH_LIST") if WITH_CUDA else None,
            }, indent=1))


if torch is None:  # metadata or sdist only: the extension's sources travel through MANIFEST.in
    EXTENSIONS, WITH_CUDA, CMDCLASS = [], False, {}
else:
    EXTENSIONS, WITH_CUDA = _extensions()
    CMDCLASS = {"build_ext": BuildExt.with_options(use_ninja=True)}

setup(
    # Only `oneshot` and its subpackages: the Triton kernels live in oneshot/kernels, never at the top level,
    # where a folder named like a PyPI distribution (Hugging Face's `kernels`) would shadow it (issue 14).
    packages=find_packages(include=["oneshot", "oneshot.*"]),
    ext_modules=EXTENSIONS,
    cmdclass=CMDCLASS,
)
