"""Per-condition floors for perception under recording nuisances (mellm/robustness.py), on a few
clips per condition of held-out identities, so a change that breaks one condition fails here.

The full table (more clips, today's settings beside the new ones) is bench/perception_robustness.py.
"""

from __future__ import annotations

from dataclasses import replace

import pytest

from mellm.analyze import PerceptionSettings, analyze_clip
from mellm.faces import HELD_OUT
from mellm.robustness import CONDITIONS, GOAL_MIN_PX, MIN_PX, clip_source, condition_config, score
from mellm.synth import generate_corpus

pytestmark = pytest.mark.slow  # 11 conditions x 4 clips of 640x480: about 2 minutes on 2 cores

N_ME, FRAMES, SEED = 3, 24, 4242  # seeds apart from the benchmark's (2026) and the tuning runs' (500)
# Floors with room for a few clips' luck; the benchmark's figures are well above them.
# Three ME clips a condition make F1 coarse (one missed AU moves it by ~0.15): the floors catch a
# broken condition (today's settings gave 0.26 under rotation/scale, 0.33 under flicker), not a
# small loss. Measured on this corpus at landing: 0.44 (blinks: a blink during the ME hides
# AU5/AU7) to 0.95. Small faces had their own 0.4 until engine revision 3, when the corpus stopped
# mirroring copies of the face into the frame and dlib's coarse box was refined (this corpus: 0.75 ->
# 0.89; tests/test_faces.py checks both fixes directly).
F1_FLOOR = {"amp 0.2-0.4": 0.3, "blinks": 0.35, "combined": 0.45}
SPOTTED = ("clean", "blinks", "rotation/scale", "small faces", "combined")


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    ids = tuple(i.name for i in HELD_OUT)
    out = {}
    for k, name in enumerate(CONDITIONS):
        root = tmp_path_factory.mktemp(f"cond{k}")
        cfg = condition_config(name, ids, FRAMES)
        clips = generate_corpus(root / "me", n=N_ME, seed=SEED + k, config=replace(cfg, me_free_fraction=0.0))
        clips += generate_corpus(root / "free", n=1, seed=SEED + 100 + k, config=replace(cfg, me_free_fraction=1.0))
        roots = [root / "me"] * N_ME + [root / "free"]
        given = [(c, analyze_clip(r / clip_source(c), onset=c.onset_frame, apex=c.apex_frame).evidence) for r, c in zip(roots, clips)]
        spotted = [(c, analyze_clip(r / clip_source(c), onset=c.onset_frame, offset=c.offset_frame).evidence)
                   for r, c in zip(roots, clips) if not c.me_free] if name in SPOTTED else []
        out[name] = (given, spotted)
    return out


@pytest.mark.parametrize("condition", list(CONDITIONS))
def test_au_floor_per_condition(results, condition):
    given, _ = results[condition]
    s = score(given, MIN_PX.get(condition, GOAL_MIN_PX))
    print(f"\n{condition}: {s}")
    assert s["f1"] >= F1_FLOOR.get(condition, 0.6), s
    assert s["precision"] >= (0.5 if condition in F1_FLOOR else 0.7), s


def test_me_free_clips_get_no_au_and_say_so(results):
    free = [e for given, _ in results.values() for c, e in given if c.me_free]
    assert len(free) == len(CONDITIONS)
    with_au = [e.clip for e in free if e.aus]
    assert len(with_au) <= 2, with_au
    silent = [e for e in free if not e.aus]
    assert all("no micro-expression is evident" in e.description for e in silent)


@pytest.mark.parametrize("condition", SPOTTED)
def test_apex_spotted_per_condition(results, condition):
    _, spotted = results[condition]
    hits = sum(abs(e.apex_frame - c.apex_frame) <= 2 for c, e in spotted)
    assert hits >= len(spotted) - 1, [(c.apex_frame, e.apex_frame) for c, e in spotted]


def test_blinks_are_recognised_and_left_out(results):
    given, _ = results["blinks"]
    seen = [e for c, e in given if e.quality["eyes"]["blink"]]
    for e in seen:
        assert e.quality["excluded_regions"] and all("eyelid" in k for k in e.quality["excluded_regions"])
        assert "blink" in e.description


def test_legacy_settings_reproduce_todays_evidence(results):
    """legacy() is today's perception: no quality defences, the fixed 0.25 px threshold."""
    given, _ = results["clean"]
    clip, ev = given[0]
    old = PerceptionSettings.legacy()
    assert old.noise_floor == 0 and old.pre_align == old.illumination == old.blinks == "none"
    assert ev.settings["au_threshold_px"] == PerceptionSettings().au_threshold_px
