"""Our metric implementations against hand-computed values and the reference libraries
(scikit-learn, sacrebleu, rouge-score), which are used here only."""

import math
import random

import pytest
from sklearn.metrics import f1_score, recall_score
from sklearn.preprocessing import MultiLabelBinarizer

from mellm.eval.metrics import (
    UNPARSED,
    accuracy,
    bleu_stats,
    class_metrics,
    corpus_bleu,
    lcs_length,
    mean_absolute_error,
    multilabel_f1,
    rouge_scores,
    set_f1,
    text_metrics,
)


def test_uf1_uar_hand_computed():
    # a: TP 3, FP 0, FN 1 -> F1 6/7, recall 3/4; b: TP 1, FP 2, FN 0 -> F1 1/2, recall 1;
    # c: TP 0, FN 1 -> F1 0, recall 0.
    m = class_metrics(["a", "a", "a", "a", "b", "c"], ["a", "a", "a", "b", "b", "b"])
    assert m.classes == ["a", "b", "c"]
    assert m.uf1 == pytest.approx((6 / 7 + 1 / 2 + 0) / 3)
    assert m.uar == pytest.approx((3 / 4 + 1 + 0) / 3)
    assert (m.per_class["b"].tp, m.per_class["b"].fp, m.per_class["b"].fn) == (1, 2, 0)


def test_unparsed_and_foreign_predictions_are_wrong_but_no_false_positive():
    # "x" is not a reference class and None is unparsed: both are misses for their reference only.
    m = class_metrics(["a", "a", "b"], ["a", None, "x"])
    assert m.per_class["a"].f1 == pytest.approx(2 / 3)  # TP 1, FN 1
    assert m.per_class["b"].f1 == 0.0
    assert m.uf1 == pytest.approx(1 / 3)
    assert m.uar == pytest.approx(1 / 4)
    assert m.confusion.cols == ["a", "b", "x", UNPARSED]
    assert m.confusion.counts == [[1, 0, 0, 1], [0, 0, 1, 0]]


@pytest.mark.parametrize("seed", range(25))
def test_uf1_uar_equal_sklearn_macro_on_random_labels(seed):
    rng = random.Random(seed)
    classes = [f"c{i}" for i in range(rng.randint(2, 7))]
    n = rng.randint(1, 120)
    y_true = [rng.choice(classes) for _ in range(n)]
    # predictions include classes absent from the references and unparsed answers
    y_pred = [rng.choice(classes + ["other", None]) for _ in range(n)]
    labels = sorted(set(y_true))
    m = class_metrics(y_true, y_pred)
    sk_pred = ["(none)" if p is None else p for p in y_pred]
    assert m.uf1 == pytest.approx(f1_score(y_true, sk_pred, labels=labels, average="macro", zero_division=0))
    assert m.uar == pytest.approx(recall_score(y_true, sk_pred, labels=labels, average="macro", zero_division=0))


def test_multilabel_f1_hand_computed():
    # AU4: TP; AU7: FN; AU12: TP; AU14: FP -> micro 2*2/(4+1+1), macro (1+0+1+0)/4
    m = multilabel_f1([{4, 7}, {12}], [{4}, {12, 14}])
    assert m.micro_f1 == pytest.approx(4 / 6)
    assert m.macro_f1 == pytest.approx(0.5)
    assert (m.per_label["14"].fp, m.per_label["7"].fn) == (1, 1)


@pytest.mark.parametrize("seed", range(15))
def test_multilabel_f1_equals_sklearn(seed):
    rng = random.Random(seed)
    aus = [1, 2, 4, 6, 7, 12, 14, 15, 17]
    n = rng.randint(1, 60)
    true = [set(rng.sample(aus, rng.randint(1, 3))) for _ in range(n)]
    pred = [set(rng.sample(aus, rng.randint(0, 3))) for _ in range(n)]
    mlb = MultiLabelBinarizer(classes=sorted(set().union(*true, *pred)))
    t, p = mlb.fit_transform(true), mlb.transform(pred)
    m = multilabel_f1(true, pred)
    assert m.micro_f1 == pytest.approx(f1_score(t, p, average="micro", zero_division=0))
    assert m.macro_f1 == pytest.approx(f1_score(t, p, average="macro", zero_division=0))


def test_set_f1_accuracy_mae():
    assert set_f1({1, 2}, {1}) == pytest.approx(2 / 3)
    assert set_f1(set(), set()) == 1.0
    assert set_f1({1}, set()) == 0.0
    a = accuracy(["yes", "no", "yes", "no"], ["yes", "yes", None, "no"])
    assert (a.accuracy, a.correct, a.n) == (0.5, 2, 4)
    assert mean_absolute_error([3, 0, 2], [3, 1, 5]) == pytest.approx(4 / 3)


def test_bleu_hand_computed():
    # precisions 4/5, 3/4, 2/3, 1/2, equal lengths: BLEU = (4/5 * 3/4 * 2/3 * 1/2) ** (1/4)
    assert corpus_bleu([bleu_stats("a b c d e", "a b c d f")]) == pytest.approx(0.2 ** 0.25)
    # a shorter hypothesis pays the brevity penalty exp(1 - 6/5)
    assert corpus_bleu([bleu_stats("a b c d e", "a b c d e f")]) == pytest.approx(math.exp(1 - 6 / 5))
    assert corpus_bleu([bleu_stats("yes", "no")]) == 0.0
    # "." is a token: the hypothesis's one 2-gram ("negative", ".") is not in the reference
    assert corpus_bleu([bleu_stats("Negative.", "negative")]) == 0.0


SENTENCES = [
    "The action units present are: brow lowerer, lid tightener. Therefore, the fine-grained expression class "
    "is anger, and the coarse expression class is negative.",
    "The action unit present is: lip corner puller. Therefore, the fine-grained expression class is happiness, "
    "and the coarse expression class is positive.",
    "negative", "yes", "no", "left", "brow lowerer, lid tightener", "lip corner puller, dimpler",
    "The brows lower and the lids tighten, which suggests anger.", "surprise", "",
]


def _random_corpus(rng, n):
    words = " ".join(SENTENCES).split()
    hyps, refs = [], []
    for _ in range(n):
        ref = rng.choice(SENTENCES[:-1])
        toks = ref.split()
        for _ in range(rng.randint(0, 4)):  # perturb: drop, swap or insert a word
            op = rng.random()
            if toks and op < 0.4:
                toks.pop(rng.randrange(len(toks)))
            elif op < 0.7:
                toks.insert(rng.randrange(len(toks) + 1), rng.choice(words))
            elif len(toks) > 1:
                i = rng.randrange(len(toks) - 1)
                toks[i], toks[i + 1] = toks[i + 1], toks[i]
        hyps.append(" ".join(toks))
        refs.append(ref)
    return hyps, refs


@pytest.mark.parametrize("seed", range(5))
def test_bleu_equals_sacrebleu(seed):
    import sacrebleu

    from mellm.eval.metrics import bleu_tokens

    hyps, refs = _random_corpus(random.Random(seed), 40)
    ours = corpus_bleu(bleu_stats(h, r) for h, r in zip(hyps, refs))
    # Same tokens, no smoothing: sacrebleu on our tokenisation must give the same number (x100).
    theirs = sacrebleu.corpus_bleu([" ".join(bleu_tokens(h)) for h in hyps], [[" ".join(bleu_tokens(r)) for r in refs]],
                                   tokenize="none", smooth_method="none", force=True).score / 100
    assert ours == pytest.approx(theirs, abs=1e-9)
    assert ours > 0


def test_rouge_hand_computed():
    r1, rl = rouge_scores("a b c", "a c d e")
    assert r1 == pytest.approx(4 / 7)  # overlap 2: P 2/3, R 2/4
    assert rl == pytest.approx(4 / 7)  # LCS "a c"
    r1, rl = rouge_scores("c a", "a c")
    assert (r1, rl) == (pytest.approx(1.0), pytest.approx(0.5))
    assert rouge_scores("", "a") == (0.0, 0.0)


@pytest.mark.parametrize("seed", range(5))
def test_rouge_equals_rouge_score(seed):
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rouge1", "rougeL"], use_stemmer=False)
    hyps, refs = _random_corpus(random.Random(100 + seed), 60)
    for h, r in zip(hyps, refs):
        ref = scorer.score(r, h)
        ours = rouge_scores(h, r)
        assert ours[0] == pytest.approx(ref["rouge1"].fmeasure)
        assert ours[1] == pytest.approx(ref["rougeL"].fmeasure)
    tm = text_metrics(list(zip(hyps, refs)))
    assert tm.rouge1 == pytest.approx(sum(scorer.score(r, h)["rouge1"].fmeasure for h, r in zip(hyps, refs)) / len(hyps))


def _lcs_table(a, b):
    t = [[0] * (len(b) + 1) for _ in range(len(a) + 1)]
    for i in range(len(a)):
        for j in range(len(b)):
            t[i + 1][j + 1] = t[i][j] + 1 if a[i] == b[j] else max(t[i][j + 1], t[i + 1][j])
    return t[-1][-1]


def test_bit_parallel_lcs_equals_dynamic_programming():
    rng = random.Random(3)
    for _ in range(400):
        a = [rng.choice("abcd") for _ in range(rng.randint(0, 70))]
        b = [rng.choice("abcd") for _ in range(rng.randint(0, 70))]
        assert lcs_length(a, b) == _lcs_table(a, b)
