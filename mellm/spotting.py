"""Apex spotting: the frame where facial motion relative to the onset frame peaks.

For every frame between onset and offset, flow from the onset is computed on a small face crop
(fast DIS) once the frame is warped by the head motion tracked so far; the head motion left is
removed, and the frame's motion is the mean of the strongest 5% of flow magnitudes inside the
face (an ME moves a small part of the face, so a plain mean would drown it in noise). The curve
is smoothed over a few frames (3 by default); its maximum is the apex.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from mellm.flow import CHECKPOINT_BACKENDS, expression_flow, get_flow
from mellm.regions import face_mask, nose_mask, stable_mask
from mellm.register import Canonical, compose, warp
from mellm.video import Clip

TOP_FRACTION = 0.05
BORDER = 0.04  # share of the crop size at its edges left out when eyes=False (the robust curve)
EYE_MARGIN = 0.25  # IOD around the eye outlines left out when eyes=False (0.15 let 2 of 8 blinks steer the apex)


@dataclass
class MotionCurve:
    frames: list[int]
    magnitude: list[float]  # raw per-frame motion (px of the spotting crop)
    smoothed: list[float]

    @property
    def apex(self) -> int:
        return self.frames[int(np.argmax(self.smoothed))]

    def to_dict(self) -> dict:
        return {"frames": self.frames, "magnitude": [round(m, 4) for m in self.magnitude]}


def motion_curve(clip: Clip, onset: int, onset_rgb: np.ndarray, last: int, canon: Canonical, size: int = 128,
                 method: str = "dis", head_motion: str = "affine", batch: int = 32, eyes: bool = True,
                 pool: float = 0.0, smooth: int = 3, checkpoint: str | None = None, illumination: bool = False,
                 track: bool = False) -> MotionCurve:
    """The curve over frames onset+1..last; `onset_rgb` is frame `onset`, already decoded by the caller.

    eyes=False leaves the eyes (with EYE_MARGIN IOD around them) and the crop's edges (BORDER) out
    of the face mask, so a blink (large, fast, and unrelated to the ME) or a head leaving the crop
    cannot become the apex. pool > 0 averages the flow over boxes of `pool` IOD before the
    strongest pixels are taken: an ME moves patches of skin coherently, compression and sensor
    noise move single pixels. illumination=True matches each frame's brightness to the onset's
    (robust.match_illumination, without the eyes) first: DIS assumes constant brightness, and a
    flicker otherwise reads as motion all over the face. track=True warps each frame by the head
    motion found up to the frame before (the affine fit of `head_motion`), so the flow measures
    only the small change since: a head turning through the clip otherwise leaves a residual in
    the flow that grows frame by frame and can outgrow the ME."""
    from mellm.robust import affine_matrix, blurred, eye_mask, lit_mask, match_illumination

    scale = size / canon.size
    matrix = canon.matrix * scale
    lm = canon.landmarks * scale
    iod = canon.iod * scale
    fmask, smask, nmask = face_mask(lm, size, iod), stable_mask(lm, size, iod), nose_mask(lm, size, iod)
    lit = lit_mask(fmask, lm, size, iod)
    if not eyes:
        fmask = fmask & ~eye_mask(lm, size, iod, EYE_MARGIN + pool)
        # Nor the crop's edge: where a moving, scaling head leaves the crop, the warp smears
        # border pixels and the flow there is large and meaningless (a chin at the edge did).
        edge = max(2, int(round(BORDER * size)))
        fmask[:edge], fmask[-edge:], fmask[:, :edge], fmask[:, -edge:] = False, False, False, False
    box = 2 * int(round(pool * iod)) + 1
    flow_fn = get_flow(method, checkpoint if method in CHECKPOINT_BACKENDS else None)
    onset_crop = warp(_gray(onset_rgb), matrix, size)
    onset_blurred = blurred(onset_crop, 4.0 * scale) if illumination else None
    frames = clip.numbers_between(onset + 1, last)
    mags = []
    head = np.hstack([np.eye(2), np.zeros((2, 1))])  # onset crop -> this frame's crop, as tracked so far
    for start in range(0, len(frames), batch):  # bounded memory for long clips
        for img in clip.read_many(frames[start:start + batch]):
            crop = warp(_gray(img), compose(cv2.invertAffineTransform(head), matrix) if track else matrix, size)
            if illumination:
                crop, _ = match_illumination(onset_crop, crop, lit, 4.0 * scale, onset_blurred)
            flow, motion = expression_flow(flow_fn, onset_crop, crop, smask, nmask, head_motion)
            if track and motion.method == "affine":
                head = compose(head, affine_matrix(motion.params, crop.shape))
            if box > 1:
                flow = cv2.blur(flow, (box, box))
            m = np.linalg.norm(flow[fmask], axis=-1)
            k = max(1, int(TOP_FRACTION * m.size))
            mags.append(float(np.partition(m, m.size - k)[-k:].mean()))
    half = smooth // 2
    smoothed = np.convolve(np.pad(mags, half, mode="edge"), np.ones(2 * half + 1) / (2 * half + 1), mode="valid") if mags else np.array([])
    return MotionCurve(frames, mags, [float(v) for v in smoothed])


def _gray(rgb: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
