"""The released GOHA checkpoint -> OneShotAvatar (oneshot.models.convert), on a state dict built from the reference
listing of the released code's checkpoint layout (the real file is not available here)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

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
    """The goha-release preset built directly and loaded with the converted state dict, in eval mode."""
    from oneshot.models import OneShotAvatar

    direct = OneShotAvatar("goha-release").eval()
    direct.load_state_dict(convert_goha_state_dict(goha_state))
    return direct


def _with_random_upsampler(goha_state, seed=0, dead=None):
    """`goha_state` with He-initialised ``id_upsampler.*`` weights (the layout fixture's constants make every output
    pixel alike); `dead` (e.g. NaN) fills ``up_xz`` / ``up_zy``, which GOHA never runs."""
    g = torch.Generator().manual_seed(seed)
    state = dict(goha_state)
    for k, v in goha_state.items():
        if k.startswith("id_upsampler."):
            fan_in = v[0].numel() if v.dim() > 1 else 1
            state[k] = torch.randn(v.shape, generator=g) * (2 / fan_in) ** 0.5 * (1 if v.dim() > 1 else 0.1)
            if dead is not None and k.startswith(("id_upsampler.up_xz.", "id_upsampler.up_zy.")):
                state[k] = torch.full(v.shape, dead)
    return state


def _goha_id_upsampler(state, x):
    """GOHA's ``IDUpsampler.forward``, written here from the documented layout (../shared/reference/GOHA_LAYOUT.md
    section 4.3) on the released key names, in float64, independently of oneshot's modules and converter: plane p
    (XY, XZ, ZY) -> ``skip_p(bilinear(x_p, 2x)) + up_xy(x_p)``, ``up_xy`` = ConvTranspose(4, s2, p1), LeakyReLU(0.2),
    Conv3x3 (the released code's ``up_xy`` on all three planes). x [B, 3, 256, h, w] -> [B, 3, 32, 2h, 2w]."""
    w = {k[len("id_upsampler."):]: v.double() for k, v in state.items() if k.startswith("id_upsampler.")}
    x = x.double()
    out = []
    for p, name in enumerate(("xy", "xz", "zy")):
        xp = x[:, p]
        up = F.conv_transpose2d(xp, w["up_xy.0.weight"], w["up_xy.0.bias"], stride=2, padding=1)
        up = F.conv2d(F.leaky_relu(up, 0.2), w["up_xy.2.weight"], w["up_xy.2.bias"], padding=1)
        skip = F.conv2d(F.interpolate(xp, scale_factor=2, mode="bilinear", align_corners=False),
                        w[f"skip_{name}.weight"], w[f"skip_{name}.bias"])
        out.append(skip + up)
    return torch.stack(out, 1)


def test_the_goha_release_preset_is_the_released_network(goha_state, tmp_path):
    """The appearance upsampler of the converted checkpoint, and of the goha-release preset built directly and loaded
    with the converted weights, computes GOHA's IDUpsampler as written above from the layout (issue 18: the old
    preset, one up branch per plane, was ~80% off); GOHA's dead up_xz / up_zy may hold anything (NaN here)."""
    from oneshot.models import AvatarConfig, OneShotAvatar

    assert AvatarConfig.preset_config("goha-release").shared_up
    state = _with_random_upsampler(goha_state)
    path = tmp_path / "goha.ckpt"
    torch.save({"model_state_dict": state}, path)
    converter = load_goha_checkpoint(path).eval()
    direct = _same_inputs_goha_release(state)
    assert direct.config == converter.config
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 3, converter.appearance_upsampler.in_channels, 12, 10, generator=g)  # lifted features
    want = _goha_id_upsampler(state, x)
    assert want.shape == (2, 3, 32, 24, 20)
    with torch.no_grad():
        for name, m in (("converted", converter), ("preset", direct)):
            torch.testing.assert_close(m.appearance_upsampler(x).double(), want, rtol=1e-5, atol=1e-5, msg=name)
        per_plane = OneShotAvatar(AvatarConfig.preset_config("goha-release", shared_up=False)).appearance_upsampler
        per_plane.load_state_dict({k: v for k, v in converter.appearance_upsampler.state_dict().items()
                                   if k != "shared_up_marker"})
        assert float((per_plane(x).double() - want).abs().max()) > 0.1 * float(want.abs().max())
        dead = _with_random_upsampler(goha_state, dead=float("nan"))
        torch.save({"model_state_dict": dead}, path)
        got = load_goha_checkpoint(path).eval().appearance_upsampler(x).double()
    assert torch.isfinite(got).all()
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


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


def _goha_embed2plane(state, prefix, x):
    """GOHA's ``Embed2Plane`` (GOHA_LAYOUT.md section 4.2) on the released keys ``<prefix>up_layers.{0,2,4,6,8}``, in
    float64: conv3x3, LeakyReLU(0.2), conv3x3, LReLU, ConvTranspose(4, s2, p1), LReLU, conv3x3, LReLU, conv3x3;
    [B, 256, H, W] -> [B, 96, 2H, 2W] viewed as [B, 3, 32, 2H, 2W] (channel c: plane c // 32)."""
    def w(i):
        return state[f"{prefix}up_layers.{i}.weight"].double(), state[f"{prefix}up_layers.{i}.bias"].double()

    y = F.leaky_relu(F.conv2d(x.double(), *w(0), padding=1), 0.2)
    y = F.leaky_relu(F.conv2d(y, *w(2), padding=1), 0.2)
    y = F.leaky_relu(F.conv_transpose2d(y, *w(4), stride=2, padding=1), 0.2)
    y = F.leaky_relu(F.conv2d(y, *w(6), padding=1), 0.2)
    y = F.conv2d(y, *w(8), padding=1)
    return y.view(y.shape[0], 3, 32, *y.shape[-2:])


def _goha_osg_decoder(state, feats):
    """GOHA's ``OSGDecoder`` (GOHA_LAYOUT.md section 4.4) on the released keys, in float64: the plane mean [..., 32]
    -> FC (stored weight x 1/sqrt(32)) -> softplus -> FC (x 1/sqrt(64)) -> (sigma raw, sigmoid x 1.002 - 0.001)."""
    w0, b0 = state["decoder.net.0.weight"].double(), state["decoder.net.0.bias"].double()
    w2, b2 = state["decoder.net.2.weight"].double(), state["decoder.net.2.bias"].double()
    h = F.softplus(F.linear(feats.double(), w0 / math.sqrt(32), b0))
    out = F.linear(h, w2 / math.sqrt(64), b2)
    return out[..., 0], torch.sigmoid(out[..., 1:]) * 1.002 - 0.001


@pytest.mark.slow
def test_the_goha_release_preset_renders_as_the_converter_does(goha_state, tmp_path):
    """The whole network, end to end, on converted weights: inside one render, every converted tri-plane module (the
    canonical and expression heads, the appearance upsampler, the decoder) computes what GOHA's documented module
    computes on the released keys (references above, on the inputs the module got); and the goha-release preset
    built directly renders the same image, bitwise (deterministic sampling)."""
    from oneshot import cameras
    from oneshot.face3d import Coeffs
    from oneshot.models import AvatarConfig, OneShotAvatar

    g = torch.Generator().manual_seed(0)  # small positive weights (the layout fixture's constants overflow)
    goha_state = {k: torch.rand(v.shape, generator=g) * 0.05 if v.is_floating_point() else v
                  for k, v in goha_state.items()}
    goha_state = _with_random_upsampler(goha_state, seed=3)
    path = tmp_path / "goha.ckpt"
    torch.save({"model_state_dict": goha_state}, path)
    converter = load_goha_checkpoint(path, fused_render=False).eval()  # composed: the decoder module runs
    direct = OneShotAvatar(AvatarConfig.preset_config("goha-release", fused_render=False)).eval()
    direct.load_state_dict(convert_goha_state_dict(goha_state))
    seen = {}

    def record(name):
        def hook(module, args, output):
            if name in seen:  # the first call only
                return
            if name == "decoder":  # per sample: keep 20000 samples of [..., 32] -> ([...], [..., 32])
                seen[name] = (args[0].reshape(-1, args[0].shape[-1])[:20000].clone(),
                              (output[0].reshape(-1)[:20000].clone(),
                               output[1].reshape(-1, output[1].shape[-1])[:20000].clone()))
            else:
                seen[name] = (args[0].clone(), output.clone())
        return hook

    for name in ("canonical_head", "expression_head", "appearance_upsampler", "decoder"):
        getattr(converter, name).register_forward_hook(record(name))
    g = torch.Generator().manual_seed(1)
    image = torch.rand(1, 3, 512, 512, generator=g) * 2 - 1
    cam = cameras.camera_label(cameras.look_at(0.1, 0.05), cameras.intrinsics())
    c = Coeffs.zeros(direct.face_model, 1)
    c.expression = torch.rand(c.expression.shape, generator=g) * 0.5
    outs = []
    with torch.no_grad():
        for m in (converter, direct):
            av = m.reconstruct(image, cam, c, seed=0)
            outs.append(m.animate(av, c, cam, super_resolve=False, seed=0).features)
    assert set(seen) == {"canonical_head", "expression_head", "appearance_upsampler", "decoder"}
    refs = {"canonical_head": lambda x: _goha_embed2plane(goha_state, "embedding2neutral.", x),
            "expression_head": lambda x: _goha_embed2plane(goha_state, "embedding2expr.", x),
            "appearance_upsampler": lambda x: _goha_id_upsampler(goha_state, x)}
    for name, ref in refs.items():
        x, y = seen[name]
        want = ref(x)
        torch.testing.assert_close(y.double(), want, rtol=1e-4, atol=1e-4 * float(want.abs().max()), msg=name)
    x, (sigma, feats) = seen["decoder"]
    want_sigma, want_feats = _goha_osg_decoder(goha_state, x)
    torch.testing.assert_close(sigma.double(), want_sigma, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(feats.double(), want_feats, rtol=1e-5, atol=1e-6)
    assert torch.equal(outs[0], outs[1])
