"""backend="triton": the Triton kernels (oneshot.kernels) against the reference, forward and backward.

On a GPU these run on CUDA tensors. Without one they run in Triton's CPU interpreter, which must be switched on
before the kernels are first imported, so CI runs this module in its own pytest process:

    TRITON_INTERPRET=1 python -m pytest tests/test_triton.py

In the default test run (no GPU, no TRITON_INTERPRET) the module skips. The interpreter costs milliseconds per
program instance, so the shapes are small (but awkward: sizes that are not multiples of the block sizes).
"""

from __future__ import annotations

import importlib.util
import os

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import assert_close
from oneshot import ops
from oneshot.ops import reference
from test_render_triplane import _grads, _scene

INTERPRET = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")
HAS_TRITON = importlib.util.find_spec("triton") is not None
ON_GPU = torch.cuda.is_available() and not INTERPRET
pytestmark = pytest.mark.skipif(
    not HAS_TRITON or not (INTERPRET or torch.cuda.is_available()),
    reason="needs triton and a GPU, or TRITON_INTERPRET=1 (CI: TRITON_INTERPRET=1 python -m pytest tests/test_triton.py)",
)
DEVICE = "cuda" if ON_GPU else "cpu"
# 16-bit values: on a GPU; the interpreter (numpy) has float16 but no bfloat16.
DTYPES = [torch.float32, torch.float16] + ([torch.bfloat16] if ON_GPU else [])
FEW = settings(max_examples=15, deadline=None)


def tol(dtype, scale=1.0):
    e = {torch.float32: 3e-5, torch.float16: 4e-3, torch.bfloat16: 3e-2}[dtype]
    return e, e * scale


def close(a, b, dtype, scale=1.0, name="tensor"):
    rtol, atol = tol(dtype, scale)
    assert_close(a.double().cpu(), b.double().cpu(), rtol=rtol, atol=atol, name=name)


# ---------------------------------------------------------------------------------------------------------- #


@FEW
@given(B=st.integers(1, 2), C=st.sampled_from([1, 3, 5, 33]), H=st.integers(1, 9), W=st.integers(1, 9),
       M=st.integers(0, 70), reduce=st.sampled_from(["mean", "sum", "none"]), seed=st.integers(0, 99))
def test_triplane_matches_reference(B, C, H, W, M, reduce, seed):
    g = torch.Generator().manual_seed(seed)
    planes = torch.randn(B, 3, C, H, W, generator=g, dtype=torch.float64)
    points = torch.rand(B, M, 3, generator=g, dtype=torch.float64) * 2.4 - 1.2
    p32 = planes.float().to(DEVICE).requires_grad_()
    x32 = points.float().to(DEVICE).requires_grad_()
    out = ops.triplane_sample(p32, x32, reduce=reduce, backend="triton")
    rp, rx = planes.requires_grad_(), points.requires_grad_()
    want = reference.triplane_sample(rp, rx, reduce=reduce)
    close(out, want, torch.float32, 3.0, "out")
    if want.numel() == 0:
        return
    cot = torch.randn(want.shape, generator=g, dtype=torch.float64)
    gp, gx = torch.autograd.grad(out, (p32, x32), cot.float().to(DEVICE))
    wp, wx = torch.autograd.grad(want, (rp, rx), cot)
    close(gp, wp, torch.float32, 4 * float(cot.abs().max()), "grad planes")
    close(gx, wx, torch.float32, 4 * float(cot.abs().max()) * max(H, W) * C, "grad points")


@pytest.mark.parametrize("dtype", DTYPES[1:])
def test_triplane_16bit_planes(dtype):
    g = torch.Generator().manual_seed(1)
    planes = torch.randn(1, 3, 8, 6, 5, generator=g).to(DEVICE, dtype)
    points = (torch.rand(1, 20, 3, generator=g) * 2 - 1).to(DEVICE)
    out = ops.triplane_sample(planes, points, backend="triton")
    assert out.dtype == dtype
    close(out, reference.triplane_sample(planes.double(), points.double()), dtype, 3.0)


# ---------------------------------------------------------------------------------------------------------- #


def _rays(lead, S, C, regime, seed):
    g = torch.Generator().manual_seed(seed)
    colors = torch.rand(*lead, S, C, generator=g, dtype=torch.float64)
    scale, shift = {"moderate": (2.0, 1.0), "dense": (5.0, 12.0), "sparse": (3.0, -12.0)}[regime]
    dens = torch.randn(*lead, S, generator=g, dtype=torch.float64) * scale + shift
    depths = torch.sort(torch.rand(*lead, S, generator=g, dtype=torch.float64) * 2 + 1, dim=-1).values
    return colors, dens, depths


@FEW
@given(lead=st.sampled_from([(1,), (7,), (2, 3), (0,)]), S=st.integers(2, 20), C=st.sampled_from([1, 3, 4, 70]),
       regime=st.sampled_from(["moderate", "dense", "sparse"]), white=st.booleans(), seed=st.integers(0, 99))
def test_ray_march_matches_reference(lead, S, C, regime, white, seed):
    colors, dens, depths = _rays(lead, S, C, regime, seed)
    c32 = colors.float().to(DEVICE).requires_grad_()
    s32 = dens.float().to(DEVICE).requires_grad_()
    out = ops.ray_march(c32, s32, depths.float().to(DEVICE), white_background=white, backend="triton")
    rc, rs = colors.requires_grad_(), dens.requires_grad_()
    want = reference.ray_march(rc, rs, depths, -1.0, white)
    close(out.features, want[0], torch.float32, 2.0, "features")
    close(out.opacity, want[2], torch.float32, float(S), "opacity")
    close(out.weights, want[3], torch.float32, float(S), "weights")
    ok = want[2] > 1e-2
    if ok.any():
        close(out.depth[ok], want[1][ok], torch.float32, 3.0 * S / float(want[2][ok].detach().min()), "depth")
    if colors.numel() == 0:
        return
    g = torch.Generator().manual_seed(seed + 1)
    cots = [torch.randn(w.shape, generator=g, dtype=torch.float64) * (w.dim() > 0) for w in want]
    cots[1] = cots[1] * ok  # depth is ill-conditioned where the opacity vanishes
    got = torch.autograd.grad(list(out), (c32, s32), [c.float().to(DEVICE) for c in cots])
    exp = torch.autograd.grad(list(want), (rc, rs), cots)
    close(got[0], exp[0], torch.float32, 2 * float(cots[0].abs().max()), "grad colors")
    scale = sum(float(c.abs().max()) for c in cots) * S * max(C, 1) * 10
    close(got[1], exp[1], torch.float32, scale, "grad densities")


def test_ray_march_16bit_colors():
    colors, dens, depths = _rays((9,), 11, 5, "moderate", 3)
    out = ops.ray_march(colors.to(DEVICE, torch.float16), dens.float().to(DEVICE), depths.float().to(DEVICE),
                        backend="triton")
    assert out.features.dtype == torch.float16 and out.depth.dtype == torch.float32
    want = reference.ray_march(colors, dens, depths)
    close(out.features, want[0], torch.float16, 2.0)
    close(out.opacity, want[2], torch.float32, 11.0)


# ---------------------------------------------------------------------------------------------------------- #


@FEW
@given(B=st.integers(1, 2), N=st.integers(0, 90), C=st.sampled_from([0, 1, 3, 40]), H=st.integers(1, 11),
       W=st.integers(1, 11), align=st.booleans(), mode=st.sampled_from(["plain", "valid", "max", "dups"]),
       seed=st.integers(0, 99))
def test_rasterize_matches_native_exactly(B, N, C, H, W, align, mode, seed):
    g = torch.Generator().manual_seed(seed)
    points = torch.rand(B, N, 3, generator=g) * 2.2 - 1.1
    if mode == "dups" and N > 1:
        points[:, N // 2:] = points[:, : N - N // 2]  # exact duplicates: ties go to the lower index
    features = torch.randn(B, N, C, generator=g)
    kw = {}
    if mode == "valid":
        kw["valid"] = torch.rand(B, N, generator=g) > 0.4
    if mode == "max":
        kw["max_distance"] = 0.15
    want_planes, want_index = ops.rasterize_points(points, features, (H, W), align_corners=align, **kw)
    f = features.to(DEVICE).requires_grad_()
    dev_kw = {k: (v.to(DEVICE) if isinstance(v, torch.Tensor) else v) for k, v in kw.items()}
    planes, index = ops.rasterize_points(points.to(DEVICE), f, (H, W), align_corners=align, backend="triton",
                                         **dev_kw)
    assert torch.equal(index.cpu(), want_index)  # the pinned arithmetic: the same point as every backend
    assert torch.equal(planes.cpu(), want_planes)
    if C > 0 and N > 0:
        cot = torch.randn(planes.shape, generator=g)
        (got,) = torch.autograd.grad(planes, f, cot.to(DEVICE))
        rf = features.clone().requires_grad_()
        (want,) = torch.autograd.grad(reference.rasterize_points(points, rf, (H, W), align_corners=align,
                                                                 **kw)[0], rf, cot)
        close(got, want, torch.float32, float(cot.abs().max()) * 4, "grad features")


@pytest.mark.parametrize("shift", [0, 1, 70])
def test_rasterize_ties_across_and_within_point_blocks(shift):
    # Exact duplicates far apart in the point order (different point blocks of the kernel) and next to each
    # other (one block): every cell must take the lowest index, as the native kernels do.
    g = torch.Generator().manual_seed(shift)
    base = torch.rand(1, 40, 3, generator=g) * 2 - 1
    points = torch.cat([base, torch.rand(1, shift, 3, generator=g) * 2 - 1, base, base], dim=1)
    features = torch.randn(1, points.shape[1], 2, generator=g)
    _, want = ops.rasterize_points(points, features, 12)
    _, index = ops.rasterize_points(points.to(DEVICE), features.to(DEVICE), 12, backend="triton")
    assert torch.equal(index.cpu(), want)
    assert int(want.max()) < 40 + shift  # the duplicates never win


def test_rasterize_16bit_features():
    g = torch.Generator().manual_seed(5)
    points = torch.rand(1, 50, 3, generator=g) * 2 - 1
    features = torch.randn(1, 50, 6, generator=g)
    planes, index = ops.rasterize_points(points.to(DEVICE), features.to(DEVICE, torch.float16), 8, backend="triton")
    want_planes, want_index = ops.rasterize_points(points, features, 8)
    assert planes.dtype == torch.float16
    assert torch.equal(index.cpu(), want_index)
    assert torch.equal(planes.cpu(), want_planes.half())


# ---------------------------------------------------------------------------------------------------------- #


def test_autocast_casts_16bit_geometry_of_the_triton_ops():
    colors, dens, depths = _rays((6,), 8, 3, "moderate", 9)
    c, s, t = colors.float().to(DEVICE), dens.to(DEVICE, torch.bfloat16), depths.float().to(DEVICE)
    want = ops.ray_march(c, s.float(), t, backend="triton")  # (also registers the Triton ops)
    with torch.autocast(DEVICE, dtype=torch.bfloat16):
        out = torch.ops.oneshot.ray_march_triton(c, s, t, -1.0, False)
        pub = ops.ray_march(c, s, t, backend="triton")
    assert out[1].dtype == torch.float32
    for a, b in zip(out, want):
        assert torch.equal(a, b)
    assert torch.equal(pub.features, want.features)


def test_float64_is_refused_with_a_clear_error():
    with pytest.raises(TypeError, match=r"backend='triton' supports float32.*no float64"):
        ops.ray_march(torch.rand(2, 3, 1, dtype=torch.float64, device=DEVICE),
                      torch.rand(2, 3, dtype=torch.float64, device=DEVICE),
                      torch.rand(2, 3, dtype=torch.float64, device=DEVICE), backend="triton")


def test_bad_input_gets_the_same_errors_as_other_backends():
    with pytest.raises(ValueError, match=r"planes must be \[B, 3, C, H, W\], got \[1, 2, 3, 4, 4\]"):
        ops.triplane_sample(torch.rand(1, 2, 3, 4, 4, device=DEVICE), torch.rand(1, 5, 3, device=DEVICE),
                            backend="triton")
    with pytest.raises(ValueError, match=r"S >= 2"):
        ops.ray_march(torch.rand(2, 1, 3, device=DEVICE), torch.rand(2, 1, device=DEVICE),
                      torch.rand(2, 1, device=DEVICE), backend="triton")


@pytest.mark.skipif(not ON_GPU, reason="torch.compile of Triton ops needs a GPU (the interpreter cannot compile)")
def test_compile_traces_the_triton_ops():
    planes = torch.randn(1, 3, 8, 16, 16, device="cuda")
    points = torch.rand(1, 100, 3, device="cuda") - 0.5
    f = torch.compile(lambda p, x: ops.triplane_sample(p, x, backend="triton"), fullgraph=True)
    close(f(planes, points), ops.triplane_sample(planes, points, backend="triton"), torch.float32)


# ---------------------------------------------------------------------------------------------------------- #
# render_triplane (fused sample + decoder + composite)

@settings(max_examples=8, deadline=None)
@given(B=st.integers(1, 2), R=st.integers(1, 21), S=st.integers(2, 7), C=st.sampled_from([1, 4, 17]),
       Hd=st.sampled_from([3, 16, 20]), Co=st.sampled_from([1, 3, 16]), clip=st.booleans(),
       which=st.integers(1, 15), seed=st.integers(0, 99))
def test_render_triplane_matches_reference(B, R, S, C, Hd, Co, clip, which, seed):
    args = [a.float().to(DEVICE) for a in _scene(B, R, S, C, 5, 6, Hd, Co, seed=seed)]
    g = torch.Generator().manual_seed(seed)
    shapes = ((B, R, Co), (B, R), (B, R), (B, R, S - 1))
    cots = [torch.randn(s, generator=g).to(DEVICE) if which >> k & 1 else None for k, s in enumerate(shapes)]
    out, grads = _grads(lambda *a: ops.render_triplane(*a, clip_to_box=clip, backend="triton"), args, cots)
    pairs = ((0, 1), (0, 2), (2, 1))
    ref, rgrads = _grads(lambda *a: ops.reference_render_triplane(*a, 1.0, pairs, clip, -1.0),
                         [a.double() for a in args], [None if c is None else c.double() for c in cots])
    for name, a, b in zip(("features", "depth", "opacity", "weights"), out, ref):
        close(a, b, torch.float32, scale=4.0, name=name)
    for name, a, b in zip(("planes", "w1", "b1", "w2", "b2"), grads, rgrads):
        close(a, b, torch.float32, scale=20.0, name=name)


def test_render_triplane_refuses_other_dtypes():
    args = [a.to(DEVICE) for a in _scene(1, 2, 3, 2, 3, 3, 2, 2)]  # float64
    with pytest.raises(TypeError, match=r"backend='triton' supports float32.*for render_triplane.*got torch.float64"):
        ops.render_triplane(*args, backend="triton")


def test_render_triplane_16bit_planes():
    args = [a.float().to(DEVICE) for a in _scene(1, 9, 4, 5, 4, 5, 6, 3, seed=4)]
    args[0] = args[0].half()
    cots = [torch.randn(1, 9, 3).to(DEVICE), None, None, None]
    out, grads = _grads(lambda *a: ops.render_triplane(*a, clip_to_box=True, backend="triton"), args, cots)
    ref, rgrads = _grads(lambda *a: ops.reference_render_triplane(*a, 1.0, ((0, 1), (0, 2), (2, 1)), True, -1.0), args,
                         cots)
    assert out.features.dtype == torch.float32 and grads[0].dtype == torch.float16
    for name, a, b in zip(("features", "depth", "opacity", "weights"), out, ref):
        close(a, b, torch.float32, scale=4.0, name=name)
    for name, a, b in zip(("planes", "w1", "b1", "w2", "b2"), grads, rgrads):
        close(a, b, torch.float16, name=name)
