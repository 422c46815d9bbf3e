"""Morphable models (oneshot.face3d): the BFM loader on a synthetic file in Deep3DFaceRecon's exact layout, the
ICT-FaceKit loader on the shared asset, the model container, coefficients, and a frontal render whose
landmarks land where the camera model says."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import assert_close
from oneshot import cameras, ops
from oneshot.face3d import BFM_WORLD_SCALE, ICT_WORLD_SCALE, Coeffs, MorphableModel, from_bfm, from_ict_facekit

ICT = Path(__file__).resolve().parents[2] / "shared" / "assets" / "ict_facekit_face_f16.npz"


def write_bfm(path: Path, N: int = 60, seed: int = 0, **override) -> dict:
    """A small BFM_model_front.mat with the real keys, shapes (N vertices), dtypes and 1-based indices."""
    from scipy.io import savemat

    rng = np.random.default_rng(seed)
    # A bumpy disc of vertices facing +z, in decimetres, off-centre (the loader recentres).
    ang, rad = rng.uniform(0, 2 * np.pi, N), np.sqrt(rng.uniform(0, 1, N))
    xyz = np.stack([rad * np.cos(ang), rad * np.sin(ang) * 1.2, 0.3 * (1 - rad ** 2)], 1) + [0.1, 0.2, 9.0]
    tri = np.stack([rng.permutation(N)[:3] for _ in range(2 * N)]).astype(np.float32) + 1
    d = {
        "meanshape": xyz.reshape(1, -1),
        "idBase": rng.normal(0, 0.01, (3 * N, 80)),
        "exBase": rng.normal(0, 0.01, (3 * N, 64)),
        "meantex": rng.uniform(50, 200, (1, 3 * N)),
        "texBase": rng.normal(0, 5, (3 * N, 80)),
        "tri": tri,
        "point_buf": rng.integers(1, 2 * N + 2, (N, 8)).astype(np.float32),
        "keypoints": (rng.permutation(N)[:68 % N] if N < 68 else rng.permutation(N)[:68]).astype(np.float32)[None] + 1,
        "skinmask": (rng.uniform(0, 1, (1, N)) > 0.3).astype(np.float32),
    }
    if N < 68:
        d["keypoints"] = (np.arange(68) % N).astype(np.float32)[None] + 1
    d.update(override)
    savemat(str(path), d)
    return d


def test_bfm_loader_layout_units_and_indices(tmp_path):
    raw = write_bfm(tmp_path / "BFM_model_front.mat")
    m = from_bfm(tmp_path / "BFM_model_front.mat")
    N = 60
    assert (m.num_vertices, m.num_identity, m.num_expression, m.num_albedo) == (N, 80, 64, 80)
    mean = raw["meanshape"].reshape(N, 3)
    assert_close(m.mean.double(), torch.from_numpy((mean - mean.mean(0)) * BFM_WORLD_SCALE), rtol=1e-6, atol=1e-7)
    # Basis column j, rows 3k..3k+2 are the xyz offsets of vertex k.
    assert_close(m.id_basis[7, 5].double(), torch.from_numpy(raw["idBase"][15:18, 7] * BFM_WORLD_SCALE), rtol=1e-6)
    assert_close(m.exp_basis[63, N - 1].double(), torch.from_numpy(raw["exBase"][3 * N - 3:, 63] * BFM_WORLD_SCALE),
                 rtol=1e-6)
    assert torch.equal(m.faces, torch.from_numpy(raw["tri"].astype(np.int64) - 1))
    assert torch.equal(m.landmarks, torch.from_numpy(raw["keypoints"].reshape(-1).astype(np.int64) - 1))
    assert_close(m.albedo_mean.double(), torch.from_numpy(raw["meantex"].reshape(N, 3) / 255), rtol=1e-6)
    assert torch.equal(m.region("face"), torch.from_numpy(raw["skinmask"].reshape(-1) > 0.5))
    assert m.fingerprint.startswith("bfm:")


def test_bfm_loader_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"BFM model: no such file"):
        from_bfm(tmp_path / "nope.mat")
    (tmp_path / "junk.mat").write_bytes(b"not a mat file")
    with pytest.raises(ValueError, match=r"not a readable MATLAB \.mat file"):
        from_bfm(tmp_path / "junk.mat")
    from scipy.io import savemat

    savemat(str(tmp_path / "partial.mat"), {"meanshape": np.zeros((1, 9))})
    with pytest.raises(ValueError, match=r"missing idBase, exBase, tri, keypoints"):
        from_bfm(tmp_path / "partial.mat")
    write_bfm(tmp_path / "zero_based.mat", tri=np.zeros((4, 3), dtype=np.float32))
    with pytest.raises(ValueError, match=r"tri must hold 1-based indices in 1 \.\. 60"):
        from_bfm(tmp_path / "zero_based.mat")
    write_bfm(tmp_path / "short.mat", idBase=np.zeros((10, 80)))
    with pytest.raises(ValueError, match=r"idBase must be \(3N, K\) = \(180, K\), got \(10, 80\)"):
        from_bfm(tmp_path / "short.mat")


def test_coefficients_belong_to_their_model(tmp_path):
    write_bfm(tmp_path / "a.mat", seed=0)
    write_bfm(tmp_path / "b.mat", seed=1)
    a, b = from_bfm(tmp_path / "a.mat"), from_bfm(tmp_path / "b.mat")
    c = Coeffs.zeros(a, 2)
    assert c.check(a) is c
    with pytest.raises(ValueError, match=r"coefficients of model bfm:\w+ cannot drive model bfm:\w+"):
        c.check(b)
    vec = torch.randn(3, 257)
    c = Coeffs.from_bfm257(vec, a)
    assert torch.equal(c.to_bfm257(), vec)
    assert torch.equal(c.rotation, vec[:, 224:227]) and torch.equal(c.lighting, vec[:, 227:254])
    with pytest.raises(ValueError, match=r"must be \[B, 257\], got \[3, 256\]"):
        Coeffs.from_bfm257(vec[:, :256], a)
    with pytest.raises(ValueError, match=r"Coeffs.lighting must be \[B, 27\]"):
        Coeffs(vec[:, :80], vec[:, :64], vec[:, :80], vec[:, :26], vec[:, :3], vec[:, :3], a.fingerprint)


def test_vertices_are_linear_in_the_coefficients(tmp_path):
    write_bfm(tmp_path / "m.mat")
    m = from_bfm(tmp_path / "m.mat")
    ident, expr = torch.randn(2, 80), torch.randn(2, 64)
    v = m.vertices(ident, expr)
    want = m.mean + torch.einsum("bk,kvc->bvc", ident, m.id_basis) + torch.einsum("bk,kvc->bvc", expr, m.exp_basis)
    assert_close(v, want, rtol=1e-5, atol=1e-6)
    assert_close(m.vertices(ident[:, :10]), m.mean + torch.einsum("bk,kvc->bvc", ident[:, :10], m.id_basis[:10]),
                 rtol=1e-5, atol=1e-6)  # a prefix of the modes
    assert torch.equal(m.vertices()[0], m.mean)
    with pytest.raises(ValueError, match=r"expression must be \[B, k\] with B = 2 and k <= 64, got \[2, 65\]"):
        m.vertices(ident, torch.zeros(2, 65))
    alb = m.albedo(torch.zeros(1, 80))
    assert alb.shape == (1, 60, 3) and float(alb.min()) >= 0 and float(alb.max()) <= 1


def test_model_validation():
    mean = torch.zeros(5, 3)
    with pytest.raises(ValueError, match=r"landmarks must be 68 vertex indices in 0 \.\. 4"):
        MorphableModel("x", mean, torch.zeros(1, 5, 3), torch.zeros(1, 5, 3), torch.tensor([[0, 1, 2]]),
                       torch.zeros(67, dtype=torch.long))
    with pytest.raises(ValueError, match=r"faces must index vertices 0 \.\. 4, got 0 \.\. 5"):
        MorphableModel("x", mean, torch.zeros(1, 5, 3), torch.zeros(1, 5, 3), torch.tensor([[0, 1, 5]]),
                       torch.zeros(68, dtype=torch.long))


@pytest.mark.skipif(not ICT.exists(), reason=f"needs {ICT} (../shared/assets beside the project)")
def test_ict_facekit_loader_and_frontal_render():
    m = from_ict_facekit(ICT)
    assert (m.num_vertices, m.num_identity, m.num_expression, m.faces.shape[0]) == (9409, 100, 57, 18461)
    assert m.exp_names[0] == "PupilDilate_L" and "jawOpen" in m.exp_names
    # placed in the crops' canonical frame: its five points on the canonical ones (centroid and scale fitted; the
    # rest is ICT-FaceKit's own proportions, wider-set eyes and a lower mouth than the canonical face)
    from oneshot.face3d.align import CANONICAL_FIVE, five_points

    five = five_points((m.mean[m.landmarks].double() / BFM_WORLD_SCALE)[None])[0]
    torch.testing.assert_close(five.mean(0), CANONICAL_FIVE.mean(0), atol=1e-5, rtol=0)
    assert float((five - CANONICAL_FIVE).norm(dim=1).max()) < 0.1
    assert 0.8 < m.world_scale / ICT_WORLD_SCALE < 1.0
    assert float(m.mean.abs().max()) < 0.5  # inside the tri-plane box
    # Render from the frontal camera: every landmark projects onto the rendered face, left-right mirrored
    # pairs straddle the centre column, and eye/mouth landmarks fall in the eye/mouth regions' pixels.
    c2w, K = cameras.look_at(0.0, 0.0), cameras.intrinsics()
    uv, z = cameras.project(m.mean[None], c2w, K, 256)
    face, bary, depth = ops.rasterize_mesh(torch.cat([uv, z[..., None]], -1), m.faces, 256)
    lm = uv[0, m.landmarks]
    px = lm.floor().long()
    assert bool(((px >= 0) & (px < 256)).all())
    # (Eye landmarks 36-47 may fall in the eye openings, inner-lip ones 60-67 between the lips: the face model
    # has no eyeballs and an open mouth line. They must lie next to the eye / mouth region instead.)
    solid = torch.tensor([k for k in range(68) if not (36 <= k < 48 or k >= 60)])
    assert bool((face[0, px[solid, 1], px[solid, 0]] >= 0).all()), "a landmark off the rendered mesh"
    for group, region in ((range(36, 48), "eyes"), (range(60, 68), "mouth")):
        region_uv = uv[0, m.region(region)]
        dist = torch.cdist(lm[list(group)], region_uv).amin(dim=1)
        assert float(dist.max()) < 3.0, (region, dist)
    assert abs(float(lm[30, 0]) - 128) < 6  # the nose tip on the centre column
    assert float(lm[36, 0]) < 128 < float(lm[45, 0])  # outer eye corners on either side
    assert float(lm[19, 1]) < float(lm[37, 1]) < float(lm[51, 1]) < float(lm[8, 1])  # brow, eye, lip, chin
    mouth_px = face[0, px[48:60, 1], px[48:60, 0]]
    in_mouth = m.region("mouth")[m.faces[mouth_px]].any(-1)
    assert float(in_mouth.float().mean()) > 0.9
    # An expression moves the mesh: jaw open lowers the chin landmark.
    jaw = torch.zeros(1, m.num_expression)
    jaw[0, m.exp_names.index("jawOpen")] = 1.0
    chin_open = cameras.project(m.vertices(expression=jaw)[:, m.landmarks[8:9]], c2w, K, 256)[0][0, 0, 1]
    assert float(chin_open) > float(lm[8, 1]) + 3


# ------------------------------------------------------------------------------------------------------------
# The built-in model


def _frontal_landmarks(m, verts, res=256):
    c2w, K = cameras.look_at(0.0, 0.0), cameras.intrinsics()
    return cameras.project(verts[:, m.landmarks], c2w, K, res)[0][0]


def test_builtin_model_layout():
    from oneshot.face3d import EXPRESSIONS, builtin_model, load_model

    m = load_model()
    assert m.name == "builtin" and m.fingerprint == builtin_model().fingerprint  # deterministic
    assert 3000 <= m.num_vertices <= 10000
    assert (m.num_identity, m.num_expression, m.num_albedo) == (12, 8, 4)
    assert tuple(m.exp_names) == EXPRESSIONS
    assert float(m.mean.abs().max()) < 0.5  # inside the tri-plane box
    assert float(m.mean[m.region("face")].mean(0).abs().max()) < 0.03  # face centroid near the origin
    alb = m.albedo(torch.randn(3, 4) * 0.5)
    assert alb.shape == (3, m.num_vertices, 3) and float(alb.min()) >= 0 and float(alb.max()) <= 1
    for region in ("eyes", "mouth", "brows"):
        assert int(m.region(region).sum()) >= 20, region
    # Every triangle faces outwards (closed head, consistent winding): positive signed volume.
    v = m.mean.double()
    f = m.faces
    vol = (v[f[:, 0]] * torch.cross(v[f[:, 1]], v[f[:, 2]], dim=-1)).sum() / 6
    assert float(vol) > 0


def test_builtin_model_frontal_render_landmarks_and_regions():
    from oneshot.face3d import builtin_model

    m = builtin_model()
    c2w, K = cameras.look_at(0.0, 0.0), cameras.intrinsics()
    uv, z = cameras.project(m.mean[None], c2w, K, 256)
    face, _, _ = ops.rasterize_mesh(torch.cat([uv, z[..., None]], -1), m.faces, 256)
    lm = uv[0, m.landmarks]
    px = lm.floor().long()
    assert bool((face[0, px[:, 1], px[:, 0]] >= 0).all())  # no holes: every landmark on the mesh
    # The landmark vertex is the visible surface there (not hidden behind another part of the head).
    visible_face = face[0, px[:, 1], px[:, 0]]
    assert bool((m.faces[visible_face] == m.landmarks[:, None]).any(-1).float().mean() > 0.9)
    assert abs(float(lm[30, 0]) - 128) < 3
    assert float(lm[36, 0]) < 128 < float(lm[45, 0])
    assert float(lm[19, 1]) < float(lm[37, 1]) < float(lm[30, 1]) < float(lm[51, 1]) < float(lm[8, 1])
    for group, region in ((range(36, 48), "eyes"), (range(48, 68), "mouth"), (range(17, 27), "brows")):
        hit = m.region(region)[m.faces[face[0, px[list(group), 1], px[list(group), 0]]]].any(-1)
        assert float(hit.float().mean()) >= 0.8, region


@pytest.mark.parametrize("name, landmarks, axis, sign", [
    ("jawOpen", [8, 57], 1, +1),  # chin and lower lip move down the image
    ("eyeBlink_R", [37, 38], 1, +1),  # the subject's right upper lid (image left) closes
    ("eyeBlink_L", [43, 44], 1, +1),
    ("browUp_R", [19], 1, -1),
    ("browUp_L", [24], 1, -1),
    ("mouthSmile_R", [48], 1, -1),  # mouth corner up
    ("mouthSmile_L", [54], 1, -1),
])
def test_builtin_expressions_move_their_landmarks(name, landmarks, axis, sign):
    from oneshot.face3d import builtin_model

    m = builtin_model()
    e = torch.zeros(1, m.num_expression)
    e[0, m.exp_names.index(name)] = 1.0
    before = _frontal_landmarks(m, m.mean[None])
    after = _frontal_landmarks(m, m.vertices(expression=e))
    moved = (after - before)[landmarks, axis] * sign
    assert float(moved.min()) > 1.0, (name, moved)  # pixels at 256^2
    # Localised: the far side of the face does not move.
    untouched = {"eyeBlink_R": [44], "eyeBlink_L": [37], "browUp_R": [24], "browUp_L": [19]}.get(name, [])
    for k in untouched:
        assert float((after - before)[k].abs().max()) < 0.2


def test_load_model_by_suffix(tmp_path):
    from oneshot.face3d import load_model

    write_bfm(tmp_path / "m.mat")
    assert load_model(tmp_path / "m.mat").name == "bfm"
    with pytest.raises(ValueError, match=r"must be a BFM \.mat or an ICT-FaceKit \.npz"):
        load_model(tmp_path / "m.obj")


def test_write_png_round_trip(tmp_path):
    import zlib

    from oneshot.imageio import write_png

    img = np.random.default_rng(0).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    write_png(tmp_path / "a.png", img)
    data = (tmp_path / "a.png").read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    idat = data[data.index(b"IDAT") + 4:data.index(b"IEND") - 8]
    raw = np.frombuffer(zlib.decompress(idat), dtype=np.uint8).reshape(5, 1 + 7 * 3)
    assert (raw[:, 0] == 0).all() and np.array_equal(raw[:, 1:].reshape(5, 7, 3), img)
    with pytest.raises(ValueError, match=r"image must be \[H, W\], \[H, W, 3\] or \[H, W, 4\]"):
        write_png(tmp_path / "b.png", np.zeros((2, 2, 2), dtype=np.uint8))
