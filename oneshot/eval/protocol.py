"""Evaluation protocols over a face dataset (:mod:`oneshot.data.format`), the per-sample scorer, and the
aggregation into the paper's tables.

Protocols (pairs of sample indices (source, target); identities in sorted order, samples in file order):

* ``reconstruction``: each identity's first sample reconstructed from itself (source = target), as the paper's
  CelebA table: on a dataset of single images, every image.
* ``self``: the first sample (frame) of each identity is the source and every other sample of the identity a
  target, whose expression and pose drive it (HDTF's same-identity reenactment; ``max_targets`` keeps the first k).
* ``cross``: pairs from a file (``SOURCE DRIVER`` per line: sample ids or identity names; an identity as source
  means its first sample, as driver all its samples), by default every identity paired with the next in sorted
  order (the last with the first). No ground truth: only CSIM (against the source), AED / APD (against the
  driver) and FID (renders against the sources).
* ``geometry`` (:mod:`oneshot.eval.geometry`, :func:`run_geometry`): each identity's first sample reconstructed,
  its mesh exported and compared with the exact morphable-model mesh of the sample (synthetic data): Chamfer
  distance and normal consistency over the face region in millimetres, beside the mean-face baseline. It scores
  shapes, not images, so it is not in :data:`PROTOCOLS` (whose pairs :func:`run_protocol` renders).

Renders are deterministic: evenly spaced samples (``stratified=False``) and a fixed seed, so a sample's result
does not depend on the batch it is in.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from . import metrics as M

__all__ = ["build_scorer", "PROTOCOLS", "COLUMNS", "LOWER_IS_BETTER", "build_pairs", "Scorer", "run_protocol", "aggregate", "arcface_crops",
           "deterministic_renders", "canonical_five_pixels", "SSIM_SETTINGS"]

PROTOCOLS = ("reconstruction", "self", "cross")
#: Column order of the paper's tables (Table 1 reconstruction; Table 2 same-identity; Tables 1-3 cross), then the
#: metrics the paper does not list for that protocol but which have a ground truth.
COLUMNS = {"reconstruction": ("l1", "lpips", "psnr", "ssim", "fid", "csim", "aed", "apd", "akd"),
           "self": ("psnr", "ssim", "csim", "aed", "apd", "akd", "lpips", "l1", "fid"),
           "cross": ("csim", "aed", "apd", "fid")}
LOWER_IS_BETTER = {"l1", "lpips", "fid", "aed", "apd", "akd"}
#: SSIM settings by name: Wang et al.'s (scikit-image's documented match to the paper; the default) and scikit-image's
#: own defaults (uniform 7 x 7 window, sample covariance).
SSIM_SETTINGS = {"wang": dict(gaussian_weights=True, sigma=1.5, use_sample_covariance=False),
                 "skimage-default": dict(gaussian_weights=False, win_size=7, use_sample_covariance=True)}
NAMES = {"l1": "L1", "lpips": "LPIPS", "psnr": "PSNR", "ssim": "SSIM", "fid": "FID", "csim": "CSIM", "aed": "AED",
         "apd": "APD", "akd": "AKD"}


def _sorted_identities(ds) -> list[str]:
    return sorted(ds.identities)


def _read_pairs_file(ds, path) -> list[tuple[int, int]]:
    by_id = {s["id"]: i for i, s in enumerate(ds.samples)}
    out = []
    for n, line in enumerate(Path(path).read_text().splitlines(), 1):
        line = line.split("#", 1)[0].replace(",", " ").strip()
        if not line:
            continue
        parts = line.split()
        if len(parts) != 2:
            raise ValueError(f"{path}:{n}: expected 'SOURCE DRIVER' (sample ids or identity names), got {line!r}")
        src, drv = parts
        if src in by_id:
            s = by_id[src]
        elif src in ds.identities:
            s = ds.identities[src][0]
        else:
            raise ValueError(f"{path}:{n}: {src!r} is neither a sample id nor an identity of {ds.root}")
        if drv in by_id:
            out.append((s, by_id[drv]))
        elif drv in ds.identities:
            out += [(s, t) for t in ds.identities[drv]]
        else:
            raise ValueError(f"{path}:{n}: {drv!r} is neither a sample id nor an identity of {ds.root}")
    if not out:
        raise ValueError(f"{path}: no pairs in the file")
    return out


def build_pairs(ds, protocol: str, *, pairs_file=None, max_targets: int | None = None,
                limit: int | None = None) -> list[tuple[int, int]]:
    """(source, target) sample indices of `protocol` on dataset `ds` (see the module's text). `max_targets`: at
    most that many targets per source (self, cross); `limit`: at most that many pairs in all."""
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol must be one of {PROTOCOLS}, got {protocol!r}")
    for name, v in (("max_targets", max_targets), ("limit", limit)):
        if v is not None and not (isinstance(v, int) and v >= 1):
            raise ValueError(f"{name} must be an int >= 1 (or None), got {v!r}")
    if pairs_file is not None and protocol != "cross":
        raise ValueError(f"a pairs file is for the cross protocol, not {protocol!r}")
    ids = _sorted_identities(ds)
    if not ids:
        raise ValueError(f"the dataset at {ds.root} has no samples")
    if protocol == "reconstruction":
        pairs = [(ds.identities[i][0], ds.identities[i][0]) for i in ids]
    elif protocol == "self":
        pairs = [(ds.identities[i][0], t) for i in ids for t in ds.identities[i][1:][:max_targets]]
        if not pairs:
            raise ValueError(f"self-reenactment needs identities with two or more samples (frames); every identity "
                             f"of {ds.root} has one")
    elif pairs_file is not None:
        pairs = _read_pairs_file(ds, pairs_file)
        if max_targets is not None:
            kept, count = [], {}
            for s, t in pairs:
                if count.get(s, 0) < max_targets:
                    kept.append((s, t))
                    count[s] = count.get(s, 0) + 1
            pairs = kept
    else:
        if len(ids) < 2:
            raise ValueError(f"cross-identity reenactment needs two or more identities; {ds.root} has one")
        pairs = [(ds.identities[ids[k]][0], t) for k in range(len(ids))
                 for t in ds.identities[ids[(k + 1) % len(ids)]][:max_targets]]
    return pairs[:limit] if limit is not None else pairs


@contextlib.contextmanager
def deterministic_renders(model):
    """Evenly spaced ray samples while inside (``RenderSettings.stratified = False``)."""
    r = model.renderer
    old = r.settings
    r.settings = dataclasses.replace(old, stratified=False)
    try:
        yield model
    finally:
        r.settings = old


def canonical_five_pixels(size: int) -> Tensor:
    """Where the five canonical points (eyes, nose tip, mouth corners) land in a `size` x `size` crop of oneshot's
    framing (:data:`oneshot.face3d.CANONICAL_FIVE`): [5, 2] pixels."""
    from .. import cameras
    from ..face3d.align import CANONICAL_FIVE, RESCALE
    from ..face3d.pose import RECON_FOCAL

    side = 224 * RECON_FOCAL / cameras.FOCAL
    k = RESCALE * size / side
    p = CANONICAL_FIVE[:, :2].clone()
    return torch.stack([size / 2 + p[:, 0] * k, size / 2 - p[:, 1] * k], 1)


def _similarity(src: Tensor, dst: Tensor) -> Tensor:
    """The 2 x 3 similarity (Umeyama, no reflection) taking points src [N, 2] to dst [N, 2] (float64)."""
    src, dst = src.double(), dst.double()
    ms, md = src.mean(0), dst.mean(0)
    s, d = src - ms, dst - md
    cov = d.T @ s / len(src)
    u, sv, vt = torch.linalg.svd(cov)
    sign = torch.ones(2, dtype=torch.float64)
    if torch.det(u @ vt) < 0:
        sign[-1] = -1
    R = u @ torch.diag(sign) @ vt
    scale = (sv * sign).sum() / s.square().sum(1).mean()
    t = md - scale * R @ ms
    return torch.cat([scale * R, t[:, None]], 1)


def arcface_crops(images: Tensor, points: Tensor | None = None) -> Tensor:
    """112 x 112 ArcFace crops of images [B, 3, H, W] in [0, 1], as [-1, 1]: the five points [B, 5, 2] (default:
    oneshot's canonical framing; pixel centres at +0.5) warped onto insightface's template by the least-squares
    similarity, bilinear, zero padding."""
    from .networks import ARCFACE_TEMPLATE

    B, _, H, W = images.shape
    if points is None:
        points = canonical_five_pixels(W).expand(B, 5, 2) * torch.tensor([1.0, H / W], dtype=torch.float64)
    # insightface warps with OpenCV, whose pixel centres sit at integer coordinates; oneshot's at +0.5.
    dst = torch.tensor(ARCFACE_TEMPLATE, dtype=torch.float64) + 0.5
    thetas = []
    for b in range(B):
        A = _similarity(dst, points[b])  # output pixel -> input pixel
        # normalised coordinates (align_corners=False): x_n = (2 x + 1) / size - 1 with x the pixel index;
        # a pixel centre's coordinate is index + 0.5.
        to_in = torch.tensor([[2 / W, 0, -1], [0, 2 / H, -1], [0, 0, 1]], dtype=torch.float64)
        from_out = torch.tensor([[112 / 2, 0, 112 / 2], [0, 112 / 2, 112 / 2], [0, 0, 1]], dtype=torch.float64)
        A3 = torch.cat([A, torch.tensor([[0, 0, 1]], dtype=torch.float64)])
        thetas.append((to_in @ A3 @ from_out)[:2])
    theta = torch.stack(thetas).to(images.device, torch.float32)
    grid = F.affine_grid(theta, [B, 3, 112, 112], align_corners=False)
    return F.grid_sample(images.float(), grid, mode="bilinear", padding_mode="zeros", align_corners=False) * 2 - 1


class Scorer:
    """Computes the per-sample metrics of a batch and collects FID features.

    Networks are optional: a metric whose weights (or the face front end) are missing is skipped; ``skipped``
    maps it to the one line that says what it needs. `face_model` and (optionally) `recon` give AED / APD:
    coefficients from Deep3DFaceRecon's regressor when `recon` is set, else from the 68-landmark fit of
    `face_model`; both need the landmarks of the face front end (``oneshot-avatar[faces]``), which also give AKD.
    """

    def __init__(self, *, lpips=None, inception=None, arcface=None, faces=None, face_model=None, recon=None,
                 ssim: str = "wang"):
        if ssim not in SSIM_SETTINGS:
            raise ValueError(f"ssim must be one of {tuple(SSIM_SETTINGS)}, got {ssim!r}")
        self.ssim_kwargs = SSIM_SETTINGS[ssim]
        self.lpips, self.inception, self.arcface = lpips, inception, arcface
        self.faces, self.face_model, self.recon = faces, face_model, recon
        self.skipped: dict[str, str] = {}
        self.fake_features: list[Tensor] = []
        self.real_features: list[Tensor] = []

    def _landmarks(self, images: Tensor) -> Tensor:
        """[B, 68, 2] iBUG landmarks in the images' pixels (NaN where no face is found); small images are enlarged
        to 256 for the detector."""
        B, _, H, W = images.shape
        k = max(1.0, 256 / min(H, W))
        big = images if k == 1 else F.interpolate(images, scale_factor=k, mode="bilinear", align_corners=False)
        rgb8 = (big.clamp(0, 1) * 255 + 0.5).byte().permute(0, 2, 3, 1).cpu().numpy()
        out = torch.full((B, 68, 2), math.nan, dtype=torch.float64)
        for b in range(B):
            found = self.faces(rgb8[b])
            if found:
                out[b] = found[0].landmarks.double() / k
        return out

    def _coeffs(self, images: Tensor, lm: Tensor, size: int) -> tuple[Tensor, Tensor]:
        """(expression [B, K], pose [B, 6]: rotation (radians) then translation) where landmarks exist, NaN
        elsewhere."""
        from ..face3d import estimate_face

        B = images.shape[0]
        K = self.face_model.num_expression
        exp = torch.full((B, K), math.nan, dtype=torch.float64)
        pose = torch.full((B, 6), math.nan, dtype=torch.float64)
        ok = torch.isfinite(lm).flatten(1).all(1)
        if ok.any():
            idx = ok.nonzero().flatten()
            est = estimate_face(images[idx].float().cpu(), lm[idx].float(), model=self.face_model, recon=self.recon,
                                size=size)
            c = est.coeffs
            exp[idx] = c.expression.double().cpu()
            pose[idx] = torch.cat([c.rotation, c.translation], 1).double().cpu()
        return exp, pose

    @torch.no_grad()
    def score(self, protocol: str, render: Tensor, target: Tensor, source: Tensor) -> dict[str, Tensor]:
        """Per-sample metrics [B] (float64, NaN where undefined) of renders against targets (and sources), all
        [B, 3, H, W] in [0, 1] at one resolution."""
        cols = COLUMNS[protocol]
        out: dict[str, Tensor] = {}
        has_truth = protocol != "cross"
        if has_truth:
            out["l1"] = M.l1(render, target).cpu()
            out["psnr"] = M.psnr(render, target).cpu()
            out["ssim"] = M.ssim(render, target, **self.ssim_kwargs).cpu()
            if self.lpips is not None:
                out["lpips"] = self.lpips(render * 2 - 1, target * 2 - 1).double().cpu()
        if self.arcface is not None and "csim" in cols:
            ref = target if has_truth else source
            e1, e2 = self.arcface(arcface_crops(render)), self.arcface(arcface_crops(ref))
            out["csim"] = M.cosine_similarity(e1, e2).cpu()
        if self.inception is not None:
            self.fake_features.append(self.inception(render).double().cpu())
            self.real_features.append(self.inception(target if has_truth else source).double().cpu())
        if self.faces is not None and any(c in cols for c in ("aed", "apd", "akd")):
            lm_r, lm_t = self._landmarks(render), self._landmarks(target)
            if "akd" in cols:
                out["akd"] = M.keypoint_distance(lm_r, lm_t) * (256 / render.shape[-1])
            if self.face_model is not None:
                er, pr = self._coeffs(render, lm_r, render.shape[-1])
                et, pt = self._coeffs(target, lm_t, render.shape[-1])
                out["aed"] = M.coefficient_distance(er, et)
                out["apd"] = M.coefficient_distance(pr, pt)
        return {k: v for k, v in out.items() if k in cols}

    def fid(self) -> float | None:
        if self.inception is None or not self.fake_features:
            return None
        fake, real = torch.cat(self.fake_features), torch.cat(self.real_features)
        if fake.shape[0] < 2:
            return None
        return M.fid_from_features(real, fake)


def _resize(x: Tensor, size: int) -> Tensor:
    if x.shape[-1] == size and x.shape[-2] == size:
        return x
    return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=size < x.shape[-1])


@torch.no_grad()
def run_protocol(model, ds, pairs: list[tuple[int, int]], scorer: Scorer, protocol: str, *, batch: int = 8,
                 seed: int = 0, super_resolve: bool = False, device=None, progress: bool = False,
                 on_batch: Callable | None = None) -> list[dict]:
    """Render every pair and score it; returns one row per pair (``source``, ``target`` sample ids, the metrics).
    `on_batch(rows, renders, batch_pairs)` is called after each batch (renders [b, 3, h, w] in [0, 1])."""
    from .._progress import progress_bar

    from ..data import collate_pairs

    if not (isinstance(batch, int) and batch >= 1):
        raise ValueError(f"batch must be an int >= 1, got {batch!r}")
    device = torch.device(device) if device is not None else next(model.parameters()).device
    model.eval()
    rows: list[dict] = []
    bar = progress_bar(len(pairs), desc=f"evaluate {protocol}", unit="pair", enabled=progress)
    with deterministic_renders(model):
        for i in range(0, len(pairs), batch):
            chunk = pairs[i:i + batch]
            b = collate_pairs(ds, chunk, model.face_model, device=device)
            out = model(b, seed=seed, super_resolve=super_resolve)
            img = out["image"] if super_resolve else out["full"].features[:, :3]
            render = ((img.float().clamp(-1, 1) + 1) / 2)
            size = render.shape[-1]
            target = (_resize(b["target_image"].float(), size) + 1) / 2
            source = (_resize(b["source_image"].float(), size) + 1) / 2
            scores = scorer.score(protocol, render, target.clamp(0, 1), source.clamp(0, 1))
            new = []
            for k, (s, t) in enumerate(chunk):
                row = {"source": ds.samples[s]["id"], "target": ds.samples[t]["id"],
                       "identity": ds.samples[s]["identity"]}
                row.update({m: float(v[k]) for m, v in scores.items()})
                new.append(row)
            rows += new
            if on_batch is not None:
                on_batch(new, render.cpu(), chunk)
            bar.update(len(chunk))
    bar.close()
    return rows


def aggregate(rows: list[dict], protocol: str, scorer: Scorer) -> dict:
    """{metric: {"mean", "n", "missing"}} over the rows (NaN entries, where no face was found, left out), FID from the collected features; metrics that
    could not be computed are listed under "skipped" with what they need."""
    res: dict = {}
    for m in COLUMNS[protocol]:
        if m == "fid":
            f = scorer.fid()
            if f is not None:
                res["fid"] = {"value": f, "n": sum(x.shape[0] for x in scorer.fake_features)}
            continue
        vals = torch.tensor([r[m] for r in rows if m in r], dtype=torch.float64)
        if vals.numel():
            finite = vals[~torch.isnan(vals)]  # NaN: no face found; +inf PSNR (identical images) is kept
            res[m] = {"mean": float(finite.mean()) if finite.numel() else math.nan, "n": int(finite.numel()),
                      "missing": int(vals.numel() - finite.numel())}
    return res


def build_scorer(protocol: str, face_model, device=None, *, lpips_alexnet=None, lpips_heads=None, inception=None,
                 arcface=None, faces: bool = True, recon=None, ssim: str = "wang", log=print) -> Scorer:
    """A :class:`Scorer` for `protocol` with the networks whose files are given (paths; None skips the metric):
    torchvision's AlexNet weights and the lpips heads (default: an installed lpips package's) for LPIPS, pytorch-fid's
    Inception for FID, an arcface_torch backbone for CSIM; the face front end (``faces``, when installed) for AED, APD
    and AKD, with Deep3DFaceRecon's regressor (`recon`) or else the 68-landmark fit of `face_model`. `log` gets one
    line per skipped metric saying which file (or extra) it needs; ``scorer.skipped`` keeps them."""
    from ..face3d import load_recon_checkpoint
    from ..face3d.detect import faces_available
    from .networks import installed_lpips_heads, load_arcface, load_fid_inception, load_lpips

    cols = COLUMNS[protocol]
    skipped = {}
    lpips_net = inception_net = arcface_net = front = recon_net = None
    if "lpips" in cols:
        if lpips_alexnet is None:
            skipped["lpips"] = ("needs --lpips-alexnet alexnet-owt-7be5be79.pth (torchvision's AlexNet weights) and the "
                                "lpips heads (--lpips-heads alex.pth, or pip install lpips --no-deps)")
        elif lpips_heads is None and installed_lpips_heads() is None:
            skipped["lpips"] = ("needs the lpips linear heads: --lpips-heads weights/v0.1/alex.pth (from the lpips "
                                "package; pip install lpips --no-deps installs them)")
        else:
            lpips_net = load_lpips(lpips_alexnet, lpips_heads).to(device)
    if inception is None:
        skipped["fid"] = "needs --inception pt_inception-2015-12-05-6726825d.pth (pytorch-fid's FID Inception weights)"
    else:
        inception_net = load_fid_inception(inception).to(device)
    if "csim" in cols:
        if arcface is None:
            skipped["csim"] = "needs --arcface backbone.pth (insightface arcface_torch IResNet, e.g. ms1mv3 r100)"
        else:
            arcface_net = load_arcface(arcface).to(device)
    wants_faces = [m for m in ("aed", "apd", "akd") if m in cols]
    if wants_faces:
        if not faces:
            for m in wants_faces:
                skipped[m] = "turned off by --no-faces"
        elif not faces_available():
            for m in wants_faces:
                skipped[m] = "needs the face front end: pip install 'oneshot-avatar[faces]'"
        else:
            from ..face3d.detect import FaceFrontEnd

            front = FaceFrontEnd(max_faces=1)
            if recon is not None:
                recon_net = load_recon_checkpoint(recon).to("cpu")
    scorer = Scorer(lpips=lpips_net, inception=inception_net, arcface=arcface_net, faces=front, face_model=face_model,
                    recon=recon_net, ssim=ssim)
    scorer.skipped = skipped
    for m, why in skipped.items():
        log(f"{m.upper()} skipped: {why}")
    return scorer
