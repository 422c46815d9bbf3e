"""EG3D's tri-plane decoder (``OSGDecoder`` on ``FullyConnectedLayer``), and the structural test that lets the
renderer run any EG3D-shaped decoder, the user's own instance included, through the fused ``render_triplane``.

EG3D's ``FullyConnectedLayer`` stores an unscaled weight [out, in] (initialised N(0, 1) / lr_multiplier) and bias
[out]; at run time the weight is multiplied by ``weight_gain = lr_multiplier / sqrt(in)`` and the bias by
``bias_gain = lr_multiplier``. ``OSGDecoder(n_features, options)`` is FC(n_features -> 64) -> softplus ->
FC(64 -> 1 + decoder_output_dim) over the mean of the planes' features; sigma is the first output (raw), the
colour sigmoid(rest) * 1.002 - 0.001. State-dict keys: ``net.0.weight`` [64, C], ``net.0.bias`` [64],
``net.2.weight`` [1 + Co, 64], ``net.2.bias`` [1 + Co].
"""

from __future__ import annotations

import math
import numbers
import weakref

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["FullyConnectedLayer", "OSGDecoder", "eg3d_decoder_weights", "eg3d_decoder_reason"]

COLOR_SCALE = 1 + 2 * 0.001
COLOR_SHIFT = 0.001


class FullyConnectedLayer(nn.Module):
    """EG3D's (StyleGAN2's) equalized-learning-rate linear layer, ``activation='linear'`` only (the decoder's).

    Args:
        in_features (int): input size; the weight is [out_features, in_features].
        out_features (int): output size; the bias is [out_features].
        bias (bool): whether the layer has a bias.
        activation (str): 'linear' only.
        lr_multiplier (float): the learning-rate multiplier: weight_gain = lr_multiplier / sqrt(in_features),
            bias_gain = lr_multiplier.
        bias_init (float): the bias' initial value.
    """

    def __init__(self, in_features, out_features, bias=True, activation='linear', lr_multiplier=1, bias_init=0):
        super().__init__()
        if activation != "linear":
            raise ValueError(f"activation must be 'linear' (oneshot.compat.eg3d's FullyConnectedLayer serves the "
                             f"tri-plane decoder, which uses no other), got {activation!r}")
        self.in_features = in_features
        self.out_features = out_features
        self.activation = activation
        self.weight = nn.Parameter(torch.randn([out_features, in_features]) / lr_multiplier)
        self.bias = nn.Parameter(torch.full([out_features], float(bias_init), dtype=torch.float32)) if bias else None
        self.weight_gain = lr_multiplier / math.sqrt(in_features)
        self.bias_gain = lr_multiplier

    def forward(self, x: Tensor) -> Tensor:  # [..., in_features] -> [..., out_features]
        w = self.weight.to(x.dtype) * self.weight_gain
        if self.bias is None:
            return x.matmul(w.t())
        b = self.bias.to(x.dtype)
        if self.bias_gain != 1:
            b = b * self.bias_gain
        if x.dim() == 2:
            return torch.addmm(b.unsqueeze(0), x, w.t())
        return F.linear(x, w, b)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features:d}, out_features={self.out_features:d}, activation={self.activation:s}"


class OSGDecoder(nn.Module):
    """EG3D's ``OSGDecoder``: ``OSGDecoder(n_features, {'decoder_lr_mul': ..., 'decoder_output_dim': ...})``.

    forward(sampled_features [N, n_planes, M, C], ray_directions [N, M, 3] (unused, as in EG3D)) ->
    ``{'rgb': [N, M, decoder_output_dim], 'sigma': [N, M, 1]}``. Loads EG3D's state dicts (same keys).
    """

    def __init__(self, n_features, options):
        super().__init__()
        for key in ("decoder_lr_mul", "decoder_output_dim"):
            if key not in options:
                raise ValueError(f"options must give {key!r} (EG3D's OSGDecoder reads it), got keys {sorted(options)}")
        self.hidden_dim = 64
        self.net = nn.Sequential(
            FullyConnectedLayer(n_features, self.hidden_dim, lr_multiplier=options["decoder_lr_mul"]),
            nn.Softplus(),
            FullyConnectedLayer(self.hidden_dim, 1 + options["decoder_output_dim"],
                                lr_multiplier=options["decoder_lr_mul"]),
        )

    def forward(self, sampled_features: Tensor, ray_directions: Tensor) -> dict:
        if sampled_features.dim() != 4:
            raise ValueError(f"sampled_features must be [N, n_planes, M, C], got {list(sampled_features.shape)}")
        x = sampled_features.mean(1)
        N, M, C = x.shape
        x = self.net(x.reshape(N * M, C))
        x = x.reshape(N, M, x.shape[-1])
        return {"rgb": torch.sigmoid(x[..., 1:]) * COLOR_SCALE - COLOR_SHIFT, "sigma": x[..., 0:1]}


# --- the structural test --------------------------------------------------------------------------------------


def _fc_ok(layer) -> str | None:
    for name in ("weight", "bias"):
        t = getattr(layer, name, None)
        if not isinstance(t, Tensor):
            return f"{type(layer).__name__} has no {name} tensor"
    for name in ("weight_gain", "bias_gain"):
        g = getattr(layer, name, None)
        if isinstance(g, bool) or not isinstance(g, numbers.Real):
            return f"{type(layer).__name__} has no numeric {name} (not an equalized-lr layer)"
    if getattr(layer, "activation", "linear") != "linear":
        return f"{type(layer).__name__} has activation {layer.activation!r}, not 'linear'"
    if layer.weight.dim() != 2 or layer.bias.dim() != 1 or layer.bias.shape[0] != layer.weight.shape[0]:
        return f"{type(layer).__name__} has weight {list(layer.weight.shape)} and bias {list(layer.bias.shape)}"
    return None


def _hooked(module: nn.Module) -> bool:
    from torch.nn.modules import module as mm

    if mm._global_forward_hooks or mm._global_forward_pre_hooks:
        return True
    return any(m._forward_hooks or m._forward_pre_hooks for m in module.modules())


def _structure(decoder) -> tuple[str | None, tuple]:
    """(why the decoder is not EG3D-shaped or None, (fc1, softplus, fc2))."""
    net = getattr(decoder, "net", None)
    if not isinstance(decoder, nn.Module) or not isinstance(net, nn.Sequential) or len(net) != 3:
        return "it has no `net` of three layers (FC, softplus, FC)", ()
    fc1, act, fc2 = net[0], net[1], net[2]
    if type(act) is not nn.Softplus or act.beta != 1 or act.threshold != 20:
        return f"its net[1] is {act!r}, not Softplus(beta=1, threshold=20)", ()
    for layer in (fc1, fc2):
        why = _fc_ok(layer)
        if why:
            return why, ()
    if fc2.weight.shape[1] != fc1.weight.shape[0] or fc2.weight.shape[0] < 2:
        return f"its layers' shapes {list(fc1.weight.shape)}, {list(fc2.weight.shape)} do not chain", ()
    if _hooked(decoder):
        return "it has forward hooks (the fused op would not run them)", ()
    return None, (fc1, act, fc2)


def _effective(fc, dtype) -> tuple[Tensor, Tensor]:
    w = fc.weight.to(dtype) * fc.weight_gain
    b = fc.bias.to(dtype)
    if fc.bias_gain != 1:
        b = b * fc.bias_gain
    return w, b


# Per decoder instance: (the layer objects the verdict was reached with, the verdict).
_VERDICTS: "weakref.WeakKeyDictionary[nn.Module, tuple]" = weakref.WeakKeyDictionary()


def _probe(decoder, fc1, fc2) -> str | None:
    """Run the decoder once on a fixed input and compare with EG3D's formula on its own weights: catches a
    forward that differs (another aggregation, colour scaling or use of the directions). The global RNG is
    left as it was (a decoder with dropout would otherwise shift EG3D's draws)."""
    dev = fc1.weight.device
    C = fc1.weight.shape[1]
    K = 5
    grid = torch.arange(3 * K * C, dtype=torch.float64, device=dev)
    feats = (torch.sin(grid * 0.37) * 1.3).reshape(1, 3, K, C).float()
    dirs = torch.cos(torch.arange(3 * K, dtype=torch.float64, device=dev)).reshape(1, K, 3).float()
    devices = [dev] if dev.type == "cuda" else []
    try:
        with torch.random.fork_rng(devices=devices), torch.no_grad():
            out = decoder(feats, dirs)
            out2 = decoder(feats, -dirs)
    except Exception as e:  # noqa: BLE001 - any failure means "not EG3D's decoder"
        return f"calling it as decoder(sampled_features [N, 3, M, C], ray_directions [N, M, 3]) failed: {e!r}"
    if not isinstance(out, dict) or not {"rgb", "sigma"} <= set(out):
        return "it does not return a dict with 'rgb' and 'sigma'"
    with torch.no_grad():
        w1, b1 = _effective(fc1, torch.float32)
        w2, b2 = _effective(fc2, torch.float32)
        y = F.linear(F.softplus(F.linear(feats.mean(1), w1, b1)), w2, b2)
        rgb = torch.sigmoid(y[..., 1:]) * COLOR_SCALE - COLOR_SHIFT
        sigma = y[..., :1]
        for name, got, want in (("rgb", out["rgb"], rgb), ("sigma", out["sigma"], sigma)):
            if not isinstance(got, Tensor) or got.shape != want.shape:
                return f"its {name!r} is not [N, M, {want.shape[-1]}]"
            if not torch.allclose(got.float(), want, rtol=1e-4, atol=1e-5):
                return f"its {name!r} differs from EG3D's decoder formula on its own weights"
            if not torch.equal(out2[name], got):
                return "its output depends on the ray directions"
    return None


def eg3d_decoder_reason(decoder, channels: int | None = None) -> str | None:
    """None when `decoder` computes EG3D's OSGDecoder function (FC -> softplus -> FC with equalized-lr gains,
    features averaged over the planes, sigmoid colour scaling, directions unused, no hooks), else why not.

    Structural (attributes and shapes), confirmed once per decoder instance by running it on a fixed input
    and comparing with the formula; works for EG3D's own ``OSGDecoder`` objects and any look-alike."""
    why, layers = _structure(decoder)
    if why:
        return why
    fc1, act, fc2 = layers
    if channels is not None and fc1.weight.shape[1] != channels:
        return f"its first layer takes {fc1.weight.shape[1]} features, the planes have {channels} channels"
    key = (type(decoder), fc1, act, fc2, tuple(fc1.weight.shape), tuple(fc2.weight.shape))
    cached = _VERDICTS.get(decoder)
    if cached is not None and cached[0] == key:
        return cached[1]
    verdict = _probe(decoder, fc1, fc2)
    _VERDICTS[decoder] = (key, verdict)
    return verdict


def eg3d_decoder_weights(decoder, dtype: torch.dtype) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(w1 [hidden, C], b1 [hidden], w2 [1 + Co, hidden], b2 [1 + Co]) of an EG3D-shaped decoder with the gains
    applied, in `dtype`, differentiable w.r.t. its parameters (check :func:`eg3d_decoder_reason` first)."""
    _, (fc1, _, fc2) = _structure(decoder)
    return (*_effective(fc1, dtype), *_effective(fc2, dtype))
