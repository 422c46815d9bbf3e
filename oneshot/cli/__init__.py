"""The ``oneshot`` command: one module per command family, the shared flags and run bookkeeping in
:mod:`oneshot.cli._common`. The command layer parses, prints and returns exit codes; everything a library user would
need lives in the library (:mod:`oneshot.face3d`, :mod:`oneshot.data`, :mod:`oneshot.models`, :mod:`oneshot.train`,
:mod:`oneshot.eval`, :mod:`oneshot.export`).

    oneshot data synth --out DIR --n N [--model PATH] [--resolution 512] [--seed S] [--per-identity 4]
    oneshot data prepare SRC... --out DIR [--face-model PATH] [--resolution 512] [--frames 8] [--workers N]
    oneshot data check DIR
    oneshot train [--config CONFIG.json] --data DIR --out RUN_DIR [--stage 1|2] [--resume] [--steps N]
    oneshot reconstruct --checkpoint CKPT SOURCE.png --out DIR ...
    oneshot animate --checkpoint CKPT SOURCE.png DRIVING --out OUT.mp4 ...
    oneshot evaluate --checkpoint CKPT --data DIR|VIDEOS... --protocol reconstruction|self|cross|geometry --out DIR ...
    oneshot export --checkpoint CKPT PORTRAIT --out head.glb|.ply|.obj [--driver IMAGE | --frames VIDEO] ...
    oneshot demo [--out DIR] [--minutes M]
    oneshot convert-goha GOHA.ckpt OUT.safetensors [--face-model PATH]

Multi-GPU training: ``torchrun --nproc_per_node N -m oneshot train ...``.
"""

from __future__ import annotations

import argparse
import sys

from . import animate, data, demo, evaluate, export, infer, train
from ._common import USER_ERRORS

__all__ = ["main", "build_parser"]


def build_parser() -> argparse.ArgumentParser:
    """The whole command line's parser (each subcommand sets ``func``, which returns an exit code)."""
    p = argparse.ArgumentParser(prog="oneshot", description="One-shot neural head avatars: data, training, animation.")
    sub = p.add_subparsers(dest="command", required=True)
    data.add_parser(sub)
    train.add_parser(sub)
    infer.add_parser(sub)
    animate.add_parser(sub)
    evaluate.add_parser(sub)
    export.add_parser(sub)
    demo.add_parser(sub)
    train.add_convert_parser(sub)
    return p


def main(argv=None) -> int:
    a = build_parser().parse_args(argv)
    try:
        return a.func(a)
    except USER_ERRORS as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
