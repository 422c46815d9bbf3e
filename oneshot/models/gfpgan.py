"""GFPGAN's ``GFPGANv1Clean`` (a U-Net encoder feeding a StyleGAN2 decoder through SFT), the avatar's
super-resolution module, written here without basicsr or compiled extensions.

Module and parameter names, shapes and the arithmetic follow GFPGAN 1.3.8's ``gfpganv1_clean_arch.py`` and
``stylegan2_clean_arch.py``, so the released ``GFPGANv1.3.pth`` / ``GFPGANv1.4.pth`` (key ``params_ema``) load
strictly and the outputs agree bit for bit with GFPGAN's own modules on CPU. The "clean" StyleGAN2 has no
equalised-learning-rate scaling at run time; its only constant factor is the sqrt(2) after each StyleConv's
modulated convolution.

* :class:`GFPGANv1Clean`: RGB [B, 3, S, S] in [-1, 1] -> (RGB [B, 3, S, S], intermediate RGBs).
* :class:`SuperResolution`: any [B, 3, h, w] -> [B, 3, S, S] (bilinear resize, align_corners=True, then
  GFPGAN), with the network under ``gfpgan`` as GOHA's ``neural_layers.gfpgan.*``.
* :func:`load_gfpgan_weights`: a released checkpoint into either, with checked keys and shapes.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .._checkpoint import check_state_dict, load_torch_file

__all__ = ["GFPGANv1Clean", "SuperResolution", "load_gfpgan_weights"]

_SLOPE = 0.2  # negative slope of every leaky ReLU
_SQRT2 = 2**0.5  # StyleConv's gain after the modulated convolution


def _width(res: int, narrow: float, channel_multiplier: float) -> int:
    """StyleGAN2's channel count at resolution `res` (a power of two, 4..1024), as GFPGAN computes it."""
    if res <= 32:
        return int(512 * narrow)
    return int((16384 // res) * channel_multiplier * narrow)  # 256*cm at 64, 128*cm at 128, ... 16*cm at 1024


def _resample(x: Tensor, factor: float) -> Tensor:
    return F.interpolate(x, scale_factor=factor, mode="bilinear", align_corners=False)


# ----------------------------------------------------------------------------------------------------------
# StyleGAN2 decoder


class _PixelNorm(nn.Module):
    """x / sqrt(mean(x^2 over dim 1) + 1e-8); first entry of the style MLP (no parameters)."""

    def forward(self, x: Tensor) -> Tensor:  # [B, C, ...]
        return x * torch.rsqrt(x.pow(2).mean(dim=1, keepdim=True) + 1e-8)


class _ModulatedConv(nn.Module):
    """Convolution whose weight is scaled per sample by an affine map of the style, optionally demodulated,
    optionally after a x2 bilinear upsampling of the input. No bias.

    Parameters: ``modulation`` (Linear num_style_feat -> in_channels), ``weight`` [1, C_out, C_in, k, k].
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, num_style_feat: int,
                 demodulate: bool = True, upsample: bool = False, eps: float = 1e-8):
        super().__init__()
        self.in_channels, self.out_channels, self.kernel_size = in_channels, out_channels, kernel_size
        self.demodulate, self.upsample, self.eps = demodulate, upsample, eps
        self.modulation = nn.Linear(num_style_feat, in_channels)
        with torch.no_grad():  # He-normal for a linear map, bias 1 (so the initial modulation is ~identity)
            nn.init.kaiming_normal_(self.modulation.weight, a=0, mode="fan_in", nonlinearity="linear")
            self.modulation.bias.fill_(1.0)
        fan_in = in_channels * kernel_size * kernel_size
        self.weight = nn.Parameter(torch.randn(1, out_channels, in_channels, kernel_size, kernel_size)
                                   / math.sqrt(fan_in))

    def forward(self, x: Tensor, style: Tensor) -> Tensor:
        """x: [B, C_in, H, W], style: [B, num_style_feat] -> [B, C_out, H', W'] (H' = 2H when upsampling)."""
        b, c_in = x.shape[:2]
        s = self.modulation(style).view(b, 1, c_in, 1, 1)
        w = self.weight * s  # [B, C_out, C_in, k, k]
        if self.demodulate:
            w = w * torch.rsqrt(w.pow(2).sum([2, 3, 4]) + self.eps).view(b, self.out_channels, 1, 1, 1)
        w = w.view(b * self.out_channels, c_in, self.kernel_size, self.kernel_size)
        if self.upsample:
            x = _resample(x, 2)
        h, wd = x.shape[2:]
        # One grouped convolution: sample i's channels meet only sample i's weights.
        y = F.conv2d(x.reshape(1, b * c_in, h, wd), w, padding=self.kernel_size // 2, groups=b)
        return y.reshape(b, self.out_channels, *y.shape[2:])

    def extra_repr(self) -> str:
        return (f"in_channels={self.in_channels}, out_channels={self.out_channels}, kernel_size={self.kernel_size}, "
                f"demodulate={self.demodulate}, upsample={self.upsample}")


def _draw_noise(like: Tensor, generator: torch.Generator | None) -> Tensor:
    """Standard normal noise [B, 1, H, W] for `like` [B, C, H, W], from `generator` (or the global RNG)."""
    b, _, h, w = like.shape
    device = like.device if generator is None else generator.device
    return torch.randn(b, 1, h, w, generator=generator, device=device, dtype=like.dtype).to(like.device)


class _StyleConv(nn.Module):
    """leaky_relu(sqrt(2) * modconv(x, style) + weight * noise + bias). Parameters: ``modulated_conv``,
    ``weight`` [1] (noise strength), ``bias`` [1, C_out, 1, 1]."""

    def __init__(self, in_channels: int, out_channels: int, num_style_feat: int, upsample: bool):
        super().__init__()
        self.modulated_conv = _ModulatedConv(in_channels, out_channels, 3, num_style_feat, True, upsample)
        self.weight = nn.Parameter(torch.zeros(1))
        self.bias = nn.Parameter(torch.zeros(1, out_channels, 1, 1))

    def forward(self, x: Tensor, style: Tensor, noise: Tensor | None,
                generator: torch.Generator | None = None) -> Tensor:
        """x: [B, C_in, H, W], style: [B, F], noise: [B or 1, 1, H', W'] or None (drawn) -> [B, C_out, H', W']."""
        y = self.modulated_conv(x, style) * _SQRT2
        if noise is None:
            noise = _draw_noise(y, generator)
        y = y + self.weight * noise
        y = y + self.bias
        return F.leaky_relu(y, _SLOPE)


class _ToRGB(nn.Module):
    """1x1 modulated convolution (not demodulated) to RGB, plus bias, plus the (x2 upsampled) previous RGB."""

    def __init__(self, in_channels: int, num_style_feat: int, upsample: bool):
        super().__init__()
        self.upsample = upsample
        self.modulated_conv = _ModulatedConv(in_channels, 3, 1, num_style_feat, demodulate=False)
        self.bias = nn.Parameter(torch.zeros(1, 3, 1, 1))

    def forward(self, x: Tensor, style: Tensor, skip: Tensor | None = None) -> Tensor:
        """x: [B, C, H, W], style: [B, F], skip: [B, 3, H/2, H/2] (or [B, 3, H, W] without upsampling)."""
        y = self.modulated_conv(x, style) + self.bias
        if skip is not None:
            y = y + (_resample(skip, 2) if self.upsample else skip)
        return y


class _ConstantInput(nn.Module):
    def __init__(self, channels: int, size: int):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(1, channels, size, size))

    def forward(self, batch: int) -> Tensor:  # -> [batch, C, size, size]
        return self.weight.repeat(batch, 1, 1, 1)


class _StyleDecoder(nn.Module):
    """StyleGAN2 generator ("clean") whose first conv of each resolution is followed by an SFT modulation.

    Keys as GFPGAN's ``StyleGAN2GeneratorCSFT``: ``style_mlp`` (PixelNorm, then num_mlp x [Linear, LeakyReLU]),
    ``constant_input``, ``style_conv1``, ``to_rgb1``, ``style_convs`` (2 per resolution 8..S), ``to_rgbs``,
    ``noises.noise0..`` (buffers [1, 1, r, r], r = 4, 8, 8, 16, 16, ..., S, S).
    """

    def __init__(self, out_size: int, num_style_feat: int, num_mlp: int, channel_multiplier: float,
                 narrow: float, sft_half: bool):
        super().__init__()
        self.num_style_feat, self.sft_half = num_style_feat, sft_half
        self.log_size = out_size.bit_length() - 1
        self.num_layers = 2 * (self.log_size - 2) + 1  # style convs (and noises)
        self.num_latent = 2 * self.log_size - 2  # style vectors consumed

        mlp: list[nn.Module] = [_PixelNorm()]
        for _ in range(num_mlp):
            mlp += [nn.Linear(num_style_feat, num_style_feat), nn.LeakyReLU(_SLOPE)]
        self.style_mlp = nn.Sequential(*mlp)
        with torch.no_grad():
            for m in self.style_mlp:
                if isinstance(m, nn.Linear):
                    nn.init.kaiming_normal_(m.weight, a=_SLOPE, mode="fan_in", nonlinearity="leaky_relu")
                    m.bias.zero_()

        c4 = _width(4, narrow, channel_multiplier)
        self.constant_input = _ConstantInput(c4, 4)
        self.style_conv1 = _StyleConv(c4, c4, num_style_feat, upsample=False)
        self.to_rgb1 = _ToRGB(c4, num_style_feat, upsample=False)
        self.style_convs = nn.ModuleList()
        self.to_rgbs = nn.ModuleList()
        self.noises = nn.Module()
        for i in range(self.num_layers):
            r = 2 ** ((i + 5) // 2)
            self.noises.register_buffer(f"noise{i}", torch.randn(1, 1, r, r))
        c_in = c4
        for log_res in range(3, self.log_size + 1):
            c = _width(2**log_res, narrow, channel_multiplier)
            self.style_convs.append(_StyleConv(c_in, c, num_style_feat, upsample=True))
            self.style_convs.append(_StyleConv(c, c, num_style_feat, upsample=False))
            self.to_rgbs.append(_ToRGB(c, num_style_feat, upsample=True))
            c_in = c

    def forward(self, styles: Tensor, conditions: list[tuple[Tensor, Tensor]], input_is_latent: bool,
                randomize_noise: bool, generator: torch.Generator | None) -> tuple[Tensor, Tensor]:
        """styles: [B, F] (one w for all layers) or [B, num_latent, F]; conditions: (scale, shift) per
        resolution 8..S, each [B, C_sft, r, r]. Returns the image [B, 3, S, S] and the latents [B, num_latent, F].
        """
        if not input_is_latent:
            styles = self.style_mlp(styles)  # as GFPGAN: on [B, L, F] the PixelNorm normalises over dim 1
        latent = styles.unsqueeze(1).repeat(1, self.num_latent, 1) if styles.dim() < 3 else styles
        if randomize_noise:
            noises: list[Tensor | None] = [None] * self.num_layers
        else:
            noises = [getattr(self.noises, f"noise{i}") for i in range(self.num_layers)]

        x = self.constant_input(latent.shape[0])
        x = self.style_conv1(x, latent[:, 0], noises[0], generator)
        rgb = self.to_rgb1(x, latent[:, 1])
        for k, (scale, shift) in enumerate(conditions):
            i = 2 * k + 1
            x = self.style_convs[i - 1](x, latent[:, i], noises[i], generator)
            if self.sft_half:  # spatial feature transform on the second half of the channels only
                same, sft = torch.split(x, x.shape[1] // 2, dim=1)
                x = torch.cat([same, sft * scale + shift], dim=1)
            else:
                x = x * scale + shift
            x = self.style_convs[i](x, latent[:, i + 1], noises[i + 1], generator)
            rgb = self.to_rgbs[k](x, latent[:, i + 2], rgb)
        return rgb, latent


# ----------------------------------------------------------------------------------------------------------
# U-Net encoder and the full network


class _ResBlock(nn.Module):
    """conv3x3-lrelu, bilinear x`factor`, conv3x3-lrelu, plus a bias-free 1x1 conv of the resampled input."""

    def __init__(self, in_channels: int, out_channels: int, factor: float):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, in_channels, 3, 1, 1)
        self.conv2 = nn.Conv2d(in_channels, out_channels, 3, 1, 1)
        self.skip = nn.Conv2d(in_channels, out_channels, 1, bias=False)
        self.scale_factor = factor

    def forward(self, x: Tensor) -> Tensor:  # [B, C_in, H, W] -> [B, C_out, H * factor, W * factor]
        y = F.leaky_relu(self.conv1(x), _SLOPE)
        y = F.leaky_relu(self.conv2(_resample(y, self.scale_factor)), _SLOPE)
        return y + self.skip(_resample(x, self.scale_factor))


def _sft_head(channels: int, out_channels: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(channels, channels, 3, 1, 1), nn.LeakyReLU(_SLOPE),
                         nn.Conv2d(channels, out_channels, 3, 1, 1))


class GFPGANv1Clean(nn.Module):
    """GFPGAN ("clean" architecture): U-Net encoder -> style codes + SFT conditions -> StyleGAN2 decoder.

    Same constructor semantics and ``state_dict`` (keys, order, shapes) as GFPGAN's ``GFPGANv1Clean`` with
    ``decoder_load_path=None, fix_decoder=False``; the defaults are the GFPGANv1.3/1.4 release configuration.

    Args:
        out_size: input and output side S, a power of two in [4, 1024].
        num_style_feat: width F of a style vector.
        channel_multiplier: StyleGAN2's channel multiplier for resolutions >= 64.
        num_mlp: layers of the style MLP (unused when ``input_is_latent``, but kept for its weights).
        input_is_latent: the encoder predicts w directly (True) or z, mapped by the style MLP (False).
        different_w: one w per decoder layer ([B, 2 log2(S) - 2, F]) instead of one shared w ([B, F]).
        narrow: width ratio of every layer (the U-Net uses half of it).
        sft_half: SFT modulates half of the decoder's channels (True) or all of them.
    """

    def __init__(self, out_size: int = 512, num_style_feat: int = 512, channel_multiplier: float = 2,
                 num_mlp: int = 8, input_is_latent: bool = True, different_w: bool = True, narrow: float = 1,
                 sft_half: bool = True):
        super().__init__()
        if isinstance(out_size, bool) or not isinstance(out_size, int) or not 4 <= out_size <= 1024 \
                or out_size & (out_size - 1):
            raise ValueError(f"out_size must be a power of two in [4, 1024], got {out_size!r}")
        if not isinstance(num_style_feat, int) or num_style_feat < 1:
            raise ValueError(f"num_style_feat must be a positive int, got {num_style_feat!r}")
        if not isinstance(num_mlp, int) or num_mlp < 0:
            raise ValueError(f"num_mlp must be a non-negative int, got {num_mlp!r}")
        self.out_size, self.input_is_latent, self.different_w = out_size, input_is_latent, different_w
        self.num_style_feat = num_style_feat
        self.log_size = out_size.bit_length() - 1
        levels = [2**i for i in range(3, self.log_size + 1)]  # decoder resolutions 8..S
        unet = {r: _width(r, narrow * 0.5, channel_multiplier) for r in [4, *levels]}
        dec = {r: _width(r, narrow, channel_multiplier) for r in [4, *levels]}
        if unet[4] < 1:
            raise ValueError(f"narrow={narrow!r} leaves no U-Net channels at resolution 4")
        for r in levels:  # the SFT conditions at r have unet[r] channels and modulate half of dec[r] (or all)
            if unet[r] < 1 or dec[r] != 2 * unet[r]:
                raise ValueError(
                    f"narrow={narrow!r} and channel_multiplier={channel_multiplier!r} give {dec[r]} decoder and "
                    f"{unet[r]} U-Net channels at resolution {r}; SFT needs decoder = 2 x U-Net >= 2")

        self.conv_body_first = nn.Conv2d(3, unet[out_size], 1)
        self.conv_body_down = nn.ModuleList(_ResBlock(unet[r], unet[r // 2], 0.5) for r in reversed(levels))
        self.final_conv = nn.Conv2d(unet[4], unet[4], 3, 1, 1)
        self.conv_body_up = nn.ModuleList(_ResBlock(unet[r // 2], unet[r], 2) for r in levels)
        self.toRGB = nn.ModuleList(nn.Conv2d(unet[r], 3, 1) for r in levels)
        num_w = 2 * self.log_size - 2 if different_w else 1
        self.final_linear = nn.Linear(unet[4] * 16, num_w * num_style_feat)
        self.stylegan_decoder = _StyleDecoder(out_size, num_style_feat, num_mlp, channel_multiplier, narrow,
                                              sft_half)
        self.condition_scale = nn.ModuleList()
        self.condition_shift = nn.ModuleList()
        for r in levels:  # scale and shift built alternately: the same random draws as GFPGAN's initialisation
            sft_out = unet[r] if sft_half else 2 * unet[r]
            self.condition_scale.append(_sft_head(unet[r], sft_out))
            self.condition_shift.append(_sft_head(unet[r], sft_out))

    def forward(self, x: Tensor, return_latents: bool = False, return_rgb: bool = True,
                randomize_noise: bool = True, generator: torch.Generator | None = None
                ) -> tuple[Tensor, list[Tensor]]:
        """Restore `x`.

        Args:
            x: RGB [B, 3, S, S] in [-1, 1], the module's dtype and device.
            return_latents: accepted for GFPGAN compatibility; GFPGANv1Clean discards the latents too.
            return_rgb: also return the U-Net's RGB images at each decoder resolution.
            randomize_noise: fresh noise per call (from `generator`, or the global RNG when None); False uses
                the stored buffers ``stylegan_decoder.noises.noise*`` (deterministic).
            generator: RNG for the noise, on any device; only with ``randomize_noise=True``.

        Returns:
            image [B, 3, S, S]; the RGBs [B, 3, r, r] for r = 8, 16, ..., S (empty if not ``return_rgb``).
        """
        del return_latents
        S = self.out_size
        if not isinstance(x, Tensor) or x.dim() != 4 or x.shape[1] != 3 or tuple(x.shape[2:]) != (S, S):
            got = list(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise ValueError(f"x must be [B, 3, {S}, {S}], got {got}")
        ref = self.final_linear.weight
        if x.dtype != ref.dtype or x.device != ref.device:
            raise ValueError(f"x must be {ref.dtype} on {ref.device} (the module's), got {x.dtype} on {x.device}")
        if generator is not None:
            if not isinstance(generator, torch.Generator):
                raise TypeError(f"generator must be a torch.Generator or None, got {type(generator).__name__}")
            if not randomize_noise:
                raise ValueError("generator is only used with randomize_noise=True (False uses the stored noise)")
        levels = [2**i for i in range(3, self.log_size + 1)]
        if x.shape[0] == 0:
            return x.new_empty(0, 3, S, S), [x.new_empty(0, 3, r, r) for r in levels] if return_rgb else []

        feat = F.leaky_relu(self.conv_body_first(x), _SLOPE)
        skips = []
        for block in self.conv_body_down:
            feat = block(feat)
            skips.append(feat)
        feat = F.leaky_relu(self.final_conv(feat), _SLOPE)  # [B, C4, 4, 4]
        style = self.final_linear(feat.reshape(feat.shape[0], -1))
        if self.different_w:
            style = style.view(style.shape[0], -1, self.num_style_feat)  # [B, num_latent, F]

        conditions, rgbs = [], []
        for up, scale, shift, to_rgb, skip in zip(self.conv_body_up, self.condition_scale, self.condition_shift,
                                                  self.toRGB, reversed(skips)):
            feat = up(feat + skip)
            conditions.append((scale(feat), shift(feat)))
            if return_rgb:
                rgbs.append(to_rgb(feat))
        image, _ = self.stylegan_decoder(style, conditions, self.input_is_latent, randomize_noise, generator)
        return image, rgbs


# ----------------------------------------------------------------------------------------------------------
# The avatar's wrapper and the checkpoint loader


class SuperResolution(nn.Module):
    """The avatar's super-resolution: RGB [B, 3, h, w] in [-1, 1] at any size -> [B, 3, S, S].

    The input is resized bilinearly (align_corners=True, as GOHA) to S x S and restored by
    :class:`GFPGANv1Clean`, held as ``gfpgan`` (checkpoint keys ``gfpgan.*``). The defaults are GFPGANv1.3/1.4's;
    :meth:`tiny` is a cheap configuration for tests and CPU demos.
    """

    def __init__(self, out_size: int = 512, num_style_feat: int = 512, channel_multiplier: float = 2,
                 narrow: float = 1, num_mlp: int = 8, sft_half: bool = True):
        super().__init__()
        self.out_size = out_size
        self.gfpgan = GFPGANv1Clean(out_size, num_style_feat, channel_multiplier, num_mlp, input_is_latent=True,
                                    different_w=True, narrow=narrow, sft_half=sft_half)

    @classmethod
    def tiny(cls, out_size: int = 128) -> SuperResolution:
        """A small network for tests and CPU demos: F=128, narrow=0.25, channel_multiplier=1, a 2-layer style MLP
        (4.1M parameters at S=128, against 86M for the release configuration)."""
        return cls(out_size, num_style_feat=128, channel_multiplier=1, narrow=0.25, num_mlp=2)

    def forward(self, x: Tensor, randomize_noise: bool = True,
                generator: torch.Generator | None = None) -> Tensor:
        """x: RGB [B, 3, h, w] float in [-1, 1] (h, w >= 1) -> RGB [B, 3, S, S]. Noise as
        :meth:`GFPGANv1Clean.forward`."""
        if not isinstance(x, Tensor):
            raise ValueError(f"x must be a float tensor [B, 3, H, W], got {type(x).__name__}")
        if x.dim() != 4 or x.shape[1] != 3 or x.shape[2] < 1 or x.shape[3] < 1:
            raise ValueError(f"x must be [B, 3, H, W] with H, W >= 1, got {list(x.shape)}")
        if not x.is_floating_point():
            raise ValueError(f"x must be a floating-point tensor, got {x.dtype}")
        S = self.out_size
        if tuple(x.shape[2:]) != (S, S) and x.shape[0] > 0:
            x = F.interpolate(x, size=(S, S), mode="bilinear", align_corners=True)
        elif x.shape[0] == 0:
            x = x.new_empty(0, 3, S, S)
        image, _ = self.gfpgan(x, return_rgb=False, randomize_noise=randomize_noise, generator=generator)
        return image


def load_gfpgan_weights(module: GFPGANv1Clean | SuperResolution, path: str | os.PathLike,
                        key: str | None = None) -> GFPGANv1Clean | SuperResolution:
    """Load a released GFPGAN checkpoint (``GFPGANv1.3.pth``, ``GFPGANv1.4.pth``) into `module` strictly.

    Args:
        module: a :class:`GFPGANv1Clean`, or a :class:`SuperResolution` (loaded into its ``gfpgan``).
        path: a ``torch.save`` file holding a dict with ``params_ema`` or ``params`` (``params_ema`` preferred),
            or a bare state dict.
        key: force ``"params_ema"`` or ``"params"``.

    Returns:
        `module`, its weights replaced (a module on the meta device gets the loaded tensors themselves).
    """
    if isinstance(module, SuperResolution):
        net = module.gfpgan
    elif isinstance(module, GFPGANv1Clean):
        net = module
    else:
        raise TypeError(f"module must be a GFPGANv1Clean or SuperResolution, got {type(module).__name__}")
    p = Path(path)
    ckpt = load_torch_file(p, "GFPGAN checkpoint")
    if not isinstance(ckpt, dict):
        raise ValueError(f"{p}: expected a dict with 'params_ema' or 'params', got {type(ckpt).__name__}")
    if key is not None:
        if key not in ckpt:
            raise KeyError(f"{p}: no key {key!r} in the checkpoint (it has {sorted(map(str, ckpt))[:5]})")
        state = ckpt[key]
    elif "params_ema" in ckpt:
        state = ckpt["params_ema"]
    elif "params" in ckpt:
        state = ckpt["params"]
    elif all(isinstance(v, Tensor) for v in ckpt.values()):
        state = ckpt
    else:
        raise ValueError(f"{p}: expected a dict with 'params_ema' or 'params' (or a bare state dict), "
                         f"got keys {sorted(map(str, ckpt))[:5]}")
    if not isinstance(state, dict):
        raise ValueError(f"{p}: the state dict is a {type(state).__name__}, expected a dict of tensors")
    want = net.state_dict()
    check_state_dict(want, state, p, "GFPGANv1Clean (this configuration)")
    on_meta = any(t.is_meta for t in want.values())
    net.load_state_dict(state, strict=True, assign=on_meta)
    return module
