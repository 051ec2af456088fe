"""One LOSO fold, the same everywhere (laptop, GPU box, SLURM array task, Ray task):

    train on every subject but the fold's (mellm train --fold K, resuming from its checkpoints)
    -> predict the fold's held-out subjects' questions with the adapter just saved, reloaded from
       disk (mellm.eval.predict: the serving prompt, vLLM or transformers)
    -> score the fold alone (its own report; the pooled score comes later, from every fold)
    -> RUNS/fold_K/fold.json: done, with timings, subjects and counts

A fold that raises is recorded as failed with its error, and the command exits 1; a fold that is
already done is left alone.
"""

from __future__ import annotations

import gc
import json
import shutil
import time
import traceback
from pathlib import Path

from mellm.errors import MellmError
from mellm.loso.plan import Plan, fold_dir, host, is_done, load_plan, read_state, train_overrides, write_state


def run_fold(out: Path, fold: int, progress: bool = False) -> dict:
    """Run fold `fold` of the plan in RUNS=out; -> its fold.json record."""
    out = Path(out)
    plan = load_plan(out)
    test_subjects = plan.test_subjects(fold)
    if is_done(out, fold):
        return read_state(out, fold)
    attempt = int((read_state(out, fold) or {}).get("attempt", 0)) + 1
    started = time.time()
    write_state(out, fold, state="running", test_subjects=test_subjects, attempt=attempt, host=host(),
                started=time.strftime("%Y-%m-%dT%H:%M:%S%z"), error=None, config_hash=plan.config_hash)
    try:
        record = _run(plan, out, fold, test_subjects, progress)
    except BaseException as e:  # KeyboardInterrupt / SystemExit too: never leave "running" behind
        write_state(out, fold, state="failed", error=f"{type(e).__name__}: {e}",
                    traceback=traceback.format_exc()[-4000:], wall_s={"total": round(time.time() - started, 2)})
        raise
    record["wall_s"]["total"] = round(time.time() - started, 2)
    return write_state(out, fold, state="done", **record)


def _run(plan: Plan, out: Path, fold: int, test_subjects: list[str], progress: bool) -> dict:
    from mellm.eval.predict import PredictConfig, predict
    from mellm.eval.report import write_report
    from mellm.eval.score import score_files
    from mellm.train.config import load_config
    from mellm.train.recipe import train

    here = fold_dir(out, fold)
    cfg = load_config(plan.config_file, train_overrides(plan, fold, out))
    t0 = time.time()
    result = train(cfg, progress=progress)
    train_s = time.time() - t0
    metrics = dict(result.metrics)
    trained = json.loads((result.run_dir / "run.json").read_text())["data"]
    overlap = sorted(set(trained.get("train_subjects", [])) & set(test_subjects))
    if overlap:  # train/data.py filters by subject; this guards the protocol itself
        raise MellmError(f"fold {fold}: subject(s) {overlap} were trained on and are held out")
    del result
    _free_memory()

    t1 = time.time()
    p = plan.predict
    pred = predict(PredictConfig(
        data_dir=Path(plan.data_dir), model=cfg.model.name_or_path, adapter=cfg.output_dir / "adapter",
        out=here / "predict", subjects=test_subjects, qtypes=p.qtypes, engine=p.engine, dtype=cfg.model.dtype,
        text_only=cfg.model.text_only, batch_size=p.batch_size, max_new_tokens=p.max_new_tokens,
        max_model_len=p.max_model_len, gpu_memory_utilization=p.gpu_memory_utilization, seed=cfg.seed))
    predict_s = time.time() - t1
    report = score_files(pred.questions, pred.predictions)
    write_report(report, here / "report")
    if not plan.keep_checkpoints:  # the adapter is what the fold leaves; a 7B fold's checkpoints are GBs
        for ckpt in cfg.output_dir.glob("checkpoint-*"):
            shutil.rmtree(ckpt, ignore_errors=True)
    return {
        "train_subjects": trained.get("train_subjects", []),
        "train_rows": trained.get("train_rows"),
        "n_questions": pred.n,
        "engine": pred.engine,
        "train": {k: metrics.get(k) for k in ("global_step", "train_loss", "resumed_from")},
        "coarse_accuracy": _accuracy(report.coarse.overall),
        "wall_s": {"train": round(train_s, 2), "predict": round(predict_s, 2)},
    }


def _accuracy(metrics) -> float | None:
    if metrics is None:
        return None
    c = metrics.confusion
    hits = sum(c.counts[i][c.cols.index(r)] for i, r in enumerate(c.rows) if r in c.cols)
    return hits / max(1, metrics.n)


def _free_memory() -> None:
    """Hand the training process's GPU memory back before the prediction engine claims its share."""
    gc.collect()
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except ImportError:
        pass
