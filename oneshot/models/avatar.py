"""``OneShotAvatar``: the three tri-plane branches, the volume renderer and the super-resolution, assembled.

Images are [B, 3, S, S] in [-1, 1] with the background removed (S = config.image_size); cameras are 25-float
labels (:mod:`oneshot.cameras`); coefficients are :class:`~oneshot.face3d.Coeffs` of the morphable model the
avatar was built for (refused otherwise). The branches (paper, Sec. 3):

* canonical: the source image with brows, eyes and mouth masked out (the 3DMM's region masks at the source
  pose and expression, dilated) -> SegFormer -> embed-to-plane -> T_c (plus a learned template tri-plane when
  ``config.template_planes``: not in the paper, it speeds up learning the mean head a lot; see
  :class:`~oneshot.models.PlaneTemplate`);
* expression: the 3DMM's frontal render of the source identity with the target expression (at
  ``face_render_size``, resized to S) -> SegFormer -> embed-to-plane -> T_e;
* appearance: the base planes (T_c, or T_c + T_e as the released code) rendered from the source camera at
  ``lift_resolution``; one point per pixel at its depth; a 6-channel SegFormer on [source * M + render * (1 - M),
  render] gives each point a feature; ``rasterize_points`` puts them on the three planes; an upsampler -> T_a.
  M = erosion of (1 - R_neutral)(1 - R_source), R the 3DMM's eye/brow/mouth masks at the source pose with the
  neutral and with the source expression.

T = T_c + T_e + T_a is rendered from the target camera; the RGB of the features goes through the
super-resolution network.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .. import cameras
from ..face3d import Coeffs, MorphableModel, frontal_render, load_model, neutral_render, render
from ..ops import rasterize_points
from .config import AvatarConfig
from .decoder import TriplaneDecoder
from .gfpgan import SuperResolution
from .plane_heads import Embed2Plane, PlaneTemplate, PlaneUpsampler
from .segformer import SegFormerEncoder
from .volume import VolumeRenderer, VolumeRenderOutput

__all__ = ["OneShotAvatar", "Avatar", "AnimateOutput", "STAGES", "TRAINED_PARTS"]

STAGES = (1, 2)
#: The parts a checkpoint records as trained: "low_res" (stage 1: encoders, heads, upsampler, decoder) and
#: "super_resolution" (stage 2).
TRAINED_PARTS = ("low_res", "super_resolution")
_MEAN = (0.485, 0.456, 0.406)
_STD = (0.229, 0.224, 0.225)
# Offsets of the per-render random streams when a seed is given (so that animate(reconstruct()) draws what
# forward() draws for the same render).
_STREAM = {"lift": 0, "full": 1, "canonical": 2, "canonical+expression": 3, "neutral": 4, "sr": 5}


@dataclass
class Avatar:
    """What :meth:`OneShotAvatar.reconstruct` caches for a source: everything that does not depend on the
    target (with the "canonical" lifting base, the appearance planes too)."""

    canonical: Tensor  # [B, 3, C, P, P] T_c
    source_camera: Tensor  # [B, 25]
    source_coeffs: Coeffs
    source_norm: Tensor  # [B, 3, S, S] the ImageNet-normalised source image
    blend_mask: Tensor  # [B, 1, S, S] region mask R_neutral of the appearance blend, before the source's part
    source_regions: Tensor  # [B, 1, S, S] 1 outside the source's eyes, brows and mouth (dilated)
    appearance: Tensor | None  # [B, 3, C, P, P] T_a when it depends only on the source
    lift: VolumeRenderOutput | None  # the lifting render when cached
    seed: int | None

    @property
    def batch_size(self) -> int:
        return self.canonical.shape[0]


class AnimateOutput(NamedTuple):
    features: Tensor  # [B, C, r, r] low-res features (first three: RGB in [-1, 1])
    depth: Tensor  # [B, 1, r, r]
    opacity: Tensor  # [B, 1, r, r]
    image: Tensor | None  # [B, 3, sr, sr] the super-resolved image in [-1, 1] (None when skipped)


def _seeded(seed: int | None, stream: str, device) -> torch.Generator | None:
    if seed is None:
        return None
    return torch.Generator(device=device).manual_seed(int(seed) * 16 + _STREAM[stream])


class OneShotAvatar(nn.Module):
    """The avatar model of "Generalizable One-shot Neural Head Avatar" as one ``nn.Module``.

    Args:
        config: an :class:`AvatarConfig` or a preset name ("paper", "goha-release", "tiny").
        face_model: the morphable model for the 3DMM renders (default: the built-in one); its fingerprint is
            recorded in the config, and coefficients of another model are refused.
        backend: backend of the ops (None: the fastest available).
        pretrained_encoder (str | os.PathLike | None): optional local Hugging Face SegFormer folder for the three
            encoders.

    Stages: :meth:`set_stage` (1: everything but the super-resolution trains; 2: only the super-resolution).
    """

    def __init__(self, config: AvatarConfig | str = "paper", face_model: MorphableModel | None = None, *,
                 backend: str | None = None, pretrained_encoder=None):
        super().__init__()
        if isinstance(config, str):
            config = AvatarConfig.preset_config(config)
        face_model = face_model if face_model is not None else load_model()
        if config.face_model is None:
            config.face_model = face_model.fingerprint
        elif config.face_model != face_model.fingerprint:
            raise ValueError(f"this avatar was built for morphable model {config.face_model}, got "
                             f"{face_model.fingerprint}")
        self.config = c = config
        self.__dict__["face_model"] = face_model  # not a submodule: its buffers stay out of the state dict
        C, E = c.plane_channels, c.encoder_channels
        self.canonical_encoder = SegFormerEncoder(3, config=c.encoder, pretrained=pretrained_encoder)
        self.canonical_head = Embed2Plane(E, 3, C, hidden=c.embed_hidden)
        self.canonical_template = (PlaneTemplate(3, C, c.plane_size, c.template_lr_multiplier)
                                   if c.template_planes else None)
        self.expression_encoder = SegFormerEncoder(3, config=c.encoder, pretrained=pretrained_encoder)
        self.expression_head = Embed2Plane(E, 3, C, hidden=c.embed_hidden)
        self.appearance_encoder = SegFormerEncoder(6, config=c.encoder, pretrained=pretrained_encoder)
        self.appearance_upsampler = PlaneUpsampler(E, C, hidden=c.upsampler_hidden, shared_up=c.shared_up)
        self.decoder = TriplaneDecoder(C, c.decoder_hidden, C)
        self.renderer = VolumeRenderer(c.render_settings(), backend=backend)
        self.super_resolution = SuperResolution(out_size=c.sr_out_size, narrow=c.sr_narrow,
                                                channel_multiplier=c.sr_channel_multiplier,
                                                num_style_feat=c.sr_style_feat, num_mlp=c.sr_num_mlp)
        self.register_buffer("image_mean", torch.tensor(_MEAN).reshape(1, 3, 1, 1), persistent=False)
        self.register_buffer("image_std", torch.tensor(_STD).reshape(1, 3, 1, 1), persistent=False)
        self.stage = 1
        self.set_stage(1)
        #: Which parts have been trained (:data:`TRAINED_PARTS`): empty for a new model; set by the trainer and the
        #: GOHA converter, saved with the weights. None: not recorded (a checkpoint older than the record).
        self.trained_parts: frozenset[str] | None = frozenset()

    # -- housekeeping ---------------------------------------------------------------------------------------
    def _apply(self, fn, recurse=True):
        super()._apply(fn, recurse)
        self.__dict__["face_model"] = self.face_model._apply(fn)
        return self

    def set_stage(self, stage: int) -> OneShotAvatar:
        """Stage 1 trains the encoders, heads, upsampler and decoder; stage 2 only the super-resolution."""
        if stage not in STAGES:
            raise ValueError(f"stage must be one of {STAGES}, got {stage!r}")
        self.stage = stage
        for name, module in self.named_children():
            module.requires_grad_((name == "super_resolution") == (stage == 2))
        return self

    @property
    def super_resolution_trained(self) -> bool:
        """Whether the super-resolution network was ever trained (True when the checkpoint does not say): an
        untrained one turns a good low-resolution render into colour noise."""
        return self.trained_parts is None or "super_resolution" in self.trained_parts

    def low_res_parameters(self):
        return [p for n, p in self.named_parameters() if not n.startswith("super_resolution.")]

    def save(self, path) -> None:
        """Weights (safetensors) with the config and the trained parts (JSON, in the file's metadata)."""
        from safetensors.torch import save_file

        state = {k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}
        meta = {"format": "oneshot-avatar", "config": self.config.to_json()}
        if self.trained_parts is not None:
            meta["trained"] = json.dumps(sorted(self.trained_parts))
        save_file(state, str(path), metadata=meta)

    @classmethod
    def load(cls, path, face_model: MorphableModel | None = None, *, map_location="cpu", **kwargs) -> OneShotAvatar:
        """The avatar saved by :meth:`save` (strict: every key and shape must match its config)."""
        from safetensors import safe_open
        from safetensors.torch import load_file

        p = Path(path)
        if not p.is_file():
            raise FileNotFoundError(f"avatar checkpoint: no such file: {p}")
        try:
            with safe_open(str(p), framework="pt") as f:
                meta = f.metadata() or {}
        except Exception as e:  # noqa: BLE001 - safetensors raises its own error types
            raise ValueError(f"{p}: not a safetensors file ({e})") from None
        if meta.get("format") != "oneshot-avatar" or "config" not in meta:
            raise ValueError(f"{p}: not a oneshot avatar checkpoint (no 'oneshot-avatar' config in its metadata)")
        config = AvatarConfig.from_json(meta["config"])
        model = cls(config, face_model, **kwargs)
        model.load_state_dict(load_file(str(p), device=str(map_location)))
        if "trained" in meta:
            parts = json.loads(meta["trained"])
            unknown = sorted(set(parts) - set(TRAINED_PARTS))
            if unknown:
                raise ValueError(f"{p}: unknown trained parts {unknown} in its metadata; known: {TRAINED_PARTS}")
            model.trained_parts = frozenset(parts)
        else:
            model.trained_parts = None
        return model

    # -- checks ---------------------------------------------------------------------------------------------
    def _check_image(self, name: str, image: Tensor) -> Tensor:
        S = self.config.image_size
        if not isinstance(image, Tensor) or image.dim() != 4 or image.shape[1:] != (3, S, S):
            got = list(image.shape) if isinstance(image, Tensor) else type(image).__name__
            raise ValueError(f"{name} must be [B, 3, {S}, {S}] in [-1, 1] (config.image_size = {S}), got {got}")
        if not image.is_floating_point():
            raise TypeError(f"{name} must be a floating-point image in [-1, 1], got {image.dtype}")
        return image

    def _check_camera(self, name: str, camera: Tensor, batch: int) -> Tensor:
        if not isinstance(camera, Tensor) or camera.dim() != 2 or camera.shape != (batch, 25):
            got = list(camera.shape) if isinstance(camera, Tensor) else type(camera).__name__
            raise ValueError(f"{name} must be [B, 25] camera labels with B = {batch}, got {got}")
        cameras.split_label(camera)  # rigid cam2world and normalised intrinsics
        return camera

    def _check_coeffs(self, name: str, coeffs: Coeffs, batch: int) -> Coeffs:
        if not isinstance(coeffs, Coeffs):
            raise TypeError(f"{name} must be oneshot.face3d.Coeffs, got {type(coeffs).__name__}")
        try:
            coeffs.check(self.face_model)
        except ValueError as e:
            raise ValueError(f"{name}: {e}") from None
        if coeffs.batch_size != batch:
            raise ValueError(f"{name} must have batch size {batch}, got {coeffs.batch_size}")
        return coeffs

    # -- pieces ---------------------------------------------------------------------------------------------
    def _normalise(self, image: Tensor) -> Tensor:
        """[-1, 1] RGB -> ImageNet-normalised."""
        return ((image + 1) / 2 - self.image_mean) / self.image_std

    def _to_image_size(self, x: Tensor, mode="bilinear") -> Tensor:
        S = self.config.image_size
        if x.shape[-1] == S and x.shape[-2] == S:
            return x
        if mode == "nearest":
            return F.interpolate(x, size=(S, S), mode="nearest")
        return F.interpolate(x, size=(S, S), mode=mode, align_corners=False)

    def _regions(self, result) -> Tensor:
        """[B, 1, S, S] 1 on the 3DMM's eyes, brows and mouth (dilated), from a face render."""
        r = (result.regions["eyes"] + result.regions["brows"] + result.regions["mouth"]).clamp(max=1)
        r = self._to_image_size(r).gt(0.5).to(r)
        k = self.config.mask_dilation
        return F.max_pool2d(r, k, 1, k // 2) if k > 1 else r

    def _source_masks(self, coeffs: Coeffs, camera: Tensor):
        """(1 - R_source, R_neutral, neutral 3DMM render) at the source pose."""
        fm, n = self.face_model, self.config.face_render_size
        with torch.no_grad():
            src = render(fm, fm.vertices(coeffs.identity, coeffs.expression), camera, n)  # only its regions
            neu = neutral_render(fm, coeffs, camera, n)
        return 1 - self._regions(src), self._regions(neu), neu

    def canonical_planes(self, source_norm: Tensor, source_regions: Tensor) -> Tensor:
        """T_c [B, 3, C, P, P] from the normalised source with its eye/brow/mouth regions zeroed."""
        planes = self.canonical_head(self.canonical_encoder(source_norm * source_regions))
        return planes if self.canonical_template is None else self.canonical_template(planes)

    def expression_planes(self, source_coeffs: Coeffs, target_coeffs: Coeffs) -> Tensor:
        """T_e [B, 3, C, P, P] from the 3DMM's frontal render of the source identity with the target expression."""
        with torch.no_grad():
            face = frontal_render(self.face_model, source_coeffs, target_coeffs, self.config.face_render_size)
        img = self._to_image_size(face.image * 2 - 1)
        return self.expression_head(self.expression_encoder(self._normalise(img)))

    def appearance_planes(self, base: Tensor, source_norm: Tensor, source_regions: Tensor, blend_mask: Tensor,
                          source_camera: Tensor, seed: int | None) -> tuple[Tensor, VolumeRenderOutput]:
        """T_a [B, 3, C, P, P] and the lifting render of the base planes from the source camera."""
        c = self.config
        lift = self.render(base, source_camera, c.lift_resolution, generator=_seeded(seed, "lift", base.device))
        c2w, intr = cameras.split_label(source_camera)
        origins, dirs = cameras.rays(c2w.to(base), intr.to(base), c.lift_resolution)
        points = origins + lift.depth.flatten(2).transpose(1, 2) * dirs  # [B, h*h, 3], row-major
        render_rgb = self._normalise(self._to_image_size(lift.features[:, :3]))
        m = (1 - blend_mask) * source_regions
        if c.erosion > 1:
            m = -F.max_pool2d(-m, c.erosion, 1, c.erosion // 2)
        feats = self.appearance_encoder(torch.cat([source_norm * m + render_rgb * (1 - m), render_rgb], 1))
        if feats.shape[-1] != c.lift_resolution:
            feats = F.interpolate(feats, size=(c.lift_resolution,) * 2, mode="bilinear", align_corners=False)
        valid = lift.opacity.flatten(1) >= c.empty_ray_opacity if c.drop_empty_rays else None
        planes, _ = rasterize_points(points, feats.flatten(2).transpose(1, 2), c.raster_resolution, valid=valid,
                                     align_corners=True, backend=self.renderer.backend)
        return self.appearance_upsampler(planes), lift

    def render(self, planes: Tensor, camera: Tensor, resolution: int, *,
               generator: torch.Generator | None = None) -> VolumeRenderOutput:
        """Volume-render tri-planes [B, 3, C, P, P] from camera labels [B, 25]."""
        return self.renderer(planes, self.decoder, camera, resolution, generator=generator)

    def super_resolve(self, features: Tensor, *, generator: torch.Generator | None = None) -> Tensor:
        return self.super_resolution(features[:, :3].contiguous(), generator=generator)

    # -- the public API ---------------------------------------------------------------------------------------
    def reconstruct(self, source_image: Tensor, source_camera: Tensor, source_coeffs: Coeffs, *,
                    seed: int | None = None) -> Avatar:
        """Everything that depends only on the source: T_c, the masks, and (with the "canonical" lifting base)
        the appearance planes. `seed` makes the lifting render's samples reproducible."""
        self._check_image("source_image", source_image)
        B = source_image.shape[0]
        self._check_camera("source_camera", source_camera, B)
        self._check_coeffs("source_coeffs", source_coeffs, B)
        source_norm = self._normalise(source_image)
        regions, neutral_regions, _ = self._source_masks(source_coeffs, source_camera)
        canonical = self.canonical_planes(source_norm, regions)
        appearance = lift = None
        if self.config.lift_base == "canonical":
            appearance, lift = self.appearance_planes(canonical, source_norm, regions, neutral_regions,
                                                      source_camera, seed)
        return Avatar(canonical, source_camera, source_coeffs, source_norm, neutral_regions, regions, appearance,
                      lift, seed)

    def planes(self, avatar: Avatar, target_coeffs: Coeffs, *, seed: int | None = None) -> Tensor:
        """The tri-planes T = T_c + T_e + T_a [F, 3, C, P, P] of `avatar` with the expression of each of the F
        targets' coefficients (an avatar of batch 1 takes any number of targets; otherwise the batches match).
        What :meth:`animate` renders, and what a mesh export samples."""
        F_ = target_coeffs.batch_size if isinstance(target_coeffs, Coeffs) else -1
        self._check_coeffs("target_coeffs", target_coeffs, F_)
        if avatar.batch_size not in (1, F_):
            raise ValueError(f"an avatar of batch {avatar.batch_size} takes 1 or {avatar.batch_size} targets at "
                             f"once, got {F_}")
        seed = avatar.seed if seed is None else seed
        a = avatar if avatar.batch_size == F_ else _expand(avatar, F_)
        expression = self.expression_planes(a.source_coeffs, target_coeffs)
        appearance = a.appearance
        if appearance is None:
            appearance, _ = self.appearance_planes(a.canonical + expression, a.source_norm, a.source_regions,
                                                   a.blend_mask, a.source_camera, seed)
        return a.canonical + expression + appearance

    def animate(self, avatar: Avatar, target_coeffs: Coeffs, target_camera: Tensor, *, super_resolve: bool = True,
                seed: int | None = None) -> AnimateOutput:
        """Render `avatar` with the target's expression from the target camera: one frame per target (an
        avatar of batch 1 drives any number of frames; otherwise the batches match)."""
        F_ = target_camera.shape[0] if isinstance(target_camera, Tensor) and target_camera.dim() == 2 else -1
        self._check_camera("target_camera", target_camera, F_)
        self._check_coeffs("target_coeffs", target_coeffs, F_)
        if avatar.batch_size not in (1, F_):
            raise ValueError(f"an avatar of batch {avatar.batch_size} animates 1 or {avatar.batch_size} frames at "
                             f"once, got {F_}")
        seed = avatar.seed if seed is None else seed
        planes = self.planes(avatar, target_coeffs, seed=seed)
        out = self.render(planes, target_camera, self.config.render_resolution,
                          generator=_seeded(seed, "full", planes.device))
        image = self.super_resolve(out.features, generator=_seeded(seed, "sr", planes.device)) if super_resolve \
            else None
        return AnimateOutput(out.features, out.depth, out.opacity, image)

    def forward(self, batch: dict, *, seed: int | None = None, super_resolve: bool | None = None) -> dict:
        """The training pass. `batch`: source_image, source_camera, source_coeffs, target_coeffs, target_camera
        (the target image is the loss's business). Returns a dict of

        * ``canonical``, ``canonical+expression``, ``full``: VolumeRenderOutputs of T_c, T_c + T_e and
          T_c + T_e + T_a at the target camera (``render_resolution``);
        * ``neutral``: T_c rendered at the source camera (``lift_resolution``), with ``neutral_3dmm_image``
          [B, 3, n, n] in [-1, 1] and ``neutral_3dmm_mask`` [B, 1, n, n], the 3DMM's neutral render at the
          source pose (the neutral-expression loss's target);
        * ``image``: the super-resolved full render (stage 2, or when `super_resolve` is True), else None.

        In stage 2 only the super-resolution runs with gradients.
        """
        missing = [k for k in ("source_image", "source_camera", "source_coeffs", "target_coeffs", "target_camera")
                   if k not in batch]
        if missing:
            raise KeyError(f"batch is missing {missing}")
        super_resolve = (self.stage == 2) if super_resolve is None else super_resolve
        c = self.config
        with torch.set_grad_enabled(torch.is_grad_enabled() and self.stage == 1):
            src = self._check_image("source_image", batch["source_image"])
            B = src.shape[0]
            src_cam = self._check_camera("source_camera", batch["source_camera"], B)
            tgt_cam = self._check_camera("target_camera", batch["target_camera"], B)
            src_c = self._check_coeffs("source_coeffs", batch["source_coeffs"], B)
            tgt_c = self._check_coeffs("target_coeffs", batch["target_coeffs"], B)
            source_norm = self._normalise(src)
            regions, neutral_regions, neutral_3dmm = self._source_masks(src_c, src_cam)
            canonical = self.canonical_planes(source_norm, regions)
            expression = self.expression_planes(src_c, tgt_c)
            base = canonical if c.lift_base == "canonical" else canonical + expression
            appearance, lift = self.appearance_planes(base, source_norm, regions, neutral_regions, src_cam, seed)
            dev = src.device
            out = {
                "canonical": self.render(canonical, tgt_cam, c.render_resolution,
                                         generator=_seeded(seed, "canonical", dev)),
                "canonical+expression": self.render(canonical + expression, tgt_cam, c.render_resolution,
                                                    generator=_seeded(seed, "canonical+expression", dev)),
                "full": self.render(canonical + expression + appearance, tgt_cam, c.render_resolution,
                                    generator=_seeded(seed, "full", dev)),
            }
            out["neutral"] = lift if c.lift_base == "canonical" else \
                self.render(canonical, src_cam, c.lift_resolution, generator=_seeded(seed, "neutral", dev))
            out["neutral_3dmm_image"] = neutral_3dmm.image * 2 - 1
            out["neutral_3dmm_mask"] = neutral_3dmm.mask
            out["planes"] = {"canonical": canonical, "expression": expression, "appearance": appearance}
        out["image"] = self.super_resolve(out["full"].features, generator=_seeded(seed, "sr", src.device)) \
            if super_resolve else None
        return out


def _expand(avatar: Avatar, n: int) -> Avatar:
    def ex(t):
        return None if t is None else t.expand(n, *t.shape[1:])

    c = avatar.source_coeffs
    coeffs = Coeffs(*(ex(getattr(c, k)) for k in ("identity", "expression", "albedo", "lighting", "rotation",
                                                   "translation")), model=c.model)
    lift = None if avatar.lift is None else VolumeRenderOutput(*(ex(t) for t in avatar.lift))
    return Avatar(ex(avatar.canonical), ex(avatar.source_camera), coeffs, ex(avatar.source_norm),
                  ex(avatar.blend_mask), ex(avatar.source_regions), ex(avatar.appearance), lift, avatar.seed)
