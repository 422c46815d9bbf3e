"""rasterize_mesh: coverage rule (shared edges and vertices belong to exactly one triangle), depth test, ties,
barycentrics, native against reference (exactly: the arithmetic is pinned), errors, opcheck."""

from __future__ import annotations

import pytest
import torch
from hypothesis import example, given
from hypothesis import strategies as st

from conftest import assert_close, require_native
from oneshot import ops
from oneshot.ops import reference

BACKENDS = ["reference", "native"]


def run(vertices, faces, res, backend):
    if backend == "native":
        require_native("rasterize_mesh", "cpu")
    return ops.rasterize_mesh(vertices, faces, res, backend=backend)


def grid_mesh(n: int, size: float, jitter: float, seed: int, flip_every: int = 0):
    """An n x n grid of quads over [0, size]^2, two triangles each (both windings if flip_every)."""
    g = torch.Generator().manual_seed(seed)
    t = torch.linspace(0, size, n + 1, dtype=torch.float64)
    yy, xx = torch.meshgrid(t, t, indexing="ij")
    xy = torch.stack([xx, yy], -1).reshape(-1, 2)
    inner = ((xy > 0) & (xy < size)).all(-1)
    xy[inner] += (torch.rand(int(inner.sum()), 2, generator=g, dtype=torch.float64) - 0.5) * jitter
    z = 2 + torch.rand(xy.shape[0], 1, generator=g, dtype=torch.float64)
    verts = torch.cat([xy, z], -1)
    faces = []
    for i in range(n):
        for j in range(n):
            a, b, c, d = i * (n + 1) + j, i * (n + 1) + j + 1, (i + 1) * (n + 1) + j, (i + 1) * (n + 1) + j + 1
            faces += [[a, b, d], [a, d, c]]
    faces = torch.tensor(faces)
    if flip_every:
        faces[::flip_every] = faces[::flip_every].flip(1)
    return verts[None], faces


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("flip", [0, 3])
def test_watertight_grid_every_centre_exactly_once(backend, flip):
    # Vertices on pixel-centre lattices make many centres fall exactly on shared edges and vertices.
    verts, faces = grid_mesh(6, 12.0, 0.0, 0, flip)
    verts[..., :2] += 0.5  # lattice points on pixel centres
    index, bary, depth = run(verts, faces, (14, 14), backend)
    # The hull is [0.5, 12.5]^2: centres of rows/columns 0 .. 12. Its top and left edges are owned (top-left
    # rule), its bottom and right edges not: rows and columns 0 .. 11 are covered, 12 and 13 are not.
    assert bool((index[0][:12, :12] >= 0).all()), "a hole inside the mesh"
    assert bool((index[0][12:, :] == -1).all()) and bool((index[0][:, 12:] == -1).all())
    # Exactly once: rasterizing each triangle alone, the coverage counts sum to one per covered centre.
    counts = torch.zeros(14, 14, dtype=torch.long)
    for f in range(faces.shape[0]):
        counts += (run(verts, faces[f:f + 1], (14, 14), backend)[0][0] >= 0).long()
    assert bool((counts[index[0] >= 0] == 1).all()) and bool((counts[index[0] < 0] == 0).all())


@pytest.mark.parametrize("backend", BACKENDS)
def test_fan_around_a_pixel_centre(backend):
    # Eight triangles around the centre of pixel (4, 4): it belongs to exactly one of them.
    import math

    c = (4.5, 4.5)
    ring = [(c[0] + 3 * math.cos(k * math.pi / 4), c[1] + 3 * math.sin(k * math.pi / 4)) for k in range(8)]
    verts = torch.tensor([[*c, 1.0]] + [[x, y, 1.0] for x, y in ring], dtype=torch.float64)[None]
    faces = torch.tensor([[0, 1 + k, 1 + (k + 1) % 8] for k in range(8)])
    counts = sum((run(verts, faces[f:f + 1], 9, backend)[0][0, 4, 4] >= 0).long() for f in range(8))
    assert int(counts) == 1
    assert int(run(verts, faces, 9, backend)[0][0, 4, 4]) >= 0


@pytest.mark.parametrize("backend", BACKENDS)
def test_depth_test_and_ties(backend):
    # Two overlapping triangles: the nearer wins whatever the order; equal depth goes to the lower index.
    tri = [[0.0, 0.0], [8.0, 0.0], [0.0, 8.0]]
    near = torch.tensor([[x, y, 1.0] for x, y in tri], dtype=torch.float64)
    far = torch.tensor([[x, y, 2.0] for x, y in tri], dtype=torch.float64)
    faces = torch.tensor([[0, 1, 2], [3, 4, 5]])
    for verts, winner in ((torch.cat([far, near]), 1), (torch.cat([near, far]), 0), (torch.cat([near, near]), 0)):
        index, _, depth = run(verts[None], faces, 8, backend)
        assert int(index[0, 1, 1]) == winner
        assert float(depth[0, 1, 1]) == 1.0


@pytest.mark.parametrize("backend", BACKENDS)
def test_barycentrics_and_perspective_depth(backend):
    verts = torch.tensor([[[0.3, 0.2, 1.0], [9.7, 1.1, 2.0], [2.2, 8.9, 4.0]]], dtype=torch.float64)
    faces = torch.tensor([[0, 2, 1]])  # either winding
    index, bary, depth = run(verts, faces, 10, backend)
    hit = index[0] >= 0
    assert int(hit.sum()) > 20
    assert_close(bary[0][hit].sum(-1), torch.ones(int(hit.sum()), dtype=torch.float64), atol=1e-12)
    tri = verts[0][faces[0]]
    i, j = torch.nonzero(hit, as_tuple=True)
    p = bary[0][hit] @ tri[:, :2]  # barycentrics in the face's vertex order reproduce the pixel centre
    assert_close(p, torch.stack([j + 0.5, i + 0.5], -1).double(), atol=1e-9)
    want = 1 / (bary[0][hit] / tri[:, 2]).sum(-1)
    assert_close(depth[0][hit], want, rtol=1e-12)
    assert bool(torch.isinf(depth[0][~hit]).all()) and bool((bary[0][~hit] == 0).all())


@pytest.mark.parametrize("backend", BACKENDS)
def test_skipped_triangles(backend):
    verts = torch.tensor([[[1, 1, 1.0], [6, 1, 1.0], [1, 6, 1.0],  # fine
                           [1, 1, -1.0], [6, 1, 1.0], [1, 6, 1.0],  # behind the camera
                           [1, 1, 1.0], [3, 3, 1.0], [5, 5, 1.0],  # degenerate
                           [1, 1, float("nan")], [6, 1, 1.0], [1, 6, 1.0]]])  # non-finite
    faces = torch.arange(12).reshape(4, 3)
    index, _, _ = run(verts, faces, 8, backend)
    assert set(index.unique().tolist()) == {-1, 0}


def _random_case(B, V, F, H, W, lattice, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    if lattice:  # coordinates on a half-pixel lattice: centres on edges and vertices, coplanar ties
        xy = torch.randint(-2, 2 * max(H, W) + 3, (B, V, 2), generator=g).to(dtype) / 2
        z = torch.randint(1, 4, (B, V, 1), generator=g).to(dtype)
    else:
        xy = torch.rand(B, V, 2, generator=g, dtype=dtype) * (max(H, W) + 4) - 2
        z = torch.rand(B, V, 1, generator=g, dtype=dtype) * 3 + 0.5
    faces = torch.randint(0, V, (F, 3), generator=g)
    return torch.cat([xy, z], -1), faces


@given(B=st.integers(1, 2), V=st.integers(3, 30), F=st.integers(0, 40), H=st.integers(1, 13), W=st.integers(1, 13),
       lattice=st.booleans(), dtype=st.sampled_from([torch.float32, torch.float64]), seed=st.integers(0, 10**6),
       int32=st.booleans())
@example(B=1, V=30, F=40, H=13, W=13, lattice=True, dtype=torch.float32, seed=1, int32=False)
def test_native_matches_reference_exactly(B, V, F, H, W, lattice, dtype, seed, int32):
    require_native("rasterize_mesh", "cpu")
    verts, faces = _random_case(B, V, F, H, W, lattice, dtype, seed)
    if int32:
        faces = faces.int()
    ref = ops.rasterize_mesh(verts, faces, (H, W), backend="reference")
    nat = ops.rasterize_mesh(verts, faces, (H, W), backend="native")
    for name, a, b in zip(("face_index", "bary", "depth"), nat, ref):
        assert a.dtype == b.dtype and torch.equal(a, b), name


def test_native_is_independent_of_the_thread_count():
    require_native("rasterize_mesh", "cpu")
    verts, faces = grid_mesh(20, 60.0, 1.5, 3, 4)
    before = torch.get_num_threads()
    try:
        outs = []
        for n in (1, 2):
            torch.set_num_threads(n)
            outs.append(ops.rasterize_mesh(verts, faces, 64, backend="native"))
    finally:
        torch.set_num_threads(before)
    for a, b in zip(*outs):
        assert torch.equal(a, b)


@pytest.mark.parametrize("backend", BACKENDS)
def test_empty_inputs(backend):
    index, bary, depth = run(torch.rand(2, 4, 3) + 1, torch.zeros(0, 3, dtype=torch.long), (3, 5), backend)
    assert index.shape == (2, 3, 5) and bool((index == -1).all())
    assert bary.shape == (2, 3, 5, 3) and bool(torch.isinf(depth).all())
    index, _, _ = run(torch.rand(0, 4, 3), torch.tensor([[0, 1, 2]]), 4, backend)
    assert index.shape == (0, 4, 4)


@pytest.mark.parametrize(
    "call, exc, pattern",
    [
        (lambda: ops.rasterize_mesh(torch.rand(1, 4, 2), torch.tensor([[0, 1, 2]]), 4), ValueError,
         r"vertices must be \[B, V, 3\], got \[1, 4, 2\]"),
        (lambda: ops.rasterize_mesh(torch.rand(1, 4, 3), torch.tensor([[0, 1, 4]]), 4), ValueError,
         r"faces must index vertices 0 \.\. 3, got indices 0 \.\. 4"),
        (lambda: ops.rasterize_mesh(torch.rand(1, 4, 3), torch.tensor([[0.0, 1.0, 2.0]]), 4), TypeError,
         r"faces must be int32 or int64, got torch\.float32"),
        (lambda: ops.rasterize_mesh(torch.rand(1, 4, 3), torch.tensor([0, 1, 2]), 4), ValueError,
         r"faces must be \[F, 3\], got \[3\]"),
        (lambda: ops.rasterize_mesh(torch.rand(1, 4, 3), torch.tensor([[0, 1, 2]]), 0), ValueError,
         r"resolution must be"),
        (lambda: ops.rasterize_mesh(torch.rand(1, 4, 3), torch.tensor([[0, 1, 2]]), 4, backend="triton"),
         RuntimeError, r"backend='triton' is unavailable for rasterize_mesh"),
    ],
    ids=["rank", "index-range", "faces-dtype", "faces-shape", "resolution", "triton"],
)
def test_bad_input(call, exc, pattern):
    with pytest.raises(exc, match=pattern):
        call()


def test_native_entry_point_checks():
    require_native("rasterize_mesh", "cpu")
    with pytest.raises(ValueError, match=r"faces must index vertices 0 \.\. 2, got 3 in face 0"):
        torch.ops.oneshot.rasterize_mesh(torch.rand(1, 3, 3), torch.tensor([[0, 1, 3]]), 4, 4)


def test_opcheck():
    require_native("rasterize_mesh", "cpu")
    verts, faces = _random_case(1, 10, 12, 6, 7, True, torch.float64, 0)
    torch.library.opcheck(torch.ops.oneshot.rasterize_mesh.default, (verts, faces, 6, 7))


def test_reference_chunking_gives_the_same_answer(monkeypatch):
    verts, faces = grid_mesh(8, 30.0, 2.0, 5, 2)
    full = ops.rasterize_mesh(verts, faces, 32, backend="reference")
    monkeypatch.setattr(reference, "MESH_CHUNK_PAIRS", 17)
    chunked = ops.rasterize_mesh(verts, faces, 32, backend="reference")
    for a, b in zip(full, chunked):
        assert torch.equal(a, b)
