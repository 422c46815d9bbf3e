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


def _renders_with_faces(monkeypatch, k: int = 2):
    """Make the first `k` renders of each batch the pair's source frame (a face the front end finds; an untrained
    avatar renders none), so an evaluation sees renders with and without faces."""
    from oneshot.models import OneShotAvatar

    real = OneShotAvatar.forward

    def forward(self, batch, **kwargs):
        out = real(self, batch, **kwargs)
        image = out["image"].clone()
        image[:k] = batch["source_image"][:k]
        return {**out, "image": image}

    monkeypatch.setattr(OneShotAvatar, "forward", forward)


def _scored_images(out, face):
    """The renders (the substituted source frames) and targets the evaluation in `out` scored, [3, 3, S, S] in [0, 1]:
    the protocol's pairs of the prepared dataset, matted as the model sees them."""
    from oneshot.data import FaceDataset, collate_pairs
    from oneshot.eval import build_pairs

    ds = FaceDataset(out / "data")
    b = collate_pairs(ds, build_pairs(ds, "self"), face)
    return ((b["source_image"] + 1) / 2).clamp(0, 1), ((b["target_image"] + 1) / 2).clamp(0, 1)


def _akd(front, a, b):
    """AKD as the protocol defines it, written out: images [3, S, S] in [0, 1] enlarged to 256 for the detector, mean
    distance of the 68 landmarks in pixels of a 256 frame."""
    import torch.nn.functional as F

    def landmarks(x):
        big = F.interpolate(x[None], size=(256, 256), mode="bilinear", align_corners=False)[0]
        faces = front((big.clamp(0, 1) * 255 + 0.5).byte().permute(1, 2, 0).numpy())
        return faces[0].landmarks.double() * x.shape[-1] / 256

    return float((landmarks(a) - landmarks(b)).norm(dim=1).mean()) * 256 / a.shape[-1]


@needs_faces
@needs_assets
def test_evaluate_self_reenactment_on_a_video_with_the_landmark_metrics(tiny_ckpt, driving_video, tmp_path,
                                                                      monkeypatch, one_thread):
    """`oneshot evaluate --data VIDEO`: the video is prepared (detected, fitted, cropped) and its first frame is
    driven by the others; AED / APD / AKD come from the face front end's landmarks. Two renders show a face (the
    source frame, substituted), the third is the untrained avatar's (no face): it is counted as missing and left out
    of the means, which are those of the other two rows. The landmark metrics of a crop against itself are exactly 0,
    and AKD sees a known shift."""
    from oneshot.data import FaceDataset
    from oneshot.eval import Scorer
    from oneshot.face3d import load_model
    from oneshot.face3d.detect import FaceFrontEnd

    _renders_with_faces(monkeypatch)
    out = tmp_path / "eval"
    from oneshot.cli import main

    assert main(["evaluate", "--checkpoint", str(tiny_ckpt), "--data", str(driving_video[0]), "--protocol", "self",
                 "--frames", "4", "--sr", "--out", str(out), "--quiet"]) == 0
    s = json.loads((out / "metrics.json").read_text())
    assert s["pairs"] == 3 and s["identities"] == 1 and {"psnr", "ssim", "l1"} <= set(s["metrics"])
    assert not {"aed", "apd", "akd"} & set(s["skipped"])
    rows = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    for m in ("aed", "apd", "akd"):
        vals = [r[m] for r in rows]
        assert all(math.isfinite(v) and v > 0 for v in vals[:2]) and math.isnan(vals[2]), (m, vals)
        assert s["metrics"][m]["n"] == 2 and s["metrics"][m]["missing"] == 1, m
        assert s["metrics"][m]["mean"] == pytest.approx((vals[0] + vals[1]) / 2, rel=1e-12), m
    table = (out / "table.md").read_text()
    assert "- AKD: no face found in 1 of the pairs (left out of the mean)" in table
    ds = FaceDataset(out / "data")
    crops = torch.stack([(ds[i]["image"] + 1) / 2 for i in range(4)])
    renders, targets = _scored_images(out, load_model())
    with FaceFrontEnd(max_faces=1) as front:
        for k in range(2):  # the rows' AKD, written out: the source frame (the render) against the target frame
            assert rows[k]["akd"] == pytest.approx(_akd(front, renders[k], targets[k]), rel=1e-5, abs=1e-6), k
        scorer = Scorer(faces=front, face_model=load_model())
        same = scorer.score("self", crops[:2], crops[:2], crops[:2])
        for m in ("aed", "apd", "akd"):
            assert torch.equal(same[m], torch.zeros(2, dtype=torch.float64)), m
        shift = 8  # pixels of the crop (the model's input size); AKD is in pixels of a 256 frame
        moved = scorer.score("self", torch.roll(crops[:2], shift, dims=-1), crops[:2], crops[:2])
        assert moved["akd"].tolist() == pytest.approx([shift * 256 / crops.shape[-1]] * 2, abs=1.0)
        assert (moved["apd"] > 0).all()


@needs_faces
@needs_assets
def test_evaluate_with_recon_regresses_the_coefficients_of_aed_and_apd(driving_video, tmp_path, monkeypatch,
                                                                       one_thread):
    """`oneshot evaluate --recon epoch_20.pth --face-model BFM`: AED / APD compare coefficients regressed by
    Deep3DFaceRecon's network (a checkpoint in its layout, made here), never fitted: the fit is switched off (it
    would raise), the regressor is spied, and the rows' AED / APD are recomputed from its coefficients."""
    from test_face3d import write_bfm

    from oneshot.cli import main
    from oneshot.face3d import estimate_face, fit, from_bfm, load_recon_checkpoint
    from oneshot.face3d.detect import FaceFrontEnd
    from oneshot.face3d.recon import ReconNet
    from oneshot.models import OneShotAvatar

    write_bfm(tmp_path / "BFM_model_front.mat")
    face = from_bfm(tmp_path / "BFM_model_front.mat")
    torch.manual_seed(0)
    net = ReconNet()
    for p in net.parameters():
        p.data.normal_(0, 0.02)
    torch.save({"net_recon": net.state_dict(), "epoch": 20}, tmp_path / "epoch_20.pth")
    OneShotAvatar("tiny", face).save(tmp_path / "bfm_tiny.safetensors")

    def no_fit(*args, **kwargs):
        raise AssertionError("the 68-landmark fit ran; --recon must regress the coefficients")

    monkeypatch.setattr(fit, "fit_landmarks", no_fit)
    regressed = []
    real_coeffs = ReconNet.coeffs

    def coeffs(self, image, model):
        c = real_coeffs(self, image, model)
        regressed.append(c.expression.shape[0])
        return c

    monkeypatch.setattr(ReconNet, "coeffs", coeffs)
    _renders_with_faces(monkeypatch)
    out = tmp_path / "eval"
    assert main(["evaluate", "--checkpoint", str(tmp_path / "bfm_tiny.safetensors"), "--data", str(driving_video[0]),
                 "--protocol", "self", "--frames", "4", "--sr", "--recon", str(tmp_path / "epoch_20.pth"),
                 "--face-model", str(tmp_path / "BFM_model_front.mat"), "--out", str(out), "--quiet"]) == 0
    s = json.loads((out / "metrics.json").read_text())
    assert "Deep3DFaceRecon regression" in s["settings"]["aed"]
    assert s["metrics"]["aed"]["n"] == 2 and s["metrics"]["apd"]["n"] == 2
    # prepared: 4 frames; scored: 2 renders with a face and 3 targets
    assert sum(regressed) == 4 + 2 + 3, regressed
    rows = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    renders, targets = _scored_images(out, face)
    recon = load_recon_checkpoint(tmp_path / "epoch_20.pth")
    size = renders.shape[-1]

    def regressed_coeffs(img):
        big = torch.nn.functional.interpolate(img[None], size=(256, 256), mode="bilinear", align_corners=False)
        lm = front((big[0].clamp(0, 1) * 255 + 0.5).byte().permute(1, 2, 0).numpy())[0].landmarks * size / 256
        return estimate_face(img[None], lm[None], model=face, recon=recon, size=size).coeffs

    with FaceFrontEnd(max_faces=1) as front:
        est = [(regressed_coeffs(renders[k]), regressed_coeffs(targets[k])) for k in range(2)]
    for k, (a, b) in enumerate(est):
        aed = float((a.expression.double() - b.expression.double()).abs().mean())
        pa = torch.cat([a.rotation, a.translation], 1).double()
        pb = torch.cat([b.rotation, b.translation], 1).double()
        assert rows[k]["aed"] == pytest.approx(aed, rel=1e-4), k
        assert rows[k]["apd"] == pytest.approx(float((pa - pb).abs().mean()), rel=1e-4), k
