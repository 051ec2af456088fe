"""Perception's defences against recording nuisances (see mellm/nuisances.py for the nuisances).

- `match_illumination`: lighting flicker breaks brightness constancy, which TV-L1 assumes; the
  apex crop's brightness is matched to the onset's by a smooth gain (a plane in log intensity,
  fitted over the face without the eyes, which a blink brightens) before the flow.
- `pre_align`: a coarse, fast flow (DIS) onset -> apex gives the head's similarity/affine motion
  on the still face pixels (rotation and scale included); the apex is re-warped by it, so the
  fine flow only has the residual, sub-pixel motion left to find.
- `eye_closure`: a blink covers the eye; the appearance change inside each eye against the rest
  of the face tells a blink from lid motion (AU5/AU7 move the lid by a pixel or two; a blink
  replaces iris by lid). A blinking eye's lid regions are left out of the AU fit, and the flow is
  given the apex with that eye pasted from the onset (`paste_eyes`), so the blink's appearance
  change does not spread through the flow's smoothing into the brows and cheeks.
- `still_noise`: how much motion the clip's own still pixels show at the size of a region: the
  noise floor an AU amplitude must clear (compression, sensor noise and flow error together).
- `eye_mask`: the eyes, for spotting curves and illumination gains that a blink must not steer.
"""

from __future__ import annotations

import cv2
import numpy as np

from mellm.face import EYE_L, EYE_R
from mellm.flow import _robust_affine


def match_illumination(onset: np.ndarray, apex: np.ndarray, mask: np.ndarray, blur: float = 4.0,
                       onset_blurred: np.ndarray | None = None) -> tuple[np.ndarray, dict]:
    """`apex` (uint8 grey) with its brightness matched to `onset` over `mask`: the log ratio of the
    blurred images is fitted by a plane (gain and a linear gradient) and divided out.
    `onset_blurred` (`blurred(onset, blur)`) saves a caller that matches many frames to one onset
    from blurring it again for each."""
    h, w = onset.shape
    lo = blurred(onset, blur) if onset_blurred is None else onset_blurred
    la = blurred(apex, blur)
    ys, xs = np.nonzero(mask[::2, ::2])
    ys, xs = ys * 2, xs * 2
    ratio = np.log(lo[ys, xs] + 1.0) - np.log(la[ys, xs] + 1.0)
    design = np.stack([np.ones(len(xs)), (xs - w / 2) / w, (ys - h / 2) / h], 1)
    coef, *_ = np.linalg.lstsq(design, ratio, rcond=None)
    gy, gx = np.mgrid[0:h, 0:w].astype(np.float32)
    gain = np.exp(coef[0] + coef[1] * (gx - w / 2) / w + coef[2] * (gy - h / 2) / h)
    out = np.clip(apex.astype(np.float32) * gain + 0.5, 0, 255).astype(np.uint8)
    return out, {"gain": round(float(np.exp(coef[0])), 4), "gradient": [round(float(c), 4) for c in coef[1:]]}


def blurred(img: np.ndarray, sigma: float) -> np.ndarray:
    return cv2.GaussianBlur(img.astype(np.float32), (0, 0), sigma)


def lit_mask(face: np.ndarray, landmarks: np.ndarray, size: int, iod: float) -> np.ndarray:
    """Where the illumination gain is fitted: the face without the eyes, since a blink brightens
    an eye (lid skin over iris) and would bias the gain everywhere."""
    return face & ~eye_mask(landmarks, size, iod)


def pre_align(onset: np.ndarray, apex: np.ndarray, stable: np.ndarray) -> np.ndarray:
    """2x3 affine H (crop pixels) with apex(H(x)) ~ onset(x) on the still face: the head's motion,
    from a coarse DIS flow fitted robustly (Tukey IRLS) on `stable`."""
    dis = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_FAST)
    flow = dis.calc(onset, apex, None)
    _, params = _robust_affine(flow, stable)
    return affine_matrix(params, onset.shape)


def affine_matrix(params, shape: tuple[int, int]) -> np.ndarray:
    """The 2x3 matrix x -> x + field(x) of an affine flow field given by flow._robust_affine's
    params on an image of `shape` (h, w)."""
    h, w = shape[:2]
    c = np.array(params).reshape(3, 2)  # rows: constant, x-term, y-term (centred, scaled coords)
    cx, cy, s = w / 2, h / 2, max(w, h) / 2
    a = np.array([[1 + c[1, 0] / s, c[2, 0] / s], [c[1, 1] / s, 1 + c[2, 1] / s]])
    t = np.array([c[0, 0] - (c[1, 0] * cx + c[2, 0] * cy) / s, c[0, 1] - (c[1, 1] * cx + c[2, 1] * cy) / s])
    return np.hstack([a, t[:, None]])


def eye_masks(landmarks: np.ndarray, size: int, iod: float, grow: float = 0.06) -> dict[str, np.ndarray]:
    """Per subject's side ("L", "R"): the eye's outline (6 landmarks), grown by `grow` IOD."""
    out = {}
    for side, idx in (("L", EYE_L), ("R", EYE_R)):
        m = np.zeros((size, size), np.uint8)
        cv2.fillConvexPoly(m, cv2.convexHull(landmarks[idx].astype(np.float32)).astype(np.int32), 1)
        k = max(1, int(round(grow * iod)))
        out[side] = cv2.dilate(m, np.ones((2 * k + 1, 2 * k + 1), np.uint8)).astype(bool)
    return out


def eye_mask(landmarks: np.ndarray, size: int, iod: float, grow: float = 0.15) -> np.ndarray:
    """Both eyes with a margin (the lids and what a blink drags along), for spotting."""
    m = eye_masks(landmarks, size, iod, grow)
    return m["L"] | m["R"]


BLINK_RATIO = 3.0  # eye change / face change above this is a blink (lid motion of an AU stays near 1)
BLINK_MIN_GREY = 6.0  # and at least this mean absolute change, grey levels


def eye_closure(onset: np.ndarray, apex: np.ndarray, face: np.ndarray, eyes: dict[str, np.ndarray]) -> dict:
    """Per eye, the mean absolute grey change onset -> apex inside the eye against the face's median
    change; "blink": the sides whose change says the eye closed (or opened) in between."""
    diff = np.abs(blurred(onset, 1.0) - blurred(apex, 1.0))
    ref = float(np.median(diff[face])) + 1.0
    change = {side: float(diff[m].mean()) for side, m in eyes.items()}
    blink = sorted(s for s, c in change.items() if c >= BLINK_MIN_GREY and c / ref >= BLINK_RATIO)
    return {"blink": blink, "change": {s: round(c, 2) for s, c in change.items()}, "face_change": round(ref - 1.0, 2)}


def paste_eyes(onset: np.ndarray, apex: np.ndarray, eyes: dict[str, np.ndarray], sides, feather: float) -> np.ndarray:
    """`apex` with the eyes on `sides` replaced by the onset's, blended over `feather` px: a blink's
    appearance change otherwise reaches the brows and cheeks through the flow's smoothing."""
    if not sides:
        return apex
    m = np.zeros(apex.shape, np.float32)
    for side in sides:
        m = np.maximum(m, eyes[side].astype(np.float32))
    m = np.clip(cv2.GaussianBlur(m, (0, 0), feather) * 1.5, 0, 1) if feather > 0 else m
    return np.clip(m * onset + (1 - m) * apex + 0.5, 0, 255).astype(np.uint8)


def still_noise(flow: np.ndarray, stable: np.ndarray, radius: int) -> float:
    """Median magnitude of the flow averaged over region-sized boxes lying inside `stable`: what a
    region's mean vector shows on this clip without any expression."""
    k = 2 * radius + 1
    inside = cv2.erode(stable.astype(np.uint8), np.ones((k, k), np.uint8)).astype(bool)
    if inside.sum() < 20:
        inside = stable
    mean = cv2.blur(flow, (k, k))
    return float(np.median(np.linalg.norm(mean[inside], axis=-1)))
