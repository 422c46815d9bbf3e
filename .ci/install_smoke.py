"""Smoke test of an installed oneshot-avatar, run from outside the checkout by .ci/install_check.sh.

It checks what a user gets from `pip install --no-build-isolation <sdist>`: the package imports from site-packages
(not from a checkout), the compiled CPU extension is the one that loaded, every op runs forward and backward with
its native kernel and agrees with its pure-PyTorch reference, and the `oneshot` command answers --help.
"""

import importlib.metadata as md
import os
import shutil
import subprocess
import sys
from pathlib import Path

import torch

import oneshot
from oneshot import ops
from oneshot.ops import reference

failures: list[str] = []


def check(cond: bool, what: str) -> None:
    print(("ok    " if cond else "FAIL  ") + what)
    if not cond:
        failures.append(what)


pkg = Path(oneshot.__file__).resolve().parent
check("site-packages" in pkg.parts, f"oneshot imported from an installed copy ({pkg})")
check(not any((p / "csrc").is_dir() and (p / "setup.py").is_file() for p in pkg.parents),
      "no source checkout around the imported package")
check(md.version("oneshot-avatar") == oneshot.__version__, f"metadata version == oneshot.__version__ "
      f"({oneshot.__version__})")
info = ops.backend_info()
print("backend_info:", info)
check(info["native_cpu"] and info["extension_source"] == "prebuilt",
      "backend_info() reports the compiled CPU extension (prebuilt)")

torch.manual_seed(0)
f64 = dict(dtype=torch.float64)


def compare(name, native, ref, inputs):
    """Forward and backward (random cotangents) of the native kernel against the reference."""
    outs_n, outs_r = native(*inputs), ref(*inputs)
    outs_n = outs_n if isinstance(outs_n, (tuple, list)) else (outs_n,)
    outs_r = outs_r if isinstance(outs_r, (tuple, list)) else (outs_r,)
    diff = [float((a.detach().double() - b.detach().double()).abs().max()) if a.is_floating_point()
            else float((a != b).sum()) for a, b in zip(outs_n, outs_r) if a.numel()]
    fwd_ok = max(diff) < 1e-10
    diff_outs = [(a, b) for a, b in zip(outs_n, outs_r) if a.requires_grad]
    cots = [torch.randn_like(a) for a, _ in diff_outs]
    leaves = [x for x in inputs if isinstance(x, torch.Tensor) and x.requires_grad]
    g_n = torch.autograd.grad([a for a, _ in diff_outs], leaves, cots, allow_unused=True)
    g_r = torch.autograd.grad([b for _, b in diff_outs], leaves, cots, allow_unused=True)
    gdiff = max(float((a - b).abs().max()) for a, b in zip(g_n, g_r) if a is not None and b is not None)
    check(fwd_ok and gdiff < 1e-9, f"{name}: native vs reference, forward {max(diff):.1e}, backward {gdiff:.1e}")


planes = torch.randn(2, 3, 4, 7, 5, **f64, requires_grad=True)
pts = (torch.rand(2, 11, 3, **f64) - 0.5) * 1.1
compare("triplane_sample", lambda p, x: ops.triplane_sample(p, x, backend="native"),
        lambda p, x: reference.triplane_sample(p, x, 1.0, ((0, 1), (0, 2), (2, 1)), "mean"), (planes, pts))

colors = torch.rand(3, 6, 4, **f64, requires_grad=True)
dens = torch.randn(3, 6, **f64, requires_grad=True)
depths = torch.linspace(2.0, 3.0, 6, **f64).expand(3, 6).contiguous()
compare("ray_march", lambda c, s, t: ops.ray_march(c, s, t, backend="native"),
        lambda c, s, t: reference.ray_march(c, s, t, -1.0, False), (colors, dens, depths))

R, S, C, Hd, Co = 5, 6, 4, 8, 5
origins = torch.tensor([0.0, 0.0, -2.5], **f64).expand(1, R, 3).contiguous()
dirs = torch.nn.functional.normalize(torch.randn(1, R, 3, **f64) * 0.1 + torch.tensor([0, 0, 1.0], **f64), dim=-1)
ts = torch.linspace(2.0, 3.0, S, **f64).expand(1, R, S).contiguous()
w = [torch.randn(Hd, C, **f64, requires_grad=True), torch.randn(Hd, **f64, requires_grad=True),
     torch.randn(1 + Co, Hd, **f64, requires_grad=True), torch.randn(1 + Co, **f64, requires_grad=True)]
pl1 = torch.randn(1, 3, C, 6, 6, **f64, requires_grad=True)
compare("render_triplane", lambda p, *a: ops.render_triplane(p, origins, dirs, ts, *a, backend="native"),
        lambda p, *a: ops.reference_render_triplane(p, origins, dirs, ts, *a), (pl1, *w))

rp = (torch.rand(1, 9, 3, **f64) - 0.5)
rf = torch.randn(1, 9, 3, **f64, requires_grad=True)
compare("rasterize_points", lambda f: ops.rasterize_points(rp, f, 6, backend="native"),
        lambda f: ops.rasterize_points(rp, f, 6, backend="reference"), (rf,))

verts = torch.tensor([[[1.0, 1.0, 2.0], [7.0, 2.0, 2.5], [3.0, 7.0, 3.0], [8.0, 8.0, 1.5]]], **f64)
faces = torch.tensor([[0, 1, 2], [1, 3, 2]])
mn, mr = ops.rasterize_mesh(verts, faces, 9, backend="native"), ops.rasterize_mesh(verts, faces, 9, backend="reference")
check(all(torch.equal(a, b) for a, b in zip(mn, mr)) and bool((mn[0] >= 0).any()),
      "rasterize_mesh: native equals reference (it has no backward)")

exe = shutil.which("oneshot", path=os.path.dirname(sys.executable))
check(exe is not None, f"the oneshot command is installed beside {sys.executable}")
if exe:
    r = subprocess.run([exe, "--help"], capture_output=True, text=True)
    check(r.returncode == 0 and "reconstruct" in r.stdout, "oneshot --help lists the commands")
if failures:
    sys.exit(f"install smoke test: {len(failures)} check(s) failed: {failures}")
print("install smoke test: all checks passed")
