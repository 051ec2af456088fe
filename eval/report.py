"""Write a scoring Report: report.json (everything), report.md (the tables a paper needs) and
confusion-matrix PNGs for the coarse and fine questions."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from mellm.eval.metrics import ClassMetrics, Confusion
from mellm.eval.score import LabelTask, Report, SentenceMetrics

LISTED = 20  # problems listed by id in the Markdown; report.json lists them all


def write_report(report: Report, out: Path) -> dict[str, Path]:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / "report.json", "markdown": out / "report.md"}
    paths["json"].write_text(json.dumps(dataclasses.asdict(report), indent=1) + "\n")
    paths["markdown"].write_text(markdown(report))
    for name, task in (("coarse", report.coarse), ("fine", report.fine)):
        if task.overall is not None:
            paths[f"confusion_{name}"] = out / f"confusion_{name}.png"
            plot_confusion(task.overall, f"{name} expression class", paths[f"confusion_{name}"])
    return paths


def _num(x: float | None) -> str:
    return "-" if x is None else f"{x:.4f}"


def _table(header: list[str], rows: list[list]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return lines + [""]


def _uf1_rows(task: LabelTask, label: str) -> list[list]:
    if task.overall is None:
        return []
    rows = [[label, "**all**", _num(task.overall.uf1), _num(task.overall.uar), task.overall.n]]
    rows += [[label, ds, _num(m.uf1), _num(m.uar), m.n] for ds, m in task.per_dataset.items()]
    return rows


def markdown(r: Report) -> str:
    missing_rule = "skipped" if r.skip_missing else "scored as wrong"
    lines = [
        "# ME-VQA evaluation report", "",
        f"- questions: `{r.questions_file}` ({r.n_questions})",
        f"- predictions: `{r.predictions_file}` ({r.n_predictions})",
        f"- scored answers: {r.n_scored}; missing predictions: {len(r.missing_predictions)} ({missing_rule}); "
        f"unparsed predictions: {len(r.unparsed)} (scored as wrong)", "",
        "## Leaderboard columns", "",
    ]
    head = [["coarse", _num(r.coarse.overall and r.coarse.overall.uf1), _num(r.coarse.overall and r.coarse.overall.uar)],
            ["fine", _num(r.fine.overall and r.fine.overall.uf1), _num(r.fine.overall and r.fine.overall.uar)]]
    lines += _table(["", "UF1", "UAR"], head)
    lines += _table(["BLEU-4", "ROUGE-1", "ROUGE-L", "answers"],
                    [[_num(r.text.bleu4), _num(r.text.rouge1), _num(r.text.rougeL), r.text.n]])
    rows = _uf1_rows(r.coarse, "coarse") + _uf1_rows(r.fine, "fine")
    if rows:
        lines += ["## Coarse and fine questions, per dataset", ""]
        lines += _table(["class", "dataset", "UF1", "UAR", "n"], rows)
    au_rows = []
    if r.au:
        au_rows.append(["AU list: F1 micro / macro", f"{_num(r.au.micro_f1)} / {_num(r.au.macro_f1)}", r.au.n])
    if r.au_yesno:
        au_rows.append(["AU yes/no: accuracy", _num(r.au_yesno.accuracy), r.au_yesno.n])
    if r.au_side:
        au_rows.append(["AU left/right: accuracy", _num(r.au_side.accuracy), r.au_side.n])
    if au_rows:
        lines += ["## Action units", ""] + _table(["metric", "value", "n"], au_rows)
    for title, s in (("Combined question", r.combined), ("Open analysis question", r.analysis)):
        if s is not None:
            lines += _sentence(title, s)
    lv_rows = []
    if r.lv_count:
        lv_rows.append(["event count: accuracy", _num(r.lv_count.accuracy), r.lv_count.n])
        lv_rows.append(["event count: MAE (stated numbers)", _num(r.lv_count.mae), r.lv_count.n - r.lv_count.n_unparsed])
        lv_rows.append(["event count: RMSE (stated numbers)", _num(r.lv_count.rmse), r.lv_count.n - r.lv_count.n_unparsed])
        for kind, k in r.lv_count.per_kind.items():
            lv_rows.append([f"event count ({kind}): accuracy / MAE", f"{_num(k['accuracy'])} / {_num(k['mae'])}", k["n"]])
    if r.lv_aus:
        lv_rows.append(["distinct AUs: mean set F1", _num(r.lv_aus.mean_set_f1), r.lv_aus.n])
        lv_rows.append(["distinct AUs: mean Jaccard", _num(r.lv_aus.mean_jaccard), r.lv_aus.n])
    if r.lv_event_type:
        lv_rows.append(["k-th event type: accuracy", _num(r.lv_event_type.accuracy), r.lv_event_type.n])
        lv_rows.append(["k-th event type: UF1 / UAR", f"{_num(r.lv_event_type.uf1)} / {_num(r.lv_event_type.uar)}",
                        r.lv_event_type.n])
    if lv_rows:
        lines += ["## ME-LVQA", ""] + _table(["metric", "value", "n"], lv_rows)
    lines += ["## Question types", ""]
    type_rows = []
    for qtype, c in r.counts.items():
        t = r.text_per_type.get(qtype)
        type_rows.append([qtype, c.total, c.scored, c.unparsed, c.missing, c.no_reference,
                          _num(t and t.bleu4), _num(t and t.rouge1), _num(t and t.rougeL)])
    lines += _table(["type", "questions", "scored", "unparsed", "missing", "no reference", "BLEU-4", "ROUGE-1", "ROUGE-L"],
                    type_rows)
    lines += _problems(r)
    return "\n".join(lines)


def _sentence(title: str, s: SentenceMetrics) -> list[str]:
    rows = []
    if s.au:
        rows.append(["AUs: F1 micro / macro", f"{_num(s.au.micro_f1)} / {_num(s.au.macro_f1)}", s.au.n])
    for name, task in (("fine", s.fine), ("coarse", s.coarse)):
        if task.overall:
            rows.append([f"{name}: UF1 / UAR", f"{_num(task.overall.uf1)} / {_num(task.overall.uar)}", task.overall.n])
            for ds, m in task.per_dataset.items():
                rows.append([f"{name} ({ds}): UF1 / UAR", f"{_num(m.uf1)} / {_num(m.uar)}", m.n])
    return [f"## {title}", ""] + _table(["metric", "value", "n"], rows)


def _problems(r: Report) -> list[str]:
    lines = []

    def listed(title: str, items: list[str]):
        if not items:
            return
        lines.extend([f"## {title} ({len(items)})", ""])
        lines.extend(f"- {i}" for i in items[:LISTED])
        if len(items) > LISTED:
            lines.append(f"- ... {len(items) - LISTED} more in report.json")
        lines.append("")

    def problem(p) -> str:
        answer = p.answer if len(p.answer) <= 80 else p.answer[:77] + "..."
        return f"`{p.id}` ({p.qtype}): {json.dumps(answer)} - {p.problem}"

    listed("Unparsed predictions", [problem(p) for p in r.unparsed])
    listed("Partially parsed predictions", [problem(p) for p in r.partially_parsed])
    listed("Unreadable reference answers (left out of label metrics)", [problem(p) for p in r.reference_unparsed])
    listed("Missing predictions", [f"`{i}`" for i in r.missing_predictions])
    listed("Predictions for unknown ids (ignored)", [f"`{i}`" for i in r.extra_predictions])
    listed("Input issues", r.issues)
    return lines


def plot_confusion(metrics: ClassMetrics, title: str, path: Path) -> None:
    # The object API with the Agg canvas: no pyplot, no global backend, safe in threads and servers.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    c: Confusion = metrics.confusion
    fig = Figure(figsize=(1.2 + 0.9 * len(c.cols), 1.2 + 0.8 * len(c.rows)), dpi=120)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    # Colour by row share so rare classes stay visible; the cell text is the count.
    shares = [[v / max(sum(row), 1) for v in row] for row in c.counts]
    ax.imshow(shares, cmap="Blues", vmin=0, vmax=1, aspect="auto")
    for i, row in enumerate(c.counts):
        for j, v in enumerate(row):
            ax.text(j, i, str(v), ha="center", va="center", color="white" if shares[i][j] > 0.5 else "black")
    ax.set_xticks(range(len(c.cols)), c.cols, rotation=35, ha="right")
    ax.set_yticks(range(len(c.rows)), c.rows)
    ax.set_xlabel("answer")
    ax.set_ylabel("reference")
    ax.set_title(f"{title}: UF1 {metrics.uf1:.3f}, UAR {metrics.uar:.3f}, n={metrics.n}")
    fig.tight_layout()
    fig.savefig(path)
