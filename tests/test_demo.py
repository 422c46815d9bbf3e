"""`oneshot demo` end to end on a tiny budget (the real demo trains for minutes; here a few steps)."""

from __future__ import annotations

import json

import pytest

pytestmark = pytest.mark.filterwarnings("ignore:PerceptualLoss. no VGG-19 weights")


def test_demo_writes_a_complete_report(tmp_path):
    from oneshot.cli.demo import run_demo

    summary = run_demo(tmp_path, minutes=0.02, n_train=8, n_test=4, orbit_frames=6, progress=False, log=lambda *a: None)
    rep = tmp_path / "report"
    for name in ("reconstruction.png", "reenactment.png", "cross_reenactment.png", "orbit.gif", "orbit_frames.png",
                 "loss.png", "metrics.json", "report.md"):
        assert (rep / name).is_file(), name
    metrics = json.loads((rep / "metrics.json").read_text())
    assert metrics["steps"] == summary["steps"] >= 1
    for case in metrics["results"].values():
        for who in ("trained", "untrained", "mean_training_image"):
            assert 0 < case[who]["psnr"] < 100 and -1 <= case[who]["ssim"] <= 1
    from PIL import Image

    with Image.open(rep / "orbit.gif") as im:
        assert im.n_frames == 6
    # `oneshot evaluate` on the demo's checkpoint and held-out data computes the demo's numbers.
    from oneshot.cli import main

    for name, protocol in (("reconstruction (source view)", "reconstruction"),
                           ("reenactment (other view and expression)", "self")):
        out = tmp_path / f"eval_{protocol}"
        assert main(["evaluate", "--checkpoint", str(tmp_path / "run" / "avatar.safetensors"), "--data",
                     str(tmp_path / "data" / "test"), "--protocol", protocol, "--no-sr", "--no-faces", "--out",
                     str(out), "--quiet"]) == 0
        got = json.loads((out / "metrics.json").read_text())
        assert got["pairs"] == metrics["results"][name]["trained"]["n"]
        for m in ("psnr", "ssim"):
            assert got["metrics"][m]["mean"] == pytest.approx(metrics["results"][name]["trained"][m], abs=1e-9), m
    # A second run resumes the first one's training instead of starting over.
    again = run_demo(tmp_path, minutes=0.02, n_train=8, n_test=4, orbit_frames=6, progress=False, log=lambda *a: None)
    assert again["steps"] > summary["steps"]
