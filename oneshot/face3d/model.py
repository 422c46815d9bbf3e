"""The morphable model container."""

from __future__ import annotations

import hashlib

import numpy as np
import torch
from torch import Tensor, nn

__all__ = ["MorphableModel", "REGIONS", "landmark_regions"]

#: Region labels every model carries (bool masks over the vertices).
REGIONS = ("face", "eyes", "brows", "mouth")

# iBUG 68-point groups (0-based): jaw 0-16, brows 17-26, nose 27-35, eyes 36-47, outer lips 48-59, inner 60-67.
_BROWS = (list(range(17, 22)), list(range(22, 27)))
_EYES = (list(range(36, 42)), list(range(42, 48)))
_MOUTH_OUTER = list(range(48, 60))


def _inside_polygon(pts: np.ndarray, poly: np.ndarray) -> np.ndarray:
    """Even-odd rule: which of the 2D points [N, 2] lie inside the closed polygon [K, 2]."""
    x, y = pts[:, 0:1], pts[:, 1:2]
    x0, y0 = poly[:, 0][None], poly[:, 1][None]
    x1, y1 = np.roll(poly[:, 0], -1)[None], np.roll(poly[:, 1], -1)[None]
    crosses = ((y0 > y) != (y1 > y)) & (x < (x1 - x0) * (y - y0) / np.where(y1 == y0, 1e-30, y1 - y0) + x0)
    return crosses.sum(axis=1) % 2 == 1


def _dilate(poly: np.ndarray, factor: float) -> np.ndarray:
    c = poly.mean(axis=0, keepdims=True)
    return c + (poly - c) * factor


def landmark_regions(mean: Tensor, landmarks: Tensor) -> dict[str, Tensor]:
    """Region masks from the 68 landmarks, in the frontal (x, y) projection of the mean shape: the eyes and the
    mouth are the vertices inside their (slightly dilated) landmark contours, the brows those within a band
    around the brow landmarks, the face those inside the jaw-and-brow outline; only vertices in front of the
    landmark depth range count (the back of a head model is never a region)."""
    v = mean.detach().double().cpu().numpy()
    lm = v[landmarks.cpu().numpy()]
    xy = v[:, :2]
    front = v[:, 2] >= lm[:, 2].min() - 0.25 * (lm[:, 2].max() - lm[:, 2].min())
    eyes = np.zeros(len(v), dtype=bool)
    for group in _EYES:
        eyes |= _inside_polygon(xy, _dilate(lm[group, :2], 1.35))
    mouth = _inside_polygon(xy, _dilate(lm[_MOUTH_OUTER, :2], 1.15))
    brows = np.zeros(len(v), dtype=bool)
    eye_height = np.ptp(lm[36:48, 1]) + 1e-9
    for group in _BROWS:
        p = lm[group, :2]
        band = np.concatenate([p + [0, 0.6 * eye_height], (p - [0, 0.6 * eye_height])[::-1]])
        brows |= _inside_polygon(xy, _dilate(band, 1.1))
    outline = np.concatenate([lm[0:17, :2], lm[26:16:-1, :2] + [0, 1.5 * eye_height]])
    face = _inside_polygon(xy, outline)
    out = {"face": face, "eyes": eyes, "brows": brows, "mouth": mouth}
    return {k: torch.from_numpy(m & front) for k, m in out.items()}


class MorphableModel(nn.Module):
    """A linear 3D morphable model in the avatar's world frame.

    vertices(identity, expression) = mean + identity @ id_basis + expression @ exp_basis, per batch element.
    Buffers move with ``.to(device)``.

    Args:
        name: a short name ("bfm", "ict-facekit", "builtin", ...).
        mean: [V, 3] mean shape (world units).
        id_basis: [K_id, V, 3] identity modes; exp_basis: [K_exp, V, 3] expression modes.
        faces: [F, 3] vertex indices (0-based).
        landmarks: [68] vertex indices of the iBUG 68 landmarks.
        albedo_mean: optional [V, 3] albedo in [0, 1]; albedo_basis: optional [K_tex, V, 3].
        regions: optional dict of bool masks [V] ("face", "eyes", "brows", "mouth"); derived from the
            landmarks when missing.
        exp_names: optional names of the expression modes.
        world_scale: the similarity scale applied to the source units (documentation; already applied).
        identity_range: optional (low, high) bounds of plausible identity coefficients, which fits keep to
            (e.g. (-3, 3) for unit-variance identity modes); None: unbounded (only the fit's L2 prior holds them).
        expression_range: the same for the expression coefficients (e.g. (0, 1) for blendshape weights).
    """

    def __init__(self, name: str, mean: Tensor, id_basis: Tensor, exp_basis: Tensor, faces: Tensor, landmarks: Tensor,
                 albedo_mean: Tensor | None = None, albedo_basis: Tensor | None = None,
                 regions: dict[str, Tensor] | None = None, exp_names: list[str] | None = None,
                 world_scale: float = 1.0, identity_range: tuple[float, float] | None = None,
                 expression_range: tuple[float, float] | None = None):
        super().__init__()
        V = mean.shape[0]
        if mean.dim() != 2 or mean.shape[1] != 3:
            raise ValueError(f"mean must be [V, 3], got {list(mean.shape)}")
        for nm, basis in (("id_basis", id_basis), ("exp_basis", exp_basis)):
            if basis.dim() != 3 or basis.shape[1:] != (V, 3):
                raise ValueError(f"{nm} must be [K, V, 3] with V = {V}, got {list(basis.shape)}")
        if faces.dim() != 2 or faces.shape[1] != 3:
            raise ValueError(f"faces must be [F, 3], got {list(faces.shape)}")
        if faces.numel() and (int(faces.min()) < 0 or int(faces.max()) >= V):
            raise ValueError(f"faces must index vertices 0 .. {V - 1}, got {int(faces.min())} .. {int(faces.max())}")
        if landmarks.shape != (68,) or int(landmarks.min()) < 0 or int(landmarks.max()) >= V:
            raise ValueError(f"landmarks must be 68 vertex indices in 0 .. {V - 1}, got shape {list(landmarks.shape)}")
        if albedo_basis is not None and albedo_mean is None:
            raise ValueError("albedo_basis needs albedo_mean")
        if albedo_mean is not None and albedo_mean.shape != (V, 3):
            raise ValueError(f"albedo_mean must be [V, 3], got {list(albedo_mean.shape)}")
        if albedo_basis is not None and (albedo_basis.dim() != 3 or albedo_basis.shape[1:] != (V, 3)):
            raise ValueError(f"albedo_basis must be [K, V, 3], got {list(albedo_basis.shape)}")
        if exp_names is not None and len(exp_names) != exp_basis.shape[0]:
            raise ValueError(f"exp_names must name the {exp_basis.shape[0]} expression modes, got {len(exp_names)}")
        for nm, rng in (("identity_range", identity_range), ("expression_range", expression_range)):
            if rng is not None and not (len(rng) == 2 and float(rng[0]) < float(rng[1])):
                raise ValueError(f"{nm} must be (low, high) with low < high, or None, got {rng!r}")
        self.identity_range = None if identity_range is None else (float(identity_range[0]), float(identity_range[1]))
        self.expression_range = None if expression_range is None else (float(expression_range[0]),
                                                                       float(expression_range[1]))
        self.name = name
        self.exp_names = list(exp_names) if exp_names is not None else None
        self.world_scale = float(world_scale)
        self.register_buffer("mean", mean.float().contiguous())
        self.register_buffer("id_basis", id_basis.float().contiguous())
        self.register_buffer("exp_basis", exp_basis.float().contiguous())
        self.register_buffer("faces", faces.long().contiguous())
        self.register_buffer("landmarks", landmarks.long().contiguous())
        self.register_buffer("albedo_mean", None if albedo_mean is None else albedo_mean.float().contiguous())
        if albedo_basis is None and albedo_mean is not None:
            albedo_basis = torch.zeros(0, V, 3)
        self.register_buffer("albedo_basis", None if albedo_basis is None else albedo_basis.float().contiguous())
        regions = dict(regions) if regions else {}
        derived = landmark_regions(self.mean, self.landmarks)
        for key in REGIONS:
            mask = regions.get(key, derived[key])
            if mask.shape != (V,):
                raise ValueError(f"region {key!r} must be a bool mask [V] = [{V}], got {list(mask.shape)}")
            self.register_buffer(f"region_{key}", mask.bool().contiguous())
        self.fingerprint = self._fingerprint()

    # sizes
    @property
    def num_vertices(self) -> int:
        return self.mean.shape[0]

    @property
    def num_identity(self) -> int:
        return self.id_basis.shape[0]

    @property
    def num_expression(self) -> int:
        return self.exp_basis.shape[0]

    @property
    def num_albedo(self) -> int:
        return 0 if self.albedo_basis is None else self.albedo_basis.shape[0]

    @property
    def has_albedo(self) -> bool:
        return self.albedo_mean is not None

    def region(self, name: str) -> Tensor:
        if name not in REGIONS:
            raise ValueError(f"region must be one of {REGIONS}, got {name!r}")
        return getattr(self, f"region_{name}")

    def _fingerprint(self) -> str:
        h = hashlib.sha1()
        h.update(self.name.encode())
        h.update(str((self.num_vertices, self.num_identity, self.num_expression, self.num_albedo)).encode())
        h.update(self.mean.detach().cpu().numpy().tobytes())
        h.update(self.faces.detach().cpu().numpy().tobytes())
        return f"{self.name}:{h.hexdigest()[:12]}"

    def vertices(self, identity: Tensor | None = None, expression: Tensor | None = None) -> Tensor:
        """[B, V, 3] shapes for identity [B, K_id] and expression [B, K_exp] coefficients (None: zeros; a
        prefix of the modes may be given: [B, k] with k <= K)."""
        B = next((t.shape[0] for t in (identity, expression) if t is not None), 1)
        out = self.mean.expand(B, -1, -1)
        for nm, c, basis in (("identity", identity, self.id_basis), ("expression", expression, self.exp_basis)):
            if c is None:
                continue
            if c.dim() != 2 or c.shape[0] != B or c.shape[1] > basis.shape[0]:
                raise ValueError(f"{nm} must be [B, k] with B = {B} and k <= {basis.shape[0]}, got {list(c.shape)}")
            k = c.shape[1]
            out = out + torch.einsum("bk,kvc->bvc", c.to(basis), basis[:k])
        return out

    def albedo(self, coeffs: Tensor | None = None) -> Tensor | None:
        """[B, V, 3] albedo in [0, 1] (None for models without one)."""
        if self.albedo_mean is None:
            return None
        B = 1 if coeffs is None else coeffs.shape[0]
        out = self.albedo_mean.expand(B, -1, -1)
        if coeffs is not None and coeffs.shape[1] > 0:
            if coeffs.shape[1] > self.num_albedo:
                raise ValueError(f"albedo coefficients must be [B, k] with k <= {self.num_albedo}, got {list(coeffs.shape)}")
            out = out + torch.einsum("bk,kvc->bvc", coeffs.to(self.albedo_basis), self.albedo_basis[: coeffs.shape[1]])
        return out.clamp(0, 1)

    def extra_repr(self) -> str:
        return (f"name={self.name!r}, vertices={self.num_vertices}, faces={self.faces.shape[0]}, "
                f"identity={self.num_identity}, expression={self.num_expression}, albedo={self.num_albedo}, "
                f"fingerprint={self.fingerprint!r}")
