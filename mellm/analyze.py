"""The perception pipeline: a clip in, `Evidence` out (`mellm analyze`).

decode -> face + landmarks (onset) -> canonical crop -> apex (given, or spotted) -> register the
apex onto the onset -> optical flow -> head-motion removal -> region statistics -> AU evidence ->
description + flow colour map.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np

from mellm import __version__, robust
from mellm.aus import present, score_aus
from mellm.describe import describe
from mellm.errors import ConfigError, FrameRangeError, NoFaceError
from mellm.evidence import SCHEMA_VERSION, Evidence
from mellm.face import get_face_backend
from mellm.flow import expression_flow, get_flow, optical_strain
from mellm.flowviz import flow_colour_map, magnitude_overlay
from mellm.prompts import IMAGE_ROLES
from mellm.regions import REGION_KEYS, face_mask, nose_mask, region_masks, region_shapes, region_stats, stable_mask
from mellm.register import IOD_FRACTION, canonical_from_face, compose, frame_to_crop, warp
from mellm.spotting import motion_curve
from mellm.video import ClipLimits, open_clip

# Bumped whenever the same settings give different evidence, so caches keyed by `key()` are redone
# (2: AU signatures of the brows and lower lip; blink-aware illumination and flow; 3: small faces'
# boxes found again at full resolution, spotting curves with the illumination gain).
ENGINE_REVISION = 3


@dataclass(frozen=True)
class PerceptionSettings:
    flow: str = "tvl1"  # tvl1 | dis | farneback | meflownet (or a registered backend)
    flow_checkpoint: str | None = None  # a learned backend's checkpoint (meflownet: a `mellm train-flow` run)
    crop_size: int = 256
    # How the apex frame is registered to the onset (register.frame_to_crop): auto | landmarks | onset.
    # Measured on synthetic clips: with small head drift, landmark jitter makes "landmarks" worse
    # than "onset" + affine head-motion removal; with large drift (10 px, 3 deg) it is better.
    register: str = "auto"
    head_motion: str = "affine"  # affine | median | nose | none
    spot_flow: str = "dis"
    # 192, not 128: on tuning clips with every nuisance (seeds 500, 901), apex +-2 0.77 -> 0.89 (256: 0.88);
    # a spotted clip takes ~1.4x as long (bench/results/perception_robustness.md, last row).
    spot_size: int = 192
    face_backend: str = "dlib68"
    # Defences against recording nuisances (mellm/robust.py), each measured on its own in
    # bench/results/perception_robustness.md; `legacy()` turns them all off.
    pre_align: str = "flow"  # flow: re-warp the apex by the head's affine motion from a coarse DIS flow | none
    illumination: str = "gain"  # gain: match the apex's (and each spotted frame's) brightness to the onset's (flicker) | none
    blinks: str = "mask"  # mask: a blinking eye is pasted from the onset and its lid regions left out of the AU fit | none
    # Gaussian blur before the flow: none | auto (sigma 1 for JPEG/lossy video) | a sigma. Off by default:
    # on tuning clips with every nuisance (six seeds, 255 clips) it changed next to no decision (AU
    # micro-F1 0.908 both ways at seeds 500/700/901, 0.923 with it and 0.927 without at 610/620/630).
    prefilter: str = "none"
    # An AU is present when its amplitude (crop px) reaches au_threshold_px and noise_floor times the
    # clip's still-region noise (mellm.robust.still_noise). Chosen on TUNING identities (bench
    # --split tuning): with the floor guarding against noise, the fixed threshold can be lower than
    # the old 0.25 px, which missed weak AUs (0.15 / 4: micro-F1 0.946 over all conditions, 0.87 on
    # "combined" with precision 1.0 and no AU on ME-free clips; 0.25 / 0: 0.885, 0.83, 40 % false AUs).
    # Rechecked at engine revision 2 on two more tuning seeds: 0.10 gained 0.03 F1 on one and doubled the
    # ME-free clips with an AU on the other; floors 3.5 and 4.5 moved F1 by 0.02 at most.
    au_threshold_px: float = 0.15
    noise_floor: float = 4.0
    spot_eyes: bool = False  # spotting counts motion in the eyes (a blink then steers the apex)
    spot_pool: float = 0.05  # spotting averages flow over boxes of this many IOD before ranking pixels (0: off)
    spot_smooth: int = 3  # frames the motion curve is averaged over before its peak is taken
    # Each spotted frame is first warped by the head motion tracked up to the frame before, so the flow
    # only sees what changed since (DIS is tuned for sub-pixel motion; a turning head otherwise leaves a
    # residual that grows with time and outgrows a faint ME). Tuning seeds 500/700/901/610/620/630, every
    # nuisance (182 clips): apex +-2 0.874 -> 0.962, at no extra cost.
    spot_track: bool = True
    # Per-AU decision thresholds (px of the canonical crop) from `mellm calibrate`; () = PRESENT_PX for all.
    au_thresholds: tuple = ()
    calibration: str = ""  # where the thresholds came from (the calibration file's name and digest)

    @classmethod
    def legacy(cls, **kw) -> PerceptionSettings:
        """The settings before the nuisance defences (MELLM <= 0.x): for comparisons."""
        return cls(**{"spot_size": 128, "pre_align": "none", "illumination": "none", "blinks": "none", "prefilter": "none",
                      "au_threshold_px": 0.25, "noise_floor": 0.0, "spot_eyes": True, "spot_pool": 0.0, "spot_smooth": 3,
                      "spot_track": False, **kw})

    def __post_init__(self):
        # JSON (serving.json, build.json) turns the pairs into lists: back to hashable tuples.
        pairs = self.au_thresholds.items() if isinstance(self.au_thresholds, dict) else self.au_thresholds
        object.__setattr__(self, "au_thresholds", tuple(sorted((int(a), float(t)) for a, t in pairs)))
        for name, value, known in (("pre_align", self.pre_align, ("flow", "none")),
                                   ("illumination", self.illumination, ("gain", "none")),
                                   ("blinks", self.blinks, ("mask", "none"))):
            if value not in known:
                raise ConfigError(f"perception setting {name}={value!r}: known values are {', '.join(known)}")
        if self.prefilter not in ("auto", "none"):
            try:
                float(self.prefilter)
            except ValueError:
                raise ConfigError(f"perception setting prefilter={self.prefilter!r}: use auto, none or a sigma") from None
        from mellm.face import FACE_BACKENDS
        from mellm.flow import FLOW_BACKENDS, HEAD_MOTION_METHODS
        from mellm.register import REGISTRATION_MODES

        for name, value, known in (("flow", self.flow, FLOW_BACKENDS), ("spot_flow", self.spot_flow, FLOW_BACKENDS),
                                   ("register", self.register, REGISTRATION_MODES),
                                   ("head_motion", self.head_motion, HEAD_MOTION_METHODS),
                                   ("face_backend", self.face_backend, FACE_BACKENDS)):
            if value not in known:
                raise ConfigError(f"perception setting {name}={value!r}: known values are {', '.join(sorted(known))}")
        from mellm.flow import CHECKPOINT_BACKENDS

        learned = sorted({self.flow, self.spot_flow} & CHECKPOINT_BACKENDS)
        if learned and self.flow_checkpoint is None:
            raise ConfigError(f"perception setting flow/spot_flow={learned[0]} needs flow_checkpoint (--flow-checkpoint RUN)")
        if self.flow_checkpoint is not None:
            if not learned:
                raise ConfigError(f"flow_checkpoint={self.flow_checkpoint!r} is set but flow={self.flow!r} takes none")
            from mellm.meflow.backend import load_checkpoint

            load_checkpoint(self.flow_checkpoint)  # a missing or incompatible file fails here, before any work
        if self.crop_size < 64 or self.spot_size < 32:
            raise ConfigError(f"crop_size {self.crop_size} / spot_size {self.spot_size} are too small (>= 64 / >= 32)")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["au_thresholds"] = {str(a): t for a, t in self.au_thresholds}
        return d

    def prefilter_sigma(self, lossy: bool) -> float:
        if self.prefilter == "auto":
            return 1.0 if lossy else 0.0
        return 0.0 if self.prefilter == "none" else float(self.prefilter)

    def key(self) -> str:
        """Stable hash of the settings, the engine version and the Evidence schema, for caches."""
        extra = {}
        if self.flow_checkpoint is not None:  # the same path may hold a retrained model
            from mellm.meflow.backend import checkpoint_digest

            extra["checkpoint_sha"] = checkpoint_digest(self.flow_checkpoint)
        blob = json.dumps({**self.to_dict(), **extra, "mellm": __version__, "schema": SCHEMA_VERSION,
                           "engine": ENGINE_REVISION}, sort_keys=True)
        return hashlib.sha1(blob.encode()).hexdigest()[:12]


@dataclass
class Analysis:
    evidence: Evidence
    onset_crop: np.ndarray  # grey, canonical crop
    apex_crop: np.ndarray
    flow: np.ndarray  # head motion removed, crop pixels
    to_crop: np.ndarray  # 2x3: onset frame pixels -> crop pixels
    landmarks: np.ndarray  # onset landmarks in crop pixels

    def flow_image(self, legend: bool = True) -> np.ndarray:
        return flow_colour_map(self.flow, self.onset_crop, legend=legend)

    def magnitude_image(self, legend: bool = True) -> np.ndarray:
        return magnitude_overlay(self.flow, self.onset_crop, legend=legend)

    def region_shapes(self) -> list[dict]:
        """The regions' disks in crop pixels (mellm.regions.region_shapes), to draw them on the crops."""
        return region_shapes(self.landmarks, IOD_FRACTION * self.onset_crop.shape[0])

    def images(self, roles: Sequence[str] = IMAGE_ROLES) -> dict[str, np.ndarray]:
        """What a model is shown, by image role (mellm.prompts): the grey onset and apex face crops
        and the flow colour map. Training data, serving and evaluation all take them from here."""
        render = {"onset": lambda: self.onset_crop, "apex": lambda: self.apex_crop, "flow": self.flow_image}
        return {role: render[role]() for role in roles}

    def pngs(self, roles: Sequence[str] = IMAGE_ROLES) -> list[bytes]:
        """`images(roles)` as PNG bytes, in order, for a request: lossless, fast compression."""
        return [png_bytes(image) for image in self.images(roles).values()]


def png_bytes(image: np.ndarray) -> bytes:
    """A grey or RGB image as PNG bytes: lossless, fast compression."""
    ok, buf = cv2.imencode(".png", image if image.ndim == 2 else cv2.cvtColor(image, cv2.COLOR_RGB2BGR),
                           [cv2.IMWRITE_PNG_COMPRESSION, 1])
    return buf.tobytes()


class _Timer:
    def __init__(self):
        self.ms: dict[str, float] = {}

    @contextmanager
    def __call__(self, stage: str):
        t = time.perf_counter()
        yield
        self.ms[stage] = self.ms.get(stage, 0.0) + 1000 * (time.perf_counter() - t)


def analyze_clip(source: str | Path, onset: int | None = None, apex: int | None = None, offset: int | None = None,
                 fps: float | None = None, settings: PerceptionSettings | None = None, curve: bool = False,
                 limits: ClipLimits | None = None) -> Analysis:
    """Run perception on one clip. Frame numbers are the annotation's (mellm.video). Without `apex`, it is spotted
    between onset and offset (or the clip's end). Raises ClipError subclasses on bad input (ClipTooLargeError
    past `limits`, checked before anything is decoded). `curve`: compute the motion curve (Evidence.motion_curve)
    even when the apex is given, for people to look at."""
    s = settings or PerceptionSettings()
    timer = _Timer()
    t0 = time.perf_counter()
    with timer("decode"):
        clip = open_clip(source, fps, limits)
        onset = clip.first_frame if onset is None else onset
        clip.check_frame(onset, "onset frame")
        if offset is not None:
            clip.check_frame(offset, "offset frame")
            if offset <= onset:
                raise FrameRangeError(f"offset frame {offset} is not after onset frame {onset} in {clip.path}")
        if apex is not None:
            clip.check_frame(apex, "apex frame")
            if apex <= onset:
                raise FrameRangeError(f"apex frame {apex} is not after onset frame {onset} in {clip.path}")
            if offset is not None and apex > offset:
                raise FrameRangeError(f"apex frame {apex} is after offset frame {offset} in {clip.path}")
        onset_rgb = clip.read(onset)
    backend = get_face_backend(s.face_backend)
    with timer("face"):
        try:
            face = backend.detect(onset_rgb)
        except NoFaceError:
            raise NoFaceError(f"no face found in onset frame {onset} of {clip.path}") from None
    canon = canonical_from_face(face, s.crop_size)
    spotted = None
    if apex is None or curve:
        last = offset if offset is not None else clip.last_frame
        if last <= onset:
            raise FrameRangeError(f"no frames after onset frame {onset} in {clip.path} to spot an apex in")
        with timer("spot"):
            spotted = motion_curve(clip, onset, onset_rgb, last, canon, s.spot_size, s.spot_flow, s.head_motion,
                                   checkpoint=s.flow_checkpoint, eyes=s.spot_eyes, pool=s.spot_pool, smooth=s.spot_smooth,
                                   illumination=s.illumination == "gain", track=s.spot_track)
    given_apex = apex is not None
    if not given_apex:
        apex = spotted.apex
    with timer("decode"):
        apex_rgb = clip.read(apex)
    quality: dict = {}
    with timer("register"):
        apex_lm = backend.landmarks(apex_rgb, face.box) if s.register != "onset" else None
        to_crop_apex, used_landmarks = frame_to_crop(canon, face.landmarks, apex_lm, s.register)
        lm, size, iod = canon.landmarks, s.crop_size, canon.iod
        stable, face_m = stable_mask(lm, size, iod), face_mask(lm, size, iod)
        onset_crop = warp(cv2.cvtColor(onset_rgb, cv2.COLOR_RGB2GRAY), canon.matrix, s.crop_size)
        apex_gray = cv2.cvtColor(apex_rgb, cv2.COLOR_RGB2GRAY)
        apex_crop = warp(apex_gray, to_crop_apex, s.crop_size)
        pre = None
        if s.pre_align == "flow":
            # Rotation, scale and shifts of several pixels are taken out before the fine flow,
            # which is tuned for sub-pixel motion; one more warp from the source frame.
            pre = robust.pre_align(onset_crop, apex_crop, stable)
            to_crop_apex = compose(cv2.invertAffineTransform(pre), to_crop_apex)
            apex_crop = warp(apex_gray, to_crop_apex, s.crop_size)
        if s.illumination == "gain":
            lit = robust.lit_mask(face_m, lm, size, iod)
            apex_crop, quality["illumination"] = robust.match_illumination(onset_crop, apex_crop, lit)
        skip: set[str] = set()
        flow_apex = apex_crop  # what the flow sees; the model is shown the real apex_crop
        if s.blinks == "mask":
            quality["eyes"] = robust.eye_closure(onset_crop, apex_crop, face_m, robust.eye_masks(lm, size, iod))
            blinking = quality["eyes"]["blink"]
            skip = {k for k in REGION_KEYS if "eyelid" in k and k.rsplit("|", 1)[1] in blinking}
            flow_apex = robust.paste_eyes(onset_crop, apex_crop, robust.eye_masks(lm, size, iod, 0.12), blinking, 0.04 * iod)
    with timer("flow"):
        lossy = clip.lossy
        sigma = s.prefilter_sigma(lossy)
        a, b = (onset_crop, flow_apex) if not sigma else (cv2.GaussianBlur(onset_crop, (0, 0), sigma), cv2.GaussianBlur(flow_apex, (0, 0), sigma))
        # A backend with its own head flow (meflownet) replaces the head-motion removal.
        flow, head = expression_flow(get_flow(s.flow, s.flow_checkpoint), a, b, stable, nose_mask(lm, size, iod), s.head_motion)
    with timer("regions"):
        stats = region_stats(flow, optical_strain(flow), region_masks(lm, size, iod))
        noise = robust.still_noise(flow, stable, max(2, round(0.08 * iod)))
        floor = s.noise_floor * noise
        quality.update({"lossy": lossy, "prefilter_sigma": sigma, "noise_px": round(noise, 4),
                        "noise_floor_px": round(floor, 4), "excluded_regions": sorted(skip)})
    with timer("aus"):
        scored = score_aus(stats, exclude=skip, thresholds=dict(s.au_thresholds), floor=floor, default=s.au_threshold_px)
        found = present(scored)
    head_info = {**head.to_dict(), "registration": "landmarks" if used_landmarks else "onset"}
    if pre is not None:
        # The head motion taken out: the pre-alignment's field plus the residual's (a bound, not a sum of vectors).
        ys, xs = np.nonzero(stable)
        pre_field = np.stack([xs, ys, np.ones_like(xs)], 1) @ pre.T - np.stack([xs, ys], 1)
        head_info["pre_align"] = [round(float(v), 5) for v in pre.ravel()]
        head_info["mean_px"] = round(float(np.linalg.norm(pre_field, axis=-1).mean()) + head.mean_px, 4)
    with timer("describe"):
        text = describe(stats, found, onset, apex, clip.fps, head_info["mean_px"], skip=skip,
                        blink_sides=quality.get("eyes", {}).get("blink", []), floor_px=max(floor, s.au_threshold_px) if s.noise_floor else None)
    timer.ms["total"] = 1000 * (time.perf_counter() - t0)
    evidence = Evidence(
        clip=str(source), n_frames=clip.n_frames, fps=clip.fps, onset_frame=onset, apex_frame=apex,
        offset_frame=offset, apex_source="given" if given_apex else "spotted", flow_method=s.flow,
        head_motion=head_info, face_box=[int(v) for v in face.box], crop_scale=round(canon.scale, 4),
        regions=stats, aus=found, au_scores=scored, description=text, timings_ms=timer.ms,
        settings={**s.to_dict(), "key": s.key()},
        motion_curve=None if spotted is None else spotted.to_dict(), quality=quality,
    )
    return Analysis(evidence, onset_crop, apex_crop, flow, canon.matrix, canon.landmarks)


def save_analysis(result: Analysis, out: str | Path) -> None:
    """Write evidence.json, flow.png, description.txt (and the onset/apex crops) into `out`."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    result.evidence.save(out / "evidence.json")
    for role, image in result.images().items():
        bgr = cv2.cvtColor(image, cv2.COLOR_RGB2BGR) if image.ndim == 3 else image
        cv2.imwrite(str(out / f"{role}.png"), bgr)
    (out / "description.txt").write_text(result.evidence.description + "\n")
