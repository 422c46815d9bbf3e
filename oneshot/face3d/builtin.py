"""The built-in morphable model: a small head written in code, so that everything runs on a fresh machine.

Not a statistical model of real faces: a smooth head (a latitude-longitude sphere, 72 x 108, 7,668 vertices)
shaped by a few closed-form features (nose, brow ridge, eye sockets, lips, chin, cheeks), with

* 12 identity modes: smooth global and regional deformations (head width, height and depth, jaw width,
  face length, nose length and width, eye spacing, brow ridge, cheeks, lips, chin), unit weights ~ N(0, 1);
* 8 localised expression modes in [0, 1] with ARKit-style names: ``jawOpen``, ``mouthSmile_L/R``,
  ``mouthPucker``, ``eyeBlink_L/R``, ``browUp_L/R`` (``_L`` is the subject's left, image right, world +x);
* an albedo (skin, hair, sclera and iris, brows, lips) with 4 modes (skin tone, redness, lip tint, hair);
* the 68 iBUG landmarks (the surface vertices nearest to a canonical layout) and region masks.

It lives in the world frame of the other models: face region centroid at the origin, x right, y up, z out of
the face, about 0.4 wide (BFM scaled by 0.27 is about that size).
"""

from __future__ import annotations

import functools
import math

import numpy as np
import torch

from .model import MorphableModel, landmark_regions

__all__ = ["builtin_model", "EXPRESSIONS"]

EXPRESSIONS = ("jawOpen", "mouthSmile_L", "mouthSmile_R", "mouthPucker", "eyeBlink_L", "eyeBlink_R", "browUp_L",
               "browUp_R")

# Half axes of the head ellipsoid and the face-coordinate scale: u = x / AX, v = (y - Y0) / AY on the front.
AX, AY, AZ = 0.20, 0.27, 0.23
Y0 = 0.0


def _smoothstep(e0: float, e1: float, x: np.ndarray) -> np.ndarray:
    t = np.clip((x - e0) / (e1 - e0), 0.0, 1.0)
    return t * t * (3 - 2 * t)


def _bump(u, v, cu, cv, su, sv):
    return np.exp(-(((u - cu) / su) ** 2 + ((v - cv) / sv) ** 2))


def _landmarks_uv() -> np.ndarray:
    """Canonical (u, v) of the 68 iBUG points (u to image right = world +x, v up)."""
    pts = []
    for k in range(17):  # jaw: subject's right (image left) over the chin to the left
        a = math.radians(185 + k * (170 / 16))
        pts.append((0.92 * math.cos(a), 0.1 + 1.0 * math.sin(a)))
    for k in range(5):  # brows
        pts.append((-0.75 + 0.15 * k, 0.34 + 0.05 * math.sin(math.pi * k / 4)))
    for k in range(5):
        pts.append((0.15 + 0.15 * k, 0.34 + 0.05 * math.sin(math.pi * (4 - k) / 4)))
    pts += [(0, 0.15), (0, 0.05), (0, -0.05), (0, -0.15)]  # nose bridge to tip
    pts += [(-0.2, -0.25), (-0.1, -0.27), (0, -0.28), (0.1, -0.27), (0.2, -0.25)]  # nostrils
    pts += [(-0.55, 0.14), (-0.44, 0.19), (-0.30, 0.19), (-0.20, 0.14), (-0.30, 0.09), (-0.44, 0.09)]  # eye (img left)
    pts += [(0.20, 0.14), (0.30, 0.19), (0.44, 0.19), (0.55, 0.14), (0.44, 0.09), (0.30, 0.09)]  # eye (img right)
    pts += [(-0.30, -0.50), (-0.20, -0.44), (-0.08, -0.41), (0, -0.42), (0.08, -0.41), (0.20, -0.44),
            (0.30, -0.50), (0.20, -0.57), (0.08, -0.60), (0, -0.61), (-0.08, -0.60), (-0.20, -0.57)]  # outer lips
    pts += [(-0.25, -0.50), (-0.08, -0.48), (0, -0.48), (0.08, -0.48), (0.25, -0.50), (0.08, -0.52), (0, -0.52),
            (-0.08, -0.52)]  # inner lips
    return np.asarray(pts, dtype=np.float64)


EYE_CENTRES = ((-0.375, 0.14), (0.375, 0.14))  # image left (subject's right), image right (subject's left)


def _sphere(n_lat: int, n_lon: int):
    """Unit sphere: two poles and an n_lat x n_lon grid; azimuth 0 at +z (the face), polar angle from +y."""
    theta = np.linspace(0, math.pi, n_lat + 2)[1:-1]
    phi = np.linspace(-math.pi, math.pi, n_lon, endpoint=False) + math.pi / n_lon
    th, ph = np.meshgrid(theta, phi, indexing="ij")
    dirs = np.stack([np.sin(th) * np.sin(ph), np.cos(th), np.sin(th) * np.cos(ph)], -1).reshape(-1, 3)
    dirs = np.concatenate([[[0, 1, 0]], dirs, [[0, -1, 0]]])
    top, bottom = 0, 1 + n_lat * n_lon
    idx = lambda i, j: 1 + i * n_lon + (j % n_lon)  # noqa: E731
    faces = []
    for j in range(n_lon):  # caps
        faces.append((top, idx(0, j), idx(0, j + 1)))
        faces.append((bottom, idx(n_lat - 1, j + 1), idx(n_lat - 1, j)))
    for i in range(n_lat - 1):
        for j in range(n_lon):
            a, b, c, d = idx(i, j), idx(i, j + 1), idx(i + 1, j), idx(i + 1, j + 1)
            faces += [(a, d, b), (a, c, d)]
    # Counter-clockwise seen from outside: outward normals by the right-hand rule.
    return dirs, np.asarray(faces, dtype=np.int64)


@functools.lru_cache(maxsize=1)
def _build():
    dirs, faces = _sphere(72, 108)
    base = dirs * [AX, AY, AZ]
    u, v = base[:, 0] / AX, base[:, 1] / AY
    front = _smoothstep(0.0, 0.5, dirs[:, 2])  # features only on the front
    normal = dirs / np.array([AX, AY, AZ]) ** 2
    normal /= np.linalg.norm(normal, axis=1, keepdims=True)

    def along_normal(h):
        return normal * (h * front)[:, None]

    # Features of the mean face (heights along the normal).
    nose = 0.055 * _bump(u, v, 0, -0.12, 0.11, 0.16) + 0.02 * _bump(u, v, 0, 0.05, 0.06, 0.15)
    brow = 0.014 * _bump(u, v, -0.4, 0.3, 0.28, 0.07) + 0.014 * _bump(u, v, 0.4, 0.3, 0.28, 0.07)
    sockets = -0.016 * (_bump(u, v, *EYE_CENTRES[0], 0.17, 0.09) + _bump(u, v, *EYE_CENTRES[1], 0.17, 0.09))
    lips = 0.012 * _bump(u, v, 0, -0.455, 0.26, 0.04) + 0.014 * _bump(u, v, 0, -0.56, 0.24, 0.05)
    chin = 0.02 * _bump(u, v, 0, -0.85, 0.25, 0.12)
    cheeks = 0.01 * (_bump(u, v, -0.5, -0.2, 0.2, 0.2) + _bump(u, v, 0.5, -0.2, 0.2, 0.2))
    mean = base + along_normal(nose + brow + sockets + lips + chin + cheeks)
    mean[:, 1] += np.where(v < -0.7, -0.015 * _smoothstep(-0.7, -1.0, v) * front, 0)  # a narrower, longer jaw

    # Identity modes: ~1 cm-like displacements per unit weight.
    ids = [
        base * [0.06, 0, 0],  # head width
        base * [0, 0.05, 0],  # head height
        base * [0, 0, 0.06],  # head depth
        (base * [0.08, 0, 0]) * _smoothstep(0.0, -0.8, v)[:, None],  # jaw width
        np.stack([0 * u, -0.02 * _smoothstep(-0.3, -1.0, v), 0 * u], -1),  # face length
        along_normal(0.02 * _bump(u, v, 0, -0.12, 0.11, 0.16)),  # nose length
        np.stack([0.012 * np.tanh(u / 0.1) * _bump(u, v, 0, -0.2, 0.2, 0.12) * front, 0 * u, 0 * u], -1),  # nose w.
        np.stack([0.012 * np.sign(u) * (_bump(u, v, *EYE_CENTRES[0], 0.2, 0.12)
                                         + _bump(u, v, *EYE_CENTRES[1], 0.2, 0.12)) * front, 0 * u, 0 * u], -1),
        along_normal(0.01 * (_bump(u, v, -0.4, 0.3, 0.3, 0.08) + _bump(u, v, 0.4, 0.3, 0.3, 0.08))),  # brows
        along_normal(0.012 * (_bump(u, v, -0.5, -0.25, 0.25, 0.25) + _bump(u, v, 0.5, -0.25, 0.25, 0.25))),
        along_normal(0.008 * _bump(u, v, 0, -0.5, 0.28, 0.1)),  # lips
        along_normal(0.015 * _bump(u, v, 0, -0.85, 0.25, 0.12)),  # chin
    ]

    # Expression modes (weights in [0, 1]).
    lower = _smoothstep(-0.47, -0.53, v) * _smoothstep(-0.2, 0.3, dirs[:, 2])
    pivot = np.array([0.0, -0.05 * AY, -0.35 * AZ])
    ang = -0.22  # the chin goes down and back
    rot = np.array([[1, 0, 0], [0, math.cos(ang), math.sin(ang)], [0, -math.sin(ang), math.cos(ang)]])
    jaw = ((mean - pivot) @ rot.T + pivot - mean) * lower[:, None]
    exps = {"jawOpen": jaw}
    for side, name in ((-1, "R"), (1, "L")):  # _L: the subject's left = world +x
        corner = _bump(u, v, 0.3 * side, -0.5, 0.14, 0.1) * front
        exps[f"mouthSmile_{name}"] = np.stack([0.012 * side * corner, 0.016 * corner, -0.004 * corner], -1)
    lipw = _bump(u, v, 0, -0.5, 0.28, 0.12) * front
    exps["mouthPucker"] = np.stack([-0.25 * base[:, 0] * lipw, 0 * u, 0.018 * lipw], -1)
    for (cu, cv), name in zip(EYE_CENTRES, ("R", "L")):
        lid = _bump(u, v, cu, cv, 0.16, 0.09) * _smoothstep(cv - 0.02, cv + 0.04, v) * front
        exps[f"eyeBlink_{name}"] = np.stack([0 * u, -0.032 * lid, 0.008 * lid], -1)
        browm = _bump(u, v, cu, 0.33, 0.25, 0.1) * front
        exps[f"browUp_{name}"] = np.stack([0 * u, 0.016 * browm, 0.002 * browm], -1)
    exp_basis = np.stack([exps[n] for n in EXPRESSIONS])

    # Albedo in [0, 1] and its modes.
    skin = np.array([0.86, 0.66, 0.54])
    alb = np.tile(skin, (len(mean), 1))
    hair = (_smoothstep(0.45, 0.65, v) + _smoothstep(-0.05, -0.35, dirs[:, 2]) * _smoothstep(-0.6, -0.2, v))
    alb = alb * (1 - np.clip(hair, 0, 1))[:, None] + np.array([0.16, 0.11, 0.08]) * np.clip(hair, 0, 1)[:, None]
    for cu, cv in EYE_CENTRES:
        sclera = _bump(u, v, cu, cv, 0.19, 0.06) > 0.5
        alb[sclera & (front > 0.5)] = [0.93, 0.92, 0.9]
        iris = _bump(u, v, cu, cv, 0.065, 0.06) > 0.5
        alb[iris & (front > 0.5)] = [0.3, 0.2, 0.12]
    browc = (_bump(u, v, -0.45, 0.35, 0.28, 0.035) + _bump(u, v, 0.45, 0.35, 0.28, 0.035)) > 0.5
    alb[browc & (front > 0.5)] = [0.22, 0.15, 0.1]
    lipc = (_bump(u, v, 0, -0.5, 0.29, 0.085) > 0.5) & (front > 0.5)
    alb[lipc] = [0.74, 0.36, 0.36]
    skin_mask = (np.abs(alb - skin).sum(-1) < 1e-6)[:, None]
    tex = [
        skin_mask * np.array([-0.25, -0.25, -0.25]),  # skin tone
        skin_mask * np.array([0.06, -0.03, -0.03]),  # redness
        lipc[:, None] * np.array([0.12, -0.05, 0.0]),  # lip tint
        np.clip(hair, 0, 1)[:, None] * np.array([0.25, 0.18, 0.08]),  # hair colour
    ]

    lm_uv = _landmarks_uv()
    cand = np.flatnonzero(dirs[:, 2] > 0.3)
    d2 = ((u[cand, None] - lm_uv[None, :, 0]) ** 2 + (v[cand, None] - lm_uv[None, :, 1]) ** 2)
    landmarks = cand[d2.argmin(axis=0)]

    # World frame: the face region's centroid at the origin (as BFM's recentred face).
    face = landmark_regions(torch.from_numpy(mean), torch.from_numpy(landmarks))["face"].numpy()
    mean = mean - mean[face].mean(axis=0)
    return mean, np.stack(ids), exp_basis, faces, landmarks, alb, np.stack(tex)


def builtin_model() -> MorphableModel:
    """The built-in model (built once per process, a fraction of a second)."""
    mean, ids, exps, faces, landmarks, alb, tex = _build()
    t = lambda a: torch.from_numpy(np.ascontiguousarray(a))  # noqa: E731
    return MorphableModel("builtin", t(mean).float(), t(ids).float(), t(exps).float(), t(faces), t(landmarks),
                          albedo_mean=t(alb).float(), albedo_basis=t(tex).float(), exp_names=list(EXPRESSIONS),
                          identity_range=(-3.0, 3.0), expression_range=(0.0, 1.0))
