"""The `mellm` command line. Each sub-command is a thin wrapper over a stage's library code;
heavy imports happen inside the commands so `mellm --help` stays fast."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Optional

import typer

from mellm.errors import ConfigError, user_errors

app = typer.Typer(
    help="MELLM: micro-expression understanding with multimodal LLMs.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.callback()
def main_options(
    log_level: str = typer.Option("warning", "--log-level", envvar="MELLM_LOG_LEVEL",
                                  help="debug, info, warning or error. At info the gateway logs one line per request."),
):
    """MELLM: micro-expression understanding with multimodal LLMs."""
    import logging

    level = logging.getLevelName(log_level.upper())
    if not isinstance(level, int):
        typer.secho(f"error: --log-level {log_level!r}: use debug, info, warning or error", fg="red", err=True)
        raise typer.Exit(2)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def _range(text: str, what: str) -> tuple[float, float]:
    try:
        lo, _, hi = text.partition("-")
        out = (float(lo), float(hi or lo))
    except ValueError:
        raise ConfigError(f"{what} {text!r}: use LOW-HIGH, e.g. 0.2-1.0") from None
    if out[0] > out[1]:
        raise ConfigError(f"{what} {text!r}: LOW is above HIGH")
    return out


def _size(text: str) -> tuple[int, int]:
    match = re.fullmatch(r"\s*(\d{1,6})\s*[xX]\s*(\d{1,6})\s*", text)
    if not match:
        raise ConfigError(f"--size {text!r}: expected WIDTHxHEIGHT in pixels, e.g. 640x480")
    return int(match[1]), int(match[2])


@app.command()
@user_errors
def synth(
    out: Path = typer.Option(..., help="Output folder for the synthetic clips and labels.jsonl."),
    n: int = typer.Option(30, help="Number of clips."),
    seed: int = typer.Option(0, help="Random seed; the same seed gives the same clips."),
    frames: int = typer.Option(48, help="Frames per clip."),
    size: str = typer.Option("640x480", help="Frame size WxH."),
    fmt: str = typer.Option("frames", "--format", help="frames (PNG folders, JPEG with --jpeg-quality), video (FFV1 .mkv, H.264 .mp4 with --codec h264) or both."),
    drift: float = typer.Option(0.5, help="Fraction of clips with head drift (0-1)."),
    noise: float = typer.Option(1.0, help="Pixel noise standard deviation (grey levels)."),
    amplitude: str = typer.Option("0.3-2.0", help="Planted AU amplitude range at the apex, px (e.g. 0.2-1.0)."),
    identities: str = typer.Option("", help="Face identities (mellm.faces), comma-separated, or 'tuning' / 'held-out' (8 each). Default: the legacy astronaut subjects."),
    iod: str = typer.Option("", help="Face size range, px between the eyes (e.g. 50-120); needs --identities. Default: 90."),
    anywhere: bool = typer.Option(False, help="Place the face anywhere in the frame (needs --identities)."),
    jpeg_quality: Optional[int] = typer.Option(None, help="Write frames as JPEG at this quality (CASME II / SAMM ship JPEG)."),
    codec: str = typer.Option("ffv1", help="Video codec: ffv1 (lossless) or h264 (libx264, yuv420p)."),
    crf: int = typer.Option(18, help="H.264 constant rate factor."),
    blinks: float = typer.Option(0.0, help="Expected eye blinks per clip (>= 1: at least one in every clip)."),
    blink_during_me: float = typer.Option(0.5, help="Share of blinking clips whose first blink falls inside the ME."),
    rotation: float = typer.Option(0.8, help="Largest head rotation over a clip, degrees."),
    scale: float = typer.Option(0.01, help="Largest head scale change over a clip (0.02 = 2%)."),
    shift: float = typer.Option(3.0, help="Largest head translation over a clip, px."),
    sway: bool = typer.Option(False, help="Non-constant head motion: a smooth sway on top of the drift."),
    flicker: float = typer.Option(0.0, help="Lighting flicker amplitude (relative gain, e.g. 0.03)."),
    me_free: float = typer.Option(0.0, help="Share of clips with no micro-expression at all (nuisances only)."),
    long: bool = typer.Option(False, "--long", help="Long videos with several micro and macro events each (spotting, ME-LVQA): --seconds, --rate, --distractors, --no-events; --identities (first one), --codec, --crf, --noise, --size apply."),
    seconds: float = typer.Option(60.0, help="--long: seconds per video."),
    rate: float = typer.Option(30.0, help="--long: frame rate (30 like CAS(ME)^3, 200 like SAMM)."),
    distractors: bool = typer.Option(False, "--distractors/--clean", help="--long: blinks, head turns and drift, talking, lighting changes."),
    no_events: bool = typer.Option(False, "--no-events", help="--long: no expression events (false-positive tests)."),
):
    """Synthetic micro-expression clips with known AUs, timing and exact flow; lossless by default,
    or with the nuisances of real recordings (JPEG / H.264, blinks, head rotation and sway, flicker,
    small faces anywhere, ME-free clips), each recorded per clip in labels.jsonl.

    With --long: long videos with micro and macro events and distractors (labels.jsonl, intervals.jsonl, lvqa.jsonl).
    """
    from mellm.faces import HELD_OUT, TUNING
    from mellm.synth import SynthConfig, generate_corpus

    w, h = _size(size)
    named = {"tuning": tuple(i.name for i in TUNING), "held-out": tuple(i.name for i in HELD_OUT)}
    ids = named.get(identities) or tuple(x.strip() for x in identities.split(",") if x.strip())
    if long:
        from mellm.synth_long import LongConfig, generate_long

        try:
            cfg = LongConfig(seconds=seconds, fps=rate, width=w, height=h, identity=ids[0] if ids else "astronaut-0",
                             distractors=distractors, no_events=no_events, codec=codec, crf=crf, noise_std=noise)
        except ValueError as e:
            raise ConfigError(str(e)) from None
        generate_long(out, n=n, seed=seed, config=cfg, progress=True)
        return
    if (iod or anywhere) and not ids:
        raise ConfigError("--iod and --anywhere need --identities")
    try:
        cfg = SynthConfig(n_frames=frames, width=w, height=h, drift_fraction=drift, noise_std=noise, fmt=fmt,
                          amplitude=_range(amplitude, "--amplitude"), identities=ids,
                          iod_range=_range(iod, "--iod") if iod else None, place_anywhere=anywhere,
                          jpeg_quality=jpeg_quality, codec=codec, crf=crf, blink_rate=blinks,
                          blink_during_me=blink_during_me, max_rotation_deg=rotation, max_scale_change=scale,
                          max_drift_px=shift, head_sway=sway, flicker=flicker, me_free_fraction=me_free)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    generate_corpus(out, n=n, seed=seed, config=cfg, progress=True)


@app.command("flow-data")
@user_errors
def flow_data(
    out: Path = typer.Option(..., help="Output folder: train/ and heldout/ shards, flow_data.json, README.md (the card)."),
    seed: int = typer.Option(0, help="Random seed; the same seed and settings give the same shards."),
    n_train: int = typer.Option(2048, help="Training pairs (astronaut-derived identities)."),
    n_heldout: int = typer.Option(256, help="Held-out pairs (Grace Hopper identities, never trained on)."),
    size: int = typer.Option(256, help="Canonical crop side in pixels (perception's crop_size)."),
    shard_size: int = typer.Option(128, help="Pairs per shard."),
    train_identities: int = typer.Option(48, help="Identities made from the tuning photo."),
    heldout_identities: int = typer.Option(8, help="Identities made from the held-out photo."),
    workers: int = typer.Option(1, help="Processes writing shards."),
):
    """Onset-apex face-crop pairs with exact facial, head and expression flow, as shards a trainer streams.

    Expression motion comes from FACS-like AU displacement fields (0.05-2 px), head motion from similarity transforms, appearance from many identities, blur, noise, flicker and JPEG. A rerun resumes: shards already written are kept.
    """
    from mellm.meflow.data import FlowDataConfig, write_flow_data

    cfg = FlowDataConfig(size=size, n_train=n_train, n_heldout=n_heldout, shard_size=shard_size,
                         train_identities=train_identities, heldout_identities=heldout_identities)
    manifest = write_flow_data(out, cfg, seed=seed, workers=workers, progress=True)
    typer.echo(f"wrote {len(manifest['checksums'])} shards ({n_train} train, {n_heldout} held-out pairs) to {out}", err=True)


@app.command("train-flow")
@user_errors
def train_flow(
    config: Path = typer.Option(..., "--config", help="Flow training config: a YAML file or a packaged name (tiny_cpu, base_gpu)."),
    overrides: Optional[list[str]] = typer.Argument(None, help="key=value overrides, e.g. data=DIR output_dir=runs/x train.steps=500"),
    dry_run: bool = typer.Option(False, help="Check the config and the data, print the config; train nothing."),
    quiet: bool = typer.Option(False, help="No progress bar."),
):
    """Train the MEFlowNet-lite flow network on `mellm flow-data` shards. Multi-GPU: accelerate launch -m mellm.cli train-flow ...

    Writes RUN/config.yaml, metrics.jsonl, tensorboard/, checkpoint-N/ (resumed with train.resume=auto) and RUN/model/meflownet.pt, which `--flow meflownet --flow-checkpoint RUN` uses.
    """
    import yaml

    from mellm.meflow.train import load_config

    cfg = load_config(config, list(overrides or []))
    if dry_run:
        from mellm.meflow.data import load_manifest

        if cfg.data is None:
            raise typer.BadParameter("set data=DIR")
        manifest = load_manifest(cfg.data)
        typer.echo(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
        typer.echo(f"data ok: {manifest['counts']}", err=True)
        return
    from mellm.meflow.train import train

    run = train(cfg, progress=not quiet)
    typer.echo(f"wrote {run / 'model' / 'meflownet.pt'}", err=True)


@app.command()
@user_errors
def analyze(
    clip: Path = typer.Argument(..., help="A video file or a folder of frames (img1.jpg, img2.jpg, ...)."),
    out: Path = typer.Option(..., help="Output folder: evidence.json, flow.png, description.txt."),
    onset: Optional[int] = typer.Option(None, help="Onset frame, numbered as the annotation files do. Default: the first frame."),
    apex: Optional[int] = typer.Option(None, help="Apex frame. Default: spotted from the motion curve."),
    offset: Optional[int] = typer.Option(None, help="Offset frame; bounds apex spotting."),
    flow: str = typer.Option("tvl1", help="Optical flow: tvl1, dis, farneback or meflownet (learned; needs --flow-checkpoint)."),
    flow_checkpoint: Optional[Path] = typer.Option(None, help="meflownet: a `mellm train-flow` run directory or its model/meflownet.pt."),
    fps: Optional[float] = typer.Option(None, help="Frame rate of a frame folder (videos carry their own)."),
    calibration: Optional[Path] = typer.Option(None, help="Per-AU thresholds from `mellm calibrate` (recorded in evidence.json)."),
    legacy: bool = typer.Option(False, help="Perception as before the nuisance defences: no blink handling, head pre-alignment, flicker matching or noise floor, and apex spotting at 128 px without eye exclusion, pooling or head tracking."),
):
    """Motion evidence for one clip: regions, Action Units, description and flow colour map."""
    from mellm.analyze import PerceptionSettings, analyze_clip, save_analysis
    from mellm.calibrate import with_calibration

    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} is a file, not a folder")

    settings = (PerceptionSettings.legacy if legacy else PerceptionSettings)(
        flow=flow, flow_checkpoint=None if flow_checkpoint is None else str(flow_checkpoint.resolve()))
    result = analyze_clip(clip, onset=onset, apex=apex, offset=offset, fps=fps,
                          settings=with_calibration(settings, calibration))
    save_analysis(result, out)
    typer.echo(result.evidence.description)
    typer.echo(f"\nwrote {out / 'evidence.json'}, {out / 'flow.png'}, {out / 'description.txt'}", err=True)


@app.command()
@user_errors
def spot(
    video: Path = typer.Argument(..., help="A long video file or a folder of frames."),
    out: Path = typer.Option(..., help="Output folder: spots.json, curve.png, events/<k>/evidence.json."),
    fps: Optional[float] = typer.Option(None, help="Frame rate of a frame folder (videos carry their own)."),
    truth: Optional[Path] = typer.Option(None, help="intervals.jsonl with the true intervals: drawn on curve.png, and P/R/F1 printed."),
    evidence: bool = typer.Option(True, "--evidence/--no-evidence", help="Run the short-clip perception on each event's onset -> apex."),
    flow: str = typer.Option("dis", help="Optical flow of the per-event evidence: tvl1, dis, farneback or meflownet (needs --flow-checkpoint)."),
    flow_checkpoint: Optional[Path] = typer.Option(None, help="meflownet: a `mellm train-flow` run directory or its model/meflownet.pt."),
    max_analysis_fps: float = typer.Option(50.0, help="Analyse at most this many frames per second (frame skipping for high-speed video)."),
):
    """Spot micro- and macro-expressions in a long video (streamed, memory bounded) and analyse each event."""
    from mellm.analyze_long import analyze_long
    from mellm.spot import SpotSettings

    truth_rows = []
    if truth is not None:
        from mellm.eval.spotting import load_intervals

        truth_rows = [(i.onset, i.offset, i.type) for i in load_intervals(truth) if i.video in (video.stem, video.name)]
    spots = analyze_long(video, out, SpotSettings(max_analysis_fps=max_analysis_fps), fps=fps, evidence=evidence,
                         truth=truth_rows, flow=flow, progress=True,
                         flow_checkpoint=None if flow_checkpoint is None else str(flow_checkpoint.resolve()))
    typer.echo(spots.summary())
    for note in spots.notes:
        typer.secho(f"note: {note}", fg="yellow", err=True)
    if truth is not None:
        from mellm.eval.spotting import Interval, spotting_metrics

        m = spotting_metrics([Interval("v", a, b, t) for a, b, t in truth_rows],
                             [Interval("v", e.onset, e.offset, e.type) for e in spots.events])
        typer.echo(f"vs truth ({len(truth_rows)} intervals): P {m.overall.precision:.3f} R {m.overall.recall:.3f} "
                   f"F1 {m.overall.f1:.3f} at IoU >= 0.5")
    typer.echo(f"wrote {out / 'spots.json'}, {out / 'curve.png'}", err=True)


@app.command()
@user_errors
def calibrate(
    build: Path = typer.Option(..., help="A `mellm build-data --out` folder of a dataset with AU labels."),
    out: Path = typer.Option(..., help="The calibration file to write (JSON)."),
):
    """Fit per-AU decision thresholds from a build's evidence and AU labels.

    Each AU's threshold maximises its F1; F1 before (default threshold) and after is reported leave-one-subject-out, so no subject is scored by a threshold fitted on it. Give the file to analyze, build-data, serve or gateway with --calibration.
    """
    from mellm.calibrate import markdown, write_calibration

    doc = write_calibration(build, out)
    typer.echo(markdown(doc))
    typer.echo(f"wrote {out}", err=True)


# The stages' commands, in pipeline order. Their modules import only typer at the top.
from mellm.data_builders.cli import build_data  # noqa: E402
from mellm.eval.cli import app as eval_app  # noqa: E402
from mellm.loso.cli import loso, loso_fold, loso_pool  # noqa: E402
from mellm.serve.cli import ask, gateway, serve  # noqa: E402
from mellm.train.cli import export, merge, tiny_model, train  # noqa: E402

app.command("build-data")(user_errors(build_data))
app.command("tiny-model")(user_errors(tiny_model))
app.command()(user_errors(train))
app.command()(user_errors(merge))
app.command()(user_errors(export))
app.command()(user_errors(serve))
app.command()(user_errors(gateway))
app.command()(user_errors(ask))
app.add_typer(eval_app, name="eval")
app.command()(user_errors(loso))
app.command("loso-fold")(user_errors(loso_fold))
app.command("loso-pool")(user_errors(loso_pool))


@app.command()
@user_errors
def configs(
    out: Optional[Path] = typer.Option(None, help="Copy every packaged config into this folder (to edit them)."),
):
    """List the packaged training and accelerate configs (or copy them out with --out).

    `mellm train --config NAME` takes a packaged training config by name; accelerate's --config_file needs a file, which --out provides.
    """
    import shutil

    from mellm.resources import config_file, packaged_configs

    for name in packaged_configs():
        source = config_file(name)
        if out is not None:
            target = out / name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, target)
            source = target
        typer.echo(f"{name:40s} {source}")


@app.command()
@user_errors
def demo(
    out: Path = typer.Option(Path("demo_out"), help="Where every artefact goes."),
    clips: int = typer.Option(120, help="Synthetic clips (balanced over the coarse classes)."),
    subjects: int = typer.Option(10, help="Synthetic subjects; the held-out test split gets 15% of them."),
    frames: int = typer.Option(20, help="Frames per clip."),
    steps: int = typer.Option(600, help="LoRA training steps."),
    workers: int = typer.Option(2, help="Perception processes."),
    seed: int = typer.Option(0),
):
    """The whole pipeline on built-in data, on a CPU: synth -> build-data -> train -> serve -> eval.

    Synthetic clips become MEU-Instruct data; a tiny Qwen2.5-VL built offline is LoRA-tuned on them, served with vLLM behind the ME gateway, and asked about clips of held-out subjects; the ME-VQA report is printed. A rerun reuses the clips, the perception cache and the trained adapter.
    """
    from mellm.demo import DemoConfig, run_demo

    run_demo(DemoConfig(out=out, clips=clips, subjects=subjects, frames=frames, steps=steps, workers=workers, seed=seed))


def main() -> None:  # pragma: no cover
    app()


if __name__ == "__main__":  # pragma: no cover
    main()
