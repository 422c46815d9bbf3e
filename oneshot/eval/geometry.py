"""The geometry protocol: how close the avatar's surface is to the true face, where the truth is known.

Synthetic data (``oneshot data synth``) renders every sample from the exact mesh of a morphable model: the
identity and expression coefficients stored with the sample (``samples.jsonl``; float32 values written as JSON
doubles, so they read back bit for bit) give ``model.vertices(identity, expression)`` in the world frame, the frame
of the avatar's tri-planes (the pose lives in the camera label). So, for each source (each identity's first
sample, as the reconstruction protocol):

1. the avatar is reconstructed from the source image, camera and coefficients, given the source's own expression,
   and its iso-surface exported (:func:`oneshot.export.export_avatar`, canonical pose: the world frame);
2. both surfaces are sampled uniformly by area, with their face normals (seeded): ``samples`` query points on
   each, measured against ``density`` x ``samples`` reference points of the other (so a nearest reference point is
   within ~0.25 mm of the nearest surface point: see :func:`compare_surfaces`);
3. the comparison is restricted to the face region (the morphable model's ``face`` region: triangles whose three
   vertices are in it): truth points on face triangles, and the predicted points whose nearest truth point lies
   on a face triangle (so the back of the head, the neck and floaters elsewhere do not count);
4. accuracy = mean distance of those predicted points to the truth's face points, completeness = mean distance
   of the truth's face points to the predicted surface, Chamfer = (accuracy + completeness) / 2 (the mean of
   both directions, as Occupancy Networks' Chamfer-L1), in millimetres of the morphable model's metric scale
   (:data:`oneshot.export.MM_PER_WORLD_UNIT`, 370.4 mm per world unit); normal consistency = the mean |cos| between
   each point's normal and its nearest neighbour's, averaged over both directions (1 = parallel everywhere).

The baseline is the morphable model's mean face (zero identity and expression) at the sample's pose: in the world
frame, where the pose is the camera's, the mean shape itself. A source whose density never reaches the iso level
has no surface: its metrics are NaN and it is counted as ``no_surface``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch

if TYPE_CHECKING:  # for the annotations only
    from ..data import FaceDataset
    from ..models import OneShotAvatar

__all__ = ["GEOMETRY_METRICS", "GEOMETRY_NAMES", "surface_samples", "face_region_faces", "compare_surfaces",
           "true_mesh", "geometry_sources", "run_geometry", "aggregate_geometry", "geometry_table",
           "DEFAULT_GEOMETRY_RESOLUTION", "DEFAULT_SAMPLES", "DEFAULT_DENSITY"]

GEOMETRY_METRICS = ("chamfer", "accuracy", "completeness", "normal_consistency")
GEOMETRY_NAMES = {"chamfer": "Chamfer mm ↓", "accuracy": "accuracy mm ↓", "completeness": "completeness mm ↓",
                  "normal_consistency": "normal consistency ↑"}
#: Grid points per axis of the protocol's exports (voxel 1 / 127 world units = 2.9 mm).
DEFAULT_GEOMETRY_RESOLUTION = 128
#: Query points sampled on each surface, and reference points per query point (the nearest reference point then lies
#: within ~0.2 mm of the nearest surface point on a head: see compare_surfaces).
DEFAULT_SAMPLES = 20_000
DEFAULT_DENSITY = 25


def surface_samples(vertices: np.ndarray, faces: np.ndarray, n: int, *, seed: int = 0,
                    face_mask: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """`n` points uniformly distributed by area over a triangle mesh.

    Args:
        vertices: [V, 3]; faces: [F, 3] int.
        face_mask: optional [F] bool: sample only those triangles.

    Returns:
        points [n, 3] float64, their triangles' unit normals [n, 3] (right-hand rule), the triangle of each
        point [n] int64. Empty arrays when the (masked) mesh has no area.
    """
    v = np.asarray(vertices, dtype=np.float64)
    f = np.asarray(faces, dtype=np.int64)
    if face_mask is not None:
        f = f[np.asarray(face_mask, dtype=bool)]
    a, b, c = v[f[:, 0]], v[f[:, 1]], v[f[:, 2]]
    cross = np.cross(b - a, c - a)
    area = np.linalg.norm(cross, axis=1)
    if len(f) == 0 or area.sum() <= 0 or n < 1:
        return np.zeros((0, 3)), np.zeros((0, 3)), np.zeros(0, dtype=np.int64)
    rng = np.random.default_rng(seed)
    idx = rng.choice(len(f), size=n, p=area / area.sum())
    r1, r2 = rng.random(n), rng.random(n)
    s = np.sqrt(r1)
    w0, w1, w2 = 1 - s, s * (1 - r2), s * r2
    pts = w0[:, None] * a[idx] + w1[:, None] * b[idx] + w2[:, None] * c[idx]
    normals = cross[idx] / np.maximum(area[idx], 1e-30)[:, None]
    if face_mask is not None:
        idx = np.flatnonzero(np.asarray(face_mask, dtype=bool))[idx]
    return pts, normals, idx


def face_region_faces(face_model) -> np.ndarray:
    """[F] bool: the morphable model's triangles whose three vertices are in its ``face`` region."""
    region = face_model.region("face").cpu().numpy()
    return region[face_model.faces.cpu().numpy()].all(1)


def true_mesh(face_model, coeffs) -> np.ndarray:
    """The exact mesh [V, 3] (float64, world frame) of one sample's identity and expression
    (:class:`~oneshot.face3d.Coeffs` of batch 1); its triangles are ``face_model.faces``."""
    v = face_model.vertices(coeffs.identity.to(face_model.mean), coeffs.expression.to(face_model.mean))
    return v[0].detach().double().cpu().numpy()


def compare_surfaces(pred_vertices: np.ndarray, pred_faces: np.ndarray, true_vertices: np.ndarray,
                     true_faces: np.ndarray, region: np.ndarray, *, samples: int = DEFAULT_SAMPLES,
                     density: int = DEFAULT_DENSITY, seed: int = 0, scale: float | None = None) -> dict:
    """Accuracy, completeness, Chamfer and normal consistency of a predicted surface against the truth over a
    region of the truth (see the module's text).

    Each direction measures `samples` query points of one surface against `density` x `samples` reference points
    of the other (both uniform by area), so that the distance to the nearest reference point is close to the
    distance to the surface: the reference spacing adds at most sqrt(E[r^2]) = sqrt(A / (pi n)) for a surface of
    area A sampled with n points (Poisson), about 0.2 mm on a head at the defaults.

    Args:
        pred_vertices: [V, 3], pred_faces: [F, 3]: the predicted mesh (world units).
        true_vertices: [V', 3], true_faces: [F', 3]: the true mesh (world units).
        region: [F'] bool: the true triangles that count (the face).
        samples: query points on each surface; density: reference points per query point.
        scale: distance units per world unit (default :data:`oneshot.export.MM_PER_WORLD_UNIT`: millimetres).

    Returns:
        {"chamfer", "accuracy", "completeness" (in `scale` units), "normal_consistency", "points" (the predicted
        query points that count)}; NaN where undefined (no predicted point near the region).
    """
    from scipy.spatial import cKDTree

    from ..export.files import MM_PER_WORLD_UNIT

    scale = MM_PER_WORLD_UNIT if scale is None else float(scale)
    region = np.asarray(region, dtype=bool)
    if region.shape != (len(true_faces),):
        raise ValueError(f"region must be [F] = [{len(true_faces)}] bool (one per true triangle), got "
                         f"{list(region.shape)}")
    if not (isinstance(samples, int) and samples >= 1 and isinstance(density, int) and density >= 1):
        raise ValueError(f"samples and density must be ints >= 1, got {samples!r} and {density!r}")
    nan = {"chamfer": math.nan, "accuracy": math.nan, "completeness": math.nan, "normal_consistency": math.nan,
           "points": 0}
    # the truth: dense reference points over all of it (which predicted points are near the region?) and
    # query points on the region
    t_ref, t_ref_n, t_face = surface_samples(true_vertices, true_faces, density * samples, seed=seed + 1)
    in_region = region[t_face]
    r_ref, r_ref_n = t_ref[in_region], t_ref_n[in_region]
    r_q, r_q_n, _ = surface_samples(true_vertices, true_faces, samples, seed=seed + 2, face_mask=region)
    if len(r_q) == 0:
        raise ValueError("the region holds no true triangle with area: nothing to compare against")
    p_ref, p_ref_n, _ = surface_samples(pred_vertices, pred_faces, density * samples, seed=seed + 3)
    p_q, p_q_n, _ = surface_samples(pred_vertices, pred_faces, samples, seed=seed + 4)
    if len(p_q) == 0:
        return nan
    _, nearest = cKDTree(t_ref).query(p_q)
    keep = in_region[nearest]  # predicted points whose nearest truth is on the face
    if not keep.any():
        return nan
    p_q, p_q_n = p_q[keep], p_q_n[keep]
    d_acc, i_acc = cKDTree(r_ref).query(p_q)  # accuracy: the kept prediction -> the face
    d_com, i_com = cKDTree(p_ref).query(r_q)  # completeness: the face -> all of the prediction
    acc, com = float(d_acc.mean()) * scale, float(d_com.mean()) * scale
    nc = 0.5 * (float(np.abs((p_q_n * r_ref_n[i_acc]).sum(1)).mean())
                + float(np.abs((r_q_n * p_ref_n[i_com]).sum(1)).mean()))
    return {"chamfer": 0.5 * (acc + com), "accuracy": acc, "completeness": com, "normal_consistency": nc,
            "points": int(keep.sum())}


def geometry_sources(ds, *, limit: int | None = None) -> list[int]:
    """The sample indices the protocol scores: each identity's first sample, identities in sorted order (the
    reconstruction protocol's sources); at most `limit`."""
    if limit is not None and not (isinstance(limit, int) and limit >= 1):
        raise ValueError(f"limit must be an int >= 1 (or None), got {limit!r}")
    ids = sorted(ds.identities)
    if not ids:
        raise ValueError(f"the dataset at {ds.root} has no samples")
    out = [ds.identities[i][0] for i in ids]
    return out[:limit] if limit is not None else out


def _level_key(level: float) -> str:
    return f"{float(level):g}"


@torch.no_grad()
def run_geometry(model: OneShotAvatar, ds: FaceDataset, sources: list[int] | None = None, *,
                 resolution: int = DEFAULT_GEOMETRY_RESOLUTION, level: float | Sequence[float] | None = None,
                 samples: int = DEFAULT_SAMPLES, seed: int = 0, device=None, progress: bool = False,
                 on_row: Callable | None = None, on_mesh: Callable | None = None) -> list[dict]:
    """Score the avatar's geometry on the sources (default :func:`geometry_sources`) of a dataset whose samples
    carry their exact morphable-model coefficients (synthetic data); see the module's text.

    Args:
        model: an :class:`~oneshot.models.OneShotAvatar` built for the dataset's morphable model.
        ds: a :class:`~oneshot.data.FaceDataset`.
        sources: sample indices to score.
        resolution: the exports' grid points per axis.
        level: the iso level, or a sequence of levels scored from one density grid per source (None:
            :data:`oneshot.export.DEFAULT_LEVEL`).
        samples: query points per surface (:func:`compare_surfaces`).
        seed: their seed, and the reconstruction render's.
        on_row: called with each finished row (e.g. to append it to a file: nothing finished is lost).
        on_mesh: called as ``on_mesh(row, mesh)`` with each exported :class:`~oneshot.export.AvatarMesh` (not
            where there is no surface), before `on_row`.

    Returns:
        one dict per source and level (a source's rows together, levels in the given order): ``source``,
        ``identity``, ``level``, the avatar's ``chamfer``, ``accuracy``, ``completeness`` (mm) and
        ``normal_consistency``, the same for the mean-face baseline as ``baseline_<metric>``, ``surface`` (False
        when the density never reaches the level: the avatar's metrics are NaN) and ``faces``.
    """
    from .._progress import progress_bar
    from ..data import collate_pairs
    from ..export import DEFAULT_LEVEL, extract_meshes
    from .protocol import deterministic_renders

    levels = [DEFAULT_LEVEL] if level is None else ([level] if np.ndim(level) == 0 else list(level))
    sources = geometry_sources(ds) if sources is None else list(sources)
    device = torch.device(device) if device is not None else next(model.parameters()).device
    face = model.face_model
    faces = face.faces.cpu().numpy()
    region = face_region_faces(face)
    mean = face.mean.detach().double().cpu().numpy()
    s_ = model.renderer.settings
    model.eval()
    rows = []
    with deterministic_renders(model), \
            progress_bar(len(sources), desc="evaluate geometry", unit="source", enabled=progress) as bar:
        for s in sources:
            b = collate_pairs(ds, [(s, s)], face, device=device)
            avatar = model.reconstruct(b["source_image"], b["source_camera"], b["source_coeffs"], seed=seed)
            planes = model.planes(avatar, b["source_coeffs"], seed=seed)  # the source's own expression
            meshes = extract_meshes(planes, model.decoder, levels, resolution=resolution, box_warp=s_.box_warp,
                                    axes=s_.axes, colors=on_mesh is not None, backend=model.renderer.backend)
            truth = true_mesh(face, b["source_coeffs"])
            base = compare_surfaces(mean, faces, truth, faces, region, samples=samples, seed=seed)
            for lv, pred in zip(levels, meshes):
                row = {"source": ds.samples[s]["id"], "identity": ds.samples[s]["identity"], "level": lv,
                       "surface": pred is not None, "faces": 0 if pred is None else pred.num_faces}
                if pred is None:
                    row.update({m: math.nan for m in GEOMETRY_METRICS})
                else:
                    r = compare_surfaces(pred.vertices, pred.faces, truth, faces, region, samples=samples, seed=seed)
                    row.update({m: r[m] for m in GEOMETRY_METRICS})
                row.update({f"baseline_{m}": base[m] for m in GEOMETRY_METRICS})
                rows.append(row)
                if on_mesh is not None and pred is not None:
                    on_mesh(row, pred)
                if on_row is not None:
                    on_row(row)
            bar.update(1)
    return rows


def _means(rows, prefix: str) -> dict:
    res = {}
    for m in GEOMETRY_METRICS:
        vals = np.array([r[prefix + m] for r in rows], dtype=np.float64)
        ok = vals[np.isfinite(vals)]
        res[m] = {"mean": float(ok.mean()) if ok.size else math.nan, "n": int(ok.size)}
    return res


def aggregate_geometry(rows: list[dict]) -> dict:
    """The means over the rows of :func:`run_geometry`: ``{"sources", "levels", "avatar": {level: {metric:
    {"mean", "n"}}}, "no_surface": {level: count}, "baseline": {metric: {"mean", "n"}}}`` (levels as strings;
    sources without a surface at a level are left out of its means and counted)."""
    levels = list(dict.fromkeys(_level_key(r["level"]) for r in rows))
    by = {k: [r for r in rows if _level_key(r["level"]) == k] for k in levels}
    first = {}
    for r in rows:  # the baseline: one per source
        first.setdefault(r["source"], r)
    return {"sources": len(first), "levels": levels,
            "avatar": {k: _means(v, "") for k, v in by.items()},
            "no_surface": {k: sum(1 for r in v if not r["surface"]) for k, v in by.items()},
            "baseline": _means(list(first.values()), "baseline_")}


def _fmt(m: str, v: float) -> str:
    return "n/a" if not math.isfinite(v) else (f"{v:.3f}" if m == "normal_consistency" else f"{v:.2f}")


def geometry_table(summary: dict, title: str = "geometry") -> str:
    """The aggregate as a markdown table: a row per iso level for the avatar, one for the mean-face baseline."""
    head = "| | " + " | ".join(GEOMETRY_NAMES[m] for m in GEOMETRY_METRICS) + " | sources with a surface |"
    n = summary["sources"]
    lines = [f"**{title}** ({n} sources; face region; mm of the morphable model's scale)", "",
             head, "|---|" + "---:|" * (len(GEOMETRY_METRICS) + 1)]
    for k in summary["levels"]:
        vals = [_fmt(m, summary["avatar"][k][m]["mean"]) for m in GEOMETRY_METRICS]
        lines.append(f"| avatar, level {k} | " + " | ".join(vals) + f" | {n - summary['no_surface'][k]} of {n} |")
    vals = [_fmt(m, summary["baseline"][m]["mean"]) for m in GEOMETRY_METRICS]
    lines.append("| mean face (baseline) | " + " | ".join(vals) + f" | {n} of {n} |")
    missing = [k for k in summary["levels"] if summary["no_surface"][k]]
    if missing:
        lines += [""] + [f"- level {k}: no surface for {summary['no_surface'][k]} of {n} sources (left out of its "
                         f"means)" for k in missing]
    return "\n".join(lines) + "\n"
