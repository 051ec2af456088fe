"""Synthetic micro-expression clips with known truth (`mellm synth`).

A real face photo that ships with scikit-image (the astronaut, public domain) is warped by smooth,
landmark-anchored displacement fields, one per Action Unit, following FACS motion descriptions.
Each clip has raised-cosine onset -> apex -> offset timing, optional head drift (translation,
rotation, scale) and sensor noise, and is written losslessly (PNG frames and/or FFV1 video):
lossy codecs destroy sub-pixel motion.

Recordings as they really are (mellm/nuisances.py), each an option of `SynthConfig` and recorded
per clip in the labels (`nuisances`): faces of several identities (mellm/faces.py: tuning and
held-out), 50-120 px between the eyes, placed anywhere; JPEG frames or H.264 video; amplitudes
down to 0.2 px; blinks at any time, also during the ME; head rotation, scale and non-constant
(swaying) motion; lighting flicker; and clips with no micro-expression at all. `labels.jsonl` records, per clip, the AUs with sides and
amplitudes, onset/apex/offset, fine and coarse emotion, and the displacement bumps themselves, so
the exact flow field can be recomputed (`exact_flow`).

The displacement fields here are written independently of the AU detector's signatures
(mellm/aus.py); both follow FACS's descriptions of how each AU moves the face.
"""

from __future__ import annotations

import functools
import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import cv2
import numpy as np

from mellm import nuisances as nz
from mellm.errors import ConfigError
from mellm.labels import COARSE_OF_FINE
from mellm.register import compose

FPS = 200.0  # like CASME II and SAMM

# Per AU, displacement bumps: (landmark indices for the subject's LEFT side, same for the RIGHT,
# anatomical direction in degrees (0 = outward, 90 = up), relative amplitude, sigma in IOD,
# extra outward shift of the anchor in IOD). A bump whose two sides name the same points lies on
# the midline and is applied once; AUs in MIDLINE_AUS are never lateralised.
_B = tuple
AU_FIELDS: dict[int, list[_B]] = {
    1: [((22,), (21,), 90, 1.0, 0.13, 0.0), ((24,), (19,), 90, 0.35, 0.13, 0.0)],
    2: [((25, 26), (17, 18), 90, 1.0, 0.13, 0.0), ((24,), (19,), 90, 0.35, 0.13, 0.0)],
    4: [((22, 23), (20, 21), 225, 1.0, 0.13, 0.0), ((24,), (19,), 270, 0.5, 0.13, 0.0)],
    5: [((43, 44), (37, 38), 90, 1.0, 0.07, 0.0)],
    6: [((46, 54), (41, 48), 90, 1.0, 0.18, 0.12), ((46,), (41,), 90, 0.5, 0.07, 0.0)],
    7: [((46, 47), (40, 41), 100, 1.0, 0.07, 0.0)],
    9: [((29, 35), (29, 31), 90, 1.0, 0.10, 0.0), ((35,), (31,), 90, 0.6, 0.08, 0.05)],
    10: [((52,), (50,), 90, 1.0, 0.10, 0.0)],
    12: [((54,), (48,), 40, 1.0, 0.13, 0.0), ((46, 54), (41, 48), 90, 0.3, 0.18, 0.12)],
    14: [((54,), (48,), 180, 1.0, 0.10, 0.0)],
    15: [((54,), (48,), 280, 1.0, 0.12, 0.0)],
    17: [((57, 8), (57, 8), 90, 1.0, 0.16, 0.0), ((57,), (57,), 90, 0.5, 0.10, 0.0)],
    20: [((54,), (48,), 0, 1.0, 0.12, 0.0), ((56,), (58,), 315, 0.3, 0.10, 0.0)],
    25: [((57,), (57,), 270, 1.0, 0.10, 0.0), ((56,), (58,), 270, 0.7, 0.10, 0.0)],
    26: [((57, 8), (57, 8), 270, 1.0, 0.20, 0.0), ((57,), (57,), 270, 0.8, 0.10, 0.0)],
}
MIDLINE_AUS = {17, 25, 26}

# FACS-plausible AU combinations per fine emotion; "1" marks a unilateral AU (side drawn at random).
EMOTION_AUS: dict[str, list[list[tuple[int, bool]]]] = {
    "happiness": [[(6, False), (12, False)], [(12, False)], [(12, True)], [(6, False), (12, False), (25, False)]],
    "surprise": [[(1, False), (2, False)], [(1, False), (2, False), (5, False)], [(1, False), (2, False), (26, False)]],
    "disgust": [[(9, False)], [(9, False), (10, False)], [(4, False), (9, False)], [(10, False)], [(4, False), (7, False), (9, False)]],
    "anger": [[(4, False)], [(4, False), (7, False)], [(4, False), (17, False)]],
    "contempt": [[(12, True)], [(14, True)]],
    "sadness": [[(1, False), (4, False), (15, False)], [(15, False)], [(15, False), (17, False)]],
    "fear": [[(1, False), (2, False), (4, False), (5, False), (20, False)], [(1, False), (4, False), (20, False)], [(20, False)]],
    "repression": [[(14, False)], [(15, False)], [(17, False)], [(14, True), (17, False)], [(15, False), (17, False)]],
}


@dataclass
class SynthConfig:
    n_frames: int = 48
    width: int = 640
    height: int = 480
    face_iod: float = 90.0  # interocular distance in pixels (CASME II faces are about this size)
    drift_fraction: float = 0.5  # share of clips with head drift
    max_drift_px: float = 3.0
    max_rotation_deg: float = 0.8
    max_scale_change: float = 0.01
    noise_std: float = 1.0  # per-frame sensor noise, grey levels
    amplitude: tuple[float, float] = (0.3, 2.0)  # px at the anchor, at the apex
    n_subjects: int = 6
    fmt: str = "frames"  # frames | video | both
    # --- recording nuisances (mellm/nuisances.py); the defaults keep the clean, lossless clips ---
    identities: tuple[str, ...] = ()  # mellm.faces identity names; empty: the astronaut photo (legacy)
    iod_range: tuple[float, float] | None = None  # per-clip face size (px between the eyes); None: face_iod
    place_anywhere: bool = False  # the face anywhere in the frame (else near the centre)
    jpeg_quality: int | None = None  # frames as JPEG at this quality (CASME II / SAMM ship JPEG)
    codec: str = "ffv1"  # video codec: ffv1 (lossless) | h264 (libx264, yuv420p)
    crf: int = 18  # H.264 constant rate factor
    blink_rate: float = 0.0  # expected blinks per clip (>= 1: at least one in every clip)
    blink_during_me: float = 0.5  # share of blinking clips whose first blink falls inside the ME
    head_sway: bool = False  # non-constant head motion (a smooth oscillation on top of the drift)
    flicker: float = 0.0  # lighting flicker amplitude (relative gain); 0: steady light
    me_free_fraction: float = 0.0  # share of clips with no micro-expression at all

    def __post_init__(self):
        # Checked here, not at render time: a bad value would otherwise write labels that lie
        # (an apex before the onset) or fail after minutes of rendering.
        if self.n_frames < MIN_FRAMES:
            raise ConfigError(f"frames per clip must be at least {MIN_FRAMES} (onset, apex and offset need room), "
                              f"got {self.n_frames}")
        for name, value in (("width", self.width), ("height", self.height)):
            if not MIN_SIDE <= value <= MAX_SIDE:
                raise ConfigError(f"frame {name} must be {MIN_SIDE}..{MAX_SIDE} pixels, got {value}")
        if self.fmt not in FORMATS:
            raise ConfigError(f"unknown format {self.fmt!r}; use {', '.join(FORMATS)}")
        if not (math.isfinite(self.drift_fraction) and 0 <= self.drift_fraction <= 1):
            raise ConfigError(f"drift fraction must be between 0 and 1, got {self.drift_fraction}")
        if not (math.isfinite(self.noise_std) and self.noise_std >= 0):
            raise ConfigError(f"noise standard deviation must be a finite number >= 0, got {self.noise_std}")
        if not (math.isfinite(self.face_iod) and self.face_iod > 0) or self.n_subjects < 1:
            raise ConfigError(f"face_iod must be > 0 and n_subjects >= 1, got {self.face_iod}, {self.n_subjects}")
        if self.codec not in ("ffv1", "h264"):
            raise ValueError(f"unknown codec {self.codec!r}; use ffv1 or h264")
        if self.jpeg_quality is not None and not 1 <= self.jpeg_quality <= 100:
            raise ValueError(f"jpeg_quality {self.jpeg_quality} is not in 1..100")
        if not 0 <= self.me_free_fraction <= 1:
            raise ValueError(f"me_free_fraction {self.me_free_fraction} is not in 0..1")
        if self.iod_range is not None and not 20 <= self.iod_range[0] <= self.iod_range[1]:
            raise ValueError(f"iod_range {self.iod_range}: need 20 <= low <= high")
        for name in self.identities:
            from mellm.faces import get_identity

            get_identity(name)  # a clear error for an unknown name


MIN_FRAMES = 6  # the smallest clip sample_clip can time: onset 2 < apex <= n - 3 < offset <= n
MIN_SIDE, MAX_SIDE = 64, 4096
FORMATS = ("frames", "video", "both")


@dataclass
class Bump:
    """A Gaussian displacement bump at the apex: centre (x, y) and vector (dx, dy) in base-image pixels."""

    centre: tuple[float, float]
    vector: tuple[float, float]
    sigma: float


@dataclass
class SynthClip:
    clip_id: str
    subject: str
    n_frames: int
    fps: float
    onset_frame: int
    apex_frame: int
    offset_frame: int
    fine: str
    coarse: str
    aus: list[dict]  # {"au", "side", "amplitude_px"}
    head: dict  # {"dx", "dy", "rot_deg", "scale"[, "sway", "centre"]}: nuisances.head_pose
    noise_std: float
    base: dict  # subject rendering parameters
    bumps: list[Bump] = field(default_factory=list)
    frames_dir: str | None = None
    video: str | None = None
    # {"me_free", "jpeg_quality", "codec", "crf", "blinks", "flicker", "iod", "identity"}; {}: none
    nuisances: dict = field(default_factory=dict)

    @property
    def me_free(self) -> bool:
        return bool(self.nuisances.get("me_free"))

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> SynthClip:
        return cls(**{**d, "bumps": [Bump(tuple(b["centre"]), tuple(b["vector"]), b["sigma"]) for b in d["bumps"]]})


# --- the subject's face ----------------------------------------------------------------------


@functools.lru_cache(maxsize=16)
def _base_face(subject_index: int, width: int, height: int, iod: float) -> tuple[np.ndarray, np.ndarray]:
    """A textured face image for one synthetic subject and its 68 landmarks (found once, by dlib)."""
    from skimage import data

    from mellm.face import DlibFace

    rng = np.random.default_rng(1000 + subject_index)
    photo = data.astronaut()
    if subject_index % 2 == 1:
        photo = photo[:, ::-1].copy()
    face = DlibFace().detect(photo)
    right, left = face.eye_centres()
    scale = iod / float(np.linalg.norm(left - right)) * rng.uniform(0.93, 1.07)
    mid = (left + right) / 2
    target = np.array([width / 2 + rng.uniform(-0.08, 0.08) * width, height * 0.4 + rng.uniform(-0.04, 0.04) * height])
    m = np.array([[scale, 0, target[0] - scale * mid[0]], [0, scale, target[1] - scale * mid[1]]])
    img = _on_backdrop(photo.astype(np.float32), m, width, height)
    img = img * rng.uniform(0.85, 1.1) + rng.uniform(-10, 10)
    # Upscaling leaves skin smooth; a fixed fine texture (pores) that moves with the face keeps the
    # motion observable, as it is in real high-speed ME footage.
    texture = cv2.GaussianBlur(rng.normal(0, 4.0, (height, width)).astype(np.float32), (0, 0), 0.8)
    img = np.clip(img + texture[..., None], 0, 255)
    landmarks = (face.landmarks @ m[:, :2].T + m[:, 2]).astype(np.float32)
    return img, landmarks


@functools.lru_cache(maxsize=8)
def _texture(seed: int, width: int, height: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return cv2.GaussianBlur(rng.normal(0, 4.0, (height, width)).astype(np.float32), (0, 0), 0.8)


def _on_backdrop(photo: np.ndarray, m: np.ndarray, width: int, height: int) -> np.ndarray:
    """`photo` warped by `m` into a width x height frame; outside it, a defocused backdrop made
    from the photo's edge colours. A small face leaves most of the frame outside the photo: a
    mirrored border filled it with copies of the face (dlib then boxed a copy, which has no ME, or
    a box between two: held-out small-face F1 0.48, apex +-2 0.38) and a replicated one with streaks."""
    img = cv2.warpAffine(photo, m, (width, height), flags=cv2.INTER_CUBIC, borderMode=cv2.BORDER_REPLICATE)
    inside = cv2.warpAffine(np.ones(photo.shape[:2], np.float32), m, (width, height), flags=cv2.INTER_LINEAR)
    inside = cv2.GaussianBlur(cv2.erode(inside, np.ones((9, 9), np.uint8)), (0, 0), 3.0)[..., None]
    backdrop = cv2.GaussianBlur(img, (0, 0), 25.0)
    return inside * img + (1 - inside) * backdrop


def identity_base(identity: str, width: int, height: int, iod: float, centre: tuple[float, float]) -> tuple[np.ndarray, np.ndarray]:
    """An identity's face (mellm.faces) scaled to `iod` px between the eyes, the eyes' midpoint
    at `centre`, with the same fine skin texture as `_base_face`; and its 68 landmarks."""
    from mellm.faces import get_identity, identity_face

    idt = get_identity(identity)
    photo, lm = identity_face(idt)
    right, left = lm[36:42].mean(0), lm[42:48].mean(0)
    scale = iod / float(np.linalg.norm(left - right))
    mid = (left + right) / 2
    m = np.array([[scale, 0, centre[0] - scale * mid[0]], [0, scale, centre[1] - scale * mid[1]]])
    img = _on_backdrop(photo, m, width, height)
    seed = sum(map(ord, identity)) * 7919 + width
    img = np.clip(img + _texture(seed, width, height)[..., None], 0, 255).astype(np.float32)
    return img, (lm @ m[:, :2].T + m[:, 2]).astype(np.float32)


def clip_base(clip: SynthClip) -> tuple[np.ndarray, np.ndarray]:
    b = clip.base
    if "identity" in b:
        return identity_base(b["identity"], b["width"], b["height"], b["iod"], tuple(b["centre"]))
    return _base_face(b["subject_index"], b["width"], b["height"], b["iod"])


# --- displacement fields ----------------------------------------------------------------------


def bumps_for(aus: list[dict], landmarks: np.ndarray) -> list[Bump]:
    iod = float(np.linalg.norm(landmarks[36:42].mean(0) - landmarks[42:48].mean(0)))
    bumps = []
    for a in aus:
        lateral = ["L", "R"] if a["side"] == "both" else [a["side"]]
        for left_idx, right_idx, angle, rel, sigma, out in AU_FIELDS[a["au"]]:
            on_midline = left_idx == right_idx
            sides = ["L"] if on_midline else (["L", "R"] if a["au"] in MIDLINE_AUS else lateral)
            for side in sides:
                idx = left_idx if side == "L" else right_idx
                sign = 1.0 if side == "L" else -1.0  # subject's left = image right
                centre = landmarks[list(idx)].mean(0) + np.array([sign * out * iod, 0.0])
                rad = np.radians(angle)
                vec = rel * a["amplitude_px"] * np.array([0.0 if on_midline else sign * np.cos(rad), -np.sin(rad)])
                bumps.append(Bump((float(centre[0]), float(centre[1])), (float(vec[0]), float(vec[1])), sigma * iod))
    return bumps


def displacement_field(bumps: list[Bump], width: int, height: int) -> np.ndarray:
    """Apex displacement (H, W, 2) in base-image pixels: the sum of the bumps."""
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    field_ = np.zeros((height, width, 2), np.float32)
    for b in bumps:
        g = np.exp(-((xs - b.centre[0]) ** 2 + (ys - b.centre[1]) ** 2) / (2 * b.sigma**2))
        field_[..., 0] += b.vector[0] * g
        field_[..., 1] += b.vector[1] * g
    return field_


def activation(frame: int, onset: int, apex: int, offset: int) -> float:
    """Raised-cosine timing: 0 before onset, 1 at the apex, 0 again at the offset."""
    if frame <= onset or frame >= offset:
        return 0.0
    if frame <= apex:
        return 0.5 * (1 - np.cos(np.pi * (frame - onset) / (apex - onset)))
    return 0.5 * (1 + np.cos(np.pi * (frame - apex) / (offset - apex)))


def head_matrix(clip: SynthClip, frame: int, width: int, height: int) -> np.ndarray:
    """Base image -> frame similarity of the head pose at `frame` (nuisances.head_pose: linear
    drift from frame 1, plus a sway when the clip has one), about the face (or the image) centre."""
    t = (frame - 1) / max(1, clip.n_frames - 1)
    centre = clip.head.get("centre", (width / 2, height / 2))
    return nz.pose_matrix(nz.head_pose(t, clip.head), centre)


def render_frame(clip: SynthClip, frame: int, base: np.ndarray, field_: np.ndarray, rng: np.random.Generator,
                 landmarks: np.ndarray | None = None) -> np.ndarray:
    h, w = base.shape[:2]
    a = np.float32(activation(frame, clip.onset_frame, clip.apex_frame, clip.offset_frame))
    closure = nz.blink_closure(frame, clip.nuisances.get("blinks", [])) if landmarks is not None else 0.0
    if closure > 0:
        base = nz.eyelid_cover(base, landmarks, closure)
        field_, a = a * field_ + nz.blink_field(landmarks, closure, w, h), np.float32(1.0)
    inv = cv2.invertAffineTransform(head_matrix(clip, frame, w, h))
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    # y = head^-1(x): where the output pixel sits on the (expressive) face
    yx = (inv[0, 0] * xs + inv[0, 1] * ys + inv[0, 2]).astype(np.float32)
    yy = (inv[1, 0] * xs + inv[1, 1] * ys + inv[1, 2]).astype(np.float32)
    # Solve z + a*D(z) = y for the base-image point z (fixed point; D is smooth and small).
    zx, zy = yx.copy(), yy.copy()
    if a > 0:
        for _ in range(4):
            d = cv2.remap(field_, zx, zy, cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)
            zx, zy = yx - a * d[..., 0], yy - a * d[..., 1]
    img = cv2.remap(base, zx, zy, cv2.INTER_CUBIC, borderMode=cv2.BORDER_REFLECT)
    flicker = clip.nuisances.get("flicker")
    if flicker:
        img = nz.apply_flicker(img, *nz.flicker_gain(frame, clip.fps, flicker))
    if clip.noise_std > 0:
        img = img + rng.normal(0, clip.noise_std, img.shape).astype(np.float32)
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def exact_flow(clip: SynthClip, to_crop: np.ndarray, size: int, width: int, height: int) -> np.ndarray:
    """The exact facial (head motion excluded) onset -> apex flow in a crop's pixels.

    to_crop: the 2x3 matrix the pipeline used to map the onset frame into its crop."""
    field_ = displacement_field(clip.bumps, width, height)
    onset_pose = head_matrix(clip, clip.onset_frame, width, height)
    to_crop_from_base = compose(to_crop, onset_pose)
    crop_to_base = cv2.invertAffineTransform(to_crop_from_base)
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float32)
    bx = (crop_to_base[0, 0] * xs + crop_to_base[0, 1] * ys + crop_to_base[0, 2]).astype(np.float32)
    by = (crop_to_base[1, 0] * xs + crop_to_base[1, 1] * ys + crop_to_base[1, 2]).astype(np.float32)
    d = cv2.remap(field_, bx, by, cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)
    return (d @ to_crop_from_base[:, :2].T).astype(np.float32)


# --- scoring perception against the truth ---------------------------------------------------

RECOVERABLE_PX = 0.5  # planted AUs at least this strong must be found; weaker ones count neither way


def au_recovery(clip: SynthClip, found: set[int], min_px: float = RECOVERABLE_PX) -> tuple[int, int, int]:
    """(true positives, false positives, false negatives) of the AUs `found` against those planted.
    Finding a planted AU weaker than `min_px` is not an error, nor is missing it. On an ME-free
    clip every AU found is a false positive."""
    truth = {a["au"] for a in clip.aus if a["amplitude_px"] >= min_px}
    weak = {a["au"] for a in clip.aus if a["amplitude_px"] < min_px}
    found = set(found) - weak
    return len(truth & found), len(found - truth), len(truth - found)


def flow_error(clip: SynthClip, flow: np.ndarray, to_crop: np.ndarray, landmarks: np.ndarray) -> tuple[float, float]:
    """(end-point error of `flow`, that of zero flow), in crop pixels, over the face pixels the
    expression moves by more than 0.2 px. flow: head motion removed, in the canonical crop."""
    from mellm.regions import face_mask
    from mellm.register import IOD_FRACTION

    size = flow.shape[0]
    truth = exact_flow(clip, to_crop, size, clip.base["width"], clip.base["height"])
    moving = np.linalg.norm(truth, axis=-1)
    mask = face_mask(landmarks, size, IOD_FRACTION * size) & (moving > 0.2)
    return float(np.linalg.norm(flow - truth, axis=-1)[mask].mean()), float(moving[mask].mean())


# --- corpus -------------------------------------------------------------------------------------


FINE_OF_COARSE = {c: [f for f in EMOTION_AUS if COARSE_OF_FINE[f] == c] for c in ("negative", "positive", "surprise")}


def sample_clip(index: int, rng: np.random.Generator, cfg: SynthConfig) -> SynthClip:
    # Coarse classes in turn, so any corpus is balanced over them; the fine class is drawn within.
    coarse = list(FINE_OF_COARSE)[index % 3]
    fine = str(rng.choice(FINE_OF_COARSE[coarse]))
    combo = EMOTION_AUS[fine][rng.integers(len(EMOTION_AUS[fine]))]
    side_of_unilateral = str(rng.choice(["L", "R"]))
    aus = [
        {"au": au, "side": side_of_unilateral if uni else "both",
         "amplitude_px": round(float(rng.uniform(*cfg.amplitude)), 3)}
        for au, uni in combo
    ]
    n = cfg.n_frames
    onset = int(rng.integers(2, max(3, n // 8)))
    apex = min(n - 3, onset + int(rng.integers(max(4, n // 5), max(5, n // 2))))
    offset = min(n, apex + int(rng.integers(max(3, n // 6), max(4, n // 3))))
    drifting = rng.random() < cfg.drift_fraction
    d = cfg.max_drift_px if drifting else 0.0
    head = {
        "dx": float(rng.uniform(-d, d)), "dy": float(rng.uniform(-d, d)),
        "rot_deg": float(rng.uniform(-cfg.max_rotation_deg, cfg.max_rotation_deg)) if drifting else 0.0,
        "scale": float(1 + rng.uniform(-cfg.max_scale_change, cfg.max_scale_change)) if drifting else 1.0,
    }
    if not cfg.identities:
        subject = int(rng.integers(cfg.n_subjects))
        subject_name = f"s{subject + 1:02d}"
        base = {"subject_index": subject, "width": cfg.width, "height": cfg.height, "iod": cfg.face_iod}
    else:
        subject_name = cfg.identities[int(rng.integers(len(cfg.identities)))]
        iod = float(rng.uniform(*cfg.iod_range)) if cfg.iod_range else cfg.face_iod
        w, h = cfg.width, cfg.height
        if cfg.place_anywhere:  # eyes' midpoint anywhere the whole face (forehead to chin) still fits
            centre = [float(rng.uniform(1.3 * iod, max(1.3 * iod + 1, w - 1.3 * iod))),
                      float(rng.uniform(1.2 * iod, max(1.2 * iod + 1, h - 2.1 * iod)))]
        else:
            centre = [float(w / 2 + rng.uniform(-0.08, 0.08) * w), float(h * 0.4 + rng.uniform(-0.04, 0.04) * h)]
        base = {"identity": subject_name, "width": w, "height": h, "iod": round(iod, 2), "centre": centre}
        # A head turns and scales about itself, not about the image centre.
        head["centre"] = [centre[0], centre[1] + 0.5 * iod]
    if cfg.head_sway and drifting:
        head = {**nz.sample_head(rng, cfg.max_drift_px, cfg.max_rotation_deg, cfg.max_scale_change, sway=True),
                **({"centre": head["centre"]} if "centre" in head else {})}
    nuisances: dict = {}
    if cfg.me_free_fraction > 0 and rng.random() < cfg.me_free_fraction:
        aus, fine, coarse = [], "none", "none"
        nuisances["me_free"] = True
    if cfg.blink_rate > 0:
        nuisances["blinks"] = nz.sample_blinks(rng, n, FPS, cfg.blink_rate, during=(onset, offset),
                                            during_share=cfg.blink_during_me)
    if cfg.flicker > 0:
        nuisances["flicker"] = nz.sample_flicker(rng, cfg.flicker)
    if cfg.jpeg_quality:
        nuisances["jpeg_quality"] = cfg.jpeg_quality
    if cfg.fmt in ("video", "both") and cfg.codec != "ffv1":
        nuisances["codec"], nuisances["crf"] = cfg.codec, cfg.crf
    return SynthClip(
        clip_id=f"synth_{index:04d}", subject=subject_name, n_frames=n, fps=FPS,
        onset_frame=onset, apex_frame=apex, offset_frame=offset, fine=fine,
        coarse=coarse if fine == "none" else COARSE_OF_FINE[fine],
        aus=aus, head=head, noise_std=cfg.noise_std, base=base, nuisances=nuisances,
    )


def render_clip(clip: SynthClip, out_dir: Path, fmt: str, seed: int) -> SynthClip:
    """Render a sampled clip to disk (PNG or JPEG frames and/or FFV1 or H.264 video) and fill in
    its bumps and paths."""
    b = clip.base
    base, landmarks = clip_base(clip)
    clip.bumps = bumps_for(clip.aus, landmarks)
    field_ = displacement_field(clip.bumps, b["width"], b["height"])
    rng = np.random.default_rng(seed)
    frames = (render_frame(clip, f, base, field_, rng, landmarks) for f in range(1, clip.n_frames + 1))
    writers = []
    if fmt in ("frames", "both"):
        folder = out_dir / "frames" / clip.clip_id
        folder.mkdir(parents=True, exist_ok=True)
        clip.frames_dir = str(folder.relative_to(out_dir))
        quality = clip.nuisances.get("jpeg_quality")
        # JPEG frames (jpeg_quality) are the only lossy step of a frame folder, as in CASME II / SAMM.
        suffix, params = (".jpg", [cv2.IMWRITE_JPEG_QUALITY, int(quality)]) if quality else (".png", [cv2.IMWRITE_PNG_COMPRESSION, 1])
        writers.append(lambda i, f: cv2.imwrite(str(folder / f"img{i}{suffix}"), cv2.cvtColor(f, cv2.COLOR_RGB2BGR), params))
    video = None
    if fmt in ("video", "both"):
        h264 = clip.nuisances.get("codec") == "h264"
        path = out_dir / "videos" / f"{clip.clip_id}.{'mp4' if h264 else 'mkv'}"
        path.parent.mkdir(parents=True, exist_ok=True)
        clip.video = str(path.relative_to(out_dir))
        video = (nz.H264Writer(path, b["width"], b["height"], clip.fps, crf=clip.nuisances.get("crf", 18)) if h264
                 else _FFV1Writer(path, b["width"], b["height"], clip.fps))
        writers.append(lambda i, f: video.write(f))
    if not writers:
        raise ValueError(f"unknown format {fmt!r}; use frames, video or both")
    for i, frame in enumerate(frames, start=1):
        for w in writers:
            w(i, frame)
    if video:
        video.close()
    return clip


class _FFV1Writer:
    """Lossless FFV1 in Matroska via PyAV (OpenCV's wheel has no lossless encoder)."""

    def __init__(self, path: Path, width: int, height: int, fps: float):
        import av

        self.container = av.open(str(path), mode="w")
        self.stream = self.container.add_stream("ffv1", rate=int(round(fps)))
        self.stream.width, self.stream.height = width, height
        self.stream.pix_fmt = "bgr0"

    def write(self, rgb: np.ndarray) -> None:
        import av

        frame = av.VideoFrame.from_ndarray(rgb, format="rgb24").reformat(format="bgr0")
        for packet in self.stream.encode(frame):
            self.container.mux(packet)

    def close(self) -> None:
        for packet in self.stream.encode():
            self.container.mux(packet)
        self.container.close()


def generate_corpus(out: str | Path, n: int, seed: int = 0, config: SynthConfig | None = None, progress: bool = False) -> list[SynthClip]:
    """Write n clips and labels.jsonl under `out`. Same seed, same clips."""
    from tqdm import tqdm

    cfg = config or SynthConfig()
    out = Path(out)
    if n < 1:
        raise ConfigError(f"number of clips must be at least 1, got {n}")
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} is a file, not a folder")
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    clips = [sample_clip(i, rng, cfg) for i in range(n)]
    for i, clip in enumerate(tqdm(clips, desc="synth", unit="clip", disable=not progress)):
        render_clip(clip, out, cfg.fmt, seed=seed * 100_003 + i)
    with open(out / "labels.jsonl", "w") as f:
        for clip in clips:
            f.write(json.dumps(clip.to_dict()) + "\n")
    (out / "synth_config.json").write_text(json.dumps({"seed": seed, "n": n, **asdict(cfg)}, indent=2))
    return clips


def load_labels(root: str | Path) -> list[SynthClip]:
    """The clips of labels.jsonl; a line that is not a clip's labels is an error naming file and line."""
    from mellm.jsonl import InputFileError, iter_jsonl

    path = Path(root) / "labels.jsonl"
    issues: list = []
    clips = []
    for number, obj in iter_jsonl(path, issues):
        try:
            clips.append(SynthClip.from_dict(obj))
        except (TypeError, KeyError, ValueError) as e:
            issues.append(f"{path}:{number}: not a synthetic clip's labels ({type(e).__name__}: {e})")
    if issues:
        raise InputFileError(f"{issues[0]}" + (f" (and {len(issues) - 1} more bad lines)" if len(issues) > 1 else ""))
    return clips
