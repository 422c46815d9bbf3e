"""Render the built-in morphable model: neutral with its 68 landmarks, each expression mode at weight 1, and a
side view; writes docs/images/builtin_model.png. Flat-shaded with oneshot.ops.rasterize_mesh (the shaded
renderer of the face model issue will replace the shading here).

    python scripts/render_builtin_model.py [--out docs/images/builtin_model.png] [--res 192]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from oneshot import cameras, ops
from oneshot.face3d import builtin_model
from oneshot.imageio import write_png


def render(model, verts, colors, yaw, res):
    c2w, K = cameras.look_at(yaw, 0.0), cameras.intrinsics()
    uv, z = cameras.project(verts, c2w, K, res)
    face, bary, _ = ops.rasterize_mesh(torch.cat([uv, z[..., None]], -1), model.faces, res)
    f = face[0]
    hit = f >= 0
    tri = model.faces[f.clamp(min=0)]
    v0, v1, v2 = (verts[0][model.faces[:, k]] for k in range(3))
    normals = torch.nn.functional.normalize(torch.cross(v1 - v0, v2 - v0, dim=-1), dim=-1)
    light = torch.nn.functional.normalize(torch.tensor([0.3, 0.4, 1.0]), dim=0)
    shade = (normals @ light).abs()[f.clamp(min=0)] * 0.7 + 0.3
    img = (bary[0][..., None] * colors[tri]).sum(-2) * shade[..., None]
    img[~hit] = 1.0
    return img.clamp(0, 1).numpy(), uv[0]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=str(Path(__file__).resolve().parents[1] / "docs/images/builtin_model.png"))
    p.add_argument("--res", type=int, default=192)
    a = p.parse_args(argv)
    m = builtin_model()
    colors = m.albedo()[0]
    panels = []
    for name in [None, *m.exp_names]:
        e = torch.zeros(1, m.num_expression)
        if name is not None:
            e[0, m.exp_names.index(name)] = 1.0
        img, uv = render(m, m.vertices(expression=e), colors, 0.0, a.res)
        if name is None:
            for x, y in uv[m.landmarks].round().long().tolist():
                img[max(0, y - 1):y + 2, max(0, x - 1):x + 2] = [0.1, 0.75, 0.1]
        panels.append(img)
    panels.append(render(m, m.mean[None], colors, 0.5, a.res)[0])
    ident = torch.zeros(1, m.num_identity)
    ident[0, :] = torch.tensor([1.5, -1, 1, 1.5, 1, 1.5, 1, -1, 1, 1, 1, 1.5])
    panels.append(render(m, m.vertices(ident), colors, 0.0, a.res)[0])
    per_row = (len(panels) + 1) // 2
    panels += [np.ones_like(panels[0])] * (2 * per_row - len(panels))
    rows = [np.concatenate(panels[:per_row], 1), np.concatenate(panels[per_row:], 1)]
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    write_png(a.out, np.concatenate(rows, 0))
    print(f"wrote {a.out}: neutral + landmarks, {', '.join(m.exp_names)}, side view, another identity")


if __name__ == "__main__":
    main()
