"""`POST /v1/me/analyze_long`: one long video, spotted once, every question answered from that one
event list (mellm.lvqa), with the model-free answers beside the model's.

Each spotted event also carries its onset -> apex Evidence (mellm.analyze_long runs the short-clip
perception on it) and, asked for with `event_question`, the model's answers about that event alone,
from its own pictures and evidence. With `views` the reply adds what a person looks at: the motion
score over the video (thinned to at most MAX_CURVE_POINTS points) and each event's pictures. The
web page asks for all of it and draws the events as a timeline.

Spotting runs in a perception worker process, killed at the request's deadline; a client that
names its request (`request_id`) can follow it at /v1/me/progress/{id} (serve/progress.py).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from pathlib import Path

from fastapi import FastAPI, File, Form, HTTPException, Request, UploadFile

from mellm.errors import ClipError, ClipNotFoundError, MellmError
from mellm.serve.contract import ERROR_RESPONSES, LongAnalyzeReply, QuestionError
from mellm.serve.progress import file_reporter
from mellm.serve.workers import PerceptionTimeout, WorkerCrashed

MAX_CURVE_POINTS = 2000
MAX_EVENT_QUESTIONS = 4  # questions asked of every event
MAX_EVENTS_ASKED = 8  # the strongest events are asked the event questions; the rest get a note


def spot_job(source: Path, out: Path, flow: str, fps: float | None, views: bool, counts_file: Path | None):
    """In a worker process: spotting and per-event evidence (files under `out`), and with `views`
    each event's pictures ({k: contract.Views as a dict})."""
    from mellm.analyze_long import analyze_long
    from mellm.serve.web import views_of

    pictures: dict[int, dict] = {}
    keep = (lambda k, result: pictures.__setitem__(k, views_of(result))) if views else None
    report = file_reporter(counts_file) if counts_file is not None else None
    return analyze_long(source, out, fps=fps, flow=flow, report=report, on_event=keep), pictures


def thin_curve(curve: dict, settings: dict, max_points: int = MAX_CURVE_POINTS) -> dict:
    """contract.LongCurve from Spots.curve: each of at most `max_points` stretches keeps its highest
    score (a short event still shows as a peak) at that stretch's first frame."""
    frames, score = curve["frames"], curve["score"]
    step = max(1, -(-len(frames) // max_points))
    kept_frames, kept = [], []
    for i in range(0, len(frames), step):
        values = [v for v in score[i:i + step] if v is not None]
        kept_frames.append(frames[i])
        kept.append(max(values) if values else None)
    return {"frames": kept_frames, "score": kept, "z_high": settings.get("z_high"), "z_low": settings.get("z_low"),
            "frames_per_point": step * int(settings.get("step", 1))}


def add_long_route(app: FastAPI, cfg, *, limiter, workers, check_key: Callable[[Request], None],
                   check_questions: Callable[[list[str], int | None], None],
                   request_dir: Callable[[str | None, str], AbstractAsyncContextManager],
                   open_clip: Callable[..., Awaitable[tuple[Path, str]]],
                   ask: Callable[..., Awaitable[dict | QuestionError]],
                   hide_paths: Callable[[str, Path, str], str]) -> None:
    """Mount the route on the gateway `app`, with the gateway's limits and question checks, workers,
    request folders, clip intake and model client (serve/gateway.py)."""
    from mellm.lvqa import answer_from_events, event_list_text, lvqa_questions

    @app.post("/v1/me/analyze_long", response_model=LongAnalyzeReply,
              responses=ERROR_RESPONSES)
    async def analyze_long(
        request: Request,
        file: UploadFile | None = File(None, description="A long video file or a .zip of frames."),
        path: str | None = Form(None, description="Instead of an upload: a video path under the media root."),
        question: list[str] = Form([], description="Questions (repeatable); default: the six ME-LVQA questions."),
        event_question: list[str] = Form([], description="Questions asked of each spotted event, with its own "
                                                         f"pictures and evidence (at most {MAX_EVENT_QUESTIONS}; the "
                                                         f"{MAX_EVENTS_ASKED} strongest events)."),
        fps: float | None = Form(None, description="Frame rate of a .zip of frames (a video file says its own)."),
        model: str | None = Form(None),
        max_tokens: int | None = Form(None),
        views: bool = Form(False, description="Also return the motion curve and each event's pictures."),
        request_id: str | None = Form(None, description="Name this request to follow it at /v1/me/progress/{id}."),
    ):
        """Spot the video once, analyse each event, then ask every question with that one event list."""
        check_key(request)
        questions = question or [text for _, text in lvqa_questions()]
        check_questions(questions, max_tokens)
        if len(event_question) > MAX_EVENT_QUESTIONS:
            raise HTTPException(422, f"{len(event_question)} event questions: at most {MAX_EVENT_QUESTIONS} per request")
        if any(len(q) > cfg.max_question_chars for q in event_question):
            raise HTTPException(422, f"a question is longer than {cfg.max_question_chars} characters")
        if fps is not None and not 1 <= fps <= 2000:
            raise HTTPException(422, f"fps must be 1..2000, got {fps:g}")
        async with limiter.slot():
            return await _analyze_long(request, file, path, questions, event_question, fps, model, max_tokens, views,
                                       request_id)

    async def _analyze_long(request, file, path, questions, event_questions, fps, model, max_tokens, views,
                            request_id) -> LongAnalyzeReply:
        t0 = time.perf_counter()
        timings: dict[str, float] = {}
        async with request_dir(request_id, "receiving") as (workdir, run):
            source, name = await open_clip(request, file, path, workdir, t0, timings,
                                           "no video: upload `file` or give `path`")
            if run is not None:
                run.stage = "spotting"
            t = time.perf_counter()
            try:
                # Killed at the deadline: a long video that cannot be spotted in time gets a 504 that
                # says what to do instead, and the gateway goes on serving.
                spots, pictures = await workers.run(
                    spot_job, (source, workdir / "spots", cfg.perception.flow, fps, views,
                               run.counts_file if run is not None else None), timeout=cfg.request_timeout_s)
            except PerceptionTimeout:
                raise HTTPException(504, f"spotting took longer than the gateway's {cfg.request_timeout_s:g} s limit and "
                                         "was stopped; spot long videos offline (mellm spot, mellm eval lvqa-baseline) "
                                         "or start the gateway with a longer --timeout") from None
            except WorkerCrashed as e:
                raise HTTPException(503, f"spotting failed: {e}; retry later") from None
            except ClipNotFoundError as e:
                raise HTTPException(404, hide_paths(str(e), workdir, name)) from None
            except (ClipError, MellmError) as e:
                raise HTTPException(422, hide_paths(f"{getattr(e, 'reason', 'video')}: {e}", workdir, name)) from None
            timings["spotting"] = 1000 * (time.perf_counter() - t)
            if run is not None:
                run.stage = "model"
            events = [_event_summary(spots, k, workdir / "spots", name, pictures.get(k))
                      for k in range(1, len(spots.events) + 1)]
            notes = [hide_paths(n, workdir, name) for n in spots.notes]
            listing = event_list_text(spots)
            t = time.perf_counter()
            left = max(1.0, cfg.request_timeout_s - timings["spotting"] / 1000)
            try:
                asked = await asyncio.wait_for(_ask_all(spots, events, listing, questions, event_questions, model,
                                                        max_tokens, workdir / "spots", notes), timeout=left)
            except asyncio.TimeoutError:
                raise HTTPException(504, f"the request took longer than {cfg.request_timeout_s:g} s") from None
            timings["llm"] = 1000 * (time.perf_counter() - t)
            timings["total"] = 1000 * (time.perf_counter() - t0)
            return LongAnalyzeReply(
                clip=name, model=model or cfg.model, fps=spots.fps, n_frames=spots.n_frames, events=events,
                event_list=listing, answers=[a for a in asked if not isinstance(a, QuestionError)],
                baseline=[{"question": q, "answer": answer_from_events(spots, q)} for q in questions],
                errors=[a for a in asked if isinstance(a, QuestionError)], notes=notes, face_gaps=spots.face_gaps,
                curve=thin_curve(spots.curve, spots.settings) if views and spots.curve else None,
                timings_ms={k: round(v, 2) for k, v in timings.items()})

    def _pngs(folder: Path) -> list[bytes]:
        return [(folder / f"{role}.png").read_bytes() for role in cfg.image_roles]

    async def _ask_all(spots, events: list[dict], listing: str, questions, event_questions, model, max_tokens,
                       out: Path, notes: list[str]) -> list:
        """The video's questions (with the strongest event's pictures and the event list), and each of
        the strongest events' own questions (its pictures and evidence), all at once. The video's
        answers are returned; the events' go into `events`."""
        jobs, owners = [], []
        if spots.events:
            top = max(range(len(spots.events)), key=lambda k: spots.events[k].peak_z)
            found = [{"au": a, "side": "both", "score": 1.0} for a in spots.distinct_aus()]
            evidence = {"aus": found, "au_scores": found}  # an AU claim is supported when an event showed it
            pngs = _pngs(out / "events" / str(top + 1))
            jobs += [ask(q, pngs, listing, model, max_tokens, evidence) for q in questions]
            owners += [None] * len(questions)
        else:
            notes.append("no expression event was spotted, so the model was not asked; the baseline answers stand")
        with_evidence = [k for k, e in enumerate(events) if e["evidence"] is not None]
        strongest = sorted(with_evidence, key=lambda k: -spots.events[k].peak_z)[:MAX_EVENTS_ASKED]
        if event_questions and len(with_evidence) > len(strongest):
            notes.append(f"the event questions were asked of the {MAX_EVENTS_ASKED} strongest of "
                         f"{len(with_evidence)} events only")
        for k in strongest if event_questions else []:
            folder = out / "events" / str(k + 1)
            ev = events[k]["evidence"]
            jobs += [ask(q, _pngs(folder), ev["description"], model, max_tokens, ev) for q in event_questions]
            owners += [k] * len(event_questions)
        asked = await asyncio.gather(*jobs)
        for owner, a in zip(owners, asked):
            if owner is not None:
                events[owner]["errors" if isinstance(a, QuestionError) else "answers"].append(a)
        return [a for owner, a in zip(owners, asked) if owner is None]


def _event_summary(spots, k: int, out: Path, clip: str, views: dict | None) -> dict:
    """contract.SpottedEventSummary of event k (1-based), its Evidence read from the saved file."""
    e = spots.events[k - 1]
    evidence = None
    if e.evidence is not None:
        evidence = json.loads((out / e.evidence).read_text())
        evidence["clip"] = f"{clip} event {k}"
    return {"onset": e.onset, "apex": e.apex, "offset": e.offset, "type": e.type, "confidence": e.confidence,
            "peak_z": e.peak_z, "regions": e.regions, "aus": e.aus, "evidence": evidence, "views": views,
            "answers": [], "errors": []}

