"""VGG-19 feature extractor (the ``features`` part of torchvision's ``vgg19``), loaded from a local file.

Parameter names are torchvision's (``features.0.weight`` ... ``features.34.bias``), so torchvision's
``vgg19-dcbb9e9d.pth`` loads as is. torchvision itself is not needed. Only the convolutional trunk up to
conv5_4 and its ReLU (``features.0`` ... ``features.35``) is built; the last pool and the classifier are not.

Layer names (basicsr's ``NAMES['vgg19']``, by torchvision index)::

    0 conv1_1  1 relu1_1   2 conv1_2   3 relu1_2   4 pool1
    5 conv2_1  6 relu2_1   7 conv2_2   8 relu2_2   9 pool2
   10 conv3_1 11 relu3_1  12 conv3_2  13 relu3_2  14 conv3_3 15 relu3_3 16 conv3_4 17 relu3_4 18 pool3
   19 conv4_1 20 relu4_1  21 conv4_2  22 relu4_2  23 conv4_3 24 relu4_3 25 conv4_4 26 relu4_4 27 pool4
   28 conv5_1 29 relu5_1  30 conv5_2  31 relu5_2  32 conv5_3 33 relu5_3 34 conv5_4 35 relu5_4

A ``conv*`` name is the convolution's output (before its ReLU), a ``relu*`` name the activation after it.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping

import torch
from torch import Tensor, nn

from .._checkpoint import check_state_dict, load_torch_file

# torchvision's configuration "E" (vgg19): channels of each conv, "M" for a 2x2 max pool.
VGG19_CFG = (64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512)


def _layer_names() -> tuple[str, ...]:
    names, block, conv = [], 1, 1
    for v in VGG19_CFG:
        if v == "M":
            names.append(f"pool{block}")
            block, conv = block + 1, 1
        else:
            names += [f"conv{block}_{conv}", f"relu{block}_{conv}"]
            conv += 1
    return tuple(names)


VGG19_LAYER_NAMES: tuple[str, ...] = _layer_names()  # index i is torchvision's features[i]; 36 entries
VGG19_LAYER_INDEX: dict[str, int] = {n: i for i, n in enumerate(VGG19_LAYER_NAMES)}
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class VGG19Features(nn.Module):
    """torchvision's ``vgg19().features[:36]`` (conv1_1 ... relu5_4) with the same parameter names.

    The ReLUs are not in-place, so a ``conv*`` output taken by :meth:`forward` stays the pre-activation value.
    Random init (for tests and shape checks only): use :func:`load_vgg19_features` for real weights.
    """

    def __init__(self):
        super().__init__()
        layers: list[nn.Module] = []
        in_ch = 3
        for v in VGG19_CFG:
            if v == "M":
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
            else:
                layers += [nn.Conv2d(in_ch, v, kernel_size=3, padding=1), nn.ReLU(inplace=False)]
                in_ch = v
        self.features = nn.Sequential(*layers)

    def forward(self, x: Tensor, layers: Iterable[str]) -> dict[str, Tensor]:  # x: [B, 3, H, W]
        """Run the trunk up to the deepest requested layer.

        Args:
            x: [B, 3, H, W] ImageNet-normalised images (no normalisation is done here).
            layers: names from :data:`VGG19_LAYER_NAMES` (``"conv5_4"``, ``"relu3_4"``, ...).

        Returns:
            {name: [B, C_l, H / 2^k, W / 2^k]} for each requested name, k the number of pools before it.
        """
        wanted = set(layers)
        unknown = sorted(wanted - set(VGG19_LAYER_INDEX))
        if unknown:
            raise ValueError(f"layers must be names from VGG19_LAYER_NAMES (conv1_1 ... relu5_4), got {unknown}")
        if not wanted:
            return {}
        if x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f"x must be [B, 3, H, W], got {list(x.shape)}")
        last = max(VGG19_LAYER_INDEX[n] for n in wanted)
        out = {}
        for i in range(last + 1):
            x = self.features[i](x)
            name = VGG19_LAYER_NAMES[i]
            if name in wanted:
                out[name] = x
        return out


def _features_state_dict(state: Mapping[str, Tensor], path: str) -> dict[str, Tensor]:
    """The ``features.*`` entries of a torchvision vgg19 state dict (``classifier.*`` dropped), or of a bare
    ``vgg19().features`` state dict (keys ``0.weight`` ...), renamed to ``features.*``."""
    if not isinstance(state, Mapping):
        raise TypeError(f"the VGG-19 weights file {path!r} must hold a state dict (a mapping of names to tensors), "
                        f"got {type(state).__name__}")
    keys = [k for k in state if not str(k).startswith("classifier.")]
    if keys and all(str(k).split(".", 1)[0].isdigit() for k in keys):
        return {f"features.{k}": v for k, v in state.items() if k in keys}
    return {k: state[k] for k in keys}


def load_vgg19_features(path: str | os.PathLike, *, map_location="cpu") -> VGG19Features:
    """A :class:`VGG19Features` with the weights of a local torchvision VGG-19 checkpoint.

    Accepts torchvision's full ``vgg19`` state dict (e.g. ``vgg19-dcbb9e9d.pth``; ``classifier.*`` is ignored),
    a features-only dict with ``features.*`` keys, or the state dict of ``vgg19().features`` (keys
    ``0.weight`` ...). The 32 conv tensors (conv1_1 ... conv5_4, weight and bias) must all be present with
    torchvision's shapes; any other key is an error (a vgg19_bn or vgg16 file is refused, not half-loaded).
    Tensors are loaded as float32 on `map_location`; the model is returned in train mode with requires_grad
    parameters, like a fresh module (:class:`~oneshot.train.losses.PerceptualLoss` freezes it).

    Raises:
        FileNotFoundError: no file at `path`.
        TypeError: the file does not hold a state dict.
        ValueError: an unreadable file, missing or unexpected keys (counted, with examples), or a tensor of the
            wrong shape (key, received and expected shapes).
    """
    path = os.fspath(path)
    state = _features_state_dict(load_torch_file(path, "VGG-19 weights (torchvision's vgg19-dcbb9e9d.pth)",
                                                 map_location), path)
    with torch.device("meta"):  # no random init: every parameter comes from the file
        model = VGG19Features()
    check_state_dict(model.state_dict(), state, path, "torchvision vgg19 features")
    model.load_state_dict({k: v.to(torch.float32).contiguous() for k, v in state.items()}, strict=True,
                          assign=True)
    return model
