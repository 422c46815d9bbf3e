"""oneshot.compat.eg3d.ImportanceRenderer against the composed reference written to EG3D's semantics
(oneshot.compat.eg3d_reference): forward and gradients, EG3D's random draws in EG3D's order, the switches, the
fused and composed paths, what autograd keeps, EG3D's signatures and the errors."""

from __future__ import annotations

import inspect

import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st

from conftest import assert_close
from oneshot import ops
from oneshot.compat import eg3d
from oneshot.compat import eg3d_renderer
from oneshot.compat.eg3d_reference import ReferenceRenderer
from test_compat_eg3d_support import (MLPDecoder, UserOSGDecoder, default_dtype, eg3d_draws, options, rng_spy,
                                      scene)

pytestmark = pytest.mark.skipif(not ops.backend_info()["native_cpu"], reason="the native extension is not built")

F32 = dict(rtol=2e-5, atol=2e-5)  # float32 rounding of sums over tens of samples (values in [-1, 1] and depths ~3)


def _render(renderer, planes, decoder, o, d, opts, seed=0, grad=False):
    planes = planes.clone().requires_grad_(grad)
    torch.manual_seed(seed)
    out = renderer(planes, decoder, o, d, opts)
    after = torch.get_rng_state()
    if not grad:
        return out, after, None
    g = torch.Generator().manual_seed(99)
    cots = [torch.randn(x.shape, generator=g, dtype=x.dtype) for x in out]
    params = [planes] + list(decoder.parameters())
    return out, after, torch.autograd.grad(out, params, cots)


def _same(a, b, names, **tol):
    for x, y, n in zip(a, b, names):
        assert_close(x, y, name=n, **tol)


OUT = ("rgb", "depth", "weights_sum")
GRADS = ("planes", "net.0.weight", "net.0.bias", "net.2.weight", "net.2.bias")


@pytest.mark.parametrize("fused", [True, False])
@pytest.mark.parametrize("opts", [options(), options(white_back=True, box_warp=1.6, ray_start=2.0, ray_end=3.5),
                                  options(disparity_space_sampling=True), options(depth_resolution_importance=0),
                                  options(density_noise=0.7)],
                         ids=["ffhq", "white_back", "disparity", "no-importance", "density-noise"])
def test_eg3d_mode_matches_the_reference_seeded_forward_gradients_and_rng(fused, opts):
    """EG3D's stochastic mode, float32, the same seed: the same images and gradients to float32 rounding, and the
    global RNG left in the same state (the same random numbers consumed)."""
    planes, o, d, dec = scene()
    out, rng, grads = _render(eg3d.ImportanceRenderer(fused=fused), planes, dec, o, d, opts, seed=5, grad=True)
    ref, ref_rng, ref_grads = _render(ReferenceRenderer(), planes, dec, o, d, opts, seed=5, grad=True)
    _same(out, ref, OUT, **F32)
    _same(grads, ref_grads, GRADS, rtol=2e-4, atol=2e-4 * max(float(g.abs().max()) for g in ref_grads))
    assert torch.equal(rng, ref_rng), "the drop-in consumed the global RNG differently from EG3D's renderer"


@pytest.mark.parametrize("switches", [dict(deterministic=True), dict(deterministic=True, plane_axes="goha"),
                                      dict(deterministic=True, clip_to_box=True),
                                      dict(deterministic=True, plane_axes=((1, 0), (2, 0), (1, 2)), clip_to_box=True)])
@pytest.mark.parametrize("fused", [True, False])
def test_deterministic_mode_matches_the_reference_to_float32_rounding(switches, fused):
    planes, o, d, dec = scene(N=31, seed=3)
    opts = options()
    ref_r = ReferenceRenderer(plane_axes=switches.get("plane_axes"), deterministic=True,
                              clip_to_box=switches.get("clip_to_box", False))
    out, rng, grads = _render(eg3d.ImportanceRenderer(fused=fused, **switches), planes, dec, o, d, opts, grad=True)
    ref, _, ref_grads = _render(ref_r, planes, dec, o, d, opts, grad=True)
    _same(out, ref, OUT, **F32)
    _same(grads, ref_grads, GRADS, rtol=2e-4, atol=2e-4 * max(float(g.abs().max()) for g in ref_grads))
    again, _, _ = _render(eg3d.ImportanceRenderer(fused=fused, **switches), planes, dec, o, d, opts, seed=123)
    _same(again, out, OUT)  # no randomness: any seed, the same image


@pytest.mark.parametrize("fused", [True, False])
def test_float64_matches_the_reference_tightly(fused):
    with default_dtype(torch.float64):
        planes, o, d, dec = scene(dtype=torch.float64, seed=4)
        for opts in (options(), options(white_back=True, disparity_space_sampling=True)):
            out, rng, grads = _render(eg3d.ImportanceRenderer(fused=fused), planes, dec, o, d, opts, seed=2, grad=True)
            ref, ref_rng, ref_grads = _render(ReferenceRenderer(), planes, dec, o, d, opts, seed=2, grad=True)
            _same(out, ref, OUT, rtol=1e-10, atol=1e-11)
            _same(grads, ref_grads, GRADS, rtol=1e-9, atol=1e-10)
            assert torch.equal(rng, ref_rng)


@pytest.mark.parametrize("fused", [True, False])
def test_gradcheck_float64(fused):
    """The drop-in's gradients w.r.t. the planes and every decoder parameter, by finite differences (coarse pass
    only: the importance depths are detached in EG3D, so finite differences would see them move)."""
    with default_dtype(torch.float64):
        planes, o, d, dec = scene(B=1, N=3, C=2, H=4, W=5, Co=2, dtype=torch.float64, seed=6)
        opts = options(depth_resolution=6, depth_resolution_importance=0, white_back=True)
        r = eg3d.ImportanceRenderer(deterministic=True, clip_to_box=True, fused=fused)
        assert r.oneshot_path(planes, dec, o, d, opts)[0] == ("fused" if fused else "composed")

        class Call(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.dec = dec

            def forward(self, p):
                return r(p, self.dec, o, d, opts)

        call = Call()
        names = [f"dec.{n}" for n, _ in dec.named_parameters()]

        def f(p, *weights):
            return torch.func.functional_call(call, dict(zip(names, weights)), (p,))

        args = [planes.clone().requires_grad_()] + [p.detach().clone().requires_grad_() for p in dec.parameters()]
        assert torch.autograd.gradcheck(f, args, eps=1e-6, atol=1e-6, rtol=1e-5, fast_mode=True)


@settings(deadline=None, max_examples=20)
@given(B=st.integers(1, 2), N=st.integers(0, 13), C=st.integers(1, 6), H=st.integers(1, 9), W=st.integers(1, 9),
       Co=st.integers(1, 4), D=st.integers(2, 9), n=st.integers(0, 7), white=st.booleans(), disparity=st.booleans(),
       box=st.sampled_from([0.5, 1.0, 1.6]), axes=st.sampled_from([None, "goha"]), clip=st.booleans(),
       deterministic=st.booleans(), fused=st.booleans(), seed=st.integers(0, 99))
@example(B=1, N=1, C=1, H=1, W=1, Co=1, D=2, n=0, white=True, disparity=False, box=1.0, axes=None, clip=True,
         deterministic=False, fused=True, seed=0)
def test_drawn_shapes_and_options_match_the_reference(B, N, C, H, W, Co, D, n, white, disparity, box, axes, clip,
                                                      deterministic, fused, seed):
    D = D if n == 0 else max(D, 4)  # EG3D's importance sampler needs 4 coarse samples
    with default_dtype(torch.float64):
        planes, o, d, dec = scene(B, N, C, H, W, Co, dtype=torch.float64, seed=seed, spread=box)
        opts = options(depth_resolution=D, depth_resolution_importance=n, white_back=white,
                       disparity_space_sampling=disparity, box_warp=box)
        r = eg3d.ImportanceRenderer(plane_axes=axes, clip_to_box=clip, deterministic=deterministic, fused=fused)
        ref_r = ReferenceRenderer(plane_axes=axes, clip_to_box=clip, deterministic=deterministic)
        out, rng, grads = _render(r, planes, dec, o, d, opts, seed=seed, grad=N > 0)
        ref, ref_rng, ref_grads = _render(ref_r, planes, dec, o, d, opts, seed=seed, grad=N > 0)
        assert [tuple(x.shape) for x in out] == [(B, N, Co), (B, N, 1), (B, N, 1)]
        _same(out, ref, OUT, rtol=1e-9, atol=1e-10)
        if N > 0:
            _same(grads, ref_grads, GRADS, rtol=1e-8, atol=1e-9)
        assert torch.equal(rng, ref_rng)


@pytest.mark.parametrize("opts", [options(), options(density_noise=0.5), options(depth_resolution_importance=0),
                                  options(disparity_space_sampling=True, density_noise=0.5)],
                         ids=["ffhq", "density-noise", "no-importance", "disparity-noise"])
@pytest.mark.parametrize("deterministic", [False, True])
def test_random_draws_are_eg3ds_in_order_shape_dtype_and_device(monkeypatch, opts, deterministic):
    """Every draw from the global RNG, spied: the drop-in's list equals the sequence read off EG3D's source
    (eg3d_draws) and the reference's; the RNG ends in the same state."""
    planes, o, d, dec = scene(B=2, N=5)
    expected = eg3d_draws(2, 5, opts, deterministic=deterministic)
    with rng_spy(monkeypatch) as log:
        _, rng, _ = _render(eg3d.ImportanceRenderer(deterministic=deterministic), planes, dec, o, d, opts, seed=1)
        ours = list(log)
        log.clear()
        _, ref_rng, _ = _render(ReferenceRenderer(deterministic=deterministic), planes, dec, o, d, opts, seed=1)
        theirs = list(log)
    assert ours == expected, f"draws {ours}, EG3D's order {expected}"
    assert theirs == expected
    assert torch.equal(rng, ref_rng)
    if deterministic and not opts.get("density_noise"):
        torch.manual_seed(1)
        assert torch.equal(rng, torch.get_rng_state()), "deterministic mode must not touch the global RNG"


def test_a_decoder_with_dropout_is_probed_without_moving_the_rng():
    planes, o, d, dec = scene()
    drop = UserOSGDecoder(5, 4)
    drop.net[1] = torch.nn.Sequential(torch.nn.Dropout(0.5), torch.nn.Softplus())  # not EG3D-shaped, random
    r = eg3d.ImportanceRenderer()
    torch.manual_seed(0)
    assert r.oneshot_path(planes, drop, o, d, options())[0] == "composed"
    from oneshot.compat.eg3d_decoder import eg3d_decoder_reason

    drop2 = UserOSGDecoder(5, 4)
    drop2.train()
    torch.nn.init.zeros_(drop2.net[2].bias)
    before = torch.get_rng_state()
    drop2.net[1].register_forward_hook(lambda m, i, out: torch.nn.functional.dropout(out, 0.5))
    assert "hooks" in eg3d_decoder_reason(drop2)
    assert torch.equal(before, torch.get_rng_state())


@pytest.mark.parametrize("decoder,path", [("osg", "fused"), ("user-osg", "fused"), ("user-osg-scaled", "composed"),
                                          ("user-osg-directions", "composed"), ("user-osg-relu", "composed"),
                                          ("mlp", "composed")])
def test_the_path_follows_the_decoders_structure_and_both_match_the_reference(monkeypatch, decoder, path):
    planes, o, d, dec = scene(C=5, Co=4)
    torch.manual_seed(0)
    decoders = {"osg": dec, "user-osg": UserOSGDecoder(5, 4, lr_multiplier=0.5),
                "user-osg-scaled": UserOSGDecoder(5, 4, scale=1.01),
                "user-osg-directions": UserOSGDecoder(5, 4, uses_directions=True),
                "user-osg-relu": UserOSGDecoder(5, 4, act=torch.nn.ReLU()), "mlp": MLPDecoder(5, 4)}
    dec = decoders[decoder]
    calls = []
    real = eg3d_renderer.render_triplane
    monkeypatch.setattr(eg3d_renderer, "render_triplane", lambda *a, **k: calls.append(1) or real(*a, **k))
    r = eg3d.ImportanceRenderer()
    assert r.oneshot_path(planes, dec, o, d, options())[0] == path
    out, _, grads = _render(r, planes, dec, o, d, options(), seed=3, grad=True)
    assert len(calls) == (2 if path == "fused" else 0)  # coarse + final pass
    ref, _, ref_grads = _render(ReferenceRenderer(), planes, dec, o, d, options(), seed=3, grad=True)
    _same(out, ref, OUT, **F32)
    _same(grads, ref_grads, ("planes",) + tuple(n for n, _ in dec.named_parameters()), rtol=2e-4,
          atol=2e-4 * max(float(g.abs().max()) for g in ref_grads))


def test_composed_path_when_the_rays_need_gradients_or_under_autocast():
    planes, o, d, dec = scene()
    r = eg3d.ImportanceRenderer()
    assert r.oneshot_path(planes, dec, o.requires_grad_(), d, options())[0] == "composed"
    o = o.detach()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert r.oneshot_path(planes, dec, o, d, options())[0] == "composed"
    assert r.oneshot_path(planes, dec, o, d, options(density_noise=0.1))[0] == "composed"
    assert eg3d.ImportanceRenderer(fused=False).oneshot_path(planes, dec, o, d, options())[0] == "composed"
    # rays with gradients: EG3D's gradient w.r.t. the camera, here too
    o2, d2 = o.clone().requires_grad_(), d.clone().requires_grad_()
    torch.manual_seed(8)
    out = r(planes, dec, o2, d2, options(depth_resolution_importance=0))
    gr = torch.autograd.grad(out[0].sum(), [o2, d2])
    o3, d3 = o.clone().requires_grad_(), d.clone().requires_grad_()
    torch.manual_seed(8)
    ref = ReferenceRenderer()(planes, dec, o3, d3, options(depth_resolution_importance=0))
    gref = torch.autograd.grad(ref[0].sum(), [o3, d3])
    for a, b, n in zip(gr, gref, ("origins", "directions")):
        assert_close(a, b, rtol=1e-3, atol=1e-4, name=n)


def test_the_fused_path_keeps_no_per_sample_tensors_for_the_backward():
    planes, o, d, dec = scene(B=2, N=64, C=8)
    planes.requires_grad_()
    opts = options(depth_resolution=24, depth_resolution_importance=24)
    per_sample = 2 * 64 * 48 * 8 * 4  # one [B, N, S, C] float32 tensor

    def saved_bytes(renderer):
        sizes = []

        def pack(t):
            sizes.append(t.numel() * t.element_size())
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            renderer(planes, dec, o, d, opts)
        return sum(sizes), max(sizes)

    fused_total, fused_max = saved_bytes(eg3d.ImportanceRenderer())
    composed_total, _ = saved_bytes(eg3d.ImportanceRenderer(fused=False))
    assert fused_max < per_sample, fused_max
    assert composed_total > 10 * fused_total, (composed_total, fused_total)


def test_zero_opacity_rays_get_eg3ds_depth_and_no_nan_gradients():
    """EG3D: depth 0/0 -> NaN -> inf -> the max over ALL depths of the batch (ray_march gives the ray's own far
    depth). Rays that miss the box with clip_to_box have zero opacity."""
    planes, o, d, dec = scene(B=2, N=6)
    d = d.clone()
    d[0, :3] = torch.tensor([1.0, 0.0, 0.0])  # parallel to the box's face, far outside: no density with clipping
    for fused in (True, False):
        r = eg3d.ImportanceRenderer(fused=fused, clip_to_box=True)
        p = planes.clone().requires_grad_()
        torch.manual_seed(0)
        rgb, depth, ws = r(p, dec, o, d, options())
        torch.manual_seed(0)
        ref = ReferenceRenderer(clip_to_box=True)(planes, dec, o, d, options())
        assert (ws[0, :3] == 0).all()
        assert_close(depth, ref[1], **F32, name="depth")
        assert_close(rgb, ref[0], **F32, name="rgb")
        g = torch.autograd.grad(depth.sum() + rgb.sum(), p)[0]
        assert torch.isfinite(g).all()


def test_empty_ray_batches_give_empty_outputs():
    planes, o, d, dec = scene(N=0)
    for fused in (True, False):
        rgb, depth, ws = eg3d.ImportanceRenderer(fused=fused)(planes, dec, o, d, options())
        assert rgb.shape == (2, 0, 4) and depth.shape == (2, 0, 1) and ws.shape == (2, 0, 1)


def test_planes_with_other_plane_matrices_take_the_general_projection():
    planes, o, d, dec = scene()
    angle = torch.tensor(0.3)
    rot = torch.tensor([[torch.cos(angle), -torch.sin(angle), 0], [torch.sin(angle), torch.cos(angle), 0], [0, 0, 1]])
    r, ref = eg3d.ImportanceRenderer(), ReferenceRenderer()
    r.plane_axes = eg3d.generate_planes() @ rot
    ref.plane_axes = r.plane_axes.clone()
    assert r.oneshot_path(planes, dec, o, d, options())[0] == "composed"
    a, _, _ = _render(r, planes, dec, o, d, options(), seed=4)
    b, _, _ = _render(ref, planes, dec, o, d, options(), seed=4)
    _same(a, b, OUT, **F32)


# EG3D's documented signatures (training/volumetric_rendering/*.py, training/triplane.py, networks_stylegan2.py)
EG3D_SIGNATURES = {
    "ImportanceRenderer.forward": "(self, planes, decoder, ray_origins, ray_directions, rendering_options)",
    "ImportanceRenderer.run_model": "(self, planes, decoder, sample_coordinates, sample_directions, options)",
    "ImportanceRenderer.sort_samples": "(self, all_depths, all_colors, all_densities)",
    "ImportanceRenderer.unify_samples": "(self, depths1, colors1, densities1, depths2, colors2, densities2)",
    "ImportanceRenderer.sample_stratified":
        "(self, ray_origins, ray_start, ray_end, depth_resolution, disparity_space_sampling=False)",
    "ImportanceRenderer.sample_importance": "(self, z_vals, weights, N_importance)",
    "ImportanceRenderer.sample_pdf": "(self, bins, weights, N_importance, det=False, eps=1e-05)",
    "MipRayMarcher2.__init__": "(self)",
    "MipRayMarcher2.forward": "(self, colors, densities, depths, rendering_options)",
    "MipRayMarcher2.run_forward": "(self, colors, densities, depths, rendering_options)",
    "RaySampler.__init__": "(self)",
    "RaySampler.forward": "(self, cam2world_matrix, intrinsics, resolution)",
    "OSGDecoder.__init__": "(self, n_features, options)",
    "OSGDecoder.forward": "(self, sampled_features, ray_directions)",
    "FullyConnectedLayer.__init__":
        "(self, in_features, out_features, bias=True, activation='linear', lr_multiplier=1, bias_init=0)",
    "generate_planes": "()",
    "project_onto_planes": "(planes, coordinates)",
    "sample_from_planes": "(plane_axes, plane_features, coordinates, mode='bilinear', padding_mode='zeros', "
                          "box_warp=None)",
}


@pytest.mark.parametrize("name", sorted(EG3D_SIGNATURES))
def test_signatures_are_eg3ds(name):
    obj = eg3d
    for part in name.split("."):
        obj = getattr(obj, part)
    sig = inspect.signature(obj)
    plain = sig.replace(parameters=[p.replace(annotation=inspect.Parameter.empty) for p in sig.parameters.values()],
                        return_annotation=inspect.Signature.empty)
    assert str(plain) == EG3D_SIGNATURES[name]


def test_the_renderers_constructor_is_eg3ds_plus_keyword_only_switches():
    params = list(inspect.signature(eg3d.ImportanceRenderer.__init__).parameters.values())[1:]
    assert params and all(p.kind is inspect.Parameter.KEYWORD_ONLY and p.default is not p.empty for p in params)
    r = eg3d.ImportanceRenderer()
    assert torch.equal(r.plane_axes, eg3d.generate_planes()) and isinstance(r.ray_marcher, eg3d.MipRayMarcher2)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("fused", [None, True])  # None: the composed CUDA ops until the fused kernel is measured
def test_cuda_matches_the_reference_and_draws_eg3ds_numbers(fused):
    planes, o, d, dec = (x.cuda() for x in scene(N=37, seed=8))
    opts = options(white_back=True)
    r = eg3d.ImportanceRenderer(fused=fused)
    expected = "fused" if fused is True and ops.backend_info()["native_cuda"] else "composed"
    assert r.oneshot_path(planes, dec, o, d, opts)[0] == expected
    results = []
    for renderer in (r, ReferenceRenderer()):
        p = planes.clone().requires_grad_()
        torch.manual_seed(4)
        out = renderer(p, dec, o, d, opts)
        state = torch.cuda.get_rng_state()
        cots = [torch.ones_like(x) for x in out]
        results.append((out, state, torch.autograd.grad(out, [p] + list(dec.parameters()), cots)))
    (out, state, grads), (ref, ref_state, ref_grads) = results
    assert torch.equal(state, ref_state)
    _same(out, ref, OUT, **F32)
    _same(grads, ref_grads, GRADS, rtol=2e-4, atol=2e-4 * max(float(g.abs().max()) for g in ref_grads))
