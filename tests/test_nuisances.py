"""Recording nuisances (mellm.nuisances) and the synthetic corpus that uses them (mellm synth)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from mellm import nuisances as nz
from mellm.synth import SynthConfig, clip_base, generate_corpus, render_frame


def test_blink_closes_and_reopens():
    b = [{"start": 10, "close": 10, "hold": 4, "reopen": 20, "depth": 0.9}]
    c = [nz.blink_closure(f, b) for f in range(0, 50)]
    assert c[10] == 0 and c[49] == 0 and c[44] == 0
    assert max(c) == pytest.approx(0.9) and c[20] == pytest.approx(0.9) and c[23] == pytest.approx(0.9)
    assert all(x <= y for x, y in zip(c[10:21], c[11:21]))  # closing is monotone
    assert 0 < c[35] < 0.9


def test_blinks_fall_inside_the_me_when_asked():
    rng = np.random.default_rng(0)
    starts = [nz.sample_blinks(rng, 60, 200, 1.0, during=(20, 40), during_share=1.0)[0]["start"] for _ in range(50)]
    assert all(20 - 17 <= s < 40 for s in starts)


def test_head_pose_starts_at_rest_and_sways():
    rng = np.random.default_rng(1)
    head = nz.sample_head(rng, 3.0, 2.0, 0.02, sway=True)
    assert nz.head_pose(0.0, head) == pytest.approx((0, 0, 0, 1))
    dx = np.array([nz.head_pose(t, head)[0] for t in np.linspace(0, 1, 41)])
    steps = np.diff(dx)
    assert steps.std() > 0.1 * np.abs(steps).mean()  # not a constant drift
    linear = {k: v for k, v in head.items() if k != "sway"}
    assert np.diff([nz.head_pose(t, linear)[0] for t in np.linspace(0, 1, 11)]) == pytest.approx(head["dx"] / 10)


def test_pose_matrix_turns_about_the_face_centre():
    m = nz.pose_matrix((1.0, -2.0, 3.0, 1.02), (300.0, 200.0))
    assert m @ [300, 200, 1] == pytest.approx([301, 198])
    assert np.degrees(np.arctan2(m[1, 0], m[0, 0])) == pytest.approx(3.0)
    assert np.hypot(m[0, 0], m[1, 0]) == pytest.approx(1.02)


def test_flicker_is_deterministic_and_varies():
    f = nz.sample_flicker(np.random.default_rng(2), 0.03)
    gains = [nz.flicker_gain(i, 200.0, f)[0] for i in range(1, 41)]
    assert gains == [nz.flicker_gain(i, 200.0, f)[0] for i in range(1, 41)]
    assert 0.005 < np.std(gains) < 0.05 and nz.flicker_gain(5, 200.0, None) == (1.0, 0.0)
    img = np.full((4, 8, 3), 100.0, np.float32)
    out = nz.apply_flicker(img, 1.1, 0.5)
    assert out[0, 0, 0] < 110 < out[0, -1, 0]


def test_lossy_coding_changes_pixels_a_little(tmp_path):
    rng = np.random.default_rng(3)
    img = np.clip(rng.normal(128, 30, (64, 96, 3)), 0, 255).astype(np.uint8)
    q85 = nz.jpeg_roundtrip(img, 85)
    err = np.abs(q85.astype(float) - img).mean()
    assert 0.5 < err < 20 and err < np.abs(nz.jpeg_roundtrip(img, 30).astype(float) - img).mean()
    from mellm.video import open_clip

    w = nz.H264Writer(tmp_path / "v.mp4", 96, 64, 200.0, crf=18)
    for _ in range(5):
        w.write(img)
    w.close()
    clip = open_clip(tmp_path / "v.mp4")
    assert clip.n_frames == 5 and clip.read(3).shape == img.shape
    assert 0 < np.abs(clip.read(3).astype(float) - img).mean() < 20
    with pytest.raises(ValueError, match="even frame size"):
        nz.H264Writer(tmp_path / "odd.mp4", 95, 64, 200.0)


@pytest.fixture(scope="module")
def nuisance_corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("nuis")
    cfg = SynthConfig(n_frames=10, width=320, height=240, identities=("hopper-0", "astronaut-1"), iod_range=(50, 60),
                      place_anywhere=True, jpeg_quality=85, blink_rate=1.0, head_sway=True, drift_fraction=1.0,
                      flicker=0.03, me_free_fraction=0.5)
    return root, generate_corpus(root, n=4, seed=8, config=cfg)


def test_labels_record_every_nuisance(nuisance_corpus):
    root, clips = nuisance_corpus
    rows = [json.loads(line) for line in (root / "labels.jsonl").read_text().splitlines()]
    assert {r["subject"] for r in rows} <= {"hopper-0", "astronaut-1"}
    for r, c in zip(rows, clips):
        n = r["nuisances"]
        assert n["jpeg_quality"] == 85 and n["blinks"] and n["flicker"]["amplitude"] == 0.03
        assert "sway" in r["head"] and 50 <= r["base"]["iod"] <= 60
        assert sorted(p.suffix for p in (root / c.frames_dir).iterdir()) == [".jpg"] * 10
    free = [c for c in clips if c.me_free]
    assert free and all(c.aus == [] and c.bumps == [] and c.coarse == "none" for c in free)
    assert any(not c.me_free for c in clips)


def test_a_blink_changes_the_eyes_not_the_mouth(nuisance_corpus):
    _, clips = nuisance_corpus
    clip = clips[0]
    base, lm = clip_base(clip)
    frame = 30
    shut = dict(clip.__dict__, nuisances={"blinks": [{"start": frame - 12, "close": 10, "hold": 4, "reopen": 20, "depth": 1.0}]},
                head={"dx": 0, "dy": 0, "rot_deg": 0, "scale": 1}, noise_std=0.0, aus=[], n_frames=60,
                onset_frame=1, apex_frame=2, offset_frame=3)
    still = dict(shut, nuisances={})
    field = np.zeros(base.shape[:2] + (2,), np.float32)
    a = render_frame(type(clip)(**shut), frame, base, field, np.random.default_rng(0), lm).astype(float)
    b = render_frame(type(clip)(**still), frame, base, field, np.random.default_rng(0), lm).astype(float)
    diff = np.abs(a - b).sum(-1)

    def box(points, pad=3):
        x0, y0 = points.min(0).astype(int) - pad
        x1, y1 = points.max(0).astype(int) + pad
        return diff[y0:y1, x0:x1].mean()

    assert box(lm[36:42]) > 20 and box(lm[42:48]) > 20
    assert box(lm[48:60]) < 1


def test_synthetic_adapter_records_me_free_clips(nuisance_corpus):
    from mellm.data_builders.synthetic import load

    root, clips = nuisance_corpus
    loaded = load(root)
    free = [c for c in clips if c.me_free]
    assert len(loaded.records) == len(clips) - len(free)
    assert [f.reason for f in loaded.failures] == ["no_expression"] * len(free)


def test_synth_cli_rejects_bad_nuisance_options(tmp_path):
    from typer.testing import CliRunner

    from mellm.cli import app

    for args, message in ((["--amplitude", "1-0.2"], "LOW is above HIGH"), (["--identities", "nobody"], "unknown face identity"),
                          (["--iod", "50-120"], "need --identities"), (["--codec", "vp9"], "unknown codec")):
        result = CliRunner().invoke(app, ["synth", "--out", str(tmp_path / "x"), "--n", "1", *args])
        assert result.exit_code == 2 and message in result.output, result.output
