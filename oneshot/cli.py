"""The ``oneshot`` command.

    oneshot data synth --out DIR --n N [--model PATH] [--resolution 512] [--seed S] [--per-identity 4]
    oneshot data prepare SRC... --out DIR [--face-model PATH] [--resolution 512] [--frames 8] [--workers N]
    oneshot data check DIR
    oneshot train [--config CONFIG.json] --data DIR --out RUN_DIR [--stage 1|2] [--resume] [--steps N]
    oneshot reconstruct --checkpoint CKPT SOURCE.png --out DIR ...
    oneshot animate --checkpoint CKPT SOURCE.png DRIVING --out OUT.mp4 ...
    oneshot evaluate --checkpoint CKPT --data DIR|VIDEOS... --protocol reconstruction|self|cross --out DIR ...
    oneshot demo [--out DIR] [--minutes M]
    oneshot convert-goha GOHA.ckpt OUT.safetensors [--face-model PATH]

Multi-GPU training: ``torchrun --nproc_per_node N -m oneshot train ...``.
"""

from __future__ import annotations

import argparse
import sys

__all__ = ["main"]


def _synth(a) -> int:
    from .data import synthesize

    n = synthesize(a.out, a.n, model_path=a.model, resolution=a.resolution, seed=a.seed,
                   per_identity=a.per_identity, progress=not a.quiet)
    print(f"wrote {n} samples to {a.out}")
    return 0


def _prepare(a) -> int:
    from .data import prepare

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
    from .data import FaceDataset, FormatError

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


def _train(a) -> int:
    from .train import TrainConfig, Trainer

    cfg = TrainConfig.from_file(a.config) if a.config else TrainConfig()
    overrides = {k: v for k, v in (("stage", a.stage), ("steps", a.steps), ("batch_size", a.batch_size),
                                   ("init", a.init), ("seed", a.seed), ("max_minutes", a.minutes)) if v is not None}
    if a.vgg_weights is not None:
        overrides["vgg_weights"] = a.vgg_weights
    if overrides:
        import dataclasses

        cfg = dataclasses.replace(cfg, **overrides)
    trainer = Trainer(cfg, a.data, a.out, device=a.device, progress=not a.quiet)
    if a.resume:
        if not (trainer.out / "checkpoints" / "last.pt").is_file():
            raise FileNotFoundError(f"--resume: no checkpoint at {trainer.out / 'checkpoints' / 'last.pt'}")
        step = trainer.resume()
        print(f"resumed at step {step}")
    trainer.fit()
    if trainer.rank == 0:
        print(f"stage {cfg.stage}: {trainer.step} steps; model in {trainer.out / 'avatar.safetensors'}")
    return 0


def _convert_goha(a) -> int:
    from pathlib import Path

    from .face3d import load_model
    from .models.convert import load_goha_checkpoint

    out = Path(a.out)
    if out.suffix != ".safetensors":
        raise ValueError(f"OUT must be a .safetensors file, got {str(out)!r}")
    model = load_goha_checkpoint(a.checkpoint, load_model(a.face_model))
    out.parent.mkdir(parents=True, exist_ok=True)
    model.save(out)
    print(f"wrote {out} ({sum(p.numel() for p in model.parameters()):,} parameters, preset goha-release "
          f"(shared up_xy, as released); use it with oneshot reconstruct|animate --checkpoint")
    return 0


def _demo(a) -> int:
    from .train.demo import run_demo

    summary = run_demo(a.out, a.minutes, seed=a.seed, progress=not a.quiet)
    return 0 if summary else 1


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="oneshot", description="One-shot neural head avatars: data, training, animation.")
    sub = p.add_subparsers(dest="command", required=True)
    data = sub.add_parser("data", help="datasets").add_subparsers(dest="data_command", required=True)
    s = data.add_parser("synth", help="render a synthetic dataset from a morphable model")
    s.add_argument("--out", required=True, help="output directory (created; appended to if it is one already)")
    s.add_argument("--n", type=int, required=True, help="number of samples")
    s.add_argument("--model", default=None, help="a BFM .mat or ICT-FaceKit .npz (default: the built-in model)")
    s.add_argument("--resolution", type=int, default=512)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--per-identity", type=int, default=4, help="samples per identity (pairs for training)")
    s.add_argument("--quiet", action="store_true", help="no progress bar")
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
    pr.add_argument("--quiet", action="store_true", help="no progress bar")
    pr.set_defaults(func=_prepare)
    c = data.add_parser("check", help="validate a dataset directory")
    c.add_argument("dir")
    c.set_defaults(func=_check)
    t = sub.add_parser("train", help="train an avatar (stage 1 or 2) on a dataset directory")
    t.add_argument("--config", default=None, help="a JSON training config (oneshot.train.TrainConfig fields)")
    t.add_argument("--data", required=True, help="dataset directory (oneshot data synth, or real preprocessed data)")
    t.add_argument("--out", required=True, help="run directory: checkpoints, avatar.safetensors, logs, images")
    t.add_argument("--stage", type=int, choices=(1, 2), default=None, help="1: all but super-resolution; 2: SR + GAN")
    t.add_argument("--resume", action="store_true", help="continue from RUN_DIR/checkpoints/last.pt")
    t.add_argument("--steps", type=int, default=None)
    t.add_argument("--batch-size", type=int, default=None)
    t.add_argument("--minutes", type=float, default=None, help="stop after this much wall time (checkpointed)")
    t.add_argument("--init", default=None, help="start from these avatar weights (e.g. stage 2 from stage 1)")
    t.add_argument("--vgg-weights", default=None, help="torchvision vgg19 weights (local file) for the perceptual loss")
    t.add_argument("--seed", type=int, default=None)
    t.add_argument("--device", default=None)
    t.add_argument("--quiet", action="store_true")
    t.set_defaults(func=_train)
    try:
        from .cli_infer import add_parsers
    except ImportError:  # pragma: no cover - the inference commands need the video extra
        add_parsers = None
    if add_parsers is not None:
        add_parsers(sub)
    from .eval.command import add_parser as add_evaluate

    add_evaluate(sub)
    d = sub.add_parser("demo", help="synthesize data, train the tiny avatar on CPU for a few minutes, write a report")
    d.add_argument("--out", default="oneshot_demo", help="output directory (default ./oneshot_demo)")
    d.add_argument("--minutes", type=float, default=10.0, help="training time budget in minutes (default 10)")
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--quiet", action="store_true")
    d.set_defaults(func=_demo)
    g = sub.add_parser("convert-goha", help="the released GOHA checkpoint as a oneshot avatar (.safetensors)")
    g.add_argument("checkpoint", help="GOHA's checkpoint825000.ckpt (or its model_state_dict)")
    g.add_argument("out", help="the avatar file to write (.safetensors)")
    g.add_argument("--face-model", default=None,
                   help="the morphable model the avatar will take coefficients of (default: the built-in one; "
                        "GOHA used the BFM: BFM_model_front.mat)")
    g.set_defaults(func=_convert_goha)
    a = p.parse_args(argv)
    try:
        return a.func(a)
    except (ValueError, FileNotFoundError, FileExistsError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
