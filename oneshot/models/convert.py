"""The released GOHA checkpoint (NVlabs/GOHA, ``checkpoint825000.ckpt``) as a :class:`OneShotAvatar`.

GOHA's ``model_state_dict`` (1144 keys, transformers-4.x SegFormer names) maps onto the avatar by renaming the
top-level modules (:data:`GOHA_MODULES`); the rest is dropped (:data:`GOHA_DROPPED`): the BiSeNet face parser
(oneshot takes the eye/brow/mouth masks from the 3DMM instead), the expression upsampler that GOHA never calls,
and buffers oneshot computes itself (ImageNet mean/std, the splatting grid, the canonical exemplar and pose).
The released code runs ``IDUpsampler.up_xy`` on all three planes, so the avatar is built with ``shared_up=True``
(the goha-release preset's choice), and the converted state dict says so (``appearance_upsampler.shared_up_marker``):
loading it into a model with one up branch per plane is a ValueError.

The key map, the shapes and the strict load are tested against the layout in the reference listing of the
released code; the real checkpoint was not available here, so outputs against GOHA's own were not compared.
"""

from __future__ import annotations

import os

import torch
from torch import Tensor

from .._checkpoint import check_state_dict, load_torch_file
from ..face3d import MorphableModel
from .avatar import OneShotAvatar
from .config import AvatarConfig

__all__ = ["GOHA_MODULES", "GOHA_DROPPED", "convert_goha_state_dict", "load_goha_checkpoint"]

#: GOHA module prefix -> OneShotAvatar module prefix.
GOHA_MODULES: dict[str, str] = {
    "template_net.": "canonical_encoder.",
    "embedding2neutral.": "canonical_head.",
    "expr_net.": "expression_encoder.",
    "embedding2expr.": "expression_head.",
    "id_net.": "appearance_encoder.",
    "id_upsampler.": "appearance_upsampler.",
    "decoder.": "decoder.",
    "neural_layers.gfpgan.": "super_resolution.gfpgan.",
}
#: GOHA keys (prefixes) with no counterpart in the avatar.
GOHA_DROPPED: tuple[str, ...] = ("face_parsing_net.", "expr_upsampler.", "cano_pose", "cano_exemplar", "uv",
                                 "image_mean", "image_std")


def _dropped(key: str) -> bool:
    return any(key.startswith(p) if p.endswith(".") else key == p for p in GOHA_DROPPED)


def convert_goha_state_dict(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """GOHA's ``model_state_dict`` -> the avatar's state dict (tensors are shared, not copied). Unknown keys are
    an error (another model's checkpoint, or a ``module.`` prefix from an unwrapped DDP model)."""
    if not isinstance(state, dict):
        raise TypeError(f"state must be a dict of tensors, got {type(state).__name__}")
    out, unknown = {}, []
    for key, value in state.items():
        if _dropped(key):
            continue
        prefix = next((p for p in GOHA_MODULES if key.startswith(p)), None)
        if prefix is None:
            unknown.append(key)
            continue
        out[GOHA_MODULES[prefix] + key[len(prefix):]] = value
    if unknown:
        hint = " (strip the 'module.' prefix of a DistributedDataParallel model)" if \
            all(k.startswith("module.") for k in unknown) else ""
        raise ValueError(f"not a GOHA model state dict: {len(unknown)} unknown keys, e.g. {unknown[:3]}{hint}")
    out["appearance_upsampler.shared_up_marker"] = torch.tensor(True)  # the released IDUpsampler: up_xy everywhere
    return out


def load_goha_checkpoint(path: str | os.PathLike, face_model: MorphableModel | None = None, *,
                         preset: str = "goha-release", backend: str | None = None, **overrides) -> OneShotAvatar:
    """A :class:`OneShotAvatar` (config `preset`, with ``shared_up=True`` whatever the preset, and `overrides`)
    holding the weights of
    GOHA's released checkpoint (the ``.ckpt`` dict with ``model_state_dict``, or that state dict itself). Every
    key and shape must match: the check names the first differences."""
    ckpt = load_torch_file(path, "GOHA checkpoint")
    state = ckpt.get("model_state_dict", ckpt) if isinstance(ckpt, dict) else ckpt
    converted = convert_goha_state_dict(state)
    config = AvatarConfig.preset_config(preset, **{"shared_up": True, **overrides})
    model = OneShotAvatar(config, face_model, backend=backend)
    check_state_dict(model.state_dict(), converted, path, "GOHA (converted)")
    model.load_state_dict(converted)
    model.trained_parts = frozenset({"low_res", "super_resolution"})  # the released network, both stages trained
    return model
