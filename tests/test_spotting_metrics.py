"""Spotting and ME-LVQA metrics equal hand-computed values on small cases."""

import json

import pytest

from mellm.eval.spotting import Interval, iou, load_intervals, match, save_intervals, spotting_metrics
from mellm.jsonl import InputFileError


def test_iou_inclusive_frames():
    a, b = Interval("v", 1, 10), Interval("v", 6, 15)
    assert iou(a, b) == pytest.approx(5 / 15)  # frames 6..10 shared, 1..15 in all
    assert iou(a, a) == 1.0
    assert iou(Interval("v", 1, 5), Interval("v", 6, 9)) == 0.0


def test_matching_is_one_to_one_and_takes_the_best_pair_first():
    truth = [Interval("v", 10, 20), Interval("v", 12, 22)]
    spotted = [Interval("v", 12, 22)]  # IoU 1.0 with the second, 9/13 with the first
    assert match(truth, spotted) == [(1, 0, 1.0)]
    assert match(truth, [Interval("w", 12, 22)]) == []  # other video


def test_spotting_metrics_hand_computed():
    truth = [Interval("a", 10, 20, "micro"), Interval("a", 100, 160, "macro"), Interval("b", 5, 12, "micro")]
    spotted = [
        Interval("a", 11, 21, "micro"),  # IoU 10/12 -> TP (micro)
        Interval("a", 100, 130, "macro"),  # IoU 31/61 = 0.508 -> TP (macro)
        Interval("a", 300, 310, "micro"),  # FP
        Interval("b", 9, 20, "micro"),  # IoU 4/16 -> FP, and truth b misses
    ]
    m = spotting_metrics(truth, spotted)
    assert (m.overall.tp, m.overall.fp, m.overall.fn) == (2, 2, 1)
    assert m.overall.precision == pytest.approx(0.5) and m.overall.recall == pytest.approx(2 / 3)
    assert m.overall.f1 == pytest.approx(4 / 7)
    assert (m.per_type["micro"].tp, m.per_type["micro"].fp, m.per_type["micro"].fn) == (1, 2, 1)
    assert m.per_type["macro"].f1 == 1.0
    assert m.per_video["b"].f1 == 0.0 and m.n_videos == 2
    # a macro spotted as micro counts overall, not per type
    m2 = spotting_metrics([Interval("a", 100, 160, "macro")], [Interval("a", 100, 160, "micro")])
    assert m2.overall.f1 == 1.0 and m2.per_type["macro"].fn == 1 and m2.per_type["micro"].fp == 1


def test_intervals_round_trip_and_bad_lines(tmp_path):
    items = [Interval("a", 1, 9, "micro", 0.5), Interval("b", 3, 90, "macro")]
    save_intervals(tmp_path / "i.jsonl", items)
    assert load_intervals(tmp_path / "i.jsonl") == items
    (tmp_path / "bad.jsonl").write_text(json.dumps({"video": "a", "onset": 3}) + "\n")
    with pytest.raises(InputFileError, match=r"bad.jsonl:1: missing field 'offset'"):
        load_intervals(tmp_path / "bad.jsonl")
    (tmp_path / "rev.jsonl").write_text(json.dumps({"video": "a", "onset": 9, "offset": 3}) + "\n")
    with pytest.raises(InputFileError, match="before onset"):
        load_intervals(tmp_path / "rev.jsonl")


def test_lvqa_figures_hand_computed(tmp_path):
    from mellm.eval.report import markdown
    from mellm.eval.score import score_files

    rows = [  # MEGC 2026 rows: video_id, no dataset field
        ("samm_test_v1_1", "How many expression events appear in this video?", "3", "5"),
        ("samm_test_v1_2", "How many micro-expression events appear in this video?", "2", "2"),
        ("samm_test_v1_3", "How many macro-expression events appear in this video?", "1", "none"),
        ("samm_test_v1_4", "What distinct action units appear in this video?", "AU4, AU7, AU12", "AU4, AU12, AU15"),
        ("samm_test_v1_5", "What is the expression type of the 1-th expression event in this video?", "micro-expression", "micro"),
        ("samm_test_v1_6", "What is the expression type of the 33-th expression event in this video?", "macro-expression", "micro"),
        ("casme3_test_dzw_a1_1", "What is the expression type of the 2-th expression event in this video?", "micro-expression", "micro"),
    ]
    q = tmp_path / "q.jsonl"
    q.write_text("".join(json.dumps({"video_id": i, "video": "v1", "question": t, "answer": a}) + "\n" for i, t, a, _ in rows))
    p = tmp_path / "p.jsonl"
    p.write_text("".join(json.dumps({"id": i, "answer": pr}) + "\n" for i, _, _, pr in rows))
    r = score_files(q, p)
    # counts: errors 2, 0, 1 -> exact 1/3, MAE 1, RMSE sqrt(5/3)
    assert r.lv_count.accuracy == pytest.approx(1 / 3)
    assert r.lv_count.mae == pytest.approx(1.0)
    assert r.lv_count.rmse == pytest.approx((5 / 3) ** 0.5)
    # AU sets {4,7,12} vs {4,12,15}: F1 2*2/6, Jaccard 2/4
    assert r.lv_aus.mean_set_f1 == pytest.approx(2 / 3) and r.lv_aus.mean_jaccard == pytest.approx(0.5)
    # types: micro->micro x2, macro->micro: micro F1 2*2/(4+1)=0.8, macro F1 0 -> UF1 0.4; UAR (1+0)/2
    assert r.lv_event_type.accuracy == pytest.approx(2 / 3)
    assert r.lv_event_type.uf1 == pytest.approx(0.4) and r.lv_event_type.uar == pytest.approx(0.5)
    md = markdown(r)
    for row in ("event count: RMSE", "distinct AUs: mean Jaccard", "k-th event type: UF1 / UAR"):
        assert row in md
    from mellm.megc import load_questions

    assert {row.dataset for row in load_questions(q).rows} == {"samm", "casme3"}


@pytest.mark.parametrize("text,qtype,extra", [
    ("How many expression events appear in this video?", "lv_count", {"event_kind": "all"}),
    ("How many micro-expression events appear in this video?", "lv_count", {"event_kind": "micro"}),
    ("How many macro-expression events appear in this video?", "lv_count", {"event_kind": "macro"}),
    ("What distinct action units appear in this video?", "lv_aus", {}),
    ("What is the expression type of the 5-th expression event in this video?", "lv_event_type", {"k": 5}),
    ("What is the expression type of the 33-th expression event in this video?", "lv_event_type", {"k": 33}),
    ("Please analyse the micro-expression shown in this video in detail.", "analysis", {}),
    ("Provide a detailed analysis of the micro-expression observed in this clip.", "analysis", {}),
    ("Provide a comprehensive analysis of the facial micro-expression shown in this clip.", "analysis", {}),
    ("What is the coarse expression class?", "coarse", {}),
    ("What is the fine-grained expression class?", "fine", {}),
])
def test_every_2026_phrasing_is_classified(text, qtype, extra):
    from mellm.vqa import classify_question

    q = classify_question(text)
    assert q.type.value == qtype
    for k, v in extra.items():
        assert getattr(q, k) == v


def test_peer_interval_answer_reads_as_its_count():
    from mellm.answers import parse_answer

    peer = ("2 expression events. 1-th macro-expression: frames 557-608 (apex 572), 18.53s-20.23s; "
            "2-th micro-expression: frames 2854-2871 (apex 2862)")
    assert parse_answer("How many expression events appear in this video?", peer).count == 2
    assert not parse_answer("How many expression events appear in this video?", "3 micro and 2 macro events").parsed
