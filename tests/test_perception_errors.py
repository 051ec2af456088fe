"""Bad input gets a clear error type and a message naming the file or value; the CLI exits 2."""

from __future__ import annotations

import subprocess
import sys

import cv2
import numpy as np
import pytest

from mellm.analyze import analyze_clip
from mellm.errors import ClipNotFoundError, EmptyClipError, FrameRangeError, NoFaceError, UnreadableClipError


@pytest.fixture
def clip_dir(synth_videos):
    root, clips = synth_videos
    return root / clips[0].frames_dir, clips[0]


def test_missing_file(tmp_path):
    with pytest.raises(ClipNotFoundError, match="missing.mp4"):
        analyze_clip(tmp_path / "missing.mp4")


def test_unreadable_video(tmp_path):
    bad = tmp_path / "garbage.mp4"
    bad.write_bytes(np.random.default_rng(0).bytes(4096))
    with pytest.raises(UnreadableClipError, match="garbage.mp4"):
        analyze_clip(bad)


def test_empty_video_file(tmp_path):
    (tmp_path / "empty.avi").write_bytes(b"")
    with pytest.raises(EmptyClipError, match="empty.avi"):
        analyze_clip(tmp_path / "empty.avi")


def test_empty_frame_folder(tmp_path):
    (tmp_path / "notes.txt").write_text("no frames here")
    with pytest.raises(EmptyClipError, match="no frames"):
        analyze_clip(tmp_path)


def test_unreadable_frame(tmp_path):
    (tmp_path / "img1.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(UnreadableClipError, match="img1.jpg"):
        analyze_clip(tmp_path)


def test_no_face(tmp_path):
    for i in range(1, 4):
        cv2.imwrite(str(tmp_path / f"img{i}.png"), np.full((240, 320, 3), 128, np.uint8))
    with pytest.raises(NoFaceError, match="no face found in onset frame 1"):
        analyze_clip(tmp_path, apex=2)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"onset": 0}, "onset frame 0 is out of range"),
        ({"onset": 999}, "onset frame 999 is out of range"),
        ({"onset": 1, "apex": 999}, "apex frame 999 is out of range"),
        ({"onset": 5, "apex": 3}, "apex frame 3 is not after onset frame 5"),
        ({"onset": 5, "apex": 5}, "apex frame 5 is not after onset frame 5"),
        ({"onset": 5, "offset": 4}, "offset frame 4 is not after onset frame 5"),
        ({"onset": 2, "apex": 9, "offset": 6}, "apex frame 9 is after offset frame 6"),
    ],
)
def test_bad_frame_ranges(clip_dir, kwargs, message):
    path, _ = clip_dir
    with pytest.raises(FrameRangeError, match=message):
        analyze_clip(path, **kwargs)


def test_cli_reports_bad_input_without_traceback(tmp_path):
    run = subprocess.run([sys.executable, "-m", "mellm.cli", "analyze", str(tmp_path / "nope.mp4"), "--out", str(tmp_path / "o")],
                         capture_output=True, text=True)
    assert run.returncode == 2
    assert "error: clip not found" in run.stderr and "nope.mp4" in run.stderr
    assert "Traceback" not in run.stderr


def test_cli_analyze_writes_outputs(clip_dir, tmp_path):
    import json

    path, clip = clip_dir
    out = tmp_path / "analysis"
    run = subprocess.run([sys.executable, "-m", "mellm.cli", "analyze", str(path), "--onset", str(clip.onset_frame),
                          "--apex", str(clip.apex_frame), "--flow", "dis", "--out", str(out)],
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    evidence = json.loads((out / "evidence.json").read_text())
    assert evidence["flow_method"] == "dis" and evidence["apex_frame"] == clip.apex_frame
    assert (out / "description.txt").read_text().strip() == evidence["description"]
    assert evidence["description"] in run.stdout
    flow_png = cv2.imread(str(out / "flow.png"))
    assert flow_png is not None and flow_png.shape[1] == 256 and flow_png.shape[0] > 256  # map + legend


def test_cli_synth_writes_lossless_clips_and_labels(tmp_path):
    import json

    run = subprocess.run([sys.executable, "-m", "mellm.cli", "synth", "--out", str(tmp_path), "--n", "2", "--seed", "4",
                          "--frames", "8", "--size", "320x240", "--format", "both"], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    labels = [json.loads(line) for line in (tmp_path / "labels.jsonl").read_text().splitlines()]
    assert len(labels) == 2
    for c in labels:
        assert (tmp_path / c["video"]).is_file() and (tmp_path / c["frames_dir"] / "img8.png").is_file()
        assert c["aus"] and c["coarse"] in ("negative", "positive", "surprise") and c["onset_frame"] < c["apex_frame"]


def test_unknown_perception_settings_are_refused_up_front():
    from mellm.analyze import PerceptionSettings
    from mellm.errors import ConfigError

    with pytest.raises(ConfigError, match="flow='raft'.*dis, farneback, meflownet, tvl1"):
        PerceptionSettings(flow="raft")
    with pytest.raises(ConfigError, match="head_motion='rigid'"):
        PerceptionSettings(head_motion="rigid")
