"""Run a model behind an OpenAI-compatible endpoint over an MEGC question file.

Two ways to reach the model:
- chat (default): the endpoint is vLLM or any OpenAI-compatible server (or the ME gateway's
  pass-through); the inputs are built here.
- gateway: the endpoint is the ME gateway; each clip goes to its `/v1/me/analyze` with all of the
  clip's questions, so perception and prompting happen exactly as the gateway serves them (as the
  model was trained, from the adapter's serving.json). `gateway="path"` names the clip by its path
  under the media root (the gateway must run with `--media-root` on the same folder);
  `gateway="upload"` sends the clip (a video, or a zip of a frame folder).

In chat mode each clip's inputs are built once (`build_clip_inputs`, the one place that decides what the model
sees), every question is asked through `mellm.prompts.build_messages` (the prompt the training
data was built with), at most `concurrency` requests are in flight, and failed requests are
retried with exponential backoff. Every answer is appended to OUT/predictions.jsonl as it arrives,
so a rerun asks only the questions not answered yet. OUT/run.json records what the run did and
OUT/failures.jsonl the questions that could not be answered (a rerun retries them).
"""

from __future__ import annotations

import asyncio
import io
import json
import platform
import random
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

import httpx

from mellm.errors import ClipError, MellmError
from mellm.eval.records import load_predictions
from mellm.jsonl import ends_with_newline
from mellm.media import ClipWindow, MediaIndex, clip_window, median_spans
from mellm.megc import QARow, load_questions
from mellm.prompts import IMAGE_ROLES, build_messages, to_openai_messages


class EndpointError(MellmError):
    """The endpoint refuses every request (bad URL, model name or API key): the run stops."""


class _RequestFailed(Exception):
    """One question could not be answered; the run goes on."""


@dataclass
class RunConfig:
    questions: Path
    media_root: Path
    endpoint: str
    model: str
    out: Path
    api_key: str | None = None
    concurrency: int = 4
    timeout_s: float = 120.0
    retries: int = 4
    backoff_s: float = 1.0
    max_tokens: int = 512
    temperature: float = 0.0
    evidence: bool = False
    max_side: int = 512
    clip_map: Path | None = None
    limit: int | None = None
    clip_workers: int = 2
    progress: bool = True
    gateway: str | None = None  # None: OpenAI chat endpoint; "path" | "upload": the ME gateway


@dataclass
class ClipInputs:
    images: list[bytes]  # PNG, in the order of `roles`
    roles: tuple[str, ...]
    evidence_text: str | None
    window: ClipWindow


@dataclass
class RunSummary:
    predictions: Path
    n_questions: int
    already_answered: int
    asked: int
    answered: int
    failures: list[dict] = field(default_factory=list)
    report: object | None = None  # eval.score.Report when the questions have reference answers
    report_paths: dict[str, Path] = field(default_factory=dict)


def chat_url(endpoint: str) -> str:
    """"http://host:8000", ".../v1" or ".../v1/chat/completions" -> the chat completions URL."""
    url = endpoint.rstrip("/")
    if url.endswith("/chat/completions"):
        return url
    return url + ("/chat/completions" if url.endswith("/v1") else "/v1/chat/completions")


def _png(rgb, max_side: int | None = None) -> bytes:
    from PIL import Image

    img = Image.fromarray(rgb)
    if max_side and max(img.size) > max_side:
        img.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def build_clip_inputs(row: QARow, path: Path, spans: dict[str, int], *, evidence: bool, max_side: int) -> ClipInputs:
    """What the model sees for a clip. Without evidence: the onset and apex frames (scaled to
    max_side). With evidence: perception's onset and apex face crops, the flow colour map and the
    motion description, as the instruction data is built (mellm.analyze.save_analysis)."""
    from mellm.video import open_clip

    clip = open_clip(path)
    window = clip_window(row, clip, spans)
    if not evidence:
        onset, apex = clip.read_many([window.onset, window.apex])
        return ClipInputs([_png(onset, max_side), _png(apex, max_side)], ("onset", "apex"), None, window)
    from mellm.analyze import analyze_clip  # heavy (face models); only when asked for

    # An apex the file does not give is spotted by perception rather than guessed as the middle.
    result = analyze_clip(path, onset=window.onset, apex=window.apex if row.apex is not None else None,
                          offset=window.offset if window.offset > window.onset else None)
    window = ClipWindow(path, window.onset, result.evidence.apex_frame, window.offset, window.n_frames, window.note)
    return ClipInputs(result.pngs(IMAGE_ROLES), IMAGE_ROLES, result.evidence.description, window)


def _clip_key(row: QARow) -> tuple:
    return (row.dataset, row.video, row.subject, row.filename, row.image_id, row.onset, row.apex, row.offset)


async def _post(client: httpx.AsyncClient, cfg: RunConfig, url: str, **request) -> httpx.Response:
    """POST with retries and exponential backoff on timeouts, connection errors, 429 and 5xx; a
    status that cannot get better (401/403/404) stops the run, another 4xx fails the question."""
    error = ""
    refused = 0
    for attempt in range(cfg.retries + 1):
        delay = min(cfg.backoff_s * 2 ** attempt, 60.0) * random.uniform(0.5, 1.0)
        try:
            resp = await client.post(url, **request)
        except httpx.TimeoutException as e:
            error = f"timed out after {cfg.timeout_s:g} s ({type(e).__name__})"
        except httpx.ConnectError as e:
            error = f"cannot connect: {e}"
            refused += 1
        except httpx.TransportError as e:
            error = f"{type(e).__name__}: {e}"
        else:
            if resp.status_code == 200:
                return resp
            body = resp.text[:300]
            if resp.status_code in (401, 403, 404) and not (cfg.gateway and resp.status_code in (403, 404)):
                raise EndpointError(f"{url} answered HTTP {resp.status_code} (check --endpoint, --model, --api-key): {body}")
            if resp.status_code != 429 and resp.status_code < 500:
                raise _RequestFailed(f"HTTP {resp.status_code}: {body}")
            error = f"HTTP {resp.status_code}: {body}"
            retry_after = resp.headers.get("retry-after", "")
            if retry_after.replace(".", "", 1).isdigit():
                delay = min(float(retry_after), 60.0)
        if attempt < cfg.retries:
            await asyncio.sleep(delay)
    if refused == cfg.retries + 1:  # nothing listens there: every other question would wait out its retries too
        raise EndpointError(f"{url}: {error} (after {refused} attempts; is the server running?)")
    raise _RequestFailed(f"gave up after {cfg.retries + 1} attempts; last error: {error}")


async def _ask(client: httpx.AsyncClient, cfg: RunConfig, url: str, payload: dict) -> str:
    return _content(await _post(client, cfg, url, json=payload))


def _content(resp: httpx.Response) -> str:
    try:
        content = resp.json()["choices"][0]["message"]["content"]
    except (ValueError, KeyError, IndexError, TypeError) as e:
        raise _RequestFailed(f"not an OpenAI chat completion response ({type(e).__name__}): {resp.text[:200]}") from None
    if isinstance(content, list):  # content parts
        content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
    if not isinstance(content, str):
        raise _RequestFailed(f"response has no text content: {resp.text[:200]}")
    return content.strip()


class _Appender:
    """Appends {"id", "answer"} lines, flushed one by one, so a killed run loses nothing."""

    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.dropped_partial_line = not ends_with_newline(path)
        if self.dropped_partial_line:
            # A killed run can leave half a line: drop it (its question is asked again).
            data = path.read_bytes()
            path.write_bytes(data[: data.rfind(b"\n") + 1])
        self.f = path.open("a", encoding="utf-8")

    def write(self, id_: str, answer: str) -> None:
        self.f.write(json.dumps({"id": id_, "answer": answer}, ensure_ascii=False) + "\n")
        self.f.flush()

    def close(self) -> None:
        self.f.close()


async def _run_questions(cfg: RunConfig, rows: list[QARow], paths: dict[tuple, Path], spans: dict[str, int],
                         out: _Appender, failures: list[dict], notes: dict[str, str], counts: Counter) -> None:
    from tqdm import tqdm

    url = chat_url(cfg.endpoint)
    headers = {"Authorization": f"Bearer {cfg.api_key}"} if cfg.api_key else {}
    remaining = Counter(_clip_key(r) for r in rows)
    clip_tasks: dict[tuple, asyncio.Future] = {}
    clip_slots = asyncio.Semaphore(max(1, cfg.clip_workers))
    queue = list(reversed(rows))  # pop() from the end keeps file order, so a clip's questions go together

    async def build(row: QARow, key: tuple) -> ClipInputs:
        async with clip_slots:
            return await asyncio.to_thread(build_clip_inputs, row, paths[key], spans,
                                           evidence=cfg.evidence, max_side=cfg.max_side)

    async def worker(client: httpx.AsyncClient, bar) -> None:
        while queue:
            row = queue.pop()
            key = _clip_key(row)
            try:
                if key not in clip_tasks:
                    clip_tasks[key] = asyncio.ensure_future(build(row, key))
                inputs = await clip_tasks[key]
                if inputs.window.note:
                    notes[row.image_id] = inputs.window.note
                messages = build_messages(row.question, image_roles=inputs.roles, evidence_text=inputs.evidence_text)
                payload = {"model": cfg.model, "messages": to_openai_messages(messages, inputs.images),
                           "max_tokens": cfg.max_tokens, "temperature": cfg.temperature}
                out.write(row.id, await _ask(client, cfg, url, payload))
                counts["answered"] += 1
            except (ClipError, _RequestFailed) as e:
                failures.append({"id": row.id, "clip": str(paths.get(key, "")), "error": str(e)})
            finally:
                remaining[key] -= 1
                if remaining[key] == 0:
                    clip_tasks.pop(key, None)  # free the clip's images once its last question is asked
                bar.update(1)

    limits = httpx.Limits(max_connections=cfg.concurrency, max_keepalive_connections=cfg.concurrency)
    async with httpx.AsyncClient(timeout=httpx.Timeout(cfg.timeout_s), headers=headers, limits=limits) as client:
        with tqdm(total=len(rows), unit="q", desc="asking", disable=not cfg.progress) as bar:
            workers = [asyncio.create_task(worker(client, bar)) for _ in range(max(1, cfg.concurrency))]
            try:
                await asyncio.gather(*workers)
            finally:
                for w in workers:
                    w.cancel()
                for t in clip_tasks.values():
                    t.cancel()


def _gateway_request(cfg: RunConfig, rows: list[QARow], path: Path, spans: dict[str, int]) -> dict:
    """The /v1/me/analyze request for one clip and all its questions (built by the gateway's client)."""
    from mellm.serve.client import analyze_request
    from mellm.serve.contract import AnalyzeOptions
    from mellm.video import open_clip

    window = clip_window(rows[0], open_clip(path), spans)
    options = AnalyzeOptions(questions=[r.question for r in rows], model=cfg.model, max_tokens=cfg.max_tokens,
                             onset=window.onset, offset=window.offset,
                             # without one, the gateway spots the apex, as perception does for training data
                             apex=window.apex if rows[0].apex is not None else None)
    if cfg.gateway == "path":
        return analyze_request(Path(path).resolve().relative_to(Path(cfg.media_root).resolve()), options, remote=True)
    return analyze_request(path, options)


async def _run_via_gateway(cfg: RunConfig, rows: list[QARow], paths: dict[tuple, Path], spans: dict[str, int],
                           out: _Appender, failures: list[dict], counts: Counter) -> None:
    """One request per clip. A reply that breaks the contract fails the clip's questions; a question the
    reply leaves unanswered fails alone. Failures are recorded (a rerun asks them again), never dropped."""
    from tqdm import tqdm

    from mellm.serve.contract import ReplyError, answers_by_question, read_reply

    url = cfg.endpoint.rstrip("/") + "/v1/me/analyze"
    headers = {"Authorization": f"Bearer {cfg.api_key}"} if cfg.api_key else {}
    by_clip: dict[tuple, list[QARow]] = {}
    for r in rows:
        by_clip.setdefault(_clip_key(r), []).append(r)
    queue = list(by_clip.items())[::-1]

    async def worker(client: httpx.AsyncClient, bar) -> None:
        while queue:
            key, clip_rows = queue.pop()
            clip = str(paths[key])
            try:
                request = await asyncio.to_thread(_gateway_request, cfg, clip_rows, paths[key], spans)
                resp = await _post(client, cfg, url, **request)
                try:
                    reply = read_reply(resp.json())
                except ValueError as e:  # not JSON at all, or a ReplyError
                    raise _RequestFailed(str(e) if isinstance(e, ReplyError) else
                                         f"the gateway's reply is not JSON: {resp.text[:200]}") from None
                answers, missing = answers_by_question(reply, [r.question for r in clip_rows])
                for i, row in enumerate(clip_rows):
                    if i in answers:
                        out.write(row.id, answers[i])
                        counts["answered"] += 1
                    else:
                        failures.append({"id": row.id, "clip": clip, "error": missing[i]})
            except (ClipError, _RequestFailed) as e:
                failures.extend({"id": r.id, "clip": clip, "error": str(e)} for r in clip_rows)
            finally:
                bar.update(len(clip_rows))

    async with httpx.AsyncClient(timeout=httpx.Timeout(cfg.timeout_s), headers=headers) as client:
        with tqdm(total=len(rows), unit="q", desc="asking the gateway", disable=not cfg.progress) as bar:
            await asyncio.gather(*[worker(client, bar) for _ in range(max(1, cfg.concurrency))])


def run_eval(cfg: RunConfig) -> RunSummary:
    """Ask every unanswered question of cfg.questions; score when the file has reference answers."""
    if cfg.gateway not in (None, "path", "upload"):  # before any work
        raise MellmError(f"gateway mode {cfg.gateway!r}: use 'path' or 'upload'")
    started = time.time()
    qfile = load_questions(cfg.questions)
    pred_path = Path(cfg.out) / "predictions.jsonl"
    done = set(load_predictions(pred_path, missing_ok=True).answers)
    pending = [r for r in qfile.rows if r.id not in done]
    if cfg.limit is not None:
        pending = pending[: cfg.limit]
    if cfg.evidence:
        try:
            import mellm.analyze  # noqa: F401
        except ImportError as e:
            raise MellmError(f"--evidence needs the perception stage (mellm.analyze): {e}") from None
    index = MediaIndex(cfg.media_root, cfg.clip_map)
    failures: list[dict] = []
    paths: dict[tuple, Path] = {}
    askable = []
    unresolved: dict[tuple, str] = {}
    for row in pending:
        key = _clip_key(row)
        if key not in paths and key not in unresolved:
            try:
                paths[key] = index.resolve(row)
            except ClipError as e:
                unresolved[key] = str(e)
        if key in paths:
            askable.append(row)
        else:
            failures.append({"id": row.id, "clip": "", "error": unresolved[key]})
    if pending and not askable:
        raise MellmError(f"no clip of {cfg.questions} was found under {cfg.media_root}: {failures[0]['error']}")

    notes: dict[str, str] = {}
    appender = _Appender(pred_path)
    if appender.dropped_partial_line:
        notes[str(pred_path)] = "dropped the cut-off last line an interrupted run left; its question is asked again"
    counts = Counter(questions=len(qfile.rows), already_answered=len(done), asked=len(pending), answered=0)
    try:
        if cfg.gateway:
            asyncio.run(_run_via_gateway(cfg, askable, paths, median_spans(qfile.rows), appender, failures, counts))
        else:
            asyncio.run(_run_questions(cfg, askable, paths, median_spans(qfile.rows), appender, failures, notes, counts))
    finally:
        appender.close()
        _write_run_record(cfg, qfile, counts, failures, notes, started)
    summary = RunSummary(predictions=pred_path, n_questions=len(qfile.rows), already_answered=len(done),
                         asked=len(pending), answered=counts["answered"], failures=failures)
    if qfile.has_references:
        from mellm.eval.report import write_report
        from mellm.eval.score import score

        summary.report = score(qfile, load_predictions(pred_path), questions_name=str(cfg.questions),
                               predictions_name=str(pred_path))
        summary.report_paths = write_report(summary.report, cfg.out)
    return summary


def _write_run_record(cfg: RunConfig, qfile, counts: Counter, failures: list[dict], notes: dict[str, str],
                      started: float) -> None:
    import mellm

    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(cfg).items() if k != "api_key"}
    settings["api_key"] = "(set)" if cfg.api_key else None
    record = {
        "settings": settings,
        "url": cfg.endpoint.rstrip("/") + "/v1/me/analyze" if cfg.gateway else chat_url(cfg.endpoint),
        "counts": {**counts, "failed": len(failures), "question_file_issues": len(qfile.issues)},
        "question_file_issues": [str(i) for i in qfile.issues],
        "clip_notes": notes,
        "failures": failures[:100],
        "elapsed_s": round(time.time() - started, 3),
        "versions": {"mellm": mellm.__version__, "python": platform.python_version(), "httpx": httpx.__version__},
    }
    (out / "run.json").write_text(json.dumps(record, indent=1) + "\n")
    with (out / "failures.jsonl").open("w", encoding="utf-8") as f:
        for item in failures:
            f.write(json.dumps(item, ensure_ascii=False) + "\n")
