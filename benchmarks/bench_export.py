"""Mesh export (oneshot.export) of a paper-preset avatar (random weights: the cost does not depend on them), side by
side:

* the density grid over the tri-plane box (planes 3 x 32 x 256^2, EG3D's decoder 32 -> 64 -> 33) at 128^3 and
  256^3 points, four ways: ``reference`` (the pure-PyTorch triplane_sample at every point and the whole decoder),
  ``composed`` (the native triplane_sample at every point and the whole decoder: σ and the 32 features),
  ``density-only`` (the native triplane_sample at every point and only σ's row of the second layer) and
  ``lattice`` (what the export runs: each plane sampled once at its R^2 lattice points, the first layer applied
  per plane, σ's row only);
* the chunk size of the lattice grid at 128^3 (time and peak memory);
* the whole export of a reconstructed avatar (``export_avatar``: planes with a neutral expression, the grid,
  marching cubes, pieces, vertex colours) at 128^3 and 256^3, then writing it as .glb.

    python benchmarks/bench_export.py [--quick | --sizes quick|large|all] [--device cpu|cuda]

Needs the export extra (scikit-image, trimesh).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch

import _harness as H
from oneshot.export import density_grid, export_avatar, save_mesh
from oneshot.face3d import Coeffs, load_model
from oneshot.models import OneShotAvatar

OP = "export"


class _WholeDecoder(torch.nn.Module):
    """The decoder called whole (σ and every feature): density_grid's path for decoders other than EG3D's."""

    def __init__(self, decoder):
        super().__init__()
        self.decoder = decoder

    def forward(self, x):
        return self.decoder(x)


def _avatar(device):
    """A paper-preset avatar (seeded random weights) reconstructed from a synthetic portrait."""
    from oneshot import cameras
    from oneshot.face3d import render

    face = load_model()
    torch.manual_seed(0)
    model = OneShotAvatar("paper", face).to(device).eval()
    coeffs = Coeffs.zeros(face, 1)
    cam = cameras.camera_label(cameras.look_at(0.0, 0.0, pivot=(0.0, 0.0, 0.0)), cameras.intrinsics())
    image = render(face, face.vertices(), cam, model.config.image_size).image * 2 - 1
    with torch.no_grad():
        avatar = model.reconstruct(image.to(device), cam.to(device), coeffs.to(device), seed=0)
    return model, avatar


def cases(quick: bool):
    """Grid resolutions: 128^3 (quick) and 256^3."""
    return (128,) if quick else (128, 256)


def run(device: torch.device, sizes, results: list) -> None:
    model, avatar = _avatar(device)
    with torch.no_grad():
        planes = model.planes(avatar, avatar.source_coeffs)
        grid = density_grid(planes, model.decoder, 64)
    level = float(torch.quantile(torch.from_numpy(grid).flatten(), 0.7))  # random weights: a level they reach
    sizes = H.pick(cases, sizes)
    once = dict(min_repeats=1, max_repeats=1)
    for R in sizes:
        case = f"paper planes 3x32x256^2, grid {R}^3"
        for provider, decoder, backend, method in (
                ("reference", _WholeDecoder(model.decoder), "reference", "pointwise"),
                ("composed", _WholeDecoder(model.decoder), None, "pointwise"),
                ("density-only", model.decoder, None, "pointwise"),
                ("lattice", model.decoder, None, "lattice")):
            H.run_case(results, OP + ": density grid", case, "fwd", provider,
                       lambda: density_grid(planes, decoder, R, backend=backend, method=method), device, **once)
    for chunk in (1 << 14, 1 << 16, 1 << 18, 1 << 20) if 128 in sizes else ():
        H.run_case(results, OP + ": density grid chunk", f"grid 128^3, chunk 2^{chunk.bit_length() - 1}", "fwd",
                   "lattice", lambda: density_grid(planes, model.decoder, 128, chunk=chunk), device, **once)
    out = Path(tempfile.mkdtemp())
    for R in sizes:
        case = f"paper avatar -> mesh, grid {R}^3 (level {level:.3g})"
        meshes = []
        H.run_case(results, OP + ": export_avatar", case, "fwd", "lattice",
                   lambda: meshes.append(export_avatar(model, avatar, resolution=R, level=level)), device, **once)
        m = meshes[-1]
        H.run_case(results, OP + ": save .glb", f"{m.num_vertices} vertices, {m.num_faces} faces", "write",
                   "trimesh", lambda: save_mesh(m, out / f"head{R}.glb"), device, **once)


def main(argv=None):
    H.main(run, "export", __doc__, argv, baselines=("reference", "composed"), memory=True)


if __name__ == "__main__":
    main()
