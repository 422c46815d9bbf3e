"""OneShotAvatar (oneshot.models): shapes per preset, stages, reconstruct/animate against forward, save/load,
input errors."""

from __future__ import annotations

import pytest
import torch

from oneshot import cameras
from oneshot.face3d import Coeffs, builtin_model
from oneshot.models import PRESETS, AvatarConfig, OneShotAvatar


@pytest.fixture(scope="module")
def face():
    return builtin_model()


@pytest.fixture(scope="module")
def tiny(face):
    torch.manual_seed(0)
    return OneShotAvatar("tiny", face).eval()


def _coeffs(face, B, seed):
    g = torch.Generator().manual_seed(seed)
    c = Coeffs.zeros(face, B)
    c.identity = torch.randn(B, face.num_identity, generator=g) * 0.5
    c.expression = torch.rand(B, face.num_expression, generator=g)
    return c


def _batch(model, B=2, seed=0):
    S = model.config.image_size
    g = torch.Generator().manual_seed(seed)
    src_cam = cameras.camera_label(cameras.look_at(torch.rand(B, generator=g) - 0.5, torch.zeros(B)),
                                   cameras.intrinsics())
    tgt_cam = cameras.orbit_labels(B)
    return {"source_image": torch.rand(B, 3, S, S, generator=g) * 2 - 1, "source_camera": src_cam,
            "source_coeffs": _coeffs(model.face_model, B, seed), "target_camera": tgt_cam,
            "target_coeffs": _coeffs(model.face_model, B, seed + 1)}


def test_config_presets_and_json():
    assert set(PRESETS) >= {"paper", "goha-release", "tiny"}
    c = AvatarConfig.preset_config("goha-release")
    assert c.render_resolution == 224 and c.lift_resolution == 128 and c.lift_base == "canonical+expression"
    assert AvatarConfig.preset_config("paper").render_resolution == 128
    assert AvatarConfig.from_json(c.to_json()) == c
    assert (c.plane_size, c.raster_resolution) == (256, 128)
    with pytest.raises(ValueError, match=r"unknown preset 'nope'"):
        AvatarConfig.preset_config("nope")
    with pytest.raises(ValueError, match=r"lift_base must be one of"):
        AvatarConfig(lift_base="expression")
    assert AvatarConfig.preset_config("tiny").encoder_channels == 64  # mit-tiny's head width, derived
    assert AvatarConfig().encoder_channels == 256
    with pytest.raises(ValueError, match=r"encoder_channels must be the 'mit-tiny' SegFormer's head width 64 \(or "
                                         r"None\), got 256"):
        AvatarConfig(encoder="mit-tiny", encoder_channels=256)
    with pytest.raises(ValueError, match=r"encoder must be one of \[.*'mit-tiny'\], got 'mit-b9'"):
        AvatarConfig(encoder="mit-b9")
    with pytest.raises(ValueError, match=r"unknown fields \['bogus'\]"):
        AvatarConfig.from_json('{"bogus": 1}')


def test_tiny_forward_shapes(tiny):
    c = tiny.config
    out = tiny(_batch(tiny), seed=0, super_resolve=True)
    r, C, P = c.render_resolution, c.plane_channels, c.plane_size
    for key in ("canonical", "canonical+expression", "full"):
        assert out[key].features.shape == (2, C, r, r)
        assert out[key].depth.shape == (2, 1, r, r) and out[key].opacity.shape == (2, 1, r, r)
    assert out["neutral"].features.shape == (2, C, c.lift_resolution, c.lift_resolution)
    n = c.face_render_size
    assert out["neutral_3dmm_image"].shape == (2, 3, n, n) and out["neutral_3dmm_mask"].shape == (2, 1, n, n)
    assert out["image"].shape == (2, 3, c.sr_out_size, c.sr_out_size)
    for name in ("canonical", "expression", "appearance"):
        assert out["planes"][name].shape == (2, 3, C, P, P)
    assert all(torch.isfinite(v.features).all() for k, v in out.items() if k in ("canonical", "full", "neutral"))


def test_stages_route_the_gradients(face):
    torch.manual_seed(0)
    model = OneShotAvatar("tiny", face)
    batch = _batch(model, B=1)

    def grads(stage):
        model.set_stage(stage)
        model.zero_grad(set_to_none=True)
        out = model(batch, seed=0, super_resolve=True)
        loss = sum(out[k].features.square().mean() for k in ("canonical", "canonical+expression", "full", "neutral"))
        loss = loss + out["image"].square().mean()
        if loss.requires_grad:
            loss.backward()
        return {name: any(p.grad is not None and p.grad.abs().sum() > 0 for p in mod.parameters())
                for name, mod in model.named_children()}

    g1 = grads(1)
    assert {"canonical_encoder", "canonical_head", "expression_encoder", "expression_head", "appearance_encoder",
            "appearance_upsampler", "decoder"} <= set(g1)
    for name, module in model.named_children():
        if name != "super_resolution" and any(True for _ in module.parameters()):
            assert g1[name], name
    assert not g1["super_resolution"]
    g2 = grads(2)
    assert g2["super_resolution"] and not any(v for k, v in g2.items() if k != "super_resolution")


def test_template_planes_add_a_learned_plane_to_the_canonical_branch(face):
    torch.manual_seed(0)
    cfg = AvatarConfig.preset_config("tiny", template_planes=True)
    model = OneShotAvatar(cfg, face).eval()
    t = model.canonical_template.planes
    assert t.shape == (1, 3, cfg.plane_channels, cfg.plane_size, cfg.plane_size) and not t.any()
    plain = OneShotAvatar(AvatarConfig.preset_config("tiny", template_planes=False), face).eval()
    assert plain.canonical_template is None
    missing, unexpected = plain.load_state_dict(model.state_dict(), strict=False)
    assert unexpected == ["canonical_template.planes"] and not missing
    batch = _batch(model, B=2)
    with torch.no_grad():
        a = model(batch, seed=0)["planes"]["canonical"]
        assert torch.equal(a, plain(batch, seed=0)["planes"]["canonical"])  # zero at initialisation
        t.normal_()
        b = model(batch, seed=0)["planes"]["canonical"]
    torch.testing.assert_close(b - a, (t * cfg.template_lr_multiplier).expand_as(a))
    with pytest.raises(ValueError, match=r"x must be \[B, 3, 16, 64, 64\], got \[1, 3, 16, 32, 32\]"):
        model.canonical_template(torch.zeros(1, 3, 16, 32, 32))


@pytest.mark.parametrize("lift_base", ["canonical", "canonical+expression"])
def test_animate_with_a_cached_avatar_equals_forward(face, lift_base):
    torch.manual_seed(0)
    model = OneShotAvatar(AvatarConfig.preset_config("tiny", lift_base=lift_base), face).eval()
    batch = _batch(model, B=2, seed=3)
    with torch.no_grad():
        out = model(batch, seed=7, super_resolve=True)
        avatar = model.reconstruct(batch["source_image"], batch["source_camera"], batch["source_coeffs"], seed=7)
        anim = model.animate(avatar, batch["target_coeffs"], batch["target_camera"])
    assert torch.equal(anim.features, out["full"].features)
    assert torch.equal(anim.depth, out["full"].depth) and torch.equal(anim.opacity, out["full"].opacity)
    assert torch.equal(anim.image, out["image"])
    if lift_base == "canonical":
        assert avatar.appearance is not None  # cached per source
    else:
        assert avatar.appearance is None


def test_one_avatar_drives_many_frames(face):
    # With evenly spaced samples the render has no randomness, so a frame is the same alone or in a batch.
    torch.manual_seed(0)
    model = OneShotAvatar(AvatarConfig.preset_config("tiny", stratified=False), face).eval()
    batch = _batch(model, B=1, seed=5)
    targets, cams = _coeffs(face, 3, 9), cameras.orbit_labels(3)
    with torch.no_grad():
        avatar = model.reconstruct(batch["source_image"], batch["source_camera"], batch["source_coeffs"])
        frames = model.animate(avatar, targets, cams, super_resolve=False)
        for i in range(3):
            one = Coeffs(*(getattr(targets, k)[i:i + 1] for k in ("identity", "expression", "albedo", "lighting",
                                                                   "rotation", "translation")), model=targets.model)
            alone = model.animate(avatar, one, cams[i:i + 1], super_resolve=False)
            assert torch.allclose(frames.features[i:i + 1], alone.features, atol=1e-5)
            assert torch.allclose(frames.depth[i:i + 1], alone.depth, atol=1e-4)
    assert frames.features.shape == (3, model.config.plane_channels, 32, 32) and frames.image is None
    # ... and different frames differ.
    assert not torch.allclose(frames.features[0], frames.features[1], atol=1e-3)


def test_save_load_round_trip_is_bitwise(tiny, face, tmp_path):
    path = tmp_path / "avatar.safetensors"
    tiny.save(path)
    loaded = OneShotAvatar.load(path, face).eval()
    assert loaded.config == tiny.config
    sa, sb = tiny.state_dict(), loaded.state_dict()
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    batch = _batch(tiny, B=1, seed=2)
    with torch.no_grad():
        a, b = tiny(batch, seed=4, super_resolve=True), loaded(batch, seed=4, super_resolve=True)
    assert torch.equal(a["full"].features, b["full"].features) and torch.equal(a["image"], b["image"])
    # Strict by default.
    bad = dict(sa)
    bad.pop("decoder.net.0.bias")
    with pytest.raises(RuntimeError, match=r"Missing key\(s\).*decoder\.net\.0\.bias"):
        loaded.load_state_dict(bad)
    with pytest.raises(FileNotFoundError, match=r"no such file"):
        OneShotAvatar.load(tmp_path / "nope.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"junk")
    with pytest.raises(ValueError, match=r"not a safetensors file"):
        OneShotAvatar.load(tmp_path / "junk.safetensors")


def test_the_avatar_refuses_another_morphable_model(tiny, face, tmp_path):
    from test_face3d import write_bfm

    from oneshot.face3d import from_bfm

    write_bfm(tmp_path / "bfm.mat")
    bfm = from_bfm(tmp_path / "bfm.mat")
    batch = _batch(tiny, B=1)
    batch["source_coeffs"] = Coeffs.zeros(bfm, 1)
    with pytest.raises(ValueError, match=r"source_coeffs: coefficients of model bfm:.* cannot drive model builtin:"):
        tiny(batch)
    with pytest.raises(ValueError, match=r"built for morphable model builtin:.*got bfm:"):
        OneShotAvatar(AvatarConfig.preset_config("tiny", face_model=face.fingerprint), bfm)


def test_bad_inputs_are_named(tiny):
    batch = _batch(tiny, B=1)
    with pytest.raises(ValueError, match=r"source_image must be \[B, 3, 128, 128\].*got \[1, 3, 64, 64\]"):
        tiny({**batch, "source_image": torch.zeros(1, 3, 64, 64)})
    with pytest.raises(ValueError, match=r"target_camera must be \[B, 25\] camera labels with B = 1, got \[1, 16\]"):
        tiny({**batch, "target_camera": torch.zeros(1, 16)})
    short = _coeffs(tiny.face_model, 1, 0)
    short.expression = short.expression[:, :3]
    with pytest.raises(ValueError, match=r"target_coeffs: Coeffs.expression has 3 values"):
        tiny({**batch, "target_coeffs": short})
    with pytest.raises(KeyError, match=r"batch is missing \['target_camera'\]"):
        tiny({k: v for k, v in batch.items() if k != "target_camera"})
    with pytest.raises(ValueError, match=r"stage must be one of"):
        tiny.set_stage(3)
    avatar = tiny.reconstruct(batch["source_image"], batch["source_camera"], batch["source_coeffs"])
    two = tiny.reconstruct(torch.cat([batch["source_image"]] * 2), torch.cat([batch["source_camera"]] * 2),
                           _coeffs(tiny.face_model, 2, 0))
    with pytest.raises(ValueError, match=r"an avatar of batch 2 animates 1 or 2 frames at once, got 3"):
        tiny.animate(two, _coeffs(tiny.face_model, 3, 0), cameras.orbit_labels(3))
    assert avatar.batch_size == 1


@pytest.mark.slow
@pytest.mark.parametrize("preset", ["paper", "goha-release"])
def test_full_size_presets_run_one_forward(face, preset):
    torch.manual_seed(0)
    model = OneShotAvatar(AvatarConfig.preset_config(preset, chunk=8192), face).eval()
    batch = _batch(model, B=1)
    with torch.no_grad():
        out = model(batch, seed=0, super_resolve=True)
    r = model.config.render_resolution
    assert out["full"].features.shape == (1, 32, r, r) and out["image"].shape == (1, 3, 512, 512)
    assert torch.isfinite(out["image"]).all()


def test_dropping_empty_rays_changes_only_the_lifting(face):
    torch.manual_seed(0)
    keep = OneShotAvatar("tiny", face).eval()
    batch = _batch(keep, B=1, seed=1)
    with torch.no_grad():
        a = keep(batch, seed=0)
    # Random weights give no clear empty/solid split: drop the less opaque half of the rays.
    threshold = float(a["neutral"].opacity.median())
    drop = OneShotAvatar(AvatarConfig.preset_config("tiny", drop_empty_rays=True, empty_ray_opacity=threshold),
                         face).eval()
    drop.load_state_dict(keep.state_dict())
    with torch.no_grad():
        b = drop(batch, seed=0)
    assert torch.equal(a["planes"]["canonical"], b["planes"]["canonical"])
    assert torch.equal(a["neutral"].opacity, b["neutral"].opacity)
    assert not torch.equal(a["planes"]["appearance"], b["planes"]["appearance"])
