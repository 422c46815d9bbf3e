"""`oneshot demo` end to end on a tiny budget (the real demo trains for minutes; here a few steps): the report, its
numbers recomputed here with scikit-image from renders made in the test, and a second run that resumes the first."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

pytestmark = pytest.mark.filterwarnings("ignore:PerceptualLoss. no VGG-19 weights")

CASES = {"reconstruction (source view)": "reconstruction", "reenactment (other view and expression)": "self"}


def _fit(x, size):  # [B, 3, H, W] in [-1, 1] -> [B, H', W', 3] float64 numpy in [0, 1], as the protocol resizes
    x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=x.shape[-1] > size)
    return ((x.double() + 1) / 2).clamp(0, 1).permute(0, 2, 3, 1).numpy()


def _psnr_ssim(images, targets):
    """Means over the pairs of scikit-image's PSNR and SSIM (Wang et al.'s settings) of [N, H, W, 3] arrays."""
    from skimage.metrics import peak_signal_noise_ratio, structural_similarity

    p = [peak_signal_noise_ratio(t, x, data_range=1.0) for x, t in zip(images, targets)]
    s = [structural_similarity(t, x, data_range=1.0, channel_axis=-1, gaussian_weights=True, sigma=1.5,
                               use_sample_covariance=False) for x, t in zip(images, targets)]
    return float(np.mean(p)), float(np.mean(s))


def _recomputed(model, ds, protocol):
    """`model`'s raw renders of `protocol`'s pairs (evenly spaced samples, seed 0; each pair rendered alone) and the
    targets, both [N, r, r, 3] in [0, 1]; and the pairs."""
    from oneshot.data import collate_pairs
    from oneshot.eval import build_pairs
    from oneshot.eval.protocol import deterministic_renders

    pairs = build_pairs(ds, protocol)
    renders, targets = [], []
    with torch.no_grad(), deterministic_renders(model.eval()):
        for pair in pairs:
            b = collate_pairs(ds, [pair], model.face_model)
            r = model(b, seed=0, super_resolve=False)["full"].features[:, :3].clamp(-1, 1)
            renders.append(_fit(r, r.shape[-1]))
            targets.append(_fit(b["target_image"], r.shape[-1]))
    return np.concatenate(renders), np.concatenate(targets), pairs


def test_demo_writes_a_complete_report_and_a_second_run_resumes(tmp_path, monkeypatch, one_thread):
    from oneshot.cli import demo
    from oneshot.data import FaceDataset
    from oneshot.models import OneShotAvatar
    from oneshot.train import Trainer

    resumed, scored = [], []
    real_resume, real_evaluate = Trainer.resume, demo.evaluate

    def resume(self, *args, **kwargs):
        resumed.append(real_resume(self, *args, **kwargs))
        return resumed[-1]

    def evaluate(model, ds, protocol, **kwargs):  # the demo scores the untrained model first, then the trained one
        scored.append((model, protocol))
        return real_evaluate(model, ds, protocol, **kwargs)

    monkeypatch.setattr(Trainer, "resume", resume)
    monkeypatch.setattr(demo, "evaluate", evaluate)
    log = []
    kw = dict(minutes=0.02, n_train=8, n_test=4, orbit_frames=6, progress=False, log=log.append)
    summary = demo.run_demo(tmp_path, **kw)
    assert resumed == [] and not any("resumed at step" in line for line in log)
    rep = tmp_path / "report"
    for name in ("reconstruction.png", "reenactment.png", "cross_reenactment.png", "orbit.gif", "orbit_frames.png",
                 "loss.png", "metrics.json", "report.md"):
        assert (rep / name).is_file(), name
    metrics = json.loads((rep / "metrics.json").read_text())
    steps = metrics["steps"]
    assert steps == summary["steps"] >= 1
    from PIL import Image

    with Image.open(rep / "orbit.gif") as im:
        assert im.n_frames == 6

    # Every number of the report, recomputed with scikit-image: the trained model from the checkpoint the demo wrote,
    # the untrained one as the demo scored it, and the mean training image (matted) as a prediction.
    train, test = FaceDataset(tmp_path / "data" / "train"), FaceDataset(tmp_path / "data" / "test")
    trained = OneShotAvatar.load(tmp_path / "run" / "avatar.safetensors", scored[0][0].face_model)
    untrained = {protocol: m for m, protocol in scored[0::2]}
    assert [p for _, p in scored] == ["reconstruction", "reconstruction", "self", "self"]
    r = trained.config.render_resolution
    mean = 0
    for i in range(len(train)):
        it = train[i]
        mean = mean + _fit((((it["image"] + 1) * it["matte"]) - 1)[None], r) / len(train)
    for name, protocol in CASES.items():
        got = metrics["results"][name]
        renders, targets, pairs = _recomputed(trained, test, protocol)
        assert got["trained"]["n"] == len(pairs) >= 2
        psnr, ssim = _psnr_ssim(renders, targets)
        assert got["trained"]["psnr"] == pytest.approx(psnr, rel=1e-5) and got["trained"]["ssim"] == pytest.approx(
            ssim, rel=1e-5, abs=1e-6), name
        before, _, _ = _recomputed(untrained[protocol], test, protocol)
        psnr0, ssim0 = _psnr_ssim(before, targets)
        assert got["untrained"]["psnr"] == pytest.approx(psnr0, rel=1e-5), name
        assert got["untrained"]["ssim"] == pytest.approx(ssim0, rel=1e-5, abs=1e-6), name
        assert np.abs(before - renders).max() > 0  # training changed the renders
        psnr_m, ssim_m = _psnr_ssim(np.repeat(mean, len(targets), 0), targets)
        assert got["mean_training_image"]["psnr"] == pytest.approx(psnr_m, rel=1e-6), name
        assert got["mean_training_image"]["ssim"] == pytest.approx(ssim_m, rel=1e-6, abs=1e-9), name
        assert got["gain_db_vs_untrained"] == pytest.approx(psnr - psnr0, abs=1e-4), name

    # `oneshot evaluate` on the demo's checkpoint and held-out data computes the demo's numbers.
    from oneshot.cli import main

    for name, protocol in CASES.items():
        out = tmp_path / f"eval_{protocol}"
        assert main(["evaluate", "--checkpoint", str(tmp_path / "run" / "avatar.safetensors"), "--data",
                     str(tmp_path / "data" / "test"), "--protocol", protocol, "--no-sr", "--no-faces", "--out",
                     str(out), "--quiet"]) == 0
        got = json.loads((out / "metrics.json").read_text())
        assert got["pairs"] == metrics["results"][name]["trained"]["n"]
        for m in ("psnr", "ssim"):
            assert got["metrics"][m]["mean"] == pytest.approx(metrics["results"][name]["trained"][m], abs=1e-9), m

    # A second run resumes the first one's training (its last checkpoint) instead of starting over: it says so, and
    # its log continues the step count.
    first_records = (tmp_path / "run" / "log.jsonl").read_text().splitlines()
    log.clear()
    again = demo.run_demo(tmp_path, **kw)
    assert resumed == [steps]
    assert f"resumed at step {steps}" in log
    records = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    new = records[len(first_records):]
    assert new and min(rec["step"] for rec in new) > steps and new[-1]["step"] == again["steps"] > steps
