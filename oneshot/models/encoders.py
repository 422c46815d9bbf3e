"""The avatar's image encoders and tri-plane heads, as GOHA (NVlabs/GOHA, ``src/models``) builds them.

* :class:`SegFormerEncoder`: the MiT (SegFormer) encoder of Hugging Face ``transformers`` plus the all-MLP decode
  head up to, and excluding, its classifier (no BatchNorm, no ReLU, no dropout). Image [B, C, H, W] ->
  features [B, 256, ceil(H/4), ceil(W/4)]. GOHA's ``template_net`` (3 channels), ``expr_net`` (3) and ``id_net`` (6).
* :class:`Embed2Plane`: features [B, 256, h, w] -> tri-plane [B, 3, 32, 2h, 2w] (``embedding2neutral``/``expr``).
* :class:`PlaneUpsampler`: tri-plane [B, 3, 256, h, w] -> [B, 3, 32, 2h, 2w] (GOHA's ``IDUpsampler``).

Checkpoint names. ``transformers`` 5 renamed every SegFormer parameter (``encoder.block.0.0.attention.self.query``
became ``stages.0.blocks.0.attention.q_proj``, ...). :class:`SegFormerEncoder` keeps the transformers-4.x names as
its own, whatever version is installed: ``state_dict()`` emits them and ``load_state_dict()`` takes them, so its
keys are those of GOHA's checkpoint under ``template_net.``/``id_net.``/``expr_net.``. Only these two methods
translate; ``named_parameters()`` and ``self.segformer`` keep the installed version's names.
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

__all__ = ["SegFormerEncoder", "Embed2Plane", "PlaneUpsampler", "SEGFORMER_PRESETS", "SUPPORTED_TRANSFORMERS"]

#: The ``transformers`` versions whose SegFormer layouts were checked against GOHA's checkpoint names.
SUPPORTED_TRANSFORMERS = ">=4.40,<6"

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


# ---------------------------------------------------------------------------------------------------------------
# Checkpoint names: transformers-4.x SegformerModel names are canonical.


def _canonical_encoder_keys(cfg) -> list[str]:
    """Every state-dict key of a transformers-4.x ``SegformerModel`` built from cfg, in its order."""
    n = cfg.num_encoder_blocks
    keys = [f"encoder.patch_embeddings.{i}.{m}.{p}" for i in range(n) for m in ("proj", "layer_norm")
            for p in ("weight", "bias")]
    for i in range(n):
        for j in range(cfg.depths[i]):
            mods = ["layer_norm_1", "attention.self.query", "attention.self.key", "attention.self.value"]
            if cfg.sr_ratios[i] > 1:
                mods += ["attention.self.sr", "attention.self.layer_norm"]
            mods += ["attention.output.dense", "layer_norm_2", "mlp.dense1", "mlp.dwconv.dwconv", "mlp.dense2"]
            keys += [f"encoder.block.{i}.{j}.{m}.{p}" for m in mods for p in ("weight", "bias")]
    keys += [f"encoder.layer_norm.{i}.{p}" for i in range(n) for p in ("weight", "bias")]
    return keys


# transformers>=5 name -> 4.x name. Stage containers first, then the pieces inside a block.
_STAGE_RENAMES = [
    (re.compile(r"^stages\.(\d+)\.patch_embeddings\."), r"encoder.patch_embeddings.\1."),
    (re.compile(r"^stages\.(\d+)\.blocks\.(\d+)\."), r"encoder.block.\1.\2."),
    (re.compile(r"^stages\.(\d+)\.layer_norm\."), r"encoder.layer_norm.\1."),
]
_BLOCK_RENAMES = [
    (re.compile(r"\.layernorm_before\."), ".layer_norm_1."),
    (re.compile(r"\.layernorm_after\."), ".layer_norm_2."),
    (re.compile(r"\.attention\.q_proj\."), ".attention.self.query."),
    (re.compile(r"\.attention\.k_proj\."), ".attention.self.key."),
    (re.compile(r"\.attention\.v_proj\."), ".attention.self.value."),
    (re.compile(r"\.attention\.o_proj\."), ".attention.output.dense."),
    (re.compile(r"\.attention\.sequence_reduction\.sequence_reduction\."), ".attention.self.sr."),
    (re.compile(r"\.attention\.sequence_reduction\.layer_norm\."), ".attention.self.layer_norm."),
    (re.compile(r"\.mlp\.fc1\."), ".mlp.dense1."),
    (re.compile(r"\.mlp\.fc2\."), ".mlp.dense2."),
]


def _to_canonical(native: str) -> str:
    for pattern, repl in _STAGE_RENAMES + _BLOCK_RENAMES:
        native = pattern.sub(repl, native)
    return native


def _name_maps(model: nn.Module, cfg) -> tuple[dict[str, str], dict[str, str], list[str]]:
    """(native -> canonical, canonical -> native, canonical order) for a SegformerModel, checked to be exact."""
    native = list(model.state_dict(keep_vars=True))
    canonical = _canonical_encoder_keys(cfg)
    n2c = {k: _to_canonical(k) for k in native}
    if sorted(n2c.values()) != sorted(canonical):
        import transformers

        odd = sorted(set(n2c.values()) ^ set(canonical))[:6]
        raise RuntimeError(
            f"transformers {transformers.__version__} names SegformerModel's parameters in a way oneshot cannot map "
            f"to its checkpoint names (e.g. {odd}); supported: transformers{SUPPORTED_TRANSFORMERS}")
    return n2c, {c: n for n, c in n2c.items()}, canonical


def _emit_canonical(module: SegFormerEncoder, state_dict, prefix: str, local_metadata) -> None:
    """state_dict post-hook: rename this encoder's ``segformer.*`` keys to 4.x names, in 4.x order."""
    if module._identity_names:
        return
    seg = prefix + "segformer."
    own = [k for k in state_dict if k.startswith(prefix)]  # the tail of state_dict: saved just now
    items = [(k, state_dict.pop(k)) for k in own]
    renamed = {module._n2c[k[len(seg):]]: v for k, v in items if k.startswith(seg) and k[len(seg):] in module._n2c}
    emitted = False
    for k, v in items:
        if k.startswith(seg) and k[len(seg):] in module._n2c:
            if not emitted:
                state_dict.update((seg + c, renamed[c]) for c in module._canonical_order)
                emitted = True
        else:
            state_dict[k] = v


def _accept_canonical(module: SegFormerEncoder, state_dict, prefix, local_metadata, strict, missing_keys,
                      unexpected_keys, error_msgs) -> None:
    """load_state_dict pre-hook: rename 4.x names to the installed version's; other keys pass untouched."""
    module._loading = (prefix, error_msgs)
    if module._identity_names:
        return
    seg = prefix + "segformer."
    for k in [k for k in state_dict if k.startswith(seg)]:
        native = module._c2n.get(k[len(seg):])
        if native is not None:
            state_dict[seg + native] = state_dict.pop(k)


def _report_canonical(module: SegFormerEncoder, incompatible_keys) -> None:
    """load_state_dict post-hook: missing keys and size mismatches are reported with 4.x names."""
    loading, module._loading = module._loading, None
    if module._identity_names or loading is None:
        return
    prefix, error_msgs = loading
    seg = prefix + "segformer."

    def canon(key: str) -> str:
        return seg + module._n2c[key[len(seg):]] if key.startswith(seg) and key[len(seg):] in module._n2c else key

    incompatible_keys.missing_keys[:] = [canon(k) for k in incompatible_keys.missing_keys]
    error_msgs[:] = [re.sub(r"(?<=^size mismatch for )(\S+)(?=:)", lambda m: canon(m.group(1)), msg)
                     for msg in error_msgs]


# ---------------------------------------------------------------------------------------------------------------


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

        self._n2c, self._c2n, self._canonical_order = _name_maps(self.segformer, cfg)
        self._identity_names = all(n == c for n, c in self._n2c.items())
        self._loading = None
        self.register_state_dict_post_hook(_emit_canonical)
        self.register_load_state_dict_pre_hook(_accept_canonical)
        self.register_load_state_dict_post_hook(_report_canonical)

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
        stem = [self._c2n[f"encoder.patch_embeddings.0.proj.{p}"] for p in ("weight", "bias")]
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


# ---------------------------------------------------------------------------------------------------------------


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
