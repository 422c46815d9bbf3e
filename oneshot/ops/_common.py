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
# dtypes of the "value" tensor (planes, colors, features) the native kernels take, per device type. On CPU the
# geometry (points, densities, depths) has the same dtype; on CUDA 16-bit values come with float32 geometry.
NATIVE_DTYPES = {
    "cpu": (torch.float32, torch.float64),
    "cuda": (torch.float16, torch.bfloat16, torch.float32, torch.float64),
}
LOW_PRECISION = (torch.float16, torch.bfloat16)


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


def check_dtypes(value_name: str, value: Tensor, geom_names: Sequence[str], geoms: Sequence[Tensor]) -> None:
    """Devices and dtypes of one call: the "value" tensor (planes, colors, features) and the geometry tensors
    (points; densities and depths) on one device; the geometry in one dtype, which is the value's dtype, or
    float32 when the value is float16 / bfloat16 (16-bit features with float32 coordinates)."""
    for name, t in zip(geom_names, geoms):
        if t.device != value.device:
            raise ValueError(f"{name} must be on the device of {value_name} ({value.device}), got {t.device}")
    for name, t in zip(geom_names, geoms):
        if t.dtype != value.dtype and not (value.dtype in LOW_PRECISION and t.dtype == torch.float32):
            also = " or torch.float32" if value.dtype in LOW_PRECISION else ""
            raise TypeError(f"{name} must have the dtype of {value_name} ({value.dtype}){also}, got {t.dtype}")
    for name, t in zip(geom_names[1:], geoms[1:]):
        if t.dtype != geoms[0].dtype:
            raise TypeError(f"{name} must have the dtype of {geom_names[0]} ({geoms[0].dtype}), got {t.dtype}")


def autocast_geometry(device_type: str, *geoms: Tensor) -> tuple[Tensor, ...]:
    """Under torch.autocast, geometry tensors that arrive in float16 / bfloat16 (a decoder's densities in
    mixed-precision training) are cast to float32: coordinates and densities stay float32, values may not."""
    if device_type not in ("cpu", "cuda") or not torch.is_autocast_enabled(device_type):
        return geoms
    return tuple(t.float() if t.dtype in LOW_PRECISION else t for t in geoms)


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


NATIVE_OPS = ("triplane_sample", "triplane_sample_backward", "ray_march", "ray_march_backward", "render_triplane",
              "render_triplane_backward", "rasterize_points", "rasterize_points_backward", "rasterize_mesh")


def _registered(op: str, key: str) -> bool:
    try:
        return bool(torch._C._dispatch_has_kernel_for_dispatch_key(f"oneshot::{op}", key))
    except RuntimeError:  # no such op
        return False


# Facts about the loaded build, taken once at import: a plain frozenset, so torch.compile reads it as a
# constant (it cannot trace the dispatcher query itself).
_KERNELS = frozenset(
    (op, key) for op in NATIVE_OPS for key in ("CPU", "CUDA") if _extension.status().loaded and _registered(op, key)
)


def kernel_registered(op: str, key: str) -> bool:
    """Whether ``oneshot::<op>`` has a kernel for dispatch key `key` ("CPU", "CUDA") in the loaded extension."""
    return (op, key) in _KERNELS


def op_exists(op: str) -> bool:
    """Whether the loaded extension defines ``oneshot::<op>`` (an older build of the same torch may not)."""
    return kernel_registered(op, "CPU")


def _has_native_kernel(op: str, device: torch.device) -> bool:
    if not _extension.status().loaded:
        return False
    if device.type in ("cpu", "meta"):
        return op_exists(op)
    key = {"cuda": "CUDA"}.get(device.type)
    return key is not None and kernel_registered(op, key)


def resolve_backend(backend, op: str, device: torch.device, dtype: torch.dtype, geom_dtype: torch.dtype | None = None) -> str:
    """The implementation to run: "reference", "native" or "triton".

    `dtype` is the value tensor's dtype, `geom_dtype` the geometry's (default: the same). None / "auto": the
    fastest available for the device and dtypes (native where it exists; Triton is never picked automatically
    until GPU benchmarks show it ahead of the CUDA kernels for an op). A forced backend that cannot run raises a RuntimeError
    (unavailable) or TypeError (unsupported dtype) saying why.
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    geom_dtype = dtype if geom_dtype is None else geom_dtype
    kind = "cpu" if device.type == "meta" else device.type
    native_dtypes = NATIVE_DTYPES.get(kind, ())
    # The CPU kernels take one dtype for the whole call; on CUDA check_dtypes has vetted the pair.
    dtypes_ok = dtype in native_dtypes and (kind != "cpu" or geom_dtype == dtype)
    if backend in (None, "auto"):
        if dtypes_ok and _has_native_kernel(op, device):
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
        if not dtypes_ok:
            names = ", ".join(str(d).replace("torch.", "") for d in native_dtypes)
            got = str(dtype) if geom_dtype == dtype else f"{dtype} with {geom_dtype} geometry"
            raise TypeError(f"backend='native' supports {names} on {device.type} for {op}, got {got}")
        return "native"
    # backend == "triton"
    from . import _triton

    why = _triton.unavailable_reason(device)
    if why is not None:
        raise RuntimeError(f"backend='triton' is unavailable for {op}: {why}")
    if dtype not in _triton.TRITON_DTYPES or geom_dtype != torch.float32:
        got = str(dtype) if geom_dtype == dtype else f"{dtype} with {geom_dtype} geometry"
        raise TypeError(
            f"backend='triton' supports float32, and float16 / bfloat16 values with float32 geometry, for {op} "
            f"(no float64: use backend='native' or 'reference'), got {got}"
        )
    _triton.ensure_registered()
    return "triton"
