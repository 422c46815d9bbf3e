"""Training: losses, the dual discriminator and the two-stage trainer (pairs: :mod:`oneshot.data.pairs`)."""

from .trainer import TrainConfig, Trainer, load_checkpoint, save_checkpoint_atomic

__all__ = ["TrainConfig", "Trainer", "load_checkpoint", "save_checkpoint_atomic"]
