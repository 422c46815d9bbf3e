"""Argument checks and backend selection shared by the public ops."""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence

import torch
from torch import Tensor

from .. import _extension

PLANE_AXES_GOHA = ((0, 1), (0, 2), (2, 1))  # xy, xz, zy: the released GOHA code's planes (the default)
PLANE_AXES_EG3D = ((0, 1), (0, 2), (2, 0))  # xy, xz, zx: EG3D's original order

BACKENDS = (None, "auto", "reference", "native", "triton")
# dtypes of the native kernels per device type (the CUDA and Triton issues extend this).
NATIVE_DTYPES = {"cpu": (torch.float32, torch.float64), "cuda": (torch.float32, torch.float64)}


def shape_of(t: Tensor) -> list[int]:
    return list(t.shape)


def check_tensor(name: str, t, expected: str, ndim: int | None = None) -> None:
    """`t` is a floating-point tensor of rank `ndim`; `expected` describes the shape, e.g. "[B, M, 3]"."""
    if not isinstance(t, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor {expected}, got {type(t).__name__}")
    if ndim is not None and t.dim() != ndim:
        raise ValueError(f"{name} must be {expected}, got {shape_of(t)}")
    if not t.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got {t.dtype}")


def check_same(names: Sequence[str], tensors: Sequence[Tensor]) -> None:
    """Same device and dtype as the first tensor."""
    first, t0 = names[0], tensors[0]
    for name, t in zip(names[1:], tensors[1:]):
        if t.device != t0.device:
            raise ValueError(f"{name} must be on the device of {first} ({t0.device}), got {t.device}")
        if t.dtype != t0.dtype:
            raise TypeError(f"{name} must have the dtype of {first} ({t0.dtype}), got {t.dtype}")


def check_batch(name: str, t: Tensor, ref_name: str, ref: Tensor) -> None:
    if t.shape[0] != ref.shape[0]:
        raise ValueError(f"{name} must have the batch size of {ref_name} ({ref.shape[0]}), got {t.shape[0]}")


def check_box_warp(box_warp) -> float:
    if isinstance(box_warp, torch.SymFloat):  # traced with dynamic=True: the value is not known here
        return box_warp
    if isinstance(box_warp, bool) or not isinstance(box_warp, numbers.Real):
        raise TypeError(f"box_warp must be a positive number, got {type(box_warp).__name__}")
    box_warp = float(box_warp)
    if not (0 < box_warp < math.inf):
        raise ValueError(f"box_warp must be a positive finite number, got {box_warp}")
    return box_warp


def check_axes(axes) -> list[int]:
    """Three (a, b) pairs of distinct coordinates in {0, 1, 2}; returned flattened (6 ints) for the C++ op."""
    msg = f"axes must be three (a, b) pairs of distinct coordinates in {{0, 1, 2}}, e.g. {PLANE_AXES_GOHA}, got {axes!r}"
    try:
        pairs = [tuple(pair) for pair in axes]
    except TypeError:
        raise ValueError(msg) from None
    if len(pairs) != 3 or any(len(pair) != 2 for pair in pairs):
        raise ValueError(msg)
    flat = []
    for a, b in pairs:
        for v in (a, b):
            if isinstance(v, bool) or not isinstance(v, numbers.Integral) or not 0 <= v <= 2:
                raise ValueError(msg)
        if a == b:
            raise ValueError(msg)
        flat += [int(a), int(b)]
    return flat


def axes_pairs(flat: Sequence[int]) -> tuple[tuple[int, int], ...]:
    return tuple((flat[2 * p], flat[2 * p + 1]) for p in range(3))


def _has_native_kernel(op: str, device: torch.device) -> bool:
    if not _extension.status().loaded:
        return False
    if device.type in ("cpu", "meta"):
        return True
    key = {"cuda": "CUDA"}.get(device.type)
    return key is not None and torch._C._dispatch_has_kernel_for_dispatch_key(f"oneshot::{op}", key)


def resolve_backend(backend, op: str, device: torch.device, dtype: torch.dtype) -> str:
    """The implementation to run: "reference" or "native" (or "triton" once it exists).

    None / "auto": the fastest available for the device and dtype. A forced backend that cannot run raises a
    RuntimeError (unavailable) or TypeError (unsupported dtype) saying why.
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    native_dtypes = NATIVE_DTYPES.get(device.type, NATIVE_DTYPES["cpu"] if device.type == "meta" else ())
    if backend in (None, "auto"):
        if dtype in native_dtypes and _has_native_kernel(op, device):
            return "native"
        return "reference"
    if backend == "reference":
        return "reference"
    if backend == "native":
        st = _extension.status()
        if not st.loaded:
            raise RuntimeError(f"backend='native' is unavailable: {st.error}")
        if not _has_native_kernel(op, device):
            raise RuntimeError(
                f"backend='native' has no {device.type} kernel for {op} in this build"
                + (" (built without CUDA: rebuild with FORCE_CUDA=1 and nvcc)" if device.type == "cuda" else "")
            )
        if dtype not in native_dtypes:
            names = ", ".join(str(d).replace("torch.", "") for d in native_dtypes)
            raise TypeError(f"backend='native' supports {names} on {device.type} for {op}, got {dtype}")
        return "native"
    raise RuntimeError(
        f"backend='triton' is unavailable for {op}: the Triton kernels (oneshot.kernels) are not part of this "
        "release yet; use backend='native' or 'reference'"
    )
