"""The two-stage trainer: stage 1 trains everything but the super-resolution on the paper's renders; stage 2
trains only the super-resolution against a dual discriminator. One process or many (``torchrun``, DDP).

Reproducibility: every random choice of a step (the pairs, the renderer's samples, the super-resolution's
noise, SegFormer's stochastic depth, the density regulariser's points) is a function of (seed, step, rank), and
checkpoints hold the model, the optimisers, the step and the RNG states; so ``--resume`` continues exactly where
a run stopped (on a CPU with a fixed thread count the loss curve is bitwise that of an uninterrupted run).
Checkpoints are written atomically (a temporary file, then a rename): a run killed while writing leaves the
previous checkpoint intact.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import os
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from .._checkpoint import load_torch_file
from .._progress import progress_bar
from ..data import FaceDataset, PairSampler, collate_pairs
from ..face3d import MorphableModel, load_model
from ..models import AvatarConfig, OneShotAvatar
from .discriminator import DualDiscriminator, dual_input
from .losses import (PerceptualLoss, d_logistic_loss, density_smoothness, g_nonsaturating_loss, l1_loss,
                     neutral_expression_loss, r1_penalty)

__all__ = ["TrainConfig", "Trainer", "save_checkpoint_atomic", "load_checkpoint"]


@dataclass
class TrainConfig:
    """What a training run does (JSON-serialisable; ``oneshot train --config FILE`` reads one)."""

    preset: str = "tiny"  # avatar preset
    avatar: dict = field(default_factory=dict)  # overrides of the preset's AvatarConfig fields
    face_model: str | None = None  # morphable model path (None: the built-in one)
    stage: int = 1
    steps: int = 1000
    batch_size: int = 4
    lr: float = 1e-4
    betas: tuple = (0.0, 0.99)
    # learning-rate multipliers by top-level submodule of the avatar, e.g. {"decoder": 10}
    lr_mult: dict = field(default_factory=dict)
    d_lr: float = 5e-4
    grad_clip: float = 1000.0
    ema: float = 0.0  # decay of a moving average of the avatar's weights (EG3D's G_ema); 0: off
    expression_start: float = 0.16  # fraction of the stage-1 steps before the expression branch's render counts
    appearance_start: float = 0.32  # ... and the full render (the released code: 120k and 240k of 750k)
    l1: float = 1.0
    perceptual: float = 1.0
    neutral_l1: float = 1.0
    neutral_perceptual: float = 3.0
    density: float = 0.25
    density_points: int = 4096
    gan: float = 0.1
    r1: float = 10.0
    r1_every: int = 16
    vgg_weights: str | None = None  # torchvision's vgg19 state dict (a local file); None disables the term
    seed: int = 0
    log_every: int = 10
    image_every: int = 200
    checkpoint_every: int = 500
    max_minutes: float | None = None  # stop (and checkpoint) after this much wall time
    bf16: bool = True  # autocast to bfloat16 on CUDA
    init: str | None = None  # start from these avatar weights (.safetensors), e.g. stage 2 from stage 1

    def __post_init__(self):
        if self.stage not in (1, 2):
            raise ValueError(f"stage must be 1 or 2, got {self.stage!r}")
        if self.steps < 1 or self.batch_size < 1:
            raise ValueError(f"steps and batch_size must be >= 1, got {self.steps}, {self.batch_size}")
        self.betas = tuple(self.betas)
        if not 0.0 <= self.ema < 1.0:
            raise ValueError(f"ema must be a decay in [0, 1), got {self.ema!r}")
        for k, v in self.lr_mult.items():
            if isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0:
                raise ValueError(f"lr_mult[{k!r}] must be a non-negative number, got {v!r}")

    @classmethod
    def from_file(cls, path) -> TrainConfig:
        p = Path(path)
        if not p.is_file():
            raise FileNotFoundError(f"training config: no such file: {p}")
        try:
            data = json.loads(p.read_text())
        except json.JSONDecodeError as e:
            raise ValueError(f"{p}: not valid JSON ({e})") from None
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"{p}: unknown training config fields {unknown}; known: {sorted(known)}")
        return cls(**data)

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True, indent=1)


def save_checkpoint_atomic(obj: dict, path) -> None:
    """torch.save to a temporary file in the same directory, fsync, then rename over `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def load_checkpoint(path) -> dict:
    """A training checkpoint (weights_only-safe: tensors, numbers, strings, dicts and lists only)."""
    p = Path(path)
    ckpt = load_torch_file(p, "checkpoint")
    if not isinstance(ckpt, dict) or ckpt.get("format") != "oneshot-train":
        raise ValueError(f"{p}: not a oneshot training checkpoint")
    return ckpt


def _resize(x: torch.Tensor, size: int) -> torch.Tensor:
    if x.shape[-1] == size:
        return x
    return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=size < x.shape[-1])


def _dist_info() -> tuple[int, int, int]:
    if "WORLD_SIZE" in os.environ and int(os.environ["WORLD_SIZE"]) > 1:
        return int(os.environ.get("RANK", 0)), int(os.environ["WORLD_SIZE"]), int(os.environ.get("LOCAL_RANK", 0))
    return 0, 1, 0


class Trainer:
    """Train an avatar on a dataset directory (:mod:`oneshot.data.format`), writing to `out`:

    ``checkpoints/last.pt`` (everything needed to resume), ``avatar.safetensors`` (the model, for
    ``oneshot reconstruct|animate``), ``log.jsonl`` (losses per logged step), ``images/`` (grids: source, target,
    the three renders, depth, super-resolved), TensorBoard events when ``tensorboard`` is installed,
    ``train_config.json``.
    """

    def __init__(self, config: TrainConfig, data, out, *, device=None, face_model: MorphableModel | None = None,
                 progress: bool = True):
        self.config = c = config
        self.out = Path(out)
        self.rank, self.world_size, local_rank = _dist_info()
        if self.world_size > 1 and not torch.distributed.is_initialized():
            backend = "nccl" if torch.cuda.is_available() else "gloo"
            torch.distributed.init_process_group(backend)
        if device is None:
            device = f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu"
        self.device = torch.device(device)
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)
        self.progress = progress and self.rank == 0
        self.dataset = data if isinstance(data, FaceDataset) else FaceDataset(data)
        self.face = face_model if face_model is not None else load_model(c.face_model)
        torch.manual_seed(c.seed)  # the same initial weights on every rank
        avatar_config = AvatarConfig.preset_config(c.preset, **c.avatar)
        if self.dataset.resolution != avatar_config.image_size:
            raise ValueError(f"the dataset's images are {self.dataset.resolution}^2, the {c.preset!r} avatar takes "
                             f"{avatar_config.image_size}^2 (synthesize at --resolution {avatar_config.image_size})")
        self.model = OneShotAvatar(avatar_config, self.face)
        if c.init:
            src = OneShotAvatar.load(c.init, self.face)
            self.model.load_state_dict(src.state_dict())
            self.model.trained_parts = src.trained_parts
        self.model.to(self.device).set_stage(c.stage)
        self.model.train()
        self.opt = torch.optim.Adam(self._param_groups(), lr=c.lr, betas=c.betas)
        self.ema_model = None
        if c.ema > 0:
            self.ema_model = copy.deepcopy(self.model).eval().requires_grad_(False)
        self.disc = self.d_opt = None
        if c.stage == 2:
            self.disc = DualDiscriminator(size=avatar_config.sr_out_size, narrow=avatar_config.sr_narrow).to(self.device)
            self.d_opt = torch.optim.Adam(self.disc.parameters(), lr=c.d_lr, betas=c.betas)
        self.ddp = self.model
        self.ddp_disc = self.disc
        if self.world_size > 1:
            from torch.nn.parallel import DistributedDataParallel as DDP

            ids = [self.device.index] if self.device.type == "cuda" else None
            self.ddp = DDP(self.model, device_ids=ids, find_unused_parameters=True)
            if self.disc is not None:
                self.ddp_disc = DDP(self.disc, device_ids=ids)
        self.perceptual = PerceptualLoss(c.vgg_weights).to(self.device)
        self.sampler = PairSampler(self.dataset, c.batch_size, c.seed, rank=self.rank, world_size=self.world_size)
        self.step = 0
        self.writer = None

    def _param_groups(self) -> list[dict]:
        """The trainable parameters, one Adam group per distinct `lr_mult` (by top-level submodule name)."""
        c = self.config
        children = dict(self.model.named_children())
        unknown = sorted(set(c.lr_mult) - set(children))
        if unknown:
            raise ValueError(f"lr_mult names unknown submodules {unknown}; the avatar's are {sorted(children)}")
        groups: dict[float, list] = {}
        for name, module in children.items():
            ps = [p for p in module.parameters() if p.requires_grad]
            if ps:
                groups.setdefault(float(c.lr_mult.get(name, 1.0)), []).extend(ps)
        return [{"params": ps, "lr": c.lr * m} for m, ps in sorted(groups.items())]

    # -- checkpoints ---------------------------------------------------------------------------------------
    def state(self) -> dict:
        s = {"format": "oneshot-train", "step": self.step, "stage": self.config.stage, "config": self.config.to_json(),
             "avatar_config": self.model.config.to_json(), "model": self.model.state_dict(),
             "opt": self.opt.state_dict(), "rng_cpu": torch.get_rng_state()}
        if self.device.type == "cuda":
            s["rng_cuda"] = torch.cuda.get_rng_state(self.device)
        if self.ema_model is not None:
            s["ema"] = self.ema_model.state_dict()
        if self.disc is not None:
            s["disc"] = self.disc.state_dict()
            s["d_opt"] = self.d_opt.state_dict()
        return s

    @property
    def final_model(self) -> OneShotAvatar:
        """The model to use after training: the weight average when ``ema`` > 0, else the trained model."""
        return self.ema_model if self.ema_model is not None else self.model

    @torch.no_grad()
    def update_ema(self) -> None:
        """ema <- ema + (1 - d) (model - ema), d = min(ema, (1 + step) / (10 + step)) (so that the random
        initial weights fade out quickly), after the optimizer step; buffers are copied."""
        if self.ema_model is None:
            return
        d = min(self.config.ema, (1 + self.step) / (10 + self.step))
        for pe, p in zip(self.ema_model.parameters(), self.model.parameters()):
            if p.requires_grad:
                pe.lerp_(p.detach(), 1 - d)
        for be, b in zip(self.ema_model.buffers(), self.model.buffers()):
            be.copy_(b)

    def save(self) -> Path:
        path = self.out / "checkpoints" / "last.pt"
        if self.step > 0:  # this stage's part has been trained: the avatar file says so (commands read it)
            part = "low_res" if self.config.stage == 1 else "super_resolution"
            for m in (self.model, self.final_model):
                if m.trained_parts is not None:
                    m.trained_parts = m.trained_parts | {part}
        if self.rank == 0:
            save_checkpoint_atomic(self.state(), path)
            tmp = self.out / ".avatar.safetensors.tmp"
            self.final_model.save(tmp)
            os.replace(tmp, self.out / "avatar.safetensors")
        return path

    def resume(self, path=None) -> int:
        """Load `path` (default: out/checkpoints/last.pt); returns the step it continues from."""
        ckpt = load_checkpoint(path or self.out / "checkpoints" / "last.pt")
        if int(ckpt.get("stage", 1)) != self.config.stage:
            raise ValueError(f"resuming stage {self.config.stage} from a stage-{ckpt.get('stage', 1)} checkpoint: "
                             f"start stage {self.config.stage} with init= (its avatar.safetensors) instead")
        # through AvatarConfig, so that a checkpoint written under older field names compares equal
        stored = AvatarConfig.from_json(ckpt["avatar_config"]).to_json()
        if json.loads(stored) != json.loads(self.model.config.to_json()):
            raise ValueError("the checkpoint's avatar config differs from this run's (another --config or preset?)")
        self.model.load_state_dict(ckpt["model"])
        self.opt.load_state_dict(ckpt["opt"])
        if self.ema_model is not None:
            if "ema" not in ckpt:
                raise ValueError("this run averages weights (ema > 0) but the checkpoint has no average")
            self.ema_model.load_state_dict(ckpt["ema"])
        if self.disc is not None:
            self.disc.load_state_dict(ckpt["disc"])
            self.d_opt.load_state_dict(ckpt["d_opt"])
        torch.set_rng_state(ckpt["rng_cpu"])
        if "rng_cuda" in ckpt and self.device.type == "cuda":
            torch.cuda.set_rng_state(ckpt["rng_cuda"], self.device)
        self.step = int(ckpt["step"])
        return self.step

    # -- one step ------------------------------------------------------------------------------------------
    def _render_loss(self, rgb: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, dict]:
        c = self.config
        t = _resize(target, rgb.shape[-1])
        l1 = l1_loss(rgb, t)
        per = self.perceptual(rgb, t) if self.perceptual.enabled else rgb.new_zeros(())
        return c.l1 * l1 + c.perceptual * per, {"l1": l1.detach(), "perceptual": per.detach()}

    def train_step(self, batch: dict) -> dict:
        c, step = self.config, self.step
        torch.manual_seed(c.seed * 7919 + step * 101 + self.rank)  # stochastic depth etc.: a function of the step
        seed = (c.seed * 1_000_003 + step) * 64 + self.rank
        autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=c.bf16 and self.device.type == "cuda")
        logs = {}
        if c.stage == 1:
            with autocast:
                out = self.ddp(batch, seed=seed, super_resolve=False)
            target = batch["target_image"]
            frac = step / max(c.steps, 1)
            active = ["canonical"] + (["canonical+expression"] if frac >= c.expression_start else []) + \
                (["full"] if frac >= c.appearance_start else [])
            loss = 0.0
            for name in active:
                term, parts = self._render_loss(out[name].features[:, :3].float(), target)
                loss = loss + term
                logs.update({f"{name}/{k}": v for k, v in parts.items()})
            neu = neutral_expression_loss(out["neutral"].features[:, :3].float(), out["neutral_3dmm_image"],
                                          out["neutral_3dmm_mask"], self.perceptual, l1_weight=c.neutral_l1,
                                          perceptual_weight=c.neutral_perceptual)
            loss = loss + neu
            logs["neutral"] = neu.detach()
            if c.density > 0:
                planes = sum(out["planes"].values()) if "full" in active else out["planes"]["canonical"]
                g = torch.Generator(device=self.device).manual_seed(seed)
                dens = density_smoothness(self.model.decoder, planes.float(), c.density_points, generator=g)
                loss = loss + c.density * dens
                logs["density"] = dens.detach()
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            logs["grad_norm"] = torch.nn.utils.clip_grad_norm_(self.model.parameters(), c.grad_clip).detach()
            self.opt.step()
            self.update_ema()
        else:
            with autocast:
                out = self.ddp(batch, seed=seed, super_resolve=True)
            fake = out["image"].float()
            low = out["full"].features[:, :3].float()
            target = _resize(batch["target_image"], fake.shape[-1])
            real_low = _resize(batch["target_image"], low.shape[-1])
            # Generator (the super-resolution only).
            rec, parts = self._render_loss(fake, target)
            adv = g_nonsaturating_loss(self.ddp_disc(dual_input(fake, low)))
            loss = rec + c.gan * adv
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            logs.update({f"sr/{k}": v for k, v in parts.items()})
            logs["gan/g"] = adv.detach()
            logs["grad_norm"] = torch.nn.utils.clip_grad_norm_(self.model.parameters(), c.grad_clip).detach()
            self.opt.step()
            self.update_ema()
            # Discriminator: logistic loss, lazy R1 on real pairs.
            real = dual_input(target, real_low)
            d_loss = d_logistic_loss(self.ddp_disc(real), self.ddp_disc(dual_input(fake.detach(), low.detach())))
            if c.r1 > 0 and step % c.r1_every == 0:
                real = real.detach().requires_grad_(True)
                d_loss = d_loss + c.r1 / 2 * c.r1_every * r1_penalty(self.ddp_disc(real), real)
            self.d_opt.zero_grad(set_to_none=True)
            d_loss.backward()
            self.d_opt.step()
            logs["gan/d"] = d_loss.detach()
        logs["loss"] = loss.detach()
        self._last_out = out
        return {k: float(v) for k, v in logs.items()}

    # -- the loop -------------------------------------------------------------------------------------------
    def fit(self, steps: int | None = None) -> list[dict]:
        """Train until `steps` (default config.steps) or config.max_minutes; returns the logged records."""
        c = self.config
        total = c.steps if steps is None else steps
        if self.rank == 0:
            self.out.mkdir(parents=True, exist_ok=True)
            (self.out / "train_config.json").write_text(c.to_json())
            self.writer = _tensorboard(self.out)
        start, records = time.time(), []
        log_path = self.out / "log.jsonl"
        budget = c.max_minutes * 60 if c.max_minutes is not None else None
        # A time-budgeted run shows the time left (its step count is only a ceiling); otherwise the steps.
        bar = progress_bar(round(budget) if budget else total, initial=0 if budget else self.step,
                           desc=f"stage {c.stage}", unit="s" if budget else "step", enabled=self.progress,
                           bar_format="{l_bar}{bar}| {elapsed}<{remaining} {postfix}" if budget else None)
        with bar:
            while self.step < total:
                batch = collate_pairs(self.dataset, self.sampler.pairs(self.step), self.face, self.device)
                logs = self.train_step(batch)
                if not math.isfinite(logs["loss"]):
                    raise FloatingPointError(f"loss became {logs['loss']} at step {self.step}; the last checkpoint "
                                             f"is intact")
                self.step += 1
                elapsed = time.time() - start
                stopping = budget is not None and elapsed > budget
                bar.update(min(round(elapsed), bar.total) - bar.n if budget else 1)
                if self.rank == 0 and (self.step % c.log_every == 0 or self.step == total or stopping):
                    rec = {"step": self.step, "time": round(elapsed, 3), **logs}
                    records.append(rec)
                    with log_path.open("a") as f:
                        f.write(json.dumps(rec) + "\n")
                    if self.writer is not None:
                        for k, v in logs.items():
                            self.writer.add_scalar(k, v, self.step)
                    bar.set_postfix_str(f"step {self.step}, loss {logs['loss']:.4f}", refresh=False)
                if self.rank == 0 and c.image_every and self.step % c.image_every == 0:
                    self.write_images(batch)
                if c.checkpoint_every and self.step % c.checkpoint_every == 0:
                    self.save()
                if stopping:
                    break
        self.save()
        if self.writer is not None:
            self.writer.flush()
        return records

    @torch.no_grad()
    def write_images(self, batch: dict) -> Path:
        """A grid per row: source, target, the three renders (or the SR output in stage 2), depth."""
        from ..imageio import image_grid

        out = self._last_out
        S = batch["source_image"].shape[-1]
        cols = [batch["source_image"], batch["target_image"]]
        for name in ("canonical", "canonical+expression", "full"):
            cols.append(_resize(out[name].features[:, :3].float(), S))
        d = out["full"].depth.float()
        d = (d - d.amin((2, 3), keepdim=True)) / (d.amax((2, 3), keepdim=True) - d.amin((2, 3), keepdim=True) + 1e-6)
        cols.append(_resize(d.expand(-1, 3, -1, -1) * 2 - 1, S))
        if out.get("image") is not None:
            cols.append(_resize(out["image"].float(), S))
        grid = image_grid([[col[i] for col in cols] for i in range(min(4, cols[0].shape[0]))])
        path = self.out / "images" / f"step_{self.step:07d}.png"
        from ..imageio import write_png

        path.parent.mkdir(parents=True, exist_ok=True)
        write_png(path, grid)
        if self.writer is not None:
            self.writer.add_image("renders", torch.from_numpy(grid).permute(2, 0, 1), self.step)
        return path


def _tensorboard(out: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except Exception:  # noqa: BLE001 - tensorboard is optional
        return None
    try:
        return SummaryWriter(str(out / "tensorboard"))
    except Exception as e:  # noqa: BLE001
        warnings.warn(f"TensorBoard logging disabled: {e}", stacklevel=2)
        return None
