"""Loaders of morphable models from their files, placed in the avatar's world frame."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from .align import canonical_similarity, five_points
from .frame import BFM_WORLD_SCALE, ICT_WORLD_SCALE
from .model import MorphableModel

__all__ = ["from_bfm", "from_ict_facekit", "BFM_WORLD_SCALE", "ICT_WORLD_SCALE"]

_BFM_KEYS = ("meanshape", "idBase", "exBase", "tri", "keypoints")


def _path(path, what: str) -> Path:
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"{what} path must be a str or os.PathLike, got {type(path).__name__}")
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{what}: no such file: {p}")
    return p


def _one_based(a, n: int, name: str, path: Path) -> np.ndarray:
    """1-based float/int indices -> 0-based int64, checked against n."""
    arr = np.asarray(a)
    idx = np.rint(arr.astype(np.float64)).astype(np.int64) - 1
    if not np.allclose(arr.astype(np.float64), idx + 1) or idx.size and (idx.min() < 0 or idx.max() >= n):
        raise ValueError(f"{path}: {name} must hold 1-based indices in 1 .. {n}, got "
                         f"{arr.min() if arr.size else '-'} .. {arr.max() if arr.size else '-'}")
    return idx


def from_bfm(path) -> MorphableModel:
    """Deep3DFaceRecon's ``BFM_model_front.mat`` (the layout its ``util/load_mats.py`` writes).

    Shapes are in decimetres, xyz interleaved: ``meanshape`` (1, 3N), ``idBase`` (3N, 80), ``exBase`` (3N, 64),
    albedo ``meantex`` (1, 3N) and ``texBase`` (3N, 80) in 0..255, ``tri`` (F, 3), ``keypoints`` (1, 68) and
    ``point_buf`` 1-based; ``skinmask`` (1, N) when present. The mean is recentred (its vertex mean
    subtracted, as Deep3DFaceRecon does) and everything scaled by :data:`BFM_WORLD_SCALE`.
    """
    p = _path(path, "BFM model")
    try:
        from scipy.io import loadmat
    except ImportError:  # pragma: no cover - scipy is a test dependency
        raise ImportError("loading a BFM .mat file needs scipy (pip install scipy)") from None
    try:
        mat = loadmat(str(p))
    except Exception as e:  # noqa: BLE001 - scipy raises several types for a malformed file
        raise ValueError(f"{p}: not a readable MATLAB .mat file ({e})") from None
    missing = [k for k in _BFM_KEYS if k not in mat]
    if missing:
        raise ValueError(f"{p}: not a BFM_model_front.mat: missing {', '.join(missing)} "
                         f"(expected keys {', '.join(_BFM_KEYS)}, meantex, texBase, point_buf, ...)")
    mean = np.asarray(mat["meanshape"], dtype=np.float64).reshape(-1)
    if mean.size % 3:
        raise ValueError(f"{p}: meanshape must have 3N values, got {mean.size}")
    N = mean.size // 3

    def basis(key: str) -> np.ndarray:
        b = np.asarray(mat[key], dtype=np.float64)
        if b.ndim != 2 or b.shape[0] != 3 * N:
            raise ValueError(f"{p}: {key} must be (3N, K) = ({3 * N}, K), got {b.shape}")
        return b.T.reshape(b.shape[1], N, 3)

    mean = mean.reshape(N, 3)
    mean = mean - mean.mean(axis=0, keepdims=True)
    id_b, exp_b = basis("idBase"), basis("exBase")
    tri = np.asarray(mat["tri"])
    if tri.ndim != 2 or tri.shape[1] != 3:
        raise ValueError(f"{p}: tri must be (F, 3), got {tri.shape}")
    faces = _one_based(tri, N, "tri", p)
    lm = np.asarray(mat["keypoints"]).reshape(-1)
    if lm.size != 68:
        raise ValueError(f"{p}: keypoints must hold 68 vertex ids, got {lm.size}")
    landmarks = _one_based(lm, N, "keypoints", p)
    albedo_mean = albedo_basis = None
    if "meantex" in mat:
        albedo_mean = np.asarray(mat["meantex"], dtype=np.float64).reshape(N, 3) / 255.0
        albedo_basis = basis("texBase") / 255.0 if "texBase" in mat else None
    regions = {}
    if "skinmask" in mat:
        skin = np.asarray(mat["skinmask"]).reshape(-1)
        if skin.size == N:
            regions["face"] = torch.from_numpy(skin > 0.5)
    s = BFM_WORLD_SCALE
    t = lambda a: torch.from_numpy(np.ascontiguousarray(a))  # noqa: E731
    return MorphableModel(
        "bfm", t(mean * s).float(), t(id_b * s).float(), t(exp_b * s).float(), t(faces), t(landmarks),
        albedo_mean=None if albedo_mean is None else t(albedo_mean).float(),
        albedo_basis=None if albedo_basis is None else t(albedo_basis).float(),
        regions=regions, world_scale=s,
    )


def from_ict_facekit(path) -> MorphableModel:
    """ICT-FaceKit in the npz layout of ``ict_facekit_face_f16.npz``: ``mean`` [V, 3] (cm), ``id_basis``
    [K_id, V, 3], ``exp_basis`` [K_exp, V, 3] (blendshape offsets, weights in [0, 1]), ``exp_names``,
    ``tris`` [F, 3] (0-based), ``landmarks68`` [68]. No albedo.

    Placed in the canonical frame of the crops (:data:`~oneshot.face3d.align.CANONICAL_FIVE`): scaled and
    translated (no rotation) so that its mean shape's five points (eye centres, nose tip, mouth corners) best
    match the canonical ones, so that a fitted or synthetic ICT-FaceKit face is framed as every other face is. For
    the shared model that is 0.91 x :data:`ICT_WORLD_SCALE` (``world_scale`` holds the scale used).
    """
    p = _path(path, "ICT-FaceKit model")
    try:
        d = np.load(str(p), allow_pickle=False)
    except Exception as e:  # noqa: BLE001
        raise ValueError(f"{p}: not a readable .npz file ({e})") from None
    need = ("mean", "id_basis", "exp_basis", "tris", "landmarks68")
    missing = [k for k in need if k not in d.files]
    if missing:
        raise ValueError(f"{p}: not an ICT-FaceKit npz: missing {', '.join(missing)} (expected {', '.join(need)})")
    mean = d["mean"].astype(np.float64)
    if mean.ndim != 2 or mean.shape[1] != 3:
        raise ValueError(f"{p}: mean must be [V, 3], got {mean.shape}")

    lm = d["landmarks68"].astype(np.int64)
    if lm.shape != (68,) or lm.min() < 0 or lm.max() >= len(mean):
        raise ValueError(f"{p}: landmarks68 must be 68 vertex indices in 0 .. {len(mean) - 1}")
    # cm -> Deep3DFaceRecon's decimetres, then the similarity onto the canonical five points, then world units
    k, shift = canonical_similarity(five_points(torch.from_numpy(mean[lm] * 0.1)[None])[0])
    s = ICT_WORLD_SCALE * k
    world_mean = mean * s + (shift.numpy() * BFM_WORLD_SCALE)[None]
    names = [str(n) for n in d["exp_names"]] if "exp_names" in d.files else None
    t = lambda a: torch.from_numpy(np.ascontiguousarray(a))  # noqa: E731
    return MorphableModel(
        "ict-facekit", t(world_mean).float(), t(d["id_basis"].astype(np.float32) * s), t(d["exp_basis"].astype(np.float32) * s),
        t(d["tris"].astype(np.int64)), t(d["landmarks68"].astype(np.int64)), exp_names=names, world_scale=s,
        identity_range=(-3.0, 3.0), expression_range=(0.0, 1.0),  # unit-variance modes; blendshape weights
    )
