"""Action Unit evidence from region motion.

Each AU has a FACS motion signature: how much, and in which direction, it moves each region
(FACS: AU1 inner brow up, AU4 brows down and together, AU12 lip corners up and out, ...).
Region mean-flow vectors are explained as a non-negative combination of all signatures at once
(non-negative least squares with a small L1 penalty). Solving jointly lets AUs that share a region be told apart: an inner
brow moving up-and-inward is AU1 + AU4, a lower lid rising with the cheek is AU6, without it AU7.

The solution is an amplitude per AU and side in pixels of the canonical crop. An AU is present
when its amplitude reaches PRESENT_PX; its score is amplitude / (2 * PRESENT_PX), clipped to
[0, 1], so 0.5 is the threshold. Sides are the subject's.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.optimize import nnls

from mellm.labels import au_name
from mellm.regions import REGION_KEYS, RegionStat

PRESENT_PX = 0.25
# L1 weight: prefer explaining motion with few AUs. Without it the solver pairs antagonists (AU12
# with AU14 and AU15) that cancel at the mouth corner to fit small cheek/lid residuals.
SPARSITY = 0.05
BOTH_SIDES_RATIO = 0.5  # the weaker side must reach this share of the stronger to call it "both"

# (region name, which side: "same" as the AU's column | "C" midline | "both" sides,
#  anatomical direction in degrees (0 = outward, 90 = up), weight)
# The jaw and chin carry the whole lower lip, so AU17 and AU26 move its sides too, and AU26 moves
# its middle as far as the chin; with the lip's sides missing from AU26, the fit added an AU25 to
# every jaw drop. AU1 and AU2 lift the other end of the brow only a little (0.1; with 0.3 the fit
# gave one brow raiser the other's motion and lost AU1 whenever both were there), and they stretch
# the upper-lid skin up (without it, a raised brow read as AU5 too). Parting the lips (AU25) drags
# the chin a little. Checked against the generator's AU fields in tests/test_au_signatures.py.
SIGNATURES: dict[int, list[tuple[str, str, float, float]]] = {
    1: [("inner brow", "same", 90, 1.0), ("outer brow", "same", 90, 0.1), ("upper eyelid inner", "same", 90, 0.25),
        ("upper eyelid middle", "same", 90, 0.15)],
    2: [("outer brow", "same", 90, 1.0), ("inner brow", "same", 90, 0.1), ("upper eyelid outer", "same", 90, 0.1)],
    4: [("inner brow", "same", 225, 1.0), ("outer brow", "same", 270, 0.2)],
    5: [("upper eyelid inner", "same", 90, 1.0), ("upper eyelid middle", "same", 90, 1.0), ("upper eyelid outer", "same", 90, 1.0)],
    6: [("cheek", "same", 90, 1.0), ("lower eyelid outer", "same", 90, 0.5), ("lower eyelid middle", "same", 90, 0.3)],
    7: [("lower eyelid inner", "same", 100, 1.0), ("lower eyelid middle", "same", 100, 1.0), ("lower eyelid outer", "same", 100, 1.0)],
    9: [("nose side", "same", 90, 1.0), ("nostril wing", "same", 90, 0.6)],
    10: [("upper lip", "same", 90, 1.0), ("upper lip", "C", 90, 0.4)],
    12: [("mouth corner", "same", 40, 1.0), ("cheek", "same", 90, 0.3)],
    14: [("mouth corner", "same", 180, 1.0)],
    15: [("mouth corner", "same", 280, 1.0)],
    17: [("chin", "C", 90, 1.0), ("lower lip", "C", 90, 0.7), ("lower lip", "both", 90, 0.3)],
    20: [("mouth corner", "same", 0, 1.0), ("lower lip", "same", 315, 0.3)],
    25: [("lower lip", "C", 270, 1.0), ("lower lip", "both", 270, 0.7), ("chin", "C", 270, 0.1)],
    26: [("chin", "C", 270, 1.0), ("lower lip", "C", 270, 1.0), ("lower lip", "both", 270, 0.5)],
}
MIDLINE = {17, 25, 26}


def _columns() -> list[tuple[int, str]]:
    cols = []
    for au in SIGNATURES:
        cols += [(au, "both")] if au in MIDLINE else [(au, "L"), (au, "R")]
    return cols


def _unit(angle_deg: float, region_side: str) -> tuple[float, float]:
    """Anatomical direction -> image (dx, dy) for a region on `region_side`."""
    rad = np.radians(angle_deg)
    out, up = np.cos(rad), np.sin(rad)
    return (-out if region_side == "R" else out), -up


def _design_matrix() -> np.ndarray:
    row = {k: i for i, k in enumerate(REGION_KEYS)}
    cols = _columns()
    a = np.zeros((2 * len(REGION_KEYS), len(cols)))
    for j, (au, side) in enumerate(cols):
        for region, which, angle, weight in SIGNATURES[au]:
            sides = {"same": [side], "C": ["C"], "both": ["L", "R"]}[which]
            for s in sides:
                i = row[f"{region}|{s}"]
                dx, dy = _unit(angle, s)
                a[2 * i, j] += weight * dx
                a[2 * i + 1, j] += weight * dy
    return a


COLUMNS = _columns()
DESIGN = _design_matrix()


@dataclass
class AUEvidence:
    au: int
    side: str  # "L" | "R" | "both"
    score: float  # [0, 1]; >= 0.5 means present
    amplitude_px: float

    @property
    def name(self) -> str:
        return au_name(self.au)

    def to_dict(self) -> dict:
        return {"au": self.au, "name": self.name, "side": self.side, "score": round(self.score, 3),
                "amplitude_px": round(self.amplitude_px, 3)}

    @classmethod
    def from_dict(cls, d: dict) -> AUEvidence:
        return cls(int(d["au"]), d["side"], float(d["score"]), float(d["amplitude_px"]))




def nonnegative_lasso(a: np.ndarray, b: np.ndarray, l1: float, iterations: int = 300) -> np.ndarray:
    """argmin_x>=0 0.5*|Ax - b|^2 + l1*sum(x), by cyclic coordinate descent (warm-started by NNLS)."""
    x, _ = nnls(a, b)
    if l1 <= 0:
        return x
    col_sq = (a**2).sum(0)
    r = b - a @ x
    for _ in range(iterations):
        delta = 0.0
        for j in range(a.shape[1]):
            if col_sq[j] == 0:  # an AU whose regions are all excluded: nothing to explain
                continue
            new = max(0.0, x[j] + (a[:, j] @ r - l1) / col_sq[j])
            if new != x[j]:
                r -= a[:, j] * (new - x[j])
                delta = max(delta, abs(new - x[j]))
                x[j] = new
        if delta < 1e-5:
            break
    return x


def solve_amplitudes(stats: list[RegionStat], exclude: set[str] | frozenset = frozenset()) -> dict[tuple[int, str], float]:
    """Non-negative AU amplitudes (px) explaining the regions' mean-flow vectors. Regions in
    `exclude` (keys; e.g. the lids of a blinking eye) are left out of the fit."""
    by_key = {s.key: s for s in stats}
    b = np.array([c for k in REGION_KEYS for c in by_key[k].vector])
    a = DESIGN
    if exclude:
        keep = np.repeat([k not in exclude for k in REGION_KEYS], 2)
        a, b = a * keep[:, None], b * keep
    amplitudes = nonnegative_lasso(a, b, SPARSITY)
    return {col: float(x) for col, x in zip(COLUMNS, amplitudes)}


def _score(amplitude: float, threshold: float = PRESENT_PX) -> float:
    return float(np.clip(amplitude / (2 * threshold), 0.0, 1.0))


def score_aus(stats: list[RegionStat], exclude: set[str] | frozenset = frozenset(),
              thresholds: dict[int, float] | None = None, floor: float = 0.0,
              default: float = PRESENT_PX) -> list[AUEvidence]:
    """Every AU the engine knows, with its side and score (present or not), in AU order.

    An AU's threshold is its calibrated one (`thresholds`, from `mellm calibrate`) or `default`,
    raised to `floor` (the clip's own noise, mellm.robust.still_noise) when that is higher; the
    score is amplitude / (2 * threshold), so 0.5 stays the decision point."""
    amp = solve_amplitudes(stats, exclude)
    thresholds = thresholds or {}
    out = []
    for au in SIGNATURES:
        t = max(thresholds.get(au, default), floor, 1e-6)
        if au in MIDLINE:
            a = amp[(au, "both")]
            out.append(AUEvidence(au, "both", _score(a, t), a))
            continue
        left, right = amp[(au, "L")], amp[(au, "R")]
        strong, weak = max(left, right), min(left, right)
        side = "both" if weak >= BOTH_SIDES_RATIO * strong else ("L" if left > right else "R")
        out.append(AUEvidence(au, side, _score(strong, t), strong))
    return out


def present(scored: list[AUEvidence]) -> list[AUEvidence]:
    return [a for a in scored if a.score >= 0.5]


# --- whether the evidence supports an AU an answer claims: one definition for the whole stack ---


def present_aus(evidence) -> dict[int, str]:
    """{au: side} of the AUs an Evidence record (or its dict) judges present (score >= 0.5)."""
    aus = evidence["aus"] if isinstance(evidence, dict) else [a.to_dict() for a in evidence.aus]
    return {int(a["au"]): a.get("side") or "both" for a in aus if float(a.get("score", 1.0)) >= 0.5}


def claim_support(claims, present_sides) -> dict[int, bool]:
    """Whether the evidence supports each claimed AU: {au: side or None} -> {au: bool}.

    Supported means perception judged the AU present (its score reaches 0.5: the direction-aware
    fit of region flow to the AU signatures, so a lip corner pulled down does not support AU12)
    and, where the answer gives it a side (L/R), perception put it on that side or on both.
    `present_sides` is `present_aus(evidence)`. This is the one definition the GRPO evidence reward
    (train/rewards.py), the gateway's `claims[].supported` and the GRPO benchmark's "share of
    claimed AUs the evidence supports" use."""
    out = {}
    for au, side in claims.items():
        seen = present_sides.get(au)
        out[au] = seen is not None and (side not in ("L", "R") or seen in (side, "both"))
    return out


def supported_share(claims, present_sides) -> tuple[int, int]:
    """(supported, claimed) counts of `claim_support`, for a share over many answers."""
    support = claim_support(claims, present_sides)
    return sum(support.values()), len(support)
