"""Measure the face front end on the two public-domain portraits (../shared/assets) and write the README's table
and picture: per portrait and morphable model, the landmark reprojection error of the fit at 512 x 512, the
expression range, detection and fit time; the 478 -> 68 map against dlib's 68-point predictor (when dlib-bin and
face-recognition-models are installed); the jitter of tracked landmarks on a video of a portrait under a known
smooth motion, before and after the one-euro filter.

    python benchmarks/bench_faces.py [--out benchmarks/results/faces_cpu.md] [--picture docs/images/faces.png]

Needs the faces extra (bash scripts/install_faces.sh) and ../shared beside the checkout.
"""

from __future__ import annotations

import argparse
import importlib.util
import time
from pathlib import Path

import numpy as np
import torch

import _harness as H

from oneshot.face3d.track import landmark_jitter, smooth_landmarks, track_landmarks
from oneshot.face3d import builtin_model, estimate_face, from_ict_facekit, project_landmarks, render
from oneshot.face3d import mediapipe68
from oneshot.face3d.detect import FaceFrontEnd
from oneshot.face3d.smooth import jitter
from oneshot.video import moving_still, read_frames, read_image, write_video

ROOT = Path(__file__).resolve().parent.parent
ASSETS = ROOT.parent / "shared" / "assets"
PORTRAITS = [ASSETS / "portraits" / "astronaut.png", ASSETS / "portraits" / "grace_hopper.jpg"]
GROUPS = {"jaw": range(0, 17), "brows": range(17, 27), "nose": range(27, 36), "eyes": range(36, 48),
          "lips": range(48, 68)}

# Peizhi Yan's correspondence for the jaw (iBUG 0-16), the map this package's interior points follow; its jaw
# sits on mesh vertices (pairs averaged), ours between them on the face oval.
CITED_JAW = ((127,), (234,), (93,), (132, 58), (58, 172), (136,), (150,), (176,), (152,), (400,), (379,), (365,),
             (397, 288), (361,), (323,), (454,), (356,))


def _dlib68():
    """(detector, predictor) of dlib's 68-point model, or None."""
    if importlib.util.find_spec("dlib") is None or importlib.util.find_spec("face_recognition_models") is None:
        return None
    import dlib

    spec = importlib.util.find_spec("face_recognition_models")  # its __init__ breaks on setuptools >= 84
    models = Path(list(spec.submodule_search_locations)[0]) / "models"
    return dlib.get_frontal_face_detector(), dlib.shape_predictor(str(models / "shape_predictor_68_face_landmarks.dat"))


def _map_check(rgb, mesh, dl) -> dict:
    det, pred = dl
    rects = sorted(det(rgb, 1), key=lambda r: -r.area())
    s = pred(rgb, rects[0])
    ref = torch.tensor([[s.part(i).x + 0.5, s.part(i).y + 0.5] for i in range(68)], dtype=torch.float64)
    ours = mediapipe68.ibug68_from_mediapipe(mesh[:, :2].double())
    cited = ours.clone()
    for k, idx in enumerate(CITED_JAW):
        cited[k] = mesh[list(idx), :2].double().mean(0)
    iod = (ref[36:42].mean(0) - ref[42:48].mean(0)).norm()
    out = {}
    for name, lm in (("ours", ours), ("cited", cited)):
        e = (lm - ref).norm(dim=-1) / iod
        out[name] = {g: float(e[list(r)].mean()) for g, r in GROUPS.items()} | {"all": float(e.mean())}
    return out


def _overlay(crop, lm, proj, render_img, mask):
    """The crop with the fitted mesh blended in and the landmarks (detected: green, fitted model's: red)."""
    from PIL import Image, ImageDraw

    c = crop.permute(1, 2, 0).numpy()
    r = render_img.permute(1, 2, 0).numpy()
    m = mask[0].numpy()[..., None] * 0.55
    img = Image.fromarray(((c * (1 - m) + r * m).clip(0, 1) * 255).astype(np.uint8))
    d = ImageDraw.Draw(img)
    for (x, y), col in [(p, (40, 255, 40)) for p in lm.tolist()] + [(p, (255, 40, 40)) for p in proj.tolist()]:
        d.ellipse([x - 2.5, y - 2.5, x + 2.5, y + 2.5], fill=col)
    return np.asarray(img)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "faces_cpu.md"))
    ap.add_argument("--picture", default=str(ROOT / "docs" / "images" / "faces.png"))
    a = ap.parse_args()
    torch.set_num_threads(2)
    models = {"built-in": builtin_model(), "ICT-FaceKit": from_ict_facekit(ASSETS / "ict_facekit_face_f16.npz")}
    dl = _dlib68()
    rows, map_rows, tiles = [], [], []
    with FaceFrontEnd() as front:
        for path in PORTRAITS:
            rgb = read_image(path)
            front(rgb)  # warm-up (graph start)
            t = time.perf_counter()
            faces = front(rgb)
            t_det = time.perf_counter() - t
            t = time.perf_counter()
            matte = front.matte(rgb)
            t_matte = time.perf_counter() - t
            if dl is not None:
                map_rows.append((path.name, _map_check(rgb, faces[0].mesh, dl)))
            img = torch.from_numpy(rgb.astype(np.float32) / 255).permute(2, 0, 1)
            stack = torch.cat([img, matte[None]])[None]
            row_tiles = []
            for name, model in models.items():
                estimate_face(stack, faces[0].landmarks[None], model=model, size=512)  # warm-up
                t = time.perf_counter()
                est = estimate_face(stack, faces[0].landmarks[None], model=model, size=512)
                t_fit = time.perf_counter() - t
                e = est.coeffs.expression[0]
                top = sorted(zip(e.tolist(), model.exp_names), reverse=True)[:2]
                rows.append((path.name, name, len(faces), float(est.mean_error[0]), float(est.max_error[0]),
                             float(e.min()), float(e.max()), ", ".join(f"{n} {v:.2f}" for v, n in top),
                             np.degrees(est.coeffs.rotation[0].numpy()), t_det * 1e3, t_matte * 1e3, t_fit * 1e3))
                proj = project_landmarks(model, est.coeffs, 512)[0]
                with torch.no_grad():
                    r = render(model, model.vertices(est.coeffs.identity, est.coeffs.expression), est.camera, 512)
                row_tiles.append(_overlay(est.image[0, :3].clamp(0, 1), est.landmarks[0], proj, r.image[0], r.mask[0]))
            tiles.append(np.concatenate(row_tiles, 1))
    # jitter on a video of a portrait under a known motion (H.264, noise added)
    rng = np.random.default_rng(0)
    jit = []
    for path in PORTRAITS:
        frames, mats = moving_still(read_image(path), 100, fps=25.0, seconds_per_cycle=4.0)
        noisy = np.clip(frames.astype(np.float32) + rng.normal(0, 6, frames.shape), 0, 255).astype(np.uint8)
        video = Path("/tmp") / f"oneshot_faces_{path.stem}.mp4"
        write_video(video, noisy, 25.0)
        t = time.perf_counter()
        lm = track_landmarks(read_frames(video)).double()
        t_track = (time.perf_counter() - t) / len(frames)
        M = torch.from_numpy(mats)
        stills = torch.einsum("nij,nkj->nki", torch.linalg.inv(M[:, :, :2]), lm - M[:, None, :, 2])
        truth = torch.einsum("nij,kj->nki", M[:, :, :2], stills.mean(0)) + M[:, None, :, 2]
        sm = smooth_landmarks(lm, 25.0)
        jit.append((path.name, float(jitter(lm - truth)), float(jitter(sm - truth)),
                    float((lm - truth).norm(dim=-1).pow(2).mean().sqrt()),
                    float((sm - truth).norm(dim=-1).pow(2).mean().sqrt()),
                    float(landmark_jitter(lm)), float(landmark_jitter(sm)), t_track * 1e3))
    Path(a.picture).parent.mkdir(parents=True, exist_ok=True)
    from PIL import Image

    pic = np.concatenate(tiles, 0)
    Image.fromarray(pic).resize((pic.shape[1] // 2, pic.shape[0] // 2), Image.LANCZOS).save(a.picture)
    lines = ["# Face front end on the shared portraits", "", " ".join(f"{k}={v}" for k, v in H.machine().items()), "",
             "Fits at a 512 x 512 crop (EG3D framing). Error: distance between the detected 68 landmarks and the fitted "
             "model's, in pixels. Times per image: Face Mesh (478 points), selfie matte, fit (Levenberg-Marquardt).", "",
             "| portrait | model | faces | mean px | max px | expression range | strongest | pitch, yaw, roll ° | "
             "detect ms | matte ms | fit ms |", "|---|---|---:|---:|---:|---|---|---|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r[0]} | {r[1]} | {r[2]} | {r[3]:.2f} | {r[4]:.2f} | [{r[5]:.2f}, {r[6]:.2f}] | {r[7]} | "
                     f"{', '.join(f'{v:.1f}' for v in r[8])} | {r[9]:.1f} | {r[10]:.1f} | {r[11]:.0f} |")
    lines += ["", "Tracked landmarks on a 4-second, 25 fps video of each portrait under a known smooth similarity motion "
              "(Gaussian noise sigma 6/255 per frame, H.264): jitter = RMS second difference of the distance to the "
              "true path (px/frame²); RMS = distance to the true path (px); landmark jitter as `oneshot animate` "
              "reports it (inter-ocular distances/frame², motion included).", "",
              "| video | jitter raw | jitter smoothed | RMS raw | RMS smoothed | reported raw | reported smoothed | "
              "track ms/frame |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for j in jit:
        lines.append(f"| {j[0]} | {j[1]:.3f} | {j[2]:.3f} | {j[3]:.3f} | {j[4]:.3f} | {j[5]:.4f} | {j[6]:.4f} | "
                     f"{j[7]:.1f} |")
    if map_rows:
        lines += ["", "The 478 -> 68 map against dlib's 68-point predictor (mean distance / inter-ocular distance; "
                  "`cited`: Peizhi Yan's jaw, `ours`: the jaw on the face oval; interior points are the same):", "",
                  "| portrait | map | jaw | brows | nose | eyes | lips | all |", "|---|---|---:|---:|---:|---:|---:|---:|"]
        for name, res in map_rows:
            for which in ("cited", "ours"):
                v = res[which]
                lines.append(f"| {name} | {which} | " + " | ".join(f"{v[g]:.3f}" for g in (*GROUPS, "all")) + " |")
    else:
        lines += ["", "(dlib not installed: the map check against its 68-point predictor was skipped)"]
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"wrote {a.out} and {a.picture}")


if __name__ == "__main__":
    main()
