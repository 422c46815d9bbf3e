"""Evaluation: the paper's metrics (:mod:`oneshot.eval.metrics`), the pretrained networks they need, loaded from
local files only (:mod:`oneshot.eval.networks`), the reconstruction / self- / cross-identity protocols
(:mod:`oneshot.eval.protocol`), the geometry protocol (:mod:`oneshot.eval.geometry`: the exported mesh against the
true morphable-model mesh of synthetic samples) and its reports (:mod:`oneshot.eval.report`); the command is ``oneshot evaluate``."""

from .metrics import (coefficient_distance, cosine_similarity, feature_statistics, fid_from_features,
                      frechet_distance, keypoint_distance, l1, psnr, ssim)
from .networks import (ARCFACE_TEMPLATE, LPIPS, ArcFace, FIDInception, installed_lpips_heads, load_arcface,
                       load_fid_inception, load_lpips)
from .geometry import aggregate_geometry, compare_surfaces, geometry_table, run_geometry
from .protocol import COLUMNS, PROTOCOLS, Scorer, aggregate, arcface_crops, build_pairs, run_protocol

__all__ = ["l1", "psnr", "ssim", "frechet_distance", "feature_statistics", "fid_from_features", "cosine_similarity",
           "coefficient_distance", "keypoint_distance", "LPIPS", "FIDInception", "ArcFace", "load_lpips",
           "load_fid_inception", "load_arcface", "installed_lpips_heads", "ARCFACE_TEMPLATE", "PROTOCOLS", "COLUMNS",
           "Scorer", "build_pairs", "run_protocol", "aggregate", "arcface_crops", "run_geometry", "aggregate_geometry",
           "compare_surfaces", "geometry_table"]
