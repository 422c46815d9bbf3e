"""render_triplane (tri-plane sampling + EG3D decoder + ray_march fused, recompute backward) against the composed
reference, gradcheck, opcheck, what autograd keeps, determinism, errors, and the renderer's fused switch (the
setting itself: test_fused_render.py)."""

from __future__ import annotations

import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st

from oneshot import ops
from oneshot.ops import reference_render_triplane, render_triplane
from render_cases import scene as _scene

pytestmark = pytest.mark.skipif(not ops.backend_info()["native_cpu"], reason="the native extension is not built")

AXES = ((0, 1), (0, 2), (2, 1))


def _grads(fn, args, cots, which=(0, 4, 5, 6, 7)):
    args = [a.clone().requires_grad_(i in which) for i, a in enumerate(args)]
    out = fn(*args)
    loss = sum((x * c).sum() for x, c in zip(out, cots) if c is not None)
    return out, torch.autograd.grad(loss, [args[i] for i in which])


def _compare(a, b, rtol, atol, what):
    for x, y, n in zip(a, b, what):
        err = (x - y).abs()
        assert torch.allclose(x, y, rtol=rtol, atol=atol), (
            f"{n}: max abs diff {float(err.max()):.3g} at {tuple(int(i) for i in torch.nonzero(err == err.max())[0])}, "
            f"{int((err > atol + rtol * y.abs()).sum())} of {err.numel()} elements differ")


NAMES = ("features", "depth", "opacity", "weights")
GRADS = ("planes", "w1", "b1", "w2", "b2")


DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype,rtol,atol", [(torch.float64, 1e-10, 1e-12), (torch.float32, 2e-4, 2e-5)])
@pytest.mark.parametrize("clip", [False, True])
def test_matches_the_composed_reference(device, dtype, rtol, atol, clip):
    args = [a.to(device) for a in _scene(dtype=dtype)]
    kw = dict(box_warp=1.0, axes=AXES, clip_to_box=clip, density_bias=-1.0)
    g = torch.Generator().manual_seed(1)
    cots = [torch.randn(s, generator=g, dtype=dtype).to(device) for s in ((2, 13, 4), (2, 13), (2, 13), (2, 13, 8))]
    out, grads = _grads(lambda *a: render_triplane(*a, backend="native", **kw), args, cots)
    ref, rgrads = _grads(lambda *a: reference_render_triplane(*a, 1.0, AXES, clip, -1.0), args, cots)
    _compare(out, ref, rtol, atol, NAMES)
    _compare(grads, rgrads, rtol, atol, GRADS)


@settings(deadline=None, max_examples=25)
@given(B=st.integers(1, 2), R=st.integers(1, 19), S=st.integers(2, 13), C=st.integers(1, 9), H=st.integers(1, 11),
       W=st.integers(1, 11), Hd=st.integers(1, 17), Co=st.integers(1, 6), clip=st.booleans(),
       box=st.sampled_from([0.5, 1.0, 2.0]), bias=st.sampled_from([-1.0, 0.0, 0.7]),
       axes=st.sampled_from([AXES, ((0, 1), (0, 2), (2, 0))]), which=st.integers(0, 15), seed=st.integers(0, 999))
@example(B=1, R=1, S=2, C=1, H=1, W=1, Hd=1, Co=1, clip=True, box=1.0, bias=-1.0, axes=AXES, which=15, seed=0)
def test_drawn_shapes_and_any_subset_of_incoming_gradients(B, R, S, C, H, W, Hd, Co, clip, box, bias, axes, which,
                                                            seed):
    args = _scene(B, R, S, C, H, W, Hd, Co, seed=seed, spread=box)
    g = torch.Generator().manual_seed(seed + 1)
    shapes = ((B, R, Co), (B, R), (B, R), (B, R, S - 1))
    cots = [torch.randn(s, generator=g, dtype=torch.float64) if which >> k & 1 else None for k, s in enumerate(shapes)]
    if all(c is None for c in cots):
        cots[0] = torch.randn(shapes[0], generator=g, dtype=torch.float64)
    out, grads = _grads(lambda *a: render_triplane(*a, box_warp=box, axes=axes, clip_to_box=clip, density_bias=bias,
                                                   backend="native"), args, cots)
    ref, rgrads = _grads(lambda *a: reference_render_triplane(*a, box, axes, clip, bias), args, cots)
    _compare(out, ref, 1e-9, 1e-11, NAMES)
    _compare(grads, rgrads, 1e-9, 1e-11, GRADS)


def test_public_reference_backend_is_the_composed_reference():
    args = _scene()
    a = render_triplane(*args, clip_to_box=True, backend="reference")
    b = reference_render_triplane(*args, 1.0, AXES, True, -1.0)
    for x, y in zip(a, b):
        assert torch.equal(x, y)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("low", [torch.float16, torch.bfloat16])
def test_16bit_planes_are_sampled_in_float32(device, low):
    args = [a.to(device) for a in _scene(dtype=torch.float32)]
    args[0] = args[0].to(low)
    g = torch.Generator().manual_seed(2)
    cots = [torch.randn(s, generator=g).to(device) for s in ((2, 13, 4), (2, 13), (2, 13), (2, 13, 8))]
    out, grads = _grads(lambda *a: render_triplane(*a, clip_to_box=True, backend="native"), args, cots)
    ref, rgrads = _grads(lambda *a: reference_render_triplane(*a, 1.0, AXES, True, -1.0), args, cots)
    assert out.features.dtype == torch.float32 and grads[0].dtype == low
    if device == "cuda":  # the CUDA kernel's decoder runs on bfloat16 tensor cores: tests/render_cases.py's 16u bound
        k = 16 * 2.0 ** -8
        for x, y, n in zip([*out, *grads], [*ref, *rgrads], NAMES + GRADS):
            _compare([x.float()], [y.float()], k, k * float(y.abs().max()), (n,))
    else:
        _compare(out, ref, 2e-4, 2e-5, NAMES)
        # Only the planes' gradient comes back in the 16-bit dtype: both sides round a float32 sum to it, so they may
        # differ by one unit in the last place of that dtype (eps relative). The decoder's gradients stay float32.
        _compare([grads[0].float()], [rgrads[0].float()], torch.finfo(low).eps, 1e-6, GRADS[:1])
        _compare(grads[1:], rgrads[1:], 2e-4, 2e-5, GRADS[1:])
    with pytest.raises(TypeError, match=r"w1 must have the dtype of planes \(torch.float16\) \(float32 with"):
        render_triplane(args[0].half(), *args[1:4], args[4].double(), *args[5:])


def test_gradcheck():
    args = [a.requires_grad_(i in (0, 4, 5, 6, 7)) for i, a in enumerate(_scene(1, 3, 5, 3, 4, 5, 4, 2))]
    assert torch.autograd.gradcheck(lambda *a: render_triplane(*a, clip_to_box=True, backend="native"), args,
                                    eps=1e-6, atol=1e-6)


def test_opcheck():
    args = [a.requires_grad_(i in (0, 4, 5, 6, 7)) for i, a in enumerate(_scene(1, 4, 6, 3, 5, 5, 4, 3, dtype=torch.float32))]
    torch.library.opcheck(torch.ops.oneshot.render_triplane.default, (*args, 1.0, [0, 1, 0, 2, 2, 1], True, -1.0))


def test_autograd_keeps_only_the_inputs():
    """The composed path keeps [R, S, *] tensors for its backward; the fused op keeps its inputs and nothing else."""
    B, R, S, C, Hd, Co = 1, 64, 24, 8, 16, 8
    args = [a.requires_grad_(i in (0, 4, 5, 6, 7)) for i, a in enumerate(_scene(B, R, S, C, 16, 16, Hd, Co))]
    saved = []

    def pack(t):
        saved.append(t.numel())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        render_triplane(*args, backend="native").features.sum().backward()
    inputs = sorted(a.numel() for a in args)
    assert sorted(saved) == inputs  # the eight inputs, once each
    saved.clear()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        reference_render_triplane(*args).features.sum()
    assert max(saved) >= R * S * Hd  # the composed path keeps per-sample activations


def test_layout_and_thread_count_do_not_change_the_result():
    from conftest import num_threads

    args = list(_scene(2, 300, 17, 6, 9, 9, 8, 5, dtype=torch.float32))
    cots = [torch.randn(2, 300, 5), torch.randn(2, 300), None, None]
    runs = []
    for threads, channels_last in ((1, False), (2, False), (2, True)):
        a = list(args)
        if channels_last:
            a[0] = a[0].permute(0, 1, 3, 4, 2).contiguous().permute(0, 1, 4, 2, 3)
        with num_threads(threads):
            runs.append(_grads(lambda *x: render_triplane(*x, clip_to_box=True, backend="native"), a, cots))
    for out, grads in runs[1:]:
        for x, y in zip(list(out) + list(grads), list(runs[0][0]) + list(runs[0][1])):
            assert torch.equal(x, y)


def test_empty_and_errors():
    args = _scene(1, 0, 4)
    out = render_triplane(*args, backend="native")
    assert out.features.shape == (1, 0, 4) and out.weights.shape == (1, 0, 3)
    planes, o, d, t, w1, b1, w2, b2 = _scene()
    with pytest.raises(ValueError, match=r"w1 must be \[hidden, C\] with C = 5 \(the planes' channels\), got \[6, 4\]"):
        render_triplane(planes, o, d, t, w1[:, :4], b1, w2, b2)
    with pytest.raises(ValueError, match=r"depths must be \[B, R, S\] with B, R = 2, 13, got \[2, 12, 9\]"):
        render_triplane(planes, o, d, t[:, :12], w1, b1, w2, b2)
    with pytest.raises(ValueError, match="S >= 2"):
        render_triplane(planes, o, d, t[..., :1], w1, b1, w2, b2)
    with pytest.raises(TypeError, match=r"b2 must have the dtype of planes \(torch.float64\), got torch.float32"):
        render_triplane(planes, o, d, t, w1, b1, w2, b2.float())
    with pytest.raises(ValueError, match=r"b1 must be \[6\], got \[5\]"):
        render_triplane(planes, o, d, t, w1, b1[:5], w2, b2)
    with pytest.raises(ValueError, match=r"b1 must be \[6\], got \[5\]"):  # the kernel checks too
        torch.ops.oneshot.render_triplane(planes, o, d, t, w1, b1[:5], w2, b2, 1.0, [0, 1, 0, 2, 2, 1], False, -1.0)


@pytest.mark.parametrize("stratified", [False, True])
def test_volume_renderer_fused_switch_gives_the_composed_render(stratified, monkeypatch):
    from oneshot import cameras
    from oneshot.models import volume
    from oneshot.models.decoder import TriplaneDecoder
    from oneshot.models.volume import RenderSettings, VolumeRenderer

    torch.manual_seed(0)
    planes = (torch.randn(2, 3, 8, 16, 16, dtype=torch.float64) * 0.5).requires_grad_()
    dec = TriplaneDecoder(8, 16, 8).double()
    cam = cameras.orbit_labels(2, yaw_range=0.5, pitch_range=0.1).double()
    results = []
    calls = {"render_triplane": 0, "triplane_sample": 0}

    def spied(name):
        real = getattr(volume, name)

        def spy(*args, **kwargs):
            calls[name] += 1
            return real(*args, **kwargs)
        return spy

    for fused in (False, True):
        s = RenderSettings(samples=10, importance_samples=10, stratified=stratified, clip_to_box=True, fused=fused,
                           chunk=100)
        calls.update(render_triplane=0, triplane_sample=0)
        with monkeypatch.context() as m:  # each setting must really take its path: equal outputs cannot tell
            for name in calls:
                m.setattr(volume, name, spied(name))
            out = VolumeRenderer(s)(planes, dec, cam, 12, generator=torch.Generator().manual_seed(4))
        assert (calls["render_triplane"] > 0, calls["triplane_sample"] > 0) == (fused, not fused), (fused, calls)
        loss = (out.features * torch.linspace(-1, 1, out.features.numel(), dtype=torch.float64).reshape(
            out.features.shape)).sum() + out.depth.sum() + out.opacity.sum()
        results.append(list(out) + list(torch.autograd.grad(loss, [planes] + list(dec.parameters()))))
    _compare(results[1], results[0], 1e-9, 1e-11, ("features", "depth", "opacity") + GRADS)
