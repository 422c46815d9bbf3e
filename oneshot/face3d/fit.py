"""Coefficients and cameras from images without Deep3DFaceRecon's regressor: fit pose, identity and expression
of a morphable model to 2D landmarks by optimisation; and the whole preprocessing of a portrait
(:func:`estimate_face`): the avatar's crop, its camera label and the coefficients, by the regressor when one is
given, else by landmark fitting."""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from .. import cameras
from ..ops import check_resolution
from .align import align_face, five_points, similarity_from_landmarks
from .coeffs import Coeffs
from .frame import BFM_WORLD_SCALE, CAMERA_DISTANCE, RECON_FOCAL
from .model import MorphableModel
from .pose import euler_rotation, pose_to_camera

__all__ = ["project_landmarks", "fit_landmarks", "FitResult", "estimate_face", "FaceEstimate",
           "LANDMARK_WEIGHTS", "POSE_WEIGHT"]


def _landmark_weights() -> Tensor:
    # Deep3DFaceRecon's landmark loss weights: 20 on the nose (27-35) and the inner lips (60-67), 1 elsewhere.
    w = torch.ones(68, dtype=torch.float64)
    w[27:36] = 20
    w[60:68] = 20
    return w


LANDMARK_WEIGHTS = _landmark_weights()


class FitResult(NamedTuple):
    coeffs: Coeffs  # the fitted pose, identity and expression (albedo and lighting stay zero)
    camera: Tensor  # [B, 25] the camera label of the image the landmarks are in
    error: Tensor  # [B] root-mean-square landmark distance after the fit, in pixels
    mean_error: Tensor  # [B] mean landmark distance, pixels
    max_error: Tensor  # [B] largest landmark distance, pixels


#: Default strength of the pose prior, a zero-mean Gaussian on the pitch (radians; yaw and roll are well
#: determined by the landmarks): 10 degrees of pitch cost as much as 0.17 px RMS of landmark error at the fit's
#: 224-pixel scale. It leans a loosely constrained pitch towards frontal (on the two portraits with ICT-FaceKit,
#: dropping the jaw points moves the pitch 12-17 degrees without it) at a small cost on pitched heads; 0 turns
#: it off.
POSE_WEIGHT = 1.0


def _camera_parts(rotation: Tensor, translation: Tensor, focal: float) -> tuple[Tensor, Tensor]:
    label = pose_to_camera(rotation, translation, focal=focal)
    return label[:, :16].reshape(-1, 4, 4), label[:, 16:].reshape(-1, 3, 3)


def project_landmarks(model: MorphableModel, coeffs: Coeffs, resolution, *, focal: float = cameras.FOCAL) -> Tensor:
    """Pixel positions [B, 68, 2] of `model`'s landmarks under `coeffs` (shape and pose) in an image of
    `resolution` whose normalised focal length is `focal`."""
    coeffs.check(model)
    verts = model.vertices(coeffs.identity, coeffs.expression)[:, model.landmarks]
    c2w, intr = _camera_parts(coeffs.rotation.to(verts), coeffs.translation.to(verts), focal)
    return cameras.project(verts, c2w, intr, resolution)[0]


def fit_landmarks(model: MorphableModel, landmarks: Tensor, resolution, *, focal: float = cameras.FOCAL,
                  weights: Tensor | None = None, fit_identity: bool = True, fit_expression: bool = True,
                  identity_weight: float = 0.05, expression_weight: float = 0.05, pose_weight: float = POSE_WEIGHT,
                  bounded: bool = True, iterations: int = 50) -> FitResult:
    """Fit pose (rotation, translation), identity and expression of `model` to iBUG-68 landmarks [B, 68, 2]
    (pixels of an image of `resolution` with normalised focal length `focal`; x right, y down).

    Minimises the weighted mean squared landmark distance (measured at a 224-pixel scale, Deep3DFaceRecon's
    weights by default) plus ``identity_weight * |identity|^2 + expression_weight * |expression|^2`` by
    Levenberg-Marquardt in float64, per face, from the pose of the similarity that aligns the mean shape.
    ``pose_weight * pitch^2`` (radians) is a weak prior towards a level head. With `bounded` (default),
    identity and expression stay in the model's ``identity_range`` / ``expression_range`` (e.g. blendshape
    weights in [0, 1]; a projected, active-set step); without, or for a model without ranges, only the L2 priors
    hold them. Returns coefficients whose rotation/translation convert to the image's camera label
    (:func:`pose_to_camera`) and the remaining landmark distances (RMS, mean, max) in pixels of the image.
    """
    lm = landmarks[None] if isinstance(landmarks, Tensor) and landmarks.dim() == 2 else landmarks
    if not isinstance(lm, Tensor) or lm.dim() != 3 or lm.shape[1:] != (68, 2) or not lm.is_floating_point():
        raise ValueError(f"landmarks must be a float tensor [B, 68, 2] (iBUG order, pixels), got "
                         f"{list(lm.shape) if isinstance(lm, Tensor) else type(lm).__name__}")
    if not torch.isfinite(lm).all():
        raise ValueError("landmarks must be finite")
    H, W = check_resolution(resolution)
    if H != W:
        raise ValueError(f"fit_landmarks needs a square image (one normalised focal length), got {H} x {W}")
    if not iterations >= 1:
        raise ValueError(f"iterations must be >= 1, got {iterations!r}")
    for nm, v in (("identity_weight", identity_weight), ("expression_weight", expression_weight),
                  ("pose_weight", pose_weight)):
        if not float(v) >= 0:
            raise ValueError(f"{nm} must be >= 0, got {v!r}")
    B = lm.shape[0]
    target = lm.detach().double().cpu()
    w = (LANDMARK_WEIGHTS if weights is None else torch.as_tensor(weights, dtype=torch.float64)).cpu()
    if w.shape != (68,) or (w < 0).any() or w.sum() <= 0:
        raise ValueError(f"weights must be 68 non-negative numbers (not all zero), got shape {list(w.shape)}")
    sqrt_w = (w / w.sum()).sqrt()[:, None] * (224.0 / W)  # residuals at a 224-pixel scale
    m = _LandmarkModel(model)
    k_id = m.num_identity if fit_identity else 0
    k_exp = m.num_expression if fit_expression else 0
    f_px = focal * W

    # Initial pose from the similarity that aligns the mean shape's landmarks (no rotation): its scale gives the
    # distance, its translation the offset.
    scale, t2d = similarity_from_landmarks(five_points(target), five_points((m.mean / BFM_WORLD_SCALE)[None])[0], H)
    depth = f_px / scale
    tx = (t2d[:, 0] - W / 2) / f_px * depth
    ty = -(t2d[:, 1] - H / 2) / f_px * depth
    params = torch.cat([torch.zeros(B, 3, dtype=torch.float64), torch.stack([tx, ty, CAMERA_DISTANCE - depth], -1),
                        torch.zeros(B, k_id + k_exp, dtype=torch.float64)], 1)
    # the pose prior holds the pitch only: yaw and roll are well determined by any landmark set
    reg = torch.cat([torch.tensor([float(pose_weight), 0.0, 0.0], dtype=torch.float64), torch.zeros(3, dtype=torch.float64),
                     torch.full((k_id,), float(identity_weight)).double(),
                     torch.full((k_exp,), float(expression_weight)).double()]).sqrt()
    lo = torch.full((params.shape[1],), -torch.inf, dtype=torch.float64)
    hi = torch.full((params.shape[1],), torch.inf, dtype=torch.float64)
    if bounded:
        for rng, sl in ((model.identity_range, slice(6, 6 + k_id)), (model.expression_range, slice(6 + k_id, None))):
            if rng is not None:
                lo[sl], hi[sl] = rng
    params = params.clamp(lo, hi)

    def residuals(p: Tensor, tgt: Tensor) -> Tensor:  # one face: params [P], target [68, 2] -> [136 + P]
        v = m.mean + torch.einsum("k,kvc->vc", p[6:6 + k_id], m.id_basis[:k_id]) \
            + torch.einsum("k,kvc->vc", p[6 + k_id:], m.exp_basis[:k_exp])
        # Deep3DFaceRecon's camera: the head posed by (R, t) in its units, seen from (0, 0, 10) looking down -z.
        q = (v / BFM_WORLD_SCALE) @ euler_rotation(p[None, :3])[0].T + p[3:6]
        depth = CAMERA_DISTANCE - q[:, 2]
        uv = torch.stack([f_px * q[:, 0] / depth + W / 2, -f_px * q[:, 1] / depth + H / 2], -1)
        return torch.cat([((uv - tgt) * sqrt_w).reshape(-1), reg * p])

    jac = torch.func.vmap(torch.func.jacrev(residuals))  # (jacfwd pulls a deprecated torch.jit path)
    res = torch.func.vmap(residuals)
    # Levenberg-Marquardt, per face (the faces are independent problems).
    damping = torch.full((B,), 1e-3, dtype=torch.float64)
    r = res(params, target)
    cost = (r ** 2).sum(-1)
    eye = torch.eye(params.shape[1], dtype=torch.float64)
    for _ in range(int(iterations)):
        J = jac(params, target)  # [B, R, P]
        g = (J.transpose(1, 2) @ r[..., None])[..., 0]
        # Active set: a coefficient on its bound whose gradient pushes it outwards stays there this step.
        free = ~(((params <= lo) & (g > 0)) | ((params >= hi) & (g < 0)))
        J = J * free[:, None, :]
        g = g * free
        JtJ = J.transpose(1, 2) @ J
        A = JtJ + damping[:, None, None] * (JtJ.diagonal(dim1=1, dim2=2)[:, :, None] * eye + 1e-9 * eye) \
            + torch.diag_embed((~free).double())
        step = torch.linalg.solve(A, -g)
        trial = (params + step).clamp(lo, hi)
        step = trial - params
        r_new = res(trial, target)
        cost_new = (r_new ** 2).sum(-1)
        better = cost_new < cost
        params = torch.where(better[:, None], trial, params)
        r = torch.where(better[:, None], r_new, r)
        converged = (cost - cost_new).abs() <= 1e-12 * cost.clamp(min=1e-30)
        cost = torch.where(better, cost_new, cost)
        damping = torch.where(better, damping / 3, damping * 4).clamp(1e-9, 1e9)
        if bool((converged | (step.abs().amax(-1) < 1e-10)).all()):
            break
    rotation, translation = params[:, :3], params[:, 3:6]
    identity = torch.zeros(B, m.num_identity, dtype=torch.float64)
    expression = torch.zeros(B, m.num_expression, dtype=torch.float64)
    identity[:, :k_id], expression[:, :k_exp] = params[:, 6:6 + k_id], params[:, 6 + k_id:]
    uv_err = r[:, :136].reshape(B, 68, 2) / sqrt_w.clamp(min=1e-30) * (sqrt_w > 0)
    dist = uv_err.norm(dim=-1)  # [B, 68] (zero-weight points: not measured)
    error = (dist ** 2).mean(-1).sqrt()
    dev, dt = lm.device, lm.dtype
    c = Coeffs.zeros(model, B, device=dev, dtype=dt)
    c.identity, c.expression = identity.detach().to(dev, dt), expression.detach().to(dev, dt)
    c.rotation, c.translation = rotation.detach().to(dev, dt), translation.detach().to(dev, dt)
    return FitResult(c, pose_to_camera(c.rotation, c.translation, focal=focal), error.to(dev, dt),
                     dist.mean(-1).to(dev, dt), dist.amax(-1).to(dev, dt))


class _LandmarkModel:
    """The 68 landmark vertices of a morphable model, in float64 on the CPU (fitting runs there)."""

    def __init__(self, model: MorphableModel):
        lm = model.landmarks.cpu()
        self.mean = model.mean.detach().double().cpu()[lm]
        self.id_basis = model.id_basis.detach().double().cpu()[:, lm]
        self.exp_basis = model.exp_basis.detach().double().cpu()[:, lm]
        self.num_identity, self.num_expression = model.num_identity, model.num_expression

    def vertices(self, identity: Tensor, expression: Tensor) -> Tensor:
        """[B, 68, 3] landmark positions."""
        return (self.mean.expand(identity.shape[0], -1, -1)
                + torch.einsum("bk,kvc->bvc", identity, self.id_basis)
                + torch.einsum("bk,kvc->bvc", expression, self.exp_basis))


class FaceEstimate(NamedTuple):
    image: Tensor  # [B, C, size, size] the avatar's crop
    camera: Tensor  # [B, 25] its camera label (focal oneshot.cameras.FOCAL)
    coeffs: Coeffs
    landmarks: Tensor  # [B, K, 2] the landmarks in the crop's pixels
    error: Tensor | None  # [B] landmark fit error (RMS) in crop pixels (None with the regressor)
    mean_error: Tensor | None = None  # [B] mean landmark distance in crop pixels
    max_error: Tensor | None = None  # [B] largest landmark distance in crop pixels


def estimate_face(image: Tensor, landmarks: Tensor, *, model: MorphableModel | None = None, recon=None,
                  size: int = 512, **fit_kwargs) -> FaceEstimate:
    """Preprocess portraits for the avatar: crop [B, 3, H, W] images (float, [0, 1]; or [B, 4, H, W], RGB and a
    matte cropped with it) around their landmarks [B, 68 or 5, 2] as EG3D frames a face (`size` x `size`, focal
    :data:`oneshot.cameras.FOCAL`) and estimate the coefficients and camera label.

    With `recon` (a :class:`~oneshot.face3d.ReconNet`, e.g. from ``load_recon_checkpoint``) the coefficients are
    regressed from Deep3DFaceRecon's 224 crop (`model` must then be the BFM they belong to); without it, the
    68 landmarks are fitted (:func:`fit_landmarks`, keyword arguments passed on).
    """
    from .builtin import builtin_model

    model = builtin_model() if model is None else model
    crop = align_face(image, landmarks, size=size, focal=cameras.FOCAL, padding_mode="border")
    if recon is not None:
        aligned = align_face(image[..., :3, :, :], landmarks, size=224, focal=RECON_FOCAL)  # RGB only
        with torch.no_grad():
            coeffs = recon.coeffs(aligned.image.clamp(0, 1), model)
        camera = pose_to_camera(coeffs.rotation, coeffs.translation, focal=cameras.FOCAL)
        return FaceEstimate(crop.image, camera, coeffs, crop.landmarks, None)
    if crop.landmarks.shape[1] != 68:
        raise ValueError("landmark fitting needs the 68 iBUG landmarks (5 points only align); pass recon= to "
                         "regress coefficients from 5-point crops")
    fit = fit_landmarks(model, crop.landmarks, size, focal=cameras.FOCAL, **fit_kwargs)
    return FaceEstimate(crop.image, fit.camera, fit.coeffs, crop.landmarks, fit.error, fit.mean_error, fit.max_error)
