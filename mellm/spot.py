"""Expression spotting in long videos (`mellm spot`): a video in, `Spots` out.

Streaming, one pass, memory bounded whatever the length: frames come from a decoding thread
(mellm.video.FrameStream); only the last k analysed frames are kept, and per analysed frame a
few numbers (one per facial region) are appended to the curves.

Per analysed frame t (high-speed video is analysed at <= `max_analysis_fps` by frame skipping):
1. Face: tracked by periodic re-detection (every `redetect_s`) and a normalised cross-correlation
   check of the face crop against the crop at the last detection (below `ncc_min`: re-detect at
   once). A frame without a face starts a gap (recorded); detection is retried every `retry_s`.
2. Motion against frame t-k (k = `k_seconds` at the analysis rate): both frames are mapped into
   one face crop (the current detection's, so the head's motion stays in the flow and comes out
   in the next step), photometrically normalised (lighting changes), and DIS flow is computed.
3. Head motion: an affine field fitted robustly to the stable face pixels is subtracted (as
   mellm.flow.remove_head_motion does, evaluated only where it is needed).
4. Per region group (brows, eyelids, nose, cheeks, mouth, chin): the mean flow vector's length
   (main-direction motion: noise averages out, coherent motion stays).
After the pass, each group's curve is turned into a z-score against its own robust rest level
and noise (the median, and the spread of the curve's frame-to-frame differences); the frame
score is the strongest group's z. Blinks (a run of eyelid motion that begins closing, reaches both
lids far above rest, moves the lids more than the brows, and lasts no longer than a blink: see
_blinks) blank the eye and brow groups for the run plus a hangover; talking (motion confined to the
mouth and chin that oscillates) is dropped. An event must last at least k (a real displacement
keeps the motion against t-k up that long) and move its strongest group min_event_px, more in
inter-coded video, whose encoder refreshes a still face in bursts. Intervals come from hysteresis
(a run above `z_low` that reaches `z_high`), merged across short gaps, checked for duration, and
typed micro (<= 0.5 s) or macro.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace

import cv2
import numpy as np

from mellm import __version__
from mellm.errors import ConfigError, NoFaceError
from mellm.face import DlibFace
from mellm.regions import region_masks, stable_mask
from mellm.register import canonical_from_face, warp
from mellm.spots import Spots, SpottedEvent
from mellm.video import FrameStream

# Region groups whose motion the curve follows; names as in mellm.regions.
GROUPS = {
    "brow L": ("inner brow|L", "outer brow|L"), "brow R": ("inner brow|R", "outer brow|R"),
    "eyelid L": tuple(f"{p} eyelid {q}|L" for p in ("upper", "lower") for q in ("inner", "middle", "outer")),
    "eyelid R": tuple(f"{p} eyelid {q}|R" for p in ("upper", "lower") for q in ("inner", "middle", "outer")),
    "nose": ("nose side|L", "nose side|R", "nostril wing|L", "nostril wing|R"),
    "cheek L": ("cheek|L",), "cheek R": ("cheek|R",),
    "mouth corner L": ("mouth corner|L",), "mouth corner R": ("mouth corner|R",),
    "upper lip": ("upper lip|C", "upper lip|L", "upper lip|R"),
    "lower lip": ("lower lip|C", "lower lip|L", "lower lip|R"),
    "chin": ("chin|C",),
}
GROUP_NAMES = list(GROUPS)
EYE_GROUPS = ("eyelid L", "eyelid R", "brow L", "brow R")
LID_INDEX = [GROUP_NAMES.index("eyelid L"), GROUP_NAMES.index("eyelid R")]
MOUTH_GROUPS = ("mouth corner L", "mouth corner R", "upper lip", "lower lip", "chin")


@dataclass(frozen=True)
class SpotSettings:
    max_analysis_fps: float = 50.0  # 200 fps input is analysed at 50 fps (every 4th frame)
    crop_size: int = 160
    flow_finest_scale: int = 1  # DIS: 1 = half resolution at the finest level (fast, enough for >= 0.3 px)
    k_seconds: float = 0.16  # motion against the frame this far back
    z_high: float = 12.0  # an event's peak must reach this many noise units over rest
    z_low: float = 3.0  # and its extent is where the score stays above this
    min_region_px: float = 0.15  # a group's motion below this (crop px) is never an event
    min_event_px: float = 0.15  # an event's strongest group must move this much (crop px) at its peak
    inter_coded_min_event_px: float = 0.25  # that, in inter-coded video (H.264, ...): refresh bursts
    noise_floor_px: float = 0.015  # flow cannot resolve less: a curve's noise is never taken below this
    head_leak: float = 0.08  # share of the head's motion that survives its removal (flow errors), discounted
    head_scale_px: float = 1.0  # and while the head moves h crop px, the score is divided by 1 + h / this
    keyframe_discount: float = 2.0  # a lossy codec's key frame refreshes the picture: scores across one count this much less
    merge_gap_s: float = 0.6  # runs closer than this are one event (a macro-expression's rise and fall)
    min_event_s: float = 0.16  # = k_seconds: any real displacement keeps the motion against t-k up this long
    max_event_s: float = 4.0
    micro_max_s: float = 0.5
    blink_z: float = 8.0  # both eyelid groups this far above rest at once: a blink (their frames are blanked)
    blink_px: float = 0.3  # and moving at least this much (crop px; the weaker lid half of it)
    blink_share: float = 0.7  # an event whose motion is this much the two eyelids' (both moving): a blink, dropped
    blink_hangover_s: float = 0.12
    blink_max_s: float = 0.5  # a run of lid motion longer than this is not one blink (0.1-0.4 s, + k)
    talking_min_s: float = 0.7  # mouth-only motion this long with >= talking_peaks peaks: talking
    talking_peaks: int = 3
    mouth_share: float = 0.75  # "mouth-only": mouth groups hold this share of the z mass
    redetect_s: float = 0.6
    retry_s: float = 0.25  # while the face is lost
    ncc_min: float = 0.5
    detect_width: int = 320
    keep_curve: bool = True  # store the score curve in spots.json (for the plot)

    def __post_init__(self):
        if self.z_low <= 0 or self.z_high < self.z_low:
            raise ConfigError(f"spot settings: need 0 < z_low <= z_high (got z_low={self.z_low}, z_high={self.z_high})")
        if self.crop_size < 64:
            raise ConfigError(f"spot settings: crop_size {self.crop_size} is too small (>= 64)")
        if self.max_analysis_fps <= 0 or self.k_seconds <= 0:
            raise ConfigError("spot settings: max_analysis_fps and k_seconds must be positive")

    def to_dict(self) -> dict:
        return {**asdict(self), "mellm": __version__}


def analysis_step(fps: float, s: SpotSettings) -> int:
    return max(1, int(np.ceil(fps / s.max_analysis_fps - 1e-9)))


class _Geometry:
    """Everything fixed by one face detection: the crop matrix, masks and region indices."""

    def __init__(self, face, size: int):
        canon = canonical_from_face(face, size)
        self.matrix = canon.matrix
        lm, iod = canon.landmarks, canon.iod
        self.stable = stable_mask(lm, size, iod)
        masks = region_masks(lm, size, iod)
        self.groups = [np.flatnonzero(np.any([masks[k] for k in GROUPS[g]], axis=0).ravel()) for g in GROUP_NAMES]
        # Head motion as an affine field fitted to the stable pixels (as mellm.flow.remove_head_motion
        # does), in a form for the spotter's per-frame budget: a fixed sample of stable pixels, and,
        # since the mean of an affine field over a region is its value at the region's centroid,
        # no field is ever built: a group's motion is its mean flow minus the fit at its centroid.
        ys, xs = np.nonzero(self.stable)
        pick = np.arange(0, len(ys), max(1, len(ys) // 400))
        self.fit_index = (ys[pick] * size + xs[pick])
        c, sc = size / 2, size / 2
        self.design = np.stack([np.ones(len(pick)), (xs[pick] - c) / sc, (ys[pick] - c) / sc], 1)
        cent = [(np.mean(i % size), np.mean(i // size)) if len(i) else (c, c) for i in self.groups]
        self.centroids = np.array([[1.0, (x - c) / sc, (y - c) / sc] for x, y in cent])
        self.face_centre = np.array([1.0, 0.0, 0.0])
        face_px = np.zeros((size, size), bool)
        for m in masks.values():
            face_px |= m
        self.face_px = face_px | self.stable
        self.reference: np.ndarray | None = None


def _normalise(crop: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Zero mean, fixed spread over the face: a lighting change moves no pixel."""
    v = crop[mask].astype(np.float32)
    mu, sd = float(v.mean()), float(v.std()) + 1e-3
    return np.clip((crop.astype(np.float32) - mu) * (40.0 / sd) + 128.0, 0, 255).astype(np.uint8)


def _ncc(a: np.ndarray, b: np.ndarray, mask: np.ndarray) -> float:
    x, y = a[mask].astype(np.float32), b[mask].astype(np.float32)
    x, y = x - x.mean(), y - y.mean()
    d = float(np.sqrt((x * x).sum() * (y * y).sum()))
    return float((x * y).sum() / d) if d > 0 else 0.0


class _Tracker:
    def __init__(self, s: SpotSettings, fps: float):
        self.s = s
        self.detector = DlibFace(detect_width=s.detect_width)
        self.geometry: _Geometry | None = None
        self.last_try = -10**9
        self.redetect_every = max(1, int(round(s.redetect_s * fps)))
        self.retry_every = max(1, int(round(s.retry_s * fps)))
        self.detections = 0

    def update(self, n: int, gray: np.ndarray, lost: bool) -> tuple[_Geometry | None, bool]:
        """(geometry for frame n, whether it changed). Re-detects on schedule or when the crop no
        longer looks like the face found last."""
        g = self.geometry
        due = g is None and n - self.last_try >= self.retry_every
        due = due or (g is not None and n - self.last_try >= self.redetect_every)
        if g is not None and not due and g.reference is not None:
            crop = warp(gray, g.matrix, self.s.crop_size)
            due = _ncc(crop, g.reference, g.face_px) < self.s.ncc_min
        if not due:
            return g, False
        self.last_try = n
        try:
            face = self.detector.detect(gray, full_retry=False)
        except NoFaceError:
            self.geometry = None
            return None, g is not None
        self.detections += 1
        new = _Geometry(face, self.s.crop_size)
        new.reference = warp(gray, new.matrix, self.s.crop_size)
        self.geometry = new
        return new, True


def _affine_fit(targets: np.ndarray, design: np.ndarray, iterations: int = 3) -> np.ndarray:
    """(3, 2) affine coefficients by reweighted least squares with Tukey weights: expression motion
    that leaks into the stable pixels counts as outliers."""
    w = np.ones(len(design))
    coef = np.zeros((3, 2))
    for _ in range(iterations):
        sw = np.sqrt(w)[:, None]
        coef = np.linalg.lstsq(design * sw, targets * sw, rcond=None)[0]
        resid = np.linalg.norm(targets - design @ coef, axis=1)
        scale = 4.685 * max(1.4826 * float(np.median(resid)), 0.05)
        w = np.clip(1 - (resid / scale) ** 2, 0, None) ** 2
    return coef


def _robust(x: np.ndarray) -> tuple[float, float]:
    """(rest level, noise) of a curve: its median, and the spread of its frame-to-frame changes
    (MAD of the differences / sqrt 2), which an event occupying part of the video barely moves."""
    x = x[np.isfinite(x)]
    if x.size < 4:
        return 0.0, 1.0
    rest = float(np.median(x))
    d = np.diff(x)
    noise = 1.4826 * float(np.median(np.abs(d - np.median(d)))) / np.sqrt(2)
    return rest, max(noise, 1e-3)


def spot_video(path, settings: SpotSettings | None = None, fps: float | None = None, progress: bool = False,
               report: Callable[[int, int | None], None] | None = None) -> Spots:
    """Spot expression events in a long video (a file or a frame folder). Raises ClipError
    subclasses on unusable input (NoFaceError when no frame shows a face); a file that stops
    decoding part-way gives the events before, with a note. `progress`: a progress bar;
    `report(frames read, frames declared or None)`: called for every analysed frame (the gateway's
    progress route; it throttles itself)."""
    s = settings or SpotSettings()
    t0 = time.perf_counter()
    probe = FrameStream(path, fps=fps)
    if not probe.fps:
        raise ConfigError(f"{path}: a frame folder needs its frame rate (--fps; over HTTP, the fps field)")
    step = analysis_step(probe.fps, s)
    afps = probe.fps / step
    k = max(1, int(round(s.k_seconds * afps)))
    stream = FrameStream(path, every=step, fmt="gray", fps=probe.fps)
    tracker = _Tracker(s, afps)
    dis = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM)
    dis.setFinestScale(s.flow_finest_scale)

    frames: list[int] = []
    values: list[np.ndarray] = []  # per analysed frame: one value per group (NaN without a face)
    head: list[float] = []
    lid_dy: list[np.ndarray] = []
    ring: list[np.ndarray] = []  # the last k analysed grey frames
    gaps: list[list[int]] = []
    gap_start = None
    nan_row = np.full(len(GROUP_NAMES), np.nan, np.float32)
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=probe.declared_frames, desc=f"spot {getattr(path, 'name', path)}", unit="frame")
    t_flow = 0.0
    i = 0
    last_n = 0
    for n, gray in stream:
        i += 1
        last_n = n
        if bar is not None:
            bar.update(n - bar.n)
        if report is not None:
            report(n, probe.declared_frames)
        ring.append(gray)
        if len(ring) > k + 1:
            ring.pop(0)
        geo, _ = tracker.update(i, gray, lost=gap_start is not None)
        frames.append(n)
        if geo is None:
            if gap_start is None:
                gap_start = n
            values.append(nan_row)
            head.append(np.nan)
            lid_dy.append(nan_row[:2])
            ring = [gray]  # no motion across a gap
            continue
        if gap_start is not None:
            gaps.append([gap_start, n - 1])
            gap_start = None
        if len(ring) <= k:
            values.append(nan_row)
            head.append(np.nan)
            lid_dy.append(nan_row[:2])
            continue
        tf = time.perf_counter()
        a = _normalise(warp(ring[0], geo.matrix, s.crop_size), geo.face_px)
        b = _normalise(warp(ring[-1], geo.matrix, s.crop_size), geo.face_px)
        flow = dis.calc(a, b, None).reshape(-1, 2)
        coef = _affine_fit(flow[geo.fit_index].astype(np.float64), geo.design)
        means = np.array([flow[idx].mean(0) if len(idx) else (0.0, 0.0) for idx in geo.groups]) - geo.centroids @ coef
        values.append(np.linalg.norm(means, axis=1).astype(np.float32))
        lid_dy.append(means[LID_INDEX, 1].astype(np.float32))  # + = down: a closing lid (blink), - = up (AU5)
        head.append(float(np.linalg.norm(geo.face_centre @ coef)))
        t_flow += time.perf_counter() - tf
    if bar is not None:
        bar.close()
    if gap_start is not None:
        gaps.append([gap_start, last_n])
    if not frames:
        raise NoFaceError(f"no frames could be read from {path}")
    if tracker.detections == 0:
        raise NoFaceError(f"no face found in any analysed frame of {path} ({len(frames)} frames at {afps:g} fps)")

    curves = np.vstack(values) if values else np.zeros((0, len(GROUP_NAMES)), np.float32)
    # Key frames of an inter-frame codec (H.264 every ~250 frames) change the whole picture a little
    # at once; an intra-only codec (FFV1, MJPEG) has no such pulse.
    weight = np.ones(len(frames), np.float32)
    inter_coded = stream.inter_coded
    if inter_coded:
        fr = np.asarray(frames)
        for f in (f for f in stream.keyframes if f > 1):
            weight[(fr >= f) & (fr < f + (k + 1) * step)] = 1 / s.keyframe_discount
        # Between key frames an encoder refreshes a still face in bursts, a region at a time: a
        # few tenths of a pixel of motion that never happened. An event must move more than that.
        s = replace(s, min_event_px=max(s.min_event_px, s.inter_coded_min_event_px))
    events, z, score = intervals_from_curves(np.asarray(frames), curves, np.asarray(head, np.float32), afps, step, k, s,
                                             lid_dy=np.vstack(lid_dy) if lid_dy else None, weight=weight)
    notes = list(stream.notes)
    if gaps:
        notes.append(f"face not found in {len(gaps)} stretch(es): " + ", ".join(f"frames {a}-{b}" for a, b in gaps))
    curve = None
    if s.keep_curve:
        curve = {"frames": frames, "score": _rounded(score), "head_px": _rounded(np.asarray(head)),
                 "groups": GROUP_NAMES, "group_px": [_rounded(c) for c in curves.T]}
    return Spots(video=str(path), fps=float(probe.fps), n_frames=stream.n_read, analysis_fps=afps,
                 settings={**s.to_dict(), "step": step, "k": k, "inter_coded": inter_coded}, events=events,
                 face_gaps=gaps, notes=notes,
                 timings_s={"total": round(time.perf_counter() - t0, 3), "flow": round(t_flow, 3),
                            "frames_per_s": round(stream.n_read / max(1e-9, time.perf_counter() - t0), 1),
                            "detections": tracker.detections},
                 curve=curve)


def _rounded(x: np.ndarray) -> list:
    return [None if not np.isfinite(v) else round(float(v), 3) for v in x]


def _runs(mask: np.ndarray) -> list[tuple[int, int]]:
    """[start, end] index pairs of the True runs."""
    if not mask.any():
        return []
    d = np.diff(np.concatenate([[0], mask.astype(np.int8), [0]]))
    return list(zip(np.flatnonzero(d == 1), np.flatnonzero(d == -1) - 1))


def intervals_from_curves(frames: np.ndarray, curves: np.ndarray, head: np.ndarray, afps: float, step: int, k: int,
                          s: SpotSettings, lid_dy: np.ndarray | None = None,
                          weight: np.ndarray | None = None) -> tuple[list[SpottedEvent], np.ndarray, np.ndarray]:
    """Group curves (analysed frames x groups, crop px), the head's motion and the eyelids'
    vertical motion (frames x 2, + = down; None: unknown) -> events, per-group z, frame score."""
    n_groups = curves.shape[1]
    # What a fast head turn leaves behind after its removal grows with it: discount that much.
    curves = np.clip(curves - s.head_leak * np.nan_to_num(head)[:, None], 0, None)
    z = np.full(curves.shape, np.nan, np.float32)
    for g in range(n_groups):
        rest, noise = _robust(curves[:, g])
        noise = max(noise, s.noise_floor_px)
        z[:, g] = (curves[:, g] - rest) / noise
        z[curves[:, g] < s.min_region_px, g] = np.minimum(z[curves[:, g] < s.min_region_px, g], s.z_low * 0.99)
    zf = np.nan_to_num(z, nan=0.0)
    eye = [GROUP_NAMES.index(g) for g in EYE_GROUPS]
    lids = eye[:2]
    dy = np.ones((len(curves), 2), np.float32) if lid_dy is None else np.nan_to_num(lid_dy)
    blink = _blinks(zf, curves, dy, lids, eye[2:], k, afps, s)
    zf[np.ix_(blink, eye)] = 0.0
    # Fast head motion leaves flow errors all over the face, not just in proportion: trust the
    # score less while it lasts (expressions during a head turn need to be that much stronger).
    score = zf.max(axis=1) / (1 + np.nan_to_num(head) / s.head_scale_px)
    if weight is not None:
        score = score * weight
    score[~np.isfinite(curves).all(axis=1)] = np.nan

    above = np.nan_to_num(score) >= s.z_low
    runs = _runs(above)
    gap = max(1, int(round(s.merge_gap_s * afps)))
    merged: list[list[int]] = []
    for a, b in runs:
        if merged and a - merged[-1][1] - 1 <= gap and np.isfinite(score[merged[-1][1]:a + 1]).all():
            merged[-1][1] = b
        else:
            merged.append([a, b])
    mouth = [GROUP_NAMES.index(g) for g in MOUTH_GROUPS]
    events = []
    for a, b in merged:
        seg = np.nan_to_num(score[a:b + 1])
        peak = float(seg.max())
        if peak < s.z_high:
            continue
        # Frames: motion at analysed frame t is against t-k, so it starts within (t-k, t].
        onset = int(frames[max(0, a - (k + 1) // 2)])
        offset = int(frames[max(0, b - k // 2)]) + step - 1
        if offset <= onset:
            offset = onset + step
        dur = (offset - onset) / (afps * step)
        if dur < s.min_event_s or dur > s.max_event_s:
            continue
        zseg = np.clip(zf[a:b + 1], 0, None)
        if _is_talking(zseg, mouth, afps, s):
            continue
        if np.nanmax(np.where(zseg > 0, curves[a:b + 1], 0.0), initial=0.0) < s.min_event_px:
            continue
        zraw = np.clip(np.nan_to_num(z[a:b + 1]), 0, None)  # before blanking: is it a blink the blanking missed?
        # An eyelid-only event of blink length is a blink (one lid can hide in the noise), unless
        # both lids first moved up: an upper-lid raiser (AU5).
        if dur <= s.micro_max_s and zraw[:, lids].sum() >= s.blink_share * zraw.sum():
            lids_on = np.flatnonzero(np.any(zraw[:, lids] >= s.z_low, axis=1))
            if len(lids_on) and not np.all(dy[a + lids_on[0]] < 0):
                continue
        ipk = a + int(np.argmax(seg))
        apex = int(min(offset, max(onset + 1, frames[min(len(frames) - 1, ipk + k // 2)])))
        order = np.argsort(-zseg.max(axis=0))
        regions = [GROUP_NAMES[g] for g in order[:3] if zseg[:, g].max() >= s.z_low]
        events.append(SpottedEvent(onset=onset, apex=apex, offset=offset,
                                   type="micro" if dur <= s.micro_max_s else "macro",
                                   confidence=round(peak / (peak + s.z_high), 3), peak_z=round(peak, 2),
                                   regions=regions))
    return events, z, score


def _blinks(zf: np.ndarray, curves: np.ndarray, dy: np.ndarray, lids: list[int], brows: list[int], k: int,
            afps: float, s: SpotSettings) -> np.ndarray:
    """The analysed frames a blink covers (their eye and brow groups are then blanked).

    A blink is a run of eyelid motion (either lid above z_low; gaps of up to k // 2 frames
    bridged: a closing lid is a blur the flow follows poorly, it can flicker below the noise for
    a frame) in which both lids are at some point far out at once (blink_z, blink_px; one lid can
    follow the closing less well, so the weaker needs half of blink_px), and that begins with the
    lids closing (their vertical motion over the run's first frames, summed, is downwards). An
    upper-lid raiser (AU5) moves them up first, a brow lowerer (AU4) moves the brows more than
    the lids: not blinks. Covered: the whole run and a hangover."""
    n = len(zf)
    active = zf[:, lids].max(axis=1) >= s.z_low
    lid_px = np.sort(np.nan_to_num(curves[:, lids]), axis=1)
    strong = np.all(zf[:, lids] >= s.blink_z, axis=1) & (lid_px[:, 1] >= s.blink_px) & (lid_px[:, 0] >= s.blink_px / 2)
    bridge = max(1, k // 2)
    hangover = int(round(s.blink_hangover_s * afps))
    blink = np.zeros(n, bool)
    runs = _runs(active)
    i = 0
    while i < len(runs):
        a, b = runs[i]
        while i + 1 < len(runs) and runs[i + 1][0] - b - 1 <= bridge:
            i += 1
            b = runs[i][1]
        i += 1
        if not strong[a:b + 1].any() or (b - a + 1) / afps > s.blink_max_s:
            continue
        first = dy[max(0, a - 1):a + bridge + 1].sum()  # both lids, as the run begins: + = down
        run = np.nan_to_num(curves[a:b + 1])
        if first > 0 and run[:, lids].max() > run[:, brows].max():
            blink[a:min(n, b + 1 + hangover)] = True
    return blink


def _is_talking(zseg: np.ndarray, mouth: list[int], afps: float, s: SpotSettings) -> bool:
    """Mouth-only motion that goes on and oscillates: speech, not an expression."""
    if len(zseg) / afps < s.talking_min_s:
        return False
    total = zseg.sum()
    if total <= 0 or zseg[:, mouth].sum() / total < s.mouth_share:
        return False
    m = zseg[:, mouth].max(axis=1)
    sm = np.convolve(m, np.ones(3) / 3, mode="same")
    hi = s.z_low
    peaks = int(np.sum((sm[1:-1] > sm[:-2]) & (sm[1:-1] >= sm[2:]) & (sm[1:-1] > hi)))
    return peaks >= s.talking_peaks
