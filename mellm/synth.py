"""Synthetic micro-expression clips with known truth (`mellm synth`).

A real face photo that ships with scikit-image (the astronaut, public domain) is warped by smooth,
landmark-anchored displacement fields, one per Action Unit, following FACS motion descriptions.
Each clip has raised-cosine onset -> apex -> offset timing, optional head drift (translation,
rotation, scale) and sensor noise, and is written losslessly (PNG frames and/or FFV1 video):
lossy codecs destroy sub-pixel motion. `labels.jsonl` records, per clip, the AUs with sides and
amplitudes, onset/apex/offset, fine and coarse emotion, and the displacement bumps themselves, so
the exact flow field can be recomputed (`exact_flow`).

The displacement fields here are written independently of the AU detector's signatures
(mellm/aus.py); both follow FACS's descriptions of how each AU moves the face.
"""

from __future__ import annotations

import functools
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import cv2
import numpy as np

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
    head: dict  # {"dx", "dy", "rot_deg", "scale"}: head pose change from frame 1 to the last frame
    noise_std: float
    base: dict  # subject rendering parameters
    bumps: list[Bump] = field(default_factory=list)
    frames_dir: str | None = None
    video: str | None = None

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
    img = cv2.warpAffine(photo, m, (width, height), flags=cv2.INTER_CUBIC, borderMode=cv2.BORDER_REFLECT)
    img = img.astype(np.float32) * rng.uniform(0.85, 1.1) + rng.uniform(-10, 10)
    # Upscaling leaves skin smooth; a fixed fine texture (pores) that moves with the face keeps the
    # motion observable, as it is in real high-speed ME footage.
    texture = cv2.GaussianBlur(rng.normal(0, 4.0, (height, width)).astype(np.float32), (0, 0), 0.8)
    img = np.clip(img + texture[..., None], 0, 255)
    landmarks = (face.landmarks @ m[:, :2].T + m[:, 2]).astype(np.float32)
    return img, landmarks


# --- displacement fields ----------------------------------------------------------------------


def _bumps_for(aus: list[dict], landmarks: np.ndarray) -> list[Bump]:
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
    """Base image -> frame similarity of the head pose at `frame` (linear drift from frame 1)."""
    t = (frame - 1) / max(1, clip.n_frames - 1)
    h = clip.head
    angle, scale = np.radians(h["rot_deg"] * t), 1 + (h["scale"] - 1) * t
    c = np.array([width / 2, height / 2])
    rot = scale * np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    shift = c - rot @ c + np.array([h["dx"], h["dy"]]) * t
    return np.hstack([rot, shift[:, None]])


def render_frame(clip: SynthClip, frame: int, base: np.ndarray, field_: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    h, w = base.shape[:2]
    a = np.float32(activation(frame, clip.onset_frame, clip.apex_frame, clip.offset_frame))
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


def au_recovery(clip: SynthClip, found: set[int]) -> tuple[int, int, int]:
    """(true positives, false positives, false negatives) of the AUs `found` against those planted.
    Finding a planted AU weaker than RECOVERABLE_PX is not an error, nor is missing it."""
    truth = {a["au"] for a in clip.aus if a["amplitude_px"] >= RECOVERABLE_PX}
    weak = {a["au"] for a in clip.aus if a["amplitude_px"] < RECOVERABLE_PX}
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
    subject = int(rng.integers(cfg.n_subjects))
    return SynthClip(
        clip_id=f"synth_{index:04d}", subject=f"s{subject + 1:02d}", n_frames=n, fps=FPS,
        onset_frame=onset, apex_frame=apex, offset_frame=offset, fine=fine, coarse=COARSE_OF_FINE[fine],
        aus=aus, head=head, noise_std=cfg.noise_std,
        base={"subject_index": subject, "width": cfg.width, "height": cfg.height, "iod": cfg.face_iod},
    )


def render_clip(clip: SynthClip, out_dir: Path, fmt: str, seed: int) -> SynthClip:
    """Render a sampled clip to disk (PNG frames and/or FFV1 video) and fill in its bumps and paths."""
    b = clip.base
    base, landmarks = _base_face(b["subject_index"], b["width"], b["height"], b["iod"])
    clip.bumps = _bumps_for(clip.aus, landmarks)
    field_ = displacement_field(clip.bumps, b["width"], b["height"])
    rng = np.random.default_rng(seed)
    frames = (render_frame(clip, f, base, field_, rng) for f in range(1, clip.n_frames + 1))
    writers = []
    if fmt in ("frames", "both"):
        folder = out_dir / "frames" / clip.clip_id
        folder.mkdir(parents=True, exist_ok=True)
        clip.frames_dir = str(folder.relative_to(out_dir))
        writers.append(lambda i, f: cv2.imwrite(str(folder / f"img{i}.png"), cv2.cvtColor(f, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_PNG_COMPRESSION, 1]))
    video = None
    if fmt in ("video", "both"):
        path = out_dir / "videos" / f"{clip.clip_id}.mkv"
        path.parent.mkdir(parents=True, exist_ok=True)
        clip.video = str(path.relative_to(out_dir))
        video = _FFV1Writer(path, b["width"], b["height"], clip.fps)
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
    with open(Path(root) / "labels.jsonl") as f:
        return [SynthClip.from_dict(json.loads(line)) for line in f if line.strip()]
