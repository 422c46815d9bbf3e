"""oneshot.eval: each metric against scikit-image / scipy / numpy or a closed form, and the weight loaders on files
synthesized with the real key layouts (the protocols and ``oneshot evaluate``: test_eval_protocol.py)."""

from __future__ import annotations

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
