"""Temporal smoothing of per-frame face signals (landmarks, coefficients, pose) for driving videos: the one-euro
filter (Casiez, Roussel and Vogel, "1 Euro Filter: A Simple Speed-based Low-pass Filter for Noisy Input in
Interactive Systems", CHI 2012).

An exponential low-pass filter whose cut-off frequency rises with the signal's speed: a still face is smoothed
hard (detector jitter removed), a moving one lightly (little lag). Per value: ``cutoff = min_cutoff + beta *
|speed|``, speed itself low-passed at ``d_cutoff``; frequencies in Hz, so the same settings suit any frame rate.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["OneEuroFilter", "smooth_sequence", "jitter"]


def _alpha(cutoff: Tensor | float, dt: float) -> Tensor | float:
    tau = 1.0 / (2 * math.pi * cutoff)
    return 1.0 / (1.0 + tau / dt)


class OneEuroFilter:
    """Filters a stream of same-shaped tensors, one per frame (``filt(x)`` returns the filtered frame).

    fps: frame rate of the stream. min_cutoff (Hz): smoothing of a still signal (lower: smoother, more lag on
    slow motion). beta: how fast the cut-off rises with speed (in 1/units of the signal; higher: less lag on fast
    motion). d_cutoff (Hz): smoothing of the speed estimate. `scale`: the signal's unit (e.g. the face's
    inter-ocular distance in pixels), so that beta does not depend on the image size; speeds are divided by it.
    """

    def __init__(self, fps: float, *, min_cutoff: float = 1.0, beta: float = 0.3, d_cutoff: float = 1.0):
        for name, v in (("fps", fps), ("min_cutoff", min_cutoff), ("d_cutoff", d_cutoff)):
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0):
                raise ValueError(f"{name} must be a positive number, got {v!r}")
        if not (isinstance(beta, (int, float)) and math.isfinite(beta) and beta >= 0):
            raise ValueError(f"beta must be a number >= 0, got {beta!r}")
        self.dt = 1.0 / float(fps)
        self.min_cutoff, self.beta, self.d_cutoff = float(min_cutoff), float(beta), float(d_cutoff)
        self.reset()

    def reset(self) -> None:
        """Forget the past (e.g. after a cut, or when the face was lost)."""
        self._x: Tensor | None = None
        self._dx: Tensor | None = None

    def __call__(self, x: Tensor, scale: float | Tensor = 1.0) -> Tensor:
        x = torch.as_tensor(x)
        if not x.is_floating_point():
            x = x.double()
        if self._x is None:
            self._x, self._dx = x.clone(), torch.zeros_like(x)
            return x.clone()
        if x.shape != self._x.shape:
            raise ValueError(f"every frame must have the first frame's shape {list(self._x.shape)}, got "
                             f"{list(x.shape)}")
        dx = (x - self._x) / self.dt
        self._dx = self._dx + _alpha(self.d_cutoff, self.dt) * (dx - self._dx)
        cutoff = self.min_cutoff + self.beta * self._dx.abs() / scale
        self._x = self._x + _alpha(cutoff, self.dt) * (x - self._x)
        return self._x.clone()


def smooth_sequence(frames: Tensor, fps: float, *, scale: Tensor | float = 1.0, **kwargs) -> Tensor:
    """One-euro filter along the first axis of [N, ...] (a whole sequence at once); `scale`: a number or [N]
    per-frame units (see :class:`OneEuroFilter`); keyword arguments go to the filter."""
    if not isinstance(frames, Tensor) or frames.dim() < 1 or frames.shape[0] == 0:
        raise ValueError(f"frames must be a tensor [N, ...] with N >= 1, got "
                         f"{list(frames.shape) if isinstance(frames, Tensor) else type(frames).__name__}")
    f = OneEuroFilter(fps, **kwargs)
    s = torch.as_tensor(scale, dtype=torch.float64)
    if s.dim() == 1 and s.shape[0] != frames.shape[0]:
        raise ValueError(f"scale must be a number or [N] = [{frames.shape[0]}], got {list(s.shape)}")
    return torch.stack([f(x, s[i] if s.dim() == 1 else s) for i, x in enumerate(frames)]).to(frames.dtype)


def jitter(frames: Tensor) -> Tensor:
    """Frame-to-frame jitter of a sequence [N, ...]: the RMS of the second temporal difference (acceleration per
    frame^2, in the signal's units), which steady motion does not raise and detector noise does."""
    if frames.shape[0] < 3:
        raise ValueError(f"jitter needs at least 3 frames, got {frames.shape[0]}")
    a = frames[2:] - 2 * frames[1:-1] + frames[:-2]
    return a.double().pow(2).mean().sqrt()
