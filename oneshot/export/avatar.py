"""A reconstructed avatar as a mesh: its tri-planes with an expression (neutral by default, or a driver's), the
iso-surface (:func:`oneshot.export.extract_mesh`), and optionally the driver's head pose."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor

from .. import cameras
from ..face3d import Coeffs, pose_to_camera
from .mesh import DEFAULT_LEVEL, DEFAULT_MIN_PIECE, AvatarMesh, extract_mesh
from .grid import DEFAULT_CHUNK

if TYPE_CHECKING:  # for the annotations only
    from ..models import Avatar, OneShotAvatar

__all__ = ["neutral_expression", "head_pose", "export_avatar"]


def neutral_expression(coeffs: Coeffs) -> Coeffs:
    """`coeffs` with every expression coefficient 0 (the identity, albedo, lighting and pose kept)."""
    if not isinstance(coeffs, Coeffs):
        raise TypeError(f"coeffs must be oneshot.face3d.Coeffs, got {type(coeffs).__name__}")
    return Coeffs(coeffs.identity, torch.zeros_like(coeffs.expression), coeffs.albedo, coeffs.lighting,
                  coeffs.rotation, coeffs.translation, model=coeffs.model)


def head_pose(camera: Tensor) -> Tensor:
    """The rigid transforms [B, 4, 4] (float64) that pose the world-frame head as camera labels [B, 25] (or [25])
    see it, in the frame of the zero-pose camera (at (0, 0, 2.7) on +z, looking at the face).

    The avatar's head stays fixed in the world and the camera moves; a posed mesh moves the head instead:
    ``P = C_0 C^-1`` (cam2world matrices, C_0 the camera of Deep3DFaceRecon's zero pose), i.e. the
    morphable model's ``R v + t`` in world units (:mod:`oneshot.face3d.pose`). The zero-pose camera gives the
    identity."""
    if not isinstance(camera, Tensor):
        raise TypeError(f"camera must be a tensor [B, 25] of camera labels, got {type(camera).__name__}")
    c2w, _ = cameras.split_label(camera)
    z = torch.zeros(1, 3, dtype=torch.float64)
    ref, _ = cameras.split_label(pose_to_camera(z, z))
    return ref.double().to(c2w.device) @ torch.linalg.inv(c2w.double())


@torch.no_grad()
def export_avatar(model: OneShotAvatar, avatar: Avatar, *, coeffs: Coeffs | None = None, camera: Tensor | None = None,
                  resolution: int = 256, level: float = DEFAULT_LEVEL, min_piece: float = DEFAULT_MIN_PIECE,
                  colors: bool = True, chunk: int = DEFAULT_CHUNK, max_bytes: int | None = None,
                  progress: bool = False, seed: int | None = None) -> AvatarMesh:
    """The mesh of a reconstructed avatar (:meth:`oneshot.models.OneShotAvatar.reconstruct`, batch 1).

    Args:
        model: the :class:`~oneshot.models.OneShotAvatar` that reconstructed `avatar`.
        avatar: an :class:`~oneshot.models.Avatar` of batch 1.
        coeffs: the expression to give it: :class:`~oneshot.face3d.Coeffs` of batch 1 (a driver's); None: a neutral
            expression (the source's coefficients with the expression zeroed).
        camera: [1, 25] a driver's camera label: the mesh takes that head pose (:func:`head_pose`); None: the
            world frame's canonical pose (the head as the tri-planes hold it).
        resolution: grid points per axis (as :func:`~oneshot.export.extract_mesh`, as are the next five).
        level: the iso level on the decoder's raw density.
        min_piece: the smallest piece kept, as a fraction of the largest's faces.
        colors: vertex colours from the decoder.
        chunk: grid points per pass.
        max_bytes: the memory the export may use (default: what is available).
        progress: a progress bar on stderr.
        seed: the lifting render's seed where the appearance planes depend on the expression (the
            "canonical+expression" lifting base; default: the avatar's).

    Returns:
        an :class:`~oneshot.export.AvatarMesh` in the world frame, its metadata saying the expression and pose.
    """
    if getattr(avatar, "batch_size", None) != 1:
        raise ValueError(f"export_avatar takes an avatar of batch 1, got batch {getattr(avatar, 'batch_size', None)}")
    neutral = coeffs is None
    coeffs = neutral_expression(avatar.source_coeffs) if neutral else coeffs
    if isinstance(coeffs, Coeffs) and coeffs.batch_size != 1:
        raise ValueError(f"coeffs must have batch size 1 (one expression per mesh), got {coeffs.batch_size}")
    pose = None
    if camera is not None:
        if not isinstance(camera, Tensor) or camera.shape not in ((1, 25), (25,)):
            got = list(camera.shape) if isinstance(camera, Tensor) else type(camera).__name__
            raise ValueError(f"camera must be one camera label [1, 25], got {got}")
        pose = head_pose(camera.reshape(1, 25))[0]
    planes = model.planes(avatar, coeffs, seed=seed)
    s = model.renderer.settings
    mesh = extract_mesh(planes, model.decoder, resolution=resolution, level=level, box_warp=s.box_warp, axes=s.axes,
                        min_piece=min_piece, colors=colors, chunk=chunk, backend=model.renderer.backend,
                        max_bytes=max_bytes, progress=progress)
    mesh.metadata["expression"] = "neutral" if neutral else [float(x) for x in coeffs.expression[0]]
    mesh.metadata["pose"] = "canonical (world frame)" if pose is None else pose.tolist()
    mesh.metadata["morphable_model"] = model.face_model.fingerprint
    mesh.metadata["preset"] = model.config.preset
    return mesh if pose is None else mesh.transformed(pose)
