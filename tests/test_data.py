"""Synthetic data and the dataset format: determinism, grouping by identity, validation errors, the CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from oneshot.cli import main as cli
from oneshot.data import FaceDataset, FormatError, synthesize


@pytest.fixture(scope="module")
def synth_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth")
    assert synthesize(out, 6, resolution=48, seed=7, per_identity=3, progress=False) == 6
    return out


def test_synthetic_dataset_reads_back(synth_dir):
    ds = FaceDataset(synth_dir)
    assert len(ds) == 6 and ds.resolution == 48 and ds.model.startswith("builtin:")
    assert sorted(ds.identities) == ["id00000", "id00001"] and all(len(v) == 3 for v in ds.identities.values())
    item = ds[4]
    assert item["image"].shape == (3, 48, 48) and float(item["image"].min()) >= -1 and float(item["image"].max()) <= 1
    assert item["matte"].shape == (1, 48, 48) and 0.1 < float(item["matte"].mean()) < 0.9
    assert item["masks"].shape == (3, 48, 48)
    eyes, mouth, face = item["masks"]
    assert float(eyes.sum()) > 0 and float(mouth.sum()) > 0
    assert bool((face <= item["matte"][0]).all())  # regions lie on the head
    # Same identity within a group, different expressions and cameras.
    a, b = ds[0], ds[1]
    assert torch.equal(a["coeffs"]["identity"], b["coeffs"]["identity"])
    assert not torch.equal(a["camera"], b["camera"])
    assert not torch.equal(ds[0]["coeffs"]["identity"], ds[3]["coeffs"]["identity"])


def test_synthesis_is_deterministic(tmp_path, synth_dir):
    synthesize(tmp_path, 6, resolution=48, seed=7, per_identity=3, progress=False)
    for sub in ("images", "mattes", "masks"):
        for f in (synth_dir / sub).iterdir():
            assert (tmp_path / sub / f.name).read_bytes() == f.read_bytes(), f
    assert (tmp_path / "samples.jsonl").read_text() == (synth_dir / "samples.jsonl").read_text()
    other = tmp_path / "other"
    synthesize(other, 2, resolution=48, seed=8, progress=False)
    assert (other / "images" / "000000.png").read_bytes() != (synth_dir / "images" / "000000.png").read_bytes()


def test_validation_errors(tmp_path, synth_dir):
    with pytest.raises(FormatError, match=r"missing meta\.json"):
        FaceDataset(tmp_path)
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(synth_dir, bad)
    with open(bad / "samples.jsonl", "a") as f:
        f.write('{"id": "000009", "ident')  # a truncated write
    with pytest.raises(FormatError, match=r"samples\.jsonl:7: not a JSON object \(a truncated write\?\)"):
        FaceDataset(bad)
    lines = (synth_dir / "samples.jsonl").read_text().splitlines()
    entry = json.loads(lines[0])
    entry["camera"] = entry["camera"][:24]
    (bad / "samples.jsonl").write_text(json.dumps(entry) + "\n")
    with pytest.raises(FormatError, match=r"camera must have 25 values, got 24"):
        FaceDataset(bad)
    (bad / "samples.jsonl").write_text(lines[0] + "\n")
    (bad / "images" / "000000.png").unlink()
    with pytest.raises(FormatError, match=r"images/000000\.png: missing"):
        FaceDataset(bad)[0]
    from PIL import Image

    Image.fromarray(np.zeros((10, 10, 3), dtype=np.uint8)).save(bad / "images" / "000000.png")
    with pytest.raises(FormatError, match=r"expected 48 x 48, got 10 x 10"):
        FaceDataset(bad)[0]
    meta = json.loads((bad / "meta.json").read_text())
    (bad / "meta.json").write_text(json.dumps({**meta, "version": 99}))
    with pytest.raises(FormatError, match=r"expected format 'oneshot-faces' version 1, got 'oneshot-faces' version 99"):
        FaceDataset(bad)


def test_appending_to_a_dataset_keeps_earlier_samples(tmp_path):
    synthesize(tmp_path, 2, resolution=32, seed=1, progress=False)
    with pytest.raises(FormatError, match=r"describes another dataset"):
        synthesize(tmp_path, 2, resolution=64, seed=1, progress=False)
    assert len(FaceDataset(tmp_path)) == 2


def test_cli_synth_and_check(tmp_path, capsys):
    assert cli(["data", "synth", "--out", str(tmp_path / "d"), "--n", "3", "--resolution", "32", "--quiet"]) == 0
    assert cli(["data", "check", str(tmp_path / "d")]) == 0
    assert "3 samples" in capsys.readouterr().out
    assert cli(["data", "check", str(tmp_path / "missing")]) == 1
    assert "not a directory" in capsys.readouterr().err
    assert cli(["data", "synth", "--out", str(tmp_path / "e"), "--n", "2", "--model", str(tmp_path / "x.obj"),
                "--quiet"]) == 2
    assert "must be a BFM .mat or an ICT-FaceKit .npz" in capsys.readouterr().err
