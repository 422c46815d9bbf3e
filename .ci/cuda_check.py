"""CI, no GPU: the extension built with FORCE_CUDA=1 imports and has CUDA kernels for every op.

Run from outside the checkout with the CUDA venv's python, after `pip install --no-build-isolation --no-deps .`.
"""

import json
import sys
from pathlib import Path

import torch

import oneshot
from oneshot import ops

OPS = ["triplane_sample", "triplane_sample_backward", "ray_march", "ray_march_backward", "render_triplane",
       "render_triplane_backward", "rasterize_points", "rasterize_points_backward"]

info = ops.backend_info()
print("torch", torch.__version__, "cuda", torch.version.cuda, "| oneshot", Path(oneshot.__file__).parent)
print("backend_info", info)
build = json.loads((Path(oneshot.__file__).parent / "_C_build.json").read_text())
print("build", build)
failures = []
if not info["native_cpu"]:
    failures.append(f"the extension did not load: {info['extension_error']}")
if not build.get("with_cuda"):
    failures.append("the extension was built without CUDA")
for op in OPS:
    for key in ("CPU", "CUDA"):
        if not torch._C._dispatch_has_kernel_for_dispatch_key(f"oneshot::{op}", key):
            failures.append(f"oneshot::{op} has no {key} kernel")
if not info["native_cuda"]:
    failures.append("backend_info() does not report the CUDA kernels")
# Without a GPU the CUDA ops cannot run; the CPU kernels of the same library still must.
out = ops.ray_march(torch.rand(4, 5, 3), torch.randn(4, 5), torch.linspace(1, 2, 5).expand(4, 5), backend="native")
assert out.features.shape == (4, 3)
if failures:
    sys.exit("CUDA build check failed:\n  " + "\n  ".join(failures))
print("CUDA build check: every op has CPU and CUDA kernels")
