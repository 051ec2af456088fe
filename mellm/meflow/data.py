"""Flow data (`mellm flow-data`): onset-apex pairs of canonical face crops with exact flow.

Each pair is what perception sees: the onset and apex frames of a face in the canonical crop
(mellm.register, eyes level, interocular distance 0.375 * size), grey. Between them:

  expression motion  FACS-like AU displacement fields (mellm.synth.AU_FIELDS), 0.05-2 px at the
                     anchor, one AU combination of an emotion, a random AU set, or none;
  head motion        a similarity transform (shift, rotation, scale) in half of the pairs;
  appearance         identities from mellm.faces (proportions, skin tone, contrast, lighting), a
                     crop jitter, a moving fine skin texture, blur, per-frame gain, sensor noise, JPEG.

The flow is exact, per onset pixel x with z = x on the expressive face, D the expression field
and H the head similarity: facial(x) = H(x + D(x)) - x, head(x) = H(x) - x, and
expression = facial - head = A D(x) (A the linear part of H). Shards hold `expression` dense
(float16: small values keep their precision) and the head as its 6 affine terms (exact).

Splits by photo: train pairs come from astronaut identities (mellm.faces TUNING and more seeds),
held-out pairs from the Grace Hopper identities (HELD_OUT), so an evaluation face is never trained on.

    OUT/train/shard-00000.npz ...   onset, apex (N,S,S) uint8; expression (N,S,S,2) float16;
    OUT/heldout/shard-00000.npz     head (N,6) float64; masks (N,S,S) uint8 (bit 0 face, bit 1 AU regions)
    OUT/*/shard-00000.jsonl         one line of metadata per pair (identity, AUs, head, appearance)
    OUT/flow_data.json              generator settings, counts, identities, shard checksums
    OUT/README.md                   the card
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from collections.abc import Iterator
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import cv2
import numpy as np

from mellm.errors import ConfigError, MellmError
from mellm.faces import HELD_OUT, HELD_OUT_PHOTO, TUNING, TUNING_PHOTO, identity_face, make_identity
from mellm.regions import face_mask, region_masks
from mellm.register import EYE_Y_FRACTION, IOD_FRACTION
from mellm.synth import AU_FIELDS, EMOTION_AUS, MIDLINE_AUS, Bump, bumps_for

FORMAT_VERSION = 1
SPLITS = ("train", "heldout")
FACE_BIT, AU_BIT = 1, 2


@dataclass
class FlowDataConfig:
    size: int = 256  # canonical crop side (perception's crop_size)
    n_train: int = 2048
    n_heldout: int = 256
    shard_size: int = 128
    train_identities: int = 48  # astronaut-0..7 (TUNING) and astronaut seeds from 100 on
    heldout_identities: int = 8  # hopper-0..7 (HELD_OUT); their seeds are never in a train split
    amplitude: tuple[float, float] = (0.05, 2.0)  # px at an AU's anchor, log-uniform
    neutral_fraction: float = 0.08  # pairs with no expression motion
    random_au_fraction: float = 0.25  # a random AU set instead of an emotion's combination
    head_fraction: float = 0.5
    max_shift_px: float = 4.0
    max_rotation_deg: float = 1.5
    max_scale_change: float = 0.02
    crop_jitter: float = 0.06  # detection jitter of the canonical crop: scale fraction; shift = 40x in px
    texture_std: tuple[float, float] = (0.0, 5.0)  # fine skin texture that moves with the face
    blur_sigma: tuple[float, float] = (0.0, 1.0)
    noise_std: tuple[float, float] = (0.0, 3.0)  # grey levels, drawn per pair, independent per frame
    flicker: float = 0.02  # per-frame gain change (lighting flicker)
    jpeg_fraction: float = 0.3
    jpeg_quality: tuple[int, int] = (80, 98)

    def __post_init__(self):
        if self.size % 8 or self.size < 64:
            raise ConfigError(f"flow-data size {self.size}: use a multiple of 8, at least 64")
        for name in ("n_train", "n_heldout", "shard_size", "train_identities", "heldout_identities"):
            if getattr(self, name) < (1 if name in ("shard_size", "train_identities", "heldout_identities") else 0):
                raise ConfigError(f"flow-data {name}={getattr(self, name)} must be positive")
        lo, hi = self.amplitude
        if not 0 < lo <= hi:
            raise ConfigError(f"flow-data amplitude {self.amplitude}: need 0 < low <= high")

    def identities(self, split: str):
        if split == "train":
            extra = self.train_identities - len(TUNING)
            return list(TUNING[: self.train_identities]) + [make_identity(TUNING_PHOTO, 100 + i) for i in range(max(0, extra))]
        if self.heldout_identities <= len(HELD_OUT):
            return list(HELD_OUT[: self.heldout_identities])
        return list(HELD_OUT) + [make_identity(HELD_OUT_PHOTO, 100 + i) for i in range(self.heldout_identities - len(HELD_OUT))]


# --- one pair ---------------------------------------------------------------------------------


def _similarity(rot_deg: float, scale: float, dx: float, dy: float, centre: float) -> np.ndarray:
    a = np.radians(rot_deg)
    lin = scale * np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
    c = np.array([centre, centre])
    return np.hstack([lin, (c - lin @ c + [dx, dy])[:, None]])


def affine_field(params: np.ndarray, size: int) -> np.ndarray:
    """The flow (S,S,2) of the affine map x -> M x (2x3 `params`, row-major): M x - x."""
    m = np.asarray(params, np.float64).reshape(2, 3)
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float64)
    fx = m[0, 0] * xs + m[0, 1] * ys + m[0, 2] - xs
    fy = m[1, 0] * xs + m[1, 1] * ys + m[1, 2] - ys
    return np.stack([fx, fy], -1).astype(np.float32)


def _field_at(bumps: list[Bump], x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    dx, dy = np.zeros_like(x), np.zeros_like(y)
    for b in bumps:
        g = np.exp(-((x - b.centre[0]) ** 2 + (y - b.centre[1]) ** 2) / (2 * b.sigma**2))
        dx += b.vector[0] * g
        dy += b.vector[1] * g
    return dx, dy


@dataclass
class _Face:
    """An identity's photo (grey) and its landmarks, once per process."""

    grey: np.ndarray
    landmarks: np.ndarray


_FACES: dict[str, _Face] = {}


def _face(identity) -> _Face:
    if identity.name not in _FACES:
        rgb, lm = identity_face(identity)
        _FACES[identity.name] = _Face(cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY), lm.astype(np.float64))
    return _FACES[identity.name]


def _sample_aus(rng: np.random.Generator, cfg: FlowDataConfig) -> list[dict]:
    if rng.random() < cfg.neutral_fraction:
        return []
    if rng.random() < cfg.random_au_fraction:
        pool = sorted(AU_FIELDS)
        combo = [(int(a), bool(rng.random() < 0.3) and a not in MIDLINE_AUS)
                 for a in rng.choice(pool, size=int(rng.integers(1, 4)), replace=False)]
    else:
        fine = sorted(EMOTION_AUS)[rng.integers(len(EMOTION_AUS))]
        combo = EMOTION_AUS[fine][rng.integers(len(EMOTION_AUS[fine]))]
    side = str(rng.choice(["L", "R"]))
    lo, hi = np.log(cfg.amplitude[0]), np.log(cfg.amplitude[1])
    return [{"au": int(au), "side": side if uni else "both", "amplitude_px": round(float(np.exp(rng.uniform(lo, hi))), 4)}
            for au, uni in combo]


def make_pair(identity, rng: np.random.Generator, cfg: FlowDataConfig) -> dict:
    """One onset-apex pair of `identity` with its exact flow (see the module docstring)."""
    s = cfg.size
    face = _face(identity)
    lm = face.landmarks
    right, left = lm[36:42].mean(0), lm[42:48].mean(0)
    d = left - right
    j = cfg.crop_jitter
    scale = IOD_FRACTION * s / float(np.hypot(*d)) * (1 + rng.uniform(-j, j))
    angle = -np.arctan2(d[1], d[0]) + np.radians(rng.uniform(-3, 3))
    lin = scale * np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    target = np.array([s / 2, EYE_Y_FRACTION * s]) + rng.uniform(-40 * j, 40 * j, 2) * s / 256
    to_crop = np.hstack([lin, (target - lin @ ((left + right) / 2))[:, None]])
    lm_crop = lm @ to_crop[:, :2].T + to_crop[:, 2]
    iod = IOD_FRACTION * s

    # The face in the onset crop, with a fine texture fixed to the skin.
    base = cv2.warpAffine(face.grey, to_crop, (s, s), flags=cv2.INTER_CUBIC, borderMode=cv2.BORDER_REFLECT)
    tex = float(rng.uniform(*cfg.texture_std))
    if tex > 0:
        base = base + tex * cv2.GaussianBlur(rng.normal(0, 1, (s, s)).astype(np.float32), (0, 0), 0.8) / 0.35
    base = base.astype(np.float32)

    aus = _sample_aus(rng, cfg)
    bumps = bumps_for(aus, lm_crop)
    moving_head = rng.random() < cfg.head_fraction
    if moving_head:
        head_pose = {"dx": float(rng.uniform(-cfg.max_shift_px, cfg.max_shift_px)),
                     "dy": float(rng.uniform(-cfg.max_shift_px, cfg.max_shift_px)),
                     "rot_deg": float(rng.uniform(-cfg.max_rotation_deg, cfg.max_rotation_deg)),
                     "scale": float(1 + rng.uniform(-cfg.max_scale_change, cfg.max_scale_change))}
    else:
        head_pose = {"dx": 0.0, "dy": 0.0, "rot_deg": 0.0, "scale": 1.0}
    h = _similarity(head_pose["rot_deg"], head_pose["scale"], head_pose["dx"], head_pose["dy"], (s - 1) / 2)
    h_inv = cv2.invertAffineTransform(h)

    ys, xs = np.mgrid[0:s, 0:s].astype(np.float64)
    # Apex pixel y shows the face point z with H(z + D(z)) = y: solve z = H^-1(y) - D(z) by fixed point.
    ux = h_inv[0, 0] * xs + h_inv[0, 1] * ys + h_inv[0, 2]
    uy = h_inv[1, 0] * xs + h_inv[1, 1] * ys + h_inv[1, 2]
    zx, zy = ux.copy(), uy.copy()
    for _ in range(6):
        dx, dy = _field_at(bumps, zx, zy)
        zx, zy = ux - dx, uy - dy
    apex = cv2.remap(base, zx.astype(np.float32), zy.astype(np.float32), cv2.INTER_CUBIC, borderMode=cv2.BORDER_REFLECT)
    dx, dy = _field_at(bumps, xs, ys)
    expression = np.stack([h[0, 0] * dx + h[0, 1] * dy, h[1, 0] * dx + h[1, 1] * dy], -1)

    blur = float(rng.uniform(*cfg.blur_sigma))
    noise = float(rng.uniform(*cfg.noise_std))
    quality = int(rng.integers(cfg.jpeg_quality[0], cfg.jpeg_quality[1] + 1)) if rng.random() < cfg.jpeg_fraction else None
    frames = [_camera(img, blur, 1 + rng.uniform(-cfg.flicker, cfg.flicker), noise, quality, rng) for img in (base, apex)]

    masks = face_mask(lm_crop, s, iod).astype(np.uint8) * FACE_BIT
    au_mask = np.zeros((s, s), bool)
    for m in region_masks(lm_crop, s, iod).values():
        au_mask |= m
    masks |= au_mask.astype(np.uint8) * AU_BIT
    meta = {"identity": identity.name, "aus": aus, "head": head_pose, "moving_head": bool(moving_head),
            "appearance": {"texture": round(tex, 3), "blur": round(blur, 3), "noise": round(noise, 3), "jpeg": quality},
            "landmarks": np.round(lm_crop, 2).tolist()}
    return {"onset": frames[0], "apex": frames[1], "expression": expression.astype(np.float16),
            "head": h.ravel(), "masks": masks, "meta": meta}


def _camera(img: np.ndarray, blur: float, gain: float, noise: float, quality: int | None,
            rng: np.random.Generator) -> np.ndarray:
    if blur > 0.05:
        img = cv2.GaussianBlur(img, (0, 0), blur)
    img = img * gain
    if noise > 0:
        img = img + rng.normal(0, noise, img.shape).astype(np.float32)
    out = np.clip(np.rint(img), 0, 255).astype(np.uint8)
    if quality is not None:
        ok, buf = cv2.imencode(".jpg", out, [cv2.IMWRITE_JPEG_QUALITY, quality])
        out = cv2.imdecode(buf, cv2.IMREAD_GRAYSCALE)
    return out


# --- shards -----------------------------------------------------------------------------------

ARRAYS = ("onset", "apex", "expression", "head", "masks")


def _shard_seed(seed: int, split: str, index: int) -> list[int]:
    return [seed, SPLITS.index(split), index]


def make_shard(cfg: FlowDataConfig, seed: int, split: str, index: int) -> tuple[dict[str, np.ndarray], list[dict]]:
    """Shard `index` of `split`: pairs drawn from their own seed, so shards are independent and resumable."""
    total = cfg.n_train if split == "train" else cfg.n_heldout
    start = index * cfg.shard_size
    n = min(cfg.shard_size, total - start)
    rng = np.random.default_rng(_shard_seed(seed, split, index))
    identities = cfg.identities(split)
    pairs = [make_pair(identities[rng.integers(len(identities))], rng, cfg) for _ in range(n)]
    arrays = {k: np.stack([p[k] for p in pairs]) for k in ARRAYS}
    return arrays, [p["meta"] for p in pairs]


def checksum(arrays: dict[str, np.ndarray]) -> str:
    h = hashlib.sha256()
    for k in ARRAYS:
        h.update(k.encode())
        h.update(np.ascontiguousarray(arrays[k]).tobytes())
    return h.hexdigest()[:16]


def _write_shard(folder: Path, index: int, arrays: dict[str, np.ndarray], meta: list[dict]) -> str:
    folder.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    path = folder / f"shard-{index:05d}.npz"
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(buf.getvalue())
    with open(path.with_suffix(".jsonl"), "w") as f:
        f.writelines(json.dumps(m) + "\n" for m in meta)
    os.replace(tmp, path)  # the .npz appears last and whole: a rerun treats it as done
    return checksum(arrays)


def _job(args) -> tuple[str, int, str]:
    cfg, seed, split, index, out = args
    arrays, meta = make_shard(cfg, seed, split, index)
    return split, index, _write_shard(Path(out) / split, index, arrays, meta)


def write_flow_data(out: str | Path, cfg: FlowDataConfig | None = None, seed: int = 0, workers: int = 1,
                    progress: bool = False) -> dict:
    """Write the shards, flow_data.json and README.md under `out`; -> the manifest. A rerun with the
    same settings keeps the shards already written; other settings in the same folder are refused."""
    from tqdm import tqdm

    cfg = cfg or FlowDataConfig()
    out = Path(out)
    settings = {"format_version": FORMAT_VERSION, "seed": seed, **asdict(cfg)}
    manifest_path = out / "flow_data.json"
    done: dict[str, str] = {}
    if manifest_path.is_file():
        old = json.loads(manifest_path.read_text())
        if json.loads(json.dumps(settings)) != old.get("settings"):
            raise MellmError(f"{out} holds flow data made with other settings ({manifest_path}); use another --out")
        done = old.get("checksums", {})
    out.mkdir(parents=True, exist_ok=True)
    jobs = []
    for split in SPLITS:
        total = cfg.n_train if split == "train" else cfg.n_heldout
        for i in range(-(-total // cfg.shard_size)):
            key = f"{split}/shard-{i:05d}"
            if key in done and (out / f"{key}.npz").is_file():
                continue
            jobs.append((cfg, seed, split, i, str(out)))

    def record(results):
        for split, i, digest in results:
            done[f"{split}/shard-{i:05d}"] = digest
            _write_manifest(out, settings, cfg, done)

    bar = dict(total=len(jobs), desc="flow-data", unit="shard", disable=not progress)
    if workers > 1 and len(jobs) > 1:
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(workers) as pool:
            record(tqdm(pool.map(_job, jobs), **bar))
    else:
        record(tqdm(map(_job, jobs), **bar))
    return _write_manifest(out, settings, cfg, done)


def _write_manifest(out: Path, settings: dict, cfg: FlowDataConfig, done: dict[str, str]) -> dict:
    manifest = {
        "settings": json.loads(json.dumps(settings)),
        "counts": {"train": cfg.n_train, "heldout": cfg.n_heldout},
        "identities": {split: [i.name for i in cfg.identities(split)] for split in SPLITS},
        "checksums": dict(sorted(done.items())),
    }
    (out / "flow_data.json").write_text(json.dumps(manifest, indent=1) + "\n")
    (out / "README.md").write_text(_card(manifest))
    return manifest


def _card(manifest: dict) -> str:
    s = manifest["settings"]
    return f"""# MELLM flow data (MEFlowDataset-style, generated)

Onset-apex pairs of grey {s['size']}x{s['size']} canonical face crops with exact flow, made by
`mellm flow-data` (mellm/meflow/data.py, format {s['format_version']}, seed {s['seed']}).

- train: {manifest['counts']['train']} pairs from {len(manifest['identities']['train'])} identities made from the
  astronaut photo (scikit-image, public domain); heldout: {manifest['counts']['heldout']} pairs from
  {len(manifest['identities']['heldout'])} identities made from Grace Hopper's portrait (matplotlib, public domain).
  No held-out identity is in the train split.
- Expression: FACS-like AU displacement fields, {s['amplitude'][0]}-{s['amplitude'][1]} px at the anchor;
  head: similarity (shift <= {s['max_shift_px']} px, rotation <= {s['max_rotation_deg']} deg, scale
  +-{s['max_scale_change']}) in {s['head_fraction']:.0%} of pairs; blur, noise, flicker, JPEG ({s['jpeg_fraction']:.0%}).
- Per shard (`*/shard-NNNNN.npz`): onset, apex (uint8), expression flow (float16, px, onset -> apex),
  head (6 affine terms: head flow = M x - x), masks (bit 0 face, bit 1 AU regions); `.jsonl` metadata.
  Facial flow = head + expression.

Settings: see flow_data.json. Synthetic: real ME recordings differ (skin deformation, 3D pose, codecs).
"""


def load_manifest(root: str | Path) -> dict:
    path = Path(root) / "flow_data.json"
    if not path.is_file():
        raise MellmError(f"{root} is not a flow-data folder (no flow_data.json); make one with `mellm flow-data`")
    manifest = json.loads(path.read_text())
    version = manifest.get("settings", {}).get("format_version")
    if version != FORMAT_VERSION:
        raise MellmError(f"{path}: flow-data format {version}, this MELLM reads {FORMAT_VERSION}; regenerate it")
    return manifest


def shard_paths(root: str | Path, split: str) -> list[Path]:
    manifest = load_manifest(root)
    paths = [Path(root) / f"{k}.npz" for k in manifest["checksums"] if k.startswith(split + "/")]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing or not paths:
        raise MellmError(f"{root}: split {split!r} has " + (f"missing shards: {', '.join(missing[:3])}" if missing else "no shards"))
    return sorted(paths)


def read_shard(path: str | Path) -> dict[str, np.ndarray]:
    try:
        with np.load(path) as z:
            return {k: z[k] for k in ARRAYS}
    except (OSError, ValueError, KeyError) as e:
        raise MellmError(f"flow-data shard {path} cannot be read: {e}") from None


def iter_pairs(root: str | Path, split: str) -> Iterator[dict[str, np.ndarray]]:
    """Every pair of a split, in order, with its head and facial flow fields."""
    for path in shard_paths(root, split):
        arrays = read_shard(path)
        size = arrays["onset"].shape[-1]
        for i in range(len(arrays["onset"])):
            head = affine_field(arrays["head"][i], size)
            expression = arrays["expression"][i].astype(np.float32)
            yield {"onset": arrays["onset"][i], "apex": arrays["apex"][i], "expression": expression, "head": head,
                   "facial": head + expression, "masks": arrays["masks"][i], "head_params": arrays["head"][i]}


def config_from_options(**options) -> FlowDataConfig:
    known = {f.name for f in fields(FlowDataConfig)}
    unknown = sorted(set(options) - known)
    if unknown:
        raise ConfigError(f"unknown flow-data setting(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    return FlowDataConfig(**options)

