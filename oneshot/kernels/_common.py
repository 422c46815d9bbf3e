"""Launch helpers shared by the Triton kernels."""

from __future__ import annotations

import os

import torch


def interpreting() -> bool:
    """Whether Triton runs kernels in its CPU interpreter (TRITON_INTERPRET=1, read when triton.jit decorates)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def launch(kernel):
    """The kernel as torch.compile wants to see it inside a torch.library.triton_op (wrap_triton), or as is in
    the interpreter, whose kernels wrap_triton does not accept (the interpreter is eager-only)."""
    from triton.runtime.jit import JITFunction

    if isinstance(kernel, JITFunction):
        return torch.library.wrap_triton(kernel)
    return kernel


def next_pow2(n: int) -> int:
    return 1 << max(0, (int(n) - 1).bit_length())
