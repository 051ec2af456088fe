"""Score predictions against an MEGC question file: join by id, read every answer with
`mellm.answers.parse_answer`, and compute each question type's metrics.

What counts where (see eval/README.md for the reasons):
- coarse / fine UF1 and UAR come from the coarse and fine questions, overall (pooled over
  datasets, as MEGC pools folds) and per dataset, over the classes present in the references;
- AU F1 from the AU-list questions; accuracy for yes/no and left/right;
- the combined and open analysis questions get their own AU F1 and coarse/fine UF1/UAR, over the
  parts their references state;
- ME-LVQA: event counts (exact-match accuracy; MAE and RMSE over answers stating a number),
  distinct AUs (mean set F1 and mean Jaccard), k-th event type (accuracy, and UF1/UAR over the
  micro/macro classes as peers report it);
- BLEU-4 / ROUGE-1 / ROUGE-L over every scored answer, and per question type.
A question without a prediction is scored as an empty answer (wrong) unless skip_missing.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from mellm.answers import ParsedAnswer, parse_answer
from mellm.eval.metrics import (
    Accuracy,
    ClassMetrics,
    MultiLabelMetrics,
    TextMetrics,
    accuracy,
    class_metrics,
    mean_absolute_error,
    merge_totals,
    multilabel_f1,
    root_mean_squared_error,
    set_f1,
    set_jaccard,
    text_totals,
)
from mellm.eval.records import PredictionFile, load_predictions
from mellm.jsonl import InputFileError
from mellm.megc import QuestionFile, load_questions
from mellm.vqa import QType, Question, classify_question


@dataclass
class LabelTask:
    """UF1/UAR of one label kind: pooled over all datasets, and per dataset."""

    overall: ClassMetrics | None = None
    per_dataset: dict[str, ClassMetrics] = field(default_factory=dict)


@dataclass
class SentenceMetrics:
    """Labels extracted from a sentence answer (combined or analysis question)."""

    au: MultiLabelMetrics | None
    fine: LabelTask
    coarse: LabelTask


@dataclass
class CountMetrics:
    accuracy: float
    mae: float | None  # over answers that state a number; None when none does
    n: int
    n_unparsed: int
    per_kind: dict[str, dict] = field(default_factory=dict)
    rmse: float | None = None  # over the same answers as mae


@dataclass
class SetMetrics:
    mean_set_f1: float
    n: int
    mean_jaccard: float = 0.0


@dataclass
class EventTypeMetrics:
    """k-th event type: accuracy over every question, and micro/macro UF1/UAR (an unparsed answer
    is wrong for its reference class)."""

    accuracy: float
    correct: int
    n: int
    uf1: float | None = None
    uar: float | None = None


@dataclass
class TypeCount:
    total: int = 0  # questions of this type in the question file
    scored: int = 0  # with a reference and (unless skip_missing) counted
    unparsed: int = 0  # predictions stating no recognisable label
    no_reference: int = 0  # reference answer empty
    missing: int = 0  # no prediction


@dataclass
class AnswerProblem:
    id: str
    qtype: str
    dataset: str
    answer: str
    problem: str


@dataclass
class Report:
    questions_file: str
    predictions_file: str
    n_questions: int
    n_predictions: int
    n_scored: int
    skip_missing: bool
    counts: dict[str, TypeCount]
    coarse: LabelTask
    fine: LabelTask
    au: MultiLabelMetrics | None
    au_yesno: Accuracy | None
    au_side: Accuracy | None
    combined: SentenceMetrics | None
    analysis: SentenceMetrics | None
    lv_count: CountMetrics | None
    lv_aus: SetMetrics | None
    lv_event_type: EventTypeMetrics | None
    text: TextMetrics
    text_per_type: dict[str, TextMetrics]
    missing_predictions: list[str]
    extra_predictions: list[str]
    unparsed: list[AnswerProblem]  # predictions with no recognisable label: scored as wrong
    partially_parsed: list[AnswerProblem]  # combined/analysis answers lacking a part
    reference_unparsed: list[AnswerProblem]  # references we cannot read: left out of label metrics
    issues: list[str]  # malformed or repeated lines, file:line: message


def score_files(questions: Path, predictions: Path, *, skip_missing: bool = False) -> Report:
    qfile = load_questions(questions)
    if not qfile.has_references:
        raise InputFileError(f"{questions}: every answer is empty (a test file?), so there is nothing to score against")
    return score(qfile, load_predictions(predictions), skip_missing=skip_missing,
                 questions_name=str(questions), predictions_name=str(predictions))


class _Labels:
    """(dataset, reference, prediction) triples of one label kind."""

    def __init__(self):
        self.items: list[tuple[str, str, str | None]] = []

    def add(self, dataset: str, ref: str | None, pred: str | None):
        if ref is not None:
            self.items.append((dataset, ref, pred))

    def task(self) -> LabelTask:
        if not self.items:
            return LabelTask()
        by_ds = defaultdict(lambda: ([], []))
        for ds, t, p in self.items:
            by_ds[ds][0].append(t)
            by_ds[ds][1].append(p)
        return LabelTask(
            overall=class_metrics([t for _, t, _ in self.items], [p for _, _, p in self.items]),
            per_dataset={ds: class_metrics(t, p) for ds, (t, p) in sorted(by_ds.items())},
        )


class _Sentence:
    def __init__(self):
        self.au_true, self.au_pred = [], []
        self.fine, self.coarse = _Labels(), _Labels()

    def add(self, dataset: str, ref: ParsedAnswer, pred: ParsedAnswer):
        if ref.aus:
            self.au_true.append(ref.aus)
            self.au_pred.append(pred.aus)
        self.fine.add(dataset, ref.fine, pred.fine)
        self.coarse.add(dataset, ref.coarse, pred.coarse)
        return self

    def metrics(self) -> SentenceMetrics:
        return SentenceMetrics(au=multilabel_f1(self.au_true, self.au_pred) if self.au_true else None,
                               fine=self.fine.task(), coarse=self.coarse.task())


def score(questions: QuestionFile, predictions: PredictionFile, *, skip_missing: bool = False,
          questions_name: str = "", predictions_name: str = "") -> Report:
    classified: dict[str, tuple[Question, str]] = {}  # question text -> (Question, type name)
    counts: dict[str, TypeCount] = defaultdict(TypeCount)
    coarse, fine = _Labels(), _Labels()
    au_true, au_pred = [], []
    yesno, side, event_type = ([], []), ([], []), ([], [])
    sentences: dict[QType, _Sentence] = {}
    lv_counts: list[tuple[str, int, int | None]] = []
    lv_aus: list[tuple[float, float]] = []
    text_pairs: dict[str, list[tuple[str, str]]] = defaultdict(list)
    missing, unparsed, partial, ref_unparsed = [], [], [], []

    for row in questions.rows:
        known = classified.get(row.question)
        if known is None:
            q = classify_question(row.question)
            known = classified[row.question] = (q, q.type.value)
        q, qtype = known
        count = counts[qtype]
        count.total += 1
        if row.answer is None:
            count.no_reference += 1
            continue
        text = predictions.answers.get(row.id)
        if text is None:
            missing.append(row.id)
            count.missing += 1
            if skip_missing:
                continue
            text = ""
        count.scored += 1
        text_pairs[qtype].append((text, row.answer))
        ref = parse_answer(q, row.answer)
        pred = parse_answer(q, text)
        if not ref.parsed:
            ref_unparsed.append(AnswerProblem(row.id, qtype, row.dataset, row.answer, ref.problem or "unparsed"))
            continue
        if not pred.parsed:
            count.unparsed += 1
            unparsed.append(AnswerProblem(row.id, qtype, row.dataset, text, pred.problem or "unparsed"))
        elif pred.problem and q.type in (QType.COMBINED, QType.ANALYSIS):
            partial.append(AnswerProblem(row.id, qtype, row.dataset, text, pred.problem))

        t = q.type
        if t is QType.COARSE:
            coarse.add(row.dataset, ref.coarse, pred.coarse)
        elif t is QType.FINE:
            fine.add(row.dataset, ref.fine, pred.fine)
        elif t is QType.AU_LIST:
            au_true.append(ref.aus)
            au_pred.append(pred.aus)
        elif t is QType.AU_YESNO:
            yesno[0].append(ref.yes_no)
            yesno[1].append(pred.yes_no)
        elif t is QType.AU_SIDE:
            side[0].append(ref.side)
            side[1].append(pred.side)
        elif t in (QType.COMBINED, QType.ANALYSIS):
            sentences.setdefault(t, _Sentence()).add(row.dataset, ref, pred)
        elif t is QType.LV_COUNT:
            lv_counts.append((q.event_kind or "all", ref.count, pred.count))
        elif t is QType.LV_AUS:
            lv_aus.append((set_f1(ref.aus, pred.aus), set_jaccard(ref.aus, pred.aus)) if pred.parsed else (0.0, 0.0))
        elif t is QType.LV_EVENT_TYPE:
            # Compare the most specific thing the reference states.
            key = "event_type" if ref.event_type else "fine" if ref.fine else "coarse"
            event_type[0].append(getattr(ref, key))
            event_type[1].append(getattr(pred, key))

    text_by_type = {k: text_totals(v) for k, v in sorted(text_pairs.items())}
    text_all = merge_totals(text_by_type.values())
    question_ids = {r.id for r in questions.rows}
    return Report(
        questions_file=questions_name,
        predictions_file=predictions_name,
        n_questions=len(questions.rows),
        n_predictions=len(predictions.answers),
        n_scored=text_all.n,
        skip_missing=skip_missing,
        counts=dict(sorted(counts.items())),
        coarse=coarse.task(),
        fine=fine.task(),
        au=multilabel_f1(au_true, au_pred) if au_true else None,
        au_yesno=accuracy(*yesno) if yesno[0] else None,
        au_side=accuracy(*side) if side[0] else None,
        combined=sentences[QType.COMBINED].metrics() if QType.COMBINED in sentences else None,
        analysis=sentences[QType.ANALYSIS].metrics() if QType.ANALYSIS in sentences else None,
        lv_count=_count_metrics(lv_counts) if lv_counts else None,
        lv_aus=SetMetrics(sum(f for f, _ in lv_aus) / len(lv_aus), len(lv_aus),
                          sum(j for _, j in lv_aus) / len(lv_aus)) if lv_aus else None,
        lv_event_type=_event_type_metrics(*event_type) if event_type[0] else None,
        text=text_all.metrics(),
        text_per_type={k: t.metrics() for k, t in text_by_type.items()},
        missing_predictions=missing,
        extra_predictions=[i for i in predictions.answers if i not in question_ids],
        unparsed=unparsed,
        partially_parsed=partial,
        reference_unparsed=ref_unparsed,
        issues=[str(i) for i in questions.issues + predictions.issues],
    )


def _event_type_metrics(truth: list[str], pred: list[str | None]) -> EventTypeMetrics:
    acc = accuracy(truth, pred)
    m = class_metrics(truth, pred)
    return EventTypeMetrics(acc.accuracy, acc.correct, acc.n, m.uf1, m.uar)


def _count_metrics(items: list[tuple[str, int, int | None]]) -> CountMetrics:
    def summary(rows):
        parsed = [(t, p) for _, t, p in rows if p is not None]
        acc = accuracy([t for _, t, _ in rows], [p for _, _, p in rows])
        mae = mean_absolute_error([t for t, _ in parsed], [p for _, p in parsed]) if parsed else None
        return acc.accuracy, mae, len(rows), len(rows) - len(parsed)

    parsed_all = [(t, p) for _, t, p in items if p is not None]
    rmse = root_mean_squared_error([t for t, _ in parsed_all], [p for _, p in parsed_all]) if parsed_all else None

    by_kind = defaultdict(list)
    for item in items:
        by_kind[item[0]].append(item)
    acc, mae, n, n_unparsed = summary(items)
    per_kind = {}
    for kind, rows in sorted(by_kind.items()):
        k_acc, k_mae, k_n, k_unparsed = summary(rows)
        per_kind[kind] = {"accuracy": k_acc, "mae": k_mae, "n": k_n, "n_unparsed": k_unparsed}
    return CountMetrics(accuracy=acc, mae=mae, n=n, n_unparsed=n_unparsed, per_kind=per_kind, rmse=rmse)
