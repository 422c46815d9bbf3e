"""The avatar's configuration and its named presets."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field

from .segformer import SEGFORMER_PRESETS
from .volume import RenderSettings, check_fused

__all__ = ["AvatarConfig", "PRESETS", "LIFT_BASES"]

LIFT_BASES = ("canonical", "canonical+expression")


@dataclass
class AvatarConfig:
    """Sizes and switches of :class:`~oneshot.models.OneShotAvatar`.

    Derived sizes: the encoders see `image_size` images and give features at image_size / 4; the embed-to-plane
    heads double that, so the tri-planes are image_size / 2 on a side; the appearance branch rasterizes at
    image_size / 4 per plane and its upsampler doubles that to the tri-plane size.
    """

    preset: str = "paper"
    image_size: int = 512  # source/target images [B, 3, S, S] in [-1, 1]
    plane_channels: int = 32  # C of the tri-planes [B, 3, C, S/2, S/2]
    encoder: str = "mit-b0"  # SegFormer configuration (a name in models.SEGFORMER_PRESETS)
    encoder_channels: int | None = None  # the decode head's width; None: the encoder's (256 for mit-b0)
    embed_hidden: tuple = (256, 128)  # embed-to-plane conv widths
    upsampler_hidden: int = 128  # appearance plane upsampler width
    decoder_hidden: int = 64
    render_resolution: int = 128  # the main (target-camera) render
    lift_resolution: int = 128  # the appearance branch's render from the source camera
    samples: int = 48
    importance_samples: int = 48
    ray_start: float = 2.25
    ray_end: float = 3.3
    stratified: bool = True  # random sample placement (EG3D); False: evenly spaced, fully deterministic renders
    lift_base: str = "canonical"  # "canonical" (the paper's text) or "canonical+expression" (the released code)
    clip_to_box: bool = False  # no density outside the tri-planes' box (RenderSettings.clip_to_box; not EG3D's)
    drop_empty_rays: bool = False  # lifting: ignore rays whose opacity is below `empty_ray_opacity`
    empty_ray_opacity: float = 0.5
    face_render_size: int = 224  # the 3DMM renders
    mask_dilation: int = 7  # square dilation (pixels at image_size) of the 3DMM's eye/brow/mouth masks
    erosion: int = 7  # the appearance blend mask's erosion
    shared_up: bool = False  # reproduce the released IDUpsampler's shared branch
    template_planes: bool = False  # a learned tri-plane added to T_c (not in the paper; see models.PlaneTemplate)
    template_lr_multiplier: float = 300.0  # its learning rate relative to the networks'
    sr_out_size: int = 512
    sr_narrow: float = 1.0
    sr_channel_multiplier: int = 2
    sr_style_feat: int = 512
    sr_num_mlp: int = 8  # GFPGAN's (unused) style MLP depth; kept for state-dict compatibility
    chunk: int | None = None  # rays per renderer pass (None: all)
    fused: bool | None = RenderSettings.fused  # RenderSettings.fused, same meaning and default: the fused render op
    # (sample + decoder + composite, recompute backward; the same values, ~20x less memory and 1.4x faster at the
    # paper's size on CPU). None: automatic (oneshot.ops.use_fused_render; GPU renders stay composed until the CUDA
    # kernel is measured); True: fused, or an error saying why not; False: composed. "tiny" sets False (measured).
    face_model: str | None = None  # fingerprint of the morphable model the avatar was built for
    extra: dict = field(default_factory=dict)

    def __post_init__(self):
        self.fused = check_fused(self.fused)
        if self.image_size % 8 or self.image_size < 32:
            raise ValueError(f"image_size must be a multiple of 8 and >= 32, got {self.image_size}")
        if self.lift_base not in LIFT_BASES:
            raise ValueError(f"lift_base must be one of {LIFT_BASES}, got {self.lift_base!r}")
        for name in ("render_resolution", "lift_resolution", "face_render_size", "sr_out_size", "plane_channels"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.plane_channels < 3:
            raise ValueError(f"plane_channels must be >= 3 (the first three are RGB), got {self.plane_channels}")
        self.embed_hidden = tuple(self.embed_hidden)
        if self.encoder not in SEGFORMER_PRESETS:
            raise ValueError(f"encoder must be one of {sorted(SEGFORMER_PRESETS)}, got {self.encoder!r}")
        width = SEGFORMER_PRESETS[self.encoder]["decoder_hidden_size"]
        if self.encoder_channels is None:
            self.encoder_channels = width
        elif self.encoder_channels != width:
            raise ValueError(f"encoder_channels must be the {self.encoder!r} SegFormer's head width {width} (or None), "
                             f"got {self.encoder_channels}")

    @property
    def plane_size(self) -> int:
        return self.image_size // 2

    @property
    def raster_resolution(self) -> int:
        return self.image_size // 4

    def render_settings(self) -> RenderSettings:
        """The :class:`~oneshot.models.RenderSettings` of this avatar's renderer (samples, depth range, chunk,
        stratified, clip_to_box, fused: the config's fields of the same names)."""
        return RenderSettings(samples=self.samples, importance_samples=self.importance_samples,
                              ray_start=self.ray_start, ray_end=self.ray_end, chunk=self.chunk,
                              stratified=self.stratified, clip_to_box=self.clip_to_box, fused=self.fused)

    @classmethod
    def preset_config(cls, name: str, **overrides) -> AvatarConfig:
        if name not in PRESETS:
            raise ValueError(f"unknown preset {name!r}; presets: {sorted(PRESETS)}")
        return cls(**{**PRESETS[name], "preset": name, **_renamed(overrides)})

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> AvatarConfig:
        data = _renamed(json.loads(text))
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"avatar config: unknown fields {unknown} (written by a newer oneshot?)")
        return cls(**data)


def _renamed(fields: dict) -> dict:
    """Config fields with old names under today's: ``fused_render`` (configs and checkpoints written before
    ``fused``) -> ``fused``: its True meant "fused where it measured faster", today's None (automatic); its "always"
    is today's True; False stays False."""
    if "fused_render" not in fields:
        return fields
    fields = dict(fields)
    old = fields.pop("fused_render")
    if fields.get("fused") is not None:
        raise ValueError(f"give fused (fused_render is its old name), not both: got fused={fields['fused']!r}, "
                         f"fused_render={old!r}")
    fields["fused"] = None if old is True else check_fused(old, "fused_render")
    return fields


PRESETS: dict[str, dict] = {
    # The paper: 128 x 128 main render, 512 images, canonical base for the lifting (cacheable per source).
    "paper": dict(),
    # The released GOHA code: 224 x 224 main render, lifting at 128 x 128 on canonical + target expression, and
    # its IDUpsampler's up_xy on all three appearance planes.
    "goha-release": dict(render_resolution=224, lift_base="canonical+expression", shared_up=True),
    # Small enough for one training step in about a second on a 2-core CPU (tests, smoke runs, the demo).
    # fused=False: at this size the composed ops measured faster than the fused op on a 2-core CPU (0.8x
    # forward+backward, benchmarks/results/render_cpu.md, "tiny" rows), the automatic choice being size-blind.
    "tiny": dict(image_size=128, plane_channels=16, encoder="mit-tiny", template_planes=True, fused=False,
                 clip_to_box=True, embed_hidden=(64, 32), upsampler_hidden=32, decoder_hidden=32,
                 render_resolution=32, lift_resolution=32, samples=16, importance_samples=16, face_render_size=128,
                 mask_dilation=3, erosion=3, sr_out_size=128, sr_narrow=0.25, sr_channel_multiplier=1,
                 sr_style_feat=128, sr_num_mlp=2),
}
