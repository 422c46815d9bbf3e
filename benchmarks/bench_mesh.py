"""rasterize_mesh: native (C++) vs reference (vectorised PyTorch, the same pinned arithmetic) on a mesh of
Basel-Face-Model size (35,709 vertices, 70,789 triangles in BFM_model_front) at 224 x 224, the 3DMM render
size of the paper, and at 512 x 512.

The mesh is a closed-form stand-in with the same counts: a 189 x 189 grid (35,721 vertices, 70,688 triangles)
bent into a face-like dome and projected to cover the centre of the image as a face crop does.

    python benchmarks/bench_mesh.py [--quick | --sizes quick|large|all] [--out DIR]
"""

from __future__ import annotations

import torch

import _harness as H
from oneshot import cameras, ops
from oneshot.face3d import MorphableModel, render

OP = "rasterize_mesh"


def face_sized_mesh(res: int, n: int = 189, seed: int = 0):
    """[1, n*n, 3] vertices in pixel coordinates (a dome over the central 70% of the image) and [F, 3] faces."""
    g = torch.Generator().manual_seed(seed)
    t = torch.linspace(-1, 1, n)
    v, u = torch.meshgrid(t, t, indexing="ij")
    u = u + (torch.rand(n, n, generator=g) - 0.5) * (1.0 / n)  # a little irregularity
    v = v + (torch.rand(n, n, generator=g) - 0.5) * (1.0 / n)
    depth = 10.0 - 1.5 * torch.clamp(1 - 0.6 * u * u - 0.4 * v * v, min=0)
    x = (0.5 + 0.35 * u * 10.0 / depth) * res
    y = (0.5 + 0.42 * v * 10.0 / depth) * res
    verts = torch.stack([x, y, depth], -1).reshape(1, -1, 3)
    idx = torch.arange(n * n).reshape(n, n)
    a, b, c, d = idx[:-1, :-1], idx[:-1, 1:], idx[1:, :-1], idx[1:, 1:]
    faces = torch.cat([torch.stack([a, b, d], -1).reshape(-1, 3), torch.stack([a, d, c], -1).reshape(-1, 3)])
    return verts, faces


def cases(quick: bool):
    yield "BFM-sized mesh (35.7K verts, 70.7K tris) -> 224^2", 224
    if not quick:
        yield "BFM-sized mesh (35.7K verts, 70.7K tris) -> 512^2", 512


def run(device: torch.device, sizes, results: list) -> None:
    if device.type != "cpu":
        return  # a CPU kernel (the CUDA one comes later)
    for label, res in H.pick(cases, sizes):
        verts, faces = face_sized_mesh(res)
        for provider in ("reference", "native"):
            budget = {"min_repeats": 1, "max_repeats": 3} if provider == "reference" else {}
            H.run_case(results, OP, label, "fwd", provider,
                       lambda: ops.rasterize_mesh(verts, faces, res, backend=provider), device, **budget)
        # The full render on top (normals, SH lighting, perspective-correct interpolation, masks), in the world
        # frame of a model made of the same mesh, seen by the frontal camera.
        model, world = _as_model(verts, faces, res)
        cam = cameras.frontal_label()
        H.run_case(results, "face3d.render", label.replace("->", "full render ->"), "fwd", "native",
                   lambda: render(model, world, cam, res), device)


def _as_model(verts, faces, res):
    """The benchmark mesh as a MorphableModel in world units (unprojected through the frontal camera)."""
    c2w, K = cameras.split_label(cameras.frontal_label())
    z = verts[0, :, 2:] / 10.0 * 2.5  # depths around the frontal camera's 2.5 to the face
    xy = (verts[0, :, :2] / res - 0.5) / K[0, 0, 0] * z
    cam_pts = torch.cat([xy, z], -1)
    world = cam_pts @ c2w[0, :3, :3].T + c2w[0, :3, 3]
    lm = torch.zeros(68, dtype=torch.long)
    model = MorphableModel("bench", world, torch.zeros(1, *world.shape), torch.zeros(1, *world.shape), faces, lm)
    return model, world[None]


def main(argv=None):
    H.main(run, "mesh", __doc__, argv)


if __name__ == "__main__":
    main()
