"""Real images and videos -> the dataset format (:mod:`oneshot.data.format`): ``oneshot data prepare``.

Per source (an image, or a video of which ``frames`` frames are sampled evenly): the face front end
(:mod:`oneshot.face3d.detect`, the ``faces`` extra) finds the largest face, its 68 landmarks and a person
matte; :func:`~oneshot.face3d.estimate_face` crops it as the avatar sees faces (EG3D's framing) and fits the
morphable model (or regresses the coefficients with Deep3DFaceRecon's network when ``recon`` is given), which
gives the camera label and the coefficients; the fitted mesh, rendered in the crop, gives the eye / mouth / face
masks. Every video is one identity (its sampled frames are pairs for the trainer), every image its own.

Crash safety and resuming: a sample exists once its line is in ``samples.jsonl`` (the format's rule), and each
finished source is recorded in ``prepare.jsonl`` (its samples, the frames without a face). Running the same
command again skips the recorded sources and any sample already written, so an interrupted run resumes where it
stopped. Sources in which no face was found, and unreadable ones, are listed in ``prepare.jsonl`` and reported.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

__all__ = ["prepare", "PrepareReport", "find_sources"]

LOG = "prepare.jsonl"


@dataclass
class PrepareReport:
    written: int = 0  # samples written by this run
    sources: int = 0  # sources processed by this run
    resumed: int = 0  # sources skipped because an earlier run finished them
    no_face: list[str] = field(default_factory=list)  # sources without any usable face
    failed: list[str] = field(default_factory=list)  # "path: error" of unreadable sources
    frames_without_face: int = 0  # sampled video frames skipped (no face)


def find_sources(paths) -> list[Path]:
    """Images and videos under `paths` (files, or folders searched recursively), sorted, without duplicates."""
    from ..video import IMAGE_EXTENSIONS, VIDEO_EXTENSIONS

    exts = {e.lower() for e in (*IMAGE_EXTENSIONS, *VIDEO_EXTENSIONS)}
    out, seen = [], set()
    for p in map(Path, paths):
        if p.is_dir():
            found = sorted(q for q in p.rglob("*") if q.is_file() and q.suffix.lower() in exts)
        elif p.is_file():
            if p.suffix.lower() not in exts:
                raise ValueError(f"{p}: not an image or a video (expected one of {', '.join(sorted(exts))})")
            found = [p]
        else:
            raise FileNotFoundError(f"source: no such file or folder: {p}")
        for q in found:
            r = q.resolve()
            if r not in seen:
                seen.add(r)
                out.append(r)
    return out


def _source_key(path: Path) -> str:
    stem = re.sub(r"[^A-Za-z0-9_-]+", "_", path.stem)[:40] or "src"
    return f"{stem}-{hashlib.sha1(str(path).encode()).hexdigest()[:8]}"


def _sample_frames(path: Path, frames: int):
    """[(frame index, uint8 RGB)] of an image (one) or a video (`frames` evenly spaced ones)."""
    from ..video import IMAGE_EXTENSIONS, read_frames, read_image

    if path.suffix.lower() in {e.lower() for e in IMAGE_EXTENSIONS}:
        return [(0, read_image(path))], False
    video = read_frames(path)
    n = len(video)
    want = sorted(set(np.linspace(0, n - 1, min(frames, n)).round().astype(int).tolist()))
    out, wanted = [], set(want)
    for i, f in enumerate(video):
        if i in wanted:
            out.append((i, np.ascontiguousarray(f)))
        if i >= want[-1]:
            break
    return out, True


class _Worker:
    """Per-process state: the front end, the morphable model, the regressor."""

    def __init__(self, model_path, resolution: int, recon_path):
        import torch

        from ..face3d import load_model, load_recon_checkpoint
        from ..face3d.detect import FaceFrontEnd

        torch.set_num_threads(1)
        self.model = load_model(model_path)
        self.recon = load_recon_checkpoint(recon_path) if recon_path is not None else None
        self.front = FaceFrontEnd(max_faces=4)
        self.resolution = resolution

    def sample(self, rgb: np.ndarray):
        """A sample dict of one frame, or None without a face."""
        import torch

        from ..face3d import estimate_face, render

        faces = self.front(rgb)
        if not faces:
            return None
        matte = self.front.matte(rgb)
        R = self.resolution
        image = torch.from_numpy(rgb.astype(np.float32) / 255).permute(2, 0, 1)
        stack = torch.cat([image, matte[None]])[None]  # the matte is cropped with the image
        est = estimate_face(stack, faces[0].landmarks[None], model=self.model, recon=self.recon, size=R)
        crop = est.image[0].clamp(0, 1)
        verts = self.model.vertices(est.coeffs.identity, est.coeffs.expression)
        with torch.no_grad():
            r = render(self.model, verts, est.camera, R)
        masks = torch.cat([r.regions["eyes"][0], r.regions["mouth"][0], r.regions["face"][0]])
        to8 = lambda t: (t.clamp(0, 1) * 255 + 0.5).to(torch.uint8).numpy()  # noqa: E731
        c = est.coeffs
        return {"image": to8(crop[:3].permute(1, 2, 0)), "matte": to8(crop[3]), "masks": to8(masks.permute(1, 2, 0)),
                "camera": est.camera[0].tolist(),
                "coeffs": {k: getattr(c, k)[0].tolist() for k in ("identity", "expression", "albedo", "lighting",
                                                                  "rotation", "translation")},
                "fit_error": None if est.mean_error is None else float(est.mean_error[0]) * 512 / R}

    def source(self, path: Path, frames: int) -> dict:
        key = _source_key(path)
        try:
            sampled, is_video = _sample_frames(path, frames)
        except (OSError, ValueError) as e:
            return {"source": str(path), "status": "failed", "error": f"{type(e).__name__}: {e}", "samples": []}
        samples, missing = [], []
        for idx, rgb in sampled:
            try:
                s = self.sample(rgb)
            except (ValueError, RuntimeError) as e:  # e.g. degenerate landmarks: this source fails, the run goes on
                return {"source": str(path), "status": "failed", "error": f"frame {idx}: {type(e).__name__}: {e}",
                        "samples": []}
            if s is None:
                missing.append(idx)
                continue
            s["id"] = f"{key}-{idx:06d}"
            samples.append(s)
        return {"source": str(path), "status": "ok" if samples else "no_face", "identity": key, "video": is_video,
                "samples": samples, "frames_without_face": missing}


_WORKER: _Worker | None = None


def _init_worker(model_path, resolution, recon_path) -> None:
    global _WORKER
    _WORKER = _Worker(model_path, resolution, recon_path)


def _run_source(args) -> dict:
    path, frames = args
    return _WORKER.source(path, frames)


def _read_log(out: Path) -> dict[str, dict]:
    done = {}
    log = out / LOG
    if log.is_file():
        for line in log.read_text(encoding="utf-8").splitlines():
            try:
                e = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut by a crash: that source is redone
            done[e["source"]] = e
    return done


def _written_ids(out: Path) -> set[str]:
    index = out / "samples.jsonl"
    ids = set()
    if index.is_file():
        for line in index.read_text(encoding="utf-8").splitlines():
            try:
                ids.add(json.loads(line)["id"])
            except (json.JSONDecodeError, KeyError):
                continue
    return ids


def prepare(sources, out, *, model_path=None, resolution: int = 512, frames: int = 8, workers: int = 1,
            recon_path=None, progress: bool = True) -> PrepareReport:
    """Turn images and videos (`sources`: files or folders) into a dataset in `out`; see the module's text.
    `frames`: frames sampled evenly from each video; `workers`: processes (each with its own front end)."""
    from .._progress import progress_bar

    from ..face3d import Coeffs, load_model
    from ..face3d.detect import FaceFrontEnd
    from .format import SampleWriter

    if not (isinstance(frames, int) and frames >= 1):
        raise ValueError(f"frames must be an int >= 1, got {frames!r}")
    if not (isinstance(workers, int) and workers >= 1):
        raise ValueError(f"workers must be an int >= 1, got {workers!r}")
    if not (isinstance(resolution, int) and resolution >= 32):
        raise ValueError(f"resolution must be an int >= 32, got {resolution!r}")
    FaceFrontEnd(max_faces=1).close()  # fail now, with the extra's name, if it is missing
    paths = find_sources(sources)
    if not paths:
        raise ValueError(f"no images or videos found in {', '.join(map(str, sources))}")
    out = Path(out)
    model = load_model(model_path)
    if recon_path is not None:
        if not Path(recon_path).is_file():
            raise FileNotFoundError(f"--recon: no such file: {recon_path}")
        sizes = (model.num_identity, model.num_expression, model.num_albedo)
        if sizes != (80, 64, 80):
            raise ValueError(f"--recon regresses Deep3DFaceRecon's BFM coefficients (80/64/80 modes); the morphable "
                             f"model has {sizes[0]}/{sizes[1]}/{sizes[2]}: pass --face-model BFM_model_front.mat")
    report = PrepareReport()
    out.mkdir(parents=True, exist_ok=True)
    done = _read_log(out)
    todo = [p for p in paths if str(p) not in done]
    report.resumed = len(paths) - len(todo)
    written = _written_ids(out)
    jobs = [(p, frames) for p in todo]
    with SampleWriter(out, resolution, model.fingerprint) as writer, open(out / LOG, "a", encoding="utf-8") as log, \
            progress_bar(len(paths), initial=report.resumed, desc="prepare", unit="source", enabled=progress) as bar:
        if workers == 1:
            _init_worker(model_path, resolution, recon_path)
            results = map(_run_source, jobs)
            pool = None
        else:
            import multiprocessing as mp

            pool = mp.get_context("spawn").Pool(workers, _init_worker, (model_path, resolution, recon_path))
            results = pool.imap_unordered(_run_source, jobs)
        try:
            for res in results:
                for s in res["samples"]:
                    if s["id"] in written:
                        continue
                    c = Coeffs(**{k: _t(v) for k, v in s["coeffs"].items()}, model=model.fingerprint)
                    writer.write(s["id"], res["identity"], s["image"], s["matte"], s["masks"], s["camera"], c)
                    written.add(s["id"])
                    report.written += 1
                entry = {k: v for k, v in res.items() if k != "samples"}
                entry["samples"] = [{"id": s["id"], "fit_error_px512": s["fit_error"]} for s in res["samples"]]
                log.write(json.dumps(entry) + "\n")
                log.flush()
                report.sources += 1
                if res.get("video") and res["status"] == "ok":
                    report.frames_without_face += len(res["frames_without_face"])
                if res["status"] == "no_face":
                    report.no_face.append(res["source"])
                elif res["status"] == "failed":
                    report.failed.append(f"{res['source']}: {res['error']}")
                bar.update(1)
        finally:
            if pool is not None:
                pool.terminate()
                pool.join()
            elif _WORKER is not None:
                _WORKER.front.close()
    return report


def _t(v):
    import torch

    return torch.tensor(v, dtype=torch.float32)[None]
