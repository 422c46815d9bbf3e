"""The ``oneshot`` command.

    oneshot data synth --out DIR --n N [--model PATH] [--resolution 512] [--seed S] [--per-identity 4]
    oneshot data check DIR
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
    c = data.add_parser("check", help="validate a dataset directory")
    c.add_argument("dir")
    c.set_defaults(func=_check)
    a = p.parse_args(argv)
    try:
        return a.func(a)
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
