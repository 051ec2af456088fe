"""What a careless dataset or a killed build must not break (issue 11, items 3-5): an unreadable
clip folder is one recorded failure, not an aborted build; repeated or contradicting annotation
rows never become duplicate sample ids; SIGKILLing `build-data --workers 2` leaves no process."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mellm.analyze import PerceptionSettings
from mellm.data_builders.build import BuildConfig, build
from mellm.synth import SynthConfig, generate_corpus

SMALL = SynthConfig(n_frames=8, width=320, height=240, face_iod=60, n_subjects=2)


def _without_read_override(cmd: list[str]) -> list[str]:
    """Run `cmd` so that file modes bind it: root reads everything unless it drops the two capabilities
    that override them. It stays root (so it still reads a checkout under a private temp dir, as a fresh
    clone in `mktemp -d` is) but can no longer open a folder whose mode is 000."""
    if os.geteuid() != 0:
        return cmd
    if not shutil.which("setpriv"):
        pytest.skip("running as root and setpriv is missing: cannot drop read rights")
    return ["setpriv", "--bounding-set=-dac_override,-dac_read_search", "--", *cmd]


def test_an_unreadable_clip_folder_is_a_recorded_failure_and_the_build_goes_on(tmp_path):
    root, out = tmp_path / "clips", tmp_path / "out"
    clips = generate_corpus(root, n=3, seed=4, config=SMALL)
    locked = root / clips[1].frames_dir
    os.chmod(locked, 0o000)
    try:
        cmd = [sys.executable, "-m", "mellm.cli", "build-data", "--dataset", "synth", "--root", str(root),
               "--out", str(out), "--flow", "dis", "--no-exports"]
        run = subprocess.run(_without_read_override(cmd), capture_output=True, text=True, timeout=600)
    finally:
        os.chmod(locked, 0o755)  # so that pytest can clean tmp_path up
    assert run.returncode == 0, run.stderr[-3000:]
    assert "Traceback" not in run.stderr
    [failure] = [json.loads(line) for line in (out / "failures.jsonl").read_text().splitlines()]
    assert failure["clip"].endswith(clips[1].clip_id) and failure["reason"] == "unreadable"
    assert "Permission denied" in failure["message"] and str(locked) in failure["message"]
    built = json.loads((out / "build.json").read_text())["counts"]
    assert built["built"] == 2 and built["failed"] == 1


def test_repeated_rows_are_kept_once_and_contradicting_rows_are_refused(tmp_path):
    root = tmp_path / "clips"
    clips = generate_corpus(root, n=3, seed=8, config=SMALL)
    lines = (root / "labels.jsonl").read_text().splitlines()
    same = json.loads(lines[0])
    other = json.loads(lines[1])
    other["fine"] = "happiness" if other["fine"] != "happiness" else "disgust"
    other["coarse"] = "positive" if other["fine"] == "happiness" else "negative"
    (root / "labels.jsonl").write_text("\n".join([*lines, json.dumps(same), json.dumps(other)]) + "\n")

    summary = build(BuildConfig(datasets=[("synth", root)], out=tmp_path / "out", perception=PerceptionSettings(flow="dis"),
                                exports=False, progress=False))
    assert summary.built == 2  # clip 0 once, clip 2; clip 1 has two contradicting rows
    [conflict] = [f for f in summary.failures if f.reason == "conflicting_annotation"]
    assert conflict.clip == f"{clips[1].subject}/{clips[1].clip_id}" and conflict.stage == "annotation"
    assert "coarse, fine" in conflict.message
    record = json.loads((tmp_path / "out" / "build.json").read_text())
    assert any("2 identical annotation rows, kept once" in n for n in record["notes"])
    ids, clip_ids = [], set()
    for split in (tmp_path / "out" / "jsonl").glob("*.jsonl"):
        for line in split.read_text().splitlines():
            row = json.loads(line)
            ids.append(row["id"])
            clip_ids.add(row["clip_id"])
    assert len(ids) == len(set(ids)) and clip_ids == {clips[0].clip_id, clips[2].clip_id}


def _children(pid: int) -> dict[int, str]:
    out = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            if ppid == pid:
                out[int(entry)] = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except (OSError, ValueError, IndexError):
            pass
    return out


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.slow
def test_sigkilled_build_leaves_no_workers_and_no_resource_tracker(tmp_path):
    root = tmp_path / "clips"
    generate_corpus(root, n=24, seed=6, config=SynthConfig(n_frames=24, width=320, height=240, face_iod=60))
    proc = subprocess.Popen([sys.executable, "-m", "mellm.cli", "build-data", "--dataset", "synth", "--root", str(root),
                             "--out", str(tmp_path / "out"), "--workers", "2", "--flow", "tvl1"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline, kids = time.time() + 120, {}
        while time.time() < deadline:
            kids = _children(proc.pid)
            if sum("spawn_main" in c for c in kids.values()) == 2 and any("resource_tracker" in c for c in kids.values()):
                break
            assert proc.poll() is None, "the build ended before its workers started"
            time.sleep(0.2)
        assert sum("spawn_main" in c for c in kids.values()) == 2, kids
        assert any("resource_tracker" in c for c in kids.values()), kids
        time.sleep(1.0)  # workers busy with a clip
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    deadline = time.time() + 10
    while time.time() < deadline and any(_alive(p) for p in kids):
        time.sleep(0.1)
    left = {p: c for p, c in kids.items() if _alive(p)}
    for p in left:  # do not leave them to the next test either
        os.kill(p, signal.SIGKILL)
    assert not left, f"still running 10 s after the build was SIGKILLed: {left}"
