"""Perception's blink defences (mellm/robust.py) on small hand-made images: the illumination gain is
not biased by a closing eye once the eyes are left out, a pasted eye is the onset's inside and the
apex's away from it, and the apex image a model is shown keeps the real (blinking) eye. And the
spotting curve's head tracking on a turning head with no ME."""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from mellm import robust
from mellm.analyze import PerceptionSettings, analyze_clip
from mellm.faces import HELD_OUT, TUNING
from mellm.robustness import BASE, clip_source, condition_config
from mellm.synth import generate_corpus


def _scene(seed=0):
    rng = np.random.default_rng(seed)
    onset = rng.uniform(60, 160, (96, 96)).astype(np.uint8)
    face = np.zeros((96, 96), bool)
    face[8:88, 8:88] = True
    eye = np.zeros((96, 96), bool)
    eye[30:42, 20:44] = True
    return onset, face, eye


def test_illumination_gain_ignores_a_closing_eye_when_the_eyes_are_left_out():
    onset, face, eye = _scene()
    apex = np.clip(onset.astype(np.float32) * 0.9, 0, 255).astype(np.uint8)  # the light dims by 10 %
    apex[eye] = 230  # and the eye closes: bright lid skin over the dark iris
    _, with_eye = robust.match_illumination(onset, apex, face)
    _, without = robust.match_illumination(onset, apex, face & ~eye)
    assert abs(without["gain"] - 1 / 0.9) < 0.02
    assert abs(with_eye["gain"] - 1 / 0.9) > 2 * abs(without["gain"] - 1 / 0.9)


def test_paste_eyes_takes_the_onset_inside_and_keeps_the_apex_away_from_it():
    onset, _, eye = _scene()
    apex, _, _ = _scene(seed=1)
    assert robust.paste_eyes(onset, apex, {"L": eye}, [], 2.0) is apex
    out = robust.paste_eyes(onset, apex, {"L": eye, "R": np.zeros_like(eye)}, ["L"], 2.0)
    assert np.abs(out[33:39, 24:40].astype(int) - onset[33:39, 24:40]).max() <= 1
    assert np.array_equal(out[60:, :], apex[60:, :])


def test_a_blinking_clips_apex_image_shows_the_blink(tmp_path):
    cfg = replace(BASE, n_frames=24, identities=(TUNING[2].name,), blink_rate=1.0, blink_during_me=1.0, me_free_fraction=0.0)
    clip = generate_corpus(tmp_path, n=1, seed=11, config=cfg)[0]
    result = analyze_clip(tmp_path / clip_source(clip), onset=clip.onset_frame, apex=clip.apex_frame)
    sides = result.evidence.quality["eyes"]["blink"]
    assert sides, result.evidence.quality["eyes"]
    eyes = robust.eye_masks(result.landmarks, result.onset_crop.shape[0], 0.375 * result.onset_crop.shape[0])
    change = np.abs(result.apex_crop.astype(int) - result.onset_crop)[eyes[sides[0]]].mean()
    assert change > 6.0  # the model sees the closed eye, not the onset's pasted for the flow


def test_spotting_tracks_a_turning_head_so_its_curve_stays_low(tmp_path):
    # No ME, only a head turning up to 3 degrees and drifting 4 px: all the curve shows is what
    # head motion the flow fails to explain. Warping each frame by the motion tracked so far
    # halves it (measured 0.05-0.06 px against 0.09-0.12 untracked); a tracker composing its
    # updates the wrong way round would make it grow instead.
    ids = tuple(i.name for i in HELD_OUT)
    cfg = replace(condition_config("rotation/scale", ids, 24), me_free_fraction=1.0, max_rotation_deg=3.0, max_drift_px=4.0)
    for seed in (1, 3):
        root = tmp_path / str(seed)
        (clip,) = generate_corpus(root, n=1, seed=seed, config=cfg)
        peak = {}
        for track in (False, True):
            ev = analyze_clip(root / clip_source(clip), onset=clip.onset_frame, offset=clip.offset_frame,
                              settings=PerceptionSettings(spot_track=track)).evidence
            peak[track] = max(ev.motion_curve["magnitude"])
        assert peak[True] < 0.75 * peak[False], (seed, peak)
