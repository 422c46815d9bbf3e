"""``oneshot train`` (stage 1 or 2, one GPU or many: ``torchrun --nproc_per_node N -m oneshot train ...``) and
``oneshot convert-goha`` (the released GOHA checkpoint as a oneshot avatar)."""

from __future__ import annotations

from ._common import add_device, add_quiet, add_resume, add_seed

__all__ = ["add_parser", "add_convert_parser"]


def _train(a) -> int:
    from ..train import TrainConfig, Trainer

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

    from ..face3d import load_model
    from ..models.convert import load_goha_checkpoint

    out = Path(a.out)
    if out.suffix != ".safetensors":
        raise ValueError(f"OUT must be a .safetensors file, got {str(out)!r}")
    model = load_goha_checkpoint(a.checkpoint, load_model(a.face_model))
    out.parent.mkdir(parents=True, exist_ok=True)
    model.save(out)
    print(f"wrote {out} ({sum(p.numel() for p in model.parameters()):,} parameters, preset goha-release "
          f"(shared up_xy, as released); use it with oneshot reconstruct|animate --checkpoint")
    return 0


def add_parser(sub) -> None:
    t = sub.add_parser("train", help="train an avatar (stage 1 or 2) on a dataset directory")
    t.add_argument("--config", default=None, help="a JSON training config (oneshot.train.TrainConfig fields)")
    t.add_argument("--data", required=True, help="dataset directory (oneshot data synth, or real preprocessed data)")
    t.add_argument("--out", required=True, help="run directory: checkpoints, avatar.safetensors, logs, images")
    t.add_argument("--stage", type=int, choices=(1, 2), default=None, help="1: all but super-resolution; 2: SR + GAN")
    add_resume(t, "continue from RUN_DIR/checkpoints/last.pt")
    t.add_argument("--steps", type=int, default=None)
    t.add_argument("--batch-size", type=int, default=None)
    t.add_argument("--minutes", type=float, default=None, help="stop after this much wall time (checkpointed)")
    t.add_argument("--init", default=None, help="start from these avatar weights (e.g. stage 2 from stage 1)")
    t.add_argument("--vgg-weights", default=None, help="torchvision vgg19 weights (local file) for the perceptual loss")
    add_seed(t, default=None, what="the initial weights and the pairs (default: the config's)")
    add_device(t)
    add_quiet(t)
    t.set_defaults(func=_train)


def add_convert_parser(sub) -> None:
    g = sub.add_parser("convert-goha", help="the released GOHA checkpoint as a oneshot avatar (.safetensors)")
    g.add_argument("checkpoint", help="GOHA's checkpoint825000.ckpt (or its model_state_dict)")
    g.add_argument("out", help="the avatar file to write (.safetensors)")
    g.add_argument("--face-model", default=None,
                   help="the morphable model the avatar will take coefficients of (default: the built-in one; "
                        "GOHA used the BFM: BFM_model_front.mat)")
    g.set_defaults(func=_convert_goha)
