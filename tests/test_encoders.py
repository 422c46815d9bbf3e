"""oneshot.models.segformer and .plane_heads: SegFormer encoder + decode head, Embed2Plane, PlaneUpsampler.

Checks: state-dict keys and shapes against GOHA's checkpoint layout (shared/reference/goha_state_dict.tsv), the
decode head against transformers' own SegformerForSemanticSegmentation with its BN/ReLU/dropout/classifier removed,
local pretrained loading, strict state-dict round trips, input errors, and the tri-plane heads' channel layout.
"""

from __future__ import annotations

import io
import math
import warnings
from pathlib import Path

import pytest
import torch
from torch import nn

from conftest import assert_close
from oneshot.models import Embed2Plane, PlaneUpsampler, SegFormerEncoder

TSV = Path(__file__).parents[1].parent / "shared" / "reference" / "goha_state_dict.tsv"
B0 = dict(hidden_sizes=[32, 64, 160, 256], depths=[2, 2, 2, 2], num_attention_heads=[1, 2, 5, 8],
          sr_ratios=[8, 4, 2, 1], patch_sizes=[7, 3, 3, 3], strides=[4, 2, 2, 2], mlp_ratios=[4, 4, 4, 4],
          decoder_hidden_size=256)


def _transformers():
    return pytest.importorskip("transformers")


def _goha_section(prefix: str) -> list[tuple[str, list[int]]]:
    if not TSV.is_file():
        pytest.skip(f"GOHA layout table not found at {TSV}")
    rows = [line.rstrip("\n").split("\t") for line in TSV.read_text().splitlines() if not line.startswith("#")]
    out = [(r[1][len(prefix):], [int(s) for s in r[2].split("x")]) for r in rows
           if r[0] == "model_state_dict" and r[1].startswith(prefix)]
    assert out, f"no keys under {prefix!r} in {TSV}"
    return out


def _keys_shapes(module: nn.Module) -> list[tuple[str, list[int]]]:
    return [(k, list(v.shape)) for k, v in module.state_dict().items()]


def _perturb(module: nn.Module, seed: int = 0) -> nn.Module:
    """Random values everywhere (HF starts biases at 0 and LayerNorms at 1, which would hide mix-ups)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return module


def _images(b, c, h, w, seed=1):
    return torch.randn(b, c, h, w, generator=torch.Generator().manual_seed(seed))


def _hf_logits_model(tf, hf_model: nn.Module) -> nn.Module:
    """GOHA's trimming of SegformerForSemanticSegmentation: the head stops at linear_fuse."""
    for name in ("batch_norm", "activation", "dropout", "classifier"):
        setattr(hf_model.decode_head, name, nn.Identity())
    return hf_model.eval()


def _hf_linear_c(head: nn.Module) -> nn.ModuleList:
    return head.linear_c if hasattr(head, "linear_c") else head.linear_projections  # transformers 4 / 5 name


# --------------------------------------------------------------------------------------------------------------
# Checkpoint layout


@pytest.mark.parametrize("prefix, make", [
    ("template_net.", lambda: SegFormerEncoder(3)),
    ("id_net.", lambda: SegFormerEncoder(6)),
    ("expr_net.", lambda: SegFormerEncoder(3)),
    ("embedding2neutral.", lambda: Embed2Plane()),
    ("embedding2expr.", lambda: Embed2Plane()),
    ("id_upsampler.", lambda: PlaneUpsampler()),
    ("expr_upsampler.", lambda: PlaneUpsampler(96)),
])
def test_state_dict_matches_goha_checkpoint(prefix, make):
    if "net." in prefix:
        _transformers()
    expected = _goha_section(prefix)
    # PlaneUpsampler's shared_up_marker is oneshot's own (convert_goha_state_dict adds it): not in GOHA's file
    got = [(k, s) for k, s in _keys_shapes(make()) if k != "shared_up_marker"]
    assert [k for k, _ in got] == [k for k, _ in expected], (
        f"{prefix}: keys differ; only ours {sorted(set(dict(got)) - set(dict(expected)))[:5]}, "
        f"only GOHA's {sorted(set(dict(expected)) - set(dict(got)))[:5]}")
    assert got == expected


def test_nested_encoders_emit_and_load_goha_names():
    _transformers()
    expected = _goha_section("template_net.") + _goha_section("id_net.")
    model = nn.ModuleDict({"template_net": SegFormerEncoder(3), "id_net": SegFormerEncoder(6)})
    sd = model.state_dict()
    names = [f"template_net.{k}" for k, _ in _goha_section("template_net.")]
    names += [f"id_net.{k}" for k, _ in _goha_section("id_net.")]
    assert list(sd) == names and len(expected) == len(names)
    fresh = nn.ModuleDict({"template_net": SegFormerEncoder(3), "id_net": SegFormerEncoder(6)})
    assert not fresh.load_state_dict(sd, strict=True).missing_keys
    for k, v in fresh.state_dict().items():
        assert torch.equal(v, sd[k]), k


# --------------------------------------------------------------------------------------------------------------
# SegFormerEncoder forward


@pytest.mark.parametrize("in_channels", [3, 6])
@pytest.mark.parametrize("hw", [(64, 64), (29, 29), (33, 47), (65, 30)])
def test_encoder_output_shape(in_channels, hw):
    _transformers()
    enc = SegFormerEncoder(in_channels).eval()
    with torch.no_grad():
        out = enc(_images(2, in_channels, *hw))
    assert list(out.shape) == [2, 256, math.ceil(hw[0] / 4), math.ceil(hw[1] / 4)]
    assert torch.isfinite(out).all()


def test_encoder_empty_batch():
    _transformers()
    enc = SegFormerEncoder(6).eval()
    assert list(enc(torch.zeros(0, 6, 33, 64)).shape) == [0, 256, 9, 16]


@pytest.mark.parametrize("in_channels, hw", [(3, (64, 64)), (6, (37, 50))])
def test_decode_head_matches_transformers(in_channels, hw):
    """Our output equals transformers' SegformerForSemanticSegmentation logits once GOHA's Identity swaps are made."""
    tf = _transformers()
    enc = _perturb(SegFormerEncoder(in_channels)).eval()
    hf = tf.SegformerForSemanticSegmentation(tf.SegformerConfig(**B0, num_channels=in_channels, num_labels=7))
    hf = _hf_logits_model(tf, hf)
    hf.segformer.load_state_dict(enc.segformer.state_dict(), strict=True)
    with torch.no_grad():
        for ours, theirs in zip(enc.decode_head.linear_c, _hf_linear_c(hf.decode_head)):
            theirs.proj.weight.copy_(ours.proj.weight)
            theirs.proj.bias.copy_(ours.proj.bias)
        hf.decode_head.linear_fuse.weight.copy_(enc.decode_head.linear_fuse.weight)
        x = _images(2, in_channels, *hw)
        expected = hf(pixel_values=x).logits
        actual = enc(x)
    assert_close(actual, expected, rtol=1e-5, atol=1e-6, name="SegFormerEncoder vs transformers")


def test_encoder_backward_reaches_every_parameter():
    _transformers()
    enc = SegFormerEncoder(3).eval()
    x = _images(1, 3, 64, 64).requires_grad_()
    enc(x).square().mean().backward()
    unused = [n for n, p in enc.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not unused and torch.isfinite(x.grad).all()


# --------------------------------------------------------------------------------------------------------------
# Loading


@pytest.fixture(scope="module")
def saved_hf(tmp_path_factory):
    """A SegformerForSemanticSegmentation (random, b0, 3 channels) and its save_pretrained folder."""
    tf = _transformers()
    torch.manual_seed(0)
    hf = _perturb(tf.SegformerForSemanticSegmentation(tf.SegformerConfig(**B0, num_labels=5)), seed=3)
    folder = tmp_path_factory.mktemp("segformer-b0")
    hf.save_pretrained(folder)
    return _hf_logits_model(tf, hf), folder


def test_pretrained_folder_round_trip(saved_hf):
    hf, folder = saved_hf
    enc = SegFormerEncoder(3, pretrained=folder).eval()
    x = _images(1, 3, 64, 48)
    with torch.no_grad():
        assert_close(enc(x), hf(pixel_values=x).logits, name="pretrained SegFormerEncoder")
    assert SegFormerEncoder(3, config="mit-b0", pretrained=str(folder)).config.hidden_sizes == B0["hidden_sizes"]


def test_pretrained_six_channel_stem_warns(saved_hf):
    _, folder = saved_hf
    ref = SegFormerEncoder(3, pretrained=folder).state_dict()
    with pytest.warns(UserWarning, match="3-channel stem.*freshly initialised"):
        enc = SegFormerEncoder(6, pretrained=folder)
    stem = "segformer.encoder.patch_embeddings.0.proj."
    sd = enc.state_dict()
    assert list(sd[stem + "weight"].shape) == [32, 6, 7, 7]
    assert not torch.equal(sd[stem + "bias"], ref[stem + "bias"])  # re-initialised with the weight
    for k, v in sd.items():
        if not k.startswith(stem):
            assert torch.equal(v, ref[k]), k
    with torch.no_grad():
        assert torch.isfinite(enc.eval()(_images(1, 6, 64, 64))).all()


def test_pretrained_encoder_only_folder(tmp_path):
    tf = _transformers()
    model = _perturb(tf.SegformerModel(tf.SegformerConfig(**B0)), seed=5)
    model.save_pretrained(tmp_path)
    with pytest.warns(UserWarning, match="no decode head"):
        enc = SegFormerEncoder(3, pretrained=tmp_path)
    for k, v in model.state_dict().items():  # same version on both sides: native names
        assert torch.equal(enc.segformer.state_dict()[k], v), k


def test_pretrained_errors(saved_hf, tmp_path):
    _, folder = saved_hf
    with pytest.raises(FileNotFoundError, match="config.json"):
        SegFormerEncoder(3, pretrained=tmp_path / "nowhere")
    with pytest.raises(ValueError, match="hidden_sizes"):
        SegFormerEncoder(3, config="mit-b1", pretrained=folder)


# --------------------------------------------------------------------------------------------------------------
# State dict round trip and strictness


def test_state_dict_round_trip_strict():
    _transformers()
    enc = _perturb(SegFormerEncoder(6), seed=7).eval()
    buf = io.BytesIO()
    torch.save(enc.state_dict(), buf)
    buf.seek(0)
    sd = torch.load(buf, weights_only=True)
    fresh = SegFormerEncoder(6).eval()
    result = fresh.load_state_dict(sd, strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    x = _images(2, 6, 64, 40)
    with torch.no_grad():
        assert torch.equal(fresh(x), enc(x))


def test_strict_load_reports_canonical_names():
    _transformers()
    enc = SegFormerEncoder(3)
    sd = enc.state_dict()
    gone = "segformer.encoder.block.2.1.attention.self.sr.weight"
    bad = "segformer.encoder.block.0.1.mlp.dense1.weight"
    sd.pop(gone)
    sd["segformer.encoder.block.0.0.attention.self.nonsense"] = torch.zeros(1)
    sd["decode_head.extra"] = torch.zeros(1)
    with pytest.raises(RuntimeError) as info:
        SegFormerEncoder(3).load_state_dict(sd, strict=True)
    msg = str(info.value)
    assert f'Missing key(s) in state_dict: "{gone}"' in msg
    assert "segformer.encoder.block.0.0.attention.self.nonsense" in msg and "decode_head.extra" in msg
    sd = enc.state_dict()
    sd[bad] = torch.zeros(3, 3)
    with pytest.raises(RuntimeError, match=f"size mismatch for {bad}:"):
        SegFormerEncoder(3).load_state_dict(sd)
    sd = enc.state_dict()
    sd.pop(gone)
    assert SegFormerEncoder(3).load_state_dict(sd, strict=False).missing_keys == [gone]


# --------------------------------------------------------------------------------------------------------------
# Input and argument errors


def test_encoder_bad_inputs():
    _transformers()
    enc = SegFormerEncoder(3)
    with pytest.raises(ValueError, match=r"\[B, 3, H, W\], got \[3, 64, 64\]"):
        enc(torch.zeros(3, 64, 64))
    with pytest.raises(ValueError, match=r"\[B, 3, H, W\], got \[1, 6, 64, 64\]"):
        enc(torch.zeros(1, 6, 64, 64))
    with pytest.raises(TypeError, match="dtype"):
        enc(torch.zeros(1, 3, 64, 64, dtype=torch.int64))
    with pytest.raises(TypeError, match="dtype torch.float32, got torch.float64"):
        enc(torch.zeros(1, 3, 64, 64, dtype=torch.float64))
    with pytest.raises(ValueError, match="at least 29x29.*got 28x64"):
        enc(torch.zeros(1, 3, 28, 64))
    with pytest.raises(TypeError, match="torch.Tensor"):
        enc([[0.0]])
    with pytest.raises(ValueError, match="unknown SegFormer preset"):
        SegFormerEncoder(3, config="mit-b9")
    with pytest.raises(ValueError, match="in_channels"):
        SegFormerEncoder(0)


# --------------------------------------------------------------------------------------------------------------
# Embed2Plane and PlaneUpsampler


def test_embed2plane_shape_and_plane_layout():
    head = Embed2Plane(in_channels=16, channels=8, hidden=(12, 4))
    assert list(head(torch.randn(2, 16, 5, 7)).shape) == [2, 3, 8, 10, 14]
    last = head.up_layers[8]
    with torch.no_grad():
        last.weight.zero_()
        last.bias.copy_(torch.arange(24.0))
    out = head(torch.randn(1, 16, 3, 3))
    expected = torch.arange(24.0).view(3, 8)  # channel c -> plane c // 8, feature c % 8
    assert torch.equal(out[0, :, :, 1, 2], expected)
    assert list(Embed2Plane()(torch.zeros(0, 256, 4, 4)).shape) == [0, 3, 32, 8, 8]
    with pytest.raises(ValueError, match=r"\[B, 16, H, W\], got \[2, 15, 5, 7\]"):
        head(torch.randn(2, 15, 5, 7))


def _upsampler_reference(up: PlaneUpsampler, x: torch.Tensor, shared: bool) -> torch.Tensor:
    out = []
    for i, name in enumerate(("xy", "xz", "zy")):
        xp = x[:, i]
        skip = getattr(up, f"skip_{name}")
        branch = up.up_xy if shared else getattr(up, f"up_{name}")
        resized = nn.functional.interpolate(xp, scale_factor=2, mode="bilinear", align_corners=False)
        out.append(skip(resized) + branch[2](nn.functional.leaky_relu(branch[0](xp), 0.2)))
    return torch.stack(out, 1)


@pytest.mark.parametrize("shared", [False, True])
def test_plane_upsampler_matches_formula(shared):
    up = _perturb(PlaneUpsampler(in_channels=8, channels=4, shared_up=shared, hidden=6))
    x = torch.randn(2, 3, 8, 5, 6)
    out = up(x)
    assert list(out.shape) == [2, 3, 4, 10, 12]
    assert_close(out, _upsampler_reference(up, x, shared), rtol=1e-6, atol=1e-6, name="PlaneUpsampler")


def test_plane_upsampler_shared_up_ignores_xz_zy():
    x = torch.randn(1, 3, 8, 4, 4)
    shared = PlaneUpsampler(in_channels=8, channels=4, shared_up=True, hidden=6)
    before = shared(x)
    own = PlaneUpsampler(in_channels=8, channels=4, shared_up=False, hidden=6)
    with torch.no_grad():
        for m in (shared, own):
            for name in ("up_xz", "up_zy"):
                for p in getattr(m, name).parameters():
                    p.fill_(float("nan"))
    after = shared(x)
    assert torch.isfinite(after).all() and torch.equal(after, before)
    y = own(x)
    assert torch.isfinite(y[:, 0]).all() and torch.isnan(y[:, 1]).all() and torch.isnan(y[:, 2]).all()


def test_plane_upsampler_scales_and_errors():
    for scale in (1, 3, 4):
        up = PlaneUpsampler(in_channels=4, channels=2, scale=scale, hidden=3)
        assert list(up(torch.randn(1, 3, 4, 5, 7)).shape) == [1, 3, 2, 5 * scale, 7 * scale]
    up = PlaneUpsampler()
    with pytest.raises(ValueError, match=r"\[B, 3, 256, H, W\], got \[1, 256, 8, 8\]"):
        up(torch.randn(1, 256, 8, 8))
    with pytest.raises(ValueError, match="scale"):
        PlaneUpsampler(scale=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert list(up(torch.zeros(0, 3, 256, 4, 4)).shape) == [0, 3, 32, 8, 8]
