"""Benchmark: `mellm eval score` on 100k synthetic predictions, against a naive implementation
measured in the same run.

The questions are the real MEGC 2025 training file repeated (ids made unique) to N rows, so the
question-type mix is the real one. The predictions are model-like: exact answers, case and synonym
variants, answers wrapped in a sentence, wrong labels, unparseable answers, and a share of verbose
answers that are unique strings (so caches cannot hide the parsing cost).

The naive baseline uses the same metric definitions written the obvious way: the question
classified on every row, labels found by one re.search per vocabulary term per answer, ROUGE-L by
the O(n*m) table, BLEU n-gram Counters per answer without memoisation. It runs on the first
--baseline-n rows (the shared 2-core machine); rates per 1k rows are compared.

Usage: .venv/bin/python bench/eval_score.py [--n 100000] [--baseline-n 20000]
Writes bench/results/eval_score.json and .md.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.machine import describe_machine, machine_line  # noqa: E402
from mellm.eval.metrics import bleu_tokens, class_metrics, corpus_bleu, multilabel_f1, rouge_tokens  # noqa: E402
from mellm.eval.records import load_predictions  # noqa: E402
from mellm.eval.report import write_report  # noqa: E402
from mellm.eval.score import score_files  # noqa: E402
from mellm.labels import AU_BY_NAME, AU_NAMES, COARSE_SYNONYMS, EMOTION_SYNONYMS, format_au_list  # noqa: E402
from mellm.megc import load_questions  # noqa: E402
from mellm.vqa import combined_answer  # noqa: E402

TRAIN = ROOT / "data" / "megc2025" / "me_vqa_samm_casme2_smic.jsonl"
FINE = ["happiness", "surprise", "disgust", "repression", "fear", "sadness", "anger", "contempt"]
FINE_VARIANTS = {"happiness": ["happy", "Happiness", "joy"], "surprise": ["surprised", "Surprise"],
                 "disgust": ["disgusted"], "anger": ["angry", "Anger"], "sadness": ["sad"], "fear": ["fearful"],
                 "contempt": ["contemptuous"], "repression": ["repressed"]}


def synthetic(n: int, seed: int, folder: Path) -> tuple[Path, Path]:
    rng = random.Random(seed)
    base = [json.loads(line) for line in TRAIN.read_text().splitlines() if line.strip()]
    questions, predictions = [], []
    for i in range(n):
        row = dict(base[i % len(base)])
        row["id"] = f"{row['id']}_r{i // len(base)}"
        questions.append(json.dumps(row))
        predictions.append(json.dumps({"id": row["id"], "answer": _answer(rng, row, i)}))
    q, p = folder / "questions.jsonl", folder / "predictions.jsonl"
    q.write_text("\n".join(questions) + "\n")
    p.write_text("\n".join(predictions) + "\n")
    return q, p


def _answer(rng: random.Random, row: dict, i: int) -> str:
    truth, question = row["answer"], row["question"]
    roll = rng.random()
    if roll < 0.35:
        return truth
    if roll < 0.45:
        return "I cannot tell from these frames."
    if "shown on the face" in question:
        return rng.choice(["Yes", "No.", "yes, it is visible", f"No, clip {i} does not show it."])
    if "left or right" in question:
        return rng.choice(["left", "Right.", f"On the right side of subject {i}."])
    if "coarse" in question and "action unit" not in question:
        label = rng.choice(["negative", "positive", "surprise"])
        return rng.choice([label.upper(), f"The coarse expression class is {label}.",
                           f"Looking at clip {i}, the motion suggests a {label} expression."])
    if "fine-grained" in question and "action unit" not in question:
        label = rng.choice(FINE)
        return rng.choice([label, rng.choice(FINE_VARIANTS[label]),
                           f"In clip {i} the face shows {label} rather than {rng.choice(FINE)}."])
    aus = rng.sample(sorted(AU_NAMES), rng.randint(1, 3))
    if "present" in question:
        fine = rng.choice(FINE)
        return combined_answer(aus, fine, rng.choice(["negative", "positive", "surprise"]))
    return rng.choice([format_au_list(aus), " and ".join(f"AU{a}" for a in aus),
                       f"Clip {i}: {format_au_list(aus)} are active."])


# --- the naive baseline ------------------------------------------------------------------------

def naive_score(questions: Path, predictions: Path) -> dict:
    rows = [json.loads(line) for line in questions.read_text().splitlines() if line.strip()]
    preds = {}
    for line in predictions.read_text().splitlines():
        try:
            obj = json.loads(line)
            preds[obj["id"]] = obj["answer"]
        except (ValueError, KeyError):
            pass
    coarse_t, coarse_p, fine_t, fine_p, au_t, au_p, yn = [], [], [], [], [], [], []
    bleu = [0] * 10
    rouge1 = rougel = 0.0
    for row in rows:
        q = row["question"].lower()
        pred = preds.get(row["id"], "")
        kind = ("yesno" if "shown on the face" in q else "side" if "left or right" in q else
                "combined" if "present" in q else "au" if "action unit" in q else
                "fine" if "fine-grained" in q else "coarse")
        if kind == "coarse":
            coarse_t.append(_naive_label(row["answer"], COARSE_SYNONYMS))
            coarse_p.append(_naive_label(pred, COARSE_SYNONYMS))
        elif kind == "fine":
            fine_t.append(_naive_label(row["answer"], EMOTION_SYNONYMS))
            fine_p.append(_naive_label(pred, EMOTION_SYNONYMS))
        elif kind in ("au", "combined"):
            au_t.append(_naive_aus(row["answer"]))
            au_p.append(_naive_aus(pred))
        elif kind == "yesno":
            yn.append(pred.strip().lower().startswith(row["answer"]))
        h, r = bleu_tokens(pred), bleu_tokens(row["answer"])
        bleu[0] += len(h)
        bleu[1] += len(r)
        for n in range(1, 5):
            hn = Counter(tuple(h[i:i + n]) for i in range(len(h) - n + 1))
            rn = Counter(tuple(r[i:i + n]) for i in range(len(r) - n + 1))
            bleu[2 * n] += sum(min(c, rn[g]) for g, c in hn.items())
            bleu[2 * n + 1] += max(len(h) - n + 1, 0)
        ht, rt = rouge_tokens(pred), rouge_tokens(row["answer"])
        if ht and rt:
            overlap = sum((Counter(ht) & Counter(rt)).values())
            rouge1 += _f(overlap, len(ht), len(rt))
            rougel += _f(_lcs_table(rt, ht), len(ht), len(rt))
    return {
        "coarse_uf1": class_metrics(coarse_t, coarse_p).uf1,
        "fine_uf1": class_metrics(fine_t, fine_p).uf1,
        "au_micro_f1": multilabel_f1(au_t, au_p).micro_f1,
        "yesno_accuracy": sum(yn) / max(len(yn), 1),
        "bleu4": corpus_bleu([tuple(bleu)]),
        "rouge1": rouge1 / len(rows),
        "rougeL": rougel / len(rows),
    }


def _naive_label(text: str, vocab: dict[str, str]) -> str | None:
    found = {v for k, v in vocab.items() if re.search(r"\b" + re.escape(k) + r"\b", text.lower())}
    return found.pop() if len(found) == 1 else None


def _naive_aus(text: str) -> set[int]:
    low = text.lower()
    found = {a for name, a in AU_BY_NAME.items() if re.search(r"\b" + re.escape(name) + r"s?\b", low)}
    found |= {int(m) for m in re.findall(r"\bau ?(\d{1,2})\b", low) if int(m) in AU_NAMES}
    return found


def _lcs_table(a, b) -> int:
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0]
        for j, y in enumerate(b):
            cur.append(prev[j] + 1 if x == y else max(prev[j + 1], cur[j]))
        prev = cur
    return prev[-1]


def _f(overlap: int, nh: int, nr: int) -> float:
    if not overlap:
        return 0.0
    p, r = overlap / nh, overlap / nr
    return 2 * p * r / (p + r)


# --- the run ---------------------------------------------------------------------------------

def clear_caches() -> None:
    """Forget every memoised parse and text score, so each measurement starts cold like a new
    `mellm eval score` process (the baseline subset repeats the strings of the big run)."""
    from mellm import answers, megc
    from mellm.eval import metrics

    for cached in (answers._parse, metrics.bleu_stats, metrics.rouge_scores, metrics._reference_ngrams,
                   metrics._reference_rouge, megc.canonical_dataset):
        cached.cache_clear()


def timed(fn, *args, **kw):
    """(result, (wall seconds, CPU seconds of this process and its children)). CPU time is the
    steadier figure on a shared machine: waiting for a core does not count."""
    import resource

    def cpu():
        own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
        return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime

    t, c = time.perf_counter(), cpu()
    out = fn(*args, **kw)
    return out, (round(time.perf_counter() - t, 3), round(cpu() - c, 3))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--baseline-n", type=int, default=20_000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = ap.parse_args()
    machine = describe_machine()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        q, p = synthetic(args.n, args.seed, tmp)
        (tmp / "baseline").mkdir()
        bq, bp = synthetic(args.baseline_n, args.seed, tmp / "baseline")
        _, t_read = timed(lambda: (load_questions(q), load_predictions(p)))
        clear_caches()
        report, t_score = timed(score_files, q, p)
        _, t_write = timed(write_report, report, tmp / "report")
        cli = [sys.executable, "-m", "mellm.cli", "eval", "score", "--questions", str(q), "--predictions", str(p),
               "--out", str(tmp / "cli")]
        proc, t_cli = timed(subprocess.run, cli, cwd=ROOT, capture_output=True, text=True)
        if proc.returncode != 0:
            raise SystemExit(f"CLI failed: {proc.stderr}")
        clear_caches()
        small, t_small = timed(score_files, bq, bp)
        naive, t_naive = timed(naive_score, bq, bp)
    result = {
        "n_predictions": args.n,
        "seconds_wall_cpu": {"read both files": t_read, "score_files (read + parse + metrics)": t_score,
                             "write_report (json + md + 2 png)": t_write,
                             "CLI end to end (new process, imports included)": t_cli},
        "baseline": {"n_predictions": args.baseline_n, "ours_s": t_small, "naive_s": t_naive,
                     "speedup_cpu": round(t_naive[1] / t_small[1], 1),
                     "ours_cpu_ms_per_1k": round(1e6 * t_small[1] / args.baseline_n, 1),
                     "naive_cpu_ms_per_1k": round(1e6 * t_naive[1] / args.baseline_n, 1),
                     "text_metrics_agree": all(abs(naive[k] - getattr(small.text, k)) < 1e-9
                                               for k in ("bleu4", "rouge1", "rougeL"))},
        "scores_on_the_synthetic_predictions": {
            "coarse_uf1": report.coarse.overall.uf1, "fine_uf1": report.fine.overall.uf1,
            "au_micro_f1": report.au.micro_f1, "bleu4": report.text.bleu4, "rouge1": report.text.rouge1,
            "unparsed": len(report.unparsed)},
        "machine": {**machine, "load_avg_1m_end": os.getloadavg()[0]},
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "eval_score.json").write_text(json.dumps(result, indent=1) + "\n")
    (args.out / "eval_score.md").write_text(markdown(result))
    print(markdown(result))


def markdown(r: dict) -> str:
    m, b = r["machine"], r["baseline"]
    lines = [f"# `mellm eval score` benchmark: {r['n_predictions']:,} predictions", "",
             f"Machine: {machine_line(m)}; load average at the end {m['load_avg_1m_end']:.2f}.", "",
             "| step | wall s | CPU s |", "|---|---|---|"]
    lines += [f"| {k} | {w} | {c} |" for k, (w, c) in r["seconds_wall_cpu"].items()]
    lines += ["", f"Naive baseline on the first {b['n_predictions']:,} of those predictions (same run):", "",
              "| implementation | wall s | CPU s | CPU ms per 1k predictions |", "|---|---|---|---|",
              f"| ours (eval.score.score_files) | {b['ours_s'][0]} | {b['ours_s'][1]} | {b['ours_cpu_ms_per_1k']} |",
              f"| naive | {b['naive_s'][0]} | {b['naive_s'][1]} | {b['naive_cpu_ms_per_1k']} |", "",
              f"Speed-up (CPU) {b['speedup_cpu']}x; BLEU/ROUGE of the two agree: {b['text_metrics_agree']}.", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
