"""About a hundred hostile or careless command lines: each gets one clear message naming what is
wrong and exit status 2, never a traceback and never output that quietly lies (issue 11, items 9-10).

Run in-process through typer's CliRunner (cheap); one case also runs as a real subprocess."""

from __future__ import annotations

import json
import subprocess
import sys

import cv2
import numpy as np
import pytest
from typer.testing import CliRunner

from mellm.cli import app


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("hostile")
    clip = d / "clip"
    clip.mkdir()
    for i in range(1, 9):
        cv2.imwrite(str(clip / f"img{i}.png"), np.full((64, 64, 3), 90, np.uint8))
    (d / "a_file.txt").write_text("not a folder\n")
    (d / "empty").mkdir()
    (d / "empty.mp4").write_bytes(b"")
    (d / "junk.mp4").write_bytes(b"\x00garbage" * 100)
    deep = "[" * 100_000 + "]" * 100_000
    (d / "deep.jsonl").write_text(deep + "\n")
    (d / "deep_obj.jsonl").write_text('{"a": ' * 50_000 + "1" + "}" * 50_000 + "\n")
    (d / "binary.jsonl").write_bytes(b"\xff\xfe\x00garbage\n")
    (d / "list.jsonl").write_text("[1, 2]\n")
    (d / "q.jsonl").write_text(json.dumps({"id": "1", "dataset": "samm", "question": "What is the coarse expression class?",
                                           "answer": "negative"}) + "\n")
    synth_deep = d / "synth_deep"
    synth_deep.mkdir()
    (synth_deep / "labels.jsonl").write_text(deep + "\n")
    synth_bad = d / "synth_bad"
    synth_bad.mkdir()
    (synth_bad / "labels.jsonl").write_text('{"clip_id": "x"}\n')
    (d / "cfg.yaml").write_text("model: [unclosed\n")
    (d / "cfg_list.yaml").write_text("- 1\n- 2\n")
    (d / "clipmap_deep.json").write_text("[" * 100_000 + "]" * 100_000)
    return d


# (command line with {d} for the fixture folder, a fragment the message must contain)
CASES = [
    # mellm synth
    ("synth --out {d}/s --size abc", "--size 'abc'"),
    ("synth --out {d}/s --size 0x0", "frame width must be"),
    ("synth --out {d}/s --size 640x", "WIDTHxHEIGHT"),
    ("synth --out {d}/s --size x480", "WIDTHxHEIGHT"),
    ("synth --out {d}/s --size 640x480x3", "WIDTHxHEIGHT"),
    ("synth --out {d}/s --size -640x480", "WIDTHxHEIGHT"),
    ("synth --out {d}/s --size 99999999x2", "WIDTHxHEIGHT"),
    ("synth --out {d}/s --size 100000x480", "frame width must be"),
    ("synth --out {d}/s --size 640x10", "frame height must be"),
    ("synth --out {d}/s --size 6.5x4", "WIDTHxHEIGHT"),
    ("synth --out {d}/s --format gif", "unknown format 'gif'"),
    ("synth --out {d}/s --format ''", "unknown format ''"),
    ("synth --out {d}/s --format FRAMES", "unknown format 'FRAMES'"),
    ("synth --out {d}/s --frames 3", "at least 6"),
    ("synth --out {d}/s --frames 0", "at least 6"),
    ("synth --out {d}/s --frames -10", "at least 6"),
    ("synth --out {d}/s --frames 5", "got 5"),
    ("synth --out {d}/s --frames many", "Invalid value for '--frames'"),
    ("synth --out {d}/s --n 0", "at least 1"),
    ("synth --out {d}/s --n -3", "at least 1"),
    ("synth --out {d}/s --drift 2", "drift fraction"),
    ("synth --out {d}/s --drift -0.1", "drift fraction"),
    ("synth --out {d}/s --drift nan", "drift fraction"),
    ("synth --out {d}/s --noise -1", "noise"),
    ("synth --out {d}/s --noise inf", "noise"),
    ("synth --out {d}/s --noise nan", "noise"),
    ("synth --out {d}/a_file.txt", "is a file"),
    ("synth --out /proc/mellm-test-out --n 1 --frames 6 --size 64x64", "/proc/mellm-test-out"),
    ("synth --out {d}/s --seed x", "Invalid value for '--seed'"),
    ("synth", "Missing option '--out'"),
    # mellm analyze
    ("analyze {d}/clip --out {d}/o --fps -5", "fps must be a positive finite number, got -5"),
    ("analyze {d}/clip --out {d}/o --fps nan", "got nan"),
    ("analyze {d}/clip --out {d}/o --fps inf", "got inf"),
    ("analyze {d}/clip --out {d}/o --fps 0", "got 0"),
    ("analyze {d}/clip --out {d}/o --fps -inf", "got -inf"),
    ("analyze {d}/clip --out {d}/o --fps abc", "Invalid value for '--fps'"),
    ("analyze {d}/nope --out {d}/o", "clip not found"),
    ("analyze {d}/empty --out {d}/o", "no frames"),
    ("analyze {d}/empty.mp4 --out {d}/o", "video file is empty"),
    ("analyze {d}/junk.mp4 --out {d}/o", "cannot read video"),
    ("analyze {d}/a_file.txt --out {d}/o", "a_file.txt"),
    ("analyze {d}/clip --out {d}/o --onset 0", "onset frame 0 is out of range"),
    ("analyze {d}/clip --out {d}/o --onset 99", "onset frame 99 is out of range"),
    ("analyze {d}/clip --out {d}/o --onset -1", "onset frame -1 is out of range"),
    ("analyze {d}/clip --out {d}/o --apex 999", "apex frame 999 is out of range"),
    ("analyze {d}/clip --out {d}/o --onset 5 --apex 3", "is not after onset"),
    ("analyze {d}/clip --out {d}/o --onset 5 --apex 5", "is not after onset"),
    ("analyze {d}/clip --out {d}/o --onset 4 --offset 2", "is not after onset"),
    ("analyze {d}/clip --out {d}/o --onset 2 --apex 7 --offset 5", "apex frame 7"),
    ("analyze {d}/clip --out {d}/o --flow raft9", "raft9"),
    ("analyze {d}/clip --out {d}/o --flow ''", "flow"),
    ("analyze {d}/clip --out {d}/a_file.txt", "is a file"),
    ("analyze {d}/clip --out {d}/o --onset x", "Invalid value for '--onset'"),
    ("analyze {d}/clip", "Missing option '--out'"),
    # mellm build-data
    ("build-data --dataset synth --root {d}/synth_deep --out {d}/b", "nested too deeply"),
    ("build-data --dataset synth --root {d}/synth_bad --out {d}/b", "labels.jsonl:1"),
    ("build-data --dataset synth --root {d}/empty --out {d}/b", "no labels.jsonl"),
    ("build-data --dataset synth --root {d}/nope --out {d}/b", "is not a folder"),
    ("build-data --dataset synth --root {d}/a_file.txt --out {d}/b", "is not a folder"),
    ("build-data --dataset casme9 --root {d}/empty --out {d}/b", "unknown dataset 'casme9'"),
    ("build-data --dataset synth --root {d}/synth_bad --out {d}/a_file.txt", "is a file"),
    ("build-data --dataset synth --root {d}/synth_bad --out {d}/b --limit 0", "Invalid value for '--limit'"),
    ("build-data --dataset synth --root {d}/synth_bad --out {d}/b --limit -2", "Invalid value for '--limit'"),
    ("build-data --dataset synth --root {d}/synth_bad --out {d}/b --workers 0", "Invalid value for '--workers'"),
    ("build-data --dataset synth --root {d}/synth_bad --out {d}/b --negatives -1", "Invalid value for '--negatives'"),
    ("build-data --dataset synth --root {d}/synth_bad --out {d}/b --images onset,smile", "unknown image role(s) smile"),
    ("build-data --dataset synth --root {d}/synth_bad --out {d}/b --flow magic", "magic"),
    ("build-data --dataset synth --dataset samm --root {d}/synth_bad --out {d}/b", "one --root per --dataset"),
    ("build-data --dataset synth --root {d}/synth_bad --out {d}/b --questions {d}/q.jsonl", "only applies to --dataset megc"),
    ("build-data --dataset megc --root {d}/empty --out {d}/b --questions {d}/deep.jsonl", "nested too deeply"),
    ("build-data --dataset casme2 --root {d}/empty --out {d}/b", "no CASME II annotation file"),
    ("build-data --dataset samm --root {d}/empty --out {d}/b", "no SAMM annotation file"),
    ("build-data --root {d}/empty --out {d}/b", "Missing option '--dataset'"),
    # mellm eval score / run
    ("eval score --questions {d}/deep.jsonl --predictions {d}/q.jsonl --out {d}/e", "nested too deeply"),
    ("eval score --questions {d}/deep_obj.jsonl --predictions {d}/q.jsonl --out {d}/e", "deep_obj.jsonl"),
    ("eval score --questions {d}/nope.jsonl --predictions {d}/q.jsonl --out {d}/e", "no such file"),
    ("eval score --questions {d}/empty --predictions {d}/q.jsonl --out {d}/e", "is a directory"),
    ("eval score --questions {d}/binary.jsonl --predictions {d}/q.jsonl --out {d}/e", "binary.jsonl"),
    ("eval score --questions {d}/list.jsonl --predictions {d}/q.jsonl --out {d}/e", "list.jsonl"),
    ("eval score --questions {d}/q.jsonl --predictions {d}/nope.jsonl --out {d}/e", "no such file"),
    ("eval score --questions {d}/q.jsonl --predictions {d}/q.jsonl --out {d}/a_file.txt", "a_file.txt"),
    ("eval run --questions {d}/deep.jsonl --media-root {d} --endpoint http://127.0.0.1:9 --model m --out {d}/r",
     "nested too deeply"),
    ("eval run --questions {d}/q.jsonl --media-root {d}/nope --endpoint http://127.0.0.1:9 --model m --out {d}/r",
     "nope"),
    ("eval run --questions {d}/q.jsonl --media-root {d} --endpoint http://127.0.0.1:9 --model m --out {d}/r "
     "--concurrency 0", "Invalid value for '--concurrency'"),
    ("eval run --questions {d}/q.jsonl --media-root {d} --endpoint http://127.0.0.1:9 --model m --out {d}/r "
     "--timeout 0", "Invalid value for '--timeout'"),
    ("eval run --questions {d}/q.jsonl --media-root {d} --endpoint http://127.0.0.1:9 --model m --out {d}/r "
     "--clip-map {d}/clipmap_deep.json", "nested too deeply"),
    ("eval run --questions {d}/q.jsonl --media-root {d} --endpoint http://127.0.0.1:9 --model m --out {d}/r "
     "--clip-map {d}/nope.json", "nope.json"),
    # training, models, serving
    ("train --config {d}/cfg.yaml", "cfg.yaml"),
    ("train --config {d}/cfg_list.yaml", "cfg_list.yaml"),
    ("train --config {d}/nope.yaml", "nope.yaml"),
    ("tiny-model --out {d}/t --arch gpt9", "gpt9"),
    ("tiny-model --out {d}/a_file.txt", "a_file.txt"),
    ("merge --adapter {d}/nope --out {d}/m", "nope"),
    ("export --adapter {d}/nope --out {d}/x", "nope"),
    ("serve --model {d}/m --adapter broken", "--adapter 'broken'"),
    ("serve --model {d}/m --adapter =x", "expected NAME=DIR"),
    ("--log-level loud synth --out {d}/s", "--log-level 'loud'"),
    ("ask {d}/nope --endpoint http://127.0.0.1:9", "nope"),
    ("demo --clips 0 --out {d}/demo", "clips"),
]


@pytest.mark.parametrize("line, expected", CASES, ids=[c[0][:60] for c in CASES])
def test_a_hostile_command_line_gets_a_clear_message_and_exit_2(files, line, expected):
    import shlex

    args = shlex.split(line.format(d=files))
    result = CliRunner().invoke(app, args)
    output = result.output + (result.stderr if result.stderr_bytes is not None else "")
    assert result.exit_code == 2, (line, result.exit_code, output, result.exception)
    assert not isinstance(result.exception, Exception) or isinstance(result.exception, SystemExit), result.exception
    assert "Traceback" not in output
    assert expected in " ".join(output.split()), (line, output)


def test_there_are_about_a_hundred(files):
    assert len(CASES) >= 95


def test_synth_labels_never_lie_about_timing(tmp_path):
    """The smallest clip synth accepts still has 1 < onset < apex < offset <= frames."""
    result = CliRunner().invoke(app, ["synth", "--out", str(tmp_path), "--n", "3", "--frames", "6", "--size", "96x80"])
    assert result.exit_code == 0, result.output
    for line in (tmp_path / "labels.jsonl").read_text().splitlines():
        c = json.loads(line)
        assert 1 < c["onset_frame"] < c["apex_frame"] < c["offset_frame"] <= c["n_frames"] == 6


def test_a_real_process_prints_one_line_and_exits_2(files):
    run = subprocess.run([sys.executable, "-m", "mellm.cli", "analyze", str(files / "clip"), "--out", str(files / "o"),
                          "--fps", "nan"], capture_output=True, text=True, timeout=120)
    assert run.returncode == 2
    assert run.stderr.strip() == "error: fps must be a positive finite number, got nan" and "Traceback" not in run.stderr
    assert not (files / "o" / "evidence.json").exists()
