"""Face alignment from landmarks: Deep3DFaceRecon's 5-point similarity crop (to 224 x 224 for its regressor) and
the same crop framed for the avatar (EG3D's focal length, any size).

Deep3DFaceRecon (``util/preprocess.py``) fits an affine camera from five 3D standard landmarks (eye centres,
nose tip, mouth corners) to the image's five points (``POS``), takes its scale s and translation t, rescales
the image by ``102 / s`` and cuts 224 x 224 around t. The 102 is 1015 px focal / camera distance 10: in the crop
a head at the canonical distance has its natural size, so the regressed translation stays near zero.

One framing for every face, whatever the morphable model: crops are aligned to :data:`CANONICAL_FIVE`, five
standard points in Deep3DFaceRecon's units (world / 0.27) that put a frontal face where EG3D's crops have it (the
built-in model's mean, made left-right symmetric: at 512 x 512 its eye centres land at y = 178 and its mouth
corners at y = 324, EG3D's 178 / 324). Deep3DFaceRecon's own ``similarity_Lm3D_all.mat`` is a licensed
download; pass it as ``standard=`` if you have it. The loaders place every model in this frame (BFM by
Deep3DFaceRecon's own recentring, the others by a similarity fit of their mean shape's five points), and
synthetic samples look at its origin from EG3D's radius, so real crops and synthetic samples agree in pivot,
focal length and face scale. Landmarks are in pixel coordinates of the input image: x to the
right, y down, pixel (i, j) centred at (j + 0.5, i + 0.5). Unlike Deep3DFaceRecon, which truncates the
rescaled size and crop box to integers, the crop here is the exact similarity (bilinear, after an integer box
filter when it shrinks by 2x or more),
and its matrix is returned so landmarks and cameras follow it.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from .frame import BFM_WORLD_SCALE, RECON_FOCAL, RECON_RESOLUTION
from .model import MorphableModel

__all__ = ["five_points", "standard_landmarks", "similarity_from_landmarks", "align_face", "Alignment",
           "RESCALE", "CANONICAL_FIVE", "canonical_similarity"]

#: Pixels per Deep3DFaceRecon unit (decimetre) in its 224 crop.
RESCALE = 102.0

#: The five standard points every crop is aligned to (Deep3DFaceRecon's units, x right, y up, z out of the face):
#: left and right eye centre (image order), nose tip, left and right mouth corner.
CANONICAL_FIVE = torch.tensor([[-0.276676, 0.353181, 0.107321], [0.276676, 0.353181, 0.107321],
                               [0.0, 0.033615, 0.398802], [-0.237587, -0.309914, 0.049543],
                               [0.237587, -0.309914, 0.049543]], dtype=torch.float64)


class Alignment(NamedTuple):
    image: Tensor  # [B, C, size, size] the crop
    landmarks: Tensor  # [B, K, 2] the input landmarks in crop pixels
    matrix: Tensor  # [B, 2, 3] crop = matrix @ (x, y, 1) of input pixel coordinates


def _landmarks(lm: Tensor, name: str = "landmarks") -> Tensor:
    if not isinstance(lm, Tensor):
        raise TypeError(f"{name} must be a tensor [B, 68 or 5, 2], got {type(lm).__name__}")
    if lm.dim() == 2:
        lm = lm[None]
    if lm.dim() != 3 or lm.shape[1] not in (5, 68) or lm.shape[2] not in (2, 3):
        raise ValueError(f"{name} must be [B, 68, 2] (iBUG) or [B, 5, 2] (eyes, nose, mouth corners), got "
                         f"{list(lm.shape)}")
    if not lm.is_floating_point() or not torch.isfinite(lm).all():
        raise ValueError(f"{name} must be finite floating-point coordinates")
    return lm


def five_points(landmarks: Tensor) -> Tensor:
    """[B, 5, D] (left eye, right eye, nose tip, left and right mouth corner, in image order) of iBUG-68
    landmarks [B, 68, D] as Deep3DFaceRecon takes them (each eye: the mean of its two corners); [B, 5, D] passes
    through."""
    lm = _landmarks(landmarks)
    if lm.shape[1] == 5:
        return lm
    return torch.stack([(lm[:, 36] + lm[:, 39]) / 2, (lm[:, 42] + lm[:, 45]) / 2, lm[:, 30], lm[:, 48], lm[:, 54]], 1)


def standard_landmarks(model: MorphableModel | None = None) -> Tensor:
    """The five 3D standard landmarks [5, 3] (Deep3DFaceRecon's units, y up) of `model`'s mean shape (the
    built-in model by default)."""
    if model is None:
        from .builtin import builtin_model

        model = builtin_model()
    lm = model.mean[model.landmarks].detach().double().cpu() / BFM_WORLD_SCALE
    return five_points(lm[None])[0]


def canonical_similarity(points: Tensor) -> tuple[float, Tensor]:
    """(scale, translation [3]) that best map 3D five points [5, 3] (Deep3DFaceRecon's units) onto
    :data:`CANONICAL_FIVE` by ``scale * p + translation`` (least squares, no rotation): how a loader places a
    morphable model in the canonical frame."""
    p = torch.as_tensor(points, dtype=torch.float64)
    if p.shape != (5, 3):
        raise ValueError(f"points must be [5, 3], got {list(p.shape)}")
    q = CANONICAL_FIVE
    pc, qc = p - p.mean(0), q - q.mean(0)
    scale = float((pc * qc).sum() / (pc * pc).sum())
    return scale, q.mean(0) - scale * p.mean(0)


def similarity_from_landmarks(points: Tensor, standard: Tensor, height: int) -> tuple[Tensor, Tensor]:
    """Deep3DFaceRecon's ``POS``: the affine camera that best maps the standard 3D points [5, 3] (or [68, 3])
    onto image points [B, 5, 2] (or 68; pixels, y down, in an image `height` tall), by least squares.

    Returns (scale [B], translation [B, 2]): pixels per standard unit and the image point (y down) where the
    standard frame's origin lands.
    """
    pts = _landmarks(points, "points").double()
    std = standard.detach().double().cpu().to(pts.device)
    if std.dim() != 2 or std.shape[1] != 3 or std.shape[0] != pts.shape[1]:
        raise ValueError(f"standard must be [{pts.shape[1]}, 3] (3D points matching the image points), got "
                         f"{list(std.shape)}")
    B, K = pts.shape[:2]
    x = pts[..., 0]
    y = height - pts[..., 1]  # y up, as the standard points
    ones = torch.ones(K, 1, dtype=torch.float64, device=pts.device)
    xh = torch.cat([std, ones], 1)  # [K, 4]
    pinv = torch.linalg.pinv(xh)  # [4, K]
    r1 = torch.einsum("ik,bk->bi", pinv, x)  # [B, 4]: s R1, s tx
    r2 = torch.einsum("ik,bk->bi", pinv, y)
    scale = (r1[:, :3].norm(dim=1) + r2[:, :3].norm(dim=1)) / 2
    if not (scale > 1e-6 * height).all():  # the points all in one place (a least-squares zero is ~1e-16, not 0)
        raise ValueError(f"landmarks are degenerate: the fitted scale is {float(scale.min()):.3g} px per unit")
    return scale, torch.stack([r1[:, 3], height - r2[:, 3]], -1)


def align_face(image: Tensor, landmarks: Tensor, *, size: int = RECON_RESOLUTION, focal: float = RECON_FOCAL,
               standard: Tensor | None = None, padding_mode: str = "zeros") -> Alignment:
    """Crop faces to `size` x `size` by Deep3DFaceRecon's 5-point alignment.

    image [B, C, H, W] (or [C, H, W]) float; landmarks [B, 68 or 5, 2] in its pixel coordinates. With the
    defaults this is Deep3DFaceRecon's 224 crop (the regressor's input: focal 1015 px, normalised
    :data:`~oneshot.face3d.pose.RECON_FOCAL`); with ``focal=oneshot.cameras.FOCAL`` it is the same view framed as
    EG3D frames its images, for which :func:`~oneshot.face3d.pose_to_camera` of the regressed pose is the
    camera label. standard: 3D standard landmarks [5, 3] or [68, 3] in Deep3DFaceRecon's units (default
    :data:`CANONICAL_FIVE`, the same for every morphable model).
    """
    if not isinstance(image, Tensor) or image.dim() not in (3, 4) or not image.is_floating_point():
        raise ValueError(f"image must be a float tensor [B, C, H, W] or [C, H, W], got "
                         f"{list(image.shape) if isinstance(image, Tensor) else type(image).__name__}")
    if image.dim() == 3:
        image = image[None]
    lm = _landmarks(landmarks).to(image.device)
    if lm.shape[0] != image.shape[0]:
        raise ValueError(f"landmarks must have the image's batch size {image.shape[0]}, got {lm.shape[0]}")
    if not (isinstance(size, int) and size >= 1):
        raise ValueError(f"size must be an int >= 1, got {size!r}")
    if not (focal > 0):
        raise ValueError(f"focal must be > 0, got {focal!r}")
    B, C, H, W = image.shape
    std = CANONICAL_FIVE if standard is None else torch.as_tensor(standard, dtype=torch.float64)
    if std.shape[0] == 68:
        std = five_points(std[None])[0]
    scale, t = similarity_from_landmarks(five_points(lm[..., :2]), std, H)
    # Input pixel -> crop pixel: (p - t) * k + size / 2, with k = (102 / s) x (size / crop side in 224-crop px).
    side = RECON_RESOLUTION * RECON_FOCAL / focal
    k = RESCALE / scale * (size / side)  # [B]
    matrix = torch.zeros(B, 2, 3, dtype=torch.float64, device=image.device)
    matrix[:, 0, 0] = matrix[:, 1, 1] = k
    matrix[:, :, 2] = size / 2 - t * k[:, None]
    crops = []
    for b in range(B):
        img, kb = image[b:b + 1], float(k[b])
        n = int(1.0 / kb) if kb < 1 else 1
        if n > 1:  # shrink by an integer box filter first (exact pixel-centre mapping), then resample the rest
            img = F.pad(img, (0, -W % n, 0, -H % n), mode="replicate")
            img = F.avg_pool2d(img, n)
        sx = sy = kb * n
        h_in, w_in = img.shape[-2:]
        # Output pixel centre c -> input coordinate (c - size/2) / k + t, in the (resized) image's units.
        c = (torch.arange(size, dtype=torch.float64, device=image.device) + 0.5 - size / 2)
        u = (c / sx + float(t[b, 0]) / n) * (2 / w_in) - 1
        v = (c / sy + float(t[b, 1]) / n) * (2 / h_in) - 1
        grid = torch.stack(torch.meshgrid(v, u, indexing="ij")[::-1], -1)[None].to(image.dtype)
        crops.append(F.grid_sample(img, grid, mode="bilinear", padding_mode=padding_mode, align_corners=False))
    out_lm = lm[..., :2].double() @ matrix[:, :, :2].transpose(1, 2) + matrix[:, None, :, 2]
    return Alignment(torch.cat(crops), out_lm.to(lm.dtype), matrix)
