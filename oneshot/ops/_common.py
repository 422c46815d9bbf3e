"""Constants and argument checks shared by the public ops (no backend choice here: that is :mod:`._backend`)."""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence

import torch
from torch import Tensor

PLANE_AXES_GOHA = ((0, 1), (0, 2), (2, 1))  # xy, xz, zy: the released GOHA code's planes (the default)
PLANE_AXES_EG3D = ((0, 1), (0, 2), (2, 0))  # xy, xz, zx: EG3D's original order

LOW_PRECISION = (torch.float16, torch.bfloat16)
#: The density that ``clip_to_box`` gives samples outside the box (softplus(-1e4) == 0: empty space).
OUTSIDE_DENSITY = -1e4


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


def check_resolution(resolution) -> tuple[int, int]:
    """(H, W) from an int (H = W) or an (H, W) pair of ints >= 1; a TypeError / ValueError naming the argument
    and what arrived otherwise (a float, a bool, one number in a tuple, a string)."""
    msg = f"resolution must be an int or an (H, W) pair of ints >= 1, got {resolution!r}"
    if isinstance(resolution, numbers.Integral) and not isinstance(resolution, bool):
        pair = (int(resolution), int(resolution))
    else:
        try:
            pair = tuple(resolution)
        except TypeError:
            raise TypeError(msg) from None
        if len(pair) != 2 or any(isinstance(v, bool) or not isinstance(v, numbers.Integral) for v in pair):
            raise TypeError(msg)
        pair = (int(pair[0]), int(pair[1]))
    if pair[0] < 1 or pair[1] < 1:
        raise ValueError(msg)
    return pair
