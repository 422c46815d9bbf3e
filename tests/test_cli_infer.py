"""Video IO (oneshot.video) and the inference commands (``oneshot reconstruct``, ``oneshot animate``) end to end on
a tiny random-weight avatar and synthetic portraits whose landmarks are projected from their coefficients."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

pytest.importorskip("av", reason="oneshot.video writes .mp4 with PyAV (pip install av)")

from oneshot import cameras  # noqa: E402
from oneshot.cameras import relative_cameras  # noqa: E402
from oneshot.cli import build_parser  # noqa: E402
from oneshot.face3d.landmarks import load_landmark_frames, load_landmarks  # noqa: E402
from oneshot.imageio import depth_images  # noqa: E402
from oneshot.video import VideoWriter, read_frames, read_image, write_gif, write_video  # noqa: E402

R = 128  # the tiny preset's image size


@pytest.fixture(autouse=True)
def _one_thread():
    # The tiny model's small convolutions run 10x slower with 2 threads on a shared 2-core CPU than with one.
    from conftest import num_threads

    with num_threads(1):
        yield


def _run(*argv: str) -> int:
    a = build_parser().parse_args([str(x) for x in argv])
    return a.func(a)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A tiny random-weight avatar, 4 synthetic portraits at 128 and their landmark files."""
    from oneshot.data import synthesize
    from oneshot.face3d import Coeffs, load_model, project_landmarks
    from oneshot.models import OneShotAvatar

    root = tmp_path_factory.mktemp("infer")
    face = load_model()
    OneShotAvatar("tiny", face).save(root / "tiny.safetensors")
    synthesize(root / "ds", 4, resolution=R, seed=0, progress=False)
    rows = [json.loads(line) for line in (root / "ds" / "samples.jsonl").read_text().splitlines()]
    lm = torch.cat([project_landmarks(face, Coeffs(**{k: torch.tensor(v)[None] for k, v in r["coeffs"].items()},
                                                   model=face.fingerprint), R) for r in rows]).numpy()
    (root / "source.json").write_text(json.dumps({"landmarks": lm[0].tolist()}))
    (root / "driving.json").write_text(json.dumps({"frames": lm.tolist()}))
    np.save(root / "driving.npy", lm)
    return {"root": root, "ckpt": root / "tiny.safetensors", "source": root / "ds" / "images" / "000000.png",
            "matte": root / "ds" / "mattes" / "000000.png", "images": root / "ds" / "images", "lm": lm}


def _frames(path):
    return np.stack(list(read_frames(path)))


# -- video IO -------------------------------------------------------------------------------------------------

def _pattern(n: int, h: int, w: int) -> list[np.ndarray]:
    y, x = np.mgrid[0:h, 0:w]
    return [np.stack([x * 200 // w + 10 * i, y * 255 // h, np.full_like(x, 50 * i % 256)], -1).astype(np.uint8)
            for i in range(n)]  # smooth (chroma subsampling blurs edges), distinct channels (catches BGR)


def test_mp4_round_trip_keeps_colours_count_fps_and_pads_odd_sizes(tmp_path):
    frames = _pattern(5, 33, 47)
    assert write_video(tmp_path / "a.mp4", frames, 29.97) == 5
    f = read_frames(tmp_path / "a.mp4")
    assert (f.kind, len(f)) == ("video", 5) and math.isclose(f.fps, 29.97, rel_tol=1e-3)
    back = _frames(tmp_path / "a.mp4")
    assert back.shape == (5, 34, 48, 3)  # padded to even sizes
    err = np.abs(back[:, :33, :47].astype(int) - np.stack(frames)).mean(axis=(1, 2, 3))
    assert err.max() < 3, f"mean abs error per frame {err} (RGB order or colour range wrong?)"
    assert np.abs(back[:, 33, :47].astype(int) - back[:, 32, :47]).mean() < 3  # the padding repeats the last row


def test_gif_folder_and_image_sources(tmp_path):
    frames = _pattern(3, 20, 24)
    assert write_gif(tmp_path / "a.gif", frames, 10) == 3
    g = read_frames(tmp_path / "a.gif")
    assert (g.kind, len(g), g.fps) == ("gif", 3, 10)
    assert _frames(tmp_path / "a.gif").shape == (3, 20, 24, 3)
    folder = tmp_path / "seq"
    folder.mkdir()
    from PIL import Image

    for i in (10, 2, 1):  # natural order: 1, 2, 10
        Image.fromarray(frames[i % 3]).save(folder / f"f{i}.png")
    (folder / "notes.txt").write_text("ignored")
    s = read_frames(folder, fps=12)
    assert (s.kind, len(s), s.fps) == ("folder", 3, 12)
    assert [int(a[0, 0, 2]) for a in s] == [int(frames[i % 3][0, 0, 2]) for i in (1, 2, 10)]
    one = read_frames(folder / "f2.png")
    assert (one.kind, len(one)) == ("image", 1) and np.array_equal(next(iter(one)), frames[2])


def test_video_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such file or folder"):
        read_frames(tmp_path / "missing.mp4")
    (tmp_path / "a.txt").write_text("x")
    with pytest.raises(ValueError, match=r"unsupported file type '\.txt'"):
        read_frames(tmp_path / "a.txt")
    (tmp_path / "bad.mp4").write_bytes(b"not a video" * 10)
    with pytest.raises(ValueError, match="bad.mp4: not a readable video"):
        read_frames(tmp_path / "bad.mp4")
    (tmp_path / "bad.png").write_bytes(b"not an image")
    with pytest.raises(ValueError, match="bad.png: not a readable image"):
        read_image(tmp_path / "bad.png")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="holds no images"):
        read_frames(tmp_path / "empty")
    with VideoWriter(tmp_path / "b.mp4", 25) as w:
        w.write(np.zeros((8, 8, 3), np.uint8))
        with pytest.raises(ValueError, match="frame 1 is 10 x 8, the video's frames are 8 x 8"):
            w.write(np.zeros((8, 10, 3), np.uint8))
        with pytest.raises(ValueError, match=r"uint8 RGB \[H, W, 3\]"):
            w.write(np.zeros((8, 8), np.float32))
    with pytest.raises(ValueError, match="fps must be a positive number"):
        VideoWriter(tmp_path / "c.mp4", 0)


def test_a_crash_inside_the_writer_leaves_a_playable_video(tmp_path):
    with pytest.raises(RuntimeError, match="boom"):
        with VideoWriter(tmp_path / "a.mp4", 25) as w:
            for f in _pattern(3, 16, 16):
                w.write(f)
            raise RuntimeError("boom")
    assert _frames(tmp_path / "a.mp4").shape == (3, 16, 16, 3)


# -- helpers of the commands ----------------------------------------------------------------------------------

def test_landmark_files(tmp_path, world):
    lm = world["lm"]
    (tmp_path / "a.txt").write_text("\n".join(f"{x},{y}" for x, y in lm[1]))
    np.save(tmp_path / "a.npy", lm[1])
    (tmp_path / "bare.json").write_text(json.dumps(lm[1].tolist()))
    for name in ("a.txt", "a.npy", "bare.json"):
        torch.testing.assert_close(load_landmarks(tmp_path / name), torch.from_numpy(lm[1]).float())
    assert load_landmark_frames(world["root"] / "driving.npy").shape == (4, 68, 2)
    assert load_landmark_frames(world["root"] / "source.json").shape == (1, 68, 2)
    np.save(tmp_path / "bad.npy", lm[1, :10])
    with pytest.raises(ValueError, match=r"landmarks must be \[K, 2\] with K = 68 \(iBUG\), 478 or 468 \(MediaPipe.*or 5, got \[10, 2\]"):
        load_landmarks(tmp_path / "bad.npy")
    (tmp_path / "bad.json").write_text(json.dumps({"points": []}))
    with pytest.raises(ValueError, match=r"expected \{\"landmarks\""):
        load_landmarks(tmp_path / "bad.json")
    (tmp_path / "a.pts").write_text("")
    with pytest.raises(ValueError, match="unsupported landmark file '.pts'"):
        load_landmarks(tmp_path / "a.pts")


def test_relative_cameras_transfer_the_driving_motion():
    # Cameras that look at the origin from a circle about the vertical axis: yaw offsets compose exactly.
    def label(yaw):
        yaw = torch.as_tensor(yaw, dtype=torch.float64).reshape(-1)
        return cameras.camera_label(cameras.look_at(yaw, 0.0, pivot=(0, 0, 0)), cameras.intrinsics(batch=len(yaw)))

    drv = label([0.1, 0.25, -0.2])
    out = relative_cameras(label(0.2), drv, drv[:1])
    torch.testing.assert_close(out, label([0.2, 0.35, -0.1]), atol=1e-5, rtol=0)
    cameras.split_label(out)  # rigid
    torch.testing.assert_close(relative_cameras(label(0.2), drv, drv[1:2]), label([0.05, 0.2, -0.25]), atol=1e-5,
                               rtol=0)


def test_depth_images_normalise_over_the_foreground():
    depth = torch.tensor([2.5, 2.7, 3.0, 3.3]).reshape(1, 1, 2, 2).repeat(2, 1, 1, 1)
    opacity = torch.tensor([1.0, 1.0, 1.0, 0.0]).reshape(1, 1, 2, 2).repeat(2, 1, 1, 1)
    img = depth_images(depth, opacity)
    assert img.shape == (2, 2, 2, 3) and img.dtype == np.uint8
    # near (2.5) white, far (3.0) dark, 2.7 at (3.0 - 2.7) / 0.5 = 0.6, the background (opacity 0) black
    assert img[0, :, :, 0].tolist() == [[255, 153], [0, 0]]


# -- the commands ---------------------------------------------------------------------------------------------

def test_sr_follows_what_the_checkpoint_trained(world, tmp_path, capsys):
    """A checkpoint whose super-resolution network was never trained renders the low-resolution image by default and
    says so; one that records it trained (or records nothing: older files) renders the super-resolved image; --sr and
    --no-sr override either way."""
    from safetensors import safe_open

    from oneshot.face3d import load_model
    from oneshot.models import OneShotAvatar

    with safe_open(str(world["ckpt"]), framework="pt") as f:
        assert f.metadata()["trained"] == "[]"  # a new model: nothing trained
    face = load_model()
    trained = OneShotAvatar.load(world["ckpt"], face)
    trained.trained_parts = frozenset({"low_res", "super_resolution"})
    trained.save(tmp_path / "trained.safetensors")
    assert OneShotAvatar.load(tmp_path / "trained.safetensors", face).super_resolution_trained
    common = [world["source"], "--landmarks", world["root"] / "source.json", "--matte", world["matte"], "--frames", 1]
    sizes = {}
    for name, ckpt, flags in (("untrained", world["ckpt"], []), ("trained", tmp_path / "trained.safetensors", []),
                              ("forced", world["ckpt"], ["--sr"]),
                              ("off", tmp_path / "trained.safetensors", ["--no-sr"])):
        capsys.readouterr()
        assert _run("reconstruct", "--checkpoint", ckpt, *common, "--out", tmp_path / name, *flags) == 0
        sizes[name] = _frames(tmp_path / name / "orbit.mp4").shape[1]
        said = "super-resolution network was never trained" in capsys.readouterr().err
        assert said == (name == "untrained"), name
    assert sizes == {"untrained": 32, "trained": R, "forced": R, "off": 32}


def test_reconstruct_writes_the_orbit(world, tmp_path):
    out = tmp_path / "rec"
    assert _run("reconstruct", "--checkpoint", world["ckpt"], world["source"], "--landmarks",
                world["root"] / "source.json", "--matte", world["matte"], "--out", out, "--frames", 3, "--batch", 2,
                "--save-frames", "--quiet", "--sr") == 0
    assert _frames(out / "orbit.mp4").shape == (3, R, R, 3)  # the super-resolved frames (--sr)
    assert read_frames(out / "orbit.mp4").fps == 24
    assert len(read_frames(out / "orbit.gif")) == 3 and len(read_frames(out / "depth.gif")) == 3
    assert next(iter(read_frames(out / "depth.gif"))).shape == (R, R, 3)
    pngs = sorted((out / "frames").iterdir())
    assert [p.name for p in pngs] == ["0000.png", "0001.png", "0002.png"]
    saved, video = np.stack([read_image(p) for p in pngs]).astype(int), _frames(out / "orbit.mp4")
    assert np.abs(saved - video).mean() < 8  # the same frames, through the codec
    crop = read_image(out / "source_crop.png")
    assert crop.shape == (R, R, 3)
    assert crop[:4, :4].max() == 0 and crop[60:68, 60:68].mean() > 50  # matted: black background, a face inside


def test_animate_a_folder_with_the_side_by_side(world, tmp_path):
    out = tmp_path / "a" / "out.mp4"
    assert _run("animate", "--checkpoint", world["ckpt"], world["source"], world["images"], "--landmarks",
                world["root"] / "source.json", "--driving-landmarks", world["root"] / "driving.json", "--out", out,
                "--batch", 3, "--no-sr", "--quiet") == 0
    r = 32  # the tiny preset's render
    assert _frames(out).shape == (4, r, r, 3) and read_frames(out).fps == 25
    assert _frames(tmp_path / "a" / "out_compare.mp4").shape == (4, r, 2 * r, 3)
    assert sorted(p.name for p in out.parent.iterdir()) == ["out.mp4", "out_compare.mp4"]  # no leftovers


def test_animate_an_mp4_with_relative_pose(world, tmp_path):
    driving = tmp_path / "driving.mp4"
    write_video(driving, [read_image(p) for p in sorted(world["images"].iterdir())[:3]], 10)
    out = tmp_path / "out.mp4"
    np.save(tmp_path / "lm.npy", world["lm"][:3])
    assert _run("animate", "--checkpoint", world["ckpt"], world["source"], driving, "--landmarks",
                world["root"] / "source.json", "--driving-landmarks", tmp_path / "lm.npy", "--out", out,
                "--relative-pose", "--no-compare", "--no-sr", "--quiet") == 0
    assert _frames(out).shape == (3, 32, 32, 3) and read_frames(out).fps == 10
    assert not (tmp_path / "out_compare.mp4").exists()


def test_a_crash_mid_video_keeps_the_finished_frames_and_resume_completes(world, tmp_path, monkeypatch):
    from oneshot.models import OneShotAvatar

    calls = []
    original = OneShotAvatar.animate

    def failing(self, *args, **kwargs):
        calls.append(args[2].shape[0])  # (avatar, coeffs, cameras [F, 25])
        if len(calls) == 2:
            raise RuntimeError("out of memory (simulated)")
        return original(self, *args, **kwargs)

    monkeypatch.setattr(OneShotAvatar, "animate", failing)
    out = tmp_path / "out.mp4"
    argv = ("animate", "--checkpoint", world["ckpt"], world["source"], world["images"], "--landmarks",
            world["root"] / "source.json", "--driving-landmarks", world["root"] / "driving.json", "--out", out,
            "--batch", 2, "--no-sr", "--no-compare", "--quiet")
    with pytest.raises(RuntimeError, match="simulated"):
        _run(*argv)
    assert not out.exists()
    done = sorted((tmp_path / "out_frames").iterdir())
    assert [p.name for p in done] == ["000000.png", "000001.png", "run.json"]
    assert _frames(tmp_path / "out.partial.mp4").shape == (2, 32, 32, 3)  # closed properly: playable
    with pytest.raises(ValueError, match="rendered with other arguments \\(different: --seed\\)"):
        _run(*argv, "--resume", "--seed", 1)
    calls.clear()
    assert _run(*argv, "--resume") == 0
    assert calls == [2]  # only the two missing frames were rendered
    assert _frames(out).shape == (4, 32, 32, 3)
    assert not (tmp_path / "out_frames").exists() and not (tmp_path / "out.partial.mp4").exists()


def test_frames_rendered_after_a_resume_equal_an_uninterrupted_run(world, tmp_path, monkeypatch):
    """Killed after the first batch, then resumed: the PNG frames, the video and the side-by-side equal an
    uninterrupted run's, bitwise. With --relative-pose the motion is relative to the first driving frame, which the
    resumed run does not render again but must still take as the reference."""
    from oneshot.models import OneShotAvatar

    # the source is the second portrait (the first driving frame, the reference, is another head pose)
    (tmp_path / "source.json").write_text(json.dumps({"landmarks": world["lm"][1].tolist()}))
    common = ("animate", "--checkpoint", world["ckpt"], world["images"] / "000001.png", world["images"],
              "--landmarks", tmp_path / "source.json", "--driving-landmarks", world["root"] / "driving.json",
              "--batch", 2, "--no-sr", "--relative-pose", "--keep-frames", "--quiet")
    full, out = tmp_path / "full" / "out.mp4", tmp_path / "resumed" / "out.mp4"
    assert _run(*common, "--out", full) == 0
    calls = []
    original = OneShotAvatar.animate

    def killed_in_the_second_batch(self, *args, **kwargs):
        calls.append(args[2].shape[0])  # (avatar, coeffs, cameras [F, 25])
        if len(calls) == 2:
            raise RuntimeError("killed (simulated)")
        return original(self, *args, **kwargs)

    monkeypatch.setattr(OneShotAvatar, "animate", killed_in_the_second_batch)
    with pytest.raises(RuntimeError, match="simulated"):
        _run(*common, "--out", out)
    calls.clear()
    assert _run(*common, "--out", out, "--resume") == 0
    assert calls == [2]  # frames 2 and 3 rendered again, 0 and 1 reused
    names = [f"{i:06d}.png" for i in range(4)]
    assert sorted(p.name for p in (tmp_path / "full" / "out_frames").glob("*.png")) == names
    for name in names:
        a, b = read_image(tmp_path / "full" / "out_frames" / name), read_image(tmp_path / "resumed" / "out_frames" / name)
        assert np.array_equal(a, b), name
    for video in ("out.mp4", "out_compare.mp4"):
        assert np.array_equal(_frames(tmp_path / "full" / video), _frames(tmp_path / "resumed" / video)), video
    # the relative pose matters here: the re-rendered frames are not those of each frame's absolute pose
    absolute = tmp_path / "absolute" / "out.mp4"
    monkeypatch.setattr(OneShotAvatar, "animate", original)
    assert _run(*[c for c in common if c != "--relative-pose"], "--out", absolute) == 0
    assert not np.array_equal(read_image(tmp_path / "absolute" / "out_frames" / names[3]),
                              read_image(tmp_path / "full" / "out_frames" / names[3]))


def test_without_the_faces_extra_the_error_names_it(world, tmp_path, monkeypatch):
    from oneshot.face3d import detect

    def missing():
        raise detect.FacesUnavailableError(detect.EXTRA_HINT + " (import failed: ModuleNotFoundError)")

    monkeypatch.setattr(detect, "_solutions", missing)
    src, lm, images, ckpt = world["source"], world["root"] / "source.json", world["images"], world["ckpt"]
    with pytest.raises(ValueError, match=r"no --landmarks FILE .* needs the faces extra: .*pip install 'oneshot-avatar\[faces\]'"):
        _run("reconstruct", "--checkpoint", ckpt, src, "--out", tmp_path / "r")
    with pytest.raises(ValueError, match=r"no --driving-landmarks FILE .* needs the faces extra: .*oneshot-avatar\[faces\]"):
        _run("animate", "--checkpoint", ckpt, src, images, "--landmarks", lm, "--out", tmp_path / "o.mp4")
    # with landmark files the extra is not needed (no matte then: the background is kept, and said so)
    assert _run("reconstruct", "--checkpoint", ckpt, src, "--landmarks", lm, "--out", tmp_path / "r", "--frames", 1,
                "--no-sr", "--quiet") == 0


def test_bad_arguments_say_what_to_supply(world, tmp_path):
    src, lm, images = world["source"], world["root"] / "source.json", world["images"]
    ckpt, drv = world["ckpt"], world["root"] / "driving.json"
    with pytest.raises(FileNotFoundError, match="avatar checkpoint: no such file"):
        _run("reconstruct", "--checkpoint", tmp_path / "none.safetensors", src, "--landmarks", lm, "--out", tmp_path)
    with pytest.raises(ValueError, match="--matte and --no-matte contradict"):
        _run("reconstruct", "--checkpoint", ckpt, src, "--landmarks", lm, "--matte", src, "--no-matte", "--out",
             tmp_path / "r")
    np.save(tmp_path / "three.npy", world["lm"][:3])
    with pytest.raises(ValueError, match="landmarks for 3 frames, .* has 4 frames"):
        _run("animate", "--checkpoint", ckpt, src, images, "--landmarks", lm, "--driving-landmarks",
             tmp_path / "three.npy", "--out", tmp_path / "o.mp4")
    (tmp_path / "driving.txt").write_text("x")
    with pytest.raises(ValueError, match=r"unsupported file type '\.txt'; expected a video, an image or a folder"):
        _run("animate", "--checkpoint", ckpt, src, tmp_path / "driving.txt", "--landmarks", lm,
             "--driving-landmarks", drv, "--out", tmp_path / "o.mp4")
    with pytest.raises(FileNotFoundError, match="no such file or folder"):
        _run("animate", "--checkpoint", ckpt, src, tmp_path / "none.mp4", "--landmarks", lm,
             "--driving-landmarks", drv, "--out", tmp_path / "o.mp4")
    with pytest.raises(ValueError, match="--out must be an .mp4 file"):
        _run("animate", "--checkpoint", ckpt, src, images, "--landmarks", lm, "--driving-landmarks", drv,
             "--out", tmp_path / "o.avi")
    np.save(tmp_path / "five.npy", world["lm"][0, [36, 42, 30, 48, 54]])
    with pytest.raises(ValueError, match=r"5 landmarks only align the face; .*\(or pass --recon"):
        _run("reconstruct", "--checkpoint", ckpt, src, "--landmarks", tmp_path / "five.npy", "--out", tmp_path / "r")
    np.save(tmp_path / "normalised.npy", world["lm"][0] / R)
    with pytest.raises(ValueError, match="span less than a pixel"):
        _run("reconstruct", "--checkpoint", ckpt, src, "--landmarks", tmp_path / "normalised.npy", "--out",
             tmp_path / "r", "--quiet")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="--device cuda: this torch has no usable CUDA"):
            _run("reconstruct", "--checkpoint", ckpt, src, "--landmarks", lm, "--out", tmp_path / "r", "--device",
                 "cuda")
