"""Head pose <-> camera label: Deep3DFaceRecon's pose (Euler angles and a translation of the head in front of a
fixed camera) as the 25-float EG3D camera label of the same view, and back.

Deep3DFaceRecon's camera sits at (0, 0, ``camera_distance`` = 10) on +z, looking down -z (OpenGL axes), and the
head moves: a model point v (in Deep3DFaceRecon's units, decimetres for BFM) appears at
``R(angles) v + t`` with ``R = Rz Ry Rx`` (its ``compute_rotation``, whose transpose it multiplies from the
right). EG3D's preprocessing (``3dface2idr_mat.py``) turns this into a moving camera around a fixed head: camera
centre ``c = -R^T (t - (0, 0, 10))``, cam2world rotation ``R^T diag(1, -1, -1)`` (OpenGL to OpenCV), and the
world scaled by 0.27 (camera distance 10 -> orbit radius 2.7). GOHA leaves out EG3D's extra offsets
(+0.006 in y, +0.161 in z); so does oneshot. For every morphable model here, world units = 0.27 x these units
(:data:`~oneshot.face3d.BFM_WORLD_SCALE`), so one pair of functions serves them all.

The intrinsics are not part of the pose: they belong to the image crop. Deep3DFaceRecon's 224 x 224 crop has
focal 1015 px (:data:`RECON_FOCAL` = 1015 / 224 normalised); the avatar's crop has EG3D's 4.2647
(:data:`oneshot.cameras.FOCAL`), i.e. the same view cropped 224 x 4.5313 / 4.2647 = 238 px wide around the same
centre (:func:`oneshot.face3d.align_face` cuts both).
"""

from __future__ import annotations

import torch
from torch import Tensor

from .. import cameras
from .frame import BFM_WORLD_SCALE, CAMERA_DISTANCE, RECON_FOCAL, RECON_RESOLUTION

__all__ = ["euler_rotation", "rotation_to_euler", "pose_to_camera", "camera_to_pose", "RECON_FOCAL",
           "RECON_RESOLUTION", "CAMERA_DISTANCE"]

_FLIP = (1.0, -1.0, -1.0)


def _check(t: Tensor, name: str, last: int) -> Tensor:
    if not isinstance(t, Tensor):
        raise TypeError(f"{name} must be a tensor [B, {last}], got {type(t).__name__}")
    if t.dim() == 1:
        t = t[None]
    if t.dim() != 2 or t.shape[1] != last:
        raise ValueError(f"{name} must be [B, {last}] or [{last}], got {list(t.shape)}")
    if not t.is_floating_point():
        raise TypeError(f"{name} must be floating point, got {t.dtype}")
    return t


def euler_rotation(angles: Tensor) -> Tensor:
    """Rotation matrices [B, 3, 3] = Rz(c) Ry(b) Rx(a) of Euler angles [B, 3] = (a, b, c) in radians
    (Deep3DFaceRecon's ``compute_rotation``, untransposed: the rotated point is ``R @ v``)."""
    angles = _check(angles, "angles", 3)
    x, y, z = angles.unbind(-1)
    o, i = torch.zeros_like(x), torch.ones_like(x)
    cx, sx, cy, sy, cz, sz = x.cos(), x.sin(), y.cos(), y.sin(), z.cos(), z.sin()
    rx = torch.stack([i, o, o, o, cx, -sx, o, sx, cx], -1).reshape(-1, 3, 3)
    ry = torch.stack([cy, o, sy, o, i, o, -sy, o, cy], -1).reshape(-1, 3, 3)
    rz = torch.stack([cz, -sz, o, sz, cz, o, o, o, i], -1).reshape(-1, 3, 3)
    return rz @ ry @ rx


def rotation_to_euler(rot: Tensor) -> Tensor:
    """Euler angles [B, 3] of rotations [B, 3, 3] (the inverse of :func:`euler_rotation`; the middle angle in
    [-pi/2, pi/2])."""
    if not isinstance(rot, Tensor) or rot.dim() != 3 or rot.shape[1:] != (3, 3):
        raise ValueError(f"rot must be [B, 3, 3], got {list(rot.shape) if isinstance(rot, Tensor) else rot!r}")
    # R = Rz Ry Rx: R[2, 0] = -sin(b), R[2, 1] = cos(b) sin(a), R[2, 2] = cos(b) cos(a),
    # R[1, 0] = sin(c) cos(b), R[0, 0] = cos(c) cos(b).
    cb = torch.sqrt(rot[:, 0, 0] ** 2 + rot[:, 1, 0] ** 2)
    b = torch.atan2(-rot[:, 2, 0], cb)
    regular = cb > 1e-6
    a = torch.where(regular, torch.atan2(rot[:, 2, 1], rot[:, 2, 2]), torch.atan2(-rot[:, 1, 2], rot[:, 1, 1]))
    c = torch.where(regular, torch.atan2(rot[:, 1, 0], rot[:, 0, 0]), torch.zeros_like(b))
    return torch.stack([a, b, c], -1)


def pose_to_camera(rotation: Tensor, translation: Tensor, *, focal: float = cameras.FOCAL,
                   camera_distance: float = CAMERA_DISTANCE, world_scale: float = BFM_WORLD_SCALE) -> Tensor:
    """The camera label(s) [B, 25] that see the world-frame model as Deep3DFaceRecon's camera sees the posed head.

    rotation [B, 3] (Euler angles, radians), translation [B, 3] (Deep3DFaceRecon's units: world / world_scale);
    `focal` is the normalised focal length of the image the label is for (EG3D's 4.2647 by default,
    :data:`RECON_FOCAL` for the regressor's own 224 crop).
    """
    rotation = _check(rotation, "rotation", 3)
    translation = _check(translation, "translation", 3)
    if rotation.shape[0] != translation.shape[0]:
        raise ValueError(f"rotation and translation must have one batch size, got {rotation.shape[0]} and "
                         f"{translation.shape[0]}")
    rot = euler_rotation(rotation)
    flip = rot.new_tensor(_FLIP)
    t = translation - translation.new_tensor([0.0, 0.0, float(camera_distance)])
    centre = -(rot.transpose(1, 2) @ t[..., None])[..., 0] * world_scale
    c2w = torch.zeros(rot.shape[0], 4, 4, dtype=rot.dtype, device=rot.device)
    c2w[:, :3, :3] = rot.transpose(1, 2) * flip  # R^T diag(1, -1, -1)
    c2w[:, :3, 3] = centre
    c2w[:, 3, 3] = 1
    return cameras.camera_label(c2w, cameras.intrinsics(focal, device=rot.device, dtype=rot.dtype))


def camera_to_pose(camera: Tensor, *, camera_distance: float = CAMERA_DISTANCE,
                   world_scale: float = BFM_WORLD_SCALE) -> tuple[Tensor, Tensor]:
    """(rotation [B, 3], translation [B, 3]) of camera label(s) [B, 25]: the inverse of :func:`pose_to_camera`
    (the intrinsics are ignored)."""
    c2w, _ = cameras.split_label(camera)
    rc = c2w[:, :3, :3]
    rot = (rc * rc.new_tensor(_FLIP)).transpose(1, 2)  # R = diag(1, -1, -1) Rc^T
    centre = c2w[:, :3, 3] / world_scale
    t = -(rot @ centre[..., None])[..., 0] + centre.new_tensor([0.0, 0.0, float(camera_distance)])
    return rotation_to_euler(rot), t
