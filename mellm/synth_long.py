"""Synthetic long videos with known truth (`mellm synth --long`): minutes of one face with several
expression events and the distractors real recordings have.

Events: micro-expressions (onset -> offset <= 0.5 s, apex amplitude about a pixel) and
macro-expressions (0.8-3 s, several pixels), each an FACS-plausible AU combination of one emotion
(mellm.synth's fields and timing). Distractors, with `distractors=True`: eye blinks, head turns
(a quick move away and back) and slow drift, talking (jaw and lips oscillating at 3-5 Hz for a
few seconds), lighting changes (gain ramps), sensor noise, and lossy H.264 (`codec="h264"`).
Events never overlap each other; distractors are placed away from events (`margin_s`) so that
the truth stays unambiguous, except drift and noise, which are everywhere.

Written per video: `videos/<id>.mkv` (FFV1, lossless) or `.mp4` (H.264); per corpus:
`labels.jsonl` (one line per video: events with onset/apex/offset/type/AUs/emotion, distractors
with their frames), `intervals.jsonl` (the truth intervals, as mellm.eval.spotting reads them) and
`lvqa.jsonl` (the six ME-LVQA questions of each video, with reference answers, MEGC 2026 rows).
Frames are rendered one at a time and streamed to the encoder: memory does not grow with length.
"""

from __future__ import annotations

import functools
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import cv2
import numpy as np

from mellm.labels import COARSE_OF_FINE, format_au_list
from mellm.nuisances import H264Writer, blink_field, eyelid_cover
from mellm.synth import EMOTION_AUS, _FFV1Writer, activation, bumps_for, displacement_field, identity_base

MICRO_MAX_S = 0.5  # MEGC: a micro-expression lasts at most half a second


@dataclass
class LongConfig:
    seconds: float = 60.0
    fps: float = 30.0
    width: int = 640
    height: int = 480
    face_iod: float = 90.0
    identity: str = "astronaut-0"  # mellm.faces: TUNING for tuning, HELD_OUT for reported figures
    events_per_minute: float = 8.0
    micro_share: float = 0.5
    micro_seconds: tuple[float, float] = (0.25, 0.5)
    macro_seconds: tuple[float, float] = (0.8, 2.5)
    micro_amplitude: tuple[float, float] = (1.0, 2.0)  # px at the apex, frame pixels
    macro_amplitude: tuple[float, float] = (3.0, 5.0)
    no_events: bool = False  # only distractors (false-positive tests)
    distractors: bool = False
    blinks_per_minute: float = 15.0
    turns_per_minute: float = 3.0
    turn_px: float = 12.0
    turn_deg: float = 3.0
    drift_px: float = 6.0  # slow drift over the whole video
    talking_per_minute: float = 1.5
    lighting_per_minute: float = 2.0
    noise_std: float = 1.0
    codec: str = "ffv1"  # ffv1 (lossless) | h264
    crf: int = 20
    margin_s: float = 0.6  # free time around each event
    lost_seconds: float = 0.0  # the face leaves the picture for this long, mid-video (no events then)

    @property
    def n_frames(self) -> int:
        return max(2, int(round(self.seconds * self.fps)))


@dataclass
class LongEvent:
    onset: int
    apex: int
    offset: int
    type: str  # micro | macro
    fine: str
    coarse: str
    aus: list[dict]  # {"au", "side", "amplitude_px"}


@dataclass
class LongVideo:
    video_id: str
    subject: str
    identity: str
    fps: float
    n_frames: int
    width: int
    height: int
    events: list[LongEvent]
    distractors: list[dict]  # {"kind": blink|turn|talking|lighting|drift, "start", "end", ...params}
    noise_std: float
    codec: str
    path: str = ""
    placement: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> LongVideo:
        return cls(**{**d, "events": [LongEvent(**e) for e in d["events"]]})


# --- the face --------------------------------------------------------------------------------


@functools.lru_cache(maxsize=8)
def placed_face(identity: str, width: int, height: int, iod: float) -> tuple[np.ndarray, np.ndarray]:
    """An identity's face (float32 RGB, mellm.synth's skin texture) at `iod`, centred, and its 68 landmarks."""
    return identity_base(identity, width, height, iod, (width / 2, height * 0.42))


# --- sampling the timeline -------------------------------------------------------------------


def _free(busy: list[tuple[int, int]], start: int, end: int) -> bool:
    return all(end < a or start > b for a, b in busy)


def _place(rng, busy, n_frames, length, margin, tries=200) -> int | None:
    for _ in range(tries):
        start = int(rng.integers(2, max(3, n_frames - length - 1)))
        if _free(busy, start - margin, start + length + margin):
            return start
    return None


def sample_video(index: int, cfg: LongConfig, rng: np.random.Generator, prefix: str = "lv") -> LongVideo:
    fps, n = cfg.fps, cfg.n_frames
    margin = int(round(cfg.margin_s * fps))
    busy: list[tuple[int, int]] = []
    distractors: list[dict] = []
    if cfg.lost_seconds > 0:
        length = min(n - 2, int(round(cfg.lost_seconds * fps)))
        start = max(2, (n - length) // 2)
        distractors.append({"kind": "lost", "start": start, "end": start + length - 1})
        busy.append((start, start + length - 1))
    events: list[LongEvent] = []
    n_events = 0 if cfg.no_events else max(1, int(round(cfg.events_per_minute * cfg.seconds / 60)))
    for i in range(n_events):
        micro = rng.random() < cfg.micro_share if i > 1 else i == 0  # at least one of each when >= 2
        secs = rng.uniform(*(cfg.micro_seconds if micro else cfg.macro_seconds))
        length = max(4, int(round(secs * fps)))
        if micro and (length - 1) / fps > MICRO_MAX_S:
            length = int(MICRO_MAX_S * fps)
        start = _place(rng, busy, n, length, margin)
        if start is None:
            continue
        fine = str(rng.choice(list(EMOTION_AUS)))
        combo = EMOTION_AUS[fine][rng.integers(len(EMOTION_AUS[fine]))]
        side = str(rng.choice(["L", "R"]))
        amp = cfg.micro_amplitude if micro else cfg.macro_amplitude
        aus = [{"au": au, "side": side if uni else "both", "amplitude_px": round(float(rng.uniform(*amp)), 3)}
               for au, uni in combo]
        offset = start + length - 1
        apex = start + max(1, int(round((length - 1) * rng.uniform(0.35, 0.55))))
        events.append(LongEvent(start, apex, offset, "micro" if (offset - start) / fps <= MICRO_MAX_S else "macro",
                                fine, COARSE_OF_FINE[fine], aus))
        busy.append((start, offset))
    events.sort(key=lambda e: e.onset)
    if cfg.distractors:
        distractors.append({"kind": "drift", "start": 1, "end": n,
                            "dx": float(rng.uniform(-cfg.drift_px, cfg.drift_px)), "dy": float(rng.uniform(-cfg.drift_px, cfg.drift_px) / 2),
                            "rot_deg": float(rng.uniform(-1, 1))})
        small_margin = int(round(0.3 * fps))
        # Longest first, so that the short ones fill the gaps the long ones leave.
        kinds = (("talking", cfg.talking_per_minute, (1.5, 3.5)), ("turn", cfg.turns_per_minute, (0.8, 1.6)),
                 ("lighting", cfg.lighting_per_minute, (0.2, 0.5)), ("blink", cfg.blinks_per_minute, (0.15, 0.3)))
        for kind, rate, secs in kinds:
            for _ in range(int(rng.poisson(rate * cfg.seconds / 60))):
                length = max(3, int(round(rng.uniform(*secs) * fps)))
                start = _place(rng, busy, n, length, small_margin)
                if start is None:
                    continue
                d = {"kind": kind, "start": start, "end": start + length - 1}
                if kind == "blink":
                    d["depth"] = float(rng.uniform(0.7, 1.0))
                elif kind == "turn":
                    d.update(dx=float(rng.choice([-1, 1]) * rng.uniform(0.5, 1) * cfg.turn_px),
                             dy=float(rng.uniform(-0.3, 0.3) * cfg.turn_px),
                             rot_deg=float(rng.uniform(-cfg.turn_deg, cfg.turn_deg)))
                elif kind == "talking":
                    d.update(hz=float(rng.uniform(3, 5)), amplitude_px=float(rng.uniform(2.0, 4.0)))
                else:
                    d.update(gain=float(rng.choice([-1, 1]) * rng.uniform(0.05, 0.12)))
                distractors.append(d)
                busy.append((d["start"], d["end"]))
    distractors.sort(key=lambda d: d["start"])
    return LongVideo(video_id=f"{prefix}_{index:03d}", subject=f"s{index + 1:02d}", identity=cfg.identity, fps=fps,
                     n_frames=n, width=cfg.width, height=cfg.height, events=events, distractors=distractors,
                     noise_std=cfg.noise_std, codec=cfg.codec)


# --- rendering -------------------------------------------------------------------------------


def _bump01(frame: int, start: int, end: int) -> float:
    """Smooth 0 -> 1 -> 0 over [start, end]."""
    if frame <= start or frame >= end:
        return 0.0
    return float(np.sin(np.pi * (frame - start) / (end - start)) ** 2)


def _ramp01(frame: int, start: int, end: int) -> float:
    if frame <= start:
        return 0.0
    if frame >= end:
        return 1.0
    return float(0.5 * (1 - np.cos(np.pi * (frame - start) / (end - start))))


def _talk_field(lm: np.ndarray, w: int, h: int) -> np.ndarray:
    """Per pixel of jaw opening: AU25/26's fields (lower lip and chin down), 1 px at the anchor."""
    aus = [{"au": 26, "side": "both", "amplitude_px": 1.0}, {"au": 25, "side": "both", "amplitude_px": 0.6}]
    return displacement_field(bumps_for(aus, lm), w, h)


def _pose(video: LongVideo, frame: int) -> np.ndarray:
    """Base image -> frame similarity at `frame`: drift plus turns (a move away and back)."""
    dx = dy = rot = 0.0
    scale = 1.0
    for d in video.distractors:
        if d["kind"] == "drift":
            t = (frame - 1) / max(1, video.n_frames - 1)
            dx, dy, rot = dx + d["dx"] * t, dy + d["dy"] * t, rot + d["rot_deg"] * t
        elif d["kind"] == "turn":
            a = _bump01(frame, d["start"], d["end"])
            dx, dy, rot, scale = dx + d["dx"] * a, dy + d["dy"] * a, rot + d["rot_deg"] * a, scale * (1 + 0.02 * a)
    c = np.array([video.width / 2, video.height * 0.45])
    r = np.radians(rot)
    m = scale * np.array([[np.cos(r), -np.sin(r)], [np.sin(r), np.cos(r)]])
    return np.hstack([m, (c - m @ c + np.array([dx, dy]))[:, None]])


class _Renderer:
    def __init__(self, video: LongVideo):
        self.v = video
        w, h = video.width, video.height
        self.base, self.lm = placed_face(video.identity, w, h, 90.0 if not video.placement else video.placement["iod"])
        self.event_fields = [displacement_field(bumps_for(e.aus, self.lm), w, h) for e in video.events]
        kinds = {d["kind"] for d in video.distractors}
        self.talk = _talk_field(self.lm, w, h) if "talking" in kinds else None
        self.ys, self.xs = np.mgrid[0:h, 0:w].astype(np.float32)
        self.noise = None

    def frame(self, n: int, rng: np.random.Generator) -> np.ndarray:
        v = self.v
        field_ = None

        def add(f, a):
            nonlocal field_
            if a > 0:
                field_ = f * np.float32(a) if field_ is None else field_ + f * np.float32(a)

        for e, f in zip(v.events, self.event_fields):
            if e.onset < n < e.offset:
                add(f, activation(n, e.onset, e.apex, e.offset))
        gain, closure = 1.0, 0.0
        for d in v.distractors:
            k = d["kind"]
            if k == "lost" and d["start"] <= n <= d["end"]:  # the subject walked away: an empty, lit wall
                img = np.full((v.height, v.width, 3), 120, np.float32) + rng.normal(0, 2, (v.height, v.width, 1))
                return np.clip(img, 0, 255).astype(np.uint8)
            if k == "blink" and d["start"] < n < d["end"]:
                closure = max(closure, d["depth"] * _bump01(n, d["start"], d["end"]))
            elif k == "talking" and d["start"] < n < d["end"]:
                phase = 2 * np.pi * d["hz"] * (n - d["start"]) / v.fps
                envelope = _bump01(n, d["start"], d["end"]) ** 0.25
                add(self.talk, d["amplitude_px"] * envelope * 0.5 * (1 - np.cos(phase)))
            elif k == "lighting":
                gain += d["gain"] * _ramp01(n, d["start"], d["end"])
        if closure > 0:  # mellm.nuisances: the lid's skin moves down, then the lid covers the eye
            add(blink_field(self.lm, closure, v.width, v.height), 1.0)
        pose = _pose(v, n)
        if field_ is None:
            img = cv2.warpAffine(self.base, pose, (v.width, v.height), flags=cv2.INTER_CUBIC, borderMode=cv2.BORDER_REFLECT)
        else:
            inv = cv2.invertAffineTransform(pose).astype(np.float32)
            yx = inv[0, 0] * self.xs + inv[0, 1] * self.ys + inv[0, 2]
            yy = inv[1, 0] * self.xs + inv[1, 1] * self.ys + inv[1, 2]
            zx, zy = yx, yy
            for _ in range(3):  # z + D(z) = y, by fixed-point iteration (D is smooth and small)
                d = cv2.remap(field_, zx, zy, cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)
                zx, zy = yx - d[..., 0], yy - d[..., 1]
            img = cv2.remap(self.base, zx, zy, cv2.INTER_CUBIC, borderMode=cv2.BORDER_REFLECT)
        if closure > 0:
            img = eyelid_cover(img, (self.lm @ pose[:, :2].T + pose[:, 2]).astype(np.float32), closure)
        if gain != 1.0:
            img = img * np.float32(gain)
        if v.noise_std > 0:
            # A bank of noise frames, each drawn at a random offset: as white as fresh noise, 10x cheaper.
            if self.noise is None:
                self.noise = rng.standard_normal((4, v.height, v.width, 3), dtype=np.float32) * np.float32(v.noise_std)
            bank = self.noise[int(rng.integers(len(self.noise)))]
            img = img + np.roll(bank, (int(rng.integers(v.height)), int(rng.integers(v.width))), axis=(0, 1))
        return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def render_video(video: LongVideo, out_dir: Path, seed: int, crf: int = 20) -> LongVideo:
    """Render frame by frame into the encoder (nothing held but the current frame)."""
    if video.codec not in ("ffv1", "h264"):
        raise ValueError(f"unknown codec {video.codec!r}; use ffv1 or h264")
    folder = out_dir / "videos"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{video.video_id}.{'mkv' if video.codec == 'ffv1' else 'mp4'}"
    writer = (_FFV1Writer(path, video.width, video.height, video.fps) if video.codec == "ffv1"
              else H264Writer(path, video.width, video.height, video.fps, crf, preset="veryfast"))
    renderer = _Renderer(video)
    rng = np.random.default_rng(seed)
    try:
        for n in range(1, video.n_frames + 1):
            writer.write(renderer.frame(n, rng))
    finally:
        writer.close()
    video.path = str(path.relative_to(out_dir))
    return video


# --- truth files -----------------------------------------------------------------------------


def truth_intervals(video: LongVideo) -> list[dict]:
    return [{"video": video.video_id, "onset": e.onset, "offset": e.offset, "type": e.type} for e in video.events]


def distinct_aus(events: list[LongEvent]) -> list[int]:
    return sorted({a["au"] for e in events for a in e.aus})


def lvqa_rows(video: LongVideo, dataset: str = "synthlv", ks: tuple[int, ...] = (1, 2)) -> list[dict]:
    """The six ME-LVQA questions of a video, as MEGC 2026 rows with reference answers."""
    from mellm.lvqa import lvqa_questions

    micro = sum(e.type == "micro" for e in video.events)
    macro = len(video.events) - micro
    aus = distinct_aus(video.events)
    answers = {"all": str(len(video.events)), "micro": str(micro), "macro": str(macro),
               "aus": format_au_list(aus) if aus else "none"}
    rows = []
    for i, (kind, text) in enumerate(lvqa_questions(ks), start=1):
        if kind.startswith("k="):
            k = int(kind[2:])
            answer = f"{video.events[k - 1].type}-expression" if k <= len(video.events) else ""
        else:
            answer = answers[kind]
        rows.append({"video_id": f"{dataset}_test_{video.video_id}_{i}", "video": video.video_id, "question": text,
                     "answer": answer})
    return rows


def generate_long(out: str | Path, n: int, seed: int = 0, config: LongConfig | None = None, progress: bool = False,
                  prefix: str = "lv") -> list[LongVideo]:
    """Write n long videos and their truth files under `out`. Same seed, same videos."""
    from tqdm import tqdm

    cfg = config or LongConfig()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    videos = [sample_video(i, cfg, rng, prefix) for i in range(n)]
    for i, v in enumerate(tqdm(videos, desc="synth --long", unit="video", disable=not progress)):
        v.placement = {"iod": cfg.face_iod}
        render_video(v, out, seed=seed * 100_003 + i, crf=cfg.crf)
    with open(out / "labels.jsonl", "w") as f:
        for v in videos:
            f.write(json.dumps(v.to_dict()) + "\n")
    with open(out / "intervals.jsonl", "w") as f:
        for v in videos:
            for row in truth_intervals(v):
                f.write(json.dumps(row) + "\n")
    with open(out / "lvqa.jsonl", "w") as f:
        for v in videos:
            for row in lvqa_rows(v):
                f.write(json.dumps(row) + "\n")
    (out / "synth_config.json").write_text(json.dumps({"seed": seed, "n": n, "long": True, **asdict(cfg)}, indent=2))
    return videos


def load_long_labels(root: str | Path) -> list[LongVideo]:
    from mellm.jsonl import InputFileError

    path = Path(root) / "labels.jsonl"
    if not path.exists():
        raise InputFileError(f"no labels.jsonl in {root} (made by `mellm synth --long --out {root}`)")
    with open(path) as f:
        return [LongVideo.from_dict(json.loads(line)) for line in f if line.strip()]

