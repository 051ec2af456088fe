"""The model-free LVQA answerer: one event list answers every question of a video, consistently;
`mellm eval lvqa-baseline` writes a MEGC submission, records unknown videos and scores itself."""

import json

from typer.testing import CliRunner

from mellm.cli import app
from mellm.lvqa import answer_from_events, event_list_text, kth_question, lvqa_questions
from mellm.spots import Spots, SpottedEvent
from mellm.synth_long import LongConfig, generate_long


def _spots():
    ev = [SpottedEvent(10, 14, 20, "micro", 0.7, 20.0, aus=[12]), SpottedEvent(100, 140, 190, "macro", 0.8, 30.0, aus=[4, 7]),
          SpottedEvent(300, 303, 309, "micro", 0.6, 15.0, aus=[12, 14])]
    return Spots("v.mp4", 30.0, 900, 30.0, {}, ev)


def test_one_event_list_answers_every_question_consistently():
    from mellm.answers import parse_answer

    s = _spots()
    answers = {kind: answer_from_events(s, text) for kind, text in lvqa_questions((1, 2, 3, 33))}
    parsed = {kind: parse_answer(text, answers[kind]) for kind, text in lvqa_questions((1, 2, 3, 33))}
    assert parsed["all"].count == parsed["micro"].count + parsed["macro"].count == 3
    assert parsed["aus"].aus == {4, 7, 12, 14}
    assert [parsed[f"k={k}"].event_type for k in (1, 2, 3)] == ["micro", "macro", "micro"]
    assert parsed["k=33"].event_type == "micro"  # past the list: the commoner type
    assert answer_from_events(Spots("v", 30.0, 10, 30.0, {}, []), kth_question(1)) == "No expression event was found."
    text = event_list_text(s)
    assert "2-th macro-expression: frames 100-190 (apex 140)" in text and "3 expression events (2 micro, 1 macro)" in text


def test_lvqa_baseline_cli_writes_a_submission_and_records_unknown_videos(tmp_path):
    root = tmp_path / "lv"
    generate_long(root, 1, seed=4, config=LongConfig(seconds=7, fps=30, width=320, height=240, face_iod=64.0))
    q = tmp_path / "q.jsonl"
    lines = (root / "lvqa.jsonl").read_text().splitlines()
    lines.append(json.dumps({"video_id": "synthlv_test_ghost_1", "video": "ghost",
                             "question": "How many expression events appear in this video?", "answer": "2"}))
    q.write_text("\n".join(lines) + "\n")
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["eval", "lvqa-baseline", "--questions", str(q), "--media-root", str(root / "videos"),
                                      "--out", str(out), "--no-progress"])
    assert result.exit_code == 1, result.output  # one video unknown: answered the rest, said so
    preds = [json.loads(x) for x in (out / "predictions.jsonl").read_text().splitlines()]
    assert len(preds) == 6 and all(p["video"] == "lv_000" and p["answer"] for p in preds)
    fails = [json.loads(x) for x in (out / "failures.jsonl").read_text().splitlines()]
    assert [f["video"] for f in fails] == ["ghost"] and "ghost" in fails[0]["error"]
    report = json.loads((out / "report.json").read_text())
    assert report["lv_count"]["n"] == 4  # 3 of lv_000 + the unanswered ghost (scored as wrong)
    assert report["lv_count"]["per_kind"]["micro"]["accuracy"] == 1.0
    assert "k-th event type: UF1 / UAR" in (out / "report.md").read_text()
    # a rerun reuses the spotted event list
    mtime = (out / "spots").glob("*/spots.json").__next__().stat().st_mtime
    CliRunner().invoke(app, ["eval", "lvqa-baseline", "--questions", str(q), "--media-root", str(root / "videos"),
                             "--out", str(out), "--no-progress"])
    assert next((out / "spots").glob("*/spots.json")).stat().st_mtime == mtime
