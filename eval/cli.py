"""`mellm eval score` and `mellm eval run`."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import typer

from mellm.errors import user_errors

app = typer.Typer(
    help="ME-VQA / ME-LVQA evaluation: score predictions, or run a model endpoint over a question file.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _print_summary(report) -> None:
    from mellm.eval.report import markdown

    # The headline tables only: the full Markdown (with every problem listed) is in report.md.
    text = markdown(report)
    head = text.split("\n## Question types", 1)[0]
    typer.echo(head.rstrip())


@app.command()
@user_errors
def score(
    questions: Path = typer.Option(..., help="MEGC question file (JSONL with id, dataset, question, answer)."),
    predictions: Path = typer.Option(..., help='Predictions, MEGC submission format: one {"id", "answer"} per line.'),
    out: Path = typer.Option(..., help="Output folder: report.json, report.md, confusion_coarse.png, confusion_fine.png."),
    skip_missing: bool = typer.Option(
        False, "--skip-missing", help="Leave questions without a prediction out (default: score them as wrong)."),
):
    """Score predictions the way the MEGC leaderboard does.

    Answers are joined to questions by id and read per question type:
    coarse, fine, AU list, AU yes/no, AU left/right, the combined
    templated question, the 2026 open analysis question, and ME-LVQA
    event counts, distinct AUs and k-th event type.

    Reported: UF1 and UAR for coarse and fine (overall and per dataset),
    AU F1 (micro and macro), yes/no and left/right accuracy, ME-LVQA
    accuracy, MAE and set F1, BLEU-4, ROUGE-1 and ROUGE-L.

    An answer stating no recognisable label is scored as wrong and listed
    as unparsed; malformed lines are listed as file:line.
    """
    from mellm.eval.report import write_report
    from mellm.eval.score import score_files

    report = score_files(questions, predictions, skip_missing=skip_missing)
    paths = write_report(report, out)
    _print_summary(report)
    typer.echo(f"\nwrote {', '.join(str(p) for p in paths.values())}", err=True)
    if report.issues:
        typer.secho(f"{len(report.issues)} input line(s) could not be used; see report.md", fg="yellow", err=True)


@app.command()
@user_errors
def run(
    questions: Path = typer.Option(..., help="MEGC question file (test files with empty answers work too)."),
    media_root: Path = typer.Option(
        ..., help="Folder holding the clips (frame folders or video files), e.g. ROOT/samm/006_1_2/; "
                  "every layout tried is listed in eval/README.md."),
    endpoint: str = typer.Option(..., help="OpenAI-compatible server, e.g. http://localhost:8000 (or .../v1)."),
    model: str = typer.Option(..., help="Model name the endpoint serves (an adapter name for vLLM LoRA)."),
    out: Path = typer.Option(..., help="Output folder: predictions.jsonl, run.json, failures.jsonl (+ report.* when "
                                       "the questions have answers)."),
    api_key: Optional[str] = typer.Option(None, envvar="MELLM_API_KEY", help="Bearer token for the endpoint."),
    concurrency: int = typer.Option(4, min=1, help="Requests in flight at once."),
    timeout: float = typer.Option(120.0, min=0.1, help="Seconds allowed per request."),
    retries: int = typer.Option(4, min=0, help="Retries per request on timeouts, connection errors, 429 and 5xx."),
    backoff: float = typer.Option(1.0, min=0.0, help="First retry delay in seconds; doubles on every retry."),
    max_tokens: int = typer.Option(512, min=1, help="Answer length limit (tokens)."),
    temperature: float = typer.Option(0.0, min=0.0, help="Sampling temperature (0: greedy)."),
    evidence: bool = typer.Option(
        False, "--evidence/--no-evidence",
        help="Add perception evidence: face crops, flow colour map and motion description (slow: runs mellm.analyze)."),
    max_side: int = typer.Option(512, min=16, help="Without --evidence: frames are scaled to at most this many pixels."),
    clip_map: Optional[Path] = typer.Option(None, help="JSON object {image_id or id: clip path relative to the media root}."),
    limit: Optional[int] = typer.Option(None, min=1, help="Ask at most this many unanswered questions (smoke tests)."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show a progress bar."),
    gateway: Optional[str] = typer.Option(
        None, help="The endpoint is the ME gateway: send each clip to /v1/me/analyze with its questions, by 'path' "
                   "(the gateway serves the same --media-root) or by 'upload'. Perception and prompt are then the "
                   "gateway's, i.e. as the adapter was trained."),
):
    """Ask a served model every question of a question file.

    Writes OUT/predictions.jsonl in MEGC submission format, appending each
    answer as it arrives: a rerun asks only the questions not answered yet.

    Each question goes with its clip's onset and apex frames (the row's
    onset_frame/offset_frame when given; apex = middle frame), prompted
    exactly as the training data is (mellm.prompts). When the question file
    has reference answers, the predictions are scored at the end
    (OUT/report.json, OUT/report.md). With --gateway, the ME gateway builds
    the inputs instead (one request per clip).
    """
    from mellm.eval.run import RunConfig, run_eval

    cfg = RunConfig(
        questions=questions, media_root=media_root, endpoint=endpoint, model=model, out=out, api_key=api_key,
        concurrency=concurrency, timeout_s=timeout, retries=retries, backoff_s=backoff, max_tokens=max_tokens,
        temperature=temperature, evidence=evidence, max_side=max_side, clip_map=clip_map, limit=limit,
        progress=progress, gateway=gateway,
    )
    summary = run_eval(cfg)
    typer.echo(f"{summary.answered} answered, {len(summary.failures)} failed, {summary.already_answered} answered "
               f"before; predictions in {summary.predictions}", err=True)
    if summary.report is not None:
        _print_summary(summary.report)
    if summary.failures:
        typer.secho(f"{len(summary.failures)} question(s) not answered (see {out / 'failures.jsonl'}); "
                    "rerun the same command to retry them", fg="yellow", err=True)
        sys.exit(1)


@app.command("lvqa-baseline")
@user_errors
def lvqa_baseline(
    questions: Path = typer.Option(..., help="ME-LVQA question file (MEGC 2026 rows: video_id, video, question, answer)."),
    media_root: Path = typer.Option(..., help="Folder holding the long videos (files or frame folders), found as eval run finds clips."),
    out: Path = typer.Option(..., help="Output folder: predictions.jsonl, spots/, failures.jsonl, run.json (+ report.*)."),
    clip_map: Optional[Path] = typer.Option(None, help="JSON object {video or id: path relative to the media root}."),
    evidence: bool = typer.Option(True, "--evidence/--no-evidence", help="Per-event AU evidence (needed for the distinct-AU answers)."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Show a progress bar."),
):
    """The model-free ME-LVQA baseline: spot each video once, answer all its questions from that event list.

    The counts, the distinct AUs and the k-th event types come from one list, so they agree. It is the baseline a tuned model is reported beside.
    """
    from mellm.eval.lvqa import run_lvqa_baseline

    summary = run_lvqa_baseline(questions, media_root, out, clip_map, evidence=evidence, progress=progress)
    typer.echo(f"{summary.answered} answered over {summary.videos} videos, {len(summary.failures)} not answered; "
               f"predictions in {summary.predictions}", err=True)
    if summary.report is not None:
        _print_summary(summary.report)
    if summary.failures:
        typer.secho(f"{len(summary.failures)} question(s) not answered (see {out / 'failures.jsonl'})", fg="yellow", err=True)
        sys.exit(1)



@app.command("run-lvqa")
@user_errors
def run_lvqa(
    questions: Path = typer.Option(..., help="ME-LVQA question file (MEGC 2026 rows)."),
    media_root: Path = typer.Option(..., help="Folder holding the long videos (the gateway's --media-root, unless --upload)."),
    endpoint: str = typer.Option(..., help="The ME gateway, e.g. http://127.0.0.1:8080."),
    out: Path = typer.Option(..., help="Output folder: predictions.jsonl (MEGC submission), baseline/, comparison.md, report.*"),
    api_key: Optional[str] = typer.Option(None, envvar="MELLM_API_KEY", help="The gateway's API key."),
    upload: bool = typer.Option(False, help="Upload each video instead of naming it by its path under the media root."),
    clip_map: Optional[Path] = typer.Option(None, help="JSON object {video or id: path relative to the media root}."),
    timeout: float = typer.Option(600.0, min=1.0, help="Seconds allowed per video."),
):
    """Ask a served model every ME-LVQA question through the gateway, one request per video.

    Each video is spotted once by the gateway and all its questions are asked with that one event list; the gateway's model-free answers from the same list are scored beside the model's (comparison.md).
    """
    from mellm.eval.lvqa import run_lvqa_gateway

    done = run_lvqa_gateway(questions, media_root, endpoint, out, api_key=api_key, upload=upload, clip_map=clip_map,
                            timeout_s=timeout)
    typer.echo(f"{done['answered']} answered over {done['videos']} videos, {len(done['failures'])} not answered", err=True)
    if done["reports"]:
        typer.echo((out / "comparison.md").read_text())
    if done["failures"]:
        typer.secho(f"{len(done['failures'])} question(s) not answered (see {out / 'failures.jsonl'})", fg="yellow", err=True)
        sys.exit(1)
