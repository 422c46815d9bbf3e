"""Training: losses, the dual discriminator, pair sampling, the two-stage trainer, metrics and the demo."""

from .trainer import TrainConfig, Trainer, load_checkpoint, save_checkpoint_atomic

__all__ = ["TrainConfig", "Trainer", "load_checkpoint", "save_checkpoint_atomic"]
