"""Training losses (DESIGN.md §1): L1, VGG-19 perceptual, neutral-expression, density smoothness, TV, and the
logistic (softplus) GAN losses with the R1 penalty.

Images are [B, 3, H, W] in [-1, 1] (the model's range). Each function returns a scalar (0-dim) tensor; the
weights of the table in DESIGN.md §1 are applied by the caller, except the neutral-expression loss's inner
L1 / perceptual weights (1.0 / 3.0).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..ops import PLANE_AXES_GOHA, triplane_sample
from .vgg import IMAGENET_MEAN, IMAGENET_STD, VGG19_LAYER_INDEX, VGG19_LAYER_NAMES, load_vgg19_features

__all__ = [
    "DEFAULT_LAYER_WEIGHTS",
    "PerceptualLoss",
    "l1_loss",
    "tv_loss",
    "density_smoothness",
    "neutral_expression_loss",
    "g_nonsaturating_loss",
    "d_logistic_loss",
    "r1_penalty",
]

# GFPGAN's / basicsr's perceptual_opt layer weights (the conv outputs, before their ReLU).
DEFAULT_LAYER_WEIGHTS = {"conv1_2": 0.1, "conv2_2": 0.1, "conv3_4": 1.0, "conv4_4": 1.0, "conv5_4": 1.0}


def _check_float(name: str, t, expected: str, ndim: int | None = None) -> None:
    if not isinstance(t, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor {expected}, got {type(t).__name__}")
    if ndim is not None and t.dim() != ndim:
        raise ValueError(f"{name} must be {expected}, got {list(t.shape)}")
    if not t.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got {t.dtype}")


def _check_pair(a_name: str, a: Tensor, b_name: str, b: Tensor) -> None:
    if a.shape != b.shape:
        raise ValueError(f"{b_name} must have the shape of {a_name} ({list(a.shape)}), got {list(b.shape)}")
    if a.device != b.device:
        raise ValueError(f"{b_name} must be on the device of {a_name} ({a.device}), got {b.device}")


def _graph_zero(x: Tensor) -> Tensor:
    """A 0-dim zero in x's dtype and device, attached to x's graph when x requires grad (its gradient is 0,
    and unlike ``x.sum() * 0`` it stays 0 when x holds inf or NaN)."""
    return x.reshape(-1)[:0].sum()


def l1_loss(pred: Tensor, target: Tensor) -> Tensor:
    """mean |pred - target| over all elements; pred and target have the same shape (no broadcasting).

    Args:
        pred: [...] floating tensor.
        target: [...] same shape and device.

    Returns:
        [] scalar.
    """
    _check_float("pred", pred, "[...]")
    _check_float("target", target, "[...]")
    _check_pair("pred", pred, "target", target)
    return (pred - target).abs().mean()


def tv_loss(x: Tensor) -> Tensor:
    """Anisotropic total variation of a stack of 2D maps (e.g. tri-planes [B, 3, C, H, W]), the paper's L_tv:
    mean |x[..., i+1, j] - x[..., i, j]| + mean |x[..., i, j+1] - x[..., i, j]|. A size-1 axis adds 0.

    Args:
        x: [..., H, W] floating tensor, at least 2-D.

    Returns:
        [] scalar.
    """
    _check_float("x", x, "[..., H, W]")
    if x.dim() < 2:
        raise ValueError(f"x must be [..., H, W] (at least 2-D), got {list(x.shape)}")
    dh = (x[..., 1:, :] - x[..., :-1, :]).abs()
    dw = (x[..., :, 1:] - x[..., :, :-1]).abs()
    zero = _graph_zero(x)
    return (dh.mean() if dh.numel() else zero) + (dw.mean() if dw.numel() else zero)


class PerceptualLoss(nn.Module):
    """VGG-19 perceptual loss: sum over layers l of w_l * mean |φ_l(x) − φ_l(target)| (basicsr's
    ``PerceptualLoss`` with ``use_input_norm=True, range_norm=True, criterion='l1'``, style term off).

    Inputs in [-1, 1] are mapped to [0, 1], then ImageNet-normalised (mean 0.485, 0.456, 0.406; std 0.229,
    0.224, 0.225). Layer names follow basicsr: ``conv5_4`` is the convolution's output *before* its ReLU
    (basicsr clones the output of the named module, and ESRGAN found pre-activation features better),
    ``relu5_4`` the activation after it. The defaults are GFPGAN's (conv1_2 0.1, conv2_2 0.1, conv3_4 1,
    conv4_4 1, conv5_4 1), hence pre-ReLU features. The target's features are computed without gradient
    (the target is ground truth, as in basicsr, which detaches it).

    The VGG is frozen: its parameters have requires_grad False and it stays in eval mode (``train()`` does not
    change that); gradients flow to the prediction only.

    Without `weights_path` the term is disabled: one ``UserWarning`` at construction, ``enabled`` is False and
    :meth:`forward` returns a zero (in the input's dtype, on its device, attached to its graph). Random VGG
    weights are never used.

    Args:
        weights_path: local torchvision VGG-19 state dict (``vgg19-dcbb9e9d.pth``), see
            :func:`oneshot.train.vgg.load_vgg19_features`; None disables the term.
        layer_weights: {layer name: weight}, names from ``VGG19_LAYER_NAMES`` (conv1_1 ... relu5_4).
    """

    def __init__(self, weights_path: str | os.PathLike | None = None,
                 layer_weights: Mapping[str, float] | None = None):
        super().__init__()
        layer_weights = dict(DEFAULT_LAYER_WEIGHTS if layer_weights is None else layer_weights)
        if not layer_weights:
            raise ValueError("layer_weights must name at least one VGG-19 layer, got {}")
        unknown = [k for k in layer_weights if k not in VGG19_LAYER_INDEX or k.startswith("pool")]
        if unknown:
            raise ValueError(f"layer_weights keys must be VGG-19 conv/relu names (conv1_1 ... relu5_4), got {unknown}")
        for k, w in layer_weights.items():
            if not isinstance(w, (int, float)) or isinstance(w, bool):
                raise TypeError(f"layer_weights[{k!r}] must be a number, got {type(w).__name__}")
        self.layer_weights = {k: float(w) for k, w in layer_weights.items()}
        # The input must survive the pools before the deepest layer.
        deepest = max(VGG19_LAYER_INDEX[k] for k in self.layer_weights)
        self.min_size = 2 ** sum(1 for n in VGG19_LAYER_NAMES[:deepest] if n.startswith("pool"))
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        if weights_path is None:
            self.vgg = None
            warnings.warn("PerceptualLoss: no VGG-19 weights given (weights_path=None), so the perceptual term is "
                          "disabled and returns 0; pass a local torchvision vgg19-dcbb9e9d.pth to enable it",
                          UserWarning, stacklevel=2)
        else:
            self.vgg = load_vgg19_features(weights_path)
            self.vgg.requires_grad_(False)
            self.vgg.eval()

    @property
    def enabled(self) -> bool:
        """True when VGG weights were loaded."""
        return self.vgg is not None

    def train(self, mode: bool = True) -> "PerceptualLoss":
        super().train(mode)
        if self.vgg is not None:
            self.vgg.eval()
        return self

    def _normalise(self, x: Tensor) -> Tensor:
        return ((x + 1) * 0.5 - self.mean.to(x)) / self.std.to(x)

    def forward(self, x: Tensor, target: Tensor) -> Tensor:  # x, target: [B, 3, H, W] in [-1, 1]
        """Args:
            x: [B, 3, H, W] prediction in [-1, 1] (floating), H and W at least ``min_size`` (16 for conv5_4).
            target: [B, 3, H, W] ground truth in [-1, 1], same shape and device.

        Returns:
            [] scalar (0 when disabled).
        """
        _check_float("x", x, "[B, 3, H, W]", 4)
        _check_float("target", target, "[B, 3, H, W]", 4)
        if x.shape[1] != 3:
            raise ValueError(f"x must be [B, 3, H, W], got {list(x.shape)}")
        _check_pair("x", x, "target", target)
        if self.vgg is None:
            return _graph_zero(x)
        if min(x.shape[-2:]) < self.min_size:
            raise ValueError(f"x must be at least {self.min_size}x{self.min_size} for layers "
                             f"{sorted(self.layer_weights)}, got {list(x.shape)}")
        names = list(self.layer_weights)
        fx = self.vgg(self._normalise(x), names)
        with torch.no_grad():
            ft = self.vgg(self._normalise(target.to(x.dtype)), names)
        loss = _graph_zero(x)
        for k, w in self.layer_weights.items():
            loss = loss + w * F.l1_loss(fx[k], ft[k])
        return loss


def neutral_expression_loss(render_rgb: Tensor, target_rgb: Tensor, mask: Tensor,
                            perceptual: PerceptualLoss | None, *, l1_weight: float = 1.0,
                            perceptual_weight: float = 3.0) -> Tensor:
    """The neutral-expression loss ||Î_neu·M − I_M·M||_1 + 3·||φ(Î_neu·M) − φ(I_M·M)|| (DESIGN.md §1).

    The render is resized to the mask's size (bilinear, align_corners=False, antialiased when shrinking), then
    both images are multiplied by the mask (outside the face both are 0) and compared with :func:`l1_loss`
    and `perceptual`.

    Args:
        render_rgb: [B, 3, h, w] T_c rendered at the source camera, RGB in [-1, 1] (``out["neutral"]``'s
            features[:, :3]).
        target_rgb: [B, 3, n, n'] the 3DMM's neutral render in [-1, 1] (``out["neutral_3dmm_image"]``).
        mask: [B, 1, n, n'] its face mask in [0, 1] (``out["neutral_3dmm_mask"]``).
        perceptual: a :class:`PerceptualLoss`, or None for the L1 part only.
        l1_weight: weight of the L1 part (released code: 1.0).
        perceptual_weight: weight of the perceptual part (released code: 3.0).

    Returns:
        [] scalar.
    """
    _check_float("render_rgb", render_rgb, "[B, 3, h, w]", 4)
    _check_float("target_rgb", target_rgb, "[B, 3, n, n]", 4)
    _check_float("mask", mask, "[B, 1, n, n]", 4)
    if render_rgb.shape[1] != 3:
        raise ValueError(f"render_rgb must be [B, 3, h, w], got {list(render_rgb.shape)}")
    if target_rgb.shape[1] != 3 or target_rgb.shape[0] != render_rgb.shape[0]:
        raise ValueError(f"target_rgb must be [B, 3, n, n] with B = {render_rgb.shape[0]} (render_rgb's), "
                         f"got {list(target_rgb.shape)}")
    expected_mask = [target_rgb.shape[0], 1, *target_rgb.shape[2:]]
    if list(mask.shape) != expected_mask:
        raise ValueError(f"mask must be {expected_mask} (target_rgb's batch and size), got {list(mask.shape)}")
    for name, t in (("target_rgb", target_rgb), ("mask", mask)):
        if t.device != render_rgb.device:
            raise ValueError(f"{name} must be on the device of render_rgb ({render_rgb.device}), got {t.device}")
    size = tuple(mask.shape[-2:])
    render = render_rgb
    if tuple(render.shape[-2:]) != size:
        shrink = render.shape[-2] > size[0] or render.shape[-1] > size[1]
        render = F.interpolate(render, size=size, mode="bilinear", align_corners=False, antialias=shrink)
    mask = mask.to(render.dtype)
    pred, target = render * mask, target_rgb.to(render.dtype) * mask
    loss = l1_weight * l1_loss(pred, target)
    if perceptual is not None and perceptual_weight != 0:
        loss = loss + perceptual_weight * perceptual(pred, target)
    return loss


def density_smoothness(decoder: nn.Module, planes: Tensor, n_points: int, sigma: float = 0.004,
                       generator: torch.Generator | None = None, *, box_warp: float = 1.0,
                       axes=PLANE_AXES_GOHA, backend: str | None = None) -> Tensor:
    """EG3D's / GOHA's density regulariser: mean |σ(x) − σ(x + ε)| (L1 on the raw densities).

    x ~ U([-box_warp/2, box_warp/2]^3) (the tri-plane box; EG3D draws from [-1, 1]^3, which with box_warp 1
    puts most points outside the box), ε ~ N(0, sigma²). Random numbers are drawn in this order, with
    `generator`: ``x = (torch.rand(B, n_points, 3) - 0.5) * box_warp``, then ``ε = torch.randn(B, n_points, 3)
    * sigma``. Both point sets are sampled in one ``triplane_sample`` call (mean over planes, as the
    renderer does) and decoded by `decoder`.

    Args:
        decoder: maps features [..., C] to (sigma [...], features), e.g. ``model.decoder``.
        planes: [B, 3, C, H, W] tri-planes.
        n_points: points per batch element (≥ 1; EG3D uses 1000).
        sigma: standard deviation of the jitter (0.004).
        generator: a torch.Generator on planes' device, or None for the global one.
        box_warp: as in :func:`oneshot.ops.triplane_sample`.
        axes (tuple[tuple[int, int], ...]): as in :func:`oneshot.ops.triplane_sample`.
        backend: as in :func:`oneshot.ops.triplane_sample`.

    Returns:
        [] scalar.
    """
    _check_float("planes", planes, "[B, 3, C, H, W]", 5)
    if planes.shape[1] != 3:
        raise ValueError(f"planes must be [B, 3, C, H, W], got {list(planes.shape)}")
    if not isinstance(n_points, int) or isinstance(n_points, bool) or n_points < 1:
        raise ValueError(f"n_points must be a positive int, got {n_points!r}")
    if not sigma >= 0:
        raise ValueError(f"sigma must be >= 0, got {sigma!r}")
    B = planes.shape[0]
    geom_dtype = torch.float32 if planes.dtype in (torch.float16, torch.bfloat16) else planes.dtype
    kw = dict(device=planes.device, dtype=geom_dtype, generator=generator)
    x = (torch.rand(B, n_points, 3, **kw) - 0.5) * box_warp
    eps = torch.randn(B, n_points, 3, **kw) * sigma
    feats = triplane_sample(planes, torch.cat([x, x + eps], dim=1), box_warp=box_warp, axes=axes,
                            backend=backend)
    density, _ = decoder(feats)
    if tuple(density.shape) != (B, 2 * n_points):
        raise ValueError(f"decoder must return sigma [B, M] = {[B, 2 * n_points]}, got {list(density.shape)}")
    return (density[:, :n_points] - density[:, n_points:]).abs().mean()


def g_nonsaturating_loss(fake_logits: Tensor) -> Tensor:
    """Generator's non-saturating logistic loss: mean softplus(−D(fake)).

    Args:
        fake_logits: [B, 1] (or any shape) discriminator outputs on generated images.

    Returns:
        [] scalar.
    """
    _check_float("fake_logits", fake_logits, "[B, 1]")
    return F.softplus(-fake_logits).mean()


def d_logistic_loss(real_logits: Tensor, fake_logits: Tensor) -> Tensor:
    """Discriminator's logistic loss: mean softplus(−D(real)) + mean softplus(D(fake)).

    Args:
        real_logits: [B, 1] outputs on real images.
        fake_logits: [B', 1] outputs on generated images (detached by the caller).

    Returns:
        [] scalar.
    """
    _check_float("real_logits", real_logits, "[B, 1]")
    _check_float("fake_logits", fake_logits, "[B, 1]")
    return F.softplus(-real_logits).mean() + F.softplus(fake_logits).mean()


def r1_penalty(real_logits: Tensor, real_images: Tensor | Sequence[Tensor]) -> Tensor:
    """R1: mean over the batch of ||∇_x D(x)||² at real inputs (the caller scales by γ/2 and the lazy interval).

    The gradient is taken with ``create_graph=True`` so the penalty can be back-propagated to D.

    Args:
        real_logits: [B, 1] D's outputs on the real inputs (computed from `real_images`).
        real_images: [B, ...] the real input D saw, with requires_grad set before the forward; or a sequence
            of such tensors (e.g. high-res and low-res images fed through :func:`dual_input`), whose squared
            gradient norms are added per sample (EG3D's dual discriminator R1).

    Returns:
        [] scalar.
    """
    _check_float("real_logits", real_logits, "[B, 1]")
    inputs = [real_images] if isinstance(real_images, Tensor) else list(real_images)
    if not inputs:
        raise ValueError("real_images must be a tensor or a non-empty sequence of tensors, got an empty sequence")
    B = real_logits.shape[0] if real_logits.dim() else 1
    for i, t in enumerate(inputs):
        name = "real_images" if isinstance(real_images, Tensor) else f"real_images[{i}]"
        _check_float(name, t, "[B, ...]")
        if not t.requires_grad:
            raise ValueError(f"{name} must require grad (call requires_grad_() before D's forward), got "
                             f"requires_grad=False")
        if t.dim() == 0 or t.shape[0] != B:
            raise ValueError(f"{name} must be [B, ...] with B = {B} (real_logits' batch), got {list(t.shape)}")
    if not real_logits.requires_grad:
        raise ValueError("real_logits must be computed from real_images with autograd on, got a tensor without "
                         "grad_fn")
    grads = torch.autograd.grad(real_logits.sum(), inputs, create_graph=True)
    per_sample = sum(g.square().reshape(g.shape[0], -1).sum(1) for g in grads)
    return per_sample.mean()
