"""The three pretrained networks the metrics need, written here with the parameter names of the files people
have, and loaded only from local paths (nothing is downloaded, nothing runs with random weights):

* :class:`LPIPS` (AlexNet backbone): torchvision's ``alexnet`` trunk (``features.0`` ... ``features.10``; the
  file is torchvision's ``alexnet-owt-7be5be79.pth``, its ``classifier.*`` ignored) and the five linear heads as the
  ``lpips`` package ships them (``lpips/weights/v0.1/alex.pth``: ``lin0.model.1.weight`` [1, 64, 1, 1] ...
  ``lin4.model.1.weight`` [1, 256, 1, 1]). LPIPS v0.1: inputs in [-1, 1], the package's scaling layer, features
  of relu1 ... relu5 unit-normalised over channels, squared differences weighted by the heads, spatially
  averaged and summed.
* :class:`FIDInception`: pytorch-fid's ``InceptionV3`` (the TensorFlow FID graph ported: torchvision's Inception
  v3 with the FID variants of the A, C and E blocks) up to the 2048-d pool3 features; the file is pytorch-fid's
  ``pt_inception-2015-12-05-6726825d.pth`` (its ``fc.*`` ignored). Inputs in [0, 1], resized to 299 x 299
  bilinearly (``align_corners=False``) and mapped to [-1, 1], as pytorch-fid does.
* :class:`ArcFace`: insightface's ``arcface_torch`` IResNet (``iresnet18/34/50/100/200``, told apart by the number
  of blocks in the file), e.g. ``ms1mv3_arcface_r100_fp16/backbone.pth``. Inputs are 112 x 112 aligned faces in
  [-1, 1]; the output is the 512-d embedding.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .._checkpoint import check_state_dict, load_torch_file

__all__ = ["LPIPS", "FIDInception", "ArcFace", "load_lpips", "load_fid_inception", "load_arcface",
           "installed_lpips_heads", "ARCFACE_TEMPLATE"]


def _state(obj, path: str, what: str) -> dict:
    if isinstance(obj, Mapping) and "state_dict" in obj and isinstance(obj["state_dict"], Mapping):
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping):
        raise TypeError(f"the {what} file {path!r} must hold a state dict, got {type(obj).__name__}")
    return {(k[7:] if str(k).startswith("module.") else str(k)): v for k, v in obj.items()}


def _load_into(model: nn.Module, state: dict, path: str, kind: str) -> nn.Module:
    check_state_dict(model.state_dict(), state, path, kind)
    model.load_state_dict({k: v.float().contiguous() for k, v in state.items()}, strict=True)
    return model.eval().requires_grad_(False)


# -- LPIPS ------------------------------------------------------------------------------------------------------

LPIPS_SHIFT = (-0.030, -0.088, -0.188)
LPIPS_SCALE = (0.458, 0.448, 0.450)
_ALEX_CHANNELS = (64, 192, 384, 256, 256)


class _Head(nn.Module):  # lpips' NetLinLayer: model = Sequential(Dropout, Conv2d(C, 1, 1, bias=False))
    def __init__(self, channels: int):
        super().__init__()
        self.model = nn.Sequential(nn.Dropout(), nn.Conv2d(channels, 1, 1, bias=False))


class LPIPS(nn.Module):
    """LPIPS v0.1 with the AlexNet backbone. ``forward(a, b)``: images [B, 3, H, W] in [-1, 1] -> [B].

    Parameters: ``features.{0,3,6,8,10}.{weight,bias}`` (torchvision's AlexNet trunk) and
    ``lin{0..4}.model.1.weight`` (the lpips heads). Random init is for tests only: use :func:`load_lpips`.
    """

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 64, 11, 4, 2), nn.ReLU(), nn.MaxPool2d(3, 2),
            nn.Conv2d(64, 192, 5, padding=2), nn.ReLU(), nn.MaxPool2d(3, 2),
            nn.Conv2d(192, 384, 3, padding=1), nn.ReLU(),
            nn.Conv2d(384, 256, 3, padding=1), nn.ReLU(),
            nn.Conv2d(256, 256, 3, padding=1), nn.ReLU())
        for i, c in enumerate(_ALEX_CHANNELS):
            self.add_module(f"lin{i}", _Head(c))
        self.register_buffer("shift", torch.tensor(LPIPS_SHIFT).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("scale", torch.tensor(LPIPS_SCALE).view(1, 3, 1, 1), persistent=False)

    def taps(self, x: Tensor) -> list[Tensor]:
        """relu1 ... relu5 of images [B, 3, H, W] in [-1, 1]."""
        x = (x - self.shift) / self.scale
        out = []
        for i, layer in enumerate(self.features):
            x = layer(x)
            if i in (1, 4, 7, 9, 11):
                out.append(x)
        return out

    def forward(self, a: Tensor, b: Tensor) -> Tensor:
        if a.dim() != 4 or a.shape[1] != 3 or a.shape != b.shape:
            raise ValueError(f"LPIPS takes two [B, 3, H, W] images of one shape, got {list(a.shape)} and "
                             f"{list(b.shape)}")
        fa, fb = self.taps(a.float()), self.taps(b.float())
        total = 0
        for i, (x, y) in enumerate(zip(fa, fb)):
            x = x / (x.square().sum(1, keepdim=True).sqrt() + 1e-10)
            y = y / (y.square().sum(1, keepdim=True).sqrt() + 1e-10)
            total = total + getattr(self, f"lin{i}").model((x - y).square()).mean((2, 3))
        return total.flatten()


def installed_lpips_heads() -> Path | None:
    """``weights/v0.1/alex.pth`` of an installed ``lpips`` package (found without importing it, which would need
    torchvision), or None."""
    import importlib.util

    try:
        spec = importlib.util.find_spec("lpips")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for loc in spec.submodule_search_locations:
        p = Path(loc) / "weights" / "v0.1" / "alex.pth"
        if p.is_file():
            return p
    return None


def load_lpips(alexnet: str | os.PathLike, heads: str | os.PathLike | None = None, *,
               map_location="cpu") -> LPIPS:
    """LPIPS (AlexNet) from torchvision's AlexNet weights (`alexnet`, e.g. ``alexnet-owt-7be5be79.pth``; a bare
    ``features`` dict also loads) and the lpips package's linear heads (`heads`, ``alex.pth``; default: the
    installed ``lpips`` package's copy). Wrong or missing keys and shapes are named errors."""
    if heads is None:
        heads = installed_lpips_heads()
        if heads is None:
            raise FileNotFoundError("LPIPS linear heads: give the lpips package's weights/v0.1/alex.pth (pip install "
                                    "lpips --no-deps puts it in site-packages, where it is found by itself)")
    a_path, h_path = os.fspath(alexnet), os.fspath(heads)
    trunk = _state(load_torch_file(a_path, "AlexNet weights (torchvision's alexnet-owt-7be5be79.pth)", map_location),
                   a_path, "AlexNet")
    trunk = {(k if k.startswith("features.") else f"features.{k}"): v for k, v in trunk.items()
             if not k.startswith("classifier.")}
    lin = _state(load_torch_file(h_path, "LPIPS linear heads (lpips' weights/v0.1/alex.pth)", map_location), h_path,
                 "LPIPS heads")
    model = LPIPS()
    want = model.state_dict()
    check_state_dict({k: v for k, v in want.items() if k.startswith("features.")}, trunk, a_path,
                     "torchvision alexnet (features)")
    check_state_dict({k: v for k, v in want.items() if k.startswith("lin")}, lin, h_path, "lpips v0.1 alex heads")
    return _load_into(model, {**trunk, **lin}, f"{a_path} + {h_path}", "LPIPS")


# -- FID Inception ----------------------------------------------------------------------------------------------

class _Conv(nn.Module):  # torchvision's BasicConv2d
    def __init__(self, cin: int, cout: int, **kw):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, bias=False, **kw)
        self.bn = nn.BatchNorm2d(cout, eps=0.001)

    def forward(self, x):
        return F.relu(self.bn(self.conv(x)))


def _avg3(x):  # the FID graph's average pool: padding not counted
    return F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)


class _BlockA(nn.Module):
    def __init__(self, cin: int, pool: int):
        super().__init__()
        self.branch1x1 = _Conv(cin, 64, kernel_size=1)
        self.branch5x5_1 = _Conv(cin, 48, kernel_size=1)
        self.branch5x5_2 = _Conv(48, 64, kernel_size=5, padding=2)
        self.branch3x3dbl_1 = _Conv(cin, 64, kernel_size=1)
        self.branch3x3dbl_2 = _Conv(64, 96, kernel_size=3, padding=1)
        self.branch3x3dbl_3 = _Conv(96, 96, kernel_size=3, padding=1)
        self.branch_pool = _Conv(cin, pool, kernel_size=1)

    def forward(self, x):
        return torch.cat([self.branch1x1(x), self.branch5x5_2(self.branch5x5_1(x)),
                          self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
                          self.branch_pool(_avg3(x))], 1)


class _BlockB(nn.Module):
    def __init__(self, cin: int):
        super().__init__()
        self.branch3x3 = _Conv(cin, 384, kernel_size=3, stride=2)
        self.branch3x3dbl_1 = _Conv(cin, 64, kernel_size=1)
        self.branch3x3dbl_2 = _Conv(64, 96, kernel_size=3, padding=1)
        self.branch3x3dbl_3 = _Conv(96, 96, kernel_size=3, stride=2)

    def forward(self, x):
        return torch.cat([self.branch3x3(x), self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
                          F.max_pool2d(x, 3, stride=2)], 1)


class _BlockC(nn.Module):
    def __init__(self, cin: int, c7: int):
        super().__init__()
        self.branch1x1 = _Conv(cin, 192, kernel_size=1)
        self.branch7x7_1 = _Conv(cin, c7, kernel_size=1)
        self.branch7x7_2 = _Conv(c7, c7, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7_3 = _Conv(c7, 192, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_1 = _Conv(cin, c7, kernel_size=1)
        self.branch7x7dbl_2 = _Conv(c7, c7, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_3 = _Conv(c7, c7, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7dbl_4 = _Conv(c7, c7, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_5 = _Conv(c7, 192, kernel_size=(1, 7), padding=(0, 3))
        self.branch_pool = _Conv(cin, 192, kernel_size=1)

    def forward(self, x):
        b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        d = x
        for k in range(1, 6):
            d = getattr(self, f"branch7x7dbl_{k}")(d)
        return torch.cat([self.branch1x1(x), b7, d, self.branch_pool(_avg3(x))], 1)


class _BlockD(nn.Module):
    def __init__(self, cin: int):
        super().__init__()
        self.branch3x3_1 = _Conv(cin, 192, kernel_size=1)
        self.branch3x3_2 = _Conv(192, 320, kernel_size=3, stride=2)
        self.branch7x7x3_1 = _Conv(cin, 192, kernel_size=1)
        self.branch7x7x3_2 = _Conv(192, 192, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7x3_3 = _Conv(192, 192, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7x3_4 = _Conv(192, 192, kernel_size=3, stride=2)

    def forward(self, x):
        b = x
        for k in range(1, 5):
            b = getattr(self, f"branch7x7x3_{k}")(b)
        return torch.cat([self.branch3x3_2(self.branch3x3_1(x)), b, F.max_pool2d(x, 3, stride=2)], 1)


class _BlockE(nn.Module):
    def __init__(self, cin: int, max_pool: bool):
        super().__init__()
        self.max_pool = max_pool  # FID's Mixed_7c pools by max, Mixed_7b by average (padding not counted)
        self.branch1x1 = _Conv(cin, 320, kernel_size=1)
        self.branch3x3_1 = _Conv(cin, 384, kernel_size=1)
        self.branch3x3_2a = _Conv(384, 384, kernel_size=(1, 3), padding=(0, 1))
        self.branch3x3_2b = _Conv(384, 384, kernel_size=(3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = _Conv(cin, 448, kernel_size=1)
        self.branch3x3dbl_2 = _Conv(448, 384, kernel_size=3, padding=1)
        self.branch3x3dbl_3a = _Conv(384, 384, kernel_size=(1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = _Conv(384, 384, kernel_size=(3, 1), padding=(1, 0))
        self.branch_pool = _Conv(cin, 192, kernel_size=1)

    def forward(self, x):
        b3 = self.branch3x3_1(x)
        d = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        pool = F.max_pool2d(x, 3, stride=1, padding=1) if self.max_pool else _avg3(x)
        return torch.cat([self.branch1x1(x), self.branch3x3_2a(b3), self.branch3x3_2b(b3),
                          self.branch3x3dbl_3a(d), self.branch3x3dbl_3b(d), self.branch_pool(pool)], 1)


class FIDInception(nn.Module):
    """pytorch-fid's FID Inception v3 up to pool3. ``forward(x)``: images [B, 3, H, W] in [0, 1] -> [B, 2048].

    Parameter names are those of pytorch-fid's weights file (``Conv2d_1a_3x3.conv.weight``,
    ``Mixed_7c.branch_pool.bn.running_var``, ...). Random init is for tests only: use :func:`load_fid_inception`.
    """

    def __init__(self):
        super().__init__()
        self.Conv2d_1a_3x3 = _Conv(3, 32, kernel_size=3, stride=2)
        self.Conv2d_2a_3x3 = _Conv(32, 32, kernel_size=3)
        self.Conv2d_2b_3x3 = _Conv(32, 64, kernel_size=3, padding=1)
        self.Conv2d_3b_1x1 = _Conv(64, 80, kernel_size=1)
        self.Conv2d_4a_3x3 = _Conv(80, 192, kernel_size=3)
        self.Mixed_5b, self.Mixed_5c, self.Mixed_5d = _BlockA(192, 32), _BlockA(256, 64), _BlockA(288, 64)
        self.Mixed_6a = _BlockB(288)
        self.Mixed_6b, self.Mixed_6c = _BlockC(768, 128), _BlockC(768, 160)
        self.Mixed_6d, self.Mixed_6e = _BlockC(768, 160), _BlockC(768, 192)
        self.Mixed_7a = _BlockD(768)
        self.Mixed_7b, self.Mixed_7c = _BlockE(1280, max_pool=False), _BlockE(2048, max_pool=True)

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f"FIDInception takes images [B, 3, H, W] in [0, 1], got {list(x.shape)}")
        x = F.interpolate(x.float(), size=(299, 299), mode="bilinear", align_corners=False)
        x = 2 * x - 1
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
        x = F.max_pool2d(x, 3, stride=2)
        x = F.max_pool2d(self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x)), 3, stride=2)
        for name in ("5b", "5c", "5d", "6a", "6b", "6c", "6d", "6e", "7a", "7b", "7c"):
            x = getattr(self, f"Mixed_{name}")(x)
        return x.mean((2, 3))


def load_fid_inception(path: str | os.PathLike, *, map_location="cpu") -> FIDInception:
    """:class:`FIDInception` with pytorch-fid's ``pt_inception-2015-12-05-6726825d.pth`` (``fc.*`` and any
    ``num_batches_tracked`` ignored; every other tensor must be there with its shape)."""
    p = os.fspath(path)
    state = _state(load_torch_file(p, "FID Inception weights (pytorch-fid's pt_inception-2015-12-05-6726825d.pth)",
                                   map_location), p, "FID Inception")
    state = {k: v for k, v in state.items() if not k.startswith(("fc.", "AuxLogits."))
             and not k.endswith("num_batches_tracked")}
    model = FIDInception()
    want = {k: v for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}
    check_state_dict(want, state, p, "pytorch-fid Inception v3")
    model.load_state_dict({k: v.float().contiguous() for k, v in state.items()}, strict=False)
    return model.eval().requires_grad_(False)


# -- ArcFace ----------------------------------------------------------------------------------------------------

#: insightface's five-point template for 112 x 112 ArcFace crops (eyes, nose tip, mouth corners; pixels).
ARCFACE_TEMPLATE = ((38.2946, 51.6963), (73.5318, 51.5014), (56.0252, 71.7366), (41.5493, 92.3655),
                    (70.7299, 92.2041))
_ARCFACE_DEPTHS = {(2, 2, 2, 2): "r18", (3, 4, 6, 3): "r34", (3, 4, 14, 3): "r50", (3, 13, 30, 3): "r100",
                   (6, 26, 60, 6): "r200"}


class _IBlock(nn.Module):  # arcface_torch's IBasicBlock
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin, eps=1e-5)
        self.conv1 = nn.Conv2d(cin, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout, eps=1e-5)
        self.prelu = nn.PReLU(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, stride, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(cout, eps=1e-5)
        self.downsample = (nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout, eps=1e-5))
                           if stride != 1 or cin != cout else None)

    def forward(self, x):
        out = self.bn3(self.conv2(self.prelu(self.bn2(self.conv1(self.bn1(x))))))
        return out + (x if self.downsample is None else self.downsample(x))


class ArcFace(nn.Module):
    """arcface_torch's IResNet with `layers` blocks per stage (default r100: 3, 13, 30, 3).
    ``forward(x)``: aligned faces [B, 3, 112, 112] in [-1, 1] -> embeddings [B, 512]."""

    def __init__(self, layers: tuple[int, int, int, int] = (3, 13, 30, 3)):
        super().__init__()
        self.layers_spec = tuple(layers)
        self.conv1 = nn.Conv2d(3, 64, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(64, eps=1e-5)
        self.prelu = nn.PReLU(64)
        cin = 64
        for i, (n, cout) in enumerate(zip(layers, (64, 128, 256, 512))):
            blocks = [_IBlock(cin, cout, 2)] + [_IBlock(cout, cout, 1) for _ in range(n - 1)]
            self.add_module(f"layer{i + 1}", nn.Sequential(*blocks))
            cin = cout
        self.bn2 = nn.BatchNorm2d(512, eps=1e-5)
        self.fc = nn.Linear(512 * 7 * 7, 512)
        self.features = nn.BatchNorm1d(512, eps=1e-5)

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != 4 or tuple(x.shape[1:]) != (3, 112, 112):
            raise ValueError(f"ArcFace takes aligned faces [B, 3, 112, 112] in [-1, 1], got {list(x.shape)}")
        x = self.prelu(self.bn1(self.conv1(x.float())))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.features(self.fc(self.bn2(x).flatten(1)))


def load_arcface(path: str | os.PathLike, *, map_location="cpu") -> ArcFace:
    """:class:`ArcFace` from an arcface_torch backbone file (``backbone.pth``; a ``module.`` prefix is dropped).
    The depth (r18 ... r200) is read from the block counts in the file."""
    p = os.fspath(path)
    state = _state(load_torch_file(p, "ArcFace weights (insightface arcface_torch backbone.pth)", map_location), p,
                   "ArcFace")
    counts = []
    for stage in range(1, 5):
        idx = {int(m.group(1)) for k in state if (m := re.match(rf"layer{stage}\.(\d+)\.", k))}
        counts.append(max(idx) + 1 if idx else 0)
    if tuple(counts) not in _ARCFACE_DEPTHS:
        raise ValueError(f"{p}: not an arcface_torch IResNet backbone: blocks per stage {counts}, expected one of "
                         f"{sorted(_ARCFACE_DEPTHS)} (r18 ... r200)")
    state = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
    model = ArcFace(tuple(counts))
    want = {k: v for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}
    check_state_dict(want, state, p, f"arcface_torch iresnet {_ARCFACE_DEPTHS[tuple(counts)]}")
    model.load_state_dict({k: v.float().contiguous() for k, v in state.items()}, strict=False)
    return model.eval().requires_grad_(False)
