"""oneshot.export on tri-planes: the density grid, the iso-surface, colours, pieces and files, on analytic tri-planes
whose surface is known (a sphere's density). Avatars, sequences and the command: tests/test_export_avatar.py."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import example, given
from hypothesis import strategies as st

pytest.importorskip("skimage", reason="mesh export needs the export extra (scikit-image, trimesh)")
trimesh = pytest.importorskip("trimesh", reason="mesh export needs the export extra (scikit-image, trimesh)")

from conftest import assert_close  # noqa: E402
from oneshot.export import (AvatarMesh, GridTooLargeError, NoSurfaceError, density_grid, extract_mesh,  # noqa: E402
                            extract_meshes,
                            grid_points, load_mesh, read_metadata, remove_small_pieces, sample_colors,
                            save_mesh)
from oneshot.models import TriplaneDecoder  # noqa: E402
from oneshot.ops import triplane_sample  # noqa: E402


def sphere_planes(centre=(0.0, 0.0, 0.0), size: int = 64, channels: int = 4) -> torch.Tensor:
    """Tri-planes [1, 3, C, P, P] whose mean over the planes is |x - centre|^2 / 3 in channel 0 (xy plane:
    (x - cx)^2 + (y - cy)^2, xz plane: (z - cz)^2, zy plane: 0) and 1 in channel 1 (less in the outer half
    pixel of the box, where the zero padding blends in); the other channels 0."""
    w = ((torch.arange(size, dtype=torch.float64) * 2 + 1) / size - 1) / 2  # pixel centres in world units
    cx, cy, cz = centre
    planes = torch.zeros(1, 3, channels, size, size, dtype=torch.float64)
    planes[0, 0, 0] = (w[None, :] - cx) ** 2 + (w[:, None] - cy) ** 2  # width = x, height = y
    planes[0, 1, 0] = ((w[:, None] - cz) ** 2).expand(size, size)  # width = x, height = z
    planes[0, :, 1] = 1.0
    return planes.float()


def sphere_decoder(radius: float, level: float, rgb=(0.2, 0.6, 0.9), channels: int = 4, s: float = 30.0,
                   k: float = 30.0) -> TriplaneDecoder:
    """EG3D's decoder set by hand for :func:`sphere_planes`: σ = c - k softplus(s r^2 / 3) (decreasing in r, =
    `level` at `radius`) inside the box, and far below the level in its outer half pixel (hidden unit 1:
    softplus(200 (0.95 - channel 1)), 0 where channel 1 is 1); colour features constant `rgb`."""
    d = TriplaneDecoder(channels, 3, 3)  # hidden unit 2 = softplus(channel 2), for colours that vary
    l1, l2 = d.net[0], d.net[2]
    with torch.no_grad():
        for t in (l1.weight, l1.bias, l2.weight, l2.bias):
            t.zero_()
        l1.weight[0, 0] = s / l1.weight_gain
        l1.weight[1, 1] = -200.0 / l1.weight_gain
        l1.bias[1] = 190.0 / l1.bias_gain
        l1.weight[2, 2] = 1.0 / l1.weight_gain
        l2.weight[0, 0] = -k / l2.weight_gain
        l2.weight[0, 1] = -k / l2.weight_gain
        l2.bias[0] = (level + k * math.log1p(math.exp(s * radius ** 2 / 3))) / l2.bias_gain
        for i, c in enumerate(rgb):
            p = (c + 0.001) / 1.002
            l2.bias[1 + i] = math.log(p / (1 - p)) / l2.bias_gain
    return d


@pytest.fixture(autouse=True)
def _one_thread():
    from conftest import num_threads

    with num_threads(1):
        yield


# -- the iso-surface ------------------------------------------------------------------------------------------

@given(resolution=st.integers(9, 48), radius=st.floats(0.12, 0.3), level=st.floats(-5, 20),
       cx=st.floats(-0.1, 0.1), cz=st.floats(-0.1, 0.1))
@example(resolution=9, radius=0.12, level=10.0, cx=0.0, cz=0.0)
@example(resolution=48, radius=0.3, level=10.0, cx=0.1, cz=-0.1)
def test_sphere_density_exports_a_sphere_of_the_right_radius(resolution, radius, level, cx, cz):
    centre = np.array([cx, 0.05, cz])
    mesh = extract_mesh(sphere_planes(tuple(centre)), sphere_decoder(radius, level), resolution=resolution,
                        level=level, colors=False)
    voxel = 1.0 / (resolution - 1)
    r = np.linalg.norm(mesh.vertices.astype(np.float64) - centre, axis=1)
    assert np.abs(r - radius).max() < voxel, \
        f"radius {radius}: vertices at {r.min():.4f} .. {r.max():.4f}, voxel {voxel:.4f}"
    tm = trimesh.Trimesh(mesh.vertices, mesh.faces, process=False)
    assert tm.is_watertight and tm.is_winding_consistent
    # outward normals: every triangle faces away from the centre, and the enclosed volume is positive
    tri = mesh.vertices[mesh.faces].astype(np.float64)
    n = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    assert ((n * (tri.mean(1) - centre)).sum(1) > 0).all()
    assert tm.volume == pytest.approx(4 / 3 * math.pi * radius ** 3, rel=3 * voxel / radius)


def test_several_levels_from_one_grid():
    """Level L' of the sphere field is the sphere where softplus(s r^2 / 3) = (c - L') / k; a level above the
    field's maximum has no surface."""
    level, radius, s, k = 10.0, 0.2, 30.0, 30.0
    dec = sphere_decoder(radius, level, s=s, k=k)
    c = level + k * math.log1p(math.exp(s * radius ** 2 / 3))
    other = 5.0
    r_other = math.sqrt(3 / s * math.log(math.expm1((c - other) / k)))
    meshes = extract_meshes(sphere_planes(), dec, [level, other, 1e4], resolution=33, colors=False)
    assert meshes[2] is None
    for mesh, r in zip(meshes[:2], (radius, r_other)):
        d = np.linalg.norm(mesh.vertices, axis=1)
        assert np.abs(d - r).max() < 1 / 32, (r, d.min(), d.max())
    single = extract_mesh(sphere_planes(), dec, resolution=33, level=other, colors=False)
    assert np.array_equal(single.vertices, meshes[1].vertices) and np.array_equal(single.faces, meshes[1].faces)
    with pytest.raises(NoSurfaceError):
        extract_meshes(sphere_planes(), dec, [1e4], resolution=9, missing="raise")


def test_a_surface_cut_by_the_box_is_closed_on_its_faces():
    dec = sphere_decoder(0.6, 10.0)  # a sphere larger than the box: its faces' centres are inside
    with torch.no_grad():
        dec.net[2].weight[0, 1] = 0  # no emptying of the box's outer half pixel
    mesh = extract_mesh(sphere_planes(), dec, resolution=17, level=10.0, colors=False)
    tm = trimesh.Trimesh(mesh.vertices, mesh.faces, process=False)
    assert tm.is_watertight and tm.volume > 0
    outer = np.abs(mesh.vertices).max(1)
    # the caps lie on the box's faces (to float32's rounding of marching cubes' interpolation: 1e-4 voxels)
    assert outer.max() <= 0.5 + 1e-4 / 16
    assert (np.abs(outer - 0.5) < 1e-4 / 16).sum() > 0.1 * len(outer)


def test_constant_colour_field_comes_back():
    rgb = (0.13, 0.57, 0.91)
    mesh = extract_mesh(sphere_planes(), sphere_decoder(0.25, 10.0, rgb=rgb), resolution=24)
    assert mesh.colors.dtype == np.uint8 and mesh.colors.shape == (mesh.num_vertices, 3)
    want = (np.array(rgb) * 255 + 0.5).astype(np.uint8)
    assert (mesh.colors == want).all(), np.unique(mesh.colors, axis=0)


def test_colours_are_the_decoders_at_the_vertices():
    g = torch.Generator().manual_seed(0)
    noise = torch.randn(1, 3, 4, 64, 64, generator=g) * torch.tensor([0, 0, 1, 1.0]).reshape(1, 1, 4, 1, 1)
    planes = sphere_planes() + noise  # channels 2, 3: noise the colour reads (channel 2) or nothing does
    dec = sphere_decoder(0.25, 10.0)
    with torch.no_grad():
        dec.net[2].weight[1:, 2] = torch.randn(3, generator=g) * 40  # colour now varies with channel 2
    mesh = extract_mesh(planes, dec, resolution=20, min_piece=0.0)
    pts = torch.from_numpy(mesh.vertices)
    with torch.no_grad():
        want = dec(triplane_sample(planes, pts[None]))[1][0, :, :3].clamp(0, 1)
    got = torch.from_numpy(mesh.colors.astype(np.float32)) / 255
    assert_close(got, want, atol=0.5 / 255 + 1e-6, name="vertex colours")
    assert len(np.unique(mesh.colors, axis=0)) > 10  # not a constant


# -- the grid ----------------------------------------------------------------------------------------------------

class _Generic(torch.nn.Module):
    """A decoder that is not a TriplaneDecoder: density_grid calls it whole (the generic path)."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, x):
        return self.inner(x)


@pytest.mark.parametrize("method", ["lattice", "pointwise"])
@pytest.mark.parametrize("axes", ["goha", "eg3d"])
@pytest.mark.parametrize("resolution", [2, 5, 16])
def test_density_grid_layout_chunks_and_paths(resolution, axes, method):
    from oneshot.ops import PLANE_AXES_EG3D, PLANE_AXES_GOHA

    axes = PLANE_AXES_GOHA if axes == "goha" else PLANE_AXES_EG3D
    g = torch.Generator().manual_seed(1)
    planes = torch.randn(1, 3, 6, 9, 11, generator=g)
    dec = TriplaneDecoder(6, 8, 4)
    grid = density_grid(planes, dec, resolution, axes=axes, method=method)
    c = grid_points(resolution).float()
    pts = torch.stack(torch.meshgrid(c, c, c, indexing="ij"), -1).reshape(1, -1, 3)
    with torch.no_grad():  # the oracle: the composed ops at every grid point
        want = dec(triplane_sample(planes, pts, axes=axes, backend="reference"))[0].reshape((resolution,) * 3)
    tol = dict(rtol=1e-5, atol=1e-5)
    assert_close(torch.from_numpy(grid), want, **tol, name="grid[i, j, k] = σ(x_i, y_j, z_k)")
    # any chunking (the same values up to the matmul's rounding for another number of rows)
    assert_close(torch.from_numpy(density_grid(planes, dec, resolution, axes=axes, method=method, chunk=7)), want,
                 **tol, name="chunk=7")
    generic = density_grid(planes, _Generic(dec), resolution, axes=axes, method=method)  # the decoder called whole
    assert_close(torch.from_numpy(generic), want, **tol, name="generic decoder")
    half = density_grid(planes.half(), dec, resolution, axes=axes, method=method)  # 16-bit planes, sampled in fp32
    with torch.no_grad():
        want_half = dec(triplane_sample(planes.half().float(), pts, axes=axes))[0].reshape((resolution,) * 3)
    # the op returns float16 samples (one rounding per sample: per plane on the lattice path, of the mean on the
    # pointwise one): float16's precision, eps = 9.8e-4
    assert_close(torch.from_numpy(half), want_half, rtol=1e-3, atol=1e-3, name="float16 planes")
    padded = density_grid(planes, dec, resolution, axes=axes, method=method, pad=-7.0)
    assert padded.shape == (resolution + 2,) * 3
    assert np.array_equal(padded[1:-1, 1:-1, 1:-1], grid)
    inner = np.zeros_like(padded, dtype=bool)
    inner[1:-1, 1:-1, 1:-1] = True
    assert (padded[~inner] == -7.0).all()


def test_density_grid_backends_agree():
    g = torch.Generator().manual_seed(3)
    planes = torch.randn(1, 3, 5, 8, 8, generator=g)
    dec = TriplaneDecoder(5, 8, 4)
    native = density_grid(planes, dec, 9)
    reference = density_grid(planes, dec, 9, backend="reference")
    assert_close(torch.from_numpy(native), torch.from_numpy(reference), rtol=1e-5, atol=1e-5, name="backends")
    with pytest.raises(ValueError, match="method must be one of"):
        density_grid(planes, dec, 9, method="fast")
    with pytest.raises(ValueError, match="axes must be three pairs"):
        density_grid(planes, dec, 9, axes=((0, 1), (1, 1), (2, 0)))


def test_sample_colors_matches_the_decoder():
    g = torch.Generator().manual_seed(2)
    planes = torch.randn(1, 3, 5, 7, 7, generator=g)
    dec = TriplaneDecoder(5, 8, 5)
    pts = torch.rand(13, 3, generator=g) - 0.5
    with torch.no_grad():
        want = dec(triplane_sample(planes, pts[None]))[1][0, :, :3].clamp(0, 1)
    assert_close(sample_colors(planes, dec, pts, chunk=4), want, rtol=1e-6, atol=1e-6, name="colours")
    assert sample_colors(planes, dec, pts[:0]).shape == (0, 3)


# -- bad input ---------------------------------------------------------------------------------------------------

def test_no_surface_at_the_level_is_a_named_error():
    planes, dec = sphere_planes(), sphere_decoder(0.25, 10.0)
    grid = density_grid(planes, dec, 12)
    for level in (float(grid.max()) + 1, float(grid.min()) - 1):
        with pytest.raises(NoSurfaceError, match=r"no surface at level .* ranges from"):
            extract_mesh(planes, dec, resolution=12, level=level)
    with pytest.raises(ValueError, match="level must be a finite number"):
        extract_mesh(planes, dec, resolution=12, level=float("nan"))


def test_too_large_a_resolution_is_refused_before_allocating(monkeypatch):
    planes, dec = sphere_planes(), sphere_decoder(0.25, 10.0)
    # 10^6 points per axis: 4 EB of grid; numpy would fail with its own MemoryError if it were ever asked
    with pytest.raises(GridTooLargeError, match=r"resolution 1000000: an export needs about .* use resolution <= \d+"):
        extract_mesh(planes, dec, resolution=1_000_000)
    calls = []
    monkeypatch.setattr(np, "full", lambda *a, **k: calls.append(a))
    with pytest.raises(GridTooLargeError, match=r"more than max_bytes .* use resolution <= \d+"):
        density_grid(planes, dec, 64, max_bytes=2**20)
    assert not calls  # nothing allocated
    monkeypatch.undo()
    density_grid(planes, dec, 8, max_bytes=2**30)  # and a resolution that fits is fine


@pytest.mark.parametrize("bad, match", [
    (dict(resolution=1), "resolution must be an int >= 2"),
    (dict(resolution=True), "resolution must be an int >= 2"),
    (dict(resolution=16.0), "resolution must be an int >= 2"),
    (dict(chunk=0), "chunk must be an int >= 1"),
    (dict(min_piece=1.5), r"min_piece must be in \[0, 1\]"),
])
def test_bad_arguments_are_named(bad, match):
    kw = {"resolution": 8, "level": 10.0, **bad}
    with pytest.raises(ValueError, match=match):
        extract_mesh(sphere_planes(), sphere_decoder(0.25, 10.0), **kw)


def test_bad_planes_and_points_are_named():
    dec = sphere_decoder(0.25, 10.0)
    with pytest.raises(ValueError, match=r"planes must be one avatar's tri-planes \[1, 3, C, H, W\], got \[2, 3, 4, 8"):
        density_grid(torch.zeros(2, 3, 4, 8, 8), dec, 4)
    with pytest.raises(TypeError, match="planes must be floating point"):
        density_grid(torch.zeros(1, 3, 4, 8, 8, dtype=torch.int32), dec, 4)
    with pytest.raises(ValueError, match=r"points must be \[N, 3\], got \[5, 2\]"):
        sample_colors(sphere_planes(), dec, torch.zeros(5, 2))


# -- pieces, transforms, files -----------------------------------------------------------------------------------

def _two_spheres():
    big = trimesh.creation.icosphere(3, 0.3)
    small = trimesh.creation.icosphere(0, 0.05)  # 20 faces: 1.6% of the big one's 1280
    small.apply_translation([0.4, 0, 0])
    both = trimesh.util.concatenate([big, small])
    return np.asarray(both.vertices, np.float32), np.asarray(both.faces, np.int64), len(big.vertices), len(big.faces)


def test_small_pieces_are_removed():
    v, f, nv, nf = _two_spheres()
    v2, f2, kept = remove_small_pieces(v, f, 0.05)
    assert len(v2) == nv and len(f2) == nf and kept[:nv].all() and not kept[nv:].any()
    assert np.array_equal(v2, v[:nv]) and np.array_equal(f2, f[:nf])
    v3, f3, _ = remove_small_pieces(v, f, 0.0)
    assert len(v3) == len(v) and len(f3) == len(f)


def test_transformed_keeps_normals_outward():
    v, f, nv, nf = _two_spheres()
    mesh = AvatarMesh(v[:nv], f[:nf])
    mirror = np.diag([-1.0, 1, 1, 1])
    for m in (np.eye(4), mirror):
        t = mesh.transformed(m)
        assert trimesh.Trimesh(t.vertices, t.faces, process=False).volume > 0
    shifted = mesh.transformed(torch.tensor([[1.0, 0, 0, 0.5], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]]))
    assert np.allclose(shifted.vertices - mesh.vertices, [0.5, 0, 0], atol=1e-6)
    with pytest.raises(ValueError, match=r"matrix must be \[4, 4\]"):
        mesh.transformed(np.eye(3))


@pytest.mark.parametrize("fmt", [".glb", ".ply", ".obj"])
def test_files_load_back_with_trimesh_with_colours_and_the_frame(tmp_path, fmt):
    mesh = extract_mesh(sphere_planes(), sphere_decoder(0.25, 10.0, rgb=(0.9, 0.4, 0.1)), resolution=20)
    path = save_mesh(mesh, tmp_path / "sub" / f"head{fmt}", {"source": "portrait.png"})
    assert path.is_file() and not list(path.parent.glob(".*.tmp"))
    tm = trimesh.load(path, force="mesh", process=False)
    assert len(tm.vertices) == mesh.num_vertices and len(tm.faces) == mesh.num_faces
    assert np.allclose(np.asarray(tm.vertices), mesh.vertices, atol=1e-5)
    assert np.array_equal(np.asarray(tm.visual.vertex_colors)[:, :3], mesh.colors)
    assert tm.volume > 0
    meta = read_metadata(path)
    assert meta["axes"].startswith("x right") and meta["up"] == "+y" and meta["front"] == "+z"
    assert meta["mm_per_unit"] == pytest.approx(100 / 0.27)
    assert meta["level"] == 10.0 and meta["resolution"] == 20 and meta["source"] == "portrait.png"
    back = load_mesh(path)
    assert np.array_equal(back.faces, mesh.faces) and back.metadata["units"].startswith("oneshot world units")


def test_unsupported_format_and_missing_file_are_named(tmp_path):
    mesh = AvatarMesh(np.zeros((3, 3), np.float32), np.array([[0, 1, 2]]))
    with pytest.raises(ValueError, match=r"unsupported mesh format '.stl'; use one of .glb, .ply, .obj"):
        save_mesh(mesh, tmp_path / "head.stl")
    with pytest.raises(FileNotFoundError, match="mesh: no such file"):
        read_metadata(tmp_path / "none.glb")
    with pytest.raises(TypeError, match="mesh must be an oneshot.export.AvatarMesh"):
        save_mesh(trimesh.creation.box(), tmp_path / "box.glb")
    with pytest.raises(TypeError, match="not JSON serializable"):
        save_mesh(mesh, tmp_path / "head.glb", {"bad": object()})
