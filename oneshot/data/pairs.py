"""Training pairs from a face dataset: a source and a target of the same identity (another expression and/or
view), drawn as a pure function of (seed, step), so a resumed run sees exactly the batches an uninterrupted one
would, and every rank of a distributed run takes its own share of one global batch."""

from __future__ import annotations

import torch

from .format import FaceDataset
from ..face3d import Coeffs, MorphableModel

__all__ = ["PairSampler", "collate_pairs"]


class PairSampler:
    """Batches of (source, target) index pairs within identities.

    Each step draws `batch_size` sources uniformly (without replacement when the dataset allows), and for each a
    target among the other samples of its identity (itself when it has none). `rank`/`world_size` split the
    global batch between processes.
    """

    def __init__(self, dataset: FaceDataset, batch_size: int, seed: int = 0, *, rank: int = 0, world_size: int = 1):
        if len(dataset) == 0:
            raise ValueError(f"the dataset at {dataset.root} has no samples")
        if batch_size < 1 or batch_size % world_size:
            raise ValueError(f"batch_size must be a positive multiple of the world size {world_size}, got {batch_size}")
        self.dataset, self.batch_size, self.seed = dataset, batch_size, int(seed)
        self.rank, self.world_size = rank, world_size
        self.identity_of = [s["identity"] for s in dataset.samples]

    def pairs(self, step: int) -> list[tuple[int, int]]:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + int(step))
        n = len(self.dataset)
        if self.batch_size <= n:
            sources = torch.randperm(n, generator=g)[: self.batch_size].tolist()
        else:
            sources = torch.randint(n, (self.batch_size,), generator=g).tolist()
        out = []
        for s in sources:
            group = [i for i in self.dataset.identities[self.identity_of[s]] if i != s] or [s]
            out.append((s, group[int(torch.randint(len(group), (1,), generator=g))]))
        share = self.batch_size // self.world_size
        return out[self.rank * share:(self.rank + 1) * share]


def _coeffs(items: list[dict], model: MorphableModel) -> Coeffs:
    keys = ("identity", "expression", "albedo", "lighting", "rotation", "translation")
    return Coeffs(*(torch.stack([it["coeffs"][k].float() for it in items]) for k in keys), model=model.fingerprint)


def collate_pairs(dataset: FaceDataset, pairs: list[tuple[int, int]], model: MorphableModel, device=None) -> dict:
    """The avatar's training batch for index pairs: images with their mattes applied (background -1), cameras,
    coefficients of `model` (the dataset must have been made with it)."""
    if dataset.model is not None and dataset.model != model.fingerprint:
        raise ValueError(f"the dataset at {dataset.root} was made with morphable model {dataset.model}, the avatar "
                         f"uses {model.fingerprint}")
    src = [dataset[i] for i, _ in pairs]
    tgt = [dataset[j] for _, j in pairs]

    def images(items):
        return torch.stack([(it["image"] + 1) * it["matte"] - 1 for it in items])

    batch = {"source_image": images(src), "source_camera": torch.stack([it["camera"] for it in src]),
             "source_coeffs": _coeffs(src, model), "target_image": images(tgt),
             "target_camera": torch.stack([it["camera"] for it in tgt]), "target_coeffs": _coeffs(tgt, model),
             "target_mask": torch.stack([it["matte"] for it in tgt])}
    if device is not None:
        batch = {k: v.to(device) for k, v in batch.items()}
    return batch
