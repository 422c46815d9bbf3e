"""The on-disk format of face datasets (synthetic and real preprocessed data alike).

A dataset directory holds::

    meta.json        {"format": "oneshot-faces", "version": 1, "resolution": R, "model": "<fingerprint>"}
    samples.jsonl    one JSON object per line and sample, appended as samples are written
    images/<id>.png  RGB, R x R
    mattes/<id>.png  8-bit alpha matte (255 = head), R x R
    masks/<id>.png   RGB masks: red = eyes, green = mouth, blue = face region (255 inside), R x R

Each line of samples.jsonl: ``{"id": "000012", "identity": "id0003", "camera": [25 floats],
"coeffs": {"identity": [...], "expression": [...], "albedo": [...], "lighting": [27], "rotation": [3],
"translation": [3]}}``. Samples that share ``identity`` show the same person (in another expression and/or
view): the trainer draws its pairs from them. Appending one line per finished sample means a crash never
loses written samples; a truncated last line is reported, not silently dropped.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from .. import cameras
from ..face3d import Coeffs

__all__ = ["FORMAT", "VERSION", "FormatError", "SampleWriter", "FaceDataset"]

FORMAT = "oneshot-faces"
VERSION = 1
_COEFF_KEYS = ("identity", "expression", "albedo", "lighting", "rotation", "translation")


class FormatError(ValueError):
    """A dataset directory or one of its files does not follow the format."""


def _image_io():
    try:
        from PIL import Image
    except ImportError:  # pragma: no cover
        raise ImportError("reading and writing datasets needs pillow (pip install pillow)") from None
    return Image


class SampleWriter:
    """Writes samples into a dataset directory (creating it), one finished sample at a time."""

    def __init__(self, root, resolution: int, model_fingerprint: str):
        self.root = Path(root)
        self.resolution = int(resolution)
        for sub in ("images", "mattes", "masks"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        meta = {"format": FORMAT, "version": VERSION, "resolution": self.resolution, "model": model_fingerprint}
        meta_path = self.root / "meta.json"
        if meta_path.exists():
            old = json.loads(meta_path.read_text())
            if {k: old.get(k) for k in meta} != meta:
                raise FormatError(f"{meta_path} describes another dataset ({old}); use a new directory")
        else:
            meta_path.write_text(json.dumps(meta, indent=1) + "\n")
        self._index = open(self.root / "samples.jsonl", "a", encoding="utf-8")

    def write(self, sample_id: str, identity: str, image: np.ndarray, matte: np.ndarray, masks: np.ndarray,
              camera, coeffs: Coeffs) -> None:
        """image [R, R, 3], matte [R, R], masks [R, R, 3] uint8; camera [25]; coeffs of one sample."""
        Image = _image_io()
        R = self.resolution
        for name, a, shape in (("image", image, (R, R, 3)), ("matte", matte, (R, R)), ("masks", masks, (R, R, 3))):
            if a.shape != shape or a.dtype != np.uint8:
                raise ValueError(f"{name} must be uint8 {list(shape)}, got {a.dtype} {list(a.shape)}")
        Image.fromarray(image).save(self.root / "images" / f"{sample_id}.png")
        Image.fromarray(matte).save(self.root / "mattes" / f"{sample_id}.png")
        Image.fromarray(masks).save(self.root / "masks" / f"{sample_id}.png")
        entry = {"id": sample_id, "identity": identity, "camera": [float(x) for x in torch.as_tensor(camera).reshape(-1)],
                 "coeffs": {k: [float(x) for x in getattr(coeffs, k).reshape(-1)] for k in _COEFF_KEYS}}
        self._index.write(json.dumps(entry) + "\n")
        self._index.flush()  # the sample is complete on disk once its line is

    def close(self) -> None:
        self._index.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class FaceDataset(torch.utils.data.Dataset):
    """A dataset directory, validated on open (meta and index) and on read (each sample's files).

    Items: dict with image [3, R, R] float in [-1, 1], matte [1, R, R] in [0, 1], masks [3, R, R] in {0, 1}
    (eyes, mouth, face), camera [25], coeffs (a dict of 1-D tensors), identity (str), id (str).
    """

    def __init__(self, root):
        self.root = Path(root)
        if not self.root.is_dir():
            raise FormatError(f"{self.root}: not a directory")
        meta_path = self.root / "meta.json"
        if not meta_path.is_file():
            raise FormatError(f"{self.root}: missing meta.json (not a {FORMAT} dataset)")
        try:
            meta = json.loads(meta_path.read_text())
        except json.JSONDecodeError as e:
            raise FormatError(f"{meta_path}: not valid JSON ({e})") from None
        if meta.get("format") != FORMAT or meta.get("version") != VERSION:
            raise FormatError(f"{meta_path}: expected format {FORMAT!r} version {VERSION}, got "
                              f"{meta.get('format')!r} version {meta.get('version')!r}")
        if not isinstance(meta.get("resolution"), int) or meta["resolution"] < 1:
            raise FormatError(f"{meta_path}: resolution must be a positive int, got {meta.get('resolution')!r}")
        self.resolution, self.model = meta["resolution"], meta.get("model")
        index = self.root / "samples.jsonl"
        if not index.is_file():
            raise FormatError(f"{self.root}: missing samples.jsonl")
        self.samples = []
        for n, line in enumerate(index.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            try:
                s = json.loads(line)
            except json.JSONDecodeError:
                raise FormatError(f"{index}:{n}: not a JSON object (a truncated write?)") from None
            missing = [k for k in ("id", "identity", "camera", "coeffs") if k not in s]
            if missing:
                raise FormatError(f"{index}:{n}: missing {', '.join(missing)}")
            if len(s["camera"]) != 25:
                raise FormatError(f"{index}:{n}: camera must have 25 values, got {len(s['camera'])}")
            try:
                cameras.split_label(torch.tensor(s["camera"]))
            except ValueError as e:
                raise FormatError(f"{index}:{n}: {e}") from None
            bad = [k for k in _COEFF_KEYS if k not in s["coeffs"]]
            if bad:
                raise FormatError(f"{index}:{n}: coeffs missing {', '.join(bad)}")
            self.samples.append(s)
        self.identities: dict[str, list[int]] = {}
        for i, s in enumerate(self.samples):
            self.identities.setdefault(s["identity"], []).append(i)

    def __len__(self) -> int:
        return len(self.samples)

    def _read(self, sub: str, sample_id: str, mode: str) -> np.ndarray:
        Image = _image_io()
        path = self.root / sub / f"{sample_id}.png"
        if not path.is_file():
            raise FormatError(f"{path}: missing")
        try:
            with Image.open(path) as im:
                if im.size != (self.resolution, self.resolution):
                    raise FormatError(f"{path}: expected {self.resolution} x {self.resolution}, got "
                                      f"{im.size[0]} x {im.size[1]}")
                return np.asarray(im.convert(mode))
        except OSError as e:
            raise FormatError(f"{path}: not a readable image ({e})") from None

    def __getitem__(self, i: int) -> dict:
        s = self.samples[i]
        image = torch.from_numpy(self._read("images", s["id"], "RGB").copy()).permute(2, 0, 1).float() / 127.5 - 1
        matte = torch.from_numpy(self._read("mattes", s["id"], "L").copy())[None].float() / 255
        masks = (torch.from_numpy(self._read("masks", s["id"], "RGB").copy()).permute(2, 0, 1) > 127).float()
        return {"id": s["id"], "identity": s["identity"], "image": image, "matte": matte, "masks": masks,
                "camera": torch.tensor(s["camera"]), "coeffs": {k: torch.tensor(v) for k, v in s["coeffs"].items()}}
