"""Spotting on synthetic long videos with known truth.

Fast: the CLI on a few seconds of video (spots.json, curve.png, per-event Evidence), the interval
logic on hand-made curves, and bad input. Slow: the figures the issue asks for, on held-out
identities (mellm.faces.HELD_OUT), and memory flat in the video's length.
"""

import json
import subprocess
import sys
from fractions import Fraction

import numpy as np
import pytest
from typer.testing import CliRunner

from mellm.cli import app
from mellm.eval.spotting import Interval, spotting_metrics
from mellm.spot import GROUP_NAMES, SpotSettings, intervals_from_curves, spot_video
from mellm.spots import Spots
from mellm.synth_long import LongConfig, generate_long

SMALL = dict(width=320, height=240, face_iod=64.0)


def _metrics(root, videos, settings=None):
    truth, found = [], []
    for v in videos:
        truth += [Interval(v.video_id, e.onset, e.offset, e.type) for e in v.events]
        sp = spot_video(root / v.path, settings)
        found += [Interval(v.video_id, e.onset, e.offset, e.type) for e in sp.events]
    return spotting_metrics(truth, found), found


def test_spot_cli_writes_spots_curve_and_per_event_evidence(tmp_path):
    from mellm.evidence import Evidence

    root = tmp_path / "lv"
    result = CliRunner().invoke(app, ["synth", "--long", "--out", str(root), "--n", "1", "--seconds", "7",
                                      "--rate", "30", "--size", "320x240", "--seed", "4"])
    assert result.exit_code == 0, result.output
    truth = [json.loads(x) for x in (root / "intervals.jsonl").read_text().splitlines()]
    assert len(truth) >= 1 and len((root / "lvqa.jsonl").read_text().splitlines()) == 6
    out = tmp_path / "spot"
    result = CliRunner().invoke(app, ["spot", str(root / "videos" / "lv_000.mkv"), "--out", str(out),
                                      "--truth", str(root / "intervals.jsonl")])
    assert result.exit_code == 0, result.output
    assert "F1 1.000" in result.output
    spots = Spots.load(out / "spots.json")
    assert len(spots.events) == len(truth) and spots.settings["k"] >= 1 and spots.fps == 30.0
    assert (out / "curve.png").stat().st_size > 5000
    ev = Evidence.load(out / spots.events[0].evidence)
    assert ev.onset_frame == spots.events[0].onset and ev.apex_frame == spots.events[0].apex
    assert spots.events[0].onset < spots.events[0].apex <= spots.events[0].offset
    assert spots.summary().startswith(f"{len(truth)} expression event")


def _curves(n=300, seed=0):
    rng = np.random.default_rng(seed)
    return np.abs(rng.normal(0.02, 0.01, (n, len(GROUP_NAMES)))).astype(np.float32)


def test_intervals_hysteresis_blinks_and_talking_on_hand_made_curves():
    s = SpotSettings()
    frames = np.arange(1, 301)
    c = _curves()
    g = GROUP_NAMES.index
    c[100:106, g("mouth corner L")] += 0.8  # a micro-expression: 6 frames, one group
    c[200:206, g("eyelid L")] += 3.0  # a blink: both lids at once
    c[200:206, g("eyelid R")] += 3.0
    t = np.arange(240, 290)  # talking: the chin and lower lip oscillate for 50 frames
    c[240:290, g("chin")] += 0.8 * (1 - np.cos(2 * np.pi * 4 * (t - 240) / 30))
    c[240:290, g("lower lip")] += 0.6 * (1 - np.cos(2 * np.pi * 4 * (t - 240) / 30))
    events, z, score = intervals_from_curves(frames, c, np.zeros(300, np.float32), 30.0, 1, 5, s)
    assert [(e.type, e.regions[0]) for e in events] == [("micro", "mouth corner L")]
    assert 96 <= events[0].onset <= 102 and 102 <= events[0].offset <= 108
    # without the blink rule the blink is an event; without the talking rule the speech is
    events2, *_ = intervals_from_curves(frames, c, np.zeros(300, np.float32), 30.0, 1, 5,
                                        SpotSettings(blink_z=1e9, blink_share=2.0, talking_peaks=10**6))
    assert len(events2) == 3
    # a fast head turn leaves a residual proportional to it: discounted
    c2 = _curves(seed=1)
    head = np.zeros(300, np.float32)
    head[150:170] = 4.0
    c2[150:170] += 0.25
    assert intervals_from_curves(frames, c2, head, 30.0, 1, 5, s)[0] == []
    assert len(intervals_from_curves(frames, c2, np.zeros(300, np.float32), 30.0, 1, 5, s)[0]) == 1


def _write_noise_video(path, n=60, size=(240, 320), fps=30):
    from mellm.synth import _FFV1Writer

    w = _FFV1Writer(path, size[1], size[0], fps)
    rng = np.random.default_rng(0)
    for _ in range(n):
        w.write(rng.integers(100, 140, size + (3,), dtype=np.uint8))
    w.close()


def test_bad_input_no_face_truncated_and_missing(tmp_path):
    from mellm.errors import NoFaceError

    empty = tmp_path / "wall.mkv"
    _write_noise_video(empty)
    with pytest.raises(NoFaceError, match="no face found in any analysed frame of .*wall.mkv"):
        spot_video(empty)
    result = CliRunner().invoke(app, ["spot", str(empty), "--out", str(tmp_path / "o")])
    assert result.exit_code == 2 and "no face found" in result.output and "Traceback" not in result.output
    result = CliRunner().invoke(app, ["spot", str(tmp_path / "nope.mp4"), "--out", str(tmp_path / "o")])
    assert result.exit_code == 2 and "clip not found" in result.output

    # a truncated file: the frames before the cut are analysed, and a note says so
    root = tmp_path / "lv"
    (v,) = generate_long(root, 1, seed=5, config=LongConfig(seconds=4, fps=30, codec="h264", **SMALL))
    data = (root / v.path).read_bytes()
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(data[: len(data) * 2 // 3])
    try:
        spots = spot_video(cut)
    except Exception as e:  # an MP4 cut before its index: unreadable, and said so with the path
        assert "cut.mp4" in str(e)
    else:
        assert spots.n_frames < v.n_frames and any("truncated" in n for n in spots.notes)


def test_variable_frame_rate_is_noted(tmp_path):
    import av

    from mellm.synth_long import _Renderer, sample_video

    cfg = LongConfig(seconds=3, fps=30, no_events=True, **SMALL)
    video = sample_video(0, cfg, np.random.default_rng(0))
    video.placement = {"iod": 64.0}
    r = _Renderer(video)
    path = tmp_path / "vfr.mkv"
    ms = Fraction(1, 1000)
    times = list(np.cumsum([0] + [20 if n % 2 else 47 for n in range(1, 60)]))  # alternating 20 / 47 ms
    with av.open(str(path), "w") as c:
        s = c.add_stream("ffv1", rate=30)
        s.width, s.height, s.pix_fmt = 320, 240, "bgr0"
        rng = np.random.default_rng(0)

        def mux(packets):
            for p in packets:  # the encoder numbers frames at the nominal rate: restamp them
                p.pts = p.dts = int(times.pop(0))
                p.time_base = ms
                c.mux(p)

        for n in range(1, 61):
            mux(s.encode(av.VideoFrame.from_ndarray(r.frame(n, rng), format="rgb24").reformat(format="bgr0")))
        mux(s.encode())
    spots = spot_video(path)
    assert any("variable frame rate" in n for n in spots.notes), spots.notes


# --- the figures the issue asks for (held-out identities) -----------------------------------


@pytest.mark.slow
def test_clean_f1_at_30_and_200_fps_on_held_out_faces(tmp_path):
    videos = generate_long(tmp_path / "a", 2, seed=11, config=LongConfig(seconds=25, fps=30, identity="hopper-2",
                                                                         events_per_minute=12, **SMALL))
    m30, _ = _metrics(tmp_path / "a", videos)
    fast = generate_long(tmp_path / "b", 1, seed=12, config=LongConfig(seconds=8, fps=200, identity="hopper-5",
                                                                       events_per_minute=22, **SMALL))
    m200, _ = _metrics(tmp_path / "b", fast)
    assert m30.overall.tp + m30.overall.fn >= 8 and m200.overall.tp + m200.overall.fn >= 2
    assert m30.overall.f1 >= 0.8, m30.to_dict()
    assert m200.overall.f1 >= 0.8, m200.to_dict()


@pytest.mark.slow
def test_f1_with_every_distractor_on_held_out_faces(tmp_path):
    """Measured 0.75 (6 of 10 events, no false positive) when the blink and codec rules landed."""
    cfg = LongConfig(seconds=30, fps=30, identity="hopper-3", events_per_minute=10, distractors=True, codec="h264",
                     talking_per_minute=3, lighting_per_minute=4, turns_per_minute=6, **SMALL)
    videos = generate_long(tmp_path, 2, seed=21, config=cfg)
    kinds = {d["kind"] for v in videos for d in v.distractors}
    assert kinds >= {"blink", "turn", "talking", "lighting", "drift"}, kinds
    m, _ = _metrics(tmp_path, videos)
    assert m.overall.f1 >= 0.6, m.to_dict()


@pytest.mark.slow
def test_at_most_one_false_positive_a_minute_with_only_blinks_and_head_motion(tmp_path):
    """Measured 1 in the minute (8 before the blink rules saw a blink's whole run of lid motion)."""
    cfg = LongConfig(seconds=30, fps=30, identity="hopper-4", no_events=True, distractors=True, talking_per_minute=0,
                     lighting_per_minute=0, blinks_per_minute=20, turns_per_minute=4, codec="h264", **SMALL)
    videos = generate_long(tmp_path, 2, seed=31, config=cfg)
    assert sum(d["kind"] == "blink" for v in videos for d in v.distractors) >= 10
    _, found = _metrics(tmp_path, videos)
    minutes = sum(v.n_frames / v.fps for v in videos) / 60
    assert len(found) / minutes <= 1.0, found


@pytest.mark.slow
def test_face_lost_for_a_minute_is_a_recorded_gap(tmp_path):
    cfg = LongConfig(seconds=75, fps=10, identity="hopper-6", lost_seconds=60, events_per_minute=3, **SMALL)
    (v,) = generate_long(tmp_path, 1, seed=41, config=cfg)
    spots = spot_video(tmp_path / v.path)
    lost = next(d for d in v.distractors if d["kind"] == "lost")
    assert len(spots.face_gaps) == 1
    a, b = spots.face_gaps[0]
    assert abs(a - lost["start"]) <= 5 and abs(b - lost["end"]) <= 5
    assert all(e.offset < a or e.onset > b for e in spots.events)


_RSS = """
import resource, sys
from mellm.spot import SpotSettings, spot_video
spot_video(sys.argv[1], SpotSettings(max_analysis_fps=float(sys.argv[2]), keep_curve=False))
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def _looped_video(path, seconds, fps=30):
    """A long video made cheaply: a few rendered frames, encoded over and over."""
    from mellm.nuisances import H264Writer
    from mellm.synth_long import _Renderer, sample_video

    video = sample_video(0, LongConfig(seconds=1, fps=fps, events_per_minute=60, **SMALL), np.random.default_rng(0))
    video.placement = {"iod": 64.0}
    r = _Renderer(video)
    rng = np.random.default_rng(0)
    loop = [r.frame(n, rng) for n in range(1, video.n_frames + 1)]
    w = H264Writer(path, 320, 240, fps, 23, preset="veryfast")
    for i in range(int(seconds * fps)):
        w.write(loop[i % len(loop)])
    w.close()


@pytest.mark.slow
def test_memory_is_flat_in_the_video_length(tmp_path):
    short, long_ = tmp_path / "short.mp4", tmp_path / "long.mp4"
    _looped_video(short, 40)
    _looped_video(long_, 200)
    rss = [int(subprocess.run([sys.executable, "-c", _RSS, str(p), "3"], capture_output=True, text=True,
                              check=True).stdout.split()[-1]) for p in (short, long_)]
    # 5x the frames; the allocator settles after ~1000 frames, so allow a small margin only
    assert rss[1] < rss[0] * 1.15 + 8 * 1024, rss
