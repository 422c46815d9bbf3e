"""MediaPipe Face Mesh's 478 landmarks -> the 68 iBUG points the fits and crops use.

Each iBUG point is a weighted mean of one or two mesh landmarks (:data:`MEDIAPIPE_TO_IBUG68`, rows of
``(index, weight)``). The interior points (brows, nose, eyes, lips: iBUG 17-67) follow the correspondence of
Peizhi Yan's *Mediapipe_2_Dlib_Landmarks* (github.com/PeizhiYan/Mediapipe_2_Dlib_Landmarks, 2024), with the
mean of two mesh points where that map takes two. Its jaw (iBUG 0-16) sits on mesh vertices, while dlib's jaw
points lie between them: on both public-domain portraits in ``../shared/assets`` every dlib jaw point lies on
the mesh's face oval (within 0.09 inter-ocular distances of the polyline), at the same place along it to within
0.15 segments in the two images. The jaw here is that place: a point between two consecutive oval vertices.

Checked against dlib's 68-point predictor on those portraits by ``scripts/check_landmark_map.py`` (the README
gives the numbers). Pixel convention of both sides: MediaPipe's normalised ``x * width, y * height`` are the
coordinates of :mod:`oneshot.face3d` (the top-left pixel's centre at (0.5, 0.5)).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

__all__ = ["MEDIAPIPE_TO_IBUG68", "FACE_OVAL", "ibug68_from_mediapipe", "mapping_matrix", "NUM_MEDIAPIPE"]

#: Landmarks of Face Mesh with ``refine_landmarks=True`` (468 mesh vertices and 10 iris points).
NUM_MEDIAPIPE = 478

#: MediaPipe's face oval, a closed polyline clockwise in the image from the forehead's top (vertex 10).
FACE_OVAL = (10, 338, 297, 332, 284, 251, 389, 356, 454, 323, 361, 288, 397, 365, 379, 378, 400, 377, 152, 148, 176,
             149, 150, 136, 172, 58, 132, 93, 234, 127, 162, 21, 54, 103, 67, 109)

# Where dlib's jaw points 0..16 lie along FACE_OVAL (segment index + fraction), the mean over the two portraits.
_JAW_ON_OVAL = (28.70, 27.33, 26.15, 25.00, 23.72, 22.37, 20.83, 19.33, 18.05, 16.73, 15.17, 13.56, 12.15, 10.85,
                9.75, 8.55, 7.19)

# iBUG 17..67 (brows, nose, eyes, outer and inner lips): mesh vertices, averaged where two are given.
_INTERIOR = (
    (70,), (63,), (105,), (66,), (107,),  # 17-21 brow, image left (subject's right)
    (336,), (296,), (334,), (293,), (300,),  # 22-26 brow, image right
    (168, 6), (197, 195), (5,), (4,),  # 27-30 nose bridge to tip
    (75,), (97,), (2,), (326,), (305,),  # 31-35 nostrils
    (33,), (160,), (158,), (133,), (153,), (144,),  # 36-41 eye, image left
    (362,), (385,), (387,), (263,), (373,), (380,),  # 42-47 eye, image right
    (61,), (39,), (37,), (0,), (267,), (269,), (291,), (321,), (314,), (17,), (84,), (91,),  # 48-59 outer lips
    (78,), (82,), (13,), (312,), (308,), (317,), (14,), (87,),  # 60-67 inner lips
)


def _rows() -> tuple[tuple[tuple[int, float], ...], ...]:
    rows = []
    n = len(FACE_OVAL)
    for pos in _JAW_ON_OVAL:
        k = int(pos)
        t = round(pos - k, 6)
        rows.append(((FACE_OVAL[k % n], 1.0 - t), (FACE_OVAL[(k + 1) % n], t)))
    for idx in _INTERIOR:
        rows.append(tuple((i, 1.0 / len(idx)) for i in idx))
    return tuple(rows)


#: Per iBUG point (0..67): the (MediaPipe index, weight) pairs it averages; weights sum to 1.
MEDIAPIPE_TO_IBUG68 = _rows()


def mapping_matrix(dtype=torch.float32, device=None) -> Tensor:
    """The map as a [68, 478] matrix: ``ibug = M @ mediapipe``."""
    m = np.zeros((68, NUM_MEDIAPIPE))
    for r, row in enumerate(MEDIAPIPE_TO_IBUG68):
        for i, w in row:
            m[r, i] += w
    return torch.as_tensor(m, dtype=dtype, device=device)


def ibug68_from_mediapipe(landmarks):
    """iBUG-68 points [..., 68, D] from MediaPipe Face Mesh landmarks [..., 478, D] (or the 468 mesh vertices
    without the iris points); a tensor in gives a tensor out, anything else a numpy array."""
    is_tensor = isinstance(landmarks, Tensor)
    a = landmarks if is_tensor else torch.as_tensor(np.asarray(landmarks, dtype=np.float64))
    if a.dim() < 2 or a.shape[-2] not in (468, NUM_MEDIAPIPE) or not a.is_floating_point():
        raise ValueError(f"landmarks must be MediaPipe Face Mesh points [..., 478 or 468, D] (float), got "
                         f"{list(a.shape)} {a.dtype}")
    m = mapping_matrix(a.dtype, a.device)[:, :a.shape[-2]]
    out = torch.einsum("kn,...nd->...kd", m, a)
    return out if is_tensor else out.numpy()
