"""The released GOHA checkpoint -> OneShotAvatar (oneshot.models.convert), on a state dict built from the reference
listing of the released code's checkpoint layout (the real file is not available here)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from oneshot.models.convert import GOHA_MODULES, convert_goha_state_dict, load_goha_checkpoint

TSV = Path(__file__).parents[1].parent / "shared" / "reference" / "goha_state_dict.tsv"


@pytest.fixture(scope="module")
def goha_state():
    pytest.importorskip("transformers")
    if not TSV.is_file():
        pytest.skip(f"GOHA layout table not found at {TSV}")
    rows = [line.split("\t") for line in TSV.read_text().splitlines() if not line.startswith("#")]
    state = {}
    for i, r in enumerate(r for r in rows if r[0] == "model_state_dict"):
        if r[2] == "scalar":
            state[r[1]] = torch.tensor(i, dtype=torch.int64)
        else:  # a distinct value per tensor, so that a swapped key shows
            state[r[1]] = torch.full([int(s) for s in r[2].split("x")], float(i))
    assert len(state) == 1144
    return state


def test_every_kept_goha_tensor_lands_in_its_module(goha_state, tmp_path):
    converted = convert_goha_state_dict(goha_state)
    # 1144 minus BiSeNet (191), expr_upsampler (18) and five buffers, plus the shared_up marker
    assert len(converted) == 931 and bool(converted["appearance_upsampler.shared_up_marker"])
    path = tmp_path / "checkpoint825000.ckpt"
    torch.save({"iter": 825000, "model_state_dict": goha_state}, path)
    model = load_goha_checkpoint(path)
    assert model.config.shared_up and model.config.render_resolution == 224
    ours = model.state_dict()
    for key, value in goha_state.items():
        prefix = next((p for p in GOHA_MODULES if key.startswith(p)), None)
        if prefix is not None:
            assert torch.equal(ours[GOHA_MODULES[prefix] + key[len(prefix):]], value), key
    # A bare state dict loads as well; the command writes the avatar file.
    torch.save(goha_state, tmp_path / "bare.pt")
    bare = load_goha_checkpoint(tmp_path / "bare.pt").state_dict()
    assert all(torch.equal(bare[k], v) for k, v in ours.items())
    from oneshot.cli import main
    from oneshot.models import OneShotAvatar

    assert main(["convert-goha", str(path), str(tmp_path / "goha.safetensors")]) == 0
    saved = OneShotAvatar.load(tmp_path / "goha.safetensors").state_dict()
    assert all(torch.equal(saved[k], v) for k, v in ours.items())
    assert main(["convert-goha", str(path), str(tmp_path / "goha.pt")]) == 2  # not a .safetensors name


def test_bad_goha_checkpoints_are_named(goha_state, tmp_path):
    with pytest.raises(ValueError, match=r"2 unknown keys, e.g. \['module.decoder.net.0.weight'"):
        convert_goha_state_dict({"module.decoder.net.0.weight": torch.zeros(1),
                                 "module.decoder.net.0.bias": torch.zeros(1)})
    with pytest.raises(ValueError, match=r"strip the 'module.' prefix"):
        convert_goha_state_dict({"module.decoder.net.0.weight": torch.zeros(1)})
    with pytest.raises(TypeError, match=r"state must be a dict of tensors, got list"):
        convert_goha_state_dict([])
    bad = dict(goha_state)
    bad["decoder.net.0.weight"] = torch.zeros(3, 3)
    torch.save({"model_state_dict": bad}, tmp_path / "bad.ckpt")
    with pytest.raises(ValueError, match=r"decoder.net.0.weight has shape \[3, 3\], expected \[64, 32\]"):
        load_goha_checkpoint(tmp_path / "bad.ckpt")
    short = {k: v for k, v in goha_state.items() if not k.startswith("embedding2expr.")}
    torch.save({"model_state_dict": short}, tmp_path / "short.ckpt")
    with pytest.raises(ValueError, match=r"10 missing keys \(e.g. \['expression_head.up_layers.0.weight'"):
        load_goha_checkpoint(tmp_path / "short.ckpt")
    with pytest.raises(FileNotFoundError, match=r"GOHA checkpoint: no such file"):
        load_goha_checkpoint(tmp_path / "nope.ckpt")


def _same_inputs_goha_release(goha_state):
    """The goha-release preset built directly and loaded with the converted state dict, and the converter's own
    model, in eval mode."""
    from oneshot.models import OneShotAvatar

    direct = OneShotAvatar("goha-release").eval()
    direct.load_state_dict(convert_goha_state_dict(goha_state))
    return direct


def test_the_goha_release_preset_is_the_released_network(goha_state, tmp_path):
    """Construction, conversion and load give one model: the preset shares up_xy as GOHA's IDUpsampler does, so the
    appearance planes of the preset built directly equal the converter's, bitwise (issue 18: they were ~80% off)."""
    from oneshot.models import AvatarConfig, OneShotAvatar

    assert AvatarConfig.preset_config("goha-release").shared_up
    path = tmp_path / "goha.ckpt"
    torch.save({"model_state_dict": goha_state}, path)
    converter = load_goha_checkpoint(path).eval()
    direct = _same_inputs_goha_release(goha_state)
    assert direct.config == converter.config
    g = torch.Generator().manual_seed(0)
    # the lifted features the appearance upsampler takes: [B, 3, embed channels, h, w]
    up = direct.appearance_upsampler
    x = torch.randn(1, 3, up.in_channels, 16, 16, generator=g)
    with torch.no_grad():
        a, b = direct.appearance_upsampler(x), converter.appearance_upsampler(x)
        per_plane = OneShotAvatar(AvatarConfig.preset_config("goha-release", shared_up=False)).appearance_upsampler
        per_plane.load_state_dict({k: v for k, v in converter.appearance_upsampler.state_dict().items()
                                   if k != "shared_up_marker"})
        c = per_plane(x)
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)  # what the old preset computed with the same weights


def test_weights_for_the_other_upsampler_layout_are_a_named_error(goha_state):
    from oneshot.models import AvatarConfig, OneShotAvatar

    converted = convert_goha_state_dict(goha_state)
    per_plane = OneShotAvatar(AvatarConfig.preset_config("goha-release", shared_up=False))
    with pytest.raises(ValueError, match=r"appearance_upsampler: these weights were made for shared_up=True "
                                         r"\(GOHA's released IDUpsampler.*build it with AvatarConfig\.preset_config"):
        per_plane.load_state_dict(converted)
    # and the other way round: per-plane weights into the goha-release preset
    own = per_plane.state_dict()
    with pytest.raises(ValueError, match=r"made for shared_up=False .* this model has shared_up=True"):
        OneShotAvatar("goha-release").load_state_dict(own)
    # weights from before the marker existed load as the module's own choice
    old = {k: v for k, v in converted.items() if not k.endswith("shared_up_marker")}
    OneShotAvatar("goha-release").load_state_dict(old)


@pytest.mark.slow
def test_the_goha_release_preset_renders_as_the_converter_does(goha_state, tmp_path):
    """The whole network, end to end: the same inputs give the same render, bitwise (deterministic sampling)."""
    from oneshot import cameras
    from oneshot.face3d import Coeffs

    g = torch.Generator().manual_seed(0)  # small positive weights (the layout fixture's constants overflow)
    goha_state = {k: torch.rand(v.shape, generator=g) * 0.05 if v.is_floating_point() else v
                  for k, v in goha_state.items()}
    path = tmp_path / "goha.ckpt"
    torch.save({"model_state_dict": goha_state}, path)
    converter = load_goha_checkpoint(path).eval()
    direct = _same_inputs_goha_release(goha_state)
    g = torch.Generator().manual_seed(1)
    image = torch.rand(1, 3, 512, 512, generator=g) * 2 - 1
    cam = cameras.camera_label(cameras.look_at(0.1, 0.05), cameras.intrinsics())
    c = Coeffs.zeros(direct.face_model, 1)
    c.expression = torch.rand(c.expression.shape, generator=g) * 0.5
    outs = []
    with torch.no_grad():
        for m in (direct, converter):
            av = m.reconstruct(image, cam, c, seed=0)
            outs.append(m.animate(av, c, cam, super_resolve=False, seed=0).features)
    assert torch.equal(outs[0], outs[1])
