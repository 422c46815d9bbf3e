"""Deep3DFaceRecon's coefficient regressor: a ResNet-50 whose pooled features feed seven 1x1 convolutions
(identity 80, expression 64, texture 80, angles 3, SH gamma 27, tx/ty 2, tz 1: the 257-vector), with a loader
for its released checkpoint (``epoch_20.pth``, key ``net_recon``).

The ResNet-50 is written here with torchvision's parameter names (``conv1``, ``bn1``, ``layer1.0.conv1``,
``layer1.0.downsample.0``, ...), because torchvision does not import beside every torch build; its
checkpoint keys are those of Deep3DFaceRecon's ``ReconNetWrapper``: ``backbone.<torchvision name>`` and
``final_layers.<k>.weight|bias``. Input: RGB [B, 3, 224, 224] in [0, 1] (no mean/std normalisation), an aligned
face crop.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import Tensor, nn

from .._checkpoint import check_state_dict, load_torch_file
from .coeffs import Coeffs
from .model import MorphableModel

__all__ = ["ReconNet", "load_recon_checkpoint", "HEADS"]

#: (name, size) of the final 1x1 convolutions, in the order of the 257-vector.
HEADS = (("identity", 80), ("expression", 64), ("albedo", 80), ("rotation", 3), ("lighting", 27), ("txty", 2),
         ("tz", 1))


class _Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)  # stride on the 3x3 (v1.5)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class ResNet50Features(nn.Module):
    """torchvision's resnet50 up to the global average pool ([B, 2048, 1, 1]), same parameter names."""

    def __init__(self, layers=(3, 4, 6, 3)):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        inplanes = 64
        for i, (planes, blocks) in enumerate(zip((64, 128, 256, 512), layers)):
            stride = 1 if i == 0 else 2
            down = nn.Sequential(nn.Conv2d(inplanes, planes * 4, 1, stride=stride, bias=False),
                                 nn.BatchNorm2d(planes * 4))
            mods = [_Bottleneck(inplanes, planes, stride, down)]
            inplanes = planes * 4
            mods += [_Bottleneck(inplanes, planes) for _ in range(1, blocks)]
            setattr(self, f"layer{i + 1}", nn.Sequential(*mods))
        self.avgpool = nn.AdaptiveAvgPool2d(1)

    def forward(self, x: Tensor) -> Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.avgpool(x)


class ReconNet(nn.Module):
    """Deep3DFaceRecon's ``ReconNetWrapper`` (resnet50, no last fc): image [B, 3, 224, 224] in [0, 1] ->
    [B, 257]. The heads start at zero, as in Deep3DFaceRecon."""

    def __init__(self):
        super().__init__()
        self.backbone = ResNet50Features()
        self.final_layers = nn.ModuleList([nn.Conv2d(2048, k, 1, bias=True) for _, k in HEADS])
        for m in self.final_layers:
            nn.init.zeros_(m.weight)
            nn.init.zeros_(m.bias)

    def forward(self, image: Tensor) -> Tensor:
        if image.dim() != 4 or image.shape[1] != 3:
            raise ValueError(f"image must be [B, 3, H, W] RGB in [0, 1] (224 x 224 aligned crops), got {list(image.shape)}")
        x = self.backbone(image)
        return torch.flatten(torch.cat([layer(x) for layer in self.final_layers], dim=1), 1)

    def coeffs(self, image: Tensor, model: MorphableModel) -> Coeffs:
        """The regressed coefficients as :class:`Coeffs` of `model` (a BFM with 80/64/80 modes)."""
        return Coeffs.from_bfm257(self(image), model)


def load_recon_checkpoint(path: str | os.PathLike, map_location="cpu") -> ReconNet:
    """A :class:`ReconNet` with the weights of a Deep3DFaceRecon checkpoint (a dict with ``net_recon``, as
    its ``epoch_20.pth``; a bare state dict is accepted too). Checks every key and shape, with clear errors."""
    p = Path(path)
    ckpt = load_torch_file(p, "Deep3DFaceRecon checkpoint", map_location)
    state = ckpt.get("net_recon", ckpt) if isinstance(ckpt, dict) else None
    if not isinstance(state, dict):
        raise ValueError(f"{p}: expected a dict with 'net_recon' (Deep3DFaceRecon's epoch_*.pth)")
    state = {k.removeprefix("module."): v for k, v in state.items()}
    net = ReconNet()
    check_state_dict(net.state_dict(), state, p, "ReconNetWrapper(resnet50)")
    net.load_state_dict(state)
    return net.eval()
