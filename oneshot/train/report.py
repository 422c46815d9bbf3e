"""Image grids and a loss-curve plot for training logs and the demo report (metrics: :mod:`oneshot.eval`)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

__all__ = ["image_grid", "to_uint8", "plot_curves"]


def to_uint8(image: torch.Tensor) -> np.ndarray:
    """[3, H, W] in [-1, 1] -> H x W x 3 uint8."""
    return ((image.detach().float().cpu().clamp(-1, 1) + 1) * 127.5 + 0.5).to(torch.uint8).permute(1, 2, 0).numpy()


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
    from PIL import Image, ImageDraw

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
