"""Scoring end to end on the real MEGC 2025 training file: perfect answers score 1.0, perturbed
answers lose exactly what they should, bad input is reported, not crashed on."""

import json
from collections import Counter
from pathlib import Path

import pytest
from typer.testing import CliRunner

from mellm.eval.report import write_report
from mellm.eval.score import score_files
from mellm.jsonl import InputFileError
from mellm.labels import au_from_name
from mellm.megc import canonical_dataset, load_questions
from mellm.resources import megc_file

DATA = megc_file("me_vqa_samm_casme2_smic.jsonl").parent  # packaged (mellm.resources)
TRAIN = DATA / "me_vqa_samm_casme2_smic.jsonl"


def train_rows():
    return [json.loads(line) for line in TRAIN.read_text().splitlines() if line.strip()]


def write_predictions(path: Path, answers: dict[str, str]) -> Path:
    path.write_text("".join(json.dumps({"id": i, "answer": a}) + "\n" for i, a in answers.items()))
    return path


def perfect() -> dict[str, str]:
    return {r["id"]: r["answer"] for r in train_rows()}


def all_one(report):
    values = [report.coarse.overall.uf1, report.coarse.overall.uar, report.fine.overall.uf1, report.fine.overall.uar,
              report.au.micro_f1, report.au.macro_f1, report.au_yesno.accuracy, report.au_side.accuracy,
              report.combined.au.micro_f1, report.combined.au.macro_f1, report.combined.fine.overall.uf1,
              report.combined.coarse.overall.uar, report.text.bleu4, report.text.rouge1, report.text.rougeL]
    for task in (report.coarse, report.fine, report.combined.fine, report.combined.coarse):
        values += [m.uf1 for m in task.per_dataset.values()] + [m.uar for m in task.per_dataset.values()]
    return values


def test_training_file_against_itself_scores_one_everywhere(tmp_path):
    report = score_files(TRAIN, TRAIN)
    assert all(v == pytest.approx(1.0) for v in all_one(report))
    assert set(report.coarse.per_dataset) == {"samm", "smic"}
    assert report.n_scored == 992
    assert {k: c.scored for k, c in report.counts.items()} == {
        "coarse": 297, "fine": 133, "au_list": 133, "au_yesno": 266, "au_side": 30, "combined": 133}
    assert report.unparsed == report.reference_unparsed == report.missing_predictions == report.issues == []
    paths = write_report(report, tmp_path)
    assert {p.name for p in paths.values()} == {"report.json", "report.md", "confusion_coarse.png", "confusion_fine.png"}
    data = json.loads(paths["json"].read_text())
    assert data["coarse"]["overall"]["uf1"] == 1.0
    assert paths["confusion_fine"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "| coarse | 1.0000 | 1.0000 |" in paths["markdown"].read_text()


def test_flipped_yes_no_answers_drop_accuracy_by_exactly_k_over_n(tmp_path):
    answers = perfect()
    yesno = [r["id"] for r in train_rows() if "shown on the face" in r["question"]]
    for i in yesno[:10]:
        answers[i] = "no" if answers[i] == "yes" else "Yes."
    report = score_files(TRAIN, write_predictions(tmp_path / "p.jsonl", answers))
    assert report.au_yesno.accuracy == pytest.approx((266 - 10) / 266)
    assert report.coarse.overall.uf1 == report.au.micro_f1 == report.au_side.accuracy == 1.0


def test_changed_coarse_answers_give_the_hand_computed_uf1_uar(tmp_path):
    answers = perfect()
    smic_negative = [r["id"] for r in train_rows() if r["dataset"] == "smic" and r["answer"] == "negative"]
    assert len(smic_negative) == 70
    for i in smic_negative[:5]:
        answers[i] = "Positive"
    r = score_files(TRAIN, write_predictions(tmp_path / "p.jsonl", answers))
    # SMIC: negative TP 65 FN 5; positive TP 51 FP 5; surprise 43 untouched
    smic = r.coarse.per_dataset["smic"]
    assert smic.uf1 == pytest.approx((130 / 135 + 102 / 107 + 1) / 3)
    assert smic.uar == pytest.approx((65 / 70 + 1 + 1) / 3)
    assert r.coarse.per_dataset["samm"].uf1 == 1.0
    # pooled: negative 92 + 70 = 162 (TP 157), positive 26 + 51 = 77 (FP 5), surprise 58
    assert r.coarse.overall.uf1 == pytest.approx((314 / 319 + 154 / 159 + 1) / 3)
    assert r.coarse.overall.uar == pytest.approx((157 / 162 + 1 + 1) / 3)
    assert r.fine.overall.uf1 == 1.0


def test_dropped_action_unit_gives_the_exact_f1(tmp_path):
    rows = [r for r in train_rows() if r["question"] in ("What is the action unit?", "What are the action units?")]
    au_counts = Counter(au_from_name(n) for r in rows for n in r["answer"].split(", "))
    target = next(r for r in rows if r["answer"] == "brow lowerer, lid tightener")
    answers = perfect()
    answers[target["id"]] = "brow lowerer"
    r = score_files(TRAIN, write_predictions(tmp_path / "p.jsonl", answers))
    tp = sum(au_counts.values()) - 1
    assert r.au.micro_f1 == pytest.approx(2 * tp / (2 * tp + 1))
    n7 = au_counts[7]
    assert r.au.macro_f1 == pytest.approx((len(au_counts) - 1 + 2 * (n7 - 1) / (2 * (n7 - 1) + 1)) / len(au_counts))


def test_emptied_answer_costs_exactly_one_nth_of_rouge_and_is_listed_unparsed(tmp_path):
    answers = perfect()
    victim = next(r for r in train_rows() if r["dataset"] == "samm" and r["question"].startswith("What is the coarse"))
    answers[victim["id"]] = "I am not sure."
    r = score_files(TRAIN, write_predictions(tmp_path / "p.jsonl", answers))
    assert r.text.rouge1 == pytest.approx(991 / 992)
    assert r.text.rougeL == pytest.approx(991 / 992)
    assert 0 < r.text.bleu4 < 1
    assert [(u.id, u.problem) for u in r.unparsed] == [(victim["id"], "no coarse class stated")]
    assert r.counts["coarse"].unparsed == 1
    assert r.coarse.overall.per_class[victim["answer"]].fn == 1


def test_missing_and_extra_ids_are_reported(tmp_path):
    answers = perfect()
    gone = list(answers)[:3]
    for i in gone:
        del answers[i]
    answers["not_a_question"] = "negative"
    p = write_predictions(tmp_path / "p.jsonl", answers)
    r = score_files(TRAIN, p)
    assert r.missing_predictions == gone
    assert r.extra_predictions == ["not_a_question"]
    assert r.n_scored == 992 and r.coarse.overall.uf1 < 1  # missing answers are wrong
    skipped = score_files(TRAIN, p, skip_missing=True)
    assert skipped.n_scored == 989
    assert all(v == pytest.approx(1.0) for v in all_one(skipped))


def test_malformed_lines_are_reported_with_line_numbers(tmp_path):
    rows = train_rows()[:6]
    questions = tmp_path / "q.jsonl"
    lines = [json.dumps(r) for r in rows]
    lines.insert(2, '{"id": "broken", "question": ')  # line 3
    lines.insert(4, json.dumps({"id": "no_question", "answer": "x"}))  # line 5
    questions.write_text("\n".join(lines) + "\n")
    preds = tmp_path / "p.jsonl"
    preds.write_bytes(b"\n".join([
        json.dumps({"id": rows[0]["id"], "answer": rows[0]["answer"]}).encode(),
        b"not json at all",  # line 2
        b"[1, 2]",  # line 3
        json.dumps({"id": rows[1]["id"]}).encode(),  # line 4: no answer
        json.dumps({"id": rows[2]["id"], "answer": None}).encode(),  # line 5: null answer
        b"\xff\xfe garbage",  # line 6
        json.dumps({"id": rows[3]["id"], "answer": rows[3]["answer"]}).encode(),
        json.dumps({"id": rows[3]["id"], "answer": rows[3]["answer"]}).encode(),  # line 8: repeated
    ]) + b"\n")
    r = score_files(questions, preds)
    assert r.issues == [
        f"{questions}:3: invalid JSON: Expecting value (column 30)",
        f"{questions}:5: missing field 'question'",
        f"{preds}:2: invalid JSON: Expecting value (column 1)",
        f"{preds}:3: expected a JSON object, got list",
        f"{preds}:4: missing field 'answer'",
        f"{preds}:5: answer of '{rows[2]['id']}' is null; scored as an empty answer",
        f"{preds}:6: not UTF-8 (invalid start byte at byte 0)",
        f"{preds}:8: id '{rows[3]['id']}' repeated; this later answer is used",
    ]
    assert r.n_questions == 6
    assert r.missing_predictions == [rows[1]["id"], rows[4]["id"], rows[5]["id"]]
    md = (write_report(r, tmp_path / "out")["markdown"]).read_text()
    assert f"{preds}:4: missing field 'answer'" in md


def test_unusable_files_are_clear_errors(tmp_path):
    with pytest.raises(InputFileError, match="no such file"):
        score_files(tmp_path / "nope.jsonl", TRAIN)
    with pytest.raises(InputFileError, match="every answer is empty"):
        score_files(DATA / "me_vqa_samm_test_to_answer.jsonl", TRAIN)
    bad = tmp_path / "bad.jsonl"
    bad.write_text("{oops\n")
    with pytest.raises(InputFileError, match=r"bad.jsonl: no usable question line .*bad.jsonl:1: invalid JSON"):
        score_files(bad, TRAIN)


def test_dataset_names_and_the_casme3_test_file_quirk():
    assert canonical_dataset("CASME II") == canonical_dataset("casme2") == "casme2"
    assert canonical_dataset("CAS(ME)^3") == "casme3"
    assert canonical_dataset("SAMM") == "samm"
    casme3 = load_questions(DATA / "me_vqa_casme3_test_to_answer.jsonl")
    samm = load_questions(DATA / "me_vqa_samm_test_to_answer.jsonl")
    assert {r.dataset for r in casme3.rows} == {"casme3"}
    assert {r.dataset for r in samm.rows} == {"samm"}
    assert not casme3.has_references and casme3.issues == []


def lvqa_file(tmp_path) -> Path:
    rows = [
        ("c1", "How many micro-expression events appear in this video?", "3"),
        ("c2", "How many micro-expression events appear in this video?", "0"),
        ("c3", "How many expression events appear in this video?", "2"),
        ("a1", "What distinct action units appear in this video?", "AU1, AU2"),
        ("e1", "What is the expression type of the first expression event in this video?", "micro-expression"),
        ("e2", "What is the expression type of the second expression event in this video?", "macro-expression"),
        ("x1", "Please analyse the micro-expression shown in this video in detail.",
         "The brows lower (AU4) and the lids tighten (AU7): disgust, a negative expression."),
    ]
    path = tmp_path / "lvqa.jsonl"
    path.write_text("".join(json.dumps({"id": i, "dataset": "samm_lv", "question": q, "answer": a}) + "\n"
                            for i, q, a in rows))
    return path


def test_lvqa_and_analysis_hand_computed(tmp_path):
    preds = write_predictions(tmp_path / "p.jsonl", {
        "c1": "There are 3 micro-expression events.", "c2": "one", "c3": "I cannot tell.",
        "a1": "inner brow raiser", "e1": "A macro-expression.", "e2": "It is a macro-expression.",
        "x1": "The lids tighten (lid tightener) and the lip corners rise: happiness, which is positive.",
    })
    r = score_files(lvqa_file(tmp_path), preds)
    assert r.lv_count.accuracy == pytest.approx(1 / 3)
    assert r.lv_count.mae == pytest.approx(0.5)  # |3-3| and |0-1|; the unparsed answer has no number
    assert r.lv_count.n_unparsed == 1
    assert r.lv_count.per_kind["micro"] == {"accuracy": 0.5, "mae": 0.5, "n": 2, "n_unparsed": 0}
    assert r.lv_aus.mean_set_f1 == pytest.approx(2 / 3)
    assert r.lv_event_type.accuracy == pytest.approx(0.5)
    assert r.analysis.au.micro_f1 == pytest.approx(2 / 3)  # {4, 7} vs {7, 12}: TP 1, FN 1, FP 1
    assert r.analysis.fine.overall.uf1 == 0.0 and r.analysis.coarse.overall.uar == 0.0
    assert [u.id for u in r.unparsed] == ["c3"]
    assert r.coarse.overall is None and r.au is None
    assert set(r.coarse.per_dataset) == set()


def test_cli_score_writes_the_report_and_prints_the_headline(tmp_path):
    from mellm.cli import app

    result = CliRunner().invoke(app, ["eval", "score", "--questions", str(TRAIN), "--predictions", str(TRAIN),
                                      "--out", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    assert "| coarse | 1.0000 | 1.0000 |" in result.stdout
    assert (tmp_path / "out" / "report.json").exists() and (tmp_path / "out" / "confusion_coarse.png").exists()
    result = CliRunner().invoke(app, ["eval", "score", "--questions", str(tmp_path / "none.jsonl"),
                                      "--predictions", str(TRAIN), "--out", str(tmp_path / "o2")])
    assert result.exit_code == 2
    assert "none.jsonl: no such file" in result.output
