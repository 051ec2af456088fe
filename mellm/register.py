"""Registration: map frames onto a canonical face crop before measuring motion.

The onset frame's landmarks fix a similarity transform that puts the eyes level at fixed
positions in a `size` x `size` crop (interocular distance 0.375 * size, so 96 px at 256). Other
frames are mapped onto the onset frame by a similarity fitted to the *stable* landmarks (nose,
eye corners, upper face contour): with ~20 points the ~1 px landmark jitter averages down, and
what registration leaves is removed from the flow afterwards (flow.remove_head_motion).
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from mellm.face import STABLE, Face

IOD_FRACTION = 0.375  # interocular distance / crop size
EYE_Y_FRACTION = 0.36  # eye line height / crop size (leaves room for the chin)


@dataclass
class Canonical:
    """The onset frame's crop geometry. `matrix` maps source pixels -> crop pixels."""

    matrix: np.ndarray  # 2x3 float64
    size: int
    landmarks: np.ndarray  # onset landmarks in crop pixels, (68, 2)

    @property
    def scale(self) -> float:
        """Crop pixels per source pixel."""
        return float(np.hypot(self.matrix[0, 0], self.matrix[1, 0]))

    @property
    def iod(self) -> float:
        return IOD_FRACTION * self.size


def canonical_from_face(face: Face, size: int = 256) -> Canonical:
    right_eye, left_eye = face.eye_centres()  # image left, image right
    d = left_eye - right_eye
    angle = np.arctan2(d[1], d[0])
    scale = IOD_FRACTION * size / float(np.hypot(*d))
    c, s = scale * np.cos(-angle), scale * np.sin(-angle)
    rot = np.array([[c, -s], [s, c]])
    mid = (left_eye + right_eye) / 2
    target_mid = np.array([size / 2, EYE_Y_FRACTION * size])
    matrix = np.hstack([rot, (target_mid - rot @ mid)[:, None]])
    return Canonical(matrix, size, apply(matrix, face.landmarks))


def apply(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    return (points @ matrix[:, :2].T + matrix[:, 2]).astype(np.float32)


def fit_similarity(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Least-squares similarity (rotation, uniform scale, translation) mapping src -> dst (Umeyama)."""
    src = np.asarray(src, np.float64)
    dst = np.asarray(dst, np.float64)
    mu_s, mu_d = src.mean(0), dst.mean(0)
    a, b = src - mu_s, dst - mu_d
    cov = b.T @ a / len(src)
    u, sig, vt = np.linalg.svd(cov)
    d = np.sign(np.linalg.det(u @ vt))
    fix = np.diag([1.0, d])
    rot = u @ fix @ vt
    scale = np.trace(np.diag(sig) @ fix) / a.var(0).sum()
    t = mu_d - scale * rot @ mu_s
    return np.hstack([scale * rot, t[:, None]])


def compose(outer: np.ndarray, inner: np.ndarray) -> np.ndarray:
    """2x3 affine of x -> outer(inner(x))."""
    o = np.vstack([outer, [0, 0, 1]])
    i = np.vstack([inner, [0, 0, 1]])
    return (o @ i)[:2]


REGISTRATION_MODES = ("auto", "landmarks", "onset")
AUTO_MIN_SHIFT = 2.0  # crop px; landmark jitter alone moves stable points about 1 px


def frame_to_crop(canon: Canonical, onset_landmarks: np.ndarray, frame_landmarks: np.ndarray | None,
                  mode: str = "auto") -> tuple[np.ndarray, bool]:
    """(matrix mapping a frame's pixels into the onset's crop, whether landmarks were used).

    "onset": the frame is taken to be where the onset frame was; head-motion removal on the flow
    takes out the rest. "landmarks": the frame is first fitted to the onset by its stable
    landmarks. "auto": landmarks only when they say the head moved more than jitter could
    explain (AUTO_MIN_SHIFT), since fitting to jittery landmarks adds error of its own."""
    if mode == "onset" or frame_landmarks is None:
        return canon.matrix, False
    to_onset = fit_similarity(frame_landmarks[STABLE], onset_landmarks[STABLE])
    if mode == "auto":
        moved = apply(compose(canon.matrix, to_onset), frame_landmarks[STABLE]) - apply(canon.matrix, frame_landmarks[STABLE])
        if np.abs(moved).max() < AUTO_MIN_SHIFT:
            return canon.matrix, False
    elif mode != "landmarks":
        raise ValueError(f"unknown registration mode {mode!r}; known: auto, landmarks, onset")
    return compose(canon.matrix, to_onset), True


def warp(image: np.ndarray, matrix: np.ndarray, size: int) -> np.ndarray:
    # Cubic keeps the fine texture that sub-pixel motion estimation depends on.
    return cv2.warpAffine(image, matrix, (size, size), flags=cv2.INTER_CUBIC, borderMode=cv2.BORDER_REPLICATE)
