"""Image helpers, in one place: PNG writing without an imaging library (zlib only, atomic), tensors to uint8, image
grids, a loss-curve plot (pillow), depth maps as pictures, and reading a portrait with its matte."""

from __future__ import annotations

import math
import os
import struct
import zlib
from pathlib import Path

import numpy as np
import torch

__all__ = ["write_png", "to_uint8", "image_grid", "plot_curves", "depth_images", "read_matte", "read_portrait"]


def _chunk(tag: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)


def write_png(path: str | os.PathLike, image, *, compression: int = 6) -> None:
    """Write an 8-bit image [H, W] (grey), [H, W, 3] (RGB) or [H, W, 4] (RGBA), uint8, or float in [0, 1]
    (numpy array or tensor), as a PNG file: atomically (a temporary name, then a rename), so that a kill never leaves a
    truncated file. `compression`: zlib level 0-9 (1 is fast, for video frames)."""
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
            + _chunk(b"IDAT", zlib.compress(raw, compression)) + _chunk(b"IEND", b""))
    tmp = Path(path).with_name(Path(path).name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def to_uint8(image: torch.Tensor) -> np.ndarray:
    """Images in [-1, 1] as uint8 numpy: [3, H, W] -> [H, W, 3], [B, 3, H, W] -> [B, H, W, 3]."""
    if image.dim() not in (3, 4):
        raise ValueError(f"image must be [3, H, W] or [B, 3, H, W], got {list(image.shape)}")
    u8 = ((image.detach().float().clamp(-1, 1) + 1) * 127.5 + 0.5).to("cpu", torch.uint8)
    return u8.movedim(-3, -1).numpy()


def image_grid(rows: list[list[torch.Tensor]], pad: int = 2) -> np.ndarray:
    """A uint8 grid of images [3, H, W] in [-1, 1] (all the same size), row by row, on a white background."""
    if not rows or not rows[0]:
        raise ValueError("image_grid needs at least one image")
    H, W = rows[0][0].shape[-2:]
    n_cols = max(len(r) for r in rows)
    out = np.full((len(rows) * (H + pad) + pad, n_cols * (W + pad) + pad, 3), 255, np.uint8)
    for i, row in enumerate(rows):
        for j, img in enumerate(row):
            if img.shape[-2:] != (H, W):
                raise ValueError(f"image_grid: every image must be {H} x {W}, got {tuple(img.shape[-2:])}")
            y, x = pad + i * (H + pad), pad + j * (W + pad)
            out[y:y + H, x:x + W] = to_uint8(img)
    return out


def plot_curves(series: dict[str, list[tuple[float, float]]], path, *, size=(640, 360), title="loss",
                log_y: bool = True) -> Path:
    """A line plot (PNG) of named series of (x, y) points, drawn with pillow (no matplotlib needed)."""
    from PIL import Image, ImageDraw  # noqa: I001 (pillow is a dependency; imported on use)

    W, H = size
    left, right, top, bottom = 60, 150, 30, 40
    img = Image.new("RGB", (W, H), "white")
    d = ImageDraw.Draw(img)
    pts = [(x, y) for s in series.values() for x, y in s if math.isfinite(y) and (y > 0 or not log_y)]
    if not pts:
        raise ValueError("plot_curves: nothing to plot")
    fy = (lambda y: math.log10(y)) if log_y else (lambda y: y)  # noqa: E731
    x0, x1 = min(p[0] for p in pts), max(p[0] for p in pts)
    y0, y1 = min(fy(p[1]) for p in pts), max(fy(p[1]) for p in pts)
    x1, y1 = (x1 if x1 > x0 else x0 + 1), (y1 if y1 > y0 else y0 + 1e-3)

    def xy(x, y):
        return (left + (x - x0) / (x1 - x0) * (W - left - right), H - bottom - (fy(y) - y0) / (y1 - y0) * (H - top - bottom))

    d.rectangle([left, top, W - right, H - bottom], outline="black")
    d.text((left, 8), title + (" (log scale)" if log_y else ""), fill="black")
    for k in range(5):
        yv = y0 + (y1 - y0) * k / 4
        ypix = H - bottom - (H - top - bottom) * k / 4
        d.text((4, ypix - 6), f"{10 ** yv if log_y else yv:.3g}", fill="black")
        xv = x0 + (x1 - x0) * k / 4
        d.text((left + (W - left - right) * k / 4 - 10, H - bottom + 6), f"{xv:.0f}", fill="black")
    colours = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f"]
    for i, (name, s) in enumerate(series.items()):
        line = [xy(x, y) for x, y in s if math.isfinite(y) and (y > 0 or not log_y)]
        colour = colours[i % len(colours)]
        if len(line) > 1:
            d.line(line, fill=colour, width=2)
        d.text((W - right + 8, top + 14 * i), name, fill=colour)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)
    return path


def depth_images(depth, opacity, size: int | None = None):
    """Depth maps [F, 1, r, r] as uint8 grey frames [F, size, size, 3]: near = white, far = dark, normalised
    over every frame's foreground (opacity >= 0.5; all pixels when there is none), background faded by the
    opacity. `size`: resize (bilinear) to this side."""
    import torch.nn.functional as F

    d, o = depth.float(), opacity.float().clamp(0, 1)
    fg = o >= 0.5
    vals = d[fg] if bool(fg.any()) else d.reshape(-1)
    near, far = (float(vals.min()), float(vals.max())) if vals.numel() else (0.0, 1.0)
    v = ((far - d) / (far - near)).clamp(0, 1) if far > near else torch.ones_like(d)
    v = v * o
    if size is not None and v.shape[-1] != size:
        v = F.interpolate(v, size=(size, size), mode="bilinear", align_corners=False)
    return (v.clamp(0, 1) * 255 + 0.5).byte().expand(-1, 3, -1, -1).permute(0, 2, 3, 1).contiguous().numpy()


def read_matte(path, size: tuple[int, int]) -> torch.Tensor:
    """An 8-bit matte (grey; RGBA/LA: its alpha; 16-bit grey) of a `size` = (width, height) image, as float
    [1, 1, H, W] in [0, 1]."""
    from PIL import Image

    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"matte: no such file: {p}")
    try:
        with Image.open(p) as im:
            if im.mode in ("RGBA", "LA", "PA"):
                a = np.asarray(im.getchannel("A"), dtype=np.float32) / 255
            elif im.mode.startswith("I"):
                a = np.asarray(im, dtype=np.float32) / 65535
            else:
                a = np.asarray(im.convert("L"), dtype=np.float32) / 255
    except Exception as e:  # noqa: BLE001 - pillow raises several types
        raise ValueError(f"{p}: not a readable matte image ({e})") from None
    if (a.shape[1], a.shape[0]) != size:
        raise ValueError(f"{p}: the matte is {a.shape[1]} x {a.shape[0]}, the source {size[0]} x {size[1]}")
    return torch.from_numpy(np.clip(a, 0, 1))[None, None]


def read_portrait(path, matte_path=None, no_matte: bool = False, front=None):
    """A portrait as float [1, 3, H, W] in [0, 1], matted; a note on the matte used; its uint8 RGB [H, W, 3].

    The matte: `matte_path` (see :func:`read_matte`), else the image's own alpha channel, else ``front.matte(rgb)``
    (e.g. a :class:`~oneshot.face3d.FaceFrontEnd`'s selfie segmentation) when `front` is given, else none (the
    background kept, and the note says so); `no_matte` keeps the background whatever is available."""
    from PIL import Image

    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"source image: no such file: {p}")
    try:
        with Image.open(p) as im:
            alpha = np.asarray(im.getchannel("A"), dtype=np.float32) / 255 if im.mode in ("RGBA", "LA") else None
            rgb8 = np.asarray(im.convert("RGB"))
    except Exception as e:  # noqa: BLE001
        raise ValueError(f"{p}: not a readable image ({e})") from None
    image = torch.from_numpy(rgb8.astype(np.float32) / 255).permute(2, 0, 1)[None].contiguous()
    if no_matte:
        return image, "no matte (--no-matte): background kept", rgb8
    if matte_path is not None:
        return image * read_matte(matte_path, (rgb8.shape[1], rgb8.shape[0])), f"matte {matte_path}", rgb8
    if alpha is not None:
        return image * torch.from_numpy(alpha)[None, None], "the source's alpha channel as matte", rgb8
    if front is not None:
        return image * front.matte(rgb8)[None, None], "matte from MediaPipe's selfie segmentation", rgb8
    return image, "no matte: background kept (give a matte file, or install oneshot-avatar[faces] for one)", rgb8
