"""The avatar model as drop-in ``nn.Module``s (thin modules; the heavy lifting is in :mod:`oneshot.ops`).

* :class:`TriplaneDecoder` (EG3D's MLP), :class:`VolumeRenderer` (EG3D's importance renderer),
* :class:`SegFormerEncoder`, :class:`Embed2Plane`, :class:`PlaneUpsampler` (the branches' encoders and heads),
* :class:`GFPGANv1Clean` / :class:`SuperResolution` (state-dict compatible with GFPGAN's released weights),
* :class:`OneShotAvatar` with :class:`AvatarConfig` and its presets ("paper", "goha-release", "tiny"),
* :func:`load_goha_checkpoint` (the released GOHA checkpoint as an avatar).
"""

from .avatar import STAGES, AnimateOutput, Avatar, OneShotAvatar
from .config import LIFT_BASES, PRESETS, AvatarConfig
from .convert import convert_goha_state_dict, load_goha_checkpoint
from .decoder import EqualLinear, TriplaneDecoder
from .plane_heads import Embed2Plane, PlaneTemplate, PlaneUpsampler
from .segformer import SEGFORMER_PRESETS, SegFormerEncoder
from .segformer_keys import SUPPORTED_TRANSFORMERS
from .gfpgan import GFPGANv1Clean, SuperResolution, load_gfpgan_weights
from .volume import RenderSettings, VolumeRenderer, VolumeRenderOutput, sample_pdf

__all__ = ["OneShotAvatar", "Avatar", "AnimateOutput", "AvatarConfig", "PRESETS", "LIFT_BASES", "STAGES",
           "TriplaneDecoder", "EqualLinear", "VolumeRenderer", "VolumeRenderOutput", "RenderSettings", "sample_pdf",
           "SegFormerEncoder", "Embed2Plane", "PlaneUpsampler", "PlaneTemplate", "SEGFORMER_PRESETS",
           "SUPPORTED_TRANSFORMERS", "GFPGANv1Clean", "SuperResolution", "load_gfpgan_weights",
           "convert_goha_state_dict", "load_goha_checkpoint"]
