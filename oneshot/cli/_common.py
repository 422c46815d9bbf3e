"""What the commands share, written once: the common flags (--device, --seed, --quiet, --resume, --recon,
--face-model, --sr / --no-sr), resolving them, loading an avatar checkpoint, and the error convention (bad input is
a ValueError / FileNotFoundError / FileExistsError, printed as one ``error:`` line with exit code 2)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

__all__ = ["add_device", "add_seed", "add_quiet", "add_resume", "add_recon", "add_face_model", "add_sr",
           "add_checkpoint", "resolve_device", "info", "check_file", "load_avatar", "super_resolve", "USER_ERRORS"]

#: Exceptions that mean bad input: printed as one line, exit code 2 (anything else is a bug and keeps its traceback).
USER_ERRORS = (ValueError, FileNotFoundError, FileExistsError)


def add_device(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cuda when available)")


def add_seed(p: argparse.ArgumentParser, default: int | None = 0, what: str = "the renders' sampling noise") -> None:
    p.add_argument("--seed", type=int, default=default,
                   help=f"seed of {what}" + (f" (default {default})" if default is not None else ""))


def add_quiet(p: argparse.ArgumentParser) -> None:
    p.add_argument("--quiet", action="store_true", help="no progress bar or notes")


def add_resume(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument("--resume", action="store_true", help=f"{what} (refused if the arguments that decide the results "
                                                         "differ)")


def add_checkpoint(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", required=True, help="the avatar (.safetensors written by OneShotAvatar.save)")


def add_face_model(p: argparse.ArgumentParser, help: str) -> None:
    p.add_argument("--face-model", default=None, metavar="PATH", help=help)


def add_recon(p: argparse.ArgumentParser, help: str) -> None:
    p.add_argument("--recon", default=None, metavar="EPOCH_20.pth", help=help)


def add_sr(p: argparse.ArgumentParser, what: str = "render") -> None:
    p.add_argument("--sr", dest="sr", action=argparse.BooleanOptionalAction, default=None,
                   help=f"--sr: {what} the super-resolved image; --no-sr: the low-resolution render (its RGB features). "
                        "Default: super-resolved when the checkpoint's super-resolution network was trained (stage 2), "
                        "else the low-resolution render, with a note")


def resolve_device(name):
    """The torch device of a ``--device`` value (None: cuda when available), or a ValueError saying why not."""
    import torch

    if name is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except (RuntimeError, ValueError):
        raise ValueError(f"--device must be cpu, cuda or cuda:N, got {name!r}") from None
    if dev.type not in ("cpu", "cuda"):
        raise ValueError(f"--device must be cpu, cuda or cuda:N, got {name!r}")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {name}: this torch has no usable CUDA device (torch.cuda.is_available() is "
                         f"False); use --device cpu")
    return dev


def info(a, msg: str) -> None:
    """A note on stderr, unless --quiet."""
    if not getattr(a, "quiet", False):
        print(msg, file=sys.stderr)


def check_file(value, flag: str) -> None:
    """FileNotFoundError naming the flag when `value` is given and is not a file."""
    if value is not None and not Path(value).is_file():
        raise FileNotFoundError(f"{flag}: no such file: {value}")


def load_avatar(checkpoint, face_model_path, device):
    """(avatar on `device` in eval mode, its morphable model); a checkpoint built for another morphable model is a
    ValueError that says to pass --face-model."""
    from ..face3d import load_model
    from ..models import OneShotAvatar

    face = load_model(face_model_path)
    try:
        model = OneShotAvatar.load(checkpoint, face)
    except ValueError as e:
        if "built for morphable model" in str(e):
            raise ValueError(f"{checkpoint}: {e}; pass --face-model with the morphable model it was trained "
                             f"with") from None
        raise
    return model.to(device).eval(), face


def super_resolve(a, model) -> bool:
    """Whether to output the super-resolved image: --sr / --no-sr when given, else whether the checkpoint's
    super-resolution network was trained (a note says so when it was not, --quiet or not: an untrained one paints
    colour noise)."""
    if a.sr is not None:
        return a.sr
    if model.super_resolution_trained:
        return True
    r = model.config.render_resolution
    # said even with --quiet: it changes what the command outputs
    print(f"note: the checkpoint's super-resolution network was never trained (stage 1 only): using the {r} x {r} "
          f"render instead (--sr forces the super-resolved output)", file=sys.stderr)
    return False
