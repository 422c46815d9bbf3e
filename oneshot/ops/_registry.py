"""Registration helpers shared by the op modules: the geometry autocast rule of an op, and Triton twins that are
registered once, on first use (so that ``import oneshot`` never imports triton).

Each op module (``triplane``, ``raymarch``, ``raster``, ``render``) registers its own ops here: the native op's fake
kernel, autograd and autocast rule at import (when the extension is loaded), and its Triton twin
(``oneshot::<op>_triton`` with ``oneshot::<op>_backward_triton``) through a function decorated with :func:`once`,
called when ``backend="triton"`` is resolved.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from ._common import LOW_PRECISION

__all__ = ["register_geometry_autocast", "once"]


def once(register: Callable[[], None]) -> Callable[[], None]:
    """`register` made idempotent: the first call runs it, later calls return at once. A call that raises (triton
    missing, say) leaves it unregistered, so a later call tries again."""
    done = False

    @functools.wraps(register)
    def run() -> None:
        nonlocal done
        if not done:
            register()
            done = True

    return run


_AUTOCAST_LIB = None


def register_geometry_autocast(name: str, positions: Sequence[int]) -> None:
    """Autocast rule of ``torch.ops.oneshot.<name>`` (for direct calls; the public functions do the same via
    :func:`autocast_geometry`): the float16 / bfloat16 tensors at `positions` become float32, the rest is left
    alone, then the op runs with autocast off. torch.library.register_autocast would cast every input."""
    global _AUTOCAST_LIB
    if _AUTOCAST_LIB is None:
        _AUTOCAST_LIB = torch.library.Library("oneshot", "IMPL")
    op = getattr(torch.ops.oneshot, name).default
    for device_type in ("cpu", "cuda"):
        key_name = "Autocast" + torch._C._dispatch_key_for_device(device_type)
        key = getattr(torch._C.DispatchKey, key_name)

        def impl(*args, _key=key):
            args = list(args)
            for i in positions:
                t = args[i]
                if isinstance(t, Tensor) and t.dtype in LOW_PRECISION:
                    args[i] = t.float()
            with torch._C._ExcludeDispatchKeyGuard(torch._C.DispatchKeySet(_key)):
                return op(*args)

        if op.has_kernel_for_dispatch_key(key):
            op.py_kernels.pop(key, None)
        op.py_impl(key)(impl)  # the Python dispatcher (torch.compile) goes through this one
        _AUTOCAST_LIB.impl(name, lambda keyset, *args, _impl=impl: _impl(*args), key_name, with_keyset=True)
