"""`mellm build-data`."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer


def build_data(
    dataset: list[str] = typer.Option(..., help="Dataset name: casme2, samm, smic, casme3, dfme, 4dme, megc or synth; long videos (ME-LVQA): "
                                                "samm_lv, casme2_lv, casme3_lv, megc_lvqa (with --questions) or synthlv. "
                                                "Repeat with --root for a composite (e.g. casme2 + samm + smic)."),
    root: list[Path] = typer.Option(..., help="The dataset's folder (annotation file and frames); one per --dataset."),
    out: Path = typer.Option(..., help="Output folder for the MEU-Instruct dataset."),
    workers: int = typer.Option(1, min=1, help="Perception processes (one clip each)."),
    flow: str = typer.Option("tvl1", help="Optical flow: tvl1, dis, farneback or meflownet (learned; needs --flow-checkpoint)."),
    flow_checkpoint: Optional[Path] = typer.Option(None, help="meflownet: a `mellm train-flow` run directory or its model/meflownet.pt."),
    questions: Optional[Path] = typer.Option(None, help="--dataset megc / megc_lvqa: the MEGC question file with answers."),
    cache: Optional[Path] = typer.Option(None, help="Perception cache folder (default OUT/cache); share it between builds."),
    images: str = typer.Option("onset,apex,flow", help="Images per sample, in order: onset, apex, flow."),
    evidence: bool = typer.Option(True, "--evidence/--no-evidence",
                                  help="Put the measured motion description in the prompt (flow-guided variant)."),
    negatives: int = typer.Option(2, min=0, help="'Is AU X shown?' questions answered 'no', per clip."),
    seed: int = typer.Option(0, help="Seed for splits and sampled negatives."),
    limit: Optional[int] = typer.Option(None, min=1, help="At most this many clips per dataset (a quick trial)."),
    exports: bool = typer.Option(True, "--exports/--no-exports", help="Also write LLaMA-Factory and ms-swift files."),
    calibration: Optional[Path] = typer.Option(None, help="Per-AU thresholds from `mellm calibrate` (recorded in build.json and serving.json)."),
):
    """Turn dataset folders into MEU-Instruct instruction data (HF dataset, JSONL, exports, card).

    Perception runs once per clip and is cached by clip content and settings: a rerun, or an interrupted run started again, only computes what is missing. Clips that fail are listed in OUT/failures.jsonl with their reason; the build goes on without them.
    """
    from mellm.analyze import PerceptionSettings
    from mellm.calibrate import with_calibration
    from mellm.data_builders.build import BuildConfig, build
    from mellm.data_builders.export import PromptOptions
    from mellm.data_builders.instruct import SampleOptions
    from mellm.errors import MellmError
    from mellm.prompts import IMAGE_ROLE_TEXT

    if out.exists() and not out.is_dir():
        raise MellmError(f"--out {out} is a file, not a folder")
    if len(dataset) != len(root):
        raise MellmError(f"give one --root per --dataset ({len(dataset)} datasets, {len(root)} roots)")
    roles = tuple(r.strip() for r in images.split(",") if r.strip())
    unknown = [r for r in roles if r not in IMAGE_ROLE_TEXT]
    if unknown:
        raise MellmError(f"--images: unknown image role(s) {', '.join(unknown)}; known: {', '.join(IMAGE_ROLE_TEXT)}")
    cfg = BuildConfig(
        datasets=list(zip(dataset, root)), out=out, workers=workers, perception=with_calibration(PerceptionSettings(
            flow=flow, flow_checkpoint=None if flow_checkpoint is None else str(flow_checkpoint.resolve())), calibration),
        prompt=PromptOptions(roles, evidence),
        samples=SampleOptions(negatives=negatives, seed=seed), cache=cache, questions=questions, limit=limit,
        exports=exports,
    )
    summary = build(cfg)
    typer.echo(f"built {summary.built} clips, {summary.failed} failed, {summary.cached} from cache; "
               f"samples: " + ", ".join(f"{s} {n}" for s, n in summary.samples.items()))
    for f in summary.failures[:5]:
        typer.echo(f"  failed: {f.clip}: {f.reason}: {f.message}", err=True)
    if summary.failed > 5:
        typer.echo(f"  ... and {summary.failed - 5} more in {out / 'failures.jsonl'}", err=True)
    wrote = ["hf", "hf_text", "jsonl", *(["exports"] if exports else []), "card.md", "build.json"]
    typer.echo(f"wrote {out}/{', '.join(wrote)}")
