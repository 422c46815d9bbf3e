"""The stage-2 dual discriminator: basicsr's ``StyleGAN2Discriminator`` (GFPGAN's net_d) with a 6-channel input.

GOHA_LAYOUT.md §6: ``StyleGAN2Discriminator(out_size=512, channel_multiplier=1, resample_kernel=[1,3,3,1])``,
stddev group 4, the first layer replaced by a bias-free 1x1 EqualConv2d taking concat(high-res image,
bilinearly upsampled low-res render). At size 512 the state dict has the released ``discriminator_dict``'s
43 keys and shapes (24,030,849 parameters):

* ``conv_body.0.{0.weight [32, 6, 1, 1], 1.bias [32]}``: EqualConv2d 1x1 (no bias) + FusedLeakyReLU;
* ``conv_body.{1..7}.{conv1.0.weight, conv1.1.bias, conv2.1.weight, conv2.2.bias, skip.1.weight}``: ResBlocks
  (index 0 of ``conv2`` and ``skip`` is the blur, whose kernel is a non-persistent buffer);
* ``final_conv.{0.weight [512, 513, 3, 3], 1.bias}``, ``final_linear.{0,1}.{weight,bias}`` (8192 -> 512 -> 1).

Equalized learning rate: weights are stored unscaled (N(0, 1) init) and multiplied at run time by
1/sqrt(fan_in) (convs: in·k²; linears: in, times lr_mul 1). FusedLeakyReLU(x) = leaky_relu(x + bias, 0.2)·√2.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["DualDiscriminator", "dual_input", "EqualConv2d", "EqualLinear", "FusedLeakyReLU", "Blur"]


def dual_input(high_res: Tensor, low_res: Tensor) -> Tensor:
    """concat(high_res, bilinear_up(low_res)) along channels, the dual discriminator's input.

    Args:
        high_res: [B, C1, S, S'] super-resolved image (GOHA: [B, 3, 512, 512] in [-1, 1]).
        low_res: [B, C2, h, w] volume render (GOHA: RGB [B, 3, 224, 224]); resized to S x S' with
            ``F.interpolate(mode="bilinear", align_corners=False)``.

    Returns:
        [B, C1 + C2, S, S'], high_res first.
    """
    for name, t in (("high_res", high_res), ("low_res", low_res)):
        if not isinstance(t, Tensor):
            raise TypeError(f"{name} must be a torch.Tensor [B, C, H, W], got {type(t).__name__}")
        if t.dim() != 4:
            raise ValueError(f"{name} must be [B, C, H, W], got {list(t.shape)}")
        if not t.is_floating_point():
            raise TypeError(f"{name} must be a floating-point tensor, got {t.dtype}")
    if low_res.shape[0] != high_res.shape[0]:
        raise ValueError(f"low_res must have high_res's batch size {high_res.shape[0]}, got {list(low_res.shape)}")
    if low_res.device != high_res.device:
        raise ValueError(f"low_res must be on the device of high_res ({high_res.device}), got {low_res.device}")
    if low_res.shape[-2:] != high_res.shape[-2:]:
        low_res = F.interpolate(low_res, size=tuple(high_res.shape[-2:]), mode="bilinear", align_corners=False)
    return torch.cat([high_res, low_res.to(high_res.dtype)], dim=1)


class FusedLeakyReLU(nn.Module):
    """leaky_relu(x + bias, 0.2) * sqrt(2), bias [C] added along dim 1 (basicsr's ``FusedLeakyReLU``)."""

    def __init__(self, channels: int, negative_slope: float = 0.2, scale: float = math.sqrt(2)):
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(channels))
        self.negative_slope, self.scale = negative_slope, scale

    def forward(self, x: Tensor) -> Tensor:  # [B, C, ...]
        bias = self.bias.view(1, -1, *([1] * (x.dim() - 2)))
        return F.leaky_relu(x + bias, self.negative_slope) * self.scale


class EqualConv2d(nn.Module):
    """Conv2d with equalized learning rate: weight [out, in, k, k] ~ N(0, 1), used as weight / sqrt(in·k²)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1, padding: int = 0,
                 bias: bool = True):
        super().__init__()
        self.stride, self.padding = stride, padding
        self.scale = 1 / math.sqrt(in_channels * kernel_size ** 2)
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.zeros(out_channels)) if bias else None

    def forward(self, x: Tensor) -> Tensor:  # [B, in, H, W] -> [B, out, H', W']
        return F.conv2d(x, self.weight * self.scale, self.bias, stride=self.stride, padding=self.padding)


class EqualLinear(nn.Module):
    """Linear with equalized learning rate: y = x (weight · lr_mul / sqrt(in))ᵀ + bias · lr_mul, optionally
    followed by FusedLeakyReLU's activation (the bias then goes inside the leaky ReLU, as in basicsr)."""

    def __init__(self, in_features: int, out_features: int, lr_mul: float = 1.0, activation: bool = False):
        super().__init__()
        self.lr_mul, self.activation = lr_mul, activation
        self.scale = lr_mul / math.sqrt(in_features)
        self.weight = nn.Parameter(torch.randn(out_features, in_features) / lr_mul)
        self.bias = nn.Parameter(torch.zeros(out_features))

    def forward(self, x: Tensor) -> Tensor:  # [B, in] -> [B, out]
        bias = self.bias * self.lr_mul
        if self.activation:
            return F.leaky_relu(F.linear(x, self.weight * self.scale) + bias, 0.2) * math.sqrt(2)
        return F.linear(x, self.weight * self.scale, bias)


class Blur(nn.Module):
    """basicsr's ``UpFirDnSmooth(kernel, downsample_factor=2, kernel_size=k)``: zero-pad by
    ((4 - 2 + k - 1 + 1) // 2, (4 - 2 + k - 1) // 2) on each side, then filter each channel with the normalised
    outer product of `kernel` (no resampling; the following conv has stride 2)."""

    def __init__(self, kernel: Sequence[float], conv_kernel_size: int):
        super().__init__()
        k = torch.as_tensor(kernel, dtype=torch.float32)
        k = k[None, :] * k[:, None]
        k = k / k.sum()
        self.register_buffer("kernel", k.flip(0, 1), persistent=False)  # upfirdn2d convolves (flipped kernel)
        pad = (k.shape[0] - 2) + (conv_kernel_size - 1)
        self.pad = ((pad + 1) // 2, pad // 2)

    def forward(self, x: Tensor) -> Tensor:  # [B, C, H, W] -> [B, C, H + pad - K + 1, ...]
        C = x.shape[1]
        p0, p1 = self.pad
        x = F.pad(x, (p0, p1, p0, p1))
        w = self.kernel.to(x.dtype)[None, None].expand(C, 1, *self.kernel.shape)
        return F.conv2d(x, w, groups=C)


def _conv_layer(in_ch: int, out_ch: int, k: int, *, downsample: bool = False, resample_kernel=(1, 3, 3, 1),
                bias: bool = True, activate: bool = True) -> nn.Sequential:
    """basicsr's ``ConvLayer``: [Blur] + EqualConv2d (bias only when not activated) + [FusedLeakyReLU]."""
    layers: list[nn.Module] = []
    if downsample:
        layers.append(Blur(resample_kernel, k))
        stride, padding = 2, 0
    else:
        stride, padding = 1, k // 2
    layers.append(EqualConv2d(in_ch, out_ch, k, stride=stride, padding=padding, bias=bias and not activate))
    if activate:
        if not bias:
            raise ValueError("an activated conv layer without bias is not part of this discriminator")
        layers.append(FusedLeakyReLU(out_ch))
    return nn.Sequential(*layers)


class ResBlock(nn.Module):
    """basicsr's discriminator ResBlock: (conv3x3 -> blur + conv3x3/2) + (blur + conv1x1/2 skip), over sqrt(2)."""

    def __init__(self, in_ch: int, out_ch: int, resample_kernel=(1, 3, 3, 1)):
        super().__init__()
        self.conv1 = _conv_layer(in_ch, in_ch, 3)
        self.conv2 = _conv_layer(in_ch, out_ch, 3, downsample=True, resample_kernel=resample_kernel)
        self.skip = _conv_layer(in_ch, out_ch, 1, downsample=True, resample_kernel=resample_kernel, bias=False,
                                activate=False)

    def forward(self, x: Tensor) -> Tensor:  # [B, in, H, W] -> [B, out, H/2, W/2]
        return (self.conv2(self.conv1(x)) + self.skip(x)) / math.sqrt(2)


class DualDiscriminator(nn.Module):
    """GOHA's stage-2 discriminator (basicsr StyleGAN2Discriminator with a 6-channel 1x1 input layer).

    Channels by resolution r: 512·narrow for r ≤ 32, then int(256·cm·narrow) at 64, 128·cm at 128, 64·cm at
    256, 32·cm at 512, 16·cm at 1024 (cm = channel_multiplier). Layers: ``conv_body.0`` (1x1 EqualConv2d
    in_channels -> C_size without bias, FusedLeakyReLU), log2(size) − 2 ResBlocks down to 4x4, the minibatch
    standard deviation (one feature), ``final_conv`` 3x3, ``final_linear`` (C_4·16 -> C_4, lrelu; -> 1).

    Minibatch stddev: basicsr uses group = min(batch, stddev_group) and needs the batch divisible by it. Here
    the group is the largest divisor of the batch that is ≤ stddev_group, which equals basicsr's choice whenever
    basicsr works (batch ≤ 4 or a multiple of 4) and also handles other batches (5 -> 1, 6 -> 3). Samples
    i, i + B/g, i + 2B/g, ... form a group (basicsr's ``view(group, -1, ...)``).

    Args:
        size: input resolution (a power of two, 4 ... 1024).
        channel_multiplier: StyleGAN2's channel multiplier (GOHA: 1).
        in_channels: input channels (6: high-res RGB + upsampled low-res RGB).
        narrow: channel scale for every resolution (e.g. 1/16 for a cheap test model).
        resample_kernel: 1-D blur kernel before strided convs.
        stddev_group: minibatch stddev group size.
    """

    def __init__(self, size: int = 512, channel_multiplier: int = 1, in_channels: int = 6, narrow: float = 1.0,
                 resample_kernel: Sequence[float] = (1, 3, 3, 1), stddev_group: int = 4):
        super().__init__()
        if not isinstance(size, int) or size < 4 or size > 1024 or size & (size - 1):
            raise ValueError(f"size must be a power of two in [4, 1024], got {size!r}")
        if not isinstance(in_channels, int) or in_channels < 1:
            raise ValueError(f"in_channels must be a positive int, got {in_channels!r}")
        if not isinstance(stddev_group, int) or stddev_group < 1:
            raise ValueError(f"stddev_group must be a positive int, got {stddev_group!r}")
        ch = {4: 512, 8: 512, 16: 512, 32: 512, 64: 256 * channel_multiplier, 128: 128 * channel_multiplier,
              256: 64 * channel_multiplier, 512: 32 * channel_multiplier, 1024: 16 * channel_multiplier}
        ch = {r: int(c * narrow) for r, c in ch.items()}
        used = {r: c for r, c in ch.items() if r <= size}
        if min(used.values()) < 1:
            raise ValueError(f"narrow={narrow} with channel_multiplier={channel_multiplier} leaves a resolution with "
                             f"no channels: {used}")
        self.size, self.in_channels, self.stddev_group = size, in_channels, stddev_group
        body: list[nn.Module] = [nn.Sequential(EqualConv2d(in_channels, ch[size], 1, bias=False),
                                               FusedLeakyReLU(ch[size]))]
        c_in, r = ch[size], size
        while r > 4:
            body.append(ResBlock(c_in, ch[r // 2], resample_kernel))
            c_in, r = ch[r // 2], r // 2
        self.conv_body = nn.Sequential(*body)
        self.final_conv = _conv_layer(c_in + 1, ch[4], 3)
        self.final_linear = nn.Sequential(EqualLinear(ch[4] * 4 * 4, ch[4], activation=True),
                                          EqualLinear(ch[4], 1))

    def _stddev(self, x: Tensor) -> Tensor:  # [B, C, 4, 4] -> [B, C + 1, 4, 4]
        b, c, h, w = x.shape
        group = max(g for g in range(1, min(b, self.stddev_group) + 1) if b % g == 0)
        s = x.reshape(group, -1, 1, c, h, w)
        s = torch.sqrt(s.var(0, unbiased=False) + 1e-8)  # [B/g, 1, C, H, W]
        s = s.mean([2, 3, 4], keepdim=True).squeeze(2)  # [B/g, 1, 1, 1]
        s = s.repeat(group, 1, h, w)  # sample i gets its group's value, i mod B/g
        return torch.cat([x, s], dim=1)

    def forward(self, x: Tensor, low_res: Tensor | None = None) -> Tensor:
        """Args:
            x: [B, in_channels, size, size] discriminator input (see :func:`dual_input`), or, with `low_res`,
                the high-res image [B, 3, size, size].
            low_res: optional [B, 3, h, w] low-res render; when given, the input is ``dual_input(x, low_res)``.

        Returns:
            [B, 1] logits.
        """
        if low_res is not None:
            x = dual_input(x, low_res)
        if not isinstance(x, Tensor):
            raise TypeError(f"x must be a torch.Tensor [B, {self.in_channels}, {self.size}, {self.size}], "
                            f"got {type(x).__name__}")
        expected = [self.in_channels, self.size, self.size]
        if x.dim() != 4 or list(x.shape[1:]) != expected or x.shape[0] < 1:
            raise ValueError(f"x must be [B, {self.in_channels}, {self.size}, {self.size}] with B >= 1, "
                             f"got {list(x.shape)}")
        if not x.is_floating_point():
            raise TypeError(f"x must be a floating-point tensor, got {x.dtype}")
        out = self.conv_body(x)
        out = self.final_conv(self._stddev(out))
        return self.final_linear(out.reshape(out.shape[0], -1))
