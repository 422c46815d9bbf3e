"""rasterize_points: native vs reference (chunked distance + argmin, as the released GOHA code) vs
scipy.spatial.cKDTree (CPU: build + query per plane, workers=-1, then the same feature gather) vs torch.cdist +
argmin over a dense cells x points matrix per plane (CUDA: exactly what the released GOHA code runs).

Modes: "index" is the nearest-point search alone (native/reference with C = 0 features; cKDTree build +
query), "fwd" includes the feature gather into [B, 3, C, H, W] planes, "fwd+bwd" adds the backward.

    python benchmarks/bench_raster.py [--quick | --sizes quick|large|all] [--device cpu|cuda] [--out DIR]
"""

from __future__ import annotations

import torch

import _harness as H
from _scenes import lifted_depth
from oneshot import ops
from oneshot.ops import reference

OP = "rasterize_points"
AXES = ops.PLANE_AXES_GOHA


def cases(quick: bool):
    # (label, points generator, channels, resolution, providers)
    yield "lifted 128^2 depth -> 3x128^2, C32", "lifted", 32, 128, ("reference", "native", "ckdtree", "cdist")
    yield "uniform 16384 pts -> 3x128^2, C32", "uniform", 32, 128, ("native", "ckdtree", "cdist")
    yield "lifted 128^2 depth -> 3x256^2, C32", "lifted", 32, 256, ("native", "ckdtree", "cdist")
    if not quick:
        yield "lifted 128^2 depth -> 3x128^2, C256", "lifted", 256, 128, ("native", "ckdtree", "cdist")


def make_points(kind: str, device):
    if kind == "lifted":
        return lifted_depth(128, device)
    g = torch.Generator().manual_seed(0)
    return (torch.rand(1, 16384, 3, generator=g) * 0.6 - 0.3).to(device)


def ckdtree_index(points: torch.Tensor, res: int) -> torch.Tensor:
    """[1, 3, res, res] nearest indices by scipy's cKDTree, on the same pinned cell centres."""
    import numpy as np
    from scipy.spatial import cKDTree

    c = (points[0] * torch.tensor(2.0, dtype=points.dtype)).cpu().numpy()
    centres = reference.cell_centres(res, False, points.dtype).numpy()
    q = np.stack(np.meshgrid(centres, centres, indexing="xy"), -1).reshape(-1, 2)
    out = []
    for a, b in AXES:
        _, idx = cKDTree(c[:, [a, b]]).query(q, workers=-1)
        out.append(torch.from_numpy(idx.reshape(res, res)))
    return torch.stack(out)[None]


def cdist_index(points: torch.Tensor, res: int) -> torch.Tensor:
    """[1, 3, res, res] nearest indices by torch.cdist + argmin (the GOHA code's way: a dense matrix per plane;
    cdist's matrix-product formula is not exact, so near-ties may differ from the pinned contract)."""
    c = points[0] * 2.0
    centres = reference.cell_centres(res, False, points.dtype, points.device)
    q = torch.stack(torch.meshgrid(centres, centres, indexing="xy"), -1).reshape(-1, 2)
    return torch.stack([torch.cdist(q, c[:, [a, b]]).argmin(dim=1).reshape(res, res) for a, b in AXES])[None]


def gather(features: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    B, _, Hh, W = index.shape
    flat = index.reshape(B, -1, 1).expand(-1, -1, features.shape[-1])
    return torch.gather(features, 1, flat).reshape(B, 3, Hh, W, -1).permute(0, 1, 4, 2, 3).contiguous()


# provider -> (index function, the device type it runs on)
BASELINES = {"ckdtree": (ckdtree_index, "cpu"), "cdist": (cdist_index, "cuda")}


def run(device: torch.device, sizes, results: list) -> None:
    # Triton only on a GPU: interpreter runs (TRITON_INTERPRET=1) are for tests and never timed.
    triton = ("triton",) if device.type == "cuda" and ops.backend_info()["triton"] else ()
    for label, kind, C, res, provs in H.pick(cases, sizes):
        provs = provs + triton
        points = make_points(kind, device)
        g = torch.Generator().manual_seed(1)
        feats = torch.randn(1, points.shape[1], C, generator=g).to(device).requires_grad_()
        cot = torch.randn(1, 3, C, res, res, generator=g).to(device)
        for provider in provs:
            if provider in BASELINES:  # index search by another library, then the same gather
                index_fn, where = BASELINES[provider]
                if device.type != where:
                    continue
                H.run_case(results, OP, label, "index", provider, lambda: index_fn(points, res), device)
                H.run_case(results, OP, label, "fwd", provider, lambda: gather(feats.detach(), index_fn(points, res)),
                           device)
                continue
            empty = feats.detach()[..., :0]

            def index_only():
                ops.rasterize_points(points, empty, res, backend=provider)

            budget = {"min_repeats": 1, "max_repeats": 3} if provider == "reference" else {}
            H.run_case(results, OP, label, "index", provider, index_only, device, **budget)
            H.run_fwd_and_fwd_bwd(
                results, OP, label, provider, device,
                lambda: ops.rasterize_points(points, feats, res, backend=provider),
                lambda out: torch.autograd.grad(out[0], feats, cot),
                **budget,
            )

def main(argv=None):
    H.main(run, "raster", __doc__, argv)

if __name__ == "__main__":
    main()
