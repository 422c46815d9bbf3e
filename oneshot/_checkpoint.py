"""Loading checkpoint files with checks shared by every loader: a clear error for a missing or unreadable file,
and for a state dict whose keys or shapes do not match the module's."""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import Tensor

__all__ = ["load_torch_file", "check_state_dict"]


def load_torch_file(path: str | os.PathLike, what: str, map_location="cpu"):
    """``torch.load(path, weights_only=True)`` with clear errors (`what` names the file in them)."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{what}: no such file: {p}")
    try:
        return torch.load(p, map_location=map_location, weights_only=True)
    except Exception as e:  # noqa: BLE001 - torch raises several types for a malformed file
        raise ValueError(f"{p}: not a readable torch checkpoint ({e})") from None


def check_state_dict(want: dict, state: dict, path, kind: str) -> None:
    """Raise ValueError unless `state` (read from `path`) has exactly the keys of `want` (the state dict of a
    `kind`, e.g. "GFPGANv1Clean") with the same shapes."""
    missing = [k for k in want if k not in state]
    unexpected = [k for k in state if k not in want]
    if missing or unexpected:
        raise ValueError(f"{path}: not a {kind} state dict: {len(missing)} missing keys (e.g. {missing[:3]}), {len(unexpected)} unexpected "
                         f"(e.g. {unexpected[:3]})")
    for k, v in want.items():
        got = state[k]
        if not isinstance(got, Tensor) or tuple(got.shape) != tuple(v.shape):
            shape = list(got.shape) if isinstance(got, Tensor) else type(got).__name__
            raise ValueError(f"{path}: {k} has shape {shape}, expected {list(v.shape)}")
