"""The avatar's tri-plane heads, as GOHA (NVlabs/GOHA, ``src/models``) builds them, and the learned template.

* :class:`Embed2Plane`: features [B, 256, h, w] -> tri-plane [B, 3, 32, 2h, 2w] (``embedding2neutral``/``expr``).
* :class:`PlaneUpsampler`: tri-plane [B, 3, 256, h, w] -> [B, 3, 32, 2h, 2w] (GOHA's ``IDUpsampler``).
* :class:`PlaneTemplate`: a learned tri-plane added to the canonical one (not in the paper).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["Embed2Plane", "PlaneUpsampler", "PlaneTemplate"]


def _check_planes(x: Tensor, planes: int, channels: int, what: str) -> None:
    if not isinstance(x, Tensor):
        raise TypeError(f"{what} must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() != 5 or x.shape[1] != planes or x.shape[2] != channels:
        raise ValueError(f"{what} must be [B, {planes}, {channels}, H, W], got {list(x.shape)}")


class Embed2Plane(nn.Module):
    """GOHA's embedding-to-tri-plane head: features [B, in_channels, H, W] -> planes [B, planes, channels, 2H, 2W].

    ``up_layers`` (indices as in GOHA's checkpoint): 0 Conv3x3 in->hidden[0], 1 LeakyReLU(0.2), 2 Conv3x3
    hidden[0]->hidden[1], 3 LeakyReLU, 4 ConvTranspose4x4 s2 p1 hidden[1]->hidden[1], 5 LeakyReLU, 6 Conv3x3
    hidden[1]->hidden[1], 7 LeakyReLU, 8 Conv3x3 hidden[1]->planes*channels. Output channel c belongs to plane
    c // channels (GOHA: planes XY, XZ, ZY), feature c % channels.
    """

    def __init__(self, in_channels: int = 256, planes: int = 3, channels: int = 32,
                 hidden: tuple[int, int] = (256, 128)):
        super().__init__()
        h0, h1 = hidden
        self.in_channels, self.planes, self.channels = in_channels, planes, channels
        self.up_layers = nn.Sequential(
            nn.Conv2d(in_channels, h0, 3, padding=1), nn.LeakyReLU(0.2),
            nn.Conv2d(h0, h1, 3, padding=1), nn.LeakyReLU(0.2),
            nn.ConvTranspose2d(h1, h1, 4, stride=2, padding=1), nn.LeakyReLU(0.2),
            nn.Conv2d(h1, h1, 3, padding=1), nn.LeakyReLU(0.2),
            nn.Conv2d(h1, planes * channels, 3, padding=1),
        )

    def forward(self, x: Tensor) -> Tensor:  # [B, in_channels, H, W] -> [B, planes, channels, 2H, 2W]
        if not isinstance(x, Tensor):
            raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"x must be [B, {self.in_channels}, H, W], got {list(x.shape)}")
        y = self.up_layers(x)
        return y.view(y.shape[0], self.planes, self.channels, *y.shape[-2:])


class PlaneTemplate(nn.Module):
    """A learned tri-plane [1, planes, channels, size, size] (zero at initialisation) added to every canonical
    tri-plane. Not in the paper: the canonical head, a convolutional network, can place the mean head at its fixed
    position in tri-plane space only through its padding, which takes long to learn; a template learns the mean head
    directly and the encoder the deviations from it.

    ``lr_multiplier`` (EG3D's idiom for its mapping network, here > 1): the stored parameter is multiplied by it at
    run time, so with Adam the template moves ``lr_multiplier`` times faster than the networks, as a tri-plane
    optimised directly needs (lr ~1e-2), whatever optimiser settings the rest of the model uses.
    """

    def __init__(self, planes: int = 3, channels: int = 32, size: int = 256, lr_multiplier: float = 1.0):
        super().__init__()
        if not lr_multiplier > 0:
            raise ValueError(f"lr_multiplier must be > 0, got {lr_multiplier!r}")
        self.planes = nn.Parameter(torch.zeros(1, planes, channels, size, size))
        self.lr_multiplier = float(lr_multiplier)

    def template(self) -> Tensor:
        """The template tri-plane [1, planes, channels, size, size] as it is added."""
        return self.planes * self.lr_multiplier

    def forward(self, x: Tensor) -> Tensor:  # [B, planes, channels, size, size] -> x + template
        if x.shape[1:] != self.planes.shape[1:]:
            raise ValueError(f"x must be [B, {', '.join(map(str, self.planes.shape[1:]))}], got {list(x.shape)}")
        return x + self.template()

    def extra_repr(self) -> str:
        return f"shape={list(self.planes.shape)}, lr_multiplier={self.lr_multiplier:g}"


class PlaneUpsampler(nn.Module):
    """GOHA's ``IDUpsampler``: tri-plane [B, 3, in_channels, h, w] -> [B, 3, channels, scale*h, scale*w].

    Plane p in (xy, xz, zy): ``skip_p(resize(x_p)) + up(x_p)`` where resize is bilinear (align_corners False) to
    the output size, ``skip_p`` a 1x1 convolution in->channels, and ``up`` = ConvTranspose2d(in->hidden) (4x4,
    stride 2, padding 1 for scale 2), LeakyReLU(0.2), Conv2d 3x3 hidden->channels.

    ``shared_up=True`` reproduces the released code, whose ``up`` is ``up_xy`` on all three planes (``up_xz`` and
    ``up_zy`` exist, for the checkpoint, but are never used). ``shared_up=False`` gives each plane its own branch.
    Both have the same parameters, so the choice travels in the state dict as the boolean buffer
    ``shared_up_marker``: loading weights made for the other choice is a ValueError, not a silent mismatch (a state
    dict without the marker, from before it existed, loads as the module's own choice).
    """

    PLANES = ("xy", "xz", "zy")

    def __init__(self, in_channels: int = 256, channels: int = 32, scale: int = 2, shared_up: bool = False,
                 hidden: int = 128):
        super().__init__()
        if not isinstance(scale, int) or scale < 1:
            raise ValueError(f"scale must be a positive int, got {scale!r}")
        self.in_channels, self.channels, self.scale, self.shared_up = in_channels, channels, scale, shared_up
        k, p = 2 * scale - scale % 2, scale // 2  # output = scale * input; (4, 1) for scale 2
        for name in self.PLANES:
            self.add_module(f"up_{name}", nn.Sequential(
                nn.ConvTranspose2d(in_channels, hidden, k, stride=scale, padding=p), nn.LeakyReLU(0.2),
                nn.Conv2d(hidden, channels, 3, padding=1)))
        for name in self.PLANES:
            self.add_module(f"skip_{name}", nn.Conv2d(in_channels, channels, 1))
        self.register_buffer("shared_up_marker", torch.tensor(bool(shared_up)))

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):
        key = prefix + "shared_up_marker"
        if key in state_dict and bool(state_dict[key]) != self.shared_up:
            got = bool(state_dict[key])
            where = prefix.rstrip(".") or "PlaneUpsampler"
            raise ValueError(
                f"{where}: these weights were made for shared_up={got} ("
                + ("GOHA's released IDUpsampler: up_xy on all three planes" if got else "one up branch per plane")
                + f"), this model has shared_up={self.shared_up}; build it with "
                + ("AvatarConfig.preset_config('goha-release') or shared_up=True" if got else "shared_up=False"))
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)
        if key not in state_dict and key in missing_keys:  # older weights: the module's own choice stands
            missing_keys.remove(key)

    def forward(self, x: Tensor) -> Tensor:  # [B, 3, in_channels, h, w] -> [B, 3, channels, scale*h, scale*w]
        _check_planes(x, 3, self.in_channels, "x")
        size = (x.shape[-2] * self.scale, x.shape[-1] * self.scale)
        out = []
        for i, name in enumerate(self.PLANES):
            xp = x[:, i]
            up = self.up_xy if self.shared_up else getattr(self, f"up_{name}")
            skip = getattr(self, f"skip_{name}")(F.interpolate(xp, size=size, mode="bilinear", align_corners=False))
            out.append(skip + up(xp))
        return torch.stack(out, dim=1)

    def extra_repr(self) -> str:
        return f"scale={self.scale}, shared_up={self.shared_up}"
