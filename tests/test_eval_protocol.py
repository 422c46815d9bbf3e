"""oneshot.eval's protocols and ``oneshot evaluate`` end to end on a random-init tiny avatar: the pairs, and every
score recomputed here from renders made in the test and the network files (test_eval.py tests the metrics and the
loaders themselves)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from oneshot.eval import metrics as M
from test_eval import _alexnet_file, _heads_file  # the network files in their real layouts


@pytest.fixture(scope="module")
def tiny_setup(tmp_path_factory):
    """A random-init tiny avatar and 3 synthetic identities x 3 samples at its input size."""
    from oneshot.data import FaceDataset, synthesize
    from oneshot.face3d import builtin_model
    from oneshot.models import AvatarConfig, OneShotAvatar

    root = tmp_path_factory.mktemp("eval")
    face = builtin_model()
    torch.manual_seed(0)
    model = OneShotAvatar(AvatarConfig.preset_config("tiny"), face)
    model.save(root / "avatar.safetensors")
    synthesize(root / "data", 9, model=face, resolution=model.config.image_size, seed=3, per_identity=3,
               progress=False)
    return root, FaceDataset(root / "data"), model


def test_protocol_pairs(tiny_setup, tmp_path):
    from oneshot.eval import build_pairs

    root, ds, _ = tiny_setup
    ids = sorted(ds.identities)
    first = [ds.identities[i][0] for i in ids]
    assert build_pairs(ds, "reconstruction") == [(f, f) for f in first]
    assert build_pairs(ds, "self") == [(ds.identities[i][0], t) for i in ids for t in ds.identities[i][1:]]
    assert build_pairs(ds, "self", max_targets=1, limit=2) == [(ds.identities[ids[0]][0], ds.identities[ids[0]][1]),
                                                              (ds.identities[ids[1]][0], ds.identities[ids[1]][1])]
    cross = build_pairs(ds, "cross")
    assert cross == [(first[k], t) for k in range(3) for t in ds.identities[ids[(k + 1) % 3]]]
    sid = {i: s["id"] for i, s in enumerate(ds.samples)}
    (tmp_path / "pairs.txt").write_text(f"# source driver\n{ids[2]} {sid[ds.identities[ids[0]][1]]}\n"
                                        f"{sid[first[0]]}, {ids[1]}\n")
    assert build_pairs(ds, "cross", pairs_file=tmp_path / "pairs.txt") == (
        [(first[2], ds.identities[ids[0]][1])] + [(first[0], t) for t in ds.identities[ids[1]]])
    (tmp_path / "bad.txt").write_text("nobody id0000\n")
    with pytest.raises(ValueError, match=r"bad.txt:1: 'nobody' is neither a sample id nor an identity"):
        build_pairs(ds, "cross", pairs_file=tmp_path / "bad.txt")
    with pytest.raises(ValueError, match="protocol must be one of"):
        build_pairs(ds, "selfie")
    with pytest.raises(ValueError, match="a pairs file is for the cross protocol"):
        build_pairs(ds, "self", pairs_file=tmp_path / "pairs.txt")


def _network_files(d):
    from oneshot.eval import ArcFace, FIDInception

    g = torch.Generator().manual_seed(5)
    _alexnet_file(d / "alexnet.pth", g)
    _heads_file(d / "alex.pth", g)
    torch.manual_seed(5)
    sd = {k: v for k, v in FIDInception().state_dict().items() if not k.endswith("num_batches_tracked")}
    for k, v in sd.items():  # He init: pool3 features of order 1 (PyTorch's default init leaves them ~1e-7)
        if k.endswith("conv.weight"):
            sd[k] = torch.randn(v.shape, generator=g) * math.sqrt(2 / v[0].numel())
    sd["fc.weight"], sd["fc.bias"] = torch.zeros(1008, 2048), torch.zeros(1008)
    torch.save(sd, d / "inception.pth")
    torch.save(ArcFace((2, 2, 2, 2)).state_dict(), d / "arcface.pth")
    return ["--lpips-alexnet", str(d / "alexnet.pth"), "--lpips-heads", str(d / "alex.pth"), "--inception",
            str(d / "inception.pth"), "--arcface", str(d / "arcface.pth")]


def _evaluate(args, capsys=None):
    from oneshot.cli import main

    return main(["evaluate", "--quiet"] + [str(a) for a in args])


def test_evaluate_command_end_to_end_with_every_metric_and_resume(tiny_setup, tmp_path, one_thread):
    import csv

    root, ds, model = tiny_setup
    nets = _network_files(tmp_path)
    out = tmp_path / "self"
    base = ["--checkpoint", root / "avatar.safetensors", "--data", root / "data", "--protocol", "self", "--no-sr",
            "--batch", "2", "--no-faces"]
    assert _evaluate(base + nets + ["--out", out]) == 0
    summary = json.loads((out / "metrics.json").read_text())
    rows = list(csv.DictReader(open(out / "samples.csv")))
    assert summary["pairs"] == len(rows) == 6 and summary["output"] == "raw render 32x32"
    assert set(summary["metrics"]) == {"psnr", "ssim", "csim", "lpips", "l1", "fid"}
    assert set(summary["skipped"]) == {"aed", "apd", "akd"}
    assert summary["metrics"]["psnr"]["mean"] == pytest.approx(np.mean([float(r["psnr"]) for r in rows]), rel=1e-12)
    table = (out / "table.md").read_text()
    assert "| PSNR ↑ | SSIM ↑ | CSIM ↑ | AED ↓ | APD ↓ | AKD ↓ | LPIPS ↓ | L1 ↓ | FID ↓ |" in table
    assert (out / "grid.png").is_file()

    # Every per-pair metric of the first batch, recomputed here from renders made in the test and the network
    # files; the FID features stored for it are the renders' and the TARGETS' (self-reenactment has ground truth).
    from oneshot.eval import arcface_crops, load_arcface, load_fid_inception, load_lpips

    pairs = [(ds.identities[i][0], t) for i in sorted(ds.identities) for t in ds.identities[i][1:]]
    assert [(r["source"], r["target"]) for r in rows] == [(ds.samples[a]["id"], ds.samples[b]["id"]) for a, b in pairs]
    r, t, src = _render_pairs(model, ds, pairs[:2])
    lpips = load_lpips(tmp_path / "alexnet.pth", tmp_path / "alex.pth")
    arcface, inception = load_arcface(tmp_path / "arcface.pth"), load_fid_inception(tmp_path / "inception.pth")
    with torch.no_grad():
        want = {"psnr": M.psnr(r, t), "ssim": M.ssim(r, t), "l1": M.l1(r, t),
                "lpips": lpips(r * 2 - 1, t * 2 - 1).double(),
                "csim": M.cosine_similarity(arcface(arcface_crops(r)), arcface(arcface_crops(t)))}
        f_render, f_target, f_source = inception(r).double(), inception(t).double(), inception(src).double()
    for m, v in want.items():
        got = [float(row[m]) for row in rows[:2]]
        assert got == pytest.approx(v.tolist(), rel=1e-5, abs=1e-6), m
    first = torch.load(sorted((out / "features").glob("*.pt"))[0], weights_only=True)
    torch.testing.assert_close(first["fake"], f_render, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(first["real"], f_target, rtol=1e-4, atol=1e-5)
    assert float((f_source - f_target).abs().max()) > 1e-2  # the source's would differ

    # Interrupted after the first batch: --resume finishes it with the same numbers; without it, a named error.
    lines = (out / "samples.jsonl").read_text().splitlines()
    (out / "samples.jsonl").write_text("\n".join(lines[:2]) + "\n")
    for f in sorted((out / "features").glob("*.pt"))[1:]:
        f.unlink()
    assert _evaluate(base + nets + ["--out", out]) == 2
    assert _evaluate(base + nets + ["--out", out, "--resume", "--seed", "1"]) == 2
    (out / "metrics.json").unlink()
    assert _evaluate(base + nets + ["--out", out, "--resume"]) == 0
    again = json.loads((out / "metrics.json").read_text())
    for k, v in summary["metrics"].items():
        got, want = again["metrics"][k], v
        assert got.get("mean", got.get("value")) == pytest.approx(want.get("mean", want.get("value")), rel=1e-9), k


def test_evaluate_skips_metrics_without_weights_and_says_what_they_need(tiny_setup, tmp_path, capsys, one_thread):
    root, ds, _ = tiny_setup
    args = ["--checkpoint", root / "avatar.safetensors", "--data", root / "data", "--no-sr", "--no-faces"]
    assert _evaluate(args + ["--protocol", "reconstruction", "--out", tmp_path / "r"]) == 0
    s = json.loads((tmp_path / "r" / "metrics.json").read_text())
    assert set(s["metrics"]) == {"l1", "psnr", "ssim"} and s["pairs"] == 3
    assert "alexnet-owt-7be5be79.pth" in s["skipped"]["lpips"] and "pt_inception" in s["skipped"]["fid"]
    assert "arcface_torch" in s["skipped"]["csim"]
    assert _evaluate(args + ["--protocol", "reconstruction", "--ssim", "skimage-default", "--out", tmp_path / "r7"]) == 0
    s7 = json.loads((tmp_path / "r7" / "metrics.json").read_text())
    assert "skimage-default: gaussian_weights=False, win_size=7" in s7["settings"]["ssim"]
    assert s7["metrics"]["ssim"]["mean"] != s["metrics"]["ssim"]["mean"]
    assert s7["metrics"]["psnr"]["mean"] == s["metrics"]["psnr"]["mean"]
    # cross-identity has no ground truth: with nothing to compute it it is refused, naming what it needs.
    assert _evaluate(args + ["--protocol", "cross", "--out", tmp_path / "c"]) == 2
    assert "--arcface (CSIM), --inception (FID) or the faces extra" in capsys.readouterr().err
    # --pairs outside the cross protocol: refused while checking the arguments (the file exists: not "no such file")
    ids = sorted(ds.identities)
    (tmp_path / "pairs.txt").write_text(f"{ids[0]} {ids[1]}\n")
    assert _evaluate(args + ["--protocol", "self", "--pairs", tmp_path / "pairs.txt", "--out", tmp_path / "d"]) == 2
    assert "error: --pairs is for --protocol cross, not self" in capsys.readouterr().err
    assert not (tmp_path / "d").exists()  # before anything was loaded or written
    assert _evaluate(["--checkpoint", tmp_path / "none.safetensors", "--data", root / "data", "--protocol", "self",
                      "--out", tmp_path / "e"]) == 2
    assert "--checkpoint: no such file" in capsys.readouterr().err


def _render_pairs(model, ds, pairs):
    """(renders, targets, sources) [B, 3, r, r] in [0, 1] of `pairs` (one batch), as the protocol scores them:
    deterministic samples, seed 0, the raw render; images matted and resized (bilinear, antialiased) to its size."""
    from oneshot.data import collate_pairs
    from oneshot.eval.protocol import deterministic_renders

    with torch.no_grad(), deterministic_renders(model.eval()):
        b = collate_pairs(ds, pairs, model.face_model)
        r = (model(b, seed=0, super_resolve=False)["full"].features[:, :3].clamp(-1, 1) + 1) / 2
    size = r.shape[-1]

    def fit(x):
        return ((F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True) + 1) / 2
                ).clamp(0, 1)
    return r, fit(b["target_image"]), fit(b["source_image"])


def _stored_features(out):
    feats = [torch.load(f, weights_only=True) for f in sorted((out / "features").glob("*.pt"))]
    return torch.cat([f["real"] for f in feats]), torch.cat([f["fake"] for f in feats])


def test_cross_protocol_scores_identity_against_the_source(tiny_setup, tmp_path, one_thread):
    """No ground truth: each pair's CSIM is the ArcFace cosine of its render and its SOURCE, and FID compares the
    renders with the sources. Both recomputed here from renders made in the test; the driver would give other
    numbers, so scoring against it (or swapping source and driver) fails."""
    from oneshot.eval import arcface_crops, build_pairs, load_arcface, load_fid_inception

    root, ds, model = tiny_setup
    nets = _network_files(tmp_path)
    out = tmp_path / "cross"
    assert _evaluate(["--checkpoint", root / "avatar.safetensors", "--data", root / "data", "--protocol", "cross",
                      "--no-sr", "--no-faces", "--max-targets", "1", "--out", out] + nets) == 0
    s = json.loads((out / "metrics.json").read_text())
    assert set(s["metrics"]) == {"csim", "fid"} and s["pairs"] == 3
    assert "| CSIM ↑ | AED ↓ | APD ↓ | FID ↓ |" in (out / "table.md").read_text()
    rows = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    pairs = build_pairs(ds, "cross", max_targets=1)
    assert [(r["source"], r["target"]) for r in rows] == [(ds.samples[a]["id"], ds.samples[b]["id"]) for a, b in pairs]
    assert all(ds.samples[a]["identity"] != ds.samples[b]["identity"] for a, b in pairs)

    render, driver, source = _render_pairs(model, ds, pairs)
    arcface, inception = load_arcface(tmp_path / "arcface.pth"), load_fid_inception(tmp_path / "inception.pth")
    with torch.no_grad():
        e = arcface(arcface_crops(render))
        csim_source = M.cosine_similarity(e, arcface(arcface_crops(source)))
        csim_driver = M.cosine_similarity(e, arcface(arcface_crops(driver)))
        f_render, f_source, f_driver = (inception(x).double() for x in (render, source, driver))
    got = torch.tensor([r["csim"] for r in rows], dtype=torch.float64)
    torch.testing.assert_close(got, csim_source, rtol=1e-5, atol=1e-6)
    assert float((csim_driver - csim_source).abs().min()) > 1e-3, (csim_source, csim_driver)
    real, fake = _stored_features(out)
    torch.testing.assert_close(fake, f_render, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(real, f_source, rtol=1e-4, atol=1e-5)
    assert float((f_driver - f_source).abs().max()) > 1e-2
    assert s["metrics"]["fid"]["value"] == pytest.approx(M.fid_from_features(f_source, f_render), rel=1e-5)


def test_evaluate_scores_what_the_checkpoint_trained(tiny_setup, tmp_path, capsys, one_thread):
    """By default the super-resolved output when the checkpoint records its SR network trained, else the raw render
    (with a note); the scores are recomputed from renders made here, so a label that lies cannot pass."""
    from oneshot.data import collate_pairs
    from oneshot.eval.protocol import deterministic_renders
    from oneshot.models import OneShotAvatar

    root, ds, model = tiny_setup
    trained = OneShotAvatar.load(root / "avatar.safetensors", model.face_model)
    trained.trained_parts = frozenset({"low_res", "super_resolution"})
    trained.save(tmp_path / "trained.safetensors")
    first = ds.identities[sorted(ds.identities)[0]][0]
    with torch.no_grad(), deterministic_renders(model.eval()):
        b = collate_pairs(ds, [(first, first)], model.face_model)
        o = model(b, seed=0, super_resolve=True)
    renders = {"sr": (o["image"].clamp(-1, 1) + 1) / 2, "raw": (o["full"].features[:, :3].clamp(-1, 1) + 1) / 2}
    for name, ckpt, flags, want in (("default-untrained", root / "avatar.safetensors", [], "raw"),
                                    ("default-trained", tmp_path / "trained.safetensors", [], "sr"),
                                    ("forced", root / "avatar.safetensors", ["--sr"], "sr"),
                                    ("off", tmp_path / "trained.safetensors", ["--no-sr"], "raw")):
        out = tmp_path / name
        capsys.readouterr()
        assert _evaluate(["--checkpoint", ckpt, "--data", root / "data", "--protocol", "reconstruction",
                          "--no-faces", "--limit", "1", "--out", out] + flags) == 0
        assert ("never trained" in capsys.readouterr().err) == (name == "default-untrained"), name
        row = json.loads((out / "samples.jsonl").read_text().splitlines()[0])
        r = renders[want]
        t = (F.interpolate(b["target_image"], size=r.shape[-2:], mode="bilinear", align_corners=False,
                           antialias=r.shape[-1] < b["target_image"].shape[-1]) + 1) / 2
        assert float(M.psnr(r, t.clamp(0, 1))[0]) == pytest.approx(row["psnr"], rel=1e-6), name
        size = r.shape[-1]
        label = json.loads((out / "metrics.json").read_text())["output"]
        assert label == (f"super-resolved {size}x{size}" if want == "sr" else f"raw render {size}x{size}"), name