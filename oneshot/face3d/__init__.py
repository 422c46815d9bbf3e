"""Morphable face models (3DMMs) and their coefficients.

* :class:`MorphableModel`: mean shape, identity and expression bases (optional albedo), triangles, the 68
  iBUG landmark vertices and region labels, all in the avatar's world frame (metres-like units in which the
  head spans about 0.4 and sits near the origin, inside the +-0.5 tri-plane box).
* :func:`builtin_model`: a small head written in code (the default of :func:`load_model`), so that tests, the
  demo and synthetic training data work offline.
* Loaders: :func:`from_bfm` (Deep3DFaceRecon's ``BFM_model_front.mat``), :func:`from_ict_facekit` (the npz
  layout of ICT-FaceKit used here).
* :func:`render` (SH-lit Lambertian, masks, regions), :func:`frontal_render` (source identity, target
  expression, frontal camera: the expression branch's input) and :func:`neutral_render`.
* Coefficients and cameras from images: :func:`align_face` (Deep3DFaceRecon's 5-point crop, or the same view
  framed for the avatar), :func:`pose_to_camera` / :func:`camera_to_pose` (its pose <-> the 25-float label),
  :func:`fit_landmarks` (pose, identity, expression from 68 landmarks by optimisation), :func:`estimate_face`
  (all of it for a portrait, with or without the regressor :class:`ReconNet`).
* Faces in images and videos (the ``faces`` extra): :class:`FaceFrontEnd` (MediaPipe Face Mesh: faces, 478
  points, the 68 iBUG ones via :func:`ibug68_from_mediapipe`, a person matte; tracking for videos),
  :func:`detect_faces`, :func:`face_matte`; :class:`OneEuroFilter` to smooth per-frame signals; landmark files
  (:func:`load_landmarks`, :func:`load_landmark_frames`) and landmarks through a video (:func:`track_landmarks`,
  :func:`smooth_landmarks`).
* :class:`Coeffs`: the per-image coefficients of one model (identity, expression, albedo, lighting, pose), tied
  to that model by its fingerprint; Deep3DFaceRecon's 257-vector converts to and from it.

World frame: EG3D's preprocessing places Deep3DFaceRecon's camera (distance 10, BFM decimetres) at radius 2.7,
so world = 0.27 x (recentred BFM coordinates in decimetres), axes kept (x right, y up, z out of the face).
Other models are recentred the same way and scaled to the same units (ICT-FaceKit's centimetres: 0.027).
"""

from __future__ import annotations

import os
from pathlib import Path

from .align import (CANONICAL_FIVE, Alignment, align_face, canonical_similarity, five_points, similarity_from_landmarks,
                    standard_landmarks)
from .detect import DetectedFace, FaceFrontEnd, FacesUnavailableError, detect_faces, face_matte, faces_available
from .mediapipe68 import ibug68_from_mediapipe
from .builtin import EXPRESSIONS, builtin_model
from .coeffs import Coeffs
from .loaders import BFM_WORLD_SCALE, ICT_WORLD_SCALE, from_bfm, from_ict_facekit
from .fit import FaceEstimate, FitResult, estimate_face, fit_landmarks, project_landmarks
from .model import REGIONS, MorphableModel
from .pose import RECON_FOCAL, camera_to_pose, euler_rotation, pose_to_camera, rotation_to_euler
from .recon import ReconNet, load_recon_checkpoint
from .renderer import RenderResult, frontal_render, neutral_render, render
from .landmarks import check_landmarks_in_image, load_landmark_frames, load_landmarks
from .smooth import OneEuroFilter, smooth_sequence
from .track import landmark_jitter, smooth_landmarks, track_landmarks

__all__ = ["MorphableModel", "Coeffs", "load_model", "ReconNet", "load_recon_checkpoint", "render", "frontal_render", "neutral_render", "RenderResult", "builtin_model", "from_bfm", "from_ict_facekit", "REGIONS",
           "EXPRESSIONS", "BFM_WORLD_SCALE", "ICT_WORLD_SCALE", "align_face", "Alignment", "five_points",
           "standard_landmarks", "similarity_from_landmarks", "fit_landmarks", "FitResult", "project_landmarks",
           "estimate_face", "FaceEstimate", "pose_to_camera", "camera_to_pose", "euler_rotation",
           "rotation_to_euler", "RECON_FOCAL", "CANONICAL_FIVE", "canonical_similarity", "FaceFrontEnd",
           "DetectedFace", "FacesUnavailableError", "detect_faces", "face_matte", "faces_available",
           "ibug68_from_mediapipe", "OneEuroFilter", "smooth_sequence", "load_landmarks", "load_landmark_frames",
           "check_landmarks_in_image", "track_landmarks", "smooth_landmarks", "landmark_jitter"]


def load_model(path: str | os.PathLike | None = None) -> MorphableModel:
    """The morphable model at `path` (a BFM ``.mat`` or an ICT-FaceKit ``.npz``), or the built-in one."""
    if path is None:
        return builtin_model()
    suffix = Path(path).suffix.lower()
    if suffix == ".mat":
        return from_bfm(path)
    if suffix == ".npz":
        return from_ict_facekit(path)
    raise ValueError(f"model path must be a BFM .mat or an ICT-FaceKit .npz file (or None for the built-in "
                     f"model), got {path!r}")
