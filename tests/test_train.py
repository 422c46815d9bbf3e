"""The trainer (oneshot.train): steps lower the loss, resume equals an uninterrupted run, atomic checkpoints,
stage 2, DDP on two CPU processes, the train command."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import warnings

import pytest
import torch

from oneshot.data import synthesize
from oneshot.train import TrainConfig, Trainer, load_checkpoint, save_checkpoint_atomic
from oneshot.data import PairSampler, collate_pairs

pytestmark = pytest.mark.filterwarnings("ignore:PerceptualLoss. no VGG-19 weights")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    d = tmp_path_factory.mktemp("train") / "data"
    synthesize(d, 8, resolution=128, seed=0, per_identity=4, progress=False)
    return d


def _cfg(**kw):
    base = dict(steps=4, batch_size=2, log_every=1, image_every=0, checkpoint_every=0, expression_start=0.0,
                appearance_start=0.0, density_points=256)
    return TrainConfig(**{**base, **kw})


def test_pair_sampler_is_a_function_of_the_step_and_stays_within_identities(data):
    from oneshot.data import FaceDataset

    ds = FaceDataset(data)
    s = PairSampler(ds, 4, seed=3)
    assert s.pairs(5) == s.pairs(5) and s.pairs(5) != s.pairs(6)
    for a, b in s.pairs(7):
        assert ds.samples[a]["identity"] == ds.samples[b]["identity"] and a != b
    # Two ranks split one global batch.
    r0, r1 = PairSampler(ds, 4, 3, rank=0, world_size=2), PairSampler(ds, 4, 3, rank=1, world_size=2)
    assert r0.pairs(2) + r1.pairs(2) == s.pairs(2)
    with pytest.raises(ValueError, match=r"batch_size must be a positive multiple of the world size 2, got 3"):
        PairSampler(ds, 3, world_size=2)
    batch = collate_pairs(ds, s.pairs(0), __import__("oneshot.face3d", fromlist=["builtin_model"]).builtin_model())
    assert batch["source_image"].shape == (4, 3, 128, 128) and batch["target_camera"].shape == (4, 25)
    assert batch["source_image"].min() >= -1 and (batch["source_image"] == -1).any()  # matted background


def test_steps_lower_the_loss_on_a_fixed_batch(data, tmp_path):
    tr = Trainer(_cfg(lr=1e-3), data, tmp_path, progress=False)
    batch = collate_pairs(tr.dataset, tr.sampler.pairs(0), tr.face)
    losses = []
    for _ in range(12):
        losses.append(tr.train_step(batch)["loss"])
        tr.step += 1
    assert min(losses[-3:]) < 0.8 * losses[0], losses


def test_lr_mult_gives_submodules_their_own_learning_rate(data, tmp_path):
    mult = {"decoder": 10, "canonical_head": 0}
    tr = Trainer(_cfg(lr=2e-4, lr_mult=mult), data, tmp_path, progress=False)
    lrs = {id(p): g["lr"] for g in tr.opt.param_groups for p in g["params"]}
    assert len(lrs) == sum(p.requires_grad for p in tr.model.parameters())
    for name, module in tr.model.named_children():
        for p in module.parameters():
            if p.requires_grad:
                assert lrs[id(p)] == pytest.approx(2e-4 * mult.get(name, 1)), name
    head = {k: v.clone() for k, v in tr.model.canonical_head.state_dict().items()}
    dec = {k: v.clone() for k, v in tr.model.decoder.state_dict().items()}
    tr.fit(1)
    assert all(torch.equal(head[k], v) for k, v in tr.model.canonical_head.state_dict().items())  # lr 0
    assert not all(torch.equal(dec[k], v) for k, v in tr.model.decoder.state_dict().items())
    with pytest.raises(ValueError, match=r"lr_mult names unknown submodules \['nope'\]"):
        Trainer(_cfg(lr_mult={"nope": 2}), data, tmp_path / "x", progress=False)
    with pytest.raises(ValueError, match=r"lr_mult\['decoder'\] must be a non-negative number, got -1"):
        _cfg(lr_mult={"decoder": -1})


def test_resume_equals_an_uninterrupted_run(data, tmp_path):
    torch.set_num_threads(torch.get_num_threads())
    full = Trainer(_cfg(steps=6, ema=0.9), data, tmp_path / "full", progress=False)
    rec_full = full.fit()
    part = Trainer(_cfg(steps=6, ema=0.9), data, tmp_path / "part", progress=False)
    part.fit(steps=3)
    resumed = Trainer(_cfg(steps=6, ema=0.9), data, tmp_path / "part", progress=False)
    assert resumed.resume() == 3
    rec_rest = resumed.fit()
    assert [r["loss"] for r in rec_full[3:]] == [r["loss"] for r in rec_rest]
    for a, b in ((full.model, resumed.model), (full.ema_model, resumed.ema_model)):
        sa, sb = a.state_dict(), b.state_dict()
        assert all(torch.equal(sa[k], sb[k]) for k in sa)
    # The log of the resumed run continues the interrupted one's.
    steps = [json.loads(line)["step"] for line in (tmp_path / "part" / "log.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 5, 6]


def test_ema_averages_the_weights_and_is_what_the_run_exports(data, tmp_path):
    from oneshot.models import OneShotAvatar

    tr = Trainer(_cfg(steps=3, ema=0.15), data, tmp_path, progress=False)
    expected = {n: p.detach().clone() for n, p in tr.model.named_parameters()}
    for k in range(3):
        tr.train_step(collate_pairs(tr.dataset, tr.sampler.pairs(k), tr.face))
        d = min(0.15, (1 + k) / (10 + k))  # the warm-up: 0.1 at the first step, then 0.15
        for n, p in tr.model.named_parameters():
            expected[n] = expected[n] + (1 - d) * (p.detach() - expected[n])
        tr.step += 1
    ema = dict(tr.ema_model.named_parameters())
    for n, p in tr.model.named_parameters():
        torch.testing.assert_close(ema[n], expected[n])
    assert not all(torch.equal(ema[n], p) for n, p in tr.model.named_parameters())
    tr.save()
    state = tr.ema_model.state_dict()
    loaded = OneShotAvatar.load(tmp_path / "avatar.safetensors", tr.face).state_dict()
    assert loaded.keys() == state.keys() and all(torch.equal(v, state[k]) for k, v in loaded.items())
    again = Trainer(_cfg(steps=3, ema=0.15), data, tmp_path, progress=False)
    again.resume()
    assert all(torch.equal(v, state[k]) for k, v in again.ema_model.state_dict().items())
    with pytest.raises(ValueError, match=r"this run averages weights \(ema > 0\) but the checkpoint has no average"):
        Trainer(_cfg(steps=3, ema=0.5), data, tmp_path / "b", progress=False).resume(
            _plain_checkpoint(data, tmp_path / "plain"))
    with pytest.raises(ValueError, match=r"ema must be a decay in \[0, 1\), got 1.0"):
        _cfg(ema=1.0)


def _plain_checkpoint(data, out):
    tr = Trainer(_cfg(steps=1), data, out, progress=False)
    return tr.save()


def test_checkpoint_writes_are_atomic(tmp_path, monkeypatch):
    path = tmp_path / "ck.pt"
    save_checkpoint_atomic({"format": "oneshot-train", "step": 1, "w": torch.ones(3)}, path)

    def boom(obj, f, *a, **k):
        f.write(b"partial garbage")
        raise KeyboardInterrupt("killed mid-write")

    monkeypatch.setattr(torch, "save", boom)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint_atomic({"format": "oneshot-train", "step": 2}, path)
    monkeypatch.undo()
    assert load_checkpoint(path)["step"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["ck.pt"]  # no temporary left behind


def test_a_run_killed_while_checkpointing_leaves_a_loadable_checkpoint(tmp_path):
    path = tmp_path / "ck.pt"
    code = (
        "import torch, sys\n"
        "from oneshot.train import save_checkpoint_atomic\n"
        "i = 0\n"
        "while True:\n"
        "    save_checkpoint_atomic({'format': 'oneshot-train', 'step': i, 'w': torch.full((2_000_000,), float(i))}, sys.argv[1])\n"
        "    i += 1\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code, str(path)])
    deadline = time.time() + 60
    while not path.exists() and time.time() < deadline:
        time.sleep(0.05)
    time.sleep(0.7)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    ck = load_checkpoint(path)
    assert torch.equal(ck["w"], torch.full((2_000_000,), float(ck["step"])))


def test_stage_two_trains_only_the_super_resolution_and_the_discriminator(data, tmp_path):
    s1 = Trainer(_cfg(steps=1), data, tmp_path / "s1", progress=False)
    s1.fit()
    s2 = Trainer(_cfg(stage=2, steps=2, r1_every=2, init=str(tmp_path / "s1" / "avatar.safetensors")), data,
                 tmp_path / "s2", progress=False)
    before = {k: v.clone() for k, v in s2.model.state_dict().items()}
    d_before = {k: v.clone() for k, v in s2.disc.state_dict().items()}
    rec = s2.fit()
    after = s2.model.state_dict()
    changed = {k.split(".")[0] for k in before if not torch.equal(before[k], after[k])}
    assert changed == {"super_resolution"}
    assert any(not torch.equal(d_before[k], v) for k, v in s2.disc.state_dict().items())
    assert {"gan/g", "gan/d", "sr/l1"} <= set(rec[-1])
    with pytest.raises(ValueError, match=r"resuming stage 2 from a stage-1 checkpoint"):
        s2.resume(tmp_path / "s1" / "checkpoints" / "last.pt")


def _ddp_worker(rank, world, data, out, port, result):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore")
    tr = Trainer(_cfg(steps=2, batch_size=2), data, out, device="cpu", progress=False)
    tr.fit()
    flat = torch.cat([p.detach().flatten() for p in tr.model.parameters()])
    torch.save(flat, f"{result}.{rank}")
    torch.distributed.destroy_process_group()


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed is not available")
def test_ddp_on_two_cpu_processes_keeps_replicas_identical(data, tmp_path):
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_ddp_worker, args=(2, str(data), str(tmp_path / "run"), port, str(tmp_path / "params")), nprocs=2)
    p0, p1 = torch.load(tmp_path / "params.0"), torch.load(tmp_path / "params.1")
    assert torch.equal(p0, p1)
    init = Trainer(_cfg(), data, tmp_path / "init", progress=False).model
    assert not torch.equal(p0, torch.cat([p.detach().flatten() for p in init.parameters()]))  # it trained
    assert (tmp_path / "run" / "avatar.safetensors").is_file()


def test_train_command(data, tmp_path, capsys):
    from oneshot.cli import main

    cfg = tmp_path / "cfg.json"
    cfg.write_text(json.dumps({"steps": 2, "batch_size": 2, "log_every": 1, "image_every": 1, "density_points": 128}))
    assert main(["train", "--config", str(cfg), "--data", str(data), "--out", str(tmp_path / "run"), "--quiet"]) == 0
    assert (tmp_path / "run" / "avatar.safetensors").is_file() and list((tmp_path / "run" / "images").iterdir())
    assert main(["train", "--config", str(cfg), "--data", str(data), "--out", str(tmp_path / "run"), "--quiet",
                 "--resume", "--steps", "3"]) == 0
    assert "resumed at step 2" in capsys.readouterr().out
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"stepz": 2}))
    assert main(["train", "--config", str(bad), "--data", str(data), "--out", str(tmp_path / "x")]) == 2
    assert "unknown training config fields ['stepz']" in capsys.readouterr().err
    assert main(["train", "--data", str(tmp_path / "nowhere"), "--out", str(tmp_path / "y")]) == 2
    assert "not a directory" in capsys.readouterr().err
    assert main(["train", "--data", str(data), "--out", str(tmp_path / "z"), "--resume"]) == 2
    assert "--resume: no checkpoint" in capsys.readouterr().err


def test_tensorboard_gets_scalars_and_image_grids(data, tmp_path, monkeypatch):
    import oneshot.train.trainer as T

    calls = []

    class Recorder:
        def add_scalar(self, tag, value, step):
            calls.append(("scalar", tag, step))

        def add_image(self, tag, image, step):
            calls.append(("image", tag, tuple(image.shape), step))

        def flush(self):
            calls.append(("flush",))

    monkeypatch.setattr(T, "_tensorboard", lambda out: Recorder())
    Trainer(_cfg(steps=2, image_every=2), data, tmp_path, progress=False).fit()
    assert ("scalar", "loss", 1) in calls and ("scalar", "full/l1", 2) in calls
    images = [c for c in calls if c[0] == "image"]
    assert len(images) == 1 and images[0][2][0] == 3 and images[0][3] == 2  # one grid, CHW, at step 2
    assert (tmp_path / "images" / "step_0000002.png").is_file()
