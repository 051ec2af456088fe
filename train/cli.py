"""`mellm train | merge | export | tiny-model`: thin wrappers over train/*, mounted on the main CLI
in mellm/cli.py. Heavy libraries load inside the commands."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Optional

import typer


def train(
    config: Path = typer.Option(..., "--config", help="Training config YAML (configs/train/*.yaml)."),
    overrides: Optional[list[str]] = typer.Argument(None, help="key=value overrides, e.g. train.lr=1e-4 "
                                                    "output_dir=runs/x data.dir=DIR"),
    fold: Optional[int] = typer.Option(None, help="LOSO fold K of DATA/splits.json: train without its "
                                       "subjects; the run directory gets a fold_K subfolder."),
    dry_run: bool = typer.Option(False, help="Validate the config against the disk and print it; load no model."),
    quiet: bool = typer.Option(False, help="No progress bars."),
):
    """LoRA / QLoRA fine-tuning on MEU-Instruct: supervised (method: sft) or GRPO with AU-grounded rewards
    (method: grpo, e.g. --config qwen2_5_vl_7b_grpo). Multi-GPU: accelerate launch -m mellm.cli train ..."""
    from mellm.train.config import load_config

    items = list(overrides or [])
    if fold is not None:
        items.append(f"data.fold={fold}")
    cfg = load_config(config, items)
    if fold is not None:
        cfg.output_dir = cfg.output_dir / f"fold_{fold}"
    if dry_run:
        from mellm.train.preflight import preflight

        report = preflight(cfg)
        if cfg.method == "grpo":
            from mellm.train.grpo import check_grpo

            report["grpo"] = check_grpo(cfg)
        typer.echo(cfg.to_yaml())
        typer.echo(f"preflight ok: {json.dumps(report)}", err=True)
        return
    from mellm.train.recipe import train as run

    result = run(cfg, progress=not quiet)
    if os.environ.get("RANK", "0") != "0":  # under a distributed launcher only rank 0 reports
        return
    typer.echo(f"adapter: {result.adapter_dir}")
    typer.echo(f"run directory: {result.run_dir} (config, versions, data fingerprint, metrics, tensorboard/)",
               err=True)

def merge(
    adapter: Path = typer.Option(..., help="LoRA adapter directory (RUN/adapter)."),
    out: Path = typer.Option(..., help="Output directory for the merged full model."),
    base: Optional[str] = typer.Option(None, help="Base model; default: the one the adapter names."),
    dtype: str = typer.Option("bfloat16", help="bfloat16, float16 or float32."),
):
    """Merge a LoRA adapter into its base model (a full model directory vLLM serves as is)."""
    from mellm.train.merge import merge_adapter

    typer.echo(f"merged model: {merge_adapter(adapter, out, base=base, dtype=dtype)}")

def export(
    adapter: Path = typer.Option(..., help="LoRA adapter directory (RUN/adapter)."),
    out: Path = typer.Option(..., help="Output directory."),
    merge: bool = typer.Option(False, "--merge", help="Export a merged full model instead of the adapter."),
    base: Optional[str] = typer.Option(None, help="Base model; default: the one the adapter names."),
    dtype: str = typer.Option("bfloat16", help="dtype of a merged model."),
):
    """Write what vLLM needs to serve an adapter (or the merged model), with the command line."""
    from mellm.train.merge import export_for_vllm

    path = export_for_vllm(adapter, out, merge=merge, base=base, dtype=dtype)
    notes = json.loads((path / "serving.json").read_text())
    typer.echo(notes["command"])

def tiny_model(
    out: Path = typer.Option(..., help="Output model directory."),
    arch: str = typer.Option("qwen2_5_vl", help="qwen2_5_vl, qwen2_vl, qwen3_vl or qwen2 (text-only)."),
    seed: int = typer.Option(0, help="Seed of the random weights."),
    head_gain: float = typer.Option(None, help="Weight of the final norm: 10 lets the next-token distributions "
                                    "be peaked, as GRPO's sampling needs (default 1: nearly flat)."),
):
    """Build a tiny random model (tokenizer, processor, chat template included) with no download."""
    from mellm.train.tiny_models import build_tiny_model

    typer.echo(str(build_tiny_model(out, arch=arch, seed=seed, head_gain=head_gain)))
