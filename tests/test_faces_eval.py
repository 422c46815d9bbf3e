"""``oneshot evaluate`` with the face front end (the ``faces`` extra) on a video of a real portrait: the landmark
metrics (AED, APD, AKD) from the 68-landmark fit and from Deep3DFaceRecon's regressor (``--recon``), and renders
without a face left out of the means."""

from __future__ import annotations

import json
import math

import pytest
import torch

from test_faces import driving_video, needs_assets, needs_faces, portraits, tiny_ckpt  # noqa: F401 - fixtures


def _renders_with_faces(monkeypatch, k: int = 2):
    """Make the first `k` renders of each batch the pair's source frame (a face the front end finds; an untrained
    avatar renders none), so an evaluation sees renders with and without faces."""
    from oneshot.models import OneShotAvatar

    real = OneShotAvatar.forward

    def forward(self, batch, **kwargs):
        out = real(self, batch, **kwargs)
        image = out["image"].clone()
        image[:k] = batch["source_image"][:k]
        return {**out, "image": image}

    monkeypatch.setattr(OneShotAvatar, "forward", forward)


def _scored_images(out, face):
    """The renders (the substituted source frames) and targets the evaluation in `out` scored, [3, 3, S, S] in [0, 1]:
    the protocol's pairs of the prepared dataset, matted as the model sees them."""
    from oneshot.data import FaceDataset, collate_pairs
    from oneshot.eval import build_pairs

    ds = FaceDataset(out / "data")
    b = collate_pairs(ds, build_pairs(ds, "self"), face)
    return ((b["source_image"] + 1) / 2).clamp(0, 1), ((b["target_image"] + 1) / 2).clamp(0, 1)


def _akd(front, a, b):
    """AKD as the protocol defines it, written out: images [3, S, S] in [0, 1] enlarged to 256 for the detector, mean
    distance of the 68 landmarks in pixels of a 256 frame."""
    import torch.nn.functional as F

    def landmarks(x):
        big = F.interpolate(x[None], size=(256, 256), mode="bilinear", align_corners=False)[0]
        faces = front((big.clamp(0, 1) * 255 + 0.5).byte().permute(1, 2, 0).numpy())
        return faces[0].landmarks.double() * x.shape[-1] / 256

    return float((landmarks(a) - landmarks(b)).norm(dim=1).mean()) * 256 / a.shape[-1]


@needs_faces
@needs_assets
def test_evaluate_self_reenactment_on_a_video_with_the_landmark_metrics(tiny_ckpt, driving_video, tmp_path,
                                                                      monkeypatch, one_thread):
    """`oneshot evaluate --data VIDEO`: the video is prepared (detected, fitted, cropped) and its first frame is
    driven by the others; AED / APD / AKD come from the face front end's landmarks. Two renders show a face (the
    source frame, substituted), the third is the untrained avatar's (no face): it is counted as missing and left out
    of the means, which are those of the other two rows. The landmark metrics of a crop against itself are exactly 0,
    and AKD sees a known shift."""
    from oneshot.data import FaceDataset
    from oneshot.eval import Scorer
    from oneshot.face3d import load_model
    from oneshot.face3d.detect import FaceFrontEnd

    _renders_with_faces(monkeypatch)
    out = tmp_path / "eval"
    from oneshot.cli import main

    assert main(["evaluate", "--checkpoint", str(tiny_ckpt), "--data", str(driving_video[0]), "--protocol", "self",
                 "--frames", "4", "--sr", "--out", str(out), "--quiet"]) == 0
    s = json.loads((out / "metrics.json").read_text())
    assert s["pairs"] == 3 and s["identities"] == 1 and {"psnr", "ssim", "l1"} <= set(s["metrics"])
    assert not {"aed", "apd", "akd"} & set(s["skipped"])
    rows = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    for m in ("aed", "apd", "akd"):
        vals = [r[m] for r in rows]
        assert all(math.isfinite(v) and v > 0 for v in vals[:2]) and math.isnan(vals[2]), (m, vals)
        assert s["metrics"][m]["n"] == 2 and s["metrics"][m]["missing"] == 1, m
        assert s["metrics"][m]["mean"] == pytest.approx((vals[0] + vals[1]) / 2, rel=1e-12), m
    table = (out / "table.md").read_text()
    assert "- AKD: no face found in 1 of the pairs (left out of the mean)" in table
    ds = FaceDataset(out / "data")
    crops = torch.stack([(ds[i]["image"] + 1) / 2 for i in range(4)])
    renders, targets = _scored_images(out, load_model())
    with FaceFrontEnd(max_faces=1) as front:
        for k in range(2):  # the rows' AKD, written out: the source frame (the render) against the target frame
            assert rows[k]["akd"] == pytest.approx(_akd(front, renders[k], targets[k]), rel=1e-5, abs=1e-6), k
        scorer = Scorer(faces=front, face_model=load_model())
        same = scorer.score("self", crops[:2], crops[:2], crops[:2])
        for m in ("aed", "apd", "akd"):
            assert torch.equal(same[m], torch.zeros(2, dtype=torch.float64)), m
        shift = 8  # pixels of the crop (the model's input size); AKD is in pixels of a 256 frame
        moved = scorer.score("self", torch.roll(crops[:2], shift, dims=-1), crops[:2], crops[:2])
        assert moved["akd"].tolist() == pytest.approx([shift * 256 / crops.shape[-1]] * 2, abs=1.0)
        assert (moved["apd"] > 0).all()


@needs_faces
@needs_assets
def test_evaluate_with_recon_regresses_the_coefficients_of_aed_and_apd(driving_video, tmp_path, monkeypatch,
                                                                       one_thread):
    """`oneshot evaluate --recon epoch_20.pth --face-model BFM`: AED / APD compare coefficients regressed by
    Deep3DFaceRecon's network (a checkpoint in its layout, made here), never fitted: the fit is switched off (it
    would raise), the regressor is spied, and the rows' AED / APD are recomputed from its coefficients."""
    from test_face3d import write_bfm

    from oneshot.cli import main
    from oneshot.face3d import estimate_face, fit, from_bfm, load_recon_checkpoint
    from oneshot.face3d.detect import FaceFrontEnd
    from oneshot.face3d.recon import ReconNet
    from oneshot.models import OneShotAvatar

    write_bfm(tmp_path / "BFM_model_front.mat")
    face = from_bfm(tmp_path / "BFM_model_front.mat")
    torch.manual_seed(0)
    net = ReconNet()
    for p in net.parameters():
        p.data.normal_(0, 0.02)
    torch.save({"net_recon": net.state_dict(), "epoch": 20}, tmp_path / "epoch_20.pth")
    OneShotAvatar("tiny", face).save(tmp_path / "bfm_tiny.safetensors")

    def no_fit(*args, **kwargs):
        raise AssertionError("the 68-landmark fit ran; --recon must regress the coefficients")

    monkeypatch.setattr(fit, "fit_landmarks", no_fit)
    regressed = []
    real_coeffs = ReconNet.coeffs

    def coeffs(self, image, model):
        c = real_coeffs(self, image, model)
        regressed.append(c.expression.shape[0])
        return c

    monkeypatch.setattr(ReconNet, "coeffs", coeffs)
    _renders_with_faces(monkeypatch)
    out = tmp_path / "eval"
    assert main(["evaluate", "--checkpoint", str(tmp_path / "bfm_tiny.safetensors"), "--data", str(driving_video[0]),
                 "--protocol", "self", "--frames", "4", "--sr", "--recon", str(tmp_path / "epoch_20.pth"),
                 "--face-model", str(tmp_path / "BFM_model_front.mat"), "--out", str(out), "--quiet"]) == 0
    s = json.loads((out / "metrics.json").read_text())
    assert "Deep3DFaceRecon regression" in s["settings"]["aed"]
    assert s["metrics"]["aed"]["n"] == 2 and s["metrics"]["apd"]["n"] == 2
    # prepared: 4 frames; scored: 2 renders with a face and 3 targets
    assert sum(regressed) == 4 + 2 + 3, regressed
    rows = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    renders, targets = _scored_images(out, face)
    recon = load_recon_checkpoint(tmp_path / "epoch_20.pth")
    size = renders.shape[-1]

    def regressed_coeffs(img):
        big = torch.nn.functional.interpolate(img[None], size=(256, 256), mode="bilinear", align_corners=False)
        lm = front((big[0].clamp(0, 1) * 255 + 0.5).byte().permute(1, 2, 0).numpy())[0].landmarks * size / 256
        return estimate_face(img[None], lm[None], model=face, recon=recon, size=size).coeffs

    with FaceFrontEnd(max_faces=1) as front:
        est = [(regressed_coeffs(renders[k]), regressed_coeffs(targets[k])) for k in range(2)]
    for k, (a, b) in enumerate(est):
        aed = float((a.expression.double() - b.expression.double()).abs().mean())
        pa = torch.cat([a.rotation, a.translation], 1).double()
        pb = torch.cat([b.rotation, b.translation], 1).double()
        assert rows[k]["aed"] == pytest.approx(aed, rel=1e-4), k
        assert rows[k]["apd"] == pytest.approx(float((pa - pb).abs().mean()), rel=1e-4), k
