"""oneshot.models.gfpgan against GFPGAN's own GFPGANv1Clean (gfpgan 1.3.8, installed with --no-deps).

GFPGAN's arch modules import two names from basicsr, which is not installed: they are given here as stub
modules while ``gfpgan/archs/stylegan2_clean_arch.py`` and ``gfpganv1_clean_arch.py`` are loaded by file path
under a private parent package (importing ``gfpgan`` itself would run its ``__init__`` and need basicsr).
"""

from __future__ import annotations

import importlib.util
import sys
import types
from pathlib import Path

import pytest
import torch
from torch import nn

from oneshot.models.gfpgan import GFPGANv1Clean, SuperResolution, load_gfpgan_weights

RELEASE = dict(out_size=512, num_style_feat=512, channel_multiplier=2, num_mlp=8, input_is_latent=True,
               different_w=True, narrow=1, sft_half=True)  # GFPGANv1.3 / v1.4


# ------------------------------------------------------------------------------------------------------------
# GFPGAN's own modules, without basicsr


def _default_init_weights(module_list, scale=1, bias_fill=0, **kwargs):
    """basicsr.archs.arch_util.default_init_weights: He-normal weights times `scale`, biases `bias_fill`."""
    if not isinstance(module_list, list):
        module_list = [module_list]
    with torch.no_grad():
        for module in module_list:
            for m in module.modules():
                if isinstance(m, (nn.Conv2d, nn.Linear)):
                    nn.init.kaiming_normal_(m.weight, **kwargs)
                    m.weight.mul_(scale)
                    if m.bias is not None:
                        m.bias.fill_(bias_fill)
                elif isinstance(m, nn.modules.batchnorm._BatchNorm):
                    nn.init.constant_(m.weight, 1)
                    if m.bias is not None:
                        m.bias.fill_(bias_fill)


class _Registry:
    def register(self, *args, **kwargs):
        return lambda obj: obj


@pytest.fixture(scope="module")
def ref():
    """GFPGAN's gfpganv1_clean_arch module (its StyleGAN2 classes alongside)."""
    spec = importlib.util.find_spec("gfpgan")  # locates the package without running its __init__
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("gfpgan is not installed (pip install --no-deps gfpgan==1.3.8)")
    archs = Path(list(spec.submodule_search_locations)[0]) / "archs"
    pkg = "_oneshot_gfpgan_ref"
    if f"{pkg}.gfpganv1_clean_arch" in sys.modules:
        return sys.modules[f"{pkg}.gfpganv1_clean_arch"]

    stubs = {name: types.ModuleType(name) for name in
             ["basicsr", "basicsr.utils", "basicsr.utils.registry", "basicsr.archs", "basicsr.archs.arch_util"]}
    stubs["basicsr.utils.registry"].ARCH_REGISTRY = _Registry()
    stubs["basicsr.archs.arch_util"].default_init_weights = _default_init_weights
    saved = {name: sys.modules.get(name) for name in stubs}
    sys.modules.update(stubs)
    try:
        parent = types.ModuleType(pkg)
        parent.__path__ = [str(archs)]
        sys.modules[pkg] = parent
        for name in ["stylegan2_clean_arch", "gfpganv1_clean_arch"]:  # the second imports the first relatively
            mspec = importlib.util.spec_from_file_location(f"{pkg}.{name}", archs / f"{name}.py")
            mod = importlib.util.module_from_spec(mspec)
            sys.modules[mspec.name] = mod
            mspec.loader.exec_module(mod)
    finally:  # the loaded modules keep their references; basicsr leaves sys.modules again
        for name, old in saved.items():
            if old is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = old
    return sys.modules[f"{pkg}.gfpganv1_clean_arch"]


def _theirs(ref, out_size, num_style_feat=512, channel_multiplier=2, num_mlp=8, input_is_latent=True,
            different_w=True, narrow=1, sft_half=True):
    return ref.GFPGANv1Clean(out_size, num_style_feat=num_style_feat, channel_multiplier=channel_multiplier,
                             decoder_load_path=None, fix_decoder=False, num_mlp=num_mlp,
                             input_is_latent=input_is_latent, different_w=different_w, narrow=narrow,
                             sft_half=sft_half)


def _layout(module: nn.Module):
    return [(k, tuple(v.shape)) for k, v in module.state_dict().items()]


def _randomise(module: nn.Module, seed: int) -> nn.Module:
    """Perturb every parameter and buffer, so that no weight stays at its 0/1 initial value."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for t in list(module.parameters()) + list(module.buffers()):
            std = 0.5 * float(t.std()) if t.numel() > 1 and float(t.std()) > 0 else 0.2
            t.add_(torch.randn(t.shape, generator=g) * std)
    return module


def _assert_equal(a: torch.Tensor, b: torch.Tensor, name: str):
    assert a.shape == b.shape and a.dtype == b.dtype, f"{name}: {a.shape} {a.dtype} vs {b.shape} {b.dtype}"
    if not torch.equal(a, b):
        d = (a - b).abs()
        where = [int(i) for i in torch.unravel_index(torch.argmax(d), d.shape)]
        raise AssertionError(f"{name}: {int((a != b).sum())} of {a.numel()} elements differ; max abs diff "
                             f"{d.max().item():.3g} at {where}")


# Small configurations (input/output side <= 128) covering every branch of the architecture.
SMALL = {
    "tiny128": dict(out_size=128, num_style_feat=128, channel_multiplier=1, num_mlp=2, narrow=0.25),
    "s64": dict(out_size=64, num_style_feat=64, narrow=0.125),
    "s32_full_sft_z_shared_w": dict(out_size=32, num_style_feat=32, narrow=0.125, sft_half=False,
                                    input_is_latent=False, different_w=False, num_mlp=3),
    "s16_z_different_w": dict(out_size=16, num_style_feat=16, narrow=0.0625, input_is_latent=False, num_mlp=1),
}


# ------------------------------------------------------------------------------------------------------------
# Structure


def test_release_state_dict_identical(ref):
    with torch.device("meta"):
        ours = GFPGANv1Clean()
        ours_explicit = GFPGANv1Clean(**RELEASE)
        theirs = _theirs(ref, 512)
    assert _layout(ours) == _layout(theirs)  # same keys, same order, same shapes
    assert _layout(ours_explicit) == _layout(ours)
    n = sum(v.numel() for v in theirs.state_dict().values())
    assert sum(v.numel() for v in ours.state_dict().values()) == n and n > 80e6
    assert any(k.startswith("stylegan_decoder.style_mlp.") for k, _ in _layout(ours))
    assert "stylegan_decoder.noises.noise14" in ours.state_dict()
    assert [k for k, _ in ours.named_buffers()] == [k for k, _ in theirs.named_buffers()]


@pytest.mark.parametrize("cfg", list(SMALL.values()) + [
    dict(out_size=8, num_style_feat=8, narrow=0.03125, channel_multiplier=1),
    dict(out_size=256, num_style_feat=64, narrow=0.5, channel_multiplier=1.5, sft_half=False),
    dict(out_size=1024, num_style_feat=512, channel_multiplier=2, different_w=False),
], ids=lambda c: f"S{c['out_size']}")
def test_state_dict_identical_other_configs(ref, cfg):
    with torch.device("meta"):
        assert _layout(GFPGANv1Clean(**cfg)) == _layout(_theirs(ref, **cfg))


@pytest.mark.parametrize("name", ["tiny128", "s32_full_sft_z_shared_w"])
def test_same_seed_same_initialisation(ref, name):
    """Built after the same seed, both draw the same initial weights (same init rules, same order)."""
    torch.manual_seed(123)
    ours = GFPGANv1Clean(**SMALL[name])
    torch.manual_seed(123)
    theirs = _theirs(ref, **SMALL[name])
    for (k, a), b in zip(ours.state_dict().items(), theirs.state_dict().values()):
        _assert_equal(a, b, k)


# ------------------------------------------------------------------------------------------------------------
# Outputs


def _compare_forward(ours, theirs, x, **kw):
    with torch.no_grad():
        img_a, rgbs_a = ours(x, **kw)
        img_b, rgbs_b = theirs(x, **kw)
    _assert_equal(img_a, img_b, "image")
    assert len(rgbs_a) == len(rgbs_b)
    for i, (a, b) in enumerate(zip(rgbs_a, rgbs_b)):
        _assert_equal(a, b, f"rgb {i}")
    return img_a, rgbs_a


@pytest.mark.parametrize("name", list(SMALL))
def test_forward_identical_both_directions(ref, name):
    cfg = SMALL[name]
    S = cfg["out_size"]
    batch = 1 if S >= 128 else 2  # batch 2 (per-sample modulated weights in one grouped conv) where it is cheap
    x = torch.rand(batch, 3, S, S, generator=torch.Generator().manual_seed(1)) * 2 - 1

    # ours -> theirs
    ours = _randomise(GFPGANv1Clean(**cfg), seed=10).eval()
    theirs = _theirs(ref, **cfg).eval()
    theirs.load_state_dict(ours.state_dict(), strict=True)
    img, rgbs = _compare_forward(ours, theirs, x, randomize_noise=False)
    assert torch.isfinite(img).all() and img.std() > 1e-2, "degenerate output: the comparison would be weak"
    assert [tuple(r.shape) for r in rgbs] == [(batch, 3, 2**i, 2**i) for i in range(3, S.bit_length())]
    _, none = _compare_forward(ours, theirs, x, randomize_noise=False, return_rgb=False)
    assert none == []

    # theirs -> ours
    theirs = _randomise(_theirs(ref, **cfg), seed=20).eval()
    ours = GFPGANv1Clean(**cfg).eval()
    ours.load_state_dict(theirs.state_dict(), strict=True)
    _compare_forward(ours, theirs, x, randomize_noise=False)

    # random noise drawn from the global RNG in the same order and the same way
    with torch.no_grad():
        torch.manual_seed(7)
        a = ours(x)[0]
        torch.manual_seed(7)
        b = theirs(x)[0]
    _assert_equal(a, b, "image with randomised noise")


def test_backward_identical(ref):
    cfg = SMALL["s64"]
    ours = _randomise(GFPGANv1Clean(**cfg), seed=3)
    theirs = _theirs(ref, **cfg)
    theirs.load_state_dict(ours.state_dict(), strict=True)
    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(4)) * 2 - 1
    cot = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(5))
    grads = []
    for net in (ours, theirs):
        xi = x.clone().requires_grad_(True)
        img, rgbs = net(xi, randomize_noise=False)
        loss = (img * cot).sum() + sum(r.square().mean() for r in rgbs)
        grads.append(torch.autograd.grad(loss, [xi, *net.parameters()], allow_unused=True))
    names = ["x"] + [k for k, _ in ours.named_parameters()]
    for name, a, b in zip(names, *grads):
        if name.startswith("stylegan_decoder.style_mlp."):  # unused with input_is_latent=True
            assert a is None and b is None, name
        else:
            _assert_equal(a, b, f"grad {name}")


def test_generator_noise():
    net = _randomise(GFPGANv1Clean(**SMALL["s32_full_sft_z_shared_w"]), seed=0).eval()
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        state = torch.get_rng_state()
        a = net(x, generator=torch.Generator().manual_seed(1))[0]
        b = net(x, generator=torch.Generator().manual_seed(1))[0]
        c = net(x, generator=torch.Generator().manual_seed(2))[0]
        assert torch.equal(torch.get_rng_state(), state), "a generator must leave the global RNG alone"
        fixed1 = net(x, randomize_noise=False)[0]
        fixed2 = net(x, randomize_noise=False)[0]
    _assert_equal(a, b, "same seed")
    assert (a - c).abs().max() > 1e-3, "different seeds gave the same image"
    _assert_equal(fixed1, fixed2, "stored noise")
    assert (a - fixed1).abs().max() > 1e-3
    assert set(net.state_dict()) == set(GFPGANv1Clean(**SMALL["s32_full_sft_z_shared_w"]).state_dict())


def test_super_resolution_resizes_any_input():
    sr = _randomise(SuperResolution.tiny(), seed=0).eval()
    assert all(k.startswith("gfpgan.") for k in sr.state_dict())
    assert _layout(sr.gfpgan) == _layout(GFPGANv1Clean(**SMALL["tiny128"]))
    with torch.no_grad():
        for shape in [(1, 3, 1, 1), (2, 3, 17, 33), (1, 3, 128, 128), (1, 3, 300, 200), (0, 3, 5, 5)]:
            x = torch.rand(shape) * 2 - 1
            y = sr(x, randomize_noise=False)
            assert tuple(y.shape) == (shape[0], 3, 128, 128), shape
            if shape[0]:
                want = sr.gfpgan(torch.nn.functional.interpolate(x, size=(128, 128), mode="bilinear",
                                                                 align_corners=True), randomize_noise=False)[0]
                _assert_equal(y, want, f"SuperResolution {shape}")
        g = torch.Generator().manual_seed(3)
        assert torch.equal(sr(torch.zeros(1, 3, 64, 64), generator=g),
                           sr(torch.zeros(1, 3, 64, 64), generator=torch.Generator().manual_seed(3)))


# ------------------------------------------------------------------------------------------------------------
# Errors


def test_input_errors():
    sr = SuperResolution.tiny(out_size=16)
    for bad, msg in [(torch.zeros(3, 16, 16), r"\[B, 3, H, W\].*\[3, 16, 16\]"),
                     (torch.zeros(1, 4, 16, 16), r"\[1, 4, 16, 16\]"),
                     (torch.zeros(1, 3, 0, 16), r"H, W >= 1"),
                     (torch.zeros(1, 3, 16, 16, dtype=torch.uint8), "floating-point.*uint8"),
                     ([[0.0]], "float tensor.*list")]:
        with pytest.raises(ValueError, match=msg):
            sr(bad)
    net = sr.gfpgan
    with pytest.raises(ValueError, match=r"\[B, 3, 16, 16\], got \[1, 3, 16, 17\]"):
        net(torch.zeros(1, 3, 16, 17))
    with pytest.raises(ValueError, match="torch.float32.*got torch.float64"):
        net(torch.zeros(1, 3, 16, 16, dtype=torch.float64))
    with pytest.raises(ValueError, match="randomize_noise=True"):
        net(torch.zeros(1, 3, 16, 16), randomize_noise=False, generator=torch.Generator())
    with pytest.raises(TypeError, match="generator"):
        net(torch.zeros(1, 3, 16, 16), generator=3)
    for out_size in [500, 2048, 2, 512.0]:
        with pytest.raises(ValueError, match=f"out_size must be a power of two.*{out_size!r}"):
            GFPGANv1Clean(out_size)
    with pytest.raises(ValueError, match="narrow=0.01"):
        GFPGANv1Clean(64, narrow=0.01)
    with pytest.raises(ValueError, match="SFT needs"):
        GFPGANv1Clean(64, narrow=0.1)  # odd decoder widths


def test_load_weights(tmp_path):
    src = _randomise(GFPGANv1Clean(**SMALL["s32_full_sft_z_shared_w"]), seed=1)
    other = _randomise(GFPGANv1Clean(**SMALL["s32_full_sft_z_shared_w"]), seed=2)
    path = tmp_path / "GFPGANv1.4.pth"
    torch.save({"params_ema": src.state_dict(), "params": other.state_dict()}, path)

    def check(net, want):
        for (k, a), b in zip(net.state_dict().items(), want.state_dict().values()):
            _assert_equal(a, b, k)

    net = GFPGANv1Clean(**SMALL["s32_full_sft_z_shared_w"])
    assert load_gfpgan_weights(net, path) is net
    check(net, src)  # params_ema preferred
    check(load_gfpgan_weights(net, str(path), key="params"), other)
    sr = SuperResolution(32, num_style_feat=32, narrow=0.125, num_mlp=3)
    sr.gfpgan = GFPGANv1Clean(**SMALL["s32_full_sft_z_shared_w"])
    check(load_gfpgan_weights(sr, path).gfpgan, src)
    bare = tmp_path / "bare.pth"
    torch.save(src.state_dict(), bare)
    with torch.device("meta"):
        meta = GFPGANv1Clean(**SMALL["s32_full_sft_z_shared_w"])
    check(load_gfpgan_weights(meta, bare), src)  # meta modules receive the loaded tensors

    with pytest.raises(FileNotFoundError, match="no such file.*nope.pth"):
        load_gfpgan_weights(net, tmp_path / "nope.pth")
    with pytest.raises(KeyError, match="'ema'"):
        load_gfpgan_weights(net, path, key="ema")
    with pytest.raises(TypeError, match="GFPGANv1Clean or SuperResolution, got Linear"):
        load_gfpgan_weights(nn.Linear(1, 1), path)

    sd = src.state_dict()
    cases = {
        "missing": ({k: v for k, v in sd.items() if k != "final_linear.bias"}, r"1 missing keys.*final_linear.bias"),
        "unexpected": ({**sd, "extra.weight": torch.zeros(1)}, r"1 unexpected.*extra.weight"),
        "shape": ({**sd, "final_conv.weight": torch.zeros(2, 2, 3, 3)},
                  r"final_conv.weight has shape \[2, 2, 3, 3\], expected \[32, 32, 3, 3\]"),
        "not_dict": ([1, 2], "expected a dict"),
    }
    for name, (bad, msg) in cases.items():
        p = tmp_path / f"{name}.pth"
        torch.save({"params_ema": bad} if name != "not_dict" else bad, p)
        with pytest.raises(ValueError, match=msg):
            load_gfpgan_weights(net, p)
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="not a readable torch checkpoint"):
        load_gfpgan_weights(net, tmp_path / "junk.pth")
    with pytest.raises(ValueError, match="unexpected"):  # a checkpoint of another configuration
        load_gfpgan_weights(GFPGANv1Clean(**SMALL["s16_z_different_w"]), path)
