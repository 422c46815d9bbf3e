"""Per-image coefficients of one morphable model."""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch
from torch import Tensor

from .model import MorphableModel

__all__ = ["Coeffs", "BFM257_LAYOUT"]

#: Deep3DFaceRecon's 257-vector: (name, size) in order.
BFM257_LAYOUT = (("identity", 80), ("expression", 64), ("albedo", 80), ("rotation", 3), ("lighting", 27),
                 ("translation", 3))


@dataclass
class Coeffs:
    """Coefficients of a batch of faces under one model (sizes set by that model).

    identity [B, K_id], expression [B, K_exp], albedo [B, K_tex] (K_tex may be 0), lighting [B, 27] (second-order
    spherical harmonics, 9 per colour channel, Deep3DFaceRecon's gamma layout), rotation [B, 3] (Euler angles
    about x, y, z in radians, Deep3DFaceRecon's convention), translation [B, 3] (Deep3DFaceRecon's units: world
    / 0.27, its camera at distance 10); :meth:`camera` is the pose as a camera label. ``model`` is the fingerprint of
    the model they belong to: :meth:`check` refuses another model with a clear error.
    """

    identity: Tensor
    expression: Tensor
    albedo: Tensor
    lighting: Tensor
    rotation: Tensor
    translation: Tensor
    model: str

    def __post_init__(self):
        B = self.identity.shape[0] if self.identity.dim() == 2 else -1
        for f in fields(self):
            if f.name == "model":
                continue
            t = getattr(self, f.name)
            if not isinstance(t, Tensor) or t.dim() != 2 or t.shape[0] != B:
                got = list(t.shape) if isinstance(t, Tensor) else type(t).__name__
                raise ValueError(f"Coeffs.{f.name} must be [B, K] with the batch size of identity ({B}), got {got}")
        for name, k in (("lighting", 27), ("rotation", 3), ("translation", 3)):
            if getattr(self, name).shape[1] != k:
                raise ValueError(f"Coeffs.{name} must be [B, {k}], got {list(getattr(self, name).shape)}")

    @property
    def batch_size(self) -> int:
        return self.identity.shape[0]

    def repeat(self, n: int) -> Coeffs:
        """The coefficients of a one-face batch repeated `n` times (e.g. one source's for every frame)."""
        if self.batch_size != 1:
            raise ValueError(f"Coeffs.repeat takes a batch of one face, got {self.batch_size}")
        return Coeffs(*(getattr(self, f.name).repeat(n, 1) for f in fields(self) if f.name != "model"),
                      model=self.model)

    @classmethod
    def cat(cls, parts: list[Coeffs]) -> Coeffs:
        """The batches of `parts` (coefficients of one model) one after another."""
        if not parts:
            raise ValueError("Coeffs.cat needs at least one batch, got none")
        if len({p.model for p in parts}) != 1:
            raise ValueError(f"Coeffs.cat joins coefficients of one model, got {sorted({p.model for p in parts})}")
        return cls(*(torch.cat([getattr(p, f.name) for p in parts]) for f in fields(cls) if f.name != "model"),
                   model=parts[0].model)

    @classmethod
    def zeros(cls, model: MorphableModel, batch: int = 1, *, device=None, dtype=torch.float32) -> Coeffs:
        """Neutral coefficients: mean identity and albedo, no expression, ambient white light (the DC lighting
        term 0 on top of Deep3DFaceRecon's 0.8 initial value), frontal pose."""
        z = lambda k: torch.zeros(batch, k, device=device, dtype=dtype)  # noqa: E731
        return cls(z(model.num_identity), z(model.num_expression), z(model.num_albedo), z(27), z(3), z(3),
                   model.fingerprint)

    def check(self, model: MorphableModel) -> Coeffs:
        """These coefficients, if they belong to `model` (sizes and fingerprint); a ValueError otherwise."""
        if self.model != model.fingerprint:
            raise ValueError(f"coefficients of model {self.model} cannot drive model {model.fingerprint}")
        for name, k in (("identity", model.num_identity), ("expression", model.num_expression),
                        ("albedo", model.num_albedo)):
            if getattr(self, name).shape[1] != k:
                raise ValueError(f"Coeffs.{name} has {getattr(self, name).shape[1]} values, model "
                                 f"{model.fingerprint} has {k}")
        return self

    def to(self, *args, **kwargs) -> Coeffs:
        return Coeffs(*(getattr(self, f.name).to(*args, **kwargs) for f in fields(self) if f.name != "model"),
                      model=self.model)

    def camera(self, focal: float | None = None) -> Tensor:
        """The camera label(s) [B, 25] of this pose (:func:`~oneshot.face3d.pose_to_camera`; `focal` is the
        normalised focal length of the image, EG3D's by default)."""
        from .. import cameras
        from .pose import pose_to_camera

        return pose_to_camera(self.rotation, self.translation, focal=cameras.FOCAL if focal is None else focal)

    def with_camera(self, camera: Tensor) -> Coeffs:
        """A copy whose rotation and translation are the pose of camera label(s) [B, 25]
        (:func:`~oneshot.face3d.camera_to_pose`)."""
        from .pose import camera_to_pose

        rotation, translation = camera_to_pose(camera.to(self.rotation))
        if rotation.shape[0] != self.batch_size:
            raise ValueError(f"camera must be [{self.batch_size}, 25], got {list(camera.shape)}")
        return Coeffs(self.identity, self.expression, self.albedo, self.lighting, rotation.to(self.rotation),
                      translation.to(self.translation), self.model)

    def to_bfm257(self) -> Tensor:
        """Deep3DFaceRecon's [B, 257] vector (only for coefficients of an 80/64/80 BFM)."""
        sizes = {name: getattr(self, name).shape[1] for name, _ in BFM257_LAYOUT}
        want = dict(BFM257_LAYOUT)
        if sizes != want:
            raise ValueError(f"only coefficients with Deep3DFaceRecon's sizes {want} convert to the 257-vector, "
                             f"got {sizes}")
        return torch.cat([getattr(self, name) for name, _ in BFM257_LAYOUT], dim=1)

    @classmethod
    def from_bfm257(cls, vec: Tensor, model: MorphableModel) -> Coeffs:
        """Coefficients of `model` (a BFM with 80 identity, 64 expression, 80 albedo modes) from [B, 257]."""
        if not isinstance(vec, Tensor) or vec.dim() != 2 or vec.shape[1] != 257:
            got = list(vec.shape) if isinstance(vec, Tensor) else type(vec).__name__
            raise ValueError(f"a Deep3DFaceRecon coefficient vector must be [B, 257], got {got}")
        sizes = (model.num_identity, model.num_expression, model.num_albedo)
        if sizes != (80, 64, 80):
            raise ValueError(f"the 257-vector needs a model with 80/64/80 identity/expression/albedo modes; "
                             f"{model.fingerprint} has {sizes[0]}/{sizes[1]}/{sizes[2]}")
        parts, o = {}, 0
        for name, k in BFM257_LAYOUT:
            parts[name] = vec[:, o:o + k]
            o += k
        return cls(model=model.fingerprint, **parts)
