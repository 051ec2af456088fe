"""Landmark-anchored facial regions and their motion statistics.

31 regions, finer than MELLM's 29 (which it contains, plus the two sides of the nose that AU9
moves): inner/outer brow (4), upper/lower eyelid at the inner, middle and outer third (12), nose
side (2), nostril wing (2), cheek (2), mouth corner (2), upper lip (3), lower lip (3), chin (1).
Each region is a disk around a point computed from the onset frame's landmarks in the canonical
crop; its radius is a fraction of the interocular distance (IOD).

Directions: `direction_deg` is in image coordinates (0 = towards the image's right, which is the
subject's left; 90 = up). `octant` names it relative to the face: up/down and inward/outward
(towards/away from the midline) for sided regions; up/down and left/right (the subject's) for
midline regions.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass

import cv2
import numpy as np

from mellm.face import BROW_L, BROW_R, JAW

Anchor = Callable[[np.ndarray, float], np.ndarray]  # (landmarks, iod) -> (x, y)


@dataclass(frozen=True)
class Region:
    name: str
    side: str  # "L", "R" (subject's) or "C" (midline)
    anchor: Anchor
    radius: float  # fraction of IOD

    @property
    def key(self) -> str:
        return f"{self.name}|{self.side}"


def _mean(*idx: int) -> Anchor:
    return lambda lm, iod: lm[list(idx)].mean(0)


def _shift(anchor: Anchor, side: str, out: float = 0.0, up: float = 0.0) -> Anchor:
    """Move an anchor outward (away from the midline) and up by fractions of the IOD."""
    sign = 1.0 if side == "L" else -1.0  # the subject's left is the image's right (+x)
    return lambda lm, iod: anchor(lm, iod) + np.array([sign * out * iod, -up * iod])


def _sided(name: str, left: Anchor, right: Anchor, radius: float, out: float = 0.0, up: float = 0.0) -> list[Region]:
    return [
        Region(name, "L", _shift(left, "L", out, up), radius),
        Region(name, "R", _shift(right, "R", out, up), radius),
    ]


REGIONS: list[Region] = [
    *_sided("inner brow", _mean(22, 23), _mean(20, 21), 0.10),
    *_sided("outer brow", _mean(25, 26), _mean(17, 18), 0.10),
    *_sided("upper eyelid inner", _mean(43), _mean(38), 0.05),
    *_sided("upper eyelid middle", _mean(43, 44), _mean(37, 38), 0.05),
    *_sided("upper eyelid outer", _mean(44), _mean(37), 0.05),
    *_sided("lower eyelid inner", _mean(47), _mean(40), 0.05),
    *_sided("lower eyelid middle", _mean(46, 47), _mean(40, 41), 0.05),
    *_sided("lower eyelid outer", _mean(46), _mean(41), 0.05),
    *_sided("nose side", _mean(29, 35), _mean(29, 31), 0.08),
    *_sided("nostril wing", _mean(35), _mean(31), 0.07, out=0.05),
    *_sided("cheek", _mean(46, 54), _mean(41, 48), 0.15, out=0.12),
    *_sided("mouth corner", _mean(54), _mean(48), 0.09),
    Region("upper lip", "C", _mean(51), 0.07),
    *_sided("upper lip", _mean(52), _mean(50), 0.07),
    Region("lower lip", "C", _mean(57), 0.07),
    *_sided("lower lip", _mean(56), _mean(58), 0.07),
    Region("chin", "C", _mean(57, 8), 0.14),
]
REGION_KEYS = [r.key for r in REGIONS]

SIDED_OCTANTS = ["outward", "up-outward", "up", "up-inward", "inward", "down-inward", "down", "down-outward"]
MIDLINE_OCTANTS = ["left", "up-left", "up", "up-right", "right", "down-right", "down", "down-left"]

SIGNIFICANT_PX = 0.25  # below this resultant motion a region reads "no significant motion"
COHERENT = 0.5  # below this coherence a region reads "no clear dominant direction"


@dataclass
class RegionStat:
    name: str
    side: str
    mean_px: float  # mean flow magnitude in the region
    max_px: float  # 95th percentile of the magnitude (a max that single noisy pixels can't set)
    vector: tuple[float, float]  # mean flow (dx, dy), image coordinates, y down
    direction_deg: float  # angle of `vector`, image coordinates, 0 = image right, 90 = up
    octant: str  # relative to the face, or "mixed" when incoherent, "none" when insignificant
    coherence: float  # |mean vector| / mean magnitude, in [0, 1]
    strain: float  # mean optical strain
    significant: bool

    @property
    def key(self) -> str:
        return f"{self.name}|{self.side}"

    @property
    def resultant_px(self) -> float:
        return float(np.hypot(*self.vector))

    def to_dict(self) -> dict:
        d = asdict(self)
        for k, v in d.items():
            if isinstance(v, float):
                d[k] = round(v, 4)
        d["vector"] = [round(v, 4) for v in self.vector]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> RegionStat:
        return cls(**{**d, "vector": tuple(d["vector"])})


def anatomical(vector: tuple[float, float], side: str) -> tuple[float, float]:
    """Image (dx, dy) -> (outward-or-subject's-left, up) components for a region's side."""
    dx, dy = vector
    return (-dx if side == "R" else dx), -dy


def octant_name(vector: tuple[float, float], side: str) -> str:
    ax, ay = anatomical(vector, side)
    k = int(np.round(np.degrees(np.arctan2(ay, ax)) / 45.0)) % 8
    return (MIDLINE_OCTANTS if side == "C" else SIDED_OCTANTS)[k]


def region_masks(landmarks: np.ndarray, size: int, iod: float) -> dict[str, np.ndarray]:
    """Boolean mask per region key, in the canonical crop."""
    masks = {}
    for r in REGIONS:
        m = np.zeros((size, size), np.uint8)
        cx, cy = r.anchor(landmarks, iod)
        cv2.circle(m, (int(round(cx)), int(round(cy))), max(2, int(round(r.radius * iod))), 1, -1, cv2.LINE_8)
        masks[r.key] = m.astype(bool)
    return masks


def region_shapes(landmarks: np.ndarray, iod: float) -> list[dict]:
    """Where each region lies in the canonical crop: {"key", "name", "side", "x", "y", "r"} in crop
    pixels, the same disks `region_masks` fills (for drawing the regions on the face)."""
    out = []
    for r in REGIONS:
        cx, cy = r.anchor(landmarks, iod)
        out.append({"key": r.key, "name": r.name, "side": r.side, "x": round(float(cx), 1), "y": round(float(cy), 1),
                    "r": float(max(2, int(round(r.radius * iod))))})
    return out


def face_mask(landmarks: np.ndarray, size: int, iod: float) -> np.ndarray:
    """The face: jaw line closed over the brows raised by 0.35 IOD (to include the forehead)."""
    brows = landmarks[BROW_R + BROW_L] - np.array([0, 0.35 * iod])
    hull = cv2.convexHull(np.vstack([landmarks[JAW], brows]).astype(np.float32)).astype(np.int32)
    m = np.zeros((size, size), np.uint8)
    cv2.fillConvexPoly(m, hull, 1)
    return m.astype(bool)


def stable_mask(landmarks: np.ndarray, size: int, iod: float) -> np.ndarray:
    """Face pixels away from every region (forehead, nose bridge, temples, jaw sides): where
    head motion shows and expressions barely reach. Regions are grown by 0.15 IOD because
    expression motion spreads beyond them."""
    grow = int(round(0.15 * iod))
    expressive = np.zeros((size, size), np.uint8)
    for r in REGIONS:
        cx, cy = r.anchor(landmarks, iod)
        cv2.circle(expressive, (int(round(cx)), int(round(cy))), int(round(r.radius * iod)) + grow, 1, -1)
    return face_mask(landmarks, size, iod) & ~expressive.astype(bool)


def nose_mask(landmarks: np.ndarray, size: int, iod: float) -> np.ndarray:
    """A box over the nose tip (landmarks 30-35), the usual head-motion reference."""
    pts = landmarks[30:36]
    x0, y0 = pts.min(0)
    x1, y1 = pts.max(0)
    pad = 0.05 * iod
    m = np.zeros((size, size), bool)
    m[int(max(0, y0 - pad)):int(y1 + pad) + 1, int(max(0, x0 - pad)):int(x1 + pad) + 1] = True
    return m


def region_stats(flow: np.ndarray, strain: np.ndarray, masks: dict[str, np.ndarray]) -> list[RegionStat]:
    stats = []
    mag = np.linalg.norm(flow, axis=-1)
    for r in REGIONS:
        m = masks[r.key]
        vecs = flow[m]
        mean_vec = vecs.mean(0)
        mags = mag[m]
        mean_mag = float(mags.mean())
        resultant = float(np.hypot(*mean_vec))
        coherence = resultant / mean_mag if mean_mag > 1e-9 else 0.0
        significant = resultant >= SIGNIFICANT_PX
        vector = (float(mean_vec[0]), float(mean_vec[1]))
        if not significant:
            octant = "none"
        elif coherence < COHERENT:
            octant = "mixed"
        else:
            octant = octant_name(vector, r.side)
        stats.append(RegionStat(
            name=r.name, side=r.side, mean_px=mean_mag, max_px=float(np.percentile(mags, 95)),
            vector=vector, direction_deg=float(np.degrees(np.arctan2(-vector[1], vector[0])) % 360),
            octant=octant, coherence=float(coherence), strain=float(strain[m].mean()), significant=significant,
        ))
    return stats
