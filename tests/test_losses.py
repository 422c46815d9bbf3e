"""Training losses (oneshot.train.losses), the VGG-19 loader (oneshot.train.vgg) and the dual discriminator
(oneshot.train.discriminator), each against a computation written out here (F.conv2d stacks, explicit
softplus, analytic gradients), plus GOHA's discriminator layout (shared/reference/goha_state_dict.tsv).
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from conftest import assert_close
from oneshot.train.discriminator import DualDiscriminator, dual_input
from oneshot.train.losses import (
    PerceptualLoss,
    d_logistic_loss,
    density_smoothness,
    g_nonsaturating_loss,
    l1_loss,
    neutral_expression_loss,
    r1_penalty,
    tv_loss,
)
from oneshot.train.vgg import VGG19Features, load_vgg19_features

TSV = Path(__file__).parents[1].parent / "shared" / "reference" / "goha_state_dict.tsv"
# torchvision vgg19 "features" conv indices and channels (conv1_1 ... conv5_4), pools after these indices.
VGG_CONVS = [(0, 3, 64), (2, 64, 64), (5, 64, 128), (7, 128, 128), (10, 128, 256), (12, 256, 256),
             (14, 256, 256), (16, 256, 256), (19, 256, 512), (21, 512, 512), (23, 512, 512), (25, 512, 512),
             (28, 512, 512), (30, 512, 512), (32, 512, 512), (34, 512, 512)]
VGG_CONV_NAMES = ["conv1_1", "conv1_2", "conv2_1", "conv2_2", "conv3_1", "conv3_2", "conv3_3", "conv3_4",
                  "conv4_1", "conv4_2", "conv4_3", "conv4_4", "conv5_1", "conv5_2", "conv5_3", "conv5_4"]
POOL_AFTER = {"conv1_2", "conv2_2", "conv3_4", "conv4_4"}  # a max pool follows these convs' ReLU


def _gen(seed):
    return torch.Generator().manual_seed(seed)


# ----------------------------------------------------------------------------------------------- VGG-19 ---

@pytest.fixture(scope="module")
def vgg_state():
    """A torchvision-style vgg19 state dict with random (He-scaled) weights and classifier entries."""
    g = _gen(0)
    sd = {}
    for idx, cin, cout in VGG_CONVS:
        sd[f"features.{idx}.weight"] = torch.randn(cout, cin, 3, 3, generator=g) * math.sqrt(2 / (9 * cin))
        sd[f"features.{idx}.bias"] = 0.1 * torch.randn(cout, generator=g)
    for idx, fin, fout in ((0, 8, 4), (3, 4, 4), (6, 4, 10)):  # shapes do not matter: classifier.* is ignored
        sd[f"classifier.{idx}.weight"] = torch.randn(fout, fin, generator=g)
        sd[f"classifier.{idx}.bias"] = torch.randn(fout, generator=g)
    return sd


@pytest.fixture(scope="module")
def vgg_file(vgg_state, tmp_path_factory):
    path = tmp_path_factory.mktemp("vgg") / "vgg19-dcbb9e9d.pth"
    torch.save(vgg_state, path)
    return path


def _hand_vgg(sd, x, upto="conv5_4"):
    """Every conv's output (pre-ReLU) and ReLU of the torchvision vgg19 trunk up to conv `upto`, by a loop of
    F.conv2d."""
    out = {}
    for name, (idx, _, _) in zip(VGG_CONV_NAMES[:VGG_CONV_NAMES.index(upto) + 1], VGG_CONVS):
        x = F.conv2d(x, sd[f"features.{idx}.weight"], sd[f"features.{idx}.bias"], padding=1)
        out[name] = x
        x = torch.relu(x)
        out[name.replace("conv", "relu")] = x
        if name in POOL_AFTER:
            x = F.max_pool2d(x, 2, 2)
    return out


def _hand_perceptual(sd, x, y, layer_weights):
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    upto = max((k.replace("relu", "conv") for k in layer_weights), key=VGG_CONV_NAMES.index)
    fx = _hand_vgg(sd, ((x + 1) / 2 - mean) / std, upto)
    fy = _hand_vgg(sd, ((y + 1) / 2 - mean) / std, upto)
    return sum(w * (fx[k] - fy[k]).abs().mean() for k, w in layer_weights.items())


def _save_expanded(state_shapes: dict, path):
    """A state dict whose tensors are zero-stride views of one number: right shapes, tiny file."""
    torch.save({k: torch.zeros(1).expand(s) for k, s in state_shapes.items()}, path)


def _feature_shapes():
    with torch.device("meta"):
        return {k: list(v.shape) for k, v in VGG19Features().state_dict().items()}


def test_vgg_layer_names_match_torchvision_indices():
    m = VGG19Features()
    assert len(m.features) == 36
    convs = [i for i, l in enumerate(m.features) if isinstance(l, nn.Conv2d)]
    assert convs == [i for i, _, _ in VGG_CONVS]
    pools = [i for i, l in enumerate(m.features) if isinstance(l, nn.MaxPool2d)]
    assert pools == [4, 9, 18, 27]


@pytest.mark.parametrize("form", ["full", "features_prefixed", "bare"])
def test_vgg_loader_formats(vgg_state, vgg_file, tmp_path, form):
    if form == "full":
        path = vgg_file
    else:
        feats = {k: v for k, v in vgg_state.items() if k.startswith("features.")}
        if form == "bare":  # the state dict of vgg19().features
            feats = {k[len("features."):]: v for k, v in feats.items()}
        path = tmp_path / "f.pth"
        torch.save(feats, path)
    m = load_vgg19_features(path)
    sd = m.state_dict()
    assert sorted(sd) == sorted(k for k in vgg_state if k.startswith("features."))
    for k, v in sd.items():
        assert torch.equal(v, vgg_state[k]), k


def test_vgg_loader_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        load_vgg19_features(tmp_path / "nope.pth")
    shapes = _feature_shapes()

    p = tmp_path / "missing.pth"
    _save_expanded({k: s for k, s in shapes.items() if k != "features.34.bias"}, p)
    with pytest.raises(ValueError, match=r"1 missing keys \(e.g. \['features.34.bias'\]\), 0 unexpected"):
        load_vgg19_features(p)

    p = tmp_path / "unexpected.pth"
    _save_expanded({**shapes, "features.1.running_mean": [64]}, p)  # e.g. a vgg19_bn file
    with pytest.raises(ValueError, match=r"0 missing keys \(e.g. \[\]\), 1 unexpected \(e.g. \['features.1.running_mean'\]\)"):
        load_vgg19_features(p)

    p = tmp_path / "shape.pth"
    _save_expanded({**shapes, "features.0.weight": [64, 1, 3, 3]}, p)
    with pytest.raises(ValueError, match=r"features.0.weight has shape \[64, 1, 3, 3\], expected \[64, 3, 3, 3\]"):
        load_vgg19_features(p)

    p = tmp_path / "junk.pth"
    p.write_bytes(b"junk")
    with pytest.raises(ValueError, match="not a readable torch checkpoint"):
        load_vgg19_features(p)

    p = tmp_path / "tensor.pth"
    torch.save(torch.zeros(3), p)
    with pytest.raises(TypeError, match="must hold a state dict"):
        load_vgg19_features(p)


# --------------------------------------------------------------------------------------- perceptual ---

def test_perceptual_matches_hand_computation(vgg_state, vgg_file):
    loss = PerceptualLoss(vgg_file)
    assert loss.enabled
    g = _gen(1)
    x = (torch.rand(2, 3, 16, 16, generator=g) * 2 - 1).requires_grad_(True)
    y = torch.rand(2, 3, 16, 16, generator=g) * 2 - 1
    got = loss(x, y)
    default = {"conv1_2": 0.1, "conv2_2": 0.1, "conv3_4": 1.0, "conv4_4": 1.0, "conv5_4": 1.0}
    want = _hand_perceptual(vgg_state, x.detach(), y, default)
    assert got.shape == ()
    assert want > 0.1  # the features are not degenerate
    assert_close(got.detach(), want, rtol=1e-5, atol=1e-6, name="perceptual")
    # pre-ReLU features: differs from the same weights on the ReLU outputs
    post = _hand_perceptual(vgg_state, x.detach(), y, {k.replace("conv", "relu"): w for k, w in default.items()})
    assert abs(post - want) > 1e-3 * want

    # gradients reach the prediction only; the VGG is frozen and stays in eval mode
    got.backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert all(not p.requires_grad and p.grad is None for p in loss.vgg.parameters())
    loss.train()
    assert not loss.vgg.training
    assert loss(y, y).item() == 0.0


def test_perceptual_relu_layers_and_errors(vgg_state, vgg_file):
    loss = PerceptualLoss(vgg_file, layer_weights={"relu1_2": 2.0, "relu2_1": 0.5})
    assert loss.min_size == 2
    g = _gen(2)
    x, y = torch.rand(1, 3, 5, 7, generator=g) * 2 - 1, torch.rand(1, 3, 5, 7, generator=g) * 2 - 1
    want = _hand_perceptual(vgg_state, x, y, {"relu1_2": 2.0, "relu2_1": 0.5})
    assert_close(loss(x, y), want, rtol=1e-5, atol=1e-6, name="perceptual relu")
    with pytest.raises(ValueError, match=r"x must be at least 16x16"):
        PerceptualLoss(vgg_file)(torch.zeros(1, 3, 8, 8), torch.zeros(1, 3, 8, 8))
    with pytest.raises(ValueError, match=r"target must have the shape of x \(\[1, 3, 5, 7\]\), got \[1, 3, 5, 6\]"):
        loss(x, torch.zeros(1, 3, 5, 6))
    with pytest.raises(ValueError, match=r"x must be \[B, 3, H, W\], got \[1, 4, 5, 7\]"):
        loss(torch.zeros(1, 4, 5, 7), torch.zeros(1, 4, 5, 7))
    with pytest.raises(ValueError, match=r"conv/relu names .* got \['pool1'\]"):
        PerceptualLoss(vgg_file, layer_weights={"pool1": 1.0})
    with pytest.raises(FileNotFoundError):
        PerceptualLoss("/nonexistent/vgg19.pth")


def test_perceptual_disabled_without_weights():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        loss = PerceptualLoss()
        x = torch.randn(2, 3, 8, 8, requires_grad=True)
        out1, out2 = loss(x, torch.randn(2, 3, 8, 8)), loss(x, torch.randn(2, 3, 8, 8))
    msgs = [str(w.message) for w in caught]
    assert len(msgs) == 1 and "disabled" in msgs[0] and "vgg19" in msgs[0], msgs
    assert not loss.enabled and loss.vgg is None
    assert sum(p.numel() for p in loss.parameters()) == 0  # never random weights
    assert out1.shape == () and out1.item() == 0.0 and out1.dtype == x.dtype and out1.device == x.device
    total = (x ** 2).mean() + out1  # keeps the graph valid: backward works, and alone too
    total.backward()
    assert_close(x.grad, 2 * x.detach() / x.numel(), rtol=1e-6, name="grad")
    x.grad = None
    out2.backward()
    assert torch.count_nonzero(x.grad) == 0
    with torch.no_grad():
        x_inf = torch.full((1, 3, 4, 4), float("inf"))
    assert loss(x_inf, x_inf).item() == 0.0  # no NaN from 0 * inf


# ------------------------------------------------------------------------------------- simple terms ---

def test_l1_and_tv_by_hand():
    a = torch.tensor([[1.0, -2.0], [0.5, 4.0]])
    b = torch.tensor([[0.0, 1.0], [0.5, 1.0]])
    assert l1_loss(a, b).item() == pytest.approx((1 + 3 + 0 + 3) / 4)
    with pytest.raises(ValueError, match=r"target must have the shape of pred \(\[2, 2\]\), got \[2\]"):
        l1_loss(a, b[0])
    x = torch.tensor([[1.0, 2.0, 4.0], [0.0, 2.0, 1.0]])  # H = 2, W = 3
    dh = (1 + 0 + 3) / 3
    dw = (1 + 2 + 2 + 1) / 4
    assert tv_loss(x).item() == pytest.approx(dh + dw)
    planes = x.expand(2, 3, 4, 2, 3)
    assert tv_loss(planes).item() == pytest.approx(dh + dw)
    assert tv_loss(torch.ones(1, 1, 1, 5, requires_grad=True)).item() == 0.0


def test_neutral_expression_loss_by_hand():
    g = _gen(3)
    B, n = 2, 4
    color = torch.tensor([0.3, -0.5, 0.8]).view(1, 3, 1, 1)
    render = color.expand(B, 3, 8, 8).clone().requires_grad_(True)  # a constant image resizes to itself
    target = torch.rand(B, 3, n, n, generator=g) * 2 - 1
    mask = (torch.rand(B, 1, n, n, generator=g) > 0.5).float()
    calls = []

    def fake_perceptual(a, b):
        calls.append((a.detach().clone(), b.clone()))
        return ((a - b) ** 2).mean()

    got = neutral_expression_loss(render, target, mask, fake_perceptual)
    pred, tgt = color.expand(B, 3, n, n) * mask, target * mask
    want = (pred - tgt).abs().mean() + 3.0 * ((pred - tgt) ** 2).mean()
    assert_close(got.detach(), want, rtol=1e-6, atol=1e-7, name="neutral")
    assert_close(calls[0][0], pred, rtol=1e-6, atol=1e-7, name="masked render")
    assert_close(calls[0][1], tgt, name="masked target")
    got.backward()
    assert render.grad.abs().sum() > 0

    only_l1 = neutral_expression_loss(render.detach(), target, mask, None, l1_weight=2.0)
    assert_close(only_l1, 2 * (pred - tgt).abs().mean(), rtol=1e-6, name="l1 part")
    with pytest.warns(UserWarning, match="disabled"):
        disabled = PerceptualLoss()
    assert_close(neutral_expression_loss(render.detach(), target, mask, disabled), (pred - tgt).abs().mean(),
                 rtol=1e-6, name="disabled perceptual")
    with pytest.raises(ValueError, match=r"mask must be \[2, 1, 4, 4\] .* got \[2, 1, 4, 5\]"):
        neutral_expression_loss(render, target, torch.ones(B, 1, 4, 5), None)


class _QuadDecoder(nn.Module):
    """sigma = (features · w)², a non-linear stand-in for the tri-plane decoder."""

    def __init__(self, c):
        super().__init__()
        self.w = nn.Parameter(torch.linspace(-1, 2, c))

    def forward(self, f):
        return (f * self.w).sum(-1) ** 2, f


def test_density_smoothness_by_hand():
    B, C, N, s = 2, 4, 50, 0.05
    planes = torch.randn(B, 3, C, 8, 8, generator=_gen(4)).requires_grad_(True)
    dec = _QuadDecoder(C)
    got = density_smoothness(dec, planes, N, sigma=s, generator=_gen(7))

    g = _gen(7)
    x = torch.rand(B, N, 3, generator=g) - 0.5
    eps = torch.randn(B, N, 3, generator=g) * s

    def sample(p):  # GOHA planes xy, xz, zy; bilinear, zeros, align_corners=False; mean over planes
        feats = 0
        for k, (a0, a1) in enumerate(((0, 1), (0, 2), (2, 1))):
            grid = (p[..., [a0, a1]] * 2)[:, None]  # [B, 1, N, 2]
            feats = feats + F.grid_sample(planes.detach()[:, k], grid, mode="bilinear", padding_mode="zeros",
                                          align_corners=False)[:, :, 0].transpose(1, 2)
        return feats / 3

    w = dec.w.detach()
    want = (((sample(x) * w).sum(-1) ** 2) - ((sample(x + eps) * w).sum(-1) ** 2)).abs().mean()
    assert want > 1e-3
    assert_close(got.detach(), want, rtol=1e-5, atol=1e-7, name="density smoothness")
    got.backward()
    assert planes.grad.abs().sum() > 0 and dec.w.grad.abs().sum() > 0
    assert density_smoothness(dec, planes, N, sigma=0.0, generator=_gen(7)).item() == 0.0
    with pytest.raises(ValueError, match=r"n_points must be a positive int, got 0"):
        density_smoothness(dec, planes, 0)
    with pytest.raises(ValueError, match=r"planes must be \[B, 3, C, H, W\], got \[2, 2, 4, 8, 8\]"):
        density_smoothness(dec, planes[:, :2], N)


# -------------------------------------------------------------------------------------------- GAN ---

def test_gan_losses_by_formula():
    real = torch.tensor([[2.0], [-1.0], [0.0]], dtype=torch.float64)
    fake = torch.tensor([[-3.0], [0.5]], dtype=torch.float64)
    sp = lambda v: math.log1p(math.exp(v))  # noqa: E731
    assert g_nonsaturating_loss(fake).item() == pytest.approx((sp(3.0) + sp(-0.5)) / 2, rel=1e-12)
    want_d = (sp(-2.0) + sp(1.0) + sp(0.0)) / 3 + (sp(-3.0) + sp(0.5)) / 2
    assert d_logistic_loss(real, fake).item() == pytest.approx(want_d, rel=1e-12)
    big = torch.tensor([[-200.0]])  # softplus, not log(1 + exp): finite
    assert g_nonsaturating_loss(big).item() == pytest.approx(200.0)


def test_r1_penalty_linear_discriminator():
    g = _gen(5)
    w = torch.randn(6, 4, 4, generator=g, dtype=torch.float64)
    x = torch.randn(3, 6, 4, 4, generator=g, dtype=torch.float64).requires_grad_(True)
    logits = (x * w).sum((1, 2, 3)).unsqueeze(1) + 0.7  # D(x) = <w, x> + b: ∇ = w for every sample
    pen = r1_penalty(logits, x)
    assert pen.item() == pytest.approx(w.square().sum().item(), rel=1e-12)

    # quadratic D(x) = ||x||² / 2: ∇ = x, penalty = mean ||x_i||²; and it back-propagates (create_graph)
    x2 = x.detach().clone().requires_grad_(True)
    pen2 = r1_penalty(0.5 * x2.square().sum((1, 2, 3)).unsqueeze(1), x2)
    assert pen2.item() == pytest.approx(x2.detach().square().sum((1, 2, 3)).mean().item(), rel=1e-12)
    (gx,) = torch.autograd.grad(pen2, x2)
    assert_close(gx, 2 * x2.detach() / 3, rtol=1e-12, name="d penalty / dx")

    # several inputs (high-res and low-res of a dual discriminator): squared norms add per sample
    hi = torch.randn(2, 3, 4, 4, dtype=torch.float64, requires_grad=True)
    lo = torch.randn(2, 3, 2, 2, dtype=torch.float64, requires_grad=True)
    a, b = 2.0, -3.0
    logits = (a * hi.sum((1, 2, 3)) + b * lo.sum((1, 2, 3))).unsqueeze(1)
    assert r1_penalty(logits, (hi, lo)).item() == pytest.approx(a * a * 48 + b * b * 12, rel=1e-12)

    with pytest.raises(ValueError, match="real_images must require grad"):
        r1_penalty(logits, x.detach())


# ---------------------------------------------------------------------------------- discriminator ---

def test_discriminator_goha_layout_on_meta():
    with torch.device("meta"):
        d = DualDiscriminator()
    sd = d.state_dict()
    assert len(sd) == 43
    assert sum(v.numel() for v in sd.values()) == 24_030_849
    assert list(sd["conv_body.0.0.weight"].shape) == [32, 6, 1, 1]
    assert list(sd["conv_body.0.1.bias"].shape) == [32]
    assert "conv_body.0.0.bias" not in sd
    assert list(sd["final_conv.0.weight"].shape) == [512, 513, 3, 3]
    assert list(sd["final_linear.0.weight"].shape) == [512, 8192]
    if TSV.is_file():
        rows = [line.split("\t") for line in TSV.read_text().splitlines() if not line.startswith("#")]
        goha = [(r[1], [int(s) for s in r[2].split("x")]) for r in rows if r[0] == "discriminator_dict"]
        assert [(k, list(v.shape)) for k, v in sd.items()] == goha


def _hand_discriminator(sd, x, size, group_size=4):
    """basicsr's StyleGAN2Discriminator written out with F.* on the state dict (GOHA's 6-channel first layer)."""
    r2 = math.sqrt(2)

    def lrelu(v, bias):
        return F.leaky_relu(v + bias.view(1, -1, 1, 1), 0.2) * r2

    def econv(v, w, stride=1, padding=0):
        return F.conv2d(v, w / math.sqrt(w.shape[1] * w.shape[2] ** 2), stride=stride, padding=padding)

    k1 = torch.tensor([1.0, 3.0, 3.0, 1.0])
    k2 = (k1[:, None] * k1[None]) / 64

    def blur(v, pad):
        v = F.pad(v, (pad, pad, pad, pad))
        return F.conv2d(v, k2.expand(v.shape[1], 1, 4, 4), groups=v.shape[1])

    out = lrelu(econv(x, sd["conv_body.0.0.weight"]), sd["conv_body.0.1.bias"])
    for i in range(1, int(math.log2(size)) - 1):
        p = f"conv_body.{i}."
        h = lrelu(econv(out, sd[p + "conv1.0.weight"], padding=1), sd[p + "conv1.1.bias"])
        h = lrelu(econv(blur(h, 2), sd[p + "conv2.1.weight"], stride=2), sd[p + "conv2.2.bias"])
        s = econv(blur(out, 1), sd[p + "skip.1.weight"], stride=2)
        out = (h + s) / r2
    b = out.shape[0]
    g = max(d for d in range(1, min(b, group_size) + 1) if b % d == 0)
    m = b // g
    std = torch.empty(b)
    for i in range(b):
        members = out[[j for j in range(b) if j % m == i % m]]
        std[i] = torch.sqrt(members.var(0, unbiased=False) + 1e-8).mean()
    out = torch.cat([out, std.view(b, 1, 1, 1).expand(b, 1, 4, 4).to(out)], 1)
    out = lrelu(econv(out, sd["final_conv.0.weight"], padding=1), sd["final_conv.1.bias"])
    out = out.reshape(b, -1)
    w0, w1 = sd["final_linear.0.weight"], sd["final_linear.1.weight"]
    out = F.leaky_relu(out @ (w0 / math.sqrt(w0.shape[1])).T + sd["final_linear.0.bias"], 0.2) * r2
    return out @ (w1 / math.sqrt(w1.shape[1])).T + sd["final_linear.1.bias"]


@pytest.mark.parametrize("batch", [1, 3, 4, 5, 8])
def test_discriminator_matches_hand_computation(batch):
    torch.manual_seed(0)
    d = DualDiscriminator(size=16, narrow=1 / 32)
    with torch.no_grad():  # non-zero biases so bias mix-ups show
        for k, p in d.named_parameters():
            if k.endswith("bias"):
                p.copy_(0.1 * torch.randn(p.shape))
    x = torch.randn(batch, 6, 16, 16, generator=_gen(batch))
    got = d(x)
    assert got.shape == (batch, 1)
    want = _hand_discriminator({k: v.detach() for k, v in d.state_dict().items()}, x, 16)
    assert_close(got.detach(), want, rtol=1e-4, atol=1e-5, name=f"D(x), batch {batch}")


@pytest.mark.parametrize("batch", [1, 3, 5])
def test_discriminator_dual_input_gradients(batch):
    torch.manual_seed(1)
    d = DualDiscriminator(size=32, narrow=1 / 16)
    hi = torch.randn(batch, 3, 32, 32, requires_grad=True)
    lo = torch.randn(batch, 3, 14, 14, requires_grad=True)
    x = dual_input(hi, lo)
    assert x.shape == (batch, 6, 32, 32)
    assert torch.equal(x[:, :3], hi.detach())
    assert torch.equal(x[:, 3:], F.interpolate(lo.detach(), size=(32, 32), mode="bilinear", align_corners=False))
    out = d(hi, lo)
    assert out.shape == (batch, 1) and torch.isfinite(out).all()
    assert_close(out.detach(), d(x).detach(), name="forward(hi, lo) vs forward(dual_input)")
    r1 = r1_penalty(out, (hi, lo))
    (out.sum() + r1).backward()
    assert hi.grad.abs().sum() > 0 and lo.grad.abs().sum() > 0
    assert all(p.grad is not None for p in d.parameters())


def test_discriminator_errors():
    d = DualDiscriminator(size=8, narrow=1 / 64)
    with pytest.raises(ValueError, match=r"x must be \[B, 6, 8, 8\] with B >= 1, got \[2, 3, 8, 8\]"):
        d(torch.zeros(2, 3, 8, 8))
    with pytest.raises(ValueError, match=r"size must be a power of two in \[4, 1024\], got 100"):
        DualDiscriminator(size=100)
    with pytest.raises(ValueError, match=r"low_res must have high_res's batch size 2, got \[1, 3, 4, 4\]"):
        dual_input(torch.zeros(2, 3, 8, 8), torch.zeros(1, 3, 4, 4))
