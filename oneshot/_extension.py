"""Loading oneshot's compiled extension (``oneshot._C``), without ever failing an import.

The library registers the ``oneshot::*`` ops with PyTorch's dispatcher. It is loaded only when it matches the
running torch: ``_C_build.json``, written next to it by setup.py, records the torch (and CUDA) it was built
against and is read *before* the library is opened, so a stale build is reported in one readable line
instead of an undefined-symbol error or a crash. When it is missing or stale, the ops fall back to the
pure-PyTorch reference and one :class:`ExtensionUnavailableWarning` says what to rebuild.

``ONESHOT_JIT=1`` opts in to compiling the extension at import with ``torch.utils.cpp_extension.load`` when
no usable prebuilt one exists (from a source checkout; it takes a few minutes, says so, and is cached by torch);
``ONESHOT_JIT=force`` always compiles the checkout's sources (after editing them). Never done silently.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import os
import re
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

__all__ = ["ExtensionUnavailableWarning", "ExtensionStatus", "status", "csrc_dir", "build_config"]

_PKG_DIR = Path(__file__).resolve().parent
REBUILD_HINT = (
    "rebuild it against the installed torch: `pip install --no-build-isolation --no-deps --force-reinstall "
    "--no-cache-dir oneshot-avatar` (or `pip install --no-build-isolation -e .` in a checkout), or set "
    "ONESHOT_JIT=1 to compile it at import (from a checkout)"
)


class ExtensionUnavailableWarning(RuntimeWarning):
    """The compiled kernels could not be loaded; the ops use the pure-PyTorch reference."""


@dataclass(frozen=True)
class ExtensionStatus:
    loaded: bool
    with_cuda: bool = False
    source: str = ""        # "prebuilt", "jit" or ""
    built_torch: str = ""   # the torch version the library was compiled against
    error: str = ""         # why it is unavailable (one line, with what to do)


def _major_minor(version: str) -> tuple[int, int]:
    m = re.match(r"(\d+)\.(\d+)", version)
    return (int(m.group(1)), int(m.group(2))) if m else (-1, -1)


def csrc_dir() -> Path | None:
    """The C++/CUDA sources, when running from a source checkout (editable install); else None."""
    d = _PKG_DIR.parent / "csrc"
    return d if (d / "build.json").is_file() else None


def build_config() -> dict:
    """csrc/build.json: the single list of sources and flags shared by setup.py, CMake and the JIT build."""
    d = csrc_dir()
    if d is None:
        raise FileNotFoundError("csrc/build.json not found: the sources ship with a checkout of oneshot, not a wheel")
    return json.loads((d / "build.json").read_text())


def _mismatch(info: dict) -> str:
    built, running = info.get("torch", "?"), torch.__version__
    if _major_minor(built) != _major_minor(running):
        return f"it was built against torch {built} but torch {running} is running"
    if info.get("with_cuda"):
        if torch.version.cuda is None:
            return f"it was built with CUDA {info.get('cuda')} but the running torch {running} has no CUDA"
        if str(info.get("cuda", "")).split(".")[0] != torch.version.cuda.split(".")[0]:
            return f"it was built with CUDA {info.get('cuda')} but torch {running} uses CUDA {torch.version.cuda}"
    return ""


def _load_prebuilt() -> ExtensionStatus:
    if importlib.util.find_spec("oneshot._C") is None:
        return ExtensionStatus(False, error="oneshot's compiled extension (oneshot._C) is not built")
    info_path = _PKG_DIR / "_C_build.json"
    info = json.loads(info_path.read_text()) if info_path.is_file() else {}
    if not info:
        return ExtensionStatus(False, error="oneshot._C has no _C_build.json, so its torch version is unknown")
    why = _mismatch(info)
    if why:
        return ExtensionStatus(False, built_torch=info.get("torch", ""), error=f"oneshot._C is stale: {why}")
    try:
        importlib.import_module("oneshot._C")
    except (ImportError, OSError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return ExtensionStatus(False, built_torch=info.get("torch", ""), error=f"oneshot._C failed to load ({first})")
    return ExtensionStatus(True, with_cuda=bool(info.get("with_cuda")), source="prebuilt",
                           built_torch=info.get("torch", ""))


def _load_jit() -> ExtensionStatus:
    from torch.utils import cpp_extension

    try:
        cfg = build_config()
    except FileNotFoundError as exc:
        return ExtensionStatus(False, error=f"ONESHOT_JIT=1 cannot build: {exc}")
    d = csrc_dir()
    with_cuda = bool(cfg["cuda_sources"]) and torch.cuda.is_available() and cpp_extension.CUDA_HOME is not None
    sources = [str(d / s) for s in cfg["cpu_sources"] + (cfg["cuda_sources"] if with_cuda else [])]
    print(f"oneshot: ONESHOT_JIT=1, compiling the extension ({len(sources)} files; this takes a few minutes, "
          "the result is cached for later imports)", file=sys.stderr, flush=True)
    try:
        cpp_extension.load(
            name="oneshot_jit" + ("_cuda" if with_cuda else ""),
            sources=sources,
            extra_include_paths=[str(d / i) for i in cfg["include_dirs"]],
            # the flags pass through a shell (ninja): escape the quotes of the string macro
            extra_cflags=list(cfg["cxx_flags"]) + [f'-DONESHOT_TORCH_VERSION=\\"{torch.__version__}\\"'],
            extra_cuda_cflags=list(cfg["nvcc_flags"]) if with_cuda else None,
            extra_ldflags=list(cfg["link_flags"]),
            is_python_module=False,
            verbose=os.environ.get("ONESHOT_JIT_VERBOSE", "0") == "1",
        )
    except Exception as exc:  # a compiler error: report it, never fail the import
        return ExtensionStatus(False, error=f"ONESHOT_JIT=1 build failed ({type(exc).__name__}: {exc})")
    return ExtensionStatus(True, with_cuda=with_cuda, source="jit", built_torch=torch.__version__)


def _load() -> ExtensionStatus:
    jit = os.environ.get("ONESHOT_JIT", "0").lower()
    if jit == "force":  # developer loop: compile the checkout's sources even when a prebuilt library exists
        st = _load_jit()
    else:
        st = _load_prebuilt()
        if not st.loaded and jit in ("1", "true", "yes", "on"):
            st = _load_jit()
    if not st.loaded:
        st = ExtensionStatus(False, built_torch=st.built_torch, error=f"{st.error}; {REBUILD_HINT}")
        warnings.warn(
            f"oneshot: {st.error}. The ops fall back to the pure-PyTorch reference (slow).",
            ExtensionUnavailableWarning,
            stacklevel=3,
        )
    return st


_STATUS: ExtensionStatus | None = None


def status() -> ExtensionStatus:
    """Load the extension on first call (warning once if it is unusable) and report its state."""
    global _STATUS
    if _STATUS is None:
        _STATUS = _load()
    return _STATUS
