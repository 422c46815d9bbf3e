"""Deep3DFaceRecon's regressor (oneshot.face3d.recon): torchvision-compatible ResNet-50 names and sizes, the
ReconNetWrapper checkpoint layout, and loading errors."""

from __future__ import annotations

import pytest
import torch

from oneshot.face3d.recon import HEADS, ReconNet, load_recon_checkpoint


def test_architecture_matches_torchvision_resnet50_and_the_wrapper():
    net = ReconNet()
    # torchvision's resnet50 has 25,557,032 parameters, 2,049,000 of them in the final fc.
    assert sum(p.numel() for p in net.backbone.parameters()) == 25_557_032 - 2_049_000
    sd = net.state_dict()
    assert sd["backbone.conv1.weight"].shape == (64, 3, 7, 7)
    assert sd["backbone.layer1.0.downsample.0.weight"].shape == (256, 64, 1, 1)
    assert sd["backbone.layer2.0.conv2.weight"].shape == (128, 128, 3, 3)  # stride on the 3x3 (v1.5)
    assert sd["backbone.layer4.2.bn3.running_var"].shape == (2048,)
    assert [sd[f"final_layers.{k}.weight"].shape[0] for k in range(7)] == [k for _, k in HEADS]
    assert sum(k for _, k in HEADS) == 257
    assert not any(k.startswith("backbone.fc") for k in sd)


def test_zero_initialised_heads_and_output_layout():
    net = ReconNet().eval()
    with torch.no_grad():
        assert torch.equal(net(torch.rand(2, 3, 64, 64)), torch.zeros(2, 257))
        net.final_layers[3].bias.copy_(torch.tensor([0.1, 0.2, 0.3]))  # the angle head
        out = net(torch.rand(1, 3, 64, 64))
    assert torch.equal(out[0, 224:227], torch.tensor([0.1, 0.2, 0.3]))  # angles follow id, exp, tex
    with pytest.raises(ValueError, match=r"image must be \[B, 3, H, W\]"):
        net(torch.rand(3, 64, 64))


def test_checkpoint_round_trip_and_errors(tmp_path):
    torch.manual_seed(0)
    src = ReconNet()
    for p in src.parameters():
        p.data.normal_(0, 0.02)
    x = torch.rand(1, 3, 64, 64)
    src.eval()
    path = tmp_path / "epoch_20.pth"
    torch.save({"net_recon": src.state_dict(), "epoch": 20}, path)
    net = load_recon_checkpoint(path)
    with torch.no_grad():
        assert torch.equal(net(x), src(x))
    # DataParallel-style keys are accepted.
    torch.save({"net_recon": {"module." + k: v for k, v in src.state_dict().items()}}, tmp_path / "dp.pth")
    load_recon_checkpoint(tmp_path / "dp.pth")
    sd = src.state_dict()
    del sd["final_layers.6.bias"]
    torch.save({"net_recon": sd}, tmp_path / "missing.pth")
    with pytest.raises(ValueError, match=r"1 missing keys \(e\.g\. \['final_layers\.6\.bias'\]\)"):
        load_recon_checkpoint(tmp_path / "missing.pth")
    sd = src.state_dict()
    sd["final_layers.0.weight"] = torch.zeros(81, 2048, 1, 1)
    torch.save({"net_recon": sd}, tmp_path / "shape.pth")
    with pytest.raises(ValueError, match=r"final_layers\.0\.weight has shape \[81, 2048, 1, 1\], expected \[80, 2048, 1, 1\]"):
        load_recon_checkpoint(tmp_path / "shape.pth")
    with pytest.raises(FileNotFoundError, match=r"no such file"):
        load_recon_checkpoint(tmp_path / "nope.pth")
    (tmp_path / "junk.pth").write_bytes(b"junk")
    with pytest.raises(ValueError, match=r"not a readable torch checkpoint"):
        load_recon_checkpoint(tmp_path / "junk.pth")


def test_coeffs_for_a_bfm(tmp_path):
    from test_face3d import write_bfm

    from oneshot.face3d import from_bfm

    write_bfm(tmp_path / "bfm.mat")
    model = from_bfm(tmp_path / "bfm.mat")
    c = ReconNet().eval().coeffs(torch.rand(2, 3, 64, 64), model)
    assert c.check(model) is c and c.identity.shape == (2, 80) and c.lighting.shape == (2, 27)
