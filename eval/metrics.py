"""The metrics the ME-VQA / ME-LVQA report uses, written here so that nothing downloads anything
and every definition is visible: UF1/UAR (MEGC), multi-label F1 for AUs, accuracy, MAE,
corpus BLEU-4 and ROUGE-1 / ROUGE-L.

Unparsed predictions are passed as None: they are wrong for their reference class (a false
negative) and a false positive for no class.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Hashable, Iterable, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from itertools import chain

UNPARSED = "(unparsed)"


@dataclass
class ClassScore:
    f1: float
    recall: float
    support: int  # N_c: references of this class
    tp: int
    fp: int
    fn: int


@dataclass
class ClassMetrics:
    """UF1 = mean over classes of F1_c = 2TP/(2TP+FP+FN); UAR = mean of recall_c = TP/N_c."""

    uf1: float
    uar: float
    n: int
    classes: list[str]
    per_class: dict[str, ClassScore]
    confusion: Confusion


@dataclass
class Confusion:
    """counts[i][j]: references of rows[i] answered cols[j]. cols = rows, then any other label the
    answers gave, then UNPARSED."""

    rows: list[str]
    cols: list[str]
    counts: list[list[int]]


def class_metrics(y_true: Sequence[str], y_pred: Sequence[str | None], labels: Sequence[str] | None = None) -> ClassMetrics:
    """UF1 and UAR over `labels` (default: the classes present in y_true, the MEGC convention).

    Equal to sklearn's f1_score / recall_score(y_true, y_pred, labels=labels, average="macro").
    A prediction outside `labels` (or None) is wrong: a false negative for its reference.
    """
    if len(y_true) != len(y_pred):
        raise ValueError(f"{len(y_true)} references but {len(y_pred)} predictions")
    labels = sorted(set(y_true)) if labels is None else list(labels)
    pairs = Counter(zip(y_true, y_pred))
    support = Counter(y_true)
    predicted = Counter(y_pred)
    per_class = {}
    for c in labels:
        tp = pairs.get((c, c), 0)
        fn = support.get(c, 0) - tp
        fp = predicted.get(c, 0) - tp
        denom = 2 * tp + fp + fn
        per_class[c] = ClassScore(
            f1=2 * tp / denom if denom else 0.0,
            recall=tp / support[c] if support.get(c) else 0.0,
            support=support.get(c, 0), tp=tp, fp=fp, fn=fn,
        )
    k = len(labels)
    return ClassMetrics(
        uf1=sum(s.f1 for s in per_class.values()) / k if k else 0.0,
        uar=sum(s.recall for s in per_class.values()) / k if k else 0.0,
        n=len(y_true),
        classes=labels,
        per_class=per_class,
        confusion=confusion(y_true, y_pred, labels),
    )


def confusion(y_true: Sequence[str], y_pred: Sequence[str | None], labels: Sequence[str]) -> Confusion:
    rows = list(labels)
    extra = sorted({p for p in y_pred if p is not None and p not in rows})
    cols = rows + extra + ([UNPARSED] if any(p is None for p in y_pred) else [])
    index = {c: j for j, c in enumerate(cols)}
    counts = [[0] * len(cols) for _ in rows]
    row_of = {c: i for i, c in enumerate(rows)}
    for t, p in zip(y_true, y_pred):
        if t in row_of:
            counts[row_of[t]][index[UNPARSED if p is None else p]] += 1
    return Confusion(rows=rows, cols=cols, counts=counts)


@dataclass
class LabelSetScore:
    f1: float
    tp: int
    fp: int
    fn: int


@dataclass
class MultiLabelMetrics:
    """F1 over labels of sets (AUs). micro: pooled TP/FP/FN; macro: mean per-label F1 over every
    label in a reference or a prediction (sklearn's average="macro" on the union of labels)."""

    micro_f1: float
    macro_f1: float
    n: int
    per_label: dict[str, LabelSetScore] = field(default_factory=dict)


def multilabel_f1(true_sets: Sequence[Iterable[Hashable]], pred_sets: Sequence[Iterable[Hashable]]) -> MultiLabelMetrics:
    if len(true_sets) != len(pred_sets):
        raise ValueError(f"{len(true_sets)} references but {len(pred_sets)} predictions")
    tp, fp, fn = Counter(), Counter(), Counter()
    for t, p in zip(true_sets, pred_sets):
        t, p = set(t), set(p)
        tp.update(t & p)
        fp.update(p - t)
        fn.update(t - p)
    labels = sorted(set(tp) | set(fp) | set(fn))
    per = {}
    for a in labels:
        d = 2 * tp[a] + fp[a] + fn[a]
        per[str(a)] = LabelSetScore(f1=2 * tp[a] / d if d else 0.0, tp=tp[a], fp=fp[a], fn=fn[a])
    TP, FP, FN = sum(tp.values()), sum(fp.values()), sum(fn.values())
    return MultiLabelMetrics(
        micro_f1=2 * TP / (2 * TP + FP + FN) if (TP + FP + FN) else 1.0,
        macro_f1=sum(s.f1 for s in per.values()) / len(per) if per else 1.0,
        n=len(true_sets),
        per_label=per,
    )


def set_f1(true: Iterable[Hashable], pred: Iterable[Hashable]) -> float:
    """F1 of one predicted set against one reference set; two empty sets agree (1.0)."""
    t, p = set(true), set(pred)
    if not t and not p:
        return 1.0
    return 2 * len(t & p) / (len(t) + len(p))


@dataclass
class Accuracy:
    accuracy: float
    correct: int
    n: int


def accuracy(y_true: Sequence, y_pred: Sequence) -> Accuracy:
    correct = sum(1 for t, p in zip(y_true, y_pred, strict=True) if p is not None and t == p)
    return Accuracy(accuracy=correct / len(y_true) if y_true else 0.0, correct=correct, n=len(y_true))


def mean_absolute_error(y_true: Sequence[float], y_pred: Sequence[float]) -> float:
    if not y_true:
        return 0.0
    return sum(abs(t - p) for t, p in zip(y_true, y_pred, strict=True)) / len(y_true)


def root_mean_squared_error(y_true: Sequence[float], y_pred: Sequence[float]) -> float:
    if not y_true:
        return 0.0
    return math.sqrt(sum((t - p) ** 2 for t, p in zip(y_true, y_pred, strict=True)) / len(y_true))


def set_jaccard(true: Iterable[Hashable], pred: Iterable[Hashable]) -> float:
    """|T & P| / |T | P| of one predicted set against one reference set; two empty sets agree (1.0)."""
    t, p = set(true), set(pred)
    if not t and not p:
        return 1.0
    return len(t & p) / len(t | p)


# --- BLEU-4 ----------------------------------------------------------------------------------

_BLEU_TOKEN = re.compile(r"[a-z0-9]+|[^\sa-z0-9]")


def bleu_tokens(text: str) -> list[str]:
    """Lower-cased words and single punctuation marks ("Yes." -> ["yes", "."])."""
    return _BLEU_TOKEN.findall(text.lower())


def _ngram_counts(tokens: list[str]) -> Counter:
    """All 1- to 4-grams of `tokens` in one Counter (1-grams as strings, longer ones as tuples)."""
    return Counter(chain(tokens, zip(tokens, tokens[1:]), zip(tokens, tokens[1:], tokens[2:]),
                         zip(tokens, tokens[1:], tokens[2:], tokens[3:])))


@lru_cache(maxsize=1 << 12)
def _reference_ngrams(reference: str) -> tuple[list[str], Counter]:
    # References repeat (a few hundred distinct MEGC answers), so their n-grams are counted once.
    tokens = bleu_tokens(reference)
    return tokens, _ngram_counts(tokens)


@lru_cache(maxsize=1 << 16)
def bleu_stats(hypothesis: str, reference: str) -> tuple[int, ...]:
    """(hyp_len, ref_len, matches_1, total_1, ..., matches_4, total_4) for one pair."""
    h = bleu_tokens(hypothesis)
    r, r_counts = _reference_ngrams(reference)
    totals = [max(len(h) - n, 0) for n in range(4)]
    if h == r:
        matches = totals
    else:
        matches = [0, 0, 0, 0]
        h_counts = _ngram_counts(h)
        for gram in h_counts.keys() & r_counts.keys():  # set intersection in C: loop only over shared n-grams
            matches[0 if type(gram) is str else len(gram) - 1] += min(h_counts[gram], r_counts[gram])
    return (len(h), len(r), matches[0], totals[0], matches[1], totals[1], matches[2], totals[2],
            matches[3], totals[3])


def corpus_bleu(stats: Iterable[tuple[int, ...]]) -> float:
    """Corpus BLEU-4 (Papineni et al.): clipped n-gram precisions pooled over the corpus, geometric
    mean with uniform weights, brevity penalty exp(1 - r/c) when c < r; no smoothing, so 0 when
    some n-gram order has no match. In [0, 1]."""
    totals = [sum(column) for column in zip(*stats)] or [0] * 10
    hyp_len, ref_len = totals[0], totals[1]
    if hyp_len == 0:
        return 0.0
    log_p = 0.0
    for n in range(4):
        matches, total = totals[2 + 2 * n], totals[3 + 2 * n]
        if matches == 0 or total == 0:
            return 0.0
        log_p += math.log(matches / total) / 4
    bp = 1.0 if hyp_len >= ref_len else math.exp(1 - ref_len / hyp_len)
    return bp * math.exp(log_p)


# --- ROUGE-1 / ROUGE-L -----------------------------------------------------------------------

_ROUGE_TOKEN = re.compile(r"[a-z0-9]+")


def rouge_tokens(text: str) -> list[str]:
    """Lower-cased alphanumeric words, everything else a separator (as rouge-score, no stemming)."""
    return _ROUGE_TOKEN.findall(text.lower())


def _match_masks(a: Sequence[Hashable]) -> dict[Hashable, int]:
    masks: dict[Hashable, int] = {}
    for i, tok in enumerate(a):
        masks[tok] = masks.get(tok, 0) | (1 << i)
    return masks


def _lcs(masks: dict[Hashable, int], n_a: int, b: Sequence[Hashable]) -> int:
    full = (1 << n_a) - 1
    v = full
    for tok in b:
        u = v & masks.get(tok, 0)
        v = ((v + u) | (v - u)) & full
    return n_a - v.bit_count()


def lcs_length(a: Sequence[Hashable], b: Sequence[Hashable]) -> int:
    """Longest common subsequence length, bit-parallel (Allison-Dix / Hyyro): one big-integer
    add per token of b instead of a len(a) x len(b) table, which is what keeps ROUGE-L on 100k
    answers within the time budget."""
    if not a or not b:
        return 0
    return _lcs(_match_masks(a), len(a), b)


def _f(overlap: int, n_hyp: int, n_ref: int) -> float:
    if overlap == 0:
        return 0.0
    p, r = overlap / n_hyp, overlap / n_ref
    return 2 * p * r / (p + r)


@lru_cache(maxsize=1 << 12)
def _reference_rouge(reference: str) -> tuple[list[str], Counter, dict[str, int]]:
    # References repeat: their tokens, counts and LCS match masks are computed once.
    tokens = rouge_tokens(reference)
    return tokens, Counter(tokens), _match_masks(tokens)


@lru_cache(maxsize=1 << 16)
def rouge_scores(hypothesis: str, reference: str) -> tuple[float, float]:
    """(ROUGE-1 F, ROUGE-L F) of one pair."""
    h = rouge_tokens(hypothesis)
    r, r_counts, r_masks = _reference_rouge(reference)
    if not h or not r:
        return 0.0, 0.0
    h_counts = Counter(h)
    overlap = sum(min(h_counts[t], r_counts[t]) for t in h_counts.keys() & r_counts.keys())
    return _f(overlap, len(h), len(r)), _f(_lcs(r_masks, len(r), h), len(h), len(r))


@dataclass
class TextMetrics:
    """BLEU-4 pooled over the answers (corpus BLEU); ROUGE F-scores averaged over answers."""

    bleu4: float
    rouge1: float
    rougeL: float
    n: int


@dataclass
class TextTotals:
    """Additive sufficient statistics of TextMetrics, so groups (question types) merge into the
    overall figure without scoring any answer twice."""

    bleu: list[int] = field(default_factory=lambda: [0] * 10)
    rouge1: float = 0.0
    rougeL: float = 0.0
    n: int = 0

    def metrics(self) -> TextMetrics:
        if not self.n:
            return TextMetrics(0.0, 0.0, 0.0, 0)
        return TextMetrics(corpus_bleu([tuple(self.bleu)]), self.rouge1 / self.n, self.rougeL / self.n, self.n)


def text_totals(pairs: Sequence[tuple[str, str]]) -> TextTotals:
    """pairs: (hypothesis, reference)."""
    if not pairs:
        return TextTotals()
    bleu = [sum(column) for column in zip(*[bleu_stats(h, r) for h, r in pairs])]
    rouge = [rouge_scores(h, r) for h, r in pairs]
    return TextTotals(bleu, sum(x[0] for x in rouge), sum(x[1] for x in rouge), len(pairs))


def merge_totals(groups: Iterable[TextTotals]) -> TextTotals:
    out = TextTotals()
    for g in groups:
        out.bleu = [a + b for a, b in zip(out.bleu, g.bleu)]
        out.rouge1 += g.rouge1
        out.rougeL += g.rougeL
        out.n += g.n
    return out


def text_metrics(pairs: Sequence[tuple[str, str]]) -> TextMetrics:
    """pairs: (hypothesis, reference)."""
    return text_totals(pairs).metrics()
