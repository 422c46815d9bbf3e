"""Minimal PNG writing without an imaging library (zlib only), for renders, previews and test artefacts."""

from __future__ import annotations

import os
import struct
import zlib

import numpy as np

__all__ = ["write_png"]


def _chunk(tag: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)


def write_png(path: str | os.PathLike, image) -> None:
    """Write an 8-bit image [H, W] (grey), [H, W, 3] (RGB) or [H, W, 4] (RGBA), uint8, or float in [0, 1]
    (numpy array or tensor), as a PNG file."""
    a = image.detach().cpu().numpy() if hasattr(image, "detach") else np.asarray(image)
    if a.dtype != np.uint8:
        if not np.issubdtype(a.dtype, np.floating):
            raise TypeError(f"image must be uint8 or floating point in [0, 1], got {a.dtype}")
        a = (np.clip(a, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    if a.ndim == 2:
        a = a[..., None]
    if a.ndim != 3 or a.shape[2] not in (1, 3, 4) or a.shape[0] < 1 or a.shape[1] < 1:
        raise ValueError(f"image must be [H, W], [H, W, 3] or [H, W, 4], got {list(a.shape)}")
    h, w, c = a.shape
    color_type = {1: 0, 3: 2, 4: 6}[c]
    raw = b"".join(b"\x00" + np.ascontiguousarray(a[i]).tobytes() for i in range(h))
    data = (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, color_type, 0, 0, 0))
            + _chunk(b"IDAT", zlib.compress(raw, 6)) + _chunk(b"IEND", b""))
    with open(path, "wb") as f:
        f.write(data)
