"""Frames in and out: read a video, a folder of images or one image as uint8 RGB frames; write H.264 .mp4
(PyAV) and animated GIFs (pillow).

* :func:`read_frames` -> :class:`Frames`: iterate for uint8 [H, W, 3] arrays; ``len()`` and ``fps`` are known
  before decoding. Videos are read with PyAV (any container/codec its FFmpeg reads: .mp4, .mov, .mkv, .avi,
  .webm, ...), animated GIFs and images with pillow. A folder's images are taken in natural order of their
  names (``frame2.png`` before ``frame10.png``); other files in it are ignored.
* :class:`VideoWriter` streams frames into an .mp4 (H.264 by libx264, yuv420p; frames with an odd width or height
  are padded to even sizes by repeating the last row/column); as a context manager it closes the file properly
  on an exception too, so the frames written so far stay a playable video. :func:`write_video` writes .mp4 or
  .gif by the extension; :func:`write_gif` an animated GIF.

Missing paths raise FileNotFoundError; unsupported extensions and unreadable files ValueError naming the file.
PyAV (``pip install av``) is needed for .mp4 and other video files only.
"""

from __future__ import annotations

import math
import re
from fractions import Fraction
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

__all__ = ["Frames", "read_frames", "read_image", "VideoWriter", "write_video", "write_gif", "moving_still", "check_fps",
           "IMAGE_EXTENSIONS",
           "VIDEO_EXTENSIONS", "DEFAULT_FPS"]

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")
#: Read with PyAV (except .gif, read with pillow). Written: .mp4 (and .gif).
VIDEO_EXTENSIONS = (".mp4", ".mov", ".m4v", ".mkv", ".avi", ".webm", ".gif")
#: Frame rate of a folder of images or a single image, unless one is given.
DEFAULT_FPS = 25.0


def _pil():
    try:
        from PIL import Image
    except ImportError:  # pragma: no cover - pillow is a dependency
        raise ImportError("reading and writing images needs pillow (pip install pillow)") from None
    return Image


def _av():
    try:
        import av
    except ImportError:
        raise ImportError("reading and writing videos needs PyAV (pip install av)") from None
    return av


def _natural_key(name: str):
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", name)]


def check_fps(fps) -> float:
    try:
        f = float(fps)
    except (TypeError, ValueError):
        raise ValueError(f"fps must be a positive number, got {fps!r}") from None
    if not (math.isfinite(f) and f > 0):
        raise ValueError(f"fps must be a positive number, got {fps!r}")
    return f


def _supported() -> str:
    return ", ".join(VIDEO_EXTENSIONS + IMAGE_EXTENSIONS)


def read_image(path) -> np.ndarray:
    """One image file as uint8 RGB [H, W, 3] (grey, palette and RGBA images are converted; alpha is dropped)."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"no such image file: {p}")
    Image = _pil()
    try:
        with Image.open(p) as im:
            return np.asarray(im.convert("RGB"))
    except Exception as e:  # noqa: BLE001 - pillow raises several types for a bad file
        raise ValueError(f"{p}: not a readable image ({e})") from None


class Frames:
    """The frames of a video file, a folder of images or a single image (:func:`read_frames`).

    Iterating yields uint8 RGB arrays [H, W, 3], decoded one at a time; ``len()`` is the number of frames,
    ``fps`` the frame rate (the video's, else the one given to :func:`read_frames`, else :data:`DEFAULT_FPS`),
    ``kind`` one of "video", "gif", "folder", "image".
    """

    def __init__(self, path: Path, kind: str, fps: float, count: int, files: list[Path] | None = None):
        self.path, self.kind, self.fps, self._count, self._files = path, kind, fps, count, files

    def __len__(self) -> int:
        return self._count

    def __repr__(self) -> str:
        return f"Frames({str(self.path)!r}, kind={self.kind!r}, frames={self._count}, fps={self.fps:g})"

    def __iter__(self) -> Iterator[np.ndarray]:
        if self.kind == "image":
            yield read_image(self.path)
        elif self.kind == "folder":
            size = None
            for f in self._files:
                a = read_image(f)
                if size is None:
                    size = a.shape
                elif a.shape != size:
                    raise ValueError(f"{f}: all frames of a folder must have one size; this one is "
                                     f"{a.shape[1]} x {a.shape[0]}, the first {size[1]} x {size[0]}")
                yield a
        elif self.kind == "gif":
            Image = _pil()
            with Image.open(self.path) as im:
                for i in range(self._count):
                    im.seek(i)
                    yield np.asarray(im.convert("RGB"))
        else:
            av = _av()
            try:
                container = av.open(str(self.path))
            except Exception as e:  # noqa: BLE001 - FFmpeg errors
                raise ValueError(f"{self.path}: not a readable video ({e})") from None
            try:
                stream = container.streams.video[0]
                stream.thread_type = "AUTO"
                try:
                    for frame in container.decode(stream):
                        yield frame.to_ndarray(format="rgb24")
                except av.FFmpegError as e:
                    raise ValueError(f"{self.path}: decoding failed ({e})") from None
            finally:
                container.close()


def _probe_video(p: Path) -> tuple[float | None, int]:
    """(fps or None, frame count) of a video file; the count by demuxing when the header does not say."""
    av = _av()
    try:
        container = av.open(str(p))
    except Exception as e:  # noqa: BLE001 - FFmpeg errors
        raise ValueError(f"{p}: not a readable video ({e})") from None
    try:
        if not container.streams.video:
            raise ValueError(f"{p}: has no video stream")
        stream = container.streams.video[0]
        rate = stream.average_rate or stream.guessed_rate
        fps = float(rate) if rate else None
        count = int(stream.frames or 0)
        if count <= 0:
            try:
                count = sum(1 for pkt in container.demux(stream) if pkt.size)
            except av.FFmpegError as e:
                raise ValueError(f"{p}: not a readable video ({e})") from None
        if count <= 0:
            raise ValueError(f"{p}: the video has no frames")
        return fps, count
    finally:
        container.close()


def read_frames(path, *, fps: float | None = None) -> Frames:
    """The frames of `path`: a video file (see :data:`VIDEO_EXTENSIONS`), a folder of images (natural order of
    the names) or one image (:data:`IMAGE_EXTENSIONS`). `fps` overrides the frame rate of a folder or image
    (a video keeps its own). Checks that the path exists, is supported and (for a video) opens and has frames;
    decoding errors later raise ValueError naming the file."""
    p = Path(path)
    fps = None if fps is None else check_fps(fps)
    if not p.exists():
        raise FileNotFoundError(f"no such file or folder: {p}")
    if p.is_dir():
        files = sorted((f for f in p.iterdir() if f.is_file() and not f.name.startswith(".")
                        and f.suffix.lower() in IMAGE_EXTENSIONS), key=lambda f: _natural_key(f.name))
        if not files:
            raise ValueError(f"{p}: the folder holds no images ({', '.join(IMAGE_EXTENSIONS)})")
        return Frames(p, "folder", fps or DEFAULT_FPS, len(files), files)
    suffix = p.suffix.lower()
    if suffix in IMAGE_EXTENSIONS:
        read_image(p)  # fail now on an unreadable file
        return Frames(p, "image", fps or DEFAULT_FPS, 1)
    if suffix == ".gif":
        Image = _pil()
        try:
            with Image.open(p) as im:
                count = int(getattr(im, "n_frames", 1))
                duration = im.info.get("duration") or 0
        except Exception as e:  # noqa: BLE001
            raise ValueError(f"{p}: not a readable GIF ({e})") from None
        own = 1000.0 / duration if duration > 0 else None
        return Frames(p, "gif", own or fps or DEFAULT_FPS, count)
    if suffix in VIDEO_EXTENSIONS:
        own, count = _probe_video(p)
        return Frames(p, "video", own or fps or DEFAULT_FPS, count)
    raise ValueError(f"{p}: unsupported file type {suffix or '(no extension)'!r}; expected a video, an image or a "
                     f"folder of images ({_supported()})")


def _as_frame(frame, index: int) -> np.ndarray:
    a = frame.detach().cpu().numpy() if hasattr(frame, "detach") else np.asarray(frame)
    if a.dtype != np.uint8 or a.ndim != 3 or a.shape[2] != 3 or a.shape[0] < 1 or a.shape[1] < 1:
        raise ValueError(f"frame {index} must be uint8 RGB [H, W, 3], got {a.dtype} {list(a.shape)}")
    return np.ascontiguousarray(a)


class VideoWriter:
    """Streams uint8 RGB frames [H, W, 3] into an H.264 .mp4 (libx264, yuv420p, constant rate factor `crf`).

    The file is created at the first frame, whose size every later frame must have; odd sizes are padded to even
    ones (the encoder's yuv420p needs them) by repeating the last row/column. :meth:`close` flushes the encoder
    and finishes the file; used as a context manager it does so on an exception too, so the frames written before
    a crash remain a valid video. ``frames_written`` counts them.
    """

    def __init__(self, path, fps: float, *, crf: int = 18, codec: str = "libx264"):
        self.path = Path(path)
        if self.path.suffix.lower() not in (".mp4", ".mov", ".m4v", ".mkv"):
            raise ValueError(f"{self.path}: VideoWriter writes .mp4 (or .mov/.m4v/.mkv) files; use write_gif for .gif")
        if not self.path.parent.is_dir():
            raise FileNotFoundError(f"{self.path}: the folder {self.path.parent} does not exist")
        self.fps = check_fps(fps)
        if not (isinstance(crf, int) and 0 <= crf <= 51):
            raise ValueError(f"crf must be an int in 0..51, got {crf!r}")
        self.crf, self.codec = crf, codec
        _av()  # fail now if PyAV is missing
        self._container = self._stream = None
        self._size = None  # (H, W) of the frames as given
        self.frames_written = 0
        self.closed = False

    def _open(self, h: int, w: int) -> None:
        av = _av()
        rate = Fraction(self.fps).limit_denominator(1001)
        container = av.open(str(self.path), mode="w")
        try:
            stream = container.add_stream(self.codec, rate=rate, options={"crf": str(self.crf)})
        except Exception as e:  # noqa: BLE001
            container.close()
            raise ValueError(f"cannot encode {self.path} with {self.codec!r}: {e} (this PyAV build's encoders: "
                             f"pip install av)") from None
        stream.width, stream.height = w + w % 2, h + h % 2
        stream.pix_fmt = "yuv420p"
        self._container, self._stream, self._size = container, stream, (h, w)

    def write(self, frame) -> None:
        """Append one uint8 RGB frame [H, W, 3] (numpy array or CPU tensor)."""
        if self.closed:
            raise ValueError(f"{self.path}: the writer is closed")
        a = _as_frame(frame, self.frames_written)
        h, w = a.shape[:2]
        if self._container is None:
            self._open(h, w)
        elif (h, w) != self._size:
            raise ValueError(f"frame {self.frames_written} is {w} x {h}, the video's frames are "
                             f"{self._size[1]} x {self._size[0]}")
        if h % 2 or w % 2:
            a = np.pad(a, ((0, h % 2), (0, w % 2), (0, 0)), mode="edge")
        av = _av()
        for packet in self._stream.encode(av.VideoFrame.from_ndarray(a, format="rgb24")):
            self._container.mux(packet)
        self.frames_written += 1

    def close(self) -> None:
        """Flush the encoder and finish the file (nothing is created when no frame was written)."""
        if self.closed:
            return
        self.closed = True
        if self._container is None:
            return
        try:
            for packet in self._stream.encode():
                self._container.mux(packet)
        finally:
            self._container.close()

    def __enter__(self) -> VideoWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def write_gif(path, frames: Iterable, fps: float, *, loop: int = 0) -> int:
    """Write uint8 RGB frames [H, W, 3] as an animated GIF (pillow, an adaptive palette per frame; GIF stores
    frame durations in 1/100 s, and pillow merges identical consecutive frames into one longer one). Returns the
    number of frames given."""
    Image = _pil()
    fps = check_fps(fps)
    images, size = [], None
    for i, f in enumerate(frames):
        a = _as_frame(f, i)
        if size is None:
            size = a.shape
        elif a.shape != size:
            raise ValueError(f"frame {i} is {a.shape[1]} x {a.shape[0]}, the first {size[1]} x {size[0]}")
        images.append(Image.fromarray(a))
    if not images:
        raise ValueError(f"{path}: no frames to write")
    images[0].save(Path(path), save_all=True, append_images=images[1:], duration=max(round(1000.0 / fps), 10),
                   loop=loop, optimize=False)
    return len(images)


def write_video(path, frames: Iterable, fps: float, **kwargs) -> int:
    """Write uint8 RGB frames [H, W, 3] to `path`: an .mp4 (:class:`VideoWriter`, keyword arguments passed on)
    or a .gif (:func:`write_gif`). Returns the number of frames written."""
    p = Path(path)
    if p.suffix.lower() == ".gif":
        return write_gif(p, frames, fps, **kwargs)
    with VideoWriter(p, fps, **kwargs) as w:
        for f in frames:
            w.write(f)
    if w.frames_written == 0:
        raise ValueError(f"{p}: no frames to write")
    return w.frames_written


def moving_still(image: np.ndarray, n: int, *, fps: float = 25.0, angle: float = 6.0, shift: float = 0.04,
                 zoom: float = 0.06, seconds_per_cycle: float = 2.0):
    """A test video from one still: `n` uint8 frames [n, H, W, 3] of `image` (uint8 [H, W, 3]) under a smooth
    similarity motion (rotation up to `angle` degrees, translation up to `shift` x the width, scale up to
    1 +- `zoom`, sinusoids of incommensurate phases) about the image centre; and the motion as [n, 2, 3] matrices
    mapping the still's pixel coordinates to each frame's. A driving video with a known, jitter-free head path.
    """
    import torch
    import torch.nn.functional as F

    a = np.asarray(image)
    if a.ndim != 3 or a.shape[2] != 3 or a.dtype != np.uint8:
        raise ValueError(f"image must be uint8 [H, W, 3], got {a.dtype} {list(a.shape)}")
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    H, W = a.shape[:2]
    t = np.arange(n) / fps * 2 * math.pi / seconds_per_cycle
    rot = np.radians(angle) * np.sin(t)
    sc = 1 + zoom * np.sin(0.7 * t + 1.0)
    tx, ty = shift * W * np.sin(0.5 * t + 2.0), shift * W * np.sin(0.9 * t + 0.5)
    c = np.array([W / 2, H / 2])
    mats = np.zeros((n, 2, 3))
    for i in range(n):
        R = sc[i] * np.array([[math.cos(rot[i]), -math.sin(rot[i])], [math.sin(rot[i]), math.cos(rot[i])]])
        mats[i, :, :2] = R
        mats[i, :, 2] = c + np.array([tx[i], ty[i]]) - R @ c
    # frame pixel p <- still pixel M^-1 p, sampled bilinearly (pixel centres at +0.5, align_corners=False)
    src = torch.from_numpy(np.array(a)).permute(2, 0, 1)[None].float().expand(n, -1, -1, -1)
    ys, xs = torch.meshgrid(torch.arange(H) + 0.5, torch.arange(W) + 0.5, indexing="ij")
    p = torch.stack([xs, ys], -1).double()  # [H, W, 2]
    A = torch.from_numpy(mats).double()
    Ainv = torch.linalg.inv(A[:, :, :2])
    q = torch.einsum("nij,nhwj->nhwi", Ainv, p[None] - A[:, None, None, :, 2])
    grid = torch.stack([q[..., 0] / W * 2 - 1, q[..., 1] / H * 2 - 1], -1).float()
    out = F.grid_sample(src, grid, mode="bilinear", padding_mode="border", align_corners=False)
    return (out.round().clamp(0, 255).byte().permute(0, 2, 3, 1).numpy()), mats
