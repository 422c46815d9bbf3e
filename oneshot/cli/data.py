"""``oneshot data synth|prepare|check``: datasets on disk (:mod:`oneshot.data`)."""

from __future__ import annotations

import sys

from ._common import add_quiet, add_seed

__all__ = ["add_parser"]


def _synth(a) -> int:
    from ..data import synthesize

    n = synthesize(a.out, a.n, model_path=a.model, resolution=a.resolution, seed=a.seed,
                   per_identity=a.per_identity, progress=not a.quiet)
    print(f"wrote {n} samples to {a.out}")
    return 0


def _prepare(a) -> int:
    from ..data import prepare

    r = prepare(a.sources, a.out, model_path=a.face_model, resolution=a.resolution, frames=a.frames,
                workers=a.workers, recon_path=a.recon, progress=not a.quiet)
    done = f" ({r.resumed} sources done by an earlier run)" if r.resumed else ""
    print(f"wrote {r.written} samples from {r.sources} sources to {a.out}{done}")
    if r.frames_without_face:
        print(f"{r.frames_without_face} sampled video frames had no face and were skipped", file=sys.stderr)
    for what, items in (("no face found in", r.no_face), ("could not read", r.failed)):
        if items:
            print(f"{what} {len(items)} sources (listed in {a.out}/prepare.jsonl):", file=sys.stderr)
            for x in items[:20]:
                print(f"  {x}", file=sys.stderr)
            if len(items) > 20:
                print(f"  ... and {len(items) - 20} more", file=sys.stderr)
    return 0


def _check(a) -> int:
    from ..data import FaceDataset, FormatError

    try:
        ds = FaceDataset(a.dir)
        for i in range(len(ds)):
            ds[i]
    except FormatError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"{a.dir}: {len(ds)} samples, {len(ds.identities)} identities, {ds.resolution} x {ds.resolution}, "
          f"model {ds.model}: ok")
    return 0


def add_parser(sub) -> None:
    data = sub.add_parser("data", help="datasets").add_subparsers(dest="data_command", required=True)
    s = data.add_parser("synth", help="render a synthetic dataset from a morphable model")
    s.add_argument("--out", required=True, help="output directory (created; appended to if it is one already)")
    s.add_argument("--n", type=int, required=True, help="number of samples")
    s.add_argument("--model", default=None, help="a BFM .mat or ICT-FaceKit .npz (default: the built-in model)")
    s.add_argument("--resolution", type=int, default=512)
    add_seed(s, what="the identities, expressions, poses and lighting")
    s.add_argument("--per-identity", type=int, default=4, help="samples per identity (pairs for training)")
    add_quiet(s)
    s.set_defaults(func=_synth)
    pr = data.add_parser("prepare", help="images and videos -> a dataset (needs the faces extra)",
                         description="Detect, align, fit and matte the faces of images and videos (folders are "
                                     "searched recursively) into a dataset directory: one identity per video (FRAMES "
                                     "frames sampled evenly), one per image. Resumable: run it again to finish an "
                                     "interrupted run. Sources without a face are skipped and listed.")
    pr.add_argument("sources", nargs="+", metavar="SRC", help="image or video files, or folders of them")
    pr.add_argument("--out", required=True, help="dataset directory (created; an interrupted run's is resumed)")
    pr.add_argument("--face-model", default=None, metavar="PATH",
                    help="morphable model to fit: BFM .mat or ICT-FaceKit .npz (default: the built-in model; "
                         "ICT-FaceKit fits real faces better)")
    pr.add_argument("--recon", default=None, metavar="EPOCH_20.pth",
                    help="Deep3DFaceRecon's checkpoint: regress the coefficients (with --face-model BFM_model_front.mat)")
    pr.add_argument("--resolution", type=int, default=512, help="crop size (default 512)")
    pr.add_argument("--frames", type=int, default=8, help="frames sampled evenly from each video (default 8)")
    pr.add_argument("--workers", type=int, default=1, help="worker processes (default 1)")
    add_quiet(pr)
    pr.set_defaults(func=_prepare)
    c = data.add_parser("check", help="validate a dataset directory")
    c.add_argument("dir")
    c.set_defaults(func=_check)
