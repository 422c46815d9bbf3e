"""Every autotune config of every Triton kernel (oneshot.kernels) against the reference, forward and backward,
and the autotuned path itself.

On a GPU the autotuner times all configs but returns only the fastest one's result, so a config that computes
the wrong thing could hide until a new shape or GPU picks it. Here each config is forced in turn
(``oneshot.kernels._common.forced_config``) on shapes that no block size divides. Then the autotuner itself, in
a subprocess (the switch is read at import): every config run on the same buffers while it "times" them, then
the pick, which is right only if the buffers the kernels add into are zeroed between configs (reset_to_zero).
Runs where the kernels are not autotuned: in Triton's interpreter (block sizes; num_warps / num_stages mean
nothing there), or on a GPU with ONESHOT_TRITON_AUTOTUNE=0 (each config compiled for real):

    TRITON_INTERPRET=1 python -m pytest tests/test_triton_configs.py

``python tests/test_triton_configs.py`` runs the four checks once under whatever the environment asks.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import assert_close
from oneshot import ops
from oneshot.ops import reference
from test_render_triplane import _grads, _scene

INTERPRET = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")
if importlib.util.find_spec("triton") is None or not (INTERPRET or torch.cuda.is_available()):
    pytest.skip("needs triton and a GPU, or TRITON_INTERPRET=1", allow_module_level=True)

from oneshot.kernels import _common  # noqa: E402  (imports triton: after the skip)
from oneshot.kernels import raster as kraster  # noqa: E402
from oneshot.kernels import raymarch as kray  # noqa: E402
from oneshot.kernels import render as krender  # noqa: E402
from oneshot.kernels import triplane as ktri  # noqa: E402

pytestmark = pytest.mark.skipif(_common.autotuning(), reason="the kernels are autotuned here (they pick their own "
                                "config): run with ONESHOT_TRITON_AUTOTUNE=0 on a GPU, or in the interpreter")
DEVICE = "cpu" if INTERPRET else "cuda"


def _configs(*lists):
    """The configs of the lists with distinct block sizes (num_warps and num_stages change the code, not what it
    computes; on a GPU the autotuned test below compiles and runs every config)."""
    seen, out = set(), []
    for cfg in (c for lst in lists for c in lst):
        key = tuple(sorted(cfg.kwargs.items()))
        if key not in seen:
            seen.add(key)
            out.append(cfg)
    return out


def _id(cfg) -> str:
    return ",".join(f"{k}={v}" for k, v in cfg.kwargs.items())


def close(a, b, scale=1.0, name="tensor"):
    assert_close(a.double().cpu(), b.double().cpu(), rtol=3e-5 * scale, atol=3e-5 * scale, name=name)


def check_triplane(reduce: str) -> None:
    g = torch.Generator().manual_seed(0)
    planes = torch.randn(2, 3, 70, 5, 7, generator=g, dtype=torch.float64)  # two channel tiles, the second partial
    points = torch.rand(2, 70, 3, generator=g, dtype=torch.float64) * 2.4 - 1.2
    p32, x32 = planes.float().to(DEVICE).requires_grad_(), points.float().to(DEVICE).requires_grad_()
    out = ops.triplane_sample(p32, x32, reduce=reduce, backend="triton")
    cot = torch.randn(out.shape, generator=g, dtype=torch.float64)
    gp, gx = torch.autograd.grad(out, (p32, x32), cot.float().to(DEVICE))
    rp, rx = planes.requires_grad_(), points.requires_grad_()
    want = reference.triplane_sample(rp, rx, reduce=reduce)
    wp, wx = torch.autograd.grad(want, (rp, rx), cot)
    close(out, want, 3.0, "out")
    close(gp, wp, 4 * float(cot.abs().max()), "grad planes")
    close(gx, wx, 4 * float(cot.abs().max()) * 7 * 70, "grad points")


def check_ray_march() -> None:
    g = torch.Generator().manual_seed(1)
    R, S, C = 70, 5, 70
    colors = torch.rand(R, S, C, generator=g, dtype=torch.float64)
    dens = torch.randn(R, S, generator=g, dtype=torch.float64) * 2 + 1
    depths = torch.sort(torch.rand(R, S, generator=g, dtype=torch.float64) * 2 + 1, dim=-1).values
    c32, s32 = colors.float().to(DEVICE).requires_grad_(), dens.float().to(DEVICE).requires_grad_()
    rc, rs = colors.clone().requires_grad_(), dens.clone().requires_grad_()
    want = reference.ray_march(rc, rs, depths, -1.0, True)
    cots = [torch.randn(w.shape, generator=g, dtype=torch.float64) for w in want]
    out = ops.ray_march(c32, s32, depths.float().to(DEVICE), white_background=True, backend="triton")
    got = torch.autograd.grad(list(out), (c32, s32), [c.float().to(DEVICE) for c in cots])
    exp = torch.autograd.grad(list(want), (rc, rs), cots)
    for name, a, b, scale in zip(("features", "depth", "opacity", "weights"), out, want, (2.0, 3.0 * S, S, S)):
        close(a, b, scale, name)
    close(got[0], exp[0], 2 * float(cots[0].abs().max()), "grad colors")
    close(got[1], exp[1], sum(float(c.abs().max()) for c in cots) * S * C * 10, "grad densities")


def check_rasterize() -> None:
    g = torch.Generator().manual_seed(2)
    points = torch.rand(2, 150, 3, generator=g) * 2.2 - 1.1
    points[:, 100:] = points[:, :50]  # exact duplicates in another point tile: ties go to the lower index
    features = torch.randn(2, 150, 40, generator=g)
    valid = torch.rand(2, 150, generator=g) > 0.3
    want_planes, want_index = ops.rasterize_points(points, features, (9, 13), valid=valid)
    f = features.to(DEVICE).requires_grad_()
    cot = torch.randn(want_planes.shape, generator=g)
    planes, index = ops.rasterize_points(points.to(DEVICE), f, (9, 13), valid=valid.to(DEVICE), backend="triton")
    (got,) = torch.autograd.grad(planes, f, cot.to(DEVICE))
    assert torch.equal(index.cpu(), want_index)
    assert torch.equal(planes.detach().cpu(), want_planes)
    rf = features.clone().requires_grad_()
    (want,) = torch.autograd.grad(reference.rasterize_points(points, rf, (9, 13), valid=valid)[0], rf, cot)
    close(got, want, float(cot.abs().max()) * 4, "grad features")


def check_render_triplane() -> None:
    B, R, S, Co = 2, 19, 4, 3  # 38 rays: no BLOCK_R divides them
    args = [a.float().to(DEVICE) for a in _scene(B, R, S, 5, 5, 6, 20, Co, seed=7)]
    g = torch.Generator().manual_seed(3)
    cots = [torch.randn(s, generator=g).to(DEVICE) for s in ((B, R, Co), (B, R), (B, R), (B, R, S - 1))]
    out, grads = _grads(lambda *a: ops.render_triplane(*a, clip_to_box=True, backend="triton"), args, cots)
    ref, rgrads = _grads(lambda *a: ops.reference_render_triplane(*a, 1.0, ((0, 1), (0, 2), (2, 1)), True, -1.0),
                         [a.double() for a in args], [c.double() for c in cots])
    for name, a, b in zip(("features", "depth", "opacity", "weights"), out, ref):
        close(a, b, 4.0, name)
    for name, a, b in zip(("planes", "w1", "b1", "w2", "b2"), grads, rgrads):
        close(a, b, 20.0, name)


@pytest.mark.parametrize("config", _configs(ktri.FORWARD_CONFIGS, ktri.BACKWARD_CONFIGS), ids=_id)
@pytest.mark.parametrize("reduce", ["mean", "none"])
def test_triplane_every_config(config, reduce):
    with _common.forced_config(config):
        check_triplane(reduce)


@pytest.mark.parametrize("config", _configs(kray.FORWARD_CONFIGS, kray.BACKWARD_CONFIGS), ids=_id)
def test_ray_march_every_config(config):
    with _common.forced_config(config):
        check_ray_march()


@pytest.mark.parametrize("config", _configs(kraster.NEAREST_CONFIGS, kraster.GATHER_CONFIGS,
                                            kraster.SCATTER_CONFIGS), ids=_id)
def test_rasterize_every_config(config):
    with _common.forced_config(config):
        check_rasterize()


@pytest.mark.parametrize("config", _configs(krender.FORWARD_CONFIGS, krender.BACKWARD_CONFIGS), ids=_id)
def test_render_triplane_every_config(config):
    with _common.forced_config(config):
        check_render_triplane()


@pytest.mark.parametrize("where", ["interpreter"] + (["cuda"] if torch.cuda.is_available() else []))
def test_the_autotuned_kernels_match_the_reference(where):
    # A fresh process: the switch is read when the kernels are imported. In the interpreter the autotuner "times"
    # each config by running it once on the same buffers (see _common), on CUDA for real.
    env = {**os.environ, "ONESHOT_TRITON_AUTOTUNE": "interpret" if where == "interpreter" else "1"}
    env.pop("TRITON_INTERPRET", None)
    if where == "interpreter":
        env["TRITON_INTERPRET"] = "1"
    p = subprocess.run([sys.executable, __file__], env=env, cwd=Path(__file__).parent, capture_output=True,
                       text=True, timeout=600)
    assert p.returncode == 0 and "autotuned: every op matches" in p.stdout, p.stdout + p.stderr


def test_forced_config_reaches_the_launch():
    # The forcing itself must work, or every test above would run the default config only.
    cfg = kray.FORWARD_CONFIGS[-1]
    with _common.forced_config(cfg):
        assert _common.fixed(BLOCK_R=32, num_warps=4) == {"BLOCK_R": cfg.kwargs["BLOCK_R"], "num_warps": cfg.num_warps}
    assert _common.fixed(BLOCK_R=32, num_warps=4) == {"BLOCK_R": 32, "num_warps": 4}


if __name__ == "__main__":  # the four checks under whatever the environment asks (the autotuned test's subprocess)
    check_triplane("mean")
    check_ray_march()
    check_rasterize()
    check_render_triplane()
    print(("autotuned" if _common.autotuning() else "untuned") + ": every op matches the reference")
