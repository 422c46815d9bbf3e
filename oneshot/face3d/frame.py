"""The world frame's constants, shared by the loaders, the alignment and the pose conversion (kept apart so that
none of them has to import another for a number).

World units: EG3D's preprocessing puts Deep3DFaceRecon's camera (distance 10, BFM decimetres) at orbit radius 2.7,
so world = 0.27 x (recentred BFM coordinates in decimetres); ICT-FaceKit's centimetres scale by 0.027.
"""

from __future__ import annotations

__all__ = ["BFM_WORLD_SCALE", "ICT_WORLD_SCALE", "RECON_RESOLUTION", "RECON_FOCAL", "CAMERA_DISTANCE"]

#: world = 0.27 x recentred BFM decimetres (EG3D's preprocessing: Deep3DFaceRecon's camera distance 10 -> 2.7).
BFM_WORLD_SCALE = 0.27
#: ICT-FaceKit is in centimetres: the same world units (nominally; the loader also fits the scale, see
#: :func:`oneshot.face3d.from_ict_facekit`).
ICT_WORLD_SCALE = 0.027

#: Deep3DFaceRecon's camera: focal 1015 px on its 224 x 224 crop (principal point at the centre), distance 10.
RECON_RESOLUTION = 224
RECON_FOCAL = 1015.0 / RECON_RESOLUTION
CAMERA_DISTANCE = 10.0
