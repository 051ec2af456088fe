"""`mellm loso | loso-fold | loso-pool`, mounted on the main CLI in mellm/cli.py."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Optional

import typer


def loso(
    config: Path = typer.Option(..., "--config", help="Training config YAML (or a packaged config's name)."),
    overrides: Optional[list[str]] = typer.Argument(None, help="key=value overrides of the training config; "
                                                    "data.dir=DIR (a mellm build-data output) is needed."),
    out: Path = typer.Option(..., help="Run folder: loso.json, fold_K/, pooled/, summary.md."),
    folds: Optional[str] = typer.Option(None, help="Folds to run, e.g. 1,5-9 (default: all of DATA/splits.json)."),
    launcher: str = typer.Option("local", help="local (one fold after another), gpus (one fold per visible GPU), "
                                 "slurm (a job array; writes and submits sbatch scripts) or ray (one Ray task per fold)."),
    engine: str = typer.Option("auto", help="Prediction engine: vllm, transformers, or auto (vllm on a GPU)."),
    max_new_tokens: int = typer.Option(512, min=1, help="Answer length limit (tokens)."),
    batch_size: int = typer.Option(8, min=1, help="Questions per generate call (transformers engine)."),
    qtypes: Optional[str] = typer.Option(None, help="Question types to predict, e.g. coarse,fine (default: the "
                                         "config's data.qtypes, else all)."),
    keep_checkpoints: bool = typer.Option(False, help="Keep each fold's checkpoint-N/ folders (default: only the adapter)."),
    gpus: Optional[str] = typer.Option(None, help="gpus launcher: device ids, e.g. 0,1,2,3 (default: all visible)."),
    slurm: Optional[list[str]] = typer.Option(None, help="slurm launcher: an #SBATCH option as KEY=VALUE, repeatable "
                                              "(partition=gpu, time=08:00:00, gres=gpu:a100:1, account=...)."),
    slurm_setup: str = typer.Option("", help="slurm launcher: shell lines run first in each job (module load ...; "
                                    "source .venv/bin/activate)."),
    slurm_parallel: Optional[int] = typer.Option(None, min=1, help="slurm launcher: at most N array tasks at once."),
    no_submit: bool = typer.Option(False, "--no-submit", help="slurm launcher: write the scripts, do not call sbatch."),
    ray_address: Optional[str] = typer.Option(None, help="ray launcher: the cluster (default: RAY_ADDRESS, else a "
                                              "local Ray instance on this machine)."),
    ray_gpus: Optional[float] = typer.Option(None, help="ray launcher: GPUs per fold (default: 1 when the cluster has GPUs, else 0)."),
):
    """Leave-one-subject-out over every fold of the data: train, predict, pool, score.

    Each fold trains on every subject but its own (mellm train --fold K),
    predicts its held-out subjects' questions with the adapter it saved,
    through the serving prompt (vLLM offline, or transformers on a CPU),
    and records itself in OUT/fold_K/fold.json. Then every finished fold's
    predictions are pooled into one MEGC predictions file and scored once:
    OUT/pooled/report.md and OUT/summary.md (UF1/UAR coarse and fine,
    pooled and per dataset, per-fold wall times, config hash, versions).

    Rerun the same command to resume: finished folds are skipped, failed or
    interrupted ones run again. The launcher only decides where a fold
    runs; the fold command (mellm loso-fold) is the same everywhere.
    """
    from mellm.loso.launchers import LAUNCHERS, LaunchConfig, launch_gpus, launch_local, launch_ray, launch_slurm
    from mellm.loso.plan import PredictSettings, compress, make_plan, parse_folds, pending, write_or_check
    from mellm.loso.pool import markdown, pool

    if launcher not in LAUNCHERS:
        from mellm.errors import ConfigError

        raise ConfigError(f"--launcher {launcher!r}: use one of {', '.join(LAUNCHERS)}")
    predict = PredictSettings(engine=engine, batch_size=batch_size, max_new_tokens=max_new_tokens,
                              qtypes=[q.strip() for q in qtypes.split(",") if q.strip()] if qtypes else None)
    plan = write_or_check(out, make_plan(str(config), list(overrides or []), predict, keep_checkpoints))
    chosen = parse_folds(folds, plan.fold_ids())
    todo = pending(out, chosen)
    typer.echo(f"LOSO: {len(plan.folds)} folds in the data, {len(chosen)} selected, {len(chosen) - len(todo)} done "
               f"already, {len(todo)} to run ({compress(todo) or 'none'}) with the {launcher} launcher; "
               f"config hash {plan.config_hash}", err=True)
    cfg = LaunchConfig(launcher=launcher, gpus=[g.strip() for g in gpus.split(",")] if gpus else None,
                       slurm_options=_key_values(slurm or []), slurm_setup=slurm_setup,
                       slurm_parallel=slurm_parallel, submit=not no_submit, ray_address=ray_address,
                       ray_gpus_per_fold=ray_gpus)
    if launcher == "slurm":
        if not todo:
            typer.echo(f"nothing to submit; pooling now: mellm loso-pool --out {out}", err=True)
        else:
            r = launch_slurm(out, todo, cfg)
            typer.echo(f"wrote {r['folds_script']} (array {r['array']}) and {r['pool_script']}", err=True)
            if r["submitted"]:
                typer.echo(f"submitted array job {r['array_job']}; pooling job {r['pool_job']} runs after it", err=True)
            else:
                typer.echo("sbatch is not here (or --no-submit); submit with:\n  " + "\n  ".join(r["commands"]), err=True)
            return
    t0 = time.time()
    failed: list[int] = []

    def report(fold: int, rc: int) -> None:
        (failed.append(fold) if rc != 0 else None)
        typer.echo(f"fold {fold}: {'done' if rc == 0 else f'FAILED (exit {rc}), see {out}/fold_{fold}/log.txt'} "
                   f"[{time.time() - t0:.0f} s]", err=True)

    if todo:
        {"local": launch_local, "gpus": launch_gpus, "ray": launch_ray}[launcher](out, todo, cfg, report)
    summary = pool(out, chosen)
    typer.echo(markdown(summary))
    if summary["folds"]["failed"] or summary["folds"]["not_done"]:
        typer.secho(f"{len(summary['folds']['failed'])} fold(s) failed; rerun the same command to retry them",
                    fg="yellow", err=True)
        raise typer.Exit(1)


def loso_fold(
    out: Path = typer.Option(..., help="Run folder written by mellm loso (holds loso.json)."),
    fold: int = typer.Option(..., help="The fold number (DATA/splits.json); a SLURM array task passes its task id."),
    progress: bool = typer.Option(False, "--progress/--no-progress", help="Training progress bars."),
):
    """Run one LOSO fold of a run: train, predict its held-out subjects, record.

    What every launcher runs, in its own process. A fold that is done
    already is left alone; a failed or interrupted one starts again
    (training resumes from its last checkpoint).
    """
    from mellm.loso.fold import run_fold

    try:
        state = run_fold(out, fold, progress=progress)
    except Exception as e:
        typer.secho(f"fold {fold} failed: {type(e).__name__}: {e} (recorded in {out}/fold_{fold}/fold.json)",
                    fg="red", err=True)
        raise typer.Exit(1) from None
    typer.echo(f"fold {fold}: done, {state.get('n_questions')} questions, {state['wall_s']['total']:.0f} s", err=True)


def loso_pool(
    out: Path = typer.Option(..., help="Run folder written by mellm loso."),
    folds: Optional[str] = typer.Option(None, help="Pool only these folds, e.g. 0-9 (default: all)."),
):
    """Pool every finished fold's predictions and score them once (OUT/pooled/, OUT/summary.md).

    mellm loso does this at the end by itself; the SLURM launcher submits it as a job that waits for the array.
    """
    from mellm.loso.plan import load_plan, parse_folds
    from mellm.loso.pool import markdown, pool

    summary = pool(out, parse_folds(folds, load_plan(out).fold_ids()))
    typer.echo(markdown(summary))


def _key_values(items: list[str]) -> dict[str, str]:
    from mellm.errors import ConfigError

    out = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"--slurm {item!r}: use KEY=VALUE, e.g. partition=gpu")
        k, v = item.split("=", 1)
        out[k.strip().lstrip("-")] = v.strip()
    return out
