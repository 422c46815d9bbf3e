"""Landmark files: the points of one image or of every frame of a sequence, read from JSON, ``.npy`` or text, checked,
and MediaPipe's 478 (or 468) Face Mesh points mapped to the 68 iBUG ones.

Landmarks are pixel coordinates of the image they belong to: x right, y down, the top-left pixel's centre at
(0.5, 0.5) (add 0.5 to coordinates of detectors that put it at (0, 0)). Accepted: the 68 iBUG points, MediaPipe's 478
(or 468) points, or 5 (eye centres, nose tip, mouth corners; they align a crop but cannot fit a morphable model).

* one image: JSON ``{"landmarks": [[x, y], ...]}`` (or the bare list), ``.npy`` [K, 2] or a ``.txt`` / ``.csv`` with one
  ``x y`` (or ``x,y``) line per point; a third column (depth, confidence) is ignored;
* a sequence: JSON ``{"frames": [[[x, y], ...], ...]}`` or ``.npy`` [N, K, 2], one entry per frame; one frame may also
  be given as for an image.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from .mediapipe68 import ibug68_from_mediapipe

__all__ = ["load_landmarks", "load_landmark_frames", "check_landmarks_in_image", "LANDMARK_FORMATS",
           "FRAME_LANDMARK_FORMATS"]

LANDMARK_FORMATS = ('JSON {"landmarks": [[x, y], ...]}, .npy [K, 2] or .txt (one "x y" line per point), '
                     "K = 68 iBUG points, 478 (or 468) MediaPipe Face Mesh points, or 5 (alignment only)")
FRAME_LANDMARK_FORMATS = 'JSON {"frames": [[[x, y], ...], ...]} or .npy [N, K, 2], one entry per frame'


def _check_points(a, path: Path, frames: bool):
    """float64 [K, 2] (or [N, K, 2] for `frames`) of landmarks read from `path`, checked; MediaPipe's 478 (or
    468) Face Mesh points become the 68 iBUG points."""
    a = np.asarray(a, dtype=np.float64)
    if a.ndim != 2 + frames or a.shape[-2] not in (5, 68, 468, 478) or a.shape[-1] not in (2, 3) or a.shape[0] == 0:
        want = "[N, K, 2]" if frames else "[K, 2]"
        raise ValueError(f"{path}: landmarks must be {want} with K = 68 (iBUG), 478 or 468 (MediaPipe Face Mesh, "
                         f"converted to the 68) or 5, got {list(a.shape)}")
    if not np.isfinite(a).all():
        raise ValueError(f"{path}: landmarks must be finite numbers")
    a = a[..., :2]
    return ibug68_from_mediapipe(a) if a.shape[-2] in (468, 478) else a


def _read_json(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: not a readable JSON file ({e})") from None


def _read_npy(path: Path):
    try:
        return np.load(path, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise ValueError(f"{path}: not a readable .npy file ({e})") from None


def _ragged(path: Path, e: Exception):
    return ValueError(f"{path}: landmarks must be lists of [x, y] numbers of one length ({e})")


def load_landmarks(path):
    """The landmarks of one image from `path` as float32 [K, 2] pixels (K = 68 or 5; MediaPipe's 478 are mapped
    to the 68): JSON
    ``{"landmarks": [[x, y], ...]}`` (or the bare list), ``.npy`` [K, 2] (or [1, K, 2]) or ``.txt``/``.csv``
    with one ``x y`` or ``x,y`` line per point. A third column is dropped."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"landmarks: no such file: {p}")
    suffix = p.suffix.lower()
    if suffix == ".json":
        data = _read_json(p)
        if isinstance(data, dict):
            if "landmarks" not in data:
                raise ValueError(f'{p}: expected {{"landmarks": [[x, y], ...]}}, got keys {sorted(data)}')
            data = data["landmarks"]
        try:
            a = np.asarray(data, dtype=np.float64)
        except (TypeError, ValueError) as e:
            raise _ragged(p, e) from None
    elif suffix == ".npy":
        a = _read_npy(p)
    elif suffix in (".txt", ".csv"):
        try:
            a = np.loadtxt(p.read_text().replace(",", " ").splitlines(), ndmin=2)
        except (OSError, ValueError) as e:
            raise ValueError(f"{p}: not a table of numbers, one 'x y' line per landmark ({e})") from None
    else:
        raise ValueError(f"{p}: unsupported landmark file {suffix or '(no extension)'!r}; expected {LANDMARK_FORMATS}")
    if a.ndim == 3 and a.shape[0] == 1:
        a = a[0]
    return torch.from_numpy(_check_points(a, p, False).copy()).float()


def load_landmark_frames(path):
    """Per-frame landmarks from `path` as float32 [N, K, 2] pixels: JSON ``{"frames": [[[x, y], ...], ...]}``
    or ``.npy`` [N, K, 2]; a single frame may also be given in :func:`load_landmarks`' formats."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"driving landmarks: no such file: {p}")
    suffix = p.suffix.lower()
    if suffix == ".json":
        data = _read_json(p)
        if isinstance(data, dict) and "frames" in data:
            try:
                a = np.asarray(data["frames"], dtype=np.float64)
            except (TypeError, ValueError) as e:
                raise _ragged(p, e) from None
            if a.ndim == 1 and a.shape[0] == 0:
                raise ValueError(f"{p}: 'frames' is empty")
        elif isinstance(data, dict) and "landmarks" in data or isinstance(data, list):
            return load_landmarks(p)[None]
        else:
            raise ValueError(f'{p}: expected {{"frames": [[[x, y], ...], ...]}}, got keys '
                             f"{sorted(data) if isinstance(data, dict) else type(data).__name__}")
    elif suffix == ".npy":
        a = _read_npy(p)
        if a.ndim == 2:
            a = a[None]
    elif suffix in (".txt", ".csv"):
        return load_landmarks(p)[None]
    else:
        raise ValueError(f"{p}: unsupported landmark file {suffix or '(no extension)'!r}; expected "
                         f"{FRAME_LANDMARK_FORMATS}")
    return torch.from_numpy(_check_points(a, p, True).copy()).float()


def check_landmarks_in_image(lm, width: int, height: int, what: str) -> None:
    """Refuse landmarks [K, 2] or [N, K, 2] whose centre lies outside the `width` x `height` image (another image's
    points) or that span less than a pixel (normalised coordinates); `what` names them in the error."""
    c = lm.reshape(-1, lm.shape[-2], 2).mean(1)  # [N, 2]
    bad = ((c[:, 0] < 0) | (c[:, 0] > width) | (c[:, 1] < 0) | (c[:, 1] > height)).nonzero()
    if len(bad):
        i = int(bad[0])
        where = f" (frame {i})" if lm.dim() == 3 else ""
        raise ValueError(f"{what}{where}: the landmarks' centre ({float(c[i, 0]):.1f}, {float(c[i, 1]):.1f}) lies "
                         f"outside the {width} x {height} image; landmarks are pixel coordinates of that image")
    spread = lm.reshape(-1, lm.shape[-2], 2).std(1).amin()
    if float(spread) < 1.0:
        raise ValueError(f"{what}: the landmarks span less than a pixel; they must be pixel coordinates (not "
                         f"normalised to [0, 1])")
