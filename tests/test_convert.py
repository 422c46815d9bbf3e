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
    assert len(converted) == 930  # 1144 minus BiSeNet (191), expr_upsampler (18) and five buffers
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
