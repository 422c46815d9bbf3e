"""EG3D's tri-plane decoder: a two-layer MLP with equalized learning rate."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["EqualLinear", "TriplaneDecoder"]


class EqualLinear(nn.Module):
    """EG3D's ``FullyConnectedLayer`` (linear activation): the stored weight [out, in] ~ N(0, 1) / lr_multiplier
    is scaled by ``lr_multiplier / sqrt(in)`` at run time, the bias by ``lr_multiplier``. The stored weights
    are therefore unscaled, as in EG3D/GOHA checkpoints."""

    def __init__(self, in_features: int, out_features: int, *, bias_init: float = 0.0, lr_multiplier: float = 1.0):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.weight = nn.Parameter(torch.randn(out_features, in_features) / lr_multiplier)
        self.bias = nn.Parameter(torch.full((out_features,), float(bias_init)))
        self.weight_gain = lr_multiplier / math.sqrt(in_features)
        self.bias_gain = lr_multiplier

    def effective_weights(self) -> tuple[Tensor, Tensor]:
        """(weight [out, in], bias [out]) as applied: the stored ones times their gains (differentiable)."""
        return self.weight * self.weight_gain, self.bias * self.bias_gain

    def forward(self, x: Tensor) -> Tensor:  # [..., in] -> [..., out]
        return F.linear(x, *self.effective_weights())

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, weight_gain={self.weight_gain:.4g}"


class TriplaneDecoder(nn.Module):
    """EG3D's ``OSGDecoder``: features [..., C] (the mean of the three planes' samples) -> FC hidden -> softplus
    -> FC 1 + out_channels; returns (sigma [...] raw, features [..., out_channels] = sigmoid * 1.002 - 0.001).

    Keys ``net.0.*`` and ``net.2.*`` as in EG3D/GOHA (``decoder.net.0.weight`` [64, 32], ...). Ray directions
    are not used (as in EG3D). :meth:`effective_weights` makes it a :class:`oneshot.ops.FusableDecoder`: the fused
    renderer (``oneshot.ops.render_triplane``) evaluates it inside its kernel.
    """

    def __init__(self, in_channels: int = 32, hidden: int = 64, out_channels: int = 32, lr_multiplier: float = 1.0):
        super().__init__()
        self.in_channels, self.out_channels = in_channels, out_channels
        self.net = nn.Sequential(EqualLinear(in_channels, hidden, lr_multiplier=lr_multiplier), nn.Softplus(),
                                 EqualLinear(hidden, 1 + out_channels, lr_multiplier=lr_multiplier))

    def effective_weights(self) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """(w1 [hidden, in_channels], b1 [hidden], w2 [1 + out_channels, hidden], b2 [1 + out_channels]): the weights
        the forward applies, equalized-lr gains included, differentiable w.r.t. the parameters (the
        :class:`oneshot.ops.FusableDecoder` protocol that ``oneshot.ops.decoder_weights`` reads)."""
        return (*self.net[0].effective_weights(), *self.net[2].effective_weights())

    def forward(self, features: Tensor) -> tuple[Tensor, Tensor]:  # [..., C] -> sigma [...], features [..., Co]
        if features.shape[-1] != self.in_channels:
            raise ValueError(f"features must be [..., {self.in_channels}], got {list(features.shape)}")
        out = self.net(features)
        return out[..., 0], torch.sigmoid(out[..., 1:]) * (1 + 2 * 0.001) - 0.001
