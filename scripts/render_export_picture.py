"""The picture of docs/export.md: for held-out sources of the demo (``oneshot demo``), the source, the avatar's
render at the source view, and its exported mesh (marching cubes of the density) shaded grey and in its vertex
colours, from the source view and from the side; and the true morphable-model mesh beside it. Rendered with
oneshot's own rasterizer (oneshot.export.render_mesh).

    python scripts/render_export_picture.py --demo DEMO_DIR [--out docs/images/export.png] [--sources 2]
        [--resolution 128] [--level 10] [--size 160]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from oneshot import cameras
from oneshot.data import FaceDataset
from oneshot.eval.geometry import true_mesh
from oneshot.eval.protocol import deterministic_renders
from oneshot.export import DEFAULT_LEVEL, AvatarMesh, export_avatar, render_mesh
from oneshot.face3d import load_model
from oneshot.imageio import write_png
from oneshot.models import OneShotAvatar
from oneshot.data import collate_pairs


def _to8(x: torch.Tensor, size: int) -> np.ndarray:
    """[1, 3, h, w] in [-1, 1] -> uint8 [size, size, 3]."""
    x = F.interpolate(x.float(), size=(size, size), mode="bilinear", align_corners=False, antialias=x.shape[-1] > size)
    return ((x[0].clamp(-1, 1) + 1) * 127.5 + 0.5).byte().permute(1, 2, 0).numpy()


def _side(yaw: float) -> torch.Tensor:
    """A camera on the synthetic views' orbit (radius 2.7 about the origin) at `yaw` radians."""
    return cameras.camera_label(cameras.look_at(yaw, 0.0, pivot=(0.0, 0.0, 0.0)), cameras.intrinsics())


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--demo", required=True, help="the demo's output folder (run/avatar.safetensors, data/test)")
    p.add_argument("--out", default="docs/images/export.png")
    p.add_argument("--sources", type=int, default=2, help="held-out identities shown (rows)")
    p.add_argument("--resolution", type=int, default=128, help="export grid points per axis")
    p.add_argument("--level", type=float, default=DEFAULT_LEVEL)
    p.add_argument("--size", type=int, default=160, help="side of each panel in pixels")
    a = p.parse_args(argv)
    demo = Path(a.demo)
    face = load_model()
    model = OneShotAvatar.load(demo / "run" / "avatar.safetensors", face).eval()
    ds = FaceDataset(demo / "data" / "test")
    rows = []
    with torch.no_grad(), deterministic_renders(model):
        for ident in sorted(ds.identities)[:a.sources]:
            s = ds.identities[ident][0]
            b = collate_pairs(ds, [(s, s)], face)
            avatar = model.reconstruct(b["source_image"], b["source_camera"], b["source_coeffs"], seed=0)
            render = model.animate(avatar, b["source_coeffs"], b["source_camera"], super_resolve=False, seed=0)
            mesh = export_avatar(model, avatar, coeffs=b["source_coeffs"], resolution=a.resolution, level=a.level)
            truth = AvatarMesh(true_mesh(face, b["source_coeffs"]).astype(np.float32), face.faces.numpy())
            side = _side(0.9)
            cam = b["source_camera"]
            rows.append([_to8(b["source_image"], a.size), _to8(render.features[:, :3], a.size),
                         render_mesh(mesh, cam, a.size), render_mesh(mesh, cam, a.size, colors=True),
                         render_mesh(mesh, side, a.size), render_mesh(truth, side, a.size)])
            print(f"{ident}: {mesh.num_vertices} vertices, {mesh.num_faces} faces")
    gap = 4
    h = a.size
    grid = np.full((len(rows) * (h + gap) - gap, len(rows[0]) * (h + gap) - gap, 3), 255, np.uint8)
    for i, row in enumerate(rows):
        for j, panel in enumerate(row):
            grid[i * (h + gap):i * (h + gap) + h, j * (h + gap):j * (h + gap) + h] = panel
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    write_png(a.out, grid)
    print(f"wrote {a.out}: columns source | render (source view) | mesh shaded | mesh in its vertex colours | mesh "
          f"from the side | the true mesh from the side")


if __name__ == "__main__":
    main()
