"""Recording nuisances for synthetic clips: blinks, head motion, lighting flicker, lossy coding.

Real ME recordings are not the lossless, still, evenly lit clips a generator makes by default:
CASME II and SAMM ship JPEG frames, other sets H.264 video; subjects blink (also during an ME),
the head sways, rotates and changes scale, and mains-powered lights flicker. Every piece here is a
plain function of a frame number (or of one frame's image and per-frame parameters), so any
generator, a short clip's (mellm.synth) or a long video's, can reuse them:

- `blink_closure(frame, blinks)` -> lid closure in [0, 1]; `blink_field` (the lid's displacement)
  and `eyelid_cover` (the lid covering the eye) turn a closure into image changes;
- `head_pose(t, head)` -> (dx, dy, rot_deg, scale) at clip time t in [0, 1], linear drift plus a
  smooth sway (non-constant motion); `pose_matrix` makes the 2x3 similarity, about the face centre;
- `flicker_gain(frame, flicker)` -> (gain, offset); `apply_flicker` applies it to a frame;
- `jpeg_roundtrip(rgb, quality)`; `H264Writer` (PyAV libx264, yuv420p, CRF).

Parameters are plain dicts (JSON in labels.jsonl); `sample_*` draws them from a seeded generator.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

# --- blinks -------------------------------------------------------------------------------------

# A blink: closing ~50 ms, closed ~20 ms, reopening ~100 ms (human blinks last 100-400 ms).
BLINK_MS = (50.0, 20.0, 100.0)


def sample_blinks(rng: np.random.Generator, n_frames: int, fps: float, rate: float, during: tuple[int, int] | None = None,
                  during_share: float = 0.5) -> list[dict]:
    """Blinks for a clip: Poisson with `rate` blinks per clip, at least one when rate >= 1; with
    probability `during_share` the first one starts inside `during` (the ME's onset..offset)."""
    n = int(rng.poisson(rate)) if rate < 1 else max(1, int(rng.poisson(rate)))
    close, hold, reopen = (max(1, round(ms * fps / 1000)) for ms in BLINK_MS)
    length = close + hold + reopen
    blinks = []
    for i in range(n):
        if i == 0 and during is not None and rng.random() < during_share:
            lo, hi = during[0] - length // 2, during[1]
        else:
            lo, hi = 1 - length // 2, n_frames
        start = int(rng.integers(lo, max(lo + 1, hi)))
        depth = float(rng.uniform(0.7, 1.0))  # not every blink closes the eye fully
        blinks.append({"start": start, "close": close, "hold": hold, "reopen": reopen, "depth": round(depth, 3)})
    return blinks


def blink_closure(frame: float, blinks: list[dict]) -> float:
    """Lid closure at `frame` (0 open, 1 closed): raised-cosine closing, hold, raised-cosine reopening."""
    out = 0.0
    for b in blinks:
        t = frame - b["start"]
        if t <= 0 or t >= b["close"] + b["hold"] + b["reopen"]:
            continue
        if t < b["close"]:
            c = 0.5 * (1 - np.cos(np.pi * t / b["close"]))
        elif t < b["close"] + b["hold"]:
            c = 1.0
        else:
            c = 0.5 * (1 + np.cos(np.pi * (t - b["close"] - b["hold"]) / b["reopen"]))
        out = max(out, float(c) * b["depth"])
    return out


def _eyes(landmarks: np.ndarray) -> list[dict]:
    """Per eye: centre, width, upper-lid and lower-lid heights (68-point scheme)."""
    out = []
    for outer, inner, upper, lower in ((36, 39, (37, 38), (40, 41)), (45, 42, (43, 44), (46, 47))):
        corners = landmarks[[outer, inner]]
        up, low = landmarks[list(upper)].mean(0), landmarks[list(lower)].mean(0)
        out.append({"centre": corners.mean(0), "width": float(np.linalg.norm(corners[0] - corners[1])),
                    "upper_y": float(up[1]), "lower_y": float(low[1]), "opening": float(max(2.0, low[1] - up[1]))})
    return out


def blink_field(landmarks: np.ndarray, closure: float, width: int, height: int) -> np.ndarray:
    """Displacement (H, W, 2) of a closing lid: the lid skin above each eye moves down, a little;
    the field fades within about one eye opening, so the brows (a third of the interocular
    distance higher) are barely moved, as in a real blink."""
    field = np.zeros((height, width, 2), np.float32)
    if closure <= 0:
        return field
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    for e in _eyes(landmarks):
        cx, cy = e["centre"]
        sx, sy = 0.6 * e["width"], 0.7 * e["opening"]
        g = np.exp(-((xs - cx) ** 2 / (2 * sx**2) + (ys - e["upper_y"]) ** 2 / (2 * sy**2)))
        field[..., 1] += 0.3 * closure * e["opening"] * g  # gradient < 1: the warp never folds
    return field


def eyelid_cover(rgb: np.ndarray, landmarks: np.ndarray, closure: float) -> np.ndarray:
    """`rgb` (float32) with each eye covered from the top by a skin-coloured lid to depth `closure`,
    its edge darkened by lashes: the appearance change that breaks brightness constancy."""
    if closure <= 0:
        return rgb
    out = rgb.copy()
    h, w = rgb.shape[:2]
    for e in _eyes(landmarks):
        cx, cy = e["centre"]
        half_w, half_h = 0.65 * e["width"], 0.9 * e["opening"]
        x0, x1 = int(max(0, cx - half_w - 2)), int(min(w, cx + half_w + 3))
        y0, y1 = int(max(0, cy - 2 * half_h - 2)), int(min(h, cy + half_h + 3))
        if x1 <= x0 or y1 <= y0:
            continue
        ys, xs = np.mgrid[y0:y1, x0:x1].astype(np.float32)
        inside = np.clip(1.5 * (1 - ((xs - cx) / half_w) ** 2 - ((ys - cy) / half_h) ** 2), 0, 1)
        edge = cy - half_h + closure * 2 * half_h  # the lid's lower edge sweeps down over the eye
        covered = np.clip((edge - ys) / 1.5 + 0.5, 0, 1) * inside
        skin_rows = rgb[max(0, int(cy - 2.2 * half_h)):max(1, int(cy - 1.4 * half_h)), x0:x1]
        skin = np.median(skin_rows.reshape(-1, rgb.shape[2]), 0) if skin_rows.size else rgb[y0:y1, x0:x1].mean((0, 1))
        lashes = np.exp(-((ys - edge) ** 2) / 2.0) * inside * 0.5
        patch = out[y0:y1, x0:x1]
        patch = patch * (1 - covered[..., None]) + skin[None, None, :] * covered[..., None]
        out[y0:y1, x0:x1] = patch * (1 - lashes[..., None])
    return out


# --- head motion --------------------------------------------------------------------------------


def sample_head(rng: np.random.Generator, max_shift_px: float, max_rot_deg: float, max_scale: float,
                sway: bool) -> dict:
    """Head motion over a clip: a linear drift to (dx, dy, rot_deg, scale) at the last frame, plus,
    when `sway`, a smooth oscillation of each component (non-constant motion, about 1-2 cycles)."""
    u = lambda r: float(rng.uniform(-r, r))  # noqa: E731
    head = {"dx": u(max_shift_px), "dy": u(max_shift_px), "rot_deg": u(max_rot_deg), "scale": 1 + u(max_scale)}
    if sway:
        head["sway"] = {"dx": u(max_shift_px / 2), "dy": u(max_shift_px / 2), "rot_deg": u(max_rot_deg / 2),
                        "scale": u(max_scale / 2), "cycles": float(rng.uniform(0.7, 2.0)),
                        "phase": float(rng.uniform(0, 2 * np.pi))}
    return head


def head_pose(t: float, head: dict) -> tuple[float, float, float, float]:
    """(dx px, dy px, rotation deg, scale) at clip time t in [0, 1]; pose 0 at t = 0."""
    dx, dy, rot, scale = head["dx"] * t, head["dy"] * t, head["rot_deg"] * t, 1 + (head["scale"] - 1) * t
    s = head.get("sway")
    if s:
        # sin(phase + 2 pi c t) - sin(phase): zero at t = 0, so frame 1 is the reference pose
        wave = float(np.sin(s["phase"] + 2 * np.pi * s["cycles"] * t) - np.sin(s["phase"]))
        dx, dy, rot, scale = dx + s["dx"] * wave, dy + s["dy"] * wave, rot + s["rot_deg"] * wave, scale + s["scale"] * wave
    return dx, dy, rot, scale


def pose_matrix(pose: tuple[float, float, float, float], centre: tuple[float, float]) -> np.ndarray:
    """2x3 similarity of a head pose: rotate and scale about `centre` (the face), then shift."""
    dx, dy, rot, scale = pose
    a = np.radians(rot)
    r = scale * np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
    c = np.asarray(centre, np.float64)
    return np.hstack([r, (c - r @ c + np.array([dx, dy]))[:, None]])


# --- lighting flicker ---------------------------------------------------------------------------


def sample_flicker(rng: np.random.Generator, amplitude: float) -> dict:
    """Flicker: a slow sinusoidal gain (1-15 Hz beat of mains lighting against the camera), a
    per-frame random part, and a left-right gradient that varies with it (light from one side)."""
    return {"amplitude": round(float(amplitude), 4), "hz": float(rng.uniform(1, 15)),
            "phase": float(rng.uniform(0, 2 * np.pi)), "jitter": round(float(amplitude) / 3, 4),
            "gradient": float(rng.uniform(-0.5, 0.5)), "seed": int(rng.integers(1 << 30))}


def flicker_gain(frame: int, fps: float, flicker: dict | None) -> tuple[float, float]:
    """(gain, gradient) at `frame`: multiply the frame by gain * (1 + gradient * x), x in [-1, 1]."""
    if not flicker:
        return 1.0, 0.0
    jitter = np.random.default_rng([flicker["seed"], int(frame)]).normal(0, flicker["jitter"])
    wave = flicker["amplitude"] * np.sin(flicker["phase"] + 2 * np.pi * flicker["hz"] * (frame - 1) / fps)
    gain = float(1 + wave + jitter)
    return gain, float(flicker["gradient"] * (gain - 1))


def apply_flicker(rgb: np.ndarray, gain: float, gradient: float = 0.0) -> np.ndarray:
    """A frame (float32) under changed lighting."""
    if gain == 1.0 and gradient == 0.0:
        return rgb
    ramp = gain * (1 + gradient * np.linspace(-1, 1, rgb.shape[1], dtype=np.float32))
    return rgb * ramp[None, :, None]


# --- lossy coding -------------------------------------------------------------------------------


def jpeg_roundtrip(rgb: np.ndarray, quality: int) -> np.ndarray:
    """What a frame looks like after JPEG at `quality` (as the frames CASME II and SAMM ship)."""
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    return cv2.cvtColor(cv2.imdecode(buf, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)


class H264Writer:
    """H.264 (libx264, yuv420p 4:2:0 chroma, constant rate factor `crf`) in MP4 via PyAV: how
    recordings are delivered outside the lab datasets. CRF 18 is near-transparent for watching,
    not for 0.3 px of motion."""

    def __init__(self, path: str | Path, width: int, height: int, fps: float, crf: int = 18, preset: str = "medium"):
        import av

        if width % 2 or height % 2:
            raise ValueError(f"H.264 with 4:2:0 chroma needs an even frame size, not {width}x{height}")
        self.container = av.open(str(path), mode="w")
        self.stream = self.container.add_stream("libx264", rate=int(round(fps)))
        self.stream.width, self.stream.height = width, height
        self.stream.pix_fmt = "yuv420p"
        self.stream.options = {"crf": str(int(crf)), "preset": preset}

    def write(self, rgb: np.ndarray) -> None:
        import av

        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
        for packet in self.stream.encode(frame):
            self.container.mux(packet)

    def close(self) -> None:
        for packet in self.stream.encode():
            self.container.mux(packet)
        self.container.close()
