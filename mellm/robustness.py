"""Perception robustness, condition by condition: the nuisance conditions of a synthetic corpus and
how perception's evidence is scored against the generator's truth.

Shared by bench/perception_robustness.py (the full table) and tests/test_robustness.py (floors on
a few clips per condition), so the benchmark and the tests measure the same thing.

Every condition is the clean clip (lossless PNG, still head, steady light, a 90 px face, planted
AUs of 0.4-1.0 px) with one nuisance added, except the amplitude bins (clean clips, other
amplitudes) and "combined" (every nuisance at once, amplitudes 0.2-1.0 px). One clip in six has
no micro-expression at all. Identities come from mellm.faces: figures are reported on HELD_OUT
identities; anything tuned is tuned on TUNING identities and other seeds.
"""

from __future__ import annotations

from dataclasses import replace

from mellm.synth import SynthClip, SynthConfig, au_recovery

BASE = SynthConfig(n_frames=40, drift_fraction=0.0, amplitude=(0.4, 1.0), me_free_fraction=1 / 6, noise_std=1.0)
HEAD = {"drift_fraction": 1.0, "max_rotation_deg": 2.0, "max_scale_change": 0.02, "max_drift_px": 3.0, "head_sway": True}

CONDITIONS: dict[str, dict] = {
    "clean": {},
    "jpeg q85": {"jpeg_quality": 85},
    "h264": {"fmt": "video", "codec": "h264", "crf": 18},
    "blinks": {"blink_rate": 1.0, "blink_during_me": 0.5},
    "rotation/scale": HEAD,
    "flicker": {"flicker": 0.03},
    "small faces": {"iod_range": (50.0, 65.0), "place_anywhere": True},
    "amp 0.2-0.4": {"amplitude": (0.2, 0.4)},
    "amp 0.4-0.7": {"amplitude": (0.4, 0.7)},
    "amp 0.7-1.0": {"amplitude": (0.7, 1.0)},
    "combined": {"jpeg_quality": 85, "blink_rate": 0.7, "blink_during_me": 0.5, **HEAD, "flicker": 0.03,
                 "iod_range": (50.0, 120.0), "place_anywhere": True, "amplitude": (0.2, 1.0)},
}
# Planted AUs weaker than this count neither way (au_recovery); the weakest bin is scored on all.
MIN_PX = {"amp 0.2-0.4": 0.2}
GOAL_MIN_PX = 0.4


def condition_config(name: str, identities: tuple[str, ...], n_frames: int = BASE.n_frames) -> SynthConfig:
    if name not in CONDITIONS:
        raise ValueError(f"unknown condition {name!r}; known: {', '.join(CONDITIONS)}")
    return replace(BASE, identities=tuple(identities), n_frames=n_frames, **CONDITIONS[name])


def clip_source(clip: SynthClip) -> str:
    return clip.frames_dir or clip.video


def score(pairs: list[tuple[SynthClip, object]], min_px: float = GOAL_MIN_PX) -> dict:
    """AU micro-F1 / precision / recall over ME clips (planted AUs >= min_px), apex within +-2
    frames (ME clips whose strongest AU reaches min_px), and the share of ME-free clips with
    any AU reported. `pairs`: (clip, Evidence)."""
    tp = fp = fn = hits = timed = 0
    free = free_with_au = 0
    for clip, ev in pairs:
        found = {a.au for a in ev.aus}
        if clip.me_free:
            free += 1
            free_with_au += bool(found)
            continue
        a, b, c = au_recovery(clip, found, min_px)
        tp, fp, fn = tp + a, fp + b, fn + c
        if max(x["amplitude_px"] for x in clip.aus) >= min_px:
            timed += 1
            hits += abs(ev.apex_frame - clip.apex_frame) <= 2
    return {
        "f1": round(2 * tp / max(1, 2 * tp + fp + fn), 3), "precision": round(tp / max(1, tp + fp), 3),
        "recall": round(tp / max(1, tp + fn), 3), "apex_pm2": round(hits / max(1, timed), 3),
        "false_au_rate": round(free_with_au / free, 3) if free else None,
        "tp": tp, "fp": fp, "fn": fn, "me_clips": timed, "me_free_clips": free,
    }
