"""The offline face front end (oneshot.face3d.detect, the `faces` extra) on the two public-domain portraits in
../shared/assets: detection, the 478 -> 68 map, fits of real faces, the matte, smoothing of driving landmarks, and
the commands that use them end to end (reconstruct and animate with no landmark or matte files, data prepare)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from oneshot.face3d import mediapipe68
from oneshot.face3d.smooth import OneEuroFilter, jitter, smooth_sequence

ASSETS = Path(__file__).resolve().parents[2] / "shared" / "assets"
PORTRAITS = {"astronaut": ASSETS / "portraits" / "astronaut.png", "grace_hopper": ASSETS / "portraits" / "grace_hopper.jpg"}
ICT = ASSETS / "ict_facekit_face_f16.npz"


def _faces_available() -> bool:
    from oneshot.face3d.detect import faces_available

    return faces_available()


needs_faces = pytest.mark.skipif(not _faces_available(), reason="the faces extra (MediaPipe) is not installed: "
                                 "bash scripts/install_faces.sh (CI installs it)")
needs_assets = pytest.mark.skipif(not all(p.exists() for p in PORTRAITS.values()),
                                  reason=f"needs the portraits in {ASSETS} (../shared beside the project)")


# -- the 478 -> 68 map (no extra needed) ------------------------------------------------------------------------

def test_map_rows_are_convex_combinations_of_mesh_points():
    m = mediapipe68.mapping_matrix(torch.float64)
    assert m.shape == (68, 478)
    torch.testing.assert_close(m.sum(1), torch.ones(68, dtype=torch.float64))
    assert (m >= 0).all() and (m > 0).sum(1).max() <= 2
    assert (m[:, 468:] == 0).all()  # no iris point: 468-point meshes map too
    # jaw points lie on the face oval, between consecutive oval vertices
    oval = set(mediapipe68.FACE_OVAL)
    for k in range(17):
        assert set(m[k].nonzero().flatten().tolist()) <= oval


def test_map_applies_to_batches_arrays_and_468_points():
    g = torch.Generator().manual_seed(0)
    pts = torch.rand(2, 3, 478, 2, generator=g, dtype=torch.float64) * 500
    out = mediapipe68.ibug68_from_mediapipe(pts)
    assert out.shape == (2, 3, 68, 2)
    manual = torch.stack([sum(w * pts[..., i, :] for i, w in row) for row in mediapipe68.MEDIAPIPE_TO_IBUG68], -2)
    torch.testing.assert_close(out, manual)
    np.testing.assert_allclose(mediapipe68.ibug68_from_mediapipe(pts[0, 0].numpy()), out[0, 0].numpy())
    torch.testing.assert_close(mediapipe68.ibug68_from_mediapipe(pts[..., :468, :]), out)
    with pytest.raises(ValueError, match=r"MediaPipe Face Mesh points \[\.\.\., 478 or 468, D\].*got \[68, 2\]"):
        mediapipe68.ibug68_from_mediapipe(torch.zeros(68, 2))


def test_landmark_files_with_478_points_are_mapped(tmp_path):
    from oneshot.face3d.landmarks import load_landmark_frames, load_landmarks

    pts = np.random.default_rng(1).uniform(100, 400, (478, 3))
    np.save(tmp_path / "mesh.npy", pts)
    (tmp_path / "mesh.json").write_text(json.dumps({"landmarks": pts.tolist()}))
    want = torch.from_numpy(mediapipe68.ibug68_from_mediapipe(pts[:, :2])).float()
    torch.testing.assert_close(load_landmarks(tmp_path / "mesh.npy"), want)
    torch.testing.assert_close(load_landmarks(tmp_path / "mesh.json"), want)
    np.save(tmp_path / "frames.npy", np.stack([pts, pts + 1]))
    assert load_landmark_frames(tmp_path / "frames.npy").shape == (2, 68, 2)


# -- smoothing (no extra needed) ---------------------------------------------------------------------------------

def test_one_euro_filter_keeps_still_signals_and_removes_noise():
    g = torch.Generator().manual_seed(0)
    still = torch.full((200, 4), 3.0, dtype=torch.float64)
    torch.testing.assert_close(smooth_sequence(still, 30.0), still)
    noisy = still + torch.randn(200, 4, generator=g, dtype=torch.float64) * 0.1
    # with beta = 0 it is a first-order low-pass at 1 Hz: alpha = 0.173 at 30 fps, white noise std x
    # sqrt(alpha / (2 - alpha)) = 0.31
    smooth = smooth_sequence(noisy, 30.0, min_cutoff=1.0, beta=0.0)
    assert (smooth[50:] - 3).std() < 0.35 * (noisy[50:] - 3).std()
    assert jitter(smooth) < 0.2 * jitter(noisy)
    # a step is followed (no lasting lag): within 1% after one second at 30 fps
    step = torch.cat([torch.zeros(30, 1), torch.ones(60, 1)]).double()
    out = smooth_sequence(step, 30.0, min_cutoff=1.0, beta=0.0)
    assert abs(float(out[-1]) - 1) < 0.01 and float(out[31]) < 0.5
    # faster motion raises the cut-off: less lag with beta
    ramp = torch.linspace(0, 10, 60, dtype=torch.float64)[:, None]
    lag0 = (ramp - smooth_sequence(ramp, 30.0, beta=0.0)).abs()[-1]
    lag1 = (ramp - smooth_sequence(ramp, 30.0, beta=1.0)).abs()[-1]
    assert lag1 < 0.5 * lag0


def test_one_euro_filter_errors():
    with pytest.raises(ValueError, match="fps must be a positive number, got 0"):
        OneEuroFilter(0)
    with pytest.raises(ValueError, match="beta must be a number >= 0"):
        OneEuroFilter(25, beta=-1)
    f = OneEuroFilter(25)
    f(torch.zeros(3))
    with pytest.raises(ValueError, match=r"the first frame's shape \[3\], got \[4\]"):
        f(torch.zeros(4))
    with pytest.raises(ValueError, match="at least 3 frames"):
        jitter(torch.zeros(2, 3))


# -- detection and fits on the portraits -------------------------------------------------------------------------

@pytest.fixture(scope="module")
def portraits():
    from oneshot.video import read_image

    return {k: read_image(p) for k, p in PORTRAITS.items()}


@pytest.fixture(scope="module")
def detections(portraits):
    from oneshot.face3d.detect import FaceFrontEnd

    with FaceFrontEnd() as front:
        return {k: (front(im), front.matte(im)) for k, im in portraits.items()}


def _models():
    from oneshot.face3d import builtin_model, from_ict_facekit

    out = {"builtin": builtin_model()}
    if ICT.exists():
        out["ict-facekit"] = from_ict_facekit(ICT)
    return out


# Reprojection bounds at 512 x 512 (mean, max px), about 1.3x what the fits give on these portraits (README table):
# the built-in head is not a model of real faces (its jaw and brows follow a canonical layout), ICT-FaceKit is.
BOUNDS = {"builtin": (9.0, 28.0), "ict-facekit": (6.5, 18.0)}


@needs_faces
@needs_assets
def test_exactly_one_face_with_landmarks_on_it(portraits, detections):
    for name, (faces, matte) in detections.items():
        assert len(faces) == 1, name
        f = faces[0]
        H, W = portraits[name].shape[:2]
        assert f.landmarks.shape == (68, 2) and f.mesh.shape == (478, 3)
        x0, y0, x1, y1 = f.box
        assert 0 <= x0 < x1 <= W and 0 <= y0 < y1 <= H
        # the 68 points are inside the face's box, in iBUG order: eyes above the mouth, left eye left of the right
        lm = f.landmarks
        assert (lm[:, 0] >= x0 - 1).all() and (lm[:, 0] <= x1 + 1).all()
        assert lm[36:48, 1].mean() < lm[30, 1] < lm[48:68, 1].mean() < lm[8, 1]
        assert lm[36:42, 0].mean() < lm[42:48, 0].mean()
        # the matte covers the face and not the whole image
        assert matte.shape == (H, W)
        inside = matte[lm[:, 1].long().clamp(0, H - 1), lm[:, 0].long().clamp(0, W - 1)]
        assert (inside > 0.5).float().mean() > 0.95
        assert 0.15 < float(matte.mean()) < 0.9


@needs_faces
@needs_assets
@pytest.mark.parametrize("model_name", ["builtin", "ict-facekit"])
def test_fits_of_the_portraits_stay_in_range_and_reproject(portraits, detections, model_name):
    from oneshot.face3d import estimate_face, render

    models = _models()
    if model_name not in models:
        pytest.skip(f"needs {ICT}")
    model = models[model_name]
    for name, (faces, matte) in detections.items():
        img = torch.from_numpy(portraits[name].astype(np.float32) / 255).permute(2, 0, 1)
        stack = torch.cat([img, matte[None]])[None]
        est = estimate_face(stack, faces[0].landmarks[None], model=model, size=512)
        mean_b, max_b = BOUNDS[model_name]
        assert float(est.mean_error[0]) < mean_b and float(est.max_error[0]) < max_b, (name, est.mean_error,
                                                                                       est.max_error)
        lo, hi = model.expression_range
        assert float(est.coeffs.expression.min()) >= lo and float(est.coeffs.expression.max()) <= hi
        lo, hi = model.identity_range
        assert float(est.coeffs.identity.min()) >= lo and float(est.coeffs.identity.max()) <= hi
        assert abs(math.degrees(float(est.coeffs.rotation[0, 1]))) < 15  # both portraits face the camera
        # the fitted face, rendered with the fitted camera, lies inside the person matte of the crop
        r = render(model, model.vertices(est.coeffs.identity, est.coeffs.expression), est.camera, 512)
        face = r.regions["face"][0, 0] > 0.5
        crop_matte = est.image[0, 3]
        assert face.sum() > 0.05 * 512 * 512
        assert float((crop_matte[face] > 0.5).float().mean()) > 0.97, name


# -- the commands ------------------------------------------------------------------------------------------------

def _run(*argv) -> int:
    from test_cli_infer import _run as run

    return run(*argv)


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory):
    from oneshot.face3d import load_model
    from oneshot.models import OneShotAvatar

    path = tmp_path_factory.mktemp("faces") / "tiny.safetensors"
    OneShotAvatar("tiny", load_model()).save(path)
    return path


@pytest.fixture(scope="module")
def driving_video(tmp_path_factory, portraits):
    """A 12-frame video of the astronaut under a known smooth motion."""
    from oneshot.video import moving_still, write_video

    frames, mats = moving_still(portraits["astronaut"], 12, fps=12.0)
    path = tmp_path_factory.mktemp("video") / "astronaut_moving.mp4"
    write_video(path, frames, 12.0)
    return path, mats


@needs_faces
@needs_assets
def test_reconstruct_and_animate_need_no_landmark_or_matte_files(tiny_ckpt, driving_video, tmp_path, capsys):
    from conftest import num_threads

    from oneshot.video import read_frames

    with num_threads(1):
        assert _run("reconstruct", "--checkpoint", tiny_ckpt, PORTRAITS["astronaut"], "--out", tmp_path / "r",
                    "--frames", 2, "--no-sr") == 0
        err = capsys.readouterr().err
        assert "matte from MediaPipe's selfie segmentation; face detected" in err
        assert "(512² crop)" in err
        crop = np.asarray(__import__("PIL.Image", fromlist=["Image"]).open(tmp_path / "r" / "source_crop.png"))
        assert crop[:4, :4].max() < 10  # matted: the background is black
        out = tmp_path / "a.mp4"
        assert _run("animate", "--checkpoint", tiny_ckpt, PORTRAITS["astronaut"], driving_video[0], "--out", out,
                    "--no-sr", "--batch", 6) == 0
        err = capsys.readouterr().err
    assert "driving landmarks smoothed" in err and "jitter" in err
    assert len(read_frames(out)) == 12 and len(read_frames(tmp_path / "a_compare.mp4")) == 12


@needs_faces
@needs_assets
def test_tracked_landmarks_follow_the_known_motion_and_smoothing_removes_jitter(driving_video, portraits):
    from oneshot.face3d.track import landmark_jitter, smooth_landmarks, track_landmarks
    from oneshot.face3d.detect import detect_faces
    from oneshot.video import read_frames

    path, mats = driving_video
    lm = track_landmarks(read_frames(path)).double()
    still = detect_faces(portraits["astronaut"])[0].landmarks.double()
    M = torch.from_numpy(mats)
    truth = torch.einsum("nij,kj->nki", M[:, :, :2], still) + M[:, None, :, 2]
    err = (lm - truth).norm(dim=-1)
    assert float(err.mean()) < 3.0  # px in a 512 x 512 video (H.264-compressed)
    smooth = smooth_landmarks(lm, 12.0)
    assert float(jitter(smooth - truth)) < float(jitter(lm - truth))
    assert float(landmark_jitter(smooth)) < float(landmark_jitter(lm))


@needs_faces
@needs_assets
def test_data_prepare_video_and_image_folder_resumable(driving_video, tmp_path):
    from PIL import Image

    from oneshot.cli import main
    from oneshot.data import FaceDataset, prepare

    folder = tmp_path / "images"
    folder.mkdir()
    for p in PORTRAITS.values():
        (folder / p.name).write_bytes(p.read_bytes())
    Image.new("RGB", (160, 120), (90, 120, 200)).save(folder / "no_face.png")
    (folder / "broken.png").write_bytes(b"not a png")
    out = tmp_path / "ds"
    r = prepare([driving_video[0], folder], out, resolution=128, frames=3, progress=False)
    assert r.written == 3 + 2 and r.sources == 5 and len(r.no_face) == 1 and r.no_face[0].endswith("no_face.png")
    assert len(r.failed) == 1 and "broken.png" in r.failed[0]
    ds = FaceDataset(out)
    assert len(ds) == 5 and len(ds.identities) == 3
    video_ids = [k for k, v in ds.identities.items() if len(v) == 3]
    assert len(video_ids) == 1 and video_ids[0].startswith("astronaut_moving")
    s = ds[0]
    assert s["image"].shape == (3, 128, 128) and s["matte"].shape == (1, 128, 128)
    assert s["masks"][2].mean() > 0.05  # the fitted face region
    assert main(["data", "check", str(out)]) == 0
    # an interrupted run resumes: the log of a finished source is kept, a half-done one is redone, nothing twice
    log = (out / "prepare.jsonl").read_text().splitlines()
    (out / "prepare.jsonl").write_text("\n".join(log[:2]) + "\n")
    again = prepare([driving_video[0], folder], out, resolution=128, frames=3, progress=False)
    assert again.resumed == 2 and again.sources == 3 and again.written == 0
    assert len(FaceDataset(out)) == 5
    with pytest.raises(ValueError, match="frames must be an int >= 1"):
        prepare([folder], out, frames=0)
    with pytest.raises(FileNotFoundError, match="no such file or folder"):
        prepare([tmp_path / "missing"], out)
