"""The geometry protocol (oneshot.eval.geometry): surface sampling, Chamfer distance and normal consistency on
surfaces whose distance is known, the face-region crop, the synthetic samples' ground truth, and the protocol
end to end on the tiny preset."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

pytest.importorskip("skimage", reason="the geometry protocol exports meshes (the export extra)")
trimesh = pytest.importorskip("trimesh", reason="the geometry protocol exports meshes (the export extra)")
pytest.importorskip("scipy", reason="the geometry protocol's nearest neighbours (scipy.spatial.cKDTree)")

from oneshot.eval.geometry import (GEOMETRY_METRICS, aggregate_geometry, compare_surfaces,  # noqa: E402
                                   face_region_faces, geometry_sources, geometry_table, run_geometry, surface_samples,
                                   true_mesh)
from oneshot.export import MM_PER_WORLD_UNIT  # noqa: E402


@pytest.fixture(autouse=True)
def _one_thread():
    from conftest import num_threads

    with num_threads(1):
        yield


def _sphere(radius, subdivisions=4, centre=(0, 0, 0)):
    s = trimesh.creation.icosphere(subdivisions, radius)
    return np.asarray(s.vertices) + centre, np.asarray(s.faces)


def _plane(n=21, size=0.2, angle=0.0, z=0.0):
    """A square [-size/2, size/2]^2 in the xy plane at height z, rotated by `angle` about the x axis: [V, 3],
    [F, 3]."""
    t = np.linspace(-size / 2, size / 2, n)
    x, y = np.meshgrid(t, t, indexing="ij")
    v = np.stack([x, y, np.full_like(x, z)], -1).reshape(-1, 3)
    c, s = math.cos(angle), math.sin(angle)
    v = v @ np.array([[1, 0, 0], [0, c, -s], [0, s, c]]).T
    idx = np.arange(n * n).reshape(n, n)
    a, b, cc, d = idx[:-1, :-1], idx[:-1, 1:], idx[1:, :-1], idx[1:, 1:]
    f = np.concatenate([np.stack([a, cc, d], -1).reshape(-1, 3), np.stack([a, d, b], -1).reshape(-1, 3)])
    return v, f


def test_surface_samples_are_uniform_by_area_and_on_the_surface():
    v = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0], [3, 0, 0], [3, 3, 0], [0, 3, 0.0]])
    f = np.array([[0, 1, 2], [3, 4, 5]])  # areas 0.5 and 4.5
    pts, nrm, idx = surface_samples(v, f, 20000, seed=1)
    assert pts.shape == (20000, 3) and np.allclose(pts[:, 2], 0) and np.allclose(np.abs(nrm[:, 2]), 1)
    assert (idx == 0).mean() == pytest.approx(0.1, abs=0.01)
    small = pts[idx == 0]
    assert (small[:, 0] >= -1e-12).all() and (small[:, 1] >= -1e-12).all() and (small.sum(1) <= 1 + 1e-12).all()
    big = pts[idx == 1]
    assert (big[:, 0] + big[:, 1] >= 3 - 1e-9).all()  # the far side of the second triangle's hypotenuse
    # masked: only the second triangle, indices still of the whole mesh
    _, _, idx2 = surface_samples(v, f, 100, face_mask=np.array([False, True]))
    assert (idx2 == 1).all()
    assert surface_samples(v, f[:0], 10)[0].shape == (0, 3)


def _spacing_bound_mm(area: float, n: int) -> float:
    """sqrt(E[r^2]) = sqrt(A / (pi n)): the RMS distance from a point of a surface of area A to the nearest of n
    uniform (Poisson) samples of it, in mm: what the reference sampling may add to a distance."""
    return math.sqrt(area / (math.pi * n)) * MM_PER_WORLD_UNIT


@settings(max_examples=4)
@given(radius=st.floats(0.1, 0.3), gap=st.floats(0.002, 0.03))
def test_chamfer_of_concentric_spheres_is_their_gap_in_mm(radius, gap):
    tv, tf = _sphere(radius)
    pv, pf = _sphere(radius + gap)
    samples, density = 2000, 40
    r = compare_surfaces(pv, pf, tv, tf, np.ones(len(tf), bool), samples=samples, density=density, seed=0)
    want = gap * MM_PER_WORLD_UNIT
    # allowed: the reference spacing (on the larger sphere) and the facets' sag below the radius (icosphere level 4:
    # edges of 63.4 / 16 degrees)
    sag = (radius + gap) * (1 - math.cos(math.radians(63.4 / 16 / 2))) * MM_PER_WORLD_UNIT
    tol = _spacing_bound_mm(4 * math.pi * (radius + gap) ** 2, samples * density) + sag
    for m in ("chamfer", "accuracy", "completeness"):
        assert abs(r[m] - want) <= tol, (m, r[m], want, tol)
    assert r["normal_consistency"] > 0.99


def test_identical_surfaces_and_units():
    tv, tf = _sphere(0.2)
    r = compare_surfaces(tv, tf, tv, tf, np.ones(len(tf), bool), samples=2000, density=40)
    assert r["chamfer"] < _spacing_bound_mm(4 * math.pi * 0.2 ** 2, 2000 * 40)  # the reference spacing only
    assert r["normal_consistency"] > 0.999
    pv, pf = _sphere(0.21)
    mm = compare_surfaces(pv, pf, tv, tf, np.ones(len(tf), bool), samples=2000)
    world = compare_surfaces(pv, pf, tv, tf, np.ones(len(tf), bool), samples=2000, scale=1.0)
    assert mm["chamfer"] == pytest.approx(world["chamfer"] * 100 / 0.27)
    with pytest.raises(ValueError, match="samples and density must be ints >= 1"):
        compare_surfaces(pv, pf, tv, tf, np.ones(len(tf), bool), samples=0)


@pytest.mark.parametrize("angle", [0.3, 0.8, 1.2])
def test_normal_consistency_is_the_cosine_between_the_surfaces(angle):
    tv, tf = _plane(angle=0.0)
    pv, pf = _plane(angle=angle)
    r = compare_surfaces(pv, pf, tv, tf, np.ones(len(tf), bool), samples=500, density=10)
    assert r["normal_consistency"] == pytest.approx(abs(math.cos(angle)), abs=1e-9)


def test_only_the_region_counts():
    """A floater behind the head changes nothing when the region is the front; completeness sees a missing front."""
    tv, tf = _sphere(0.2)
    front = tv[tf].mean(1)[:, 2] > 0.05
    fv, ff = _sphere(0.08, 2, centre=(0, 0, -0.4))
    with_floater = (np.concatenate([tv * 1.02, fv]), np.concatenate([tf, ff + len(tv)]))
    base = compare_surfaces(tv * 1.02, tf, tv, tf, front, samples=1500)
    floater = compare_surfaces(*with_floater, tv, tf, front, samples=1500)
    assert floater["accuracy"] == pytest.approx(base["accuracy"], rel=0.05)
    assert floater["completeness"] == pytest.approx(base["completeness"], rel=0.05)
    everywhere = compare_surfaces(*with_floater, tv, tf, np.ones(len(tf), bool), samples=1500)
    assert everywhere["accuracy"] > 3 * base["accuracy"]  # without the crop the floater (~13% of the area) counts
    back_only = tv[tf].mean(1)[:, 2] < 0  # the prediction covers only the back half: the front is missing
    bv = tv * 1.02
    half = compare_surfaces(bv, tf[~front], tv, tf, front, samples=1500)
    assert half["completeness"] > 5 * base["completeness"]
    assert back_only.any()
    with pytest.raises(ValueError, match=r"region must be \[F\]"):
        compare_surfaces(tv, tf, tv, tf, front[:-1])


def test_no_prediction_near_the_region_is_nan():
    tv, tf = _sphere(0.2)
    pv, pf = _sphere(0.05, 2, centre=(0, 0, -0.3))
    r = compare_surfaces(pv, pf, tv, tf, tv[tf].mean(1)[:, 2] > 0.1, samples=2000)
    assert all(math.isnan(r[m]) for m in GEOMETRY_METRICS) and r["points"] == 0


# -- the synthetic ground truth -----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    from conftest import num_threads
    from oneshot.data import FaceDataset, synthesize
    from oneshot.face3d import load_model

    root = tmp_path_factory.mktemp("geometry")
    with num_threads(1):
        synthesize(root / "ds", 4, resolution=128, seed=5, per_identity=2, progress=False)
    return {"root": root, "face": load_model(), "ds": FaceDataset(root / "ds")}


def test_synthetic_samples_carry_their_exact_mesh(synth):
    """Re-rendering the mesh rebuilt from a sample's stored coefficients gives its stored matte exactly."""
    from oneshot.face3d import Coeffs, render
    from oneshot.data import collate_pairs

    face, ds = synth["face"], synth["ds"]
    assert ds.model == face.fingerprint
    for i in range(len(ds)):
        b = collate_pairs(ds, [(i, i)], face)
        v = torch.from_numpy(true_mesh(face, b["source_coeffs"])).float()[None]
        r = render(face, v, b["camera"] if "camera" in b else b["source_camera"], 128)
        matte = (r.mask[0, 0].clamp(0, 1) * 255 + 0.5).to(torch.uint8)
        stored = (ds[i]["matte"][0] * 255 + 0.5).to(torch.uint8)
        assert torch.equal(matte, stored), f"sample {i}: {int((matte != stored).sum())} matte pixels differ"
        c = Coeffs(**{k: torch.tensor(v)[None] for k, v in ds.samples[i]["coeffs"].items()}, model=face.fingerprint)
        assert torch.equal(c.identity, b["source_coeffs"].identity)


def test_face_region_faces_are_the_models_face():
    from oneshot.face3d import load_model

    face = load_model()
    mask = face_region_faces(face)
    region = face.region("face").numpy()
    f = face.faces.numpy()
    assert mask.shape == (len(f),) and 0 < mask.sum() < len(f)
    assert region[f[mask]].all() and not region[f[~mask]].all(1).any()


# -- the protocol end to end ---------------------------------------------------------------------------------------

def test_geometry_protocol_on_the_tiny_preset(synth):
    from oneshot.eval.protocol import deterministic_renders
    from oneshot.export import density_grid, export_avatar
    from oneshot.models import OneShotAvatar
    from oneshot.data import collate_pairs

    face, ds = synth["face"], synth["ds"]
    torch.manual_seed(0)
    model = OneShotAvatar("tiny", face).eval()
    sources = geometry_sources(ds)
    assert sources == [ds.identities[i][0] for i in sorted(ds.identities)]
    assert geometry_sources(ds, limit=1) == sources[:1]
    b = collate_pairs(ds, [(sources[0], sources[0])], face)
    with torch.no_grad():
        avatar = model.reconstruct(b["source_image"], b["source_camera"], b["source_coeffs"], seed=0)
        level = float(np.quantile(density_grid(model.planes(avatar, b["source_coeffs"]), model.decoder, 12), 0.7))
    # random weights: no surface at EG3D's level 10 -> NaN, counted; a level inside their range: a surface, scored;
    # the baseline is scored regardless
    seen, meshes = [], []
    rows = run_geometry(model, ds, resolution=12, level=[10.0, level], samples=500, on_row=seen.append,
                        on_mesh=lambda row, mesh: meshes.append((row["source"], mesh)))
    assert seen == rows and len(rows) == 2 * len(sources) == 4
    assert [r["level"] for r in rows] == [10.0, level] * 2
    for r in rows:
        assert r["source"] in {s["id"] for s in ds.samples} and r["identity"] in ds.identities
        assert 0 < r["baseline_chamfer"] < 50 and 0 < r["baseline_normal_consistency"] <= 1
        if r["level"] == 10.0:
            assert not r["surface"] and r["faces"] == 0 and all(math.isnan(r[m]) for m in GEOMETRY_METRICS)
        else:
            assert r["surface"] and r["faces"] > 0 and all(np.isfinite(r[m]) for m in GEOMETRY_METRICS), r
    # the scored mesh is the export's: the same as export_avatar with the source's expression (renders evenly spaced)
    with torch.no_grad(), deterministic_renders(model):
        even = model.reconstruct(b["source_image"], b["source_camera"], b["source_coeffs"], seed=0)
    first = export_avatar(model, even, coeffs=b["source_coeffs"], resolution=12, level=level)
    assert meshes[0][0] == rows[0]["source"] and np.array_equal(meshes[0][1].vertices, first.vertices)
    summary = aggregate_geometry(rows)
    k = f"{level:g}"
    assert summary["sources"] == 2 and summary["levels"] == ["10", k]
    assert summary["no_surface"] == {"10": 2, k: 0} and summary["avatar"]["10"]["chamfer"]["n"] == 0
    assert summary["avatar"][k]["chamfer"]["mean"] == pytest.approx(np.mean([r["chamfer"] for r in rows[1::2]]))
    assert summary["baseline"]["chamfer"]["n"] == 2
    # a random blob is farther from the truth than the mean face
    assert summary["avatar"][k]["chamfer"]["mean"] > summary["baseline"]["chamfer"]["mean"]
    table = geometry_table(summary)
    assert "mean face (baseline)" in table and "| avatar, level 10 | n/a" in table and "0 of 2" in table
    assert "level 10: no surface for 2 of 2 sources" in table
    json.dumps(summary)


def test_the_mean_face_baseline_is_exact_for_a_mean_face():
    """A sample of zero identity and expression: the baseline is the truth itself."""
    from oneshot.face3d import Coeffs, load_model

    face = load_model()
    c = Coeffs.zeros(face, 1)
    truth = true_mesh(face, c)
    assert np.array_equal(truth, face.mean.double().numpy())
    f = face.faces.numpy()
    samples, density = 4000, 25
    r = compare_surfaces(face.mean.numpy(), f, truth, f, face_region_faces(face), samples=samples, density=density)
    area = trimesh.Trimesh(truth, f, process=False).area
    assert r["chamfer"] < _spacing_bound_mm(area, samples * density) and r["normal_consistency"] > 0.99


def _evaluate(*argv) -> int:
    """``oneshot evaluate --protocol geometry`` through the real parser, its function called directly."""
    from oneshot.cli import build_parser

    a = build_parser().parse_args(["evaluate", "--protocol", "geometry", *(str(x) for x in argv)])
    return a.func(a)


def test_geometry_command_writes_reports_and_resumes(synth, tmp_path):
    from oneshot.export import density_grid, load_mesh
    from oneshot.models import OneShotAvatar
    from oneshot.data import collate_pairs

    face, ds = synth["face"], synth["ds"]
    torch.manual_seed(0)
    model = OneShotAvatar("tiny", face).eval()
    model.save(tmp_path / "tiny.safetensors")
    b = collate_pairs(ds, [(0, 0)], face)
    with torch.no_grad():
        avatar = model.reconstruct(b["source_image"], b["source_camera"], b["source_coeffs"], seed=0)
        level = float(np.quantile(density_grid(model.planes(avatar, b["source_coeffs"]), model.decoder, 12), 0.7))
    args = ["--checkpoint", tmp_path / "tiny.safetensors", "--data", synth["root"] / "ds", "--out", tmp_path / "ev",
            "--resolution", 12, "--level", level, "--samples", 300, "--quiet"]
    assert _evaluate(*args, "--save-meshes") == 0
    ev = tmp_path / "ev"
    summary = json.loads((ev / "metrics.json").read_text())
    k = f"{level:g}"
    assert summary["protocol"] == "geometry" and summary["sources"] == 2 and summary["no_surface"] == {k: 0}
    assert np.isfinite(summary["avatar"][k]["chamfer"]["mean"]) and np.isfinite(summary["baseline"]["chamfer"]["mean"])
    assert "mean face (baseline)" in (ev / "table.md").read_text()
    assert len((ev / "samples.csv").read_text().splitlines()) == 3
    rows = [json.loads(x) for x in (ev / "samples.jsonl").read_text().splitlines()]
    assert load_mesh(ev / "meshes" / f"{rows[0]['source']}.ply").num_faces == rows[0]["faces"]
    with pytest.raises(FileExistsError, match="pass --resume"):
        _evaluate(*args)
    (ev / "samples.jsonl").write_text(json.dumps(rows[0]) + "\n")  # as if killed after the first source
    (ev / "meshes" / f"{rows[1]['source']}.ply").unlink()
    assert _evaluate(*args, "--resume", "--save-meshes") == 0
    again = [json.loads(x) for x in (ev / "samples.jsonl").read_text().splitlines()]
    assert [r["source"] for r in again] == [r["source"] for r in rows]
    assert again[1]["chamfer"] == pytest.approx(rows[1]["chamfer"])  # the same result, computed once more
    # two levels from one grid per source; a source cut off after its first level is scored again on --resume
    args2 = [x if x != ev else tmp_path / "ev2" for x in args] + ["--level", level, 10]
    args2.remove("--level")
    args2.remove(level)
    assert _evaluate(*args2) == 0
    two = [json.loads(x) for x in (tmp_path / "ev2" / "samples.jsonl").read_text().splitlines()]
    assert [r["level"] for r in two] == [level, 10.0] * 2
    (tmp_path / "ev2" / "samples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in two[:3]))
    assert _evaluate(*args2, "--resume") == 0
    again2 = [json.loads(x) for x in (tmp_path / "ev2" / "samples.jsonl").read_text().splitlines()]
    assert [(r["source"], r["level"]) for r in again2] == [(r["source"], r["level"]) for r in two]
    assert "| avatar, level 10 | n/a" in (tmp_path / "ev2" / "table.md").read_text()
    with pytest.raises(ValueError, match=r"other arguments \(level differ\)"):
        _evaluate(*[x if x != level else level + 1 for x in args], "--resume")
    with pytest.raises(ValueError, match="needs one dataset directory"):
        _evaluate(*[x if x != synth["root"] / "ds" else tmp_path for x in args], "--out", tmp_path / "ev3")


@pytest.mark.parametrize("protocol, extra, match", [
    ("geometry", ["--no-sr"], "--no-sr is not for --protocol geometry"),
    ("geometry", ["--max-targets", "2"], "--max-targets is not for --protocol geometry"),
    ("geometry", ["--no-faces"], "--no-faces is not for --protocol geometry"),
    ("self", ["--level", "3"], "--level is not for --protocol self"),
    ("reconstruction", ["--save-meshes"], "--save-meshes is not for --protocol reconstruction"),
])
def test_evaluate_refuses_the_other_protocols_flags(tmp_path, protocol, extra, match):
    from oneshot.cli import build_parser

    ckpt = tmp_path / "a.safetensors"
    ckpt.write_bytes(b"")
    a = build_parser().parse_args(["evaluate", "--protocol", protocol, "--checkpoint", str(ckpt), "--data",
                                   str(tmp_path), "--out", str(tmp_path / "ev"), *extra])
    with pytest.raises(ValueError, match=match):
        a.func(a)
    assert not (tmp_path / "ev").exists()  # refused before anything is written
