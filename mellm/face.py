"""Face detection and landmarks, offline.

Backends return the 68-point iBUG/300-W landmark scheme (x, y in image pixels), which the
region layout (regions.py) is anchored to. The default backend is dlib's HOG detector plus its
68-point shape predictor, shipped inside the `face_recognition_models` package, so nothing is
downloaded. A 478-point backend (MediaPipe) can join by mapping its points onto the 68 scheme.

Licence note: dlib's 68-point model was trained on iBUG 300-W, which restricts commercial use.
Landmarks jitter about 1 px between frames of a still face, as much as a micro-expression, so they
only place regions and register faces; the motion itself is measured by optical flow.
"""

from __future__ import annotations

import importlib.util
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import cv2
import numpy as np

from mellm.errors import NoFaceError

# 68-point scheme, 0-based. Image left is the subject's right.
JAW = list(range(0, 17))
BROW_R = list(range(17, 22))  # subject's right brow: 17 outer .. 21 inner
BROW_L = list(range(22, 27))  # subject's left brow: 22 inner .. 26 outer
NOSE_BRIDGE = list(range(27, 31))
NOSE_BOTTOM = list(range(31, 36))  # 31 right wing .. 33 base .. 35 left wing
EYE_R = list(range(36, 42))  # 36 outer, 37-38 upper lid, 39 inner, 40-41 lower lid
EYE_L = list(range(42, 48))  # 42 inner, 43-44 upper lid, 45 outer, 46-47 lower lid
MOUTH_OUTER = list(range(48, 60))  # 48 right corner, 51 top centre, 54 left corner, 57 bottom centre
MOUTH_INNER = list(range(60, 68))
# Points that move little with expressions: used to register frames.
STABLE = NOSE_BRIDGE + NOSE_BOTTOM + [36, 39, 42, 45] + [0, 1, 2, 14, 15, 16]


@dataclass
class Face:
    box: tuple[int, int, int, int]  # x, y, w, h in image pixels
    landmarks: np.ndarray  # (68, 2) float32, image pixels

    def eye_centres(self) -> tuple[np.ndarray, np.ndarray]:
        """(subject's right eye, subject's left eye) centres."""
        return self.landmarks[EYE_R].mean(0), self.landmarks[EYE_L].mean(0)


class FaceBackend(Protocol):
    name: str

    def detect(self, rgb: np.ndarray) -> Face:
        """The largest face, with landmarks. Raises NoFaceError."""

    def landmarks(self, rgb: np.ndarray, box: tuple[int, int, int, int]) -> np.ndarray:
        """68 landmarks inside a known face box."""


def _model_file(name: str) -> str:
    # importlib, not pkg_resources: torch's setuptools no longer ships pkg_resources.
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or spec.origin is None:
        raise RuntimeError("face_recognition_models is not installed (pip install face_recognition_models)")
    return str(Path(spec.origin).parent / "models" / name)


_local = threading.local()


def _dlib_models():
    """dlib's detector and predictor, one pair per thread: they are not safe to share between
    threads (the gateway analyses clips in a thread pool), and loading costs ~0.5 s once."""
    if not hasattr(_local, "models"):
        import dlib

        _local.models = (dlib.get_frontal_face_detector(),
                         dlib.shape_predictor(_model_file("shape_predictor_68_face_landmarks.dat")))
    return _local.models


def load_face_models() -> None:
    """Load this thread's face models now (a worker process does it before taking its first job)."""
    _dlib_models()


HOG_WINDOW = 80  # px: dlib's frontal detector scans an 80x80 window


class DlibFace:
    """dlib HOG detector + 68-point shape predictor.

    HOG detection costs ~140 ms at 512x512, so it runs on a copy downscaled to `detect_width`;
    a face found there smaller than the HOG window is found again at full size around its box
    (`_refine_box`), and if no face is found there it retries at full size with one upsampling
    (small faces, pre-cropped dataset frames)."""

    name = "dlib68"

    def __init__(self, detect_width: int = 320):
        self.detect_width = detect_width

    def detect(self, rgb: np.ndarray, full_retry: bool = True) -> Face:
        """full_retry=False skips the slow full-size retry (a tracker that retries often anyway)."""
        detector, _ = _dlib_models()
        gray = _gray(rgb)
        h, w = gray.shape
        scale = min(1.0, self.detect_width / w)
        small = cv2.resize(gray, (round(w * scale), round(h * scale)), interpolation=cv2.INTER_AREA) if scale < 1 else gray
        rects = detector(small, 0)
        if not rects and full_retry:
            scale, rects = 1.0, detector(gray, 1)
        if not rects:
            raise NoFaceError("no face found")
        r = max(rects, key=lambda r: r.width() * r.height())
        box = (round(r.left() / scale), round(r.top() / scale), round(r.width() / scale), round(r.height() / scale))
        if scale < 1 and r.width() < HOG_WINDOW:
            box = _refine_box(detector, gray, box)
        return Face(box, self.landmarks(rgb, box))

    def landmarks(self, rgb: np.ndarray, box: tuple[int, int, int, int]) -> np.ndarray:
        import dlib

        _, predictor = _dlib_models()
        x, y, w, h = box
        shape = predictor(_gray(rgb), dlib.rectangle(int(x), int(y), int(x + w), int(y + h)))
        return np.array([(p.x, p.y) for p in shape.parts()], dtype=np.float32)


def _refine_box(detector, gray: np.ndarray, box: tuple[int, int, int, int]) -> tuple[int, int, int, int]:
    """The box of a face found smaller than the HOG window in the downscaled copy, found again at
    full resolution in a crop around it. A coarse box there put the 68 landmarks 0.13 IOD off on
    faces 55 px between the eyes (0.045 IOD after), and the regions with them."""
    x, y, w, h = box
    m = w // 2
    x0, y0 = max(0, x - m), max(0, y - m)
    crop = gray[y0:y + h + m, x0:x + w + m]
    rects = detector(crop, 1 if w < 2 * HOG_WINDOW else 0)
    if not rects:
        return box
    r = max(rects, key=lambda r: r.width() * r.height())
    return (r.left() + x0, r.top() + y0, r.width(), r.height())


def _gray(rgb: np.ndarray) -> np.ndarray:
    return rgb if rgb.ndim == 2 else cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)


FACE_BACKENDS = {"dlib68": DlibFace}


def get_face_backend(name: str = "dlib68") -> FaceBackend:
    if name not in FACE_BACKENDS:
        raise ValueError(f"unknown face backend {name!r}; known: {sorted(FACE_BACKENDS)}")
    return FACE_BACKENDS[name]()
