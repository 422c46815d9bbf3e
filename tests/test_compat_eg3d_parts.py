"""oneshot.compat.eg3d's pieces: EG3D's plane matrices and lookup, the ray marcher (EG3D's global depth clamp),
the ray sampler, the decoder (state dicts with EG3D's keys, the structural test), rendering_options and the
errors."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from conftest import assert_close
from oneshot import cameras, ops
from oneshot.compat import eg3d
from oneshot.compat.eg3d_decoder import eg3d_decoder_reason
from oneshot.compat.eg3d_reference import reference_ray_march, reference_sample_from_planes
from oneshot.models import TriplaneDecoder
from test_compat_eg3d_support import MLPDecoder, UserOSGDecoder, options, scene

pytestmark = pytest.mark.skipif(not ops.backend_info()["native_cpu"], reason="the native extension is not built")

# EG3D's generate_planes() (training/volumetric_rendering/renderer.py), and GOHA's third plane.
EG3D_PLANES = [[[1, 0, 0], [0, 1, 0], [0, 0, 1]], [[1, 0, 0], [0, 0, 1], [0, 1, 0]], [[0, 0, 1], [1, 0, 0], [0, 1, 0]]]
GOHA_THIRD = [[0, 0, 1], [0, 1, 0], [1, 0, 0]]


def test_generate_planes_and_the_third_planes_axes():
    assert torch.equal(eg3d.generate_planes(), torch.tensor(EG3D_PLANES, dtype=torch.float32))
    assert torch.equal(eg3d.plane_matrices("goha"), torch.tensor(EG3D_PLANES[:2] + [GOHA_THIRD], dtype=torch.float32))
    x = torch.tensor([[[0.1, 0.2, 0.3]]])
    proj = eg3d.project_onto_planes(eg3d.generate_planes(), x)  # [3, 1, 2]
    assert_close(proj, torch.tensor([[[0.1, 0.2]], [[0.1, 0.3]], [[0.3, 0.1]]]), atol=1e-7)  # xy, xz, zx: x twice
    proj = eg3d.project_onto_planes(eg3d.plane_matrices("goha"), x)
    assert_close(proj[2], torch.tensor([[0.3, 0.2]]), atol=1e-7)  # zy


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("axes", ["eg3d", "goha", "rotated"])
def test_sample_from_planes_matches_the_reference_forward_and_backward(dtype, axes):
    g = torch.Generator().manual_seed(0)
    planes = torch.randn(2, 3, 5, 7, 9, generator=g, dtype=dtype)
    pts = ((torch.rand(2, 31, 3, generator=g, dtype=dtype) - 0.5) * 1.3)
    if axes == "rotated":
        c, s = math.cos(0.4), math.sin(0.4)
        m = eg3d.generate_planes() @ torch.tensor([[c, -s, 0], [s, c, 0], [0, 0, 1]])
    else:
        m = eg3d.plane_matrices(axes)
    p1, x1 = planes.clone().requires_grad_(), pts.clone().requires_grad_()
    p2, x2 = planes.clone().requires_grad_(), pts.clone().requires_grad_()
    out = eg3d.sample_from_planes(m, p1, x1, box_warp=1.2)
    ref = reference_sample_from_planes(m, p2, x2, 1.2)
    assert out.shape == (2, 3, 31, 5)
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == torch.float32 else dict(rtol=1e-12, atol=1e-12)
    assert_close(out, ref, **tol, name="features")
    cot = torch.randn(out.shape, generator=g, dtype=dtype)
    for a, b, n in zip(torch.autograd.grad(out, [p1, x1], cot), torch.autograd.grad(ref, [p2, x2], cot),
                       ("planes", "coordinates")):
        assert_close(a, b, rtol=tol["rtol"] * 10, atol=tol["atol"] * 10, name=n)


def test_sample_from_planes_errors():
    m = eg3d.generate_planes()
    planes, pts = torch.zeros(1, 3, 2, 4, 4), torch.zeros(1, 5, 3)
    with pytest.raises(ValueError, match="padding_mode must be 'zeros'"):
        eg3d.sample_from_planes(m, planes, pts, padding_mode="border", box_warp=1)
    with pytest.raises(ValueError, match="box_warp is required"):
        eg3d.sample_from_planes(m, planes, pts)
    with pytest.raises(ValueError, match=r"plane_features must be \[N, n_planes, C, H, W\], got \[3, 2, 4, 4\]"):
        eg3d.sample_from_planes(m, planes[0], pts, box_warp=1)
    with pytest.raises(ValueError, match="as many planes as plane_axes"):
        eg3d.sample_from_planes(m, torch.zeros(1, 2, 2, 4, 4), pts, box_warp=1)
    with pytest.raises(ValueError, match="batch size"):
        eg3d.sample_from_planes(m, planes, torch.zeros(2, 5, 3), box_warp=1)
    with pytest.raises(ValueError, match="box_warp must be a positive"):
        eg3d.sample_from_planes(m, planes, pts, box_warp=-1)


def test_ray_marcher_matches_eg3ds_and_clamps_depth_over_the_whole_batch():
    g = torch.Generator().manual_seed(1)
    B, N, S, C = 2, 6, 8, 3
    colors = torch.rand(B, N, S, C, generator=g, dtype=torch.float64)
    dens = torch.randn(B, N, S, 1, generator=g, dtype=torch.float64) * 3
    dens[0, :2] = -1e4  # zero opacity: EG3D gives these rays the batch's largest depth
    depths = torch.sort(torch.rand(B, N, S, 1, generator=g, dtype=torch.float64) * 2 + 1, 2).values
    for white in (False, True):
        opts = options(white_back=white)
        c1, s1 = colors.clone().requires_grad_(), dens.clone().requires_grad_()
        c2, s2 = colors.clone().requires_grad_(), dens.clone().requires_grad_()
        out = eg3d.MipRayMarcher2()(c1, s1, depths, opts)
        ref = reference_ray_march(c2, s2, depths, white)
        assert [tuple(t.shape) for t in out] == [(B, N, C), (B, N, 1), (B, N, S - 1, 1)]
        for a, b, n in zip(out, ref, ("rgb", "depth", "weights")):
            assert_close(a, b, rtol=1e-12, atol=1e-12, name=n)
        assert (out[1][0, :2] == depths.max()).all() and (depths[0, :2].amax() < depths.max())
        cots = [torch.randn(t.shape, generator=g, dtype=torch.float64) for t in out]
        ga = torch.autograd.grad(out, [c1, s1], cots)
        gb = torch.autograd.grad(ref, [c2, s2], cots)
        # EG3D's depth 0/0 gives the zero-opacity rays NaN gradients (even for a zero cotangent); here none
        assert torch.isnan(gb[1][0, :2]).all() and torch.isfinite(ga[1]).all()
        for a, b, n in zip(ga, gb, ("colors", "densities")):
            assert_close(a[1:], b[1:], rtol=1e-10, atol=1e-12, name=n)
            assert_close(a[0, 2:], b[0, 2:], rtol=1e-10, atol=1e-12, name=n)


def test_ray_marcher_errors():
    x = torch.zeros(1, 2, 3, 1)
    with pytest.raises(eg3d.RenderingOptionsError, match="clamp_mode"):
        eg3d.MipRayMarcher2()(x, x, x, {"clamp_mode": "relu"})
    with pytest.raises(ValueError, match=r"densities must be \[B, N, S, 1\]"):
        eg3d.MipRayMarcher2()(x, torch.zeros(1, 2, 3, 2), x, {"clamp_mode": "softplus"})


@pytest.mark.parametrize("skew", [0.0, 0.03])
def test_ray_sampler_is_a_pinhole_camera_with_skew(skew):
    c2w = cameras.look_at(torch.tensor([0.3, -0.2]), torch.tensor([0.1, 0.05]))
    intr = cameras.intrinsics(batch=2).clone()
    intr[:, 0, 1] = skew
    res = 5
    o, d = eg3d.RaySampler()(c2w, intr, res)
    assert o.shape == d.shape == (2, res * res, 3)
    # float64 pinhole: pixel (i, j) at ((j + .5) / res, (i + .5) / res); x = (u - cx - sk (y)) / fx with y the
    # camera-space y, i.e. the skewed intrinsics inverted
    i, j = torch.meshgrid(torch.arange(res, dtype=torch.float64), torch.arange(res, dtype=torch.float64), indexing="ij")
    uv1 = torch.stack([(j + 0.5) / res, (i + 0.5) / res, torch.ones_like(i)], -1).reshape(-1, 3)
    cam = torch.linalg.solve(intr.double()[:, None], uv1[None, :, :, None])[..., 0]  # K^-1 [u, v, 1]
    world = F.normalize(cam @ c2w.double()[:, :3, :3].transpose(1, 2), dim=-1)
    assert_close(d.double(), world, rtol=0, atol=1e-6, name="directions")
    assert_close(o, c2w[:, None, :3, 3].expand(2, res * res, 3), name="origins")
    if skew == 0:
        o2, d2 = cameras.rays(c2w, intr, res)
        assert_close(d, d2, rtol=0, atol=1e-6, name="directions vs oneshot.cameras.rays")


def test_ray_sampler_errors():
    with pytest.raises(ValueError, match="resolution must be a positive int"):
        eg3d.RaySampler()(torch.eye(4)[None], torch.eye(3)[None], (4, 4))
    with pytest.raises(ValueError, match=r"intrinsics must be \[B, 3, 3\]"):
        eg3d.RaySampler()(torch.eye(4)[None], torch.eye(3), 4)


def _eg3d_state_dict(C=32, Co=32, seed=0):
    """A state dict as EG3D's OSGDecoder writes it: net.0 / net.2 FullyConnectedLayers, unscaled weights."""
    g = torch.Generator().manual_seed(seed)
    return {"net.0.weight": torch.randn(64, C, generator=g), "net.0.bias": torch.randn(64, generator=g) * 0.1,
            "net.2.weight": torch.randn(1 + Co, 64, generator=g), "net.2.bias": torch.randn(1 + Co, generator=g) * 0.1}


@pytest.mark.parametrize("lr_mul", [1.0, 0.01])
def test_decoder_loads_eg3ds_state_dict_and_computes_eg3ds_function(lr_mul):
    sd = _eg3d_state_dict()
    dec = eg3d.OSGDecoder(32, {"decoder_lr_mul": lr_mul, "decoder_output_dim": 32})
    assert list(dec.state_dict()) == list(sd)
    assert {k: tuple(v.shape) for k, v in dec.state_dict().items()} == {k: tuple(v.shape) for k, v in sd.items()}
    dec.load_state_dict(sd, strict=True)
    g = torch.Generator().manual_seed(3)
    feats = torch.randn(2, 3, 17, 32, generator=g)
    out = dec(feats, torch.randn(2, 17, 3, generator=g))
    w1, b1 = sd["net.0.weight"] * (lr_mul / math.sqrt(32)), sd["net.0.bias"] * lr_mul
    w2, b2 = sd["net.2.weight"] * (lr_mul / math.sqrt(64)), sd["net.2.bias"] * lr_mul
    y = F.linear(F.softplus(F.linear(feats.mean(1), w1, b1)), w2, b2)
    assert_close(out["sigma"], y[..., :1], rtol=1e-5, atol=1e-6, name="sigma")
    assert_close(out["rgb"], torch.sigmoid(y[..., 1:]) * 1.002 - 0.001, rtol=1e-5, atol=1e-6, name="rgb")
    # round trip, and the same keys as oneshot's own TriplaneDecoder
    again = eg3d.OSGDecoder(32, {"decoder_lr_mul": lr_mul, "decoder_output_dim": 32})
    again.load_state_dict(dec.state_dict())
    assert torch.equal(again(feats, None)["rgb"], out["rgb"])
    ours = TriplaneDecoder(32, 64, 32, lr_multiplier=lr_mul)
    ours.load_state_dict(dec.state_dict(), strict=True)
    sigma, rgb = ours(feats.mean(1))
    assert_close(rgb, out["rgb"], rtol=1e-5, atol=1e-6, name="TriplaneDecoder rgb")


def test_the_structural_test_accepts_eg3ds_decoder_shapes_and_nothing_else():
    torch.manual_seed(0)
    assert eg3d_decoder_reason(eg3d.OSGDecoder(8, {"decoder_lr_mul": 1, "decoder_output_dim": 4})) is None
    assert eg3d_decoder_reason(UserOSGDecoder(8, 4, lr_multiplier=0.3)) is None
    assert "takes 8 features" in eg3d_decoder_reason(UserOSGDecoder(8, 4), channels=5)
    assert "differs from EG3D's decoder formula" in eg3d_decoder_reason(UserOSGDecoder(8, 4, scale=1.05))
    assert "differs" in eg3d_decoder_reason(UserOSGDecoder(8, 4, uses_directions=True))
    assert "Softplus" in eg3d_decoder_reason(UserOSGDecoder(8, 4, act=torch.nn.ReLU()))
    assert "Softplus" in eg3d_decoder_reason(UserOSGDecoder(8, 4, act=torch.nn.Softplus(beta=2)))
    assert "three layers" in eg3d_decoder_reason(MLPDecoder(8, 4))
    assert "three layers" in eg3d_decoder_reason(TriplaneDecoder(8, 64, 4).net[0])
    assert "failed" in eg3d_decoder_reason(TriplaneDecoder(8, 64, 4))  # oneshot's: another call signature
    dec = UserOSGDecoder(8, 4)
    handle = dec.net[0].register_forward_hook(lambda *a: None)
    assert "hooks" in eg3d_decoder_reason(dec)
    handle.remove()
    assert eg3d_decoder_reason(dec) is None
    dec.net[0].activation = "lrelu"
    assert "activation" in eg3d_decoder_reason(dec)


def test_decoder_and_layer_errors():
    with pytest.raises(ValueError, match="activation must be 'linear'"):
        eg3d.FullyConnectedLayer(3, 4, activation="lrelu")
    with pytest.raises(ValueError, match="'decoder_output_dim'"):
        eg3d.OSGDecoder(32, {"decoder_lr_mul": 1})
    with pytest.raises(ValueError, match=r"sampled_features must be \[N, n_planes, M, C\]"):
        eg3d.OSGDecoder(4, {"decoder_lr_mul": 1, "decoder_output_dim": 2})(torch.zeros(2, 5, 4), None)


@pytest.mark.parametrize("bad,match", [
    (dict(ray_start="auto", ray_end="auto"), "'auto'.*not implemented"),
    (dict(clamp_mode="relu"), "clamp_mode"),
    (dict(depth_resolution=1), "depth_resolution'.*>= 2"),
    (dict(depth_resolution=3), ">= 4 with importance samples"),
    (dict(depth_resolution=4.0), "depth_resolution'.*integer"),
    (dict(depth_resolution_importance=-1), "depth_resolution_importance"),
    (dict(ray_start=3.3, ray_end=2.25), "ray_start < ray_end"),
    (dict(ray_start=float("nan")), "ray_start'.*finite"),
    (dict(box_warp=0), "box_warp'.*> 0"),
    (dict(disparity_space_sampling="yes"), "disparity_space_sampling'.*True or False"),
    (dict(disparity_space_sampling=True, ray_start=0.0), "ray_start > 0"),
    (dict(white_back=2), "white_back"),
    (dict(density_noise=-1), "density_noise"),
    (dict(triplane_depth=3), "triplane_depth.*another renderer"),
])
def test_rendering_options_errors_name_the_key(bad, match):
    planes, o, d, dec = scene(N=2)
    with pytest.raises(eg3d.RenderingOptionsError, match=match):
        eg3d.ImportanceRenderer()(planes, dec, o, d, options(**bad))


def test_missing_and_unknown_options():
    planes, o, d, dec = scene(N=2)
    opts = options()
    del opts["disparity_space_sampling"]
    with pytest.raises(eg3d.RenderingOptionsError, match=r"missing \['disparity_space_sampling'\]"):
        eg3d.ImportanceRenderer()(planes, dec, o, d, opts)
    with pytest.raises(eg3d.RenderingOptionsError, match="must be a dict"):
        eg3d.ImportanceRenderer()(planes, dec, o, d, [1, 2])
    with pytest.warns(eg3d.EG3DCompatWarning, match=r"\['my_renderer_key'\] are not read"):
        eg3d.ImportanceRenderer()(planes, dec, o, d, options(my_renderer_key=1))
    with pytest.raises(eg3d.RenderingOptionsError, match="my_other_key"):
        eg3d.ImportanceRenderer(unknown_options="error")(planes, dec, o, d, options(my_other_key=1))
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        eg3d.ImportanceRenderer(unknown_options="ignore")(planes, dec, o, d, options(my_third_key=1))
        # every key of EG3D's FFHQ / AFHQ / ShapeNet configs, and GOHA's and Next3D's generator keys, pass silently
        eg3d.ImportanceRenderer()(planes, dec, o, d, options(**{k: 0 for k in eg3d.GENERATOR_KEYS}))


def test_renderer_input_errors():
    planes, o, d, dec = scene(N=4)
    r = eg3d.ImportanceRenderer()
    with pytest.raises(ValueError, match=r"planes must be \[B, n_planes, C, H, W\]"):
        r(planes[0], dec, o, d, options())
    with pytest.raises(ValueError, match=r"ray_origins must be \[B, N, 3\] with B = 2"):
        r(planes, dec, o[:1], d, options())
    with pytest.raises(ValueError, match="ray_directions must have the shape of ray_origins"):
        r(planes, dec, o, d[:, :2], options())
    with pytest.raises(TypeError, match="ray_directions must be a floating-point"):
        r(planes, dec, o, d.long(), options())


@pytest.mark.parametrize("kw,match", [(dict(fused="yes"), "fused must be"), (dict(fused=1), "fused must be"),
                                      (dict(plane_axes="xyz"), "plane_axes must be"),
                                      (dict(plane_axes=((0, 0), (0, 1), (1, 2))), "axes must be three"),
                                      (dict(deterministic=1), "deterministic must be True or False"),
                                      (dict(unknown_options="loud"), "unknown_options")])
def test_switch_errors(kw, match):
    with pytest.raises(ValueError, match=match):
        eg3d.ImportanceRenderer(**kw)
