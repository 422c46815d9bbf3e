"""Synthetic training data from a morphable model: random identities, expressions, albedo, lighting and
camera poses, rendered with an alpha matte and eye/mouth/face masks, grouped by identity (the analogue of the
paper's video-frame and multi-view pairs). Deterministic for a seed."""

from __future__ import annotations

import math

import torch

from .. import cameras
from .._progress import progress_bar
from ..face3d import Coeffs, MorphableModel, load_model, render
from .format import SampleWriter

__all__ = ["synthesize", "head_pivot", "YAW_RANGE", "PITCH_RANGE", "SYNTH_PIVOT"]

#: The point synthetic cameras look at, from EG3D's radius 2.7: the origin of the canonical face frame, where a
#: real crop's centre is too (oneshot.face3d.align: a frontal face at Deep3DFaceRecon's distance 10 = 2.7 world
#: units, its five points at CANONICAL_FIVE). So a model trained on `data synth` sees real crops of the same
#: framing: pivot, focal length and face scale.
SYNTH_PIVOT = (0.0, 0.0, 0.0)

YAW_RANGE = math.radians(45.0)
PITCH_RANGE = math.radians(20.0)


def _sample_coeffs(model: MorphableModel, identity: torch.Tensor, albedo: torch.Tensor, g: torch.Generator) -> Coeffs:
    c = Coeffs.zeros(model, 1)
    c.identity[0] = identity
    c.albedo[0] = albedo
    if model.num_expression:
        on = torch.rand(model.num_expression, generator=g) < 0.4
        c.expression[0] = torch.rand(model.num_expression, generator=g) * on
    white = torch.randn(9, generator=g) * 0.07  # mostly white light from a random direction
    white[0] = float(torch.rand(1, generator=g)) * 0.3 - 0.1  # brightness
    tint = torch.randn(3, 1, generator=g) * 0.03
    c.lighting[0] = (white[None] + tint * (torch.arange(9) == 0)).reshape(27)
    return c


def head_pivot(model: MorphableModel) -> tuple[float, float, float]:
    """The centre of the model's mean-shape bounding box: orbit around it (``cameras.orbit_labels(...,
    pivot=head_pivot(model))``) to keep a whole synthetic head in the frame of a novel-view video. (Synthetic
    training samples look at the canonical origin instead, as real crops do: :data:`SYNTH_PIVOT`.)"""
    return tuple(float(x) for x in (model.mean.amax(0) + model.mean.amin(0)) / 2)


def synthesize(out, n: int, *, model: MorphableModel | None = None, model_path=None, resolution: int = 512,
               seed: int = 0, per_identity: int = 4, progress: bool = True) -> int:
    """Write `n` samples to directory `out` (:mod:`oneshot.data.format`); returns the number written.

    Identities (identity ~ N(0, 0.8^2) per mode, albedo ~ N(0, 0.5^2)) get `per_identity` samples each, with
    random expressions (each mode on with probability 0.4, weight ~ U(0, 1)), mostly white SH lighting, a yaw
    in +-45 and a pitch in +-20 degrees on EG3D's orbit (radius 2.7) around :data:`SYNTH_PIVOT` (the crops'
    framing), and a random uniform background.
    """
    if n < 0 or per_identity < 1 or resolution < 1:
        raise ValueError(f"need n >= 0, per_identity >= 1 and resolution >= 1, got {n}, {per_identity}, {resolution}")
    model = model if model is not None else load_model(model_path)
    # The orbit's centre: the canonical origin, as in real crops (the labels record the actual cameras).
    pivot = SYNTH_PIVOT
    g = torch.Generator().manual_seed(int(seed))
    written = 0
    with SampleWriter(out, resolution, model.fingerprint) as writer, \
            progress_bar(n, desc="synth", unit="sample", enabled=progress) as bar:
        while written < n:
            identity_id = f"id{written // per_identity:05d}"
            ident = torch.randn(model.num_identity, generator=g) * 0.8
            alb = torch.randn(model.num_albedo, generator=g) * 0.5
            for _ in range(min(per_identity, n - written)):
                c = _sample_coeffs(model, ident, alb, g)
                yaw = float(torch.rand(1, generator=g) * 2 - 1) * YAW_RANGE
                pitch = float(torch.rand(1, generator=g) * 2 - 1) * PITCH_RANGE
                cam = cameras.camera_label(cameras.look_at(yaw, pitch, pivot=pivot), cameras.intrinsics())
                c = c.with_camera(cam)  # the pose in Deep3DFaceRecon's terms, as a regressor would give it
                verts = model.vertices(c.identity, c.expression)
                albedo = model.albedo(c.albedo) if model.has_albedo else None
                r = render(model, verts, cam, resolution, albedo=albedo, gamma=c.lighting)
                bg = torch.rand(3, generator=g) * 0.6 + 0.2
                img = r.image[0] + (1 - r.mask[0]) * bg[:, None, None]
                to8 = lambda t: (t.clamp(0, 1) * 255 + 0.5).to(torch.uint8).numpy()  # noqa: E731
                masks = torch.cat([r.regions["eyes"][0], r.regions["mouth"][0], r.regions["face"][0]])
                writer.write(f"{written:06d}", identity_id, to8(img.permute(1, 2, 0)), to8(r.mask[0, 0]),
                             to8(masks.permute(1, 2, 0)), cam[0], c)
                written += 1
                bar.update(1)
    return written
