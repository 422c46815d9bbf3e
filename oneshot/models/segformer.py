"""The avatar's image encoder as GOHA (NVlabs/GOHA, ``src/models``) builds it: :class:`SegFormerEncoder`, the MiT
(SegFormer) encoder of Hugging Face ``transformers`` plus the all-MLP decode head up to, and excluding, its classifier
(no BatchNorm, no ReLU, no dropout). Image [B, C, H, W] -> features [B, 256, ceil(H/4), ceil(W/4)]. GOHA's
``template_net`` (3 channels), ``expr_net`` (3) and ``id_net`` (6).

Checkpoint names: :class:`SegFormerEncoder` keeps the transformers-4.x names as its own, whatever version is
installed: ``state_dict()`` emits them and ``load_state_dict()`` takes them (:mod:`.segformer_keys`), so its keys are
those of GOHA's checkpoint under ``template_net.``/``id_net.``/``expr_net.``. Only these two methods translate;
``named_parameters()`` and ``self.segformer`` keep the installed version's names.
"""

from __future__ import annotations

import copy
import os
import re
import warnings
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .segformer_keys import SUPPORTED_TRANSFORMERS, SegFormerKeyMap

__all__ = ["SegFormerEncoder", "SEGFORMER_PRESETS"]

_MIT = dict(num_attention_heads=[1, 2, 5, 8], sr_ratios=[8, 4, 2, 1], patch_sizes=[7, 3, 3, 3],
            strides=[4, 2, 2, 2], mlp_ratios=[4, 4, 4, 4], num_encoder_blocks=4)
#: SegFormer's MiT-b0 ... b5 (the encoders of nvidia/segformer-b* and nvidia/mit-b*). GOHA uses mit-b0.
SEGFORMER_PRESETS: dict[str, dict] = {
    "mit-b0": dict(_MIT, hidden_sizes=[32, 64, 160, 256], depths=[2, 2, 2, 2], decoder_hidden_size=256),
    "mit-b1": dict(_MIT, hidden_sizes=[64, 128, 320, 512], depths=[2, 2, 2, 2], decoder_hidden_size=256),
    "mit-b2": dict(_MIT, hidden_sizes=[64, 128, 320, 512], depths=[3, 4, 6, 3], decoder_hidden_size=768),
    "mit-b3": dict(_MIT, hidden_sizes=[64, 128, 320, 512], depths=[3, 4, 18, 3], decoder_hidden_size=768),
    "mit-b4": dict(_MIT, hidden_sizes=[64, 128, 320, 512], depths=[3, 8, 27, 3], decoder_hidden_size=768),
    "mit-b5": dict(_MIT, hidden_sizes=[64, 128, 320, 512], depths=[3, 6, 40, 3], decoder_hidden_size=768),
    # Not a released checkpoint: a quarter of mit-b0 for CPU smoke runs and the demo (about 1.8x faster training
    # steps of the "tiny" avatar on a 2-core CPU).
    "mit-tiny": dict(_MIT, hidden_sizes=[16, 32, 64, 128], depths=[1, 1, 1, 1], num_attention_heads=[1, 1, 2, 4],
                     decoder_hidden_size=64),
}
_ARCH_FIELDS = ("num_encoder_blocks", "hidden_sizes", "depths", "num_attention_heads", "sr_ratios", "patch_sizes",
                "strides", "mlp_ratios", "decoder_hidden_size")


def _architecture(cfg) -> dict:
    return {f: list(v) if isinstance(v := getattr(cfg, f), (list, tuple)) else v for f in _ARCH_FIELDS}


def _transformers():
    try:
        import transformers
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError(f"SegFormerEncoder needs the `transformers` package ({SUPPORTED_TRANSFORMERS}): "
                          f"pip install 'transformers{SUPPORTED_TRANSFORMERS}'") from e
    return transformers


def _conv_out(n: int, k: int, s: int) -> int:
    return (n + 2 * (k // 2) - k) // s + 1


class _LinearProj(nn.Module):
    """Per-token Linear C_i -> D (SegFormer's ``SegformerMLP``; the attribute name gives ``linear_c.i.proj``)."""

    def __init__(self, in_features: int, out_features: int):
        super().__init__()
        self.proj = nn.Linear(in_features, out_features)


class _DecodeHead(nn.Module):
    """SegFormer's all-MLP head up to ``linear_fuse``: stage maps -> [B, D, H0, W0], no norm, no activation."""

    def __init__(self, hidden_sizes: Sequence[int], out_channels: int):
        super().__init__()
        self.linear_c = nn.ModuleList(_LinearProj(c, out_channels) for c in hidden_sizes)
        self.linear_fuse = nn.Conv2d(out_channels * len(hidden_sizes), out_channels, 1, bias=False)

    def forward(self, features: Sequence[Tensor]) -> Tensor:  # [B, C_i, H_i, W_i] each -> [B, D, H_0, W_0]
        size = features[0].shape[-2:]
        maps = []
        for x, linear in zip(features, self.linear_c):
            b, _, h, w = x.shape
            y = linear.proj(x.flatten(2).transpose(1, 2))  # [B, h*w, D]
            y = y.transpose(1, 2).reshape(b, -1, h, w)
            maps.append(F.interpolate(y, size=size, mode="bilinear", align_corners=False))
        return self.linear_fuse(torch.cat(maps[::-1], dim=1))  # stages in reverse order: [s3, s2, s1, s0]


class SegFormerEncoder(nn.Module):
    """SegFormer (MiT) encoder + decode head without its classifier: images [B, C, H, W] -> [B, D, H', W'].

    D is ``decoder_hidden_size`` (256 for mit-b0/b1), H' = ceil(H/4), W' = ceil(W/4). The head projects every stage
    map to D channels (``decode_head.linear_c.i.proj``), resizes them bilinearly (align_corners False) to the
    stage-0 size, concatenates them in reverse stage order and fuses them with a bias-free 1x1 convolution
    (``decode_head.linear_fuse``); its output is returned raw, as GOHA uses it.

    The caller normalises the images; the encoder does not. GOHA feeds RGB in [-1, 1] mapped to [0, 1] and
    ImageNet-normalised (mean 0.485, 0.456, 0.406; std 0.229, 0.224, 0.225), per 3-channel image, so a 6-channel
    input is two such images stacked.

    Args:
        in_channels: input channels; the first patch embedding (a 7x7 stride-4 convolution for MiT) takes that many.
            GOHA: 3 (``template_net``, ``expr_net``) and 6 (``id_net``).
        config (str | SegformerConfig | None): a preset name from :data:`SEGFORMER_PRESETS` or a transformers
            ``SegformerConfig`` (copied; its ``num_channels`` is replaced by ``in_channels``). ``None``: mit-b0, or the
            checkpoint's configuration when ``pretrained`` is given (then an explicit ``config`` must match it).
        pretrained: a local Hugging Face folder (``config.json`` + weights) saved from a ``SegformerModel``,
            ``SegformerForSemanticSegmentation`` or ``SegformerForImageClassification``; read with
            ``local_files_only``, nothing is downloaded. The encoder's weights are taken, and the decode head's
            ``linear_c``/``linear_fuse`` when the folder has them (otherwise they keep their random values, with a
            warning); batch norm and classifier are dropped. When ``in_channels`` differs from the checkpoint's, the
            first patch-embedding convolution is freshly initialised, with a one-line warning.

    ``state_dict()``/``load_state_dict()`` use transformers-4.x names whatever version is installed (module doc).
    """

    def __init__(self, in_channels: int = 3, config=None, pretrained: str | os.PathLike | None = None):
        super().__init__()
        tf = _transformers()
        if not isinstance(in_channels, int) or in_channels < 1:
            raise ValueError(f"in_channels must be a positive int, got {in_channels!r}")
        ckpt_cfg = None
        if pretrained is not None:
            folder = Path(pretrained)
            if not (folder / "config.json").is_file():
                raise FileNotFoundError(f"pretrained must be a local Hugging Face folder with config.json, got "
                                        f"{str(pretrained)!r}")
            ckpt_cfg = tf.AutoConfig.from_pretrained(folder, local_files_only=True)
            if not isinstance(ckpt_cfg, tf.SegformerConfig):
                raise ValueError(f"{folder} holds a {type(ckpt_cfg).__name__}, not a SegformerConfig")
        cfg = self._resolve_config(tf, config, ckpt_cfg)
        cfg.num_channels = in_channels
        cfg.reshape_last_stage = True  # the head needs every stage as a map
        self.in_channels = in_channels
        self.out_channels = int(cfg.decoder_hidden_size)
        self.config = cfg
        self.segformer = tf.SegformerModel(cfg)
        self.decode_head = _DecodeHead(cfg.hidden_sizes, self.out_channels)

        self.key_map = SegFormerKeyMap(self.segformer, cfg)  # transformers-4.x checkpoint names, whatever version
        SegFormerKeyMap.register(self)

        self.min_size = next(n for n in range(1, 1 << 16) if self._fits(n))
        if pretrained is not None:
            self._load_pretrained(tf, Path(pretrained), ckpt_cfg)

    @staticmethod
    def _resolve_config(tf, config, ckpt_cfg):
        if config is None:
            config = ckpt_cfg if ckpt_cfg is not None else "mit-b0"
        if isinstance(config, str):
            if config not in SEGFORMER_PRESETS:
                raise ValueError(f"unknown SegFormer preset {config!r}; choose one of {sorted(SEGFORMER_PRESETS)} "
                                 f"or pass a transformers.SegformerConfig")
            cfg = tf.SegformerConfig(**copy.deepcopy(SEGFORMER_PRESETS[config]))
        elif isinstance(config, tf.SegformerConfig):
            cfg = copy.deepcopy(config)
        else:
            raise TypeError(f"config must be a preset name, a SegformerConfig or None, got {type(config).__name__}")
        if ckpt_cfg is not None:
            ours, theirs = _architecture(cfg), _architecture(ckpt_cfg)
            diff = {f: (ours[f], theirs[f]) for f in _ARCH_FIELDS if ours[f] != theirs[f]}
            if diff:
                raise ValueError(f"config and the pretrained checkpoint differ in (config, checkpoint): {diff}")
        return cfg

    def _stage_sizes(self, n: int) -> list[int]:
        sizes = []
        for k, s in zip(self.config.patch_sizes, self.config.strides):
            n = _conv_out(n, k, s)
            sizes.append(n)
        return sizes

    def _fits(self, n: int) -> bool:
        return all(m >= max(r, 1) for m, r in zip(self._stage_sizes(n), self.config.sr_ratios))

    def _load_pretrained(self, tf, folder: Path, ckpt_cfg) -> None:
        # transformers' own messages about the head/classifier keys it skips are silenced: ours say what happened.
        verbosity = tf.logging.get_verbosity()
        tf.logging.set_verbosity_error()
        try:
            # SegformerModel takes its weights from any SegFormer folder (SegformerForSemanticSegmentation cannot
            # load a SegformerModel folder in some 5.x releases, e.g. 5.12).
            hf, info = tf.SegformerModel.from_pretrained(folder, local_files_only=True, output_loading_info=True)
            head = None
            if any(k.startswith("decode_head.") for k in info["unexpected_keys"]):
                full, head_info = tf.SegformerForSemanticSegmentation.from_pretrained(
                    folder, local_files_only=True, output_loading_info=True)
                head, head_missing = full.decode_head, [k for k in head_info["missing_keys"] if "decode_head." in k]
        finally:
            tf.logging.set_verbosity(verbosity)
        if info["missing_keys"] or info["mismatched_keys"]:
            raise ValueError(f"{folder} does not hold a complete SegFormer encoder: missing "
                             f"{sorted(info['missing_keys'])[:4]}, mismatched {list(info['mismatched_keys'])[:4]}")

        weights = hf.state_dict()
        stem = [self.key_map.canonical_to_native[f"encoder.patch_embeddings.0.proj.{p}"] for p in ("weight", "bias")]
        if ckpt_cfg.num_channels != self.in_channels:
            weights = {k: v for k, v in weights.items() if k not in stem}
            warnings.warn(f"SegFormerEncoder: {folder} has a {ckpt_cfg.num_channels}-channel stem, this encoder takes "
                          f"{self.in_channels}: patch_embeddings.0.proj is freshly initialised", stacklevel=3)
        result = self.segformer.load_state_dict(weights, strict=False)
        if result.unexpected_keys or set(result.missing_keys) - set(stem):
            raise RuntimeError(f"pretrained encoder weights do not fit: {result}")
        if result.missing_keys:
            self.segformer.get_submodule(stem[0].rsplit(".", 1)[0]).reset_parameters()  # as a new nn.Conv2d

        if head is None:
            warnings.warn(f"SegFormerEncoder: {folder} has no decode head; decode_head.linear_c/linear_fuse keep "
                          f"their random initialisation", stacklevel=3)
            return
        head_missing = [k for k in head_missing if not re.search(r"decode_head\.(batch_norm|classifier)\.", k)]
        if head_missing:
            raise ValueError(f"{folder} holds an incomplete decode head: missing {sorted(head_missing)}")
        weights = {re.sub(r"^linear_projections\.", "linear_c.", k): v for k, v in head.state_dict().items()}
        self.decode_head.load_state_dict({k: v for k, v in weights.items()
                                          if k.startswith(("linear_c.", "linear_fuse."))}, strict=True)

    def _check_input(self, images: Tensor) -> None:
        if not isinstance(images, Tensor):
            raise TypeError(f"images must be a torch.Tensor, got {type(images).__name__}")
        if images.dim() != 4 or images.shape[1] != self.in_channels:
            raise ValueError(f"images must be [B, {self.in_channels}, H, W], got {list(images.shape)}")
        weight = self.decode_head.linear_fuse.weight
        if not images.is_floating_point() or images.dtype != weight.dtype:
            raise TypeError(f"images must have the encoder's dtype {weight.dtype}, got {images.dtype}")
        if images.device != weight.device:
            raise ValueError(f"images are on {images.device} but the encoder is on {weight.device}")
        h, w = images.shape[-2:]
        if min(h, w) < self.min_size:
            raise ValueError(f"images must be at least {self.min_size}x{self.min_size} for this configuration "
                             f"(sr_ratios {list(self.config.sr_ratios)}), got {h}x{w}")

    def forward(self, images: Tensor) -> Tensor:  # [B, in_channels, H, W] -> [B, D, ceil(H/4), ceil(W/4)]
        self._check_input(images)
        if images.shape[0] == 0:
            h, w = (self._stage_sizes(n)[0] for n in images.shape[-2:])
            return images.new_empty(0, self.out_channels, h, w)
        out = self.segformer(images, output_hidden_states=True, return_dict=True)
        return self.decode_head(out.hidden_states)

    def extra_repr(self) -> str:
        return f"in_channels={self.in_channels}, out_channels={self.out_channels}"
