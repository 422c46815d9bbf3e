"""Build script for oneshot's compiled extension (``oneshot._C``).

Install against the torch that is already in the environment::

    pip install --no-build-isolation .        # or -e . for development

Environment variables:
    FORCE_CUDA=1            build the CUDA kernels even when no GPU is visible (needs nvcc and a CUDA torch)
    BUILD_NO_CUDA=1         never build the CUDA kernels
    TORCH_CUDA_ARCH_LIST    CUDA architectures (default "8.0;8.6;8.9;9.0+PTX")
    MAX_JOBS                parallel compile jobs (respected by torch's ninja build)

Sources and flags come from csrc/build.json, shared with CMakeLists.txt and the ONESHOT_JIT=1 path.
"""

import json
import os
import sys
from pathlib import Path

from setuptools import find_packages, setup

ROOT = Path(__file__).resolve().parent
CSRC = ROOT / "csrc"

try:
    import torch
    from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension
except ImportError:  # pragma: no cover - exercised only by misconfigured builds
    sys.exit(
        "oneshot: building the extension needs PyTorch (>= 2.11) installed in this environment, and pip must "
        "see it. Install torch first, then build without build isolation:\n"
        "    pip install torch\n"
        "    pip install --no-build-isolation .\n"
        "(An isolated build would download a different torch and compile against the wrong headers.)"
    )


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


class BuildExt(BuildExtension):
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


EXTENSIONS, WITH_CUDA = _extensions()

setup(
    # Only `oneshot` and its subpackages: the Triton kernels live in oneshot/kernels, never at the top level,
    # where a folder named like a PyPI distribution (Hugging Face's `kernels`) would shadow it (issue 14).
    packages=find_packages(include=["oneshot", "oneshot.*"]),
    ext_modules=EXTENSIONS,
    cmdclass={"build_ext": BuildExt.with_options(use_ninja=True)},
)
