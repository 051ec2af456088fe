"""ME-LVQA runs over a question file, grouped by video.

`run_lvqa_baseline` (`mellm eval lvqa-baseline`): the model-free answerer - spot each video once
and answer all its questions from the one event list (mellm.lvqa), so the answers agree.
`run_lvqa_gateway` (`mellm eval run-lvqa`): each video goes once to the ME gateway's
`/v1/me/analyze_long` with all its questions; the model's answers and the gateway's model-free
answers from the same event list are written and scored side by side.

This is the figure a model must beat: a tuned model sees the same event list in its prompt
(mellm.lvqa.event_list_text), so anything it adds is its own. Writes OUT/predictions.jsonl in
MEGC submission form (the question row with its answer filled, plus "id"), OUT/spots/<video>/
(spots.json, curve.png, per-event evidence; reused by a rerun), OUT/failures.jsonl (videos not
found or not spottable: their questions stay unanswered, the others go on), OUT/run.json, and,
when the questions have reference answers, OUT/report.json / report.md.
"""

from __future__ import annotations

import json
import re
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from mellm.errors import ClipError, MellmError
from mellm.lvqa import answer_from_events, is_lvqa
from mellm.media import MediaIndex
from mellm.megc import load_questions
from mellm.spot import SpotSettings
from mellm.spots import Spots


@dataclass
class BaselineSummary:
    answered: int
    failures: list[dict]
    videos: int
    predictions: Path
    report: object | None


def run_lvqa_baseline(questions: Path, media_root: Path, out: Path, clip_map: Path | None = None,
                      settings: SpotSettings | None = None, evidence: bool = True, progress: bool = True) -> BaselineSummary:
    from mellm.analyze_long import analyze_long

    t0 = time.time()
    qfile = load_questions(Path(questions))
    rows = [r for r in qfile.rows if is_lvqa(r.question)]
    if not rows:
        raise MellmError(f"{questions}: no ME-LVQA question (counts, distinct AUs, k-th event type)")
    index = MediaIndex(media_root, clip_map)
    by_video: dict[str, list] = defaultdict(list)
    for r in rows:
        by_video[r.video or r.image_id].append(r)
    out.mkdir(parents=True, exist_ok=True)
    failures, answered = [], 0
    with open(out / "predictions.jsonl", "w") as pred:
        for video, vrows in by_video.items():
            folder = out / "spots" / re.sub(r"[^A-Za-z0-9._-]+", "-", f"{vrows[0].dataset}_{video}")
            try:
                spots_file = folder / "spots.json"
                if spots_file.is_file():
                    spots = Spots.load(spots_file)
                else:
                    spots = analyze_long(index.resolve(vrows[0]), folder, settings, evidence=evidence, progress=progress)
            except (ClipError, MellmError) as e:
                failures += [{"id": r.id, "video": video, "error": str(e)} for r in vrows]
                continue
            for r in vrows:
                pred.write(json.dumps({"id": r.id, "video_id": r.id, "video": r.video, "question": r.question,
                                       "answer": answer_from_events(spots, r.question)}) + "\n")
                answered += 1
    with open(out / "failures.jsonl", "w") as f:
        for x in failures:
            f.write(json.dumps(x) + "\n")
    report = None
    if qfile.has_references:
        from mellm.eval.records import load_predictions
        from mellm.eval.report import write_report
        from mellm.eval.score import score

        report = score(qfile, load_predictions(out / "predictions.jsonl"), questions_name=str(questions),
                       predictions_name=str(out / "predictions.jsonl"))
        write_report(report, out)
    (out / "run.json").write_text(json.dumps({
        "questions": str(questions), "media_root": str(media_root), "answerer": "model-free (spotted event list)",
        "spotting": (settings or SpotSettings()).to_dict(), "videos": len(by_video), "answered": answered,
        "failed": len(failures), "seconds": round(time.time() - t0, 1)}, indent=1))
    return BaselineSummary(answered, failures, len(by_video), out / "predictions.jsonl", report)


def _relative(path: Path, root: Path) -> str | None:
    try:
        return str(path.resolve().relative_to(root.resolve()))
    except ValueError:
        return None


def run_lvqa_gateway(questions: Path, media_root: Path, endpoint: str, out: Path, api_key: str | None = None,
                     upload: bool = False, clip_map: Path | None = None, timeout_s: float = 600.0) -> dict:
    """Predictions of the served model (OUT/predictions.jsonl) and of the model-free answerer
    (OUT/baseline/predictions.jsonl), with reports when the questions have answers. A video that
    fails (not found, no face, the gateway's time limit) is recorded and the others go on."""
    from mellm.serve.client import ask_long

    qfile = load_questions(Path(questions))
    rows = [r for r in qfile.rows if is_lvqa(r.question)]
    if not rows:
        raise MellmError(f"{questions}: no ME-LVQA question (counts, distinct AUs, k-th event type)")
    index = MediaIndex(media_root, clip_map)
    by_video: dict[str, list] = defaultdict(list)
    for r in rows:
        by_video[r.video or r.image_id].append(r)
    (out / "baseline").mkdir(parents=True, exist_ok=True)
    failures, answered = [], 0
    with open(out / "predictions.jsonl", "w") as pred, open(out / "baseline" / "predictions.jsonl", "w") as base:
        for video, vrows in by_video.items():
            try:
                source = index.resolve(vrows[0])
                rel = None if upload else _relative(source, media_root)
                reply = ask_long(str(source) if rel is None else rel, [r.question for r in vrows], endpoint,
                                 api_key=api_key, remote=rel is not None, timeout_s=timeout_s)
            except (ClipError, MellmError, OSError) as e:
                failures += [{"id": r.id, "video": video, "error": f"{type(e).__name__}: {e}"} for r in vrows]
                continue
            model = {a.question: a.answer for a in reply.answers}
            refused = {e.question: f"HTTP {e.status}: {e.message}" for e in reply.errors}
            free = {a.question: a.answer for a in reply.baseline}
            for r in vrows:
                row = {"id": r.id, "video_id": r.id, "video": r.video, "question": r.question}
                base.write(json.dumps({**row, "answer": free[r.question]}) + "\n")
                if r.question in model:
                    pred.write(json.dumps({**row, "answer": model[r.question]}) + "\n")
                    answered += 1
                else:
                    failures.append({"id": r.id, "video": video,
                                     "error": refused.get(r.question, "the model gave no answer") + "".join(
                                         f"; note: {n}" for n in reply.notes)})
    with open(out / "failures.jsonl", "w") as f:
        for x in failures:
            f.write(json.dumps(x) + "\n")
    reports = {}
    if qfile.has_references:
        from mellm.eval.records import load_predictions
        from mellm.eval.report import write_report
        from mellm.eval.score import score

        for name, folder in (("model", out), ("baseline", out / "baseline")):
            reports[name] = score(qfile, load_predictions(folder / "predictions.jsonl"), questions_name=str(questions),
                                  predictions_name=str(folder / "predictions.jsonl"))
            write_report(reports[name], folder)
        (out / "comparison.md").write_text(comparison_markdown(reports["model"], reports["baseline"]))
    (out / "run.json").write_text(json.dumps({"questions": str(questions), "endpoint": endpoint, "videos": len(by_video),
                                              "answered": answered, "failed": len(failures)}, indent=1))
    return {"answered": answered, "failures": failures, "videos": len(by_video), "reports": reports}


def comparison_markdown(model, baseline) -> str:
    """Every LVQA figure of the model beside the model-free answerer's."""
    def figures(r) -> dict[str, float | None]:
        f = {}
        if r.lv_count:
            f.update({"count exact": r.lv_count.accuracy, "count MAE": r.lv_count.mae, "count RMSE": r.lv_count.rmse})
        if r.lv_aus:
            f.update({"distinct AUs set F1": r.lv_aus.mean_set_f1, "distinct AUs Jaccard": r.lv_aus.mean_jaccard})
        if r.lv_event_type:
            f.update({"k-th type accuracy": r.lv_event_type.accuracy, "k-th type UF1": r.lv_event_type.uf1,
                      "k-th type UAR": r.lv_event_type.uar})
        return f

    m, b = figures(model), figures(baseline)
    fmt = lambda v: "-" if v is None else f"{v:.4f}"  # noqa: E731
    lines = ["# ME-LVQA: model vs the model-free answerer (same event lists)", "",
             "| figure | model | model-free |", "|---|---|---|"]
    lines += [f"| {k} | {fmt(m.get(k))} | {fmt(b.get(k))} |" for k in dict.fromkeys([*m, *b])]
    return "\n".join(lines) + "\n"
