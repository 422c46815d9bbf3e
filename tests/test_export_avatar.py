"""oneshot.export on avatars: the tri-planes with an expression, the head pose, numbered resumable sequences, the
``oneshot export`` command (the real parser, its function called directly), and the mesh preview."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

pytest.importorskip("skimage", reason="mesh export needs the export extra (scikit-image, trimesh)")
trimesh = pytest.importorskip("trimesh", reason="mesh export needs the export extra (scikit-image, trimesh)")

from conftest import assert_close  # noqa: E402
from oneshot.export import AvatarMesh, NoSurfaceError, density_grid, load_mesh, read_metadata  # noqa: E402


@pytest.fixture(autouse=True)
def _one_thread():
    from conftest import num_threads

    with num_threads(1):
        yield


# -- avatars: expression, pose, sequences ------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A random-weight tiny avatar, two synthetic samples at 128 and the avatar of the first; `level`: the median
    of its density (random weights never reach EG3D's 10)."""
    from conftest import num_threads
    from oneshot.data import FaceDataset, synthesize
    from oneshot.face3d import load_model
    from oneshot.models import OneShotAvatar
    from oneshot.data import collate_pairs

    root = tmp_path_factory.mktemp("export")
    face = load_model()
    with num_threads(1):
        torch.manual_seed(0)
        model = OneShotAvatar("tiny", face).eval()
        synthesize(root / "ds", 2, resolution=128, seed=3, per_identity=2, progress=False)
        ds = FaceDataset(root / "ds")
        b = collate_pairs(ds, [(0, 1)], face)
        with torch.no_grad():
            avatar = model.reconstruct(b["source_image"], b["source_camera"], b["source_coeffs"], seed=0)
            grid = density_grid(model.planes(avatar, b["source_coeffs"]), model.decoder, 16)
    return {"root": root, "model": model, "ds": ds, "batch": b, "avatar": avatar,
            "level": float(np.median(grid))}


def test_planes_are_what_animate_renders(tiny):
    from oneshot.models.avatar import _seeded

    model, b, avatar = tiny["model"], tiny["batch"], tiny["avatar"]
    with torch.no_grad():
        planes = model.planes(avatar, b["target_coeffs"], seed=0)
        want = model.render(planes, b["target_camera"], model.config.render_resolution,
                            generator=_seeded(0, "full", planes.device))
        got = model.animate(avatar, b["target_coeffs"], b["target_camera"], super_resolve=False, seed=0)
    assert_close(got.features, want.features, name="features")
    with pytest.raises(TypeError, match="target_coeffs must be oneshot.face3d.Coeffs, got str"):
        model.planes(avatar, "not coefficients")


def test_head_pose_is_the_morphable_models_rigid_motion():
    from oneshot.face3d import euler_rotation, pose_to_camera
    from oneshot.export import head_pose

    g = torch.Generator().manual_seed(0)
    rot = (torch.rand(3, 3, generator=g, dtype=torch.float64) - 0.5) * 0.8
    t = (torch.rand(3, 3, generator=g, dtype=torch.float64) - 0.5) * 0.4
    P = head_pose(pose_to_camera(rot, t))
    assert_close(P[:, :3, :3], euler_rotation(rot), atol=1e-12, name="rotation")
    assert_close(P[:, :3, 3], 0.27 * t, atol=1e-12, name="translation (world units)")
    zero = torch.zeros(1, 3, dtype=torch.float64)
    assert_close(head_pose(pose_to_camera(zero, zero))[0], torch.eye(4, dtype=torch.float64), atol=1e-12,
                 name="the zero pose")


def test_export_avatar_neutral_driven_and_posed(tiny):
    from oneshot.export import export_avatar, head_pose, neutral_expression

    model, b, avatar, level = tiny["model"], tiny["batch"], tiny["avatar"], tiny["level"]
    kw = dict(resolution=16, level=level)
    neutral = export_avatar(model, avatar, **kw)
    assert neutral.metadata["expression"] == "neutral" and neutral.metadata["pose"].startswith("canonical")
    assert neutral.num_faces > 0 and neutral.colors.shape == (neutral.num_vertices, 3)
    same = export_avatar(model, avatar, coeffs=neutral_expression(b["target_coeffs"]), **kw)
    assert np.array_equal(same.vertices, neutral.vertices)  # the identity comes from the source: only expression counts
    driven = export_avatar(model, avatar, coeffs=b["target_coeffs"], **kw)
    assert driven.metadata["expression"] == pytest.approx(b["target_coeffs"].expression[0].tolist())
    assert driven.num_vertices != neutral.num_vertices or not np.allclose(driven.vertices, neutral.vertices)
    posed = export_avatar(model, avatar, coeffs=b["target_coeffs"], camera=b["target_camera"], **kw)
    P = head_pose(b["target_camera"])[0].numpy()
    assert np.allclose(posed.vertices, driven.vertices @ P[:3, :3].T + P[:3, 3], atol=1e-5)
    assert np.allclose(posed.metadata["pose"], P)
    with pytest.raises(ValueError, match=r"camera must be one camera label \[1, 25\]"):
        export_avatar(model, avatar, camera=torch.zeros(2, 25), **kw)
    with pytest.raises(NoSurfaceError):
        export_avatar(model, avatar, resolution=16)  # random weights never reach EG3D's level 10


def test_mesh_sequence_is_numbered_and_resumable(tiny, tmp_path):
    from oneshot.export import MeshSequence, export_sequence
    from oneshot.face3d import Coeffs

    model, b, avatar, level = tiny["model"], tiny["batch"], tiny["avatar"], tiny["level"]
    c = b["target_coeffs"]
    coeffs = Coeffs(*(getattr(c, f).repeat(3, 1) for f in ("identity", "expression", "albedo", "lighting", "rotation",
                                                            "translation")), model=c.model)
    coeffs.expression[1] = 0
    cams = b["target_camera"].repeat(3, 1)
    record = {"checkpoint": "tiny", "level": level}
    kw = dict(resolution=12, level=level)
    seq = MeshSequence(tmp_path / "seq", ".ply", record=record, frames=3)
    written = []

    def crash_after_two(i, path, mesh):
        written.append(i)
        if len(written) == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        export_sequence(model, avatar, coeffs, cams, seq, on_frame=crash_after_two, **kw)
    assert sorted(p.name for p in (tmp_path / "seq").iterdir()) == ["000000.ply", "000001.ply", "sequence.json"]
    first = (tmp_path / "seq" / "000000.ply").read_bytes()
    with pytest.raises(ValueError, match=r"exported with other arguments \(different: level\)"):
        MeshSequence(tmp_path / "seq", ".ply", record={**record, "level": level + 1}, resume=True, frames=3)
    seq = MeshSequence(tmp_path / "seq", ".ply", record=record, resume=True, frames=3)
    assert seq.missing() == [2]
    written.clear()
    paths = export_sequence(model, avatar, coeffs, cams, seq, on_frame=lambda i, p, m: written.append(i), **kw)
    assert written == [2] and [p.name for p in paths] == ["000000.ply", "000001.ply", "000002.ply"]
    assert (tmp_path / "seq" / "000000.ply").read_bytes() == first  # kept, not rewritten
    assert read_metadata(paths[2])["frame_index"] == 2
    with pytest.raises(ValueError, match=r"camera must be \[N, 25\] with N = 3"):
        export_sequence(model, avatar, coeffs, cams[:2], seq, **kw)
    with pytest.raises(ValueError, match="fmt must be one of"):
        MeshSequence(tmp_path / "x", ".stl", record={}, frames=1)


# -- the command (the real parser; its function called directly, so that errors keep their type) ------------------

def _run(*argv) -> int:
    from oneshot.cli import build_parser

    a = build_parser().parse_args(["export", *(str(x) for x in argv)])
    return a.func(a)


@pytest.fixture(scope="module")
def command_world(tiny):
    """The tiny avatar saved, its first sample as a portrait with its projected landmarks, the second as a
    driver, and a folder of two driving frames with their landmarks."""
    import json

    from PIL import Image

    from oneshot.face3d import Coeffs, project_landmarks

    root, model = tiny["root"], tiny["model"]
    model.save(root / "tiny.safetensors")
    rows = [json.loads(line) for line in (root / "ds" / "samples.jsonl").read_text().splitlines()]
    face = model.face_model
    lm = torch.cat([project_landmarks(face, Coeffs(**{k: torch.tensor(v)[None] for k, v in r["coeffs"].items()},
                                                   model=face.fingerprint), 128) for r in rows]).numpy()
    (root / "source.json").write_text(json.dumps({"landmarks": lm[0].tolist()}))
    (root / "driver.json").write_text(json.dumps({"landmarks": lm[1].tolist()}))
    frames = root / "frames"
    frames.mkdir()
    for i in range(2):
        Image.open(root / "ds" / "images" / f"{i:06d}.png").save(frames / f"f{i}.png")
    np.save(root / "frames.npy", lm)
    return {**tiny, "ckpt": root / "tiny.safetensors", "source": root / "ds" / "images" / "000000.png",
            "matte": root / "ds" / "mattes" / "000000.png", "driver": root / "ds" / "images" / "000001.png",
            "frames": frames}


def test_command_exports_a_portrait(command_world, tmp_path, capsys):
    w = command_world
    common = ["--checkpoint", w["ckpt"], w["source"], "--landmarks", w["root"] / "source.json", "--matte", w["matte"],
              "--resolution", 12, "--level", w["level"], "--quiet"]
    assert _run(*common, "--out", tmp_path / "head.glb") == 0
    assert "wrote" in capsys.readouterr().out
    mesh = load_mesh(tmp_path / "head.glb")
    assert mesh.num_faces > 0 and mesh.metadata["expression"] == "neutral"
    assert mesh.metadata["source"] == str(w["source"]) and mesh.metadata["resolution"] == 12
    assert _run(*common, "--out", tmp_path / "driven.obj", "--driver", w["driver"], "--driver-landmarks",
                w["root"] / "driver.json") == 0
    driven = read_metadata(tmp_path / "driven.obj")
    assert driven["expression"] != "neutral" and driven["pose"] != "canonical (world frame)"
    assert _run(*common, "--out", tmp_path / "seq", "--frames", w["frames"], "--frames-landmarks",
                w["root"] / "frames.npy", "--format", "ply", "--no-pose") == 0
    assert sorted(p.name for p in (tmp_path / "seq").iterdir()) == ["000000.ply", "000001.ply", "sequence.json"]
    assert read_metadata(tmp_path / "seq" / "000001.ply")["pose"] == "canonical (world frame)"
    first = (tmp_path / "seq" / "000000.ply").stat().st_mtime_ns
    (tmp_path / "seq" / "000001.ply").unlink()
    assert _run(*common, "--out", tmp_path / "seq", "--frames", w["frames"], "--frames-landmarks",
                w["root"] / "frames.npy", "--format", "ply", "--no-pose", "--resume") == 0
    assert (tmp_path / "seq" / "000001.ply").is_file()
    assert (tmp_path / "seq" / "000000.ply").stat().st_mtime_ns == first


@pytest.mark.parametrize("extra, error, match", [
    (["--out", "head.stl"], ValueError, r"--out must end in .glb, .ply, .obj"),
    (["--out", "seq.glb", "--frames", "FRAMES"], ValueError, "with --frames, --out is a folder"),
    (["--out", "h.glb", "--resume"], ValueError, "--resume is for --frames VIDEO"),
    (["--out", "h.glb", "--driver", "DRIVER", "--frames", "FRAMES"], ValueError, "exclude each other"),
    (["--out", "h.glb", "--driver", "nowhere.png"], FileNotFoundError, "--driver: no such file"),
    (["--out", "h.glb", "--resolution", "1"], ValueError, "--resolution must be >= 2"),
    (["--out", "h.glb", "--resolution", "100000"], ValueError, r"resolution 100000: an export needs about"),
])
def test_command_bad_arguments_are_named(command_world, tmp_path, extra, error, match):
    w = command_world
    extra = [{"FRAMES": w["frames"], "DRIVER": w["driver"]}.get(x, x) for x in extra]
    extra = [tmp_path / x if isinstance(x, str) and x.endswith((".stl", ".glb")) else x for x in extra]
    with pytest.raises(error, match=match):
        _run("--checkpoint", w["ckpt"], w["source"], "--landmarks", w["root"] / "source.json", "--matte", w["matte"],
             "--level", w["level"], "--quiet", *extra)


def test_command_without_a_surface_says_so(command_world, tmp_path):
    w = command_world
    with pytest.raises(NoSurfaceError, match="no surface at level 10"):
        _run("--checkpoint", w["ckpt"], w["source"], "--landmarks", w["root"] / "source.json", "--matte", w["matte"],
             "--resolution", 8, "--quiet", "--out", tmp_path / "head.glb")
    assert not (tmp_path / "head.glb").exists()


def test_render_mesh_shows_a_sphere_where_the_camera_sees_it():
    from oneshot import cameras
    from oneshot.export import render_mesh

    s = trimesh.creation.icosphere(4, 0.3)
    mesh = AvatarMesh(np.asarray(s.vertices, np.float32), np.asarray(s.faces, np.int64),
                      np.tile(np.array([[200, 100, 50]], np.uint8), (len(s.vertices), 1)))
    cam = cameras.camera_label(cameras.look_at(0.3, 0.1, pivot=(0.0, 0.0, 0.0)), cameras.intrinsics())
    img = render_mesh(mesh, cam, 64)
    assert img.shape == (64, 64, 3) and img.dtype == np.uint8
    fg = (img != 255).any(-1)
    # the silhouette: a disc of radius f tan(asin(r / d)) W pixels about the centre
    radius = cameras.FOCAL * math.tan(math.asin(0.3 / 2.7)) * 64
    assert fg.sum() == pytest.approx(math.pi * radius ** 2, rel=0.03)
    ii, jj = np.nonzero(fg)
    assert (ii.mean() + 0.5, jj.mean() + 0.5) == pytest.approx((32, 32), abs=0.5)
    grey = img[..., 0].astype(float)
    assert grey[32, 32] == pytest.approx(0.82 * 255, abs=3)  # facing the headlight: full light
    assert grey[fg].min() < 0.5 * grey[32, 32]  # the rim turns away from it
    colored = render_mesh(mesh, cam, 64, colors=True)
    assert colored[32, 32].tolist() == pytest.approx([200, 100, 50], abs=2)
    with pytest.raises(ValueError, match="colors=True needs a mesh with vertex colours"):
        render_mesh(AvatarMesh(mesh.vertices, mesh.faces), cam, 64, colors=True)
