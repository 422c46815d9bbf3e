"""oneshot.eval: each metric against scikit-image / scipy / numpy or a closed form, the weight loaders on files
synthesized with the real key layouts, the protocols' pairs, and ``oneshot evaluate`` end to end."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from oneshot.eval import metrics as M

skimage_metrics = pytest.importorskip("skimage.metrics")


def _images(seed, B=2, C=3, H=24, W=31, smooth=True):
    g = torch.Generator().manual_seed(seed)
    a = torch.rand(B, C, H, W, generator=g, dtype=torch.float64)
    if smooth:  # structure, not only noise: SSIM's terms then all matter
        a = F.avg_pool2d(F.pad(a, (1, 1, 1, 1), mode="replicate"), 3, 1)
    b = (a + 0.1 * torch.randn(B, C, H, W, generator=g, dtype=torch.float64)).clamp(0, 1)
    return a, b


def _hwc(x):
    return x.permute(1, 2, 0).numpy()


# -- pixel metrics ---------------------------------------------------------------------------------------------

def test_l1_and_psnr_match_numpy_and_skimage():
    a, b = _images(0)
    for i in range(2):
        x, y = a[i].numpy(), b[i].numpy()
        assert float(M.l1(a, b)[i]) == pytest.approx(np.abs(x - y).mean(), rel=1e-12)
        ref = skimage_metrics.peak_signal_noise_ratio(_hwc(a[i]), _hwc(b[i]), data_range=1.0)
        assert float(M.psnr(a, b)[i]) == pytest.approx(ref, rel=1e-12)
        assert float(M.psnr(a * 255, b * 255, data_range=255)[i]) == pytest.approx(ref, rel=1e-12)
    assert torch.isinf(M.psnr(a, a)).all()


@pytest.mark.parametrize("kw,sk", [
    ({}, dict(gaussian_weights=True, sigma=1.5, use_sample_covariance=False)),  # Wang et al. (the default)
    (dict(gaussian_weights=False, win_size=7, use_sample_covariance=True), {}),  # scikit-image's own default
    (dict(gaussian_weights=False, win_size=11, use_sample_covariance=False), dict(win_size=11, use_sample_covariance=False)),
    (dict(sigma=0.8), dict(gaussian_weights=True, sigma=0.8, use_sample_covariance=False)),
])
@pytest.mark.parametrize("shape", [(11, 11), (24, 31), (40, 17)])
def test_ssim_matches_skimage(kw, sk, shape):
    a, b = _images(1, H=shape[0], W=shape[1])
    got = M.ssim(a, b, **kw)
    for i in range(a.shape[0]):
        ref = skimage_metrics.structural_similarity(_hwc(a[i]), _hwc(b[i]), data_range=1.0, channel_axis=-1, **sk)
        assert abs(float(got[i]) - ref) < 1e-12, (float(got[i]), ref)


@settings(deadline=None, max_examples=15)
@given(H=st.integers(11, 40), W=st.integers(11, 40), C=st.sampled_from([1, 3]), seed=st.integers(0, 2 ** 16))
def test_ssim_matches_skimage_on_drawn_shapes(H, W, C, seed):
    a, b = _images(seed, B=1, C=C, H=H, W=W, smooth=seed % 2 == 0)
    ref = skimage_metrics.structural_similarity(_hwc(a[0]), _hwc(b[0]), data_range=1.0, channel_axis=-1,
                                                gaussian_weights=True, sigma=1.5, use_sample_covariance=False)
    assert abs(float(M.ssim(a, b)[0]) - ref) < 1e-12


def test_ssim_of_identical_images_is_one_and_small_images_are_refused():
    a, _ = _images(2)
    assert torch.allclose(M.ssim(a, a), torch.ones(2, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"at least 11 x 11.*got 10 x 30"):
        M.ssim(a[..., :10, :30], a[..., :10, :30])
    with pytest.raises(ValueError, match=r"two \[B, C, H, W\] tensors of one shape"):
        M.ssim(a, a[:1])


def test_float32_inputs_give_the_float64_result():
    """Float32 images are scored in float64: bitwise the result of their float64 copies, and scikit-image's on them."""
    a, b = _images(3)
    a32, b32 = a.float(), b.float()
    for f in (M.ssim, M.psnr, M.l1):
        got = f(a32, b32)
        assert got.dtype == torch.float64 and torch.equal(got, f(a32.double(), b32.double())), f.__name__
    for i in range(a.shape[0]):
        ref = skimage_metrics.structural_similarity(_hwc(a32[i].double()), _hwc(b32[i].double()), data_range=1.0,
                                                    channel_axis=-1, gaussian_weights=True, sigma=1.5,
                                                    use_sample_covariance=False)
        assert abs(float(M.ssim(a32, b32)[i]) - ref) < 1e-12


# -- FID -------------------------------------------------------------------------------------------------------

def test_feature_statistics_match_numpy():
    f = torch.randn(50, 6, dtype=torch.float64)
    mu, cov = M.feature_statistics(f)
    assert np.allclose(mu.numpy(), f.numpy().mean(0), rtol=0, atol=1e-14)
    assert np.allclose(cov.numpy(), np.cov(f.numpy(), rowvar=False), rtol=0, atol=1e-13)
    with pytest.raises(ValueError, match="at least 2"):
        M.feature_statistics(f[:1])


def test_frechet_distance_closed_form_for_gaussians_with_shared_axes():
    """S1 = Q diag(a) Q^T, S2 = Q diag(b) Q^T: FID = |mu1 - mu2|^2 + sum (sqrt a - sqrt b)^2."""
    g = torch.Generator().manual_seed(0)
    D = 16
    Q, _ = torch.linalg.qr(torch.randn(D, D, generator=g, dtype=torch.float64))
    a, b = torch.rand(D, generator=g, dtype=torch.float64) * 3, torch.rand(D, generator=g, dtype=torch.float64) * 3
    mu1, mu2 = torch.randn(D, generator=g, dtype=torch.float64), torch.randn(D, generator=g, dtype=torch.float64)
    s1, s2 = Q @ torch.diag(a) @ Q.T, Q @ torch.diag(b) @ Q.T
    expected = float((mu1 - mu2).square().sum() + (a.sqrt() - b.sqrt()).square().sum())
    assert M.frechet_distance(mu1, s1, mu2, s2) == pytest.approx(expected, rel=1e-10, abs=1e-10)
    assert M.frechet_distance(mu1, s1, mu1, s1) == pytest.approx(0, abs=1e-9)


def test_frechet_distance_matches_pytorch_fids_scipy_route():
    from scipy import linalg

    g = torch.Generator().manual_seed(1)
    D = 12
    A, B = torch.randn(D, 3 * D, generator=g, dtype=torch.float64), torch.randn(D, 3 * D, generator=g, dtype=torch.float64)
    s1, s2 = (A @ A.T / D).numpy(), (B @ B.T / D).numpy()  # not commuting
    mu1, mu2 = np.zeros(D), np.ones(D) * 0.1
    covmean = linalg.sqrtm(s1.dot(s2)).real
    ref = float((mu1 - mu2) @ (mu1 - mu2) + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))
    assert M.frechet_distance(mu1, s1, mu2, s2) == pytest.approx(ref, rel=1e-9)


def test_fid_from_samples_approaches_the_closed_form():
    g = torch.Generator().manual_seed(2)
    n, D = 200_000, 3
    x = torch.randn(n, D, generator=g, dtype=torch.float64) * torch.tensor([1.0, 2.0, 0.5])
    y = torch.randn(n, D, generator=g, dtype=torch.float64) * torch.tensor([2.0, 1.0, 0.5]) + 1
    closed = 3 * 1.0 + (1 - 2) ** 2 + (2 - 1) ** 2  # |mu|^2 + sum (sd1 - sd2)^2
    assert M.fid_from_features(x, y) == pytest.approx(closed, abs=0.03)


def test_face_metrics_match_numpy():
    g = torch.Generator().manual_seed(3)
    a, b = torch.randn(4, 512, generator=g), torch.randn(4, 512, generator=g)
    an, bn = a.double().numpy(), b.double().numpy()
    cos = (an * bn).sum(1) / np.linalg.norm(an, axis=1) / np.linalg.norm(bn, axis=1)
    assert np.allclose(M.cosine_similarity(a, b).numpy(), cos, atol=1e-12)
    assert np.allclose(M.coefficient_distance(a, b).numpy(), np.abs(an - bn).mean(1), atol=1e-12)
    p, q = torch.rand(4, 68, 2, generator=g) * 256, torch.rand(4, 68, 2, generator=g) * 256
    pn, qn = p.double().numpy(), q.double().numpy()
    assert np.allclose(M.keypoint_distance(p, q).numpy(), np.linalg.norm(pn - qn, axis=2).mean(1), atol=1e-10)
    with pytest.raises(ValueError, match=r"\[B, K, 2\]"):
        M.keypoint_distance(p, q[:, :5])


# -- networks and their loaders ------------------------------------------------------------------------------------

def _alexnet_file(path, g):
    """torchvision's alexnet state dict layout: features.{0,3,6,8,10}.{weight,bias} and classifier.{1,4,6}.*."""
    shapes = {0: (64, 3, 11, 11), 3: (192, 64, 5, 5), 6: (384, 192, 3, 3), 8: (256, 384, 3, 3), 10: (256, 256, 3, 3)}
    sd = {}
    for i, s in shapes.items():
        sd[f"features.{i}.weight"] = torch.randn(s, generator=g) * (2 / (s[1] * s[2] * s[3])) ** 0.5
        sd[f"features.{i}.bias"] = torch.randn(s[0], generator=g) * 0.1
    for i, (o, n) in {1: (4096, 9216), 4: (4096, 4096), 6: (1000, 4096)}.items():
        sd[f"classifier.{i}.weight"] = torch.zeros(o, n)
        sd[f"classifier.{i}.bias"] = torch.zeros(o)
    torch.save(sd, path)
    return sd


def _heads_file(path, g):
    """The lpips package's v0.1/alex.pth layout."""
    sd = {f"lin{i}.model.1.weight": torch.rand(1, c, 1, 1, generator=g) for i, c in enumerate((64, 192, 384, 256, 256))}
    torch.save(sd, path)
    return sd


def _lpips_by_hand(alex, heads, a, b):
    shift = torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1)
    scale = torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1)

    def taps(x):
        x = (x - shift) / scale
        out = []
        for i, (stride, pad, pool) in zip((0, 3, 6, 8, 10), ((4, 2, True), (1, 2, True), (1, 1, False),
                                                             (1, 1, False), (1, 1, False))):
            x = F.relu(F.conv2d(x, alex[f"features.{i}.weight"], alex[f"features.{i}.bias"], stride, pad))
            out.append(x)
            if pool:
                x = F.max_pool2d(x, 3, 2)
        return out

    total = 0
    for k, (x, y) in enumerate(zip(taps(a), taps(b))):
        x = x / (x.norm(dim=1, keepdim=True) + 1e-10)
        y = y / (y.norm(dim=1, keepdim=True) + 1e-10)
        total = total + ((x - y) ** 2 * heads[f"lin{k}.model.1.weight"]).sum(1).mean((1, 2))
    return total


def test_lpips_loads_torchvision_and_lpips_files_and_matches_a_hand_computation(tmp_path):
    from oneshot.eval import load_lpips

    g = torch.Generator().manual_seed(0)
    alex, heads = _alexnet_file(tmp_path / "alexnet.pth", g), _heads_file(tmp_path / "alex.pth", g)
    net = load_lpips(tmp_path / "alexnet.pth", tmp_path / "alex.pth")
    a, b = torch.rand(3, 3, 64, 80, generator=g) * 2 - 1, torch.rand(3, 3, 64, 80, generator=g) * 2 - 1
    got = net(a, b)
    assert got.shape == (3,)
    assert torch.allclose(got, _lpips_by_hand(alex, heads, a, b), rtol=1e-5, atol=1e-6)
    assert torch.allclose(net(a, a), torch.zeros(3), atol=1e-6)
    assert (got > 0).all()
    # A bare features dict (keys 0.weight ...) loads too; a head of the wrong width is named.
    torch.save({k[len("features."):]: v for k, v in alex.items() if k.startswith("features.")}, tmp_path / "bare.pth")
    assert torch.allclose(load_lpips(tmp_path / "bare.pth", tmp_path / "alex.pth")(a, b), got)
    heads["lin2.model.1.weight"] = torch.rand(1, 256, 1, 1)
    torch.save(heads, tmp_path / "bad.pth")
    with pytest.raises(ValueError, match=r"lin2\.model\.1\.weight has shape \[1, 256, 1, 1\], expected \[1, 384, 1, 1\]"):
        load_lpips(tmp_path / "alexnet.pth", tmp_path / "bad.pth")
    with pytest.raises(FileNotFoundError, match="no such file"):
        load_lpips(tmp_path / "missing.pth", tmp_path / "alex.pth")


#: Shapes in pytorch-fid's pt_inception-2015-12-05-6726825d.pth (torchvision's Inception v3 layout, 1008 classes).
_INCEPTION_SENTINELS = {"Conv2d_1a_3x3.conv.weight": (32, 3, 3, 3), "Conv2d_4a_3x3.bn.running_var": (192,),
                        "Mixed_5b.branch_pool.conv.weight": (32, 192, 1, 1),
                        "Mixed_6a.branch3x3.conv.weight": (384, 288, 3, 3),
                        "Mixed_6e.branch7x7dbl_5.conv.weight": (192, 192, 1, 7),
                        "Mixed_7a.branch3x3_2.conv.weight": (320, 192, 3, 3),
                        "Mixed_7b.branch3x3dbl_1.conv.weight": (448, 1280, 1, 1),
                        "Mixed_7c.branch3x3dbl_3b.conv.weight": (384, 384, 3, 1), "fc.weight": (1008, 2048)}


def test_fid_inception_has_pytorch_fids_layout_and_loads_its_file(tmp_path):
    from oneshot.eval import FIDInception, load_fid_inception

    torch.manual_seed(0)
    net = FIDInception()
    sd = {k: v for k, v in net.state_dict().items() if not k.endswith("num_batches_tracked")}
    for k in sd:
        if k.endswith("running_var"):
            sd[k] = torch.rand_like(sd[k]) + 0.5
        elif k.endswith("running_mean") or k.endswith("bn.bias"):
            sd[k] = torch.randn_like(sd[k]) * 0.1
    sd["fc.weight"], sd["fc.bias"] = torch.zeros(1008, 2048), torch.zeros(1008)
    assert sum(k.endswith("conv.weight") for k in sd) == 94  # 94 BasicConv2d in Inception v3 without the aux head
    for k, s in _INCEPTION_SENTINELS.items():
        assert tuple(sd[k].shape) == s, k
    torch.save(sd, tmp_path / "pt_inception.pth")
    loaded = load_fid_inception(tmp_path / "pt_inception.pth")
    x = torch.rand(2, 3, 40, 40)
    f = loaded(x)
    assert f.shape == (2, 2048) and torch.isfinite(f).all() and (f >= 0).all()
    # The input is resized to 299 first: a 299 image and its 2x nearest enlargement's resize agree closely.
    assert torch.allclose(loaded(F.interpolate(x, size=(299, 299), mode="bilinear", align_corners=False)), f,
                          atol=1e-4)
    del sd["Mixed_6b.branch7x7_2.bn.weight"]
    torch.save(sd, tmp_path / "broken.pth")
    with pytest.raises(ValueError, match=r"1 missing keys \(e\.g\. \['Mixed_6b\.branch7x7_2\.bn\.weight'\]\)"):
        load_fid_inception(tmp_path / "broken.pth")


def test_arcface_reads_its_depth_from_the_file(tmp_path):
    from oneshot.eval import ArcFace, load_arcface

    torch.manual_seed(0)
    net = ArcFace((2, 2, 2, 2))  # r18
    sd = {"module." + k: v for k, v in net.state_dict().items()}  # a DataParallel save
    torch.save(sd, tmp_path / "backbone.pth")
    loaded = load_arcface(tmp_path / "backbone.pth")
    assert loaded.layers_spec == (2, 2, 2, 2)
    x = torch.rand(2, 3, 112, 112) * 2 - 1
    assert torch.allclose(loaded(x), net.eval()(x), atol=1e-5)
    # arcface_torch's iresnet key layout (insightface recognition/arcface_torch/backbones/iresnet.py)
    shapes = {k: tuple(v.shape) for k, v in net.state_dict().items()}
    for k, shp in {"conv1.weight": (64, 3, 3, 3), "prelu.weight": (64,), "layer1.0.bn1.running_var": (64,),
                   "layer1.0.downsample.0.weight": (64, 64, 1, 1), "layer2.0.conv1.weight": (128, 64, 3, 3),
                   "layer2.1.prelu.weight": (128,), "layer4.1.bn3.bias": (512,), "bn2.weight": (512,),
                   "fc.weight": (512, 25088), "features.running_mean": (512,)}.items():
        assert shapes[k] == shp, k
    assert not any("layer1.1.downsample" in k for k in shapes)
    del sd["module.layer3.1.prelu.weight"]
    torch.save(sd, tmp_path / "broken.pth")
    with pytest.raises(ValueError, match=r"layer3\.1\.prelu\.weight"):
        load_arcface(tmp_path / "broken.pth")
    torch.save({"layer1.0.conv1.weight": torch.zeros(1)}, tmp_path / "other.pth")
    with pytest.raises(ValueError, match=r"blocks per stage \[1, 0, 0, 0\]"):
        load_arcface(tmp_path / "other.pth")
    with pytest.raises(ValueError, match=r"\[B, 3, 112, 112\]"):
        loaded(torch.zeros(1, 3, 64, 64))


def test_arcface_crops_put_the_canonical_five_points_on_insightfaces_template():
    from oneshot.eval import ARCFACE_TEMPLATE, arcface_crops
    from oneshot.eval.protocol import canonical_five_pixels

    S = 256
    pts = canonical_five_pixels(S)
    yy, xx = torch.meshgrid(torch.arange(S) + 0.5, torch.arange(S) + 0.5, indexing="ij")
    img = torch.zeros(1, 3, S, S)
    for x, y in pts.tolist():
        img[0, :] += torch.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * 2.0 ** 2))
    crop = (arcface_crops(img)[0, 0] + 1) / 2
    # The least-squares similarity (numpy) from the five points to the template: where the blobs must land.
    P = pts.double().numpy()
    A = np.zeros((10, 4))
    A[0::2] = np.c_[P[:, 0], -P[:, 1], np.ones(5), np.zeros(5)]
    A[1::2] = np.c_[P[:, 1], P[:, 0], np.zeros(5), np.ones(5)]
    template = np.asarray(ARCFACE_TEMPLATE) + 0.5  # OpenCV's integer pixel centres -> oneshot's (+0.5)
    a, b, tx_, ty_ = np.linalg.lstsq(A, template.reshape(-1), rcond=None)[0]
    expected = np.c_[a * P[:, 0] - b * P[:, 1] + tx_, b * P[:, 0] + a * P[:, 1] + ty_]
    assert np.abs(expected - template).max() < 1.5  # the framings agree to a pixel or so
    for ex, ey in expected:  # each blob's centre of mass, in a window around where it must be
        x0, y0 = int(ex) - 6, int(ey) - 6
        win = crop[y0:y0 + 13, x0:x0 + 13]
        gy, gx = torch.meshgrid(torch.arange(13) + y0 + 0.5, torch.arange(13) + x0 + 0.5, indexing="ij")
        cx, cy = float((win * gx).sum() / win.sum()), float((win * gy).sum() / win.sum())
        assert abs(cx - ex) < 0.1 and abs(cy - ey) < 0.1, ((cx, cy), (ex, ey))
    # eyes at y = 178 of 512 (EG3D's framing)
    assert float(pts[:2, 1].mean()) * 512 / S == pytest.approx(178, abs=1)


# -- protocols and the command ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_setup(tmp_path_factory):
    """A random-init tiny avatar and 3 synthetic identities x 3 samples at its input size."""
    from oneshot.data import FaceDataset, synthesize
    from oneshot.face3d import builtin_model
    from oneshot.models import AvatarConfig, OneShotAvatar

    root = tmp_path_factory.mktemp("eval")
    face = builtin_model()
    torch.manual_seed(0)
    model = OneShotAvatar(AvatarConfig.preset_config("tiny"), face)
    model.save(root / "avatar.safetensors")
    synthesize(root / "data", 9, model=face, resolution=model.config.image_size, seed=3, per_identity=3,
               progress=False)
    return root, FaceDataset(root / "data"), model


def test_protocol_pairs(tiny_setup, tmp_path):
    from oneshot.eval import build_pairs

    root, ds, _ = tiny_setup
    ids = sorted(ds.identities)
    first = [ds.identities[i][0] for i in ids]
    assert build_pairs(ds, "reconstruction") == [(f, f) for f in first]
    assert build_pairs(ds, "self") == [(ds.identities[i][0], t) for i in ids for t in ds.identities[i][1:]]
    assert build_pairs(ds, "self", max_targets=1, limit=2) == [(ds.identities[ids[0]][0], ds.identities[ids[0]][1]),
                                                              (ds.identities[ids[1]][0], ds.identities[ids[1]][1])]
    cross = build_pairs(ds, "cross")
    assert cross == [(first[k], t) for k in range(3) for t in ds.identities[ids[(k + 1) % 3]]]
    sid = {i: s["id"] for i, s in enumerate(ds.samples)}
    (tmp_path / "pairs.txt").write_text(f"# source driver\n{ids[2]} {sid[ds.identities[ids[0]][1]]}\n"
                                        f"{sid[first[0]]}, {ids[1]}\n")
    assert build_pairs(ds, "cross", pairs_file=tmp_path / "pairs.txt") == (
        [(first[2], ds.identities[ids[0]][1])] + [(first[0], t) for t in ds.identities[ids[1]]])
    (tmp_path / "bad.txt").write_text("nobody id0000\n")
    with pytest.raises(ValueError, match=r"bad.txt:1: 'nobody' is neither a sample id nor an identity"):
        build_pairs(ds, "cross", pairs_file=tmp_path / "bad.txt")
    with pytest.raises(ValueError, match="protocol must be one of"):
        build_pairs(ds, "selfie")
    with pytest.raises(ValueError, match="a pairs file is for the cross protocol"):
        build_pairs(ds, "self", pairs_file=tmp_path / "pairs.txt")


def _network_files(d):
    from oneshot.eval import ArcFace, FIDInception

    g = torch.Generator().manual_seed(5)
    _alexnet_file(d / "alexnet.pth", g)
    _heads_file(d / "alex.pth", g)
    torch.manual_seed(5)
    sd = {k: v for k, v in FIDInception().state_dict().items() if not k.endswith("num_batches_tracked")}
    for k, v in sd.items():  # He init: pool3 features of order 1 (PyTorch's default init leaves them ~1e-7)
        if k.endswith("conv.weight"):
            sd[k] = torch.randn(v.shape, generator=g) * math.sqrt(2 / v[0].numel())
    sd["fc.weight"], sd["fc.bias"] = torch.zeros(1008, 2048), torch.zeros(1008)
    torch.save(sd, d / "inception.pth")
    torch.save(ArcFace((2, 2, 2, 2)).state_dict(), d / "arcface.pth")
    return ["--lpips-alexnet", str(d / "alexnet.pth"), "--lpips-heads", str(d / "alex.pth"), "--inception",
            str(d / "inception.pth"), "--arcface", str(d / "arcface.pth")]


def _evaluate(args, capsys=None):
    from oneshot.cli import main

    return main(["evaluate", "--quiet"] + [str(a) for a in args])


def test_evaluate_command_end_to_end_with_every_metric_and_resume(tiny_setup, tmp_path, one_thread):
    import csv

    root, ds, model = tiny_setup
    nets = _network_files(tmp_path)
    out = tmp_path / "self"
    base = ["--checkpoint", root / "avatar.safetensors", "--data", root / "data", "--protocol", "self", "--no-sr",
            "--batch", "2", "--no-faces"]
    assert _evaluate(base + nets + ["--out", out]) == 0
    summary = json.loads((out / "metrics.json").read_text())
    rows = list(csv.DictReader(open(out / "samples.csv")))
    assert summary["pairs"] == len(rows) == 6 and summary["output"] == "raw render 32x32"
    assert set(summary["metrics"]) == {"psnr", "ssim", "csim", "lpips", "l1", "fid"}
    assert set(summary["skipped"]) == {"aed", "apd", "akd"}
    assert summary["metrics"]["psnr"]["mean"] == pytest.approx(np.mean([float(r["psnr"]) for r in rows]), rel=1e-12)
    table = (out / "table.md").read_text()
    assert "| PSNR ↑ | SSIM ↑ | CSIM ↑ | AED ↓ | APD ↓ | AKD ↓ | LPIPS ↓ | L1 ↓ | FID ↓ |" in table
    assert (out / "grid.png").is_file()

    # Every per-pair metric of the first batch, recomputed here from renders made in the test and the network
    # files; the FID features stored for it are the renders' and the TARGETS' (self-reenactment has ground truth).
    from oneshot.eval import arcface_crops, load_arcface, load_fid_inception, load_lpips

    pairs = [(ds.identities[i][0], t) for i in sorted(ds.identities) for t in ds.identities[i][1:]]
    assert [(r["source"], r["target"]) for r in rows] == [(ds.samples[a]["id"], ds.samples[b]["id"]) for a, b in pairs]
    r, t, src = _render_pairs(model, ds, pairs[:2])
    lpips = load_lpips(tmp_path / "alexnet.pth", tmp_path / "alex.pth")
    arcface, inception = load_arcface(tmp_path / "arcface.pth"), load_fid_inception(tmp_path / "inception.pth")
    with torch.no_grad():
        want = {"psnr": M.psnr(r, t), "ssim": M.ssim(r, t), "l1": M.l1(r, t),
                "lpips": lpips(r * 2 - 1, t * 2 - 1).double(),
                "csim": M.cosine_similarity(arcface(arcface_crops(r)), arcface(arcface_crops(t)))}
        f_render, f_target, f_source = inception(r).double(), inception(t).double(), inception(src).double()
    for m, v in want.items():
        got = [float(row[m]) for row in rows[:2]]
        assert got == pytest.approx(v.tolist(), rel=1e-5, abs=1e-6), m
    first = torch.load(sorted((out / "features").glob("*.pt"))[0], weights_only=True)
    torch.testing.assert_close(first["fake"], f_render, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(first["real"], f_target, rtol=1e-4, atol=1e-5)
    assert float((f_source - f_target).abs().max()) > 1e-2  # the source's would differ

    # Interrupted after the first batch: --resume finishes it with the same numbers; without it, a named error.
    lines = (out / "samples.jsonl").read_text().splitlines()
    (out / "samples.jsonl").write_text("\n".join(lines[:2]) + "\n")
    for f in sorted((out / "features").glob("*.pt"))[1:]:
        f.unlink()
    assert _evaluate(base + nets + ["--out", out]) == 2
    assert _evaluate(base + nets + ["--out", out, "--resume", "--seed", "1"]) == 2
    (out / "metrics.json").unlink()
    assert _evaluate(base + nets + ["--out", out, "--resume"]) == 0
    again = json.loads((out / "metrics.json").read_text())
    for k, v in summary["metrics"].items():
        got, want = again["metrics"][k], v
        assert got.get("mean", got.get("value")) == pytest.approx(want.get("mean", want.get("value")), rel=1e-9), k


def test_evaluate_skips_metrics_without_weights_and_says_what_they_need(tiny_setup, tmp_path, capsys, one_thread):
    root, ds, _ = tiny_setup
    args = ["--checkpoint", root / "avatar.safetensors", "--data", root / "data", "--no-sr", "--no-faces"]
    assert _evaluate(args + ["--protocol", "reconstruction", "--out", tmp_path / "r"]) == 0
    s = json.loads((tmp_path / "r" / "metrics.json").read_text())
    assert set(s["metrics"]) == {"l1", "psnr", "ssim"} and s["pairs"] == 3
    assert "alexnet-owt-7be5be79.pth" in s["skipped"]["lpips"] and "pt_inception" in s["skipped"]["fid"]
    assert "arcface_torch" in s["skipped"]["csim"]
    assert _evaluate(args + ["--protocol", "reconstruction", "--ssim", "skimage-default", "--out", tmp_path / "r7"]) == 0
    s7 = json.loads((tmp_path / "r7" / "metrics.json").read_text())
    assert "skimage-default: gaussian_weights=False, win_size=7" in s7["settings"]["ssim"]
    assert s7["metrics"]["ssim"]["mean"] != s["metrics"]["ssim"]["mean"]
    assert s7["metrics"]["psnr"]["mean"] == s["metrics"]["psnr"]["mean"]
    # cross-identity has no ground truth: with nothing to compute it it is refused, naming what it needs.
    assert _evaluate(args + ["--protocol", "cross", "--out", tmp_path / "c"]) == 2
    assert "--arcface (CSIM), --inception (FID) or the faces extra" in capsys.readouterr().err
    # --pairs outside the cross protocol: refused while checking the arguments (the file exists: not "no such file")
    ids = sorted(ds.identities)
    (tmp_path / "pairs.txt").write_text(f"{ids[0]} {ids[1]}\n")
    assert _evaluate(args + ["--protocol", "self", "--pairs", tmp_path / "pairs.txt", "--out", tmp_path / "d"]) == 2
    assert "error: --pairs is for --protocol cross, not self" in capsys.readouterr().err
    assert not (tmp_path / "d").exists()  # before anything was loaded or written
    assert _evaluate(["--checkpoint", tmp_path / "none.safetensors", "--data", root / "data", "--protocol", "self",
                      "--out", tmp_path / "e"]) == 2
    assert "--checkpoint: no such file" in capsys.readouterr().err


def _render_pairs(model, ds, pairs):
    """(renders, targets, sources) [B, 3, r, r] in [0, 1] of `pairs` (one batch), as the protocol scores them:
    deterministic samples, seed 0, the raw render; images matted and resized (bilinear, antialiased) to its size."""
    from oneshot.data import collate_pairs
    from oneshot.eval.protocol import deterministic_renders

    with torch.no_grad(), deterministic_renders(model.eval()):
        b = collate_pairs(ds, pairs, model.face_model)
        r = (model(b, seed=0, super_resolve=False)["full"].features[:, :3].clamp(-1, 1) + 1) / 2
    size = r.shape[-1]

    def fit(x):
        return ((F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True) + 1) / 2
                ).clamp(0, 1)
    return r, fit(b["target_image"]), fit(b["source_image"])


def _stored_features(out):
    feats = [torch.load(f, weights_only=True) for f in sorted((out / "features").glob("*.pt"))]
    return torch.cat([f["real"] for f in feats]), torch.cat([f["fake"] for f in feats])


def test_cross_protocol_scores_identity_against_the_source(tiny_setup, tmp_path, one_thread):
    """No ground truth: each pair's CSIM is the ArcFace cosine of its render and its SOURCE, and FID compares the
    renders with the sources. Both recomputed here from renders made in the test; the driver would give other
    numbers, so scoring against it (or swapping source and driver) fails."""
    from oneshot.eval import arcface_crops, build_pairs, load_arcface, load_fid_inception

    root, ds, model = tiny_setup
    nets = _network_files(tmp_path)
    out = tmp_path / "cross"
    assert _evaluate(["--checkpoint", root / "avatar.safetensors", "--data", root / "data", "--protocol", "cross",
                      "--no-sr", "--no-faces", "--max-targets", "1", "--out", out] + nets) == 0
    s = json.loads((out / "metrics.json").read_text())
    assert set(s["metrics"]) == {"csim", "fid"} and s["pairs"] == 3
    assert "| CSIM ↑ | AED ↓ | APD ↓ | FID ↓ |" in (out / "table.md").read_text()
    rows = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    pairs = build_pairs(ds, "cross", max_targets=1)
    assert [(r["source"], r["target"]) for r in rows] == [(ds.samples[a]["id"], ds.samples[b]["id"]) for a, b in pairs]
    assert all(ds.samples[a]["identity"] != ds.samples[b]["identity"] for a, b in pairs)

    render, driver, source = _render_pairs(model, ds, pairs)
    arcface, inception = load_arcface(tmp_path / "arcface.pth"), load_fid_inception(tmp_path / "inception.pth")
    with torch.no_grad():
        e = arcface(arcface_crops(render))
        csim_source = M.cosine_similarity(e, arcface(arcface_crops(source)))
        csim_driver = M.cosine_similarity(e, arcface(arcface_crops(driver)))
        f_render, f_source, f_driver = (inception(x).double() for x in (render, source, driver))
    got = torch.tensor([r["csim"] for r in rows], dtype=torch.float64)
    torch.testing.assert_close(got, csim_source, rtol=1e-5, atol=1e-6)
    assert float((csim_driver - csim_source).abs().min()) > 1e-3, (csim_source, csim_driver)
    real, fake = _stored_features(out)
    torch.testing.assert_close(fake, f_render, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(real, f_source, rtol=1e-4, atol=1e-5)
    assert float((f_driver - f_source).abs().max()) > 1e-2
    assert s["metrics"]["fid"]["value"] == pytest.approx(M.fid_from_features(f_source, f_render), rel=1e-5)


def test_evaluate_scores_what_the_checkpoint_trained(tiny_setup, tmp_path, capsys, one_thread):
    """By default the super-resolved output when the checkpoint records its SR network trained, else the raw render
    (with a note); the scores are recomputed from renders made here, so a label that lies cannot pass."""
    from oneshot.data import collate_pairs
    from oneshot.eval.protocol import deterministic_renders
    from oneshot.models import OneShotAvatar

    root, ds, model = tiny_setup
    trained = OneShotAvatar.load(root / "avatar.safetensors", model.face_model)
    trained.trained_parts = frozenset({"low_res", "super_resolution"})
    trained.save(tmp_path / "trained.safetensors")
    first = ds.identities[sorted(ds.identities)[0]][0]
    with torch.no_grad(), deterministic_renders(model.eval()):
        b = collate_pairs(ds, [(first, first)], model.face_model)
        o = model(b, seed=0, super_resolve=True)
    renders = {"sr": (o["image"].clamp(-1, 1) + 1) / 2, "raw": (o["full"].features[:, :3].clamp(-1, 1) + 1) / 2}
    for name, ckpt, flags, want in (("default-untrained", root / "avatar.safetensors", [], "raw"),
                                    ("default-trained", tmp_path / "trained.safetensors", [], "sr"),
                                    ("forced", root / "avatar.safetensors", ["--sr"], "sr"),
                                    ("off", tmp_path / "trained.safetensors", ["--no-sr"], "raw")):
        out = tmp_path / name
        capsys.readouterr()
        assert _evaluate(["--checkpoint", ckpt, "--data", root / "data", "--protocol", "reconstruction",
                          "--no-faces", "--limit", "1", "--out", out] + flags) == 0
        assert ("never trained" in capsys.readouterr().err) == (name == "default-untrained"), name
        row = json.loads((out / "samples.jsonl").read_text().splitlines()[0])
        r = renders[want]
        t = (F.interpolate(b["target_image"], size=r.shape[-2:], mode="bilinear", align_corners=False,
                           antialias=r.shape[-1] < b["target_image"].shape[-1]) + 1) / 2
        assert float(M.psnr(r, t.clamp(0, 1))[0]) == pytest.approx(row["psnr"], rel=1e-6), name
        size = r.shape[-1]
        label = json.loads((out / "metrics.json").read_text())["output"]
        assert label == (f"super-resolved {size}x{size}" if want == "sr" else f"raw render {size}x{size}"), name