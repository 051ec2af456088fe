"""Where folds run. Every launcher runs the same fold command, `mellm loso-fold --out RUNS --fold K`,
in its own process, so a fold gives the same result wherever it ran; none schedules anything itself:

- local:  one fold after another on this machine (the default).
- gpus:   this machine's GPUs, one fold per GPU at a time (CUDA_VISIBLE_DEVICES per fold process),
          through concurrent.futures.
- slurm:  a SLURM job array, one array task per fold (the task id is the fold number), plus a
          pooling job that waits for the array (afterany); the sbatch scripts are written to
          RUNS/slurm/ and submitted with `sbatch` when it is there.
- ray:    a Ray cluster (or a local Ray instance), one Ray task per fold with one GPU each
          (`num_gpus`, 0 on a cluster without GPUs).

Only folds not done yet are launched, so a rerun resumes; a fold that fails is recorded and the
others go on.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path

from mellm.errors import ConfigError
from mellm.loso.plan import compress, fold_dir, mark_dead

LAUNCHERS = ("local", "gpus", "slurm", "ray")


@dataclass
class LaunchConfig:
    launcher: str = "local"
    gpus: list[str] | None = None  # gpus launcher: device ids; None: every visible GPU
    slurm_options: dict[str, str] = field(default_factory=dict)  # #SBATCH --KEY=VALUE lines
    slurm_setup: str = ""  # shell lines run before the fold (module load ..., source .venv/bin/activate)
    slurm_parallel: int | None = None  # at most this many array tasks at once (%N)
    submit: bool = True  # slurm: call sbatch when it is on PATH
    ray_address: str | None = None  # None: connect to RAY_ADDRESS, else start a local instance
    ray_gpus_per_fold: float | None = None  # None: 1 when the cluster has GPUs, else 0
    ray_cpus_per_fold: float = 1
    python: str = sys.executable


def fold_command(out: Path, fold: int | str, python: str | None = None) -> list[str]:
    """The one fold command every launcher runs."""
    return [python or sys.executable, "-m", "mellm.cli", "loso-fold", "--out", str(Path(out).resolve()),
            "--fold", str(fold)]


def run_fold_process(out: Path, fold: int, env: dict | None = None, python: str | None = None) -> int:
    """Run the fold command as a child process, its output in RUNS/fold_K/log.txt; -> exit code.
    A child that dies without recording an outcome is marked failed here."""
    log = fold_dir(out, fold) / "log.txt"
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as f:
        rc = subprocess.run(fold_command(out, fold, python), stdout=f, stderr=subprocess.STDOUT,
                            env={**os.environ, **(env or {})}).returncode
    if rc != 0:
        mark_dead(out, fold, rc)
    return rc


Report = Callable[[int, int], None]  # (fold, exit code), called as each fold ends


def launch_local(out: Path, folds: list[int], cfg: LaunchConfig, report: Report) -> None:
    for fold in folds:
        report(fold, run_fold_process(out, fold, python=cfg.python))


def visible_gpus() -> list[str]:
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        return [g.strip() for g in env.split(",") if g.strip()]
    try:
        import torch

        return [str(i) for i in range(torch.cuda.device_count())]
    except ImportError:
        return []


def launch_gpus(out: Path, folds: list[int], cfg: LaunchConfig, report: Report) -> None:
    gpus = cfg.gpus if cfg.gpus is not None else visible_gpus()
    if not gpus:
        raise ConfigError("--launcher gpus: no GPU is visible (CUDA_VISIBLE_DEVICES / torch.cuda); use --launcher local "
                          "or name devices with --gpus 0,1")
    free = list(gpus)
    import threading

    lock = threading.Lock()

    def one(fold: int) -> tuple[int, int]:
        with lock:
            gpu = free.pop(0)
        try:
            return fold, run_fold_process(out, fold, env={"CUDA_VISIBLE_DEVICES": gpu}, python=cfg.python)
        finally:
            with lock:
                free.append(gpu)

    with ThreadPoolExecutor(max_workers=len(gpus)) as pool:
        for done in as_completed([pool.submit(one, f) for f in folds]):
            report(*done.result())


# --- SLURM ---------------------------------------------------------------------------------

DEFAULT_SLURM = {"gres": "gpu:1", "cpus-per-task": "8", "mem": "64G", "time": "06:00:00"}


def slurm_scripts(out: Path, folds: list[int], cfg: LaunchConfig) -> tuple[Path, Path]:
    """RUNS/slurm/folds.sbatch (the job array, one task per fold) and RUNS/slurm/pool.sbatch."""
    out = Path(out).resolve()
    folder = out / "slurm"
    folder.mkdir(parents=True, exist_ok=True)
    options = {**DEFAULT_SLURM, **cfg.slurm_options}
    array = compress(folds) + (f"%{cfg.slurm_parallel}" if cfg.slurm_parallel else "")
    setup = [line for line in cfg.slurm_setup.splitlines() if line.strip()]
    head = ["#!/bin/bash", "#SBATCH --job-name=mellm-loso", f"#SBATCH --array={array}",
            f"#SBATCH --output={folder}/fold_%a.out"]
    head += [f"#SBATCH --{k}={v}" for k, v in options.items() if v]
    fold_cmd = fold_command(out, "${SLURM_ARRAY_TASK_ID}", cfg.python)
    # shlex would quote the task-id variable away; it is the only unquoted word.
    cmd = " ".join(shlex.quote(w) if "SLURM_ARRAY_TASK_ID" not in w else f'"{w}"' for w in fold_cmd)
    body = ["set -euo pipefail", f"cd {shlex.quote(os.getcwd())}", *setup,
            "# the array task id is the fold number (RUNS/loso.json)", f"exec {cmd}"]
    folds_script = folder / "folds.sbatch"
    folds_script.write_text("\n".join(head + [""] + body) + "\n")
    pool_opts = {k: v for k, v in options.items() if k not in ("gres", "gpus", "mem", "cpus-per-task")}
    pool_opts["time"] = "00:30:00"
    pool_head = ["#!/bin/bash", "#SBATCH --job-name=mellm-loso-pool", f"#SBATCH --output={folder}/pool.out"]
    pool_head += [f"#SBATCH --{k}={v}" for k, v in pool_opts.items() if v]
    pool_cmd = " ".join(shlex.quote(w) for w in [cfg.python, "-m", "mellm.cli", "loso-pool", "--out", str(out)])
    pool_script = folder / "pool.sbatch"
    pool_script.write_text("\n".join(pool_head + ["", "set -euo pipefail", f"cd {shlex.quote(os.getcwd())}", *setup,
                                                  f"exec {pool_cmd}"]) + "\n")
    return folds_script, pool_script


def launch_slurm(out: Path, folds: list[int], cfg: LaunchConfig) -> dict:
    """Write the scripts; submit the array and then the pooling job (afterany) when sbatch is here."""
    folds_script, pool_script = slurm_scripts(out, folds, cfg)
    result = {"folds_script": folds_script, "pool_script": pool_script, "array": compress(folds), "submitted": False}
    if not cfg.submit or shutil.which("sbatch") is None:
        result["commands"] = [f"jobid=$(sbatch --parsable {folds_script})",
                              f"sbatch --dependency=afterany:$jobid {pool_script}"]
        return result
    array_id = _sbatch(["sbatch", "--parsable", str(folds_script)])
    pool_id = _sbatch(["sbatch", "--parsable", f"--dependency=afterany:{array_id}", str(pool_script)])
    return {**result, "submitted": True, "array_job": array_id, "pool_job": pool_id}


def _sbatch(cmd: list[str]) -> str:
    from mellm.errors import MellmError

    r = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    if r.returncode != 0:
        raise MellmError(f"{' '.join(cmd)} failed ({r.returncode}): {r.stderr.strip()[-500:]}")
    return r.stdout.strip().split(";")[0]


# --- Ray -----------------------------------------------------------------------------------


def _ray_fold(out: str, fold: int) -> tuple[int, int]:
    """A Ray task: the fold command in a child process of the worker, with the worker's Python
    (a cluster node's own environment) and the GPU Ray assigned it (Ray sets CUDA_VISIBLE_DEVICES)."""
    return fold, run_fold_process(Path(out), fold, python=sys.executable)


def launch_ray(out: Path, folds: list[int], cfg: LaunchConfig, report: Report) -> None:
    try:
        import ray
    except ImportError:
        raise ConfigError("--launcher ray needs Ray: pip install 'mellm[cluster]' (or pip install ray)") from None
    started_here = False
    if not ray.is_initialized():
        address = cfg.ray_address or os.environ.get("RAY_ADDRESS")
        # A local instance binds to this machine only and sends no usage statistics.
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        ray.init(address=address, include_dashboard=False, logging_level="warning",
                 **({} if address else {"num_cpus": max(1, os.cpu_count() or 1)}))
        started_here = True
    try:
        gpus = cfg.ray_gpus_per_fold
        if gpus is None:
            gpus = 1 if ray.cluster_resources().get("GPU", 0) >= 1 else 0
        task = ray.remote(num_gpus=gpus, num_cpus=cfg.ray_cpus_per_fold, max_retries=0)(_ray_fold)
        waiting = [task.remote(str(Path(out).resolve()), f) for f in folds]
        while waiting:
            ready, waiting = ray.wait(waiting, num_returns=1)
            report(*ray.get(ready[0]))
    finally:
        if started_here:
            ray.shutdown()
