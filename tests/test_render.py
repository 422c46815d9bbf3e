"""The shaded mesh renderer (oneshot.face3d.render): SH lighting as Deep3DFaceRecon computes it, perspective-
correct interpolation, masks and regions."""

from __future__ import annotations

import math

import pytest
import torch

from conftest import assert_close
from oneshot import cameras
from oneshot.face3d import builtin_model
from oneshot.face3d.renderer import INIT_LIGHT, render, sh_basis, shade, vertex_normals


def test_ambient_light_scales_the_albedo():
    albedo = torch.rand(2, 5, 3)
    n = torch.nn.functional.normalize(torch.randn(2, 5, 3), dim=-1)
    out = shade(albedo, n, torch.zeros(2, 27))
    assert_close(out, albedo * (INIT_LIGHT * math.pi / math.sqrt(4 * math.pi)), rtol=1e-6)
    with pytest.raises(ValueError, match=r"gamma must be \[B, 27\]"):
        shade(albedo, n, torch.zeros(2, 9))


def test_sh_basis_values():
    # Deep3DFaceRecon's basis at n = +z: [a0 c0, 0, a1 c1, 0, 0, 0, a2 c2 / sqrt(3), 0, 0].
    a1c1 = 2 * math.pi / math.sqrt(3) * math.sqrt(3) / math.sqrt(4 * math.pi)
    a2c2 = 2 * math.pi / math.sqrt(8) * 3 * math.sqrt(5) / math.sqrt(12 * math.pi)
    y = sh_basis(torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64))
    want = torch.tensor([math.pi / math.sqrt(4 * math.pi), 0, a1c1, 0, 0, 0, a2c2 / math.sqrt(3), 0, 0],
                        dtype=torch.float64)
    assert_close(y, want, atol=1e-12)


def test_builtin_normals_point_outwards():
    m = builtin_model()
    n = vertex_normals(m.mean[None], m.faces)[0]
    outward = torch.nn.functional.normalize(m.mean - m.mean.mean(0), dim=-1)
    assert float(((n * outward).sum(-1) > 0).float().mean()) > 0.99


def test_light_from_the_right_brightens_the_right_half():
    m = builtin_model()
    gamma = torch.zeros(1, 27)
    gamma[0, [3, 12, 21]] = -0.3  # the -x basis function with a negative weight: light towards +x
    r = render(m, m.mean[None], cameras.frontal_label(), 128, gamma=gamma)
    img, mask = r.image[0].mean(0), r.mask[0, 0] > 0
    left, right = img[:, :64][mask[:, :64]].mean(), img[:, 64:][mask[:, 64:]].mean()
    assert float(right) > float(left) + 0.1


def test_flat_triangle_renders_one_colour_and_masks_match():
    # A single flat triangle facing the camera, uniform albedo: every covered pixel has the same colour.
    from oneshot.face3d import MorphableModel

    V = torch.tensor([[-0.2, -0.2, 0.1], [0.2, -0.2, -0.1], [0.0, 0.25, 0.0]])
    lm = torch.zeros(68, dtype=torch.long)
    tri = MorphableModel("tri", V, torch.zeros(1, 3, 3), torch.zeros(1, 3, 3), torch.tensor([[0, 1, 2]]), lm,
                         albedo_mean=torch.full((3, 3), 0.5))
    r = render(tri, V[None], cameras.frontal_label(), 64)
    covered = r.mask[0, 0] > 0
    assert int(covered.sum()) > 100
    pix = r.image[0][:, covered]
    assert float((pix - pix[:, :1]).abs().max()) < 1e-5
    assert torch.equal(covered, r.face_index[0] >= 0)
    assert bool(torch.isinf(r.depth[0, 0][~covered]).all())


def test_regions_and_batched_cameras():
    m = builtin_model()
    cams = torch.cat([cameras.frontal_label(), cameras.camera_label(cameras.look_at(0.3, 0.1), cameras.intrinsics())])
    r = render(m, m.mean[None].expand(2, -1, -1), cams, 160)
    assert r.image.shape == (2, 3, 160, 160) and r.mask.shape == (2, 1, 160, 160)
    assert not torch.equal(r.mask[0], r.mask[1])  # two views
    uv = cameras.project(m.mean[None, m.landmarks], *cameras.split_label(cameras.frontal_label()), 160)[0][0]
    for group, name in ((range(36, 48), "eyes"), (range(48, 60), "mouth")):
        reg = r.regions[name][0, 0]
        ys, xs = torch.nonzero(reg > 0, as_tuple=True)
        assert len(ys) > 5, name
        centre = torch.stack([xs.float().mean() + 0.5, ys.float().mean() + 0.5])
        for side in ([k for k in group if uv[k, 0] < 80], [k for k in group if uv[k, 0] >= 80]):
            if name == "eyes" and side:  # each eye's landmarks lie on that eye's region
                pts = uv[side].floor().long()
                assert float(reg[pts[:, 1], pts[:, 0]].mean()) >= 0.5, name
        if name == "mouth":
            assert float((centre - uv[list(group)].mean(0)).norm()) < 6


def test_frontal_and_neutral_renders():
    from oneshot.face3d import Coeffs, frontal_render, neutral_render

    m = builtin_model()
    src, tgt = Coeffs.zeros(m, 1), Coeffs.zeros(m, 1)
    src.identity[0, 0] = 2.0  # a wider head
    tgt.expression[0, m.exp_names.index("jawOpen")] = 1.0
    front = frontal_render(m, src, tgt, 128)
    same = frontal_render(m, src, Coeffs.zeros(m, 1), 128)
    assert front.image.shape == (1, 3, 128, 128)
    assert not torch.equal(front.mask, same.mask)  # the target's expression changes the render
    wider = frontal_render(m, Coeffs.zeros(m, 1), Coeffs.zeros(m, 1), 128)
    assert int(same.mask.sum()) > int(wider.mask.sum())  # the source's identity too
    cam = cameras.camera_label(cameras.look_at(0.2, 0.0), cameras.intrinsics())
    neutral = neutral_render(m, src, cam, 128)
    assert torch.equal(neutral.mask, render(m, m.vertices(src.identity), cam, 128).mask)
    other = Coeffs(src.identity, src.expression, src.albedo, src.lighting, src.rotation, src.translation, "x:1")
    with pytest.raises(ValueError, match=r"coefficients of model x:1 cannot drive model builtin:"):
        frontal_render(m, other, tgt)
    with pytest.raises(ValueError, match=r"vertices must be \[B, V, 3\] with V = 7778 \(the model's\), got \[1, 5, 3\]"):
        render(m, torch.zeros(1, 5, 3), cam, 32)
