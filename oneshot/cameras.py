"""Cameras and rays in the EG3D / GOHA conventions.

* A camera is a cam2world 4x4 (OpenCV axes: x right, y down, z forward, i.e. the camera looks along +z) and
  intrinsics normalised by the image size, ``[[f, 0, cx], [0, f, cy], [0, 0, 1]]`` with the principal point at
  (0.5, 0.5). On disk and in the model it is a 25-float label: the 16 entries of cam2world (row-major), then the
  9 of the intrinsics.
* World: y up, z out of the face; the head sits near the origin, the default camera orbits at radius 2.7 and
  looks at the pivot (0, 0, 0.2). The frontal camera sits at (0, 0, 2.7).
* Rays: one per pixel centre, row-major (pixel (i, j) is ray ``i * W + j``), normalised image coordinates
  x = (j + 0.5) / W, y = (i + 0.5) / H, unit directions, all rays of a camera starting at its centre.

:func:`look_at` follows EG3D's ``LookAtPoseSampler`` exactly (its yaw/pitch parameterisation included), so
labels and renders line up with EG3D/GOHA data.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence

import torch
from torch import Tensor

from .ops import check_resolution

__all__ = [
    "FOCAL",
    "FOV_DEGREES",
    "RADIUS",
    "PIVOT",
    "fov_to_focal",
    "focal_to_fov",
    "intrinsics",
    "look_at",
    "camera_label",
    "split_label",
    "frontal_label",
    "orbit_labels",
    "relative_cameras",
    "rays",
    "project",
]

#: Normalised focal length of the FFHQ/EG3D labels (and of GOHA's data).
FOCAL = 4.2647
#: The field of view EG3D quotes for it (EG3D's formula maps 18.837 degrees to 4.2634; see fov_to_focal).
FOV_DEGREES = 18.837
#: Default orbit radius and look-at pivot.
RADIUS = 2.7
PIVOT = (0.0, 0.0, 0.2)


def fov_to_focal(fov_degrees: float) -> float:
    """Normalised focal length for a field of view, by EG3D's formula ``1 / (tan(fov / 2) * 1.414)`` (its
    constants kept: pi as 3.14159 and sqrt(2) as 1.414, so the values match EG3D's renders)."""
    return float(1.0 / (math.tan(fov_degrees * 3.14159 / 360.0) * 1.414))


def focal_to_fov(focal: float) -> float:
    """The inverse of :func:`fov_to_focal`."""
    return float(math.atan(1.0 / (focal * 1.414)) * 360.0 / 3.14159)


def _batch_angles(x, name: str) -> Tensor:
    if isinstance(x, Tensor):
        t = x.detach().to(torch.float64).reshape(-1)
    elif isinstance(x, numbers.Real) and not isinstance(x, bool):
        t = torch.tensor([float(x)], dtype=torch.float64)
    else:
        try:
            t = torch.tensor([float(v) for v in x], dtype=torch.float64)
        except (TypeError, ValueError):
            raise TypeError(f"{name} must be a number, a sequence of numbers or a tensor, got {x!r}") from None
    if not torch.isfinite(t).all():
        raise ValueError(f"{name} must be finite, got {x!r}")
    return t


def intrinsics(focal: float = FOCAL, batch: int | None = None, *, device=None, dtype=torch.float32) -> Tensor:
    """Normalised intrinsics [3, 3] (or [batch, 3, 3]) with the principal point at the image centre."""
    if not (isinstance(focal, numbers.Real) and focal > 0):
        raise ValueError(f"focal must be a positive number, got {focal!r}")
    k = torch.tensor([[focal, 0.0, 0.5], [0.0, focal, 0.5], [0.0, 0.0, 1.0]], dtype=dtype, device=device)
    return k if batch is None else k.expand(batch, 3, 3).clone()


def look_at(yaw=0.0, pitch=0.0, radius: float = RADIUS, pivot: Sequence[float] = PIVOT, *, device=None,
            dtype=torch.float32) -> Tensor:
    """cam2world [B, 4, 4] of cameras on EG3D's orbit, looking at `pivot`.

    `yaw` and `pitch` (radians; numbers or sequences/tensors of B values) are offsets from the frontal view, as
    EG3D's scripts pass them (``LookAtPoseSampler.sample(pi/2 + yaw, pi/2 + pitch, pivot, radius)``): the camera
    sits at radius * (sin(phi) cos(pi - theta), cos(phi), sin(phi) sin(pi - theta)) about the world origin with
    theta = pi/2 + yaw and phi = arccos(1 - 2 (pi/2 + pitch) / pi) (= arccos(-2 pitch / pi)). Positive yaw
    moves the camera towards +x, positive pitch below the head. No roll: the camera's y axis points down
    in the plane that contains world y.
    """
    yaw_t, pitch_t = _batch_angles(yaw, "yaw"), _batch_angles(pitch, "pitch")
    if yaw_t.numel() != pitch_t.numel():
        if yaw_t.numel() == 1:
            yaw_t = yaw_t.expand_as(pitch_t)
        elif pitch_t.numel() == 1:
            pitch_t = pitch_t.expand_as(yaw_t)
        else:
            raise ValueError(f"yaw and pitch must have the same number of values, got {yaw_t.numel()} and "
                             f"{pitch_t.numel()}")
    if not (isinstance(radius, numbers.Real) and radius > 0):
        raise ValueError(f"radius must be a positive number, got {radius!r}")
    piv = torch.as_tensor(pivot, dtype=torch.float64)
    if piv.shape != (3,):
        raise ValueError(f"pivot must be 3 numbers, got {pivot!r}")
    theta = math.pi / 2 + yaw_t
    v = torch.clamp(math.pi / 2 + pitch_t, 1e-5, math.pi - 1e-5) / math.pi
    phi = torch.arccos(1 - 2 * v)
    origin = torch.stack([radius * torch.sin(phi) * torch.cos(math.pi - theta), radius * torch.cos(phi),
                          radius * torch.sin(phi) * torch.sin(math.pi - theta)], dim=-1)
    forward = torch.nn.functional.normalize(piv - origin, dim=-1)
    up = torch.tensor([0.0, 1.0, 0.0], dtype=torch.float64).expand_as(forward)
    right = -torch.nn.functional.normalize(torch.cross(up, forward, dim=-1), dim=-1)
    down = torch.nn.functional.normalize(torch.cross(forward, right, dim=-1), dim=-1)
    c2w = torch.eye(4, dtype=torch.float64).repeat(origin.shape[0], 1, 1)
    c2w[:, :3, 0], c2w[:, :3, 1], c2w[:, :3, 2], c2w[:, :3, 3] = right, down, forward, origin
    return c2w.to(device=device, dtype=dtype)


def camera_label(cam2world: Tensor, intr: Tensor) -> Tensor:
    """The 25-float label(s) [B, 25] of cam2world [B, 4, 4] and intrinsics [B, 3, 3] (or [3, 3])."""
    if cam2world.dim() != 3 or cam2world.shape[1:] != (4, 4):
        raise ValueError(f"cam2world must be [B, 4, 4], got {list(cam2world.shape)}")
    if intr.dim() == 2:
        intr = intr.expand(cam2world.shape[0], 3, 3)
    if intr.shape != (cam2world.shape[0], 3, 3):
        raise ValueError(f"intrinsics must be [3, 3] or [B, 3, 3] with B = {cam2world.shape[0]}, got {list(intr.shape)}")
    return torch.cat([cam2world.reshape(-1, 16), intr.to(cam2world).reshape(-1, 9)], dim=1)


def split_label(label: Tensor) -> tuple[Tensor, Tensor]:
    """cam2world [B, 4, 4] and intrinsics [B, 3, 3] of label(s) [B, 25] (or [25]); checks that cam2world is a
    rigid transform and the intrinsics have the normalised form."""
    if not isinstance(label, Tensor):
        label = torch.as_tensor(label, dtype=torch.float32)
    if label.dim() == 1:
        label = label[None]
    if label.dim() != 2 or label.shape[1] != 25:
        raise ValueError(f"camera label must be [B, 25] or [25] (16 cam2world + 9 intrinsics), got {list(label.shape)}")
    if not torch.isfinite(label).all():
        raise ValueError("camera label must be finite")
    c2w = label[:, :16].reshape(-1, 4, 4)
    intr = label[:, 16:].reshape(-1, 3, 3)
    rot = c2w[:, :3, :3].double()
    eye = torch.eye(3, dtype=torch.float64)
    err = (rot.transpose(1, 2) @ rot - eye).abs().amax().item() if len(rot) else 0.0
    if err > 1e-3 or (len(rot) and (c2w[:, 3].double() - torch.tensor([0, 0, 0, 1.0])).abs().amax() > 1e-6):
        raise ValueError(f"camera label: cam2world must be a rigid transform [[R, t], [0, 0, 0, 1]] (R^T R = I "
                         f"within 1e-3; off by {err:.3g})")
    if len(intr) and ((intr[:, 0, 0] <= 0).any() or (intr[:, 2] - torch.tensor([0, 0, 1.0])).abs().amax() > 1e-6):
        raise ValueError("camera label: intrinsics must be [[f, 0, cx], [0, f, cy], [0, 0, 1]] with f > 0")
    return c2w, intr


def frontal_label(*, device=None, dtype=torch.float32) -> Tensor:
    """The fixed frontal camera [1, 25]: at (0, 0, 2.7), looking at the pivot, default focal length."""
    return camera_label(look_at(0.0, 0.0, device=device, dtype=dtype), intrinsics(device=device, dtype=dtype))


def orbit_labels(n: int, yaw_range: float = 0.6, pitch_range: float = 0.15, *, pivot: Sequence[float] = PIVOT,
                 radius: float = RADIUS, device=None, dtype=torch.float32) -> Tensor:
    """[n, 25] labels of a closed orbit (yaw = yaw_range * sin, pitch = pitch_range * cos over one turn) looking at
    `pivot` (:func:`look_at`), as EG3D's video scripts sweep it."""
    if not (isinstance(n, numbers.Integral) and n >= 1):
        raise ValueError(f"n must be an int >= 1, got {n!r}")
    t = torch.arange(n, dtype=torch.float64) * (2 * math.pi / n)
    c2w = look_at(yaw_range * torch.sin(t), pitch_range * torch.cos(t), radius, pivot, device=device, dtype=dtype)
    return camera_label(c2w, intrinsics(device=device, dtype=dtype))


def relative_cameras(source_camera, driving_cameras, reference_camera):
    """Cameras [F, 25] that move around the source as the driving cameras [F, 25] move relative to the reference
    camera [1, 25] (the first driving frame's): the driving head's rigid motion, in the head's (world) frame,
    applied to the source camera [1, 25]: ``C_t = D_t D_ref^-1 C_src`` (cam2world matrices); the source's
    intrinsics. The reference frame itself gets the source camera."""
    src_c2w, src_k = split_label(source_camera)
    drv, _ = split_label(driving_cameras)
    ref, _ = split_label(reference_camera)
    c2w = drv.double() @ torch.linalg.inv(ref.double()) @ src_c2w.double()
    c2w[:, 3] = torch.tensor([0.0, 0.0, 0.0, 1.0], dtype=c2w.dtype, device=c2w.device)  # exact homogeneous row
    return camera_label(c2w.to(src_c2w.dtype), src_k.expand(c2w.shape[0], 3, 3))


def rays(cam2world: Tensor, intr: Tensor, resolution) -> tuple[Tensor, Tensor]:
    """Ray origins and unit directions [B, H * W, 3] through the pixel centres, row-major.

    Pixel (i, j) has normalised image coordinates (x, y) = ((j + 0.5) / W, (i + 0.5) / H); its camera-space
    direction is ((x - cx) / fx, (y - cy) / fy, 1) (EG3D's RaySampler without skew), rotated into the world.
    """
    if cam2world.dim() != 3 or cam2world.shape[1:] != (4, 4):
        raise ValueError(f"cam2world must be [B, 4, 4], got {list(cam2world.shape)}")
    if intr.dim() == 2:
        intr = intr.expand(cam2world.shape[0], 3, 3)
    H, W = check_resolution(resolution)
    dev, dt = cam2world.device, cam2world.dtype
    i = torch.arange(H, device=dev, dtype=dt)
    j = torch.arange(W, device=dev, dtype=dt)
    y = ((i + 0.5) / H)[:, None].expand(H, W).reshape(-1)
    x = ((j + 0.5) / W)[None, :].expand(H, W).reshape(-1)
    fx, fy = intr[:, 0, 0, None], intr[:, 1, 1, None]
    cx, cy = intr[:, 0, 2, None], intr[:, 1, 2, None]
    d_cam = torch.stack([(x - cx) / fx, (y - cy) / fy, torch.ones_like(x).expand_as(fx * x)], dim=-1)  # [B, R, 3]
    d_world = torch.nn.functional.normalize(d_cam @ cam2world[:, :3, :3].transpose(1, 2), dim=-1)
    origins = cam2world[:, None, :3, 3].expand_as(d_world)
    return origins, d_world


def project(points: Tensor, cam2world: Tensor, intr: Tensor, resolution) -> tuple[Tensor, Tensor]:
    """Pixel coordinates [B, N, 2] (x to the right, y down, pixel (i, j) centred at (j + 0.5, i + 0.5)) and
    view depths [B, N] of world points [B, N, 3]: the inverse of :func:`rays`."""
    H, W = check_resolution(resolution)
    if intr.dim() == 2:
        intr = intr.expand(cam2world.shape[0], 3, 3)
    rot, t = cam2world[:, :3, :3], cam2world[:, :3, 3]
    p_cam = (points - t[:, None]) @ rot  # world -> camera: R^T (p - t)
    z = p_cam[..., 2]
    u = (p_cam[..., 0] / z) * intr[:, 0, 0, None] + intr[:, 0, 2, None]
    v = (p_cam[..., 1] / z) * intr[:, 1, 1, None] + intr[:, 1, 2, None]
    return torch.stack([u * W, v * H], dim=-1), z
