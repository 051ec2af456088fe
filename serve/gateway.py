"""The ME gateway: an HTTP service in front of vLLM that explains a micro-expression clip.

POST /v1/me/analyze    a clip (upload: video or zip of frames; or a path under the media root),
                       optional onset/apex/offset and questions -> perception -> the training
                       prompt (mellm.prompts) -> vLLM -> answers, parsed labels, evidence, timings
POST /v1/me/analyze_long    a long video -> spotting + per-event evidence -> every question asked
                       with the one event list, and each event's own questions (serve/long_video.py)
GET  /v1/me/progress/{id}    how far a running request that gave a request_id has got (serve/progress.py)
POST /v1/chat/completions, GET /v1/models    passed through to vLLM
GET  /health           the gateway and vLLM, separately
GET  /                 a web page to look at a clip, and /v1/me/info, /v1/me/media for it (serve/web.py)

Limits (defaults in GatewayConfig; the README's threat model lists them all): the API key before
any body is read (401); body size per route (413); frames and pixels per frame from the headers,
before decoding (413); questions per request and answer length (422); per-request time (504, and
the perception process is killed: serve/workers.py); concurrency (requests beyond the running and
queued ones get 429 at once); stalled bodies (408) and silent connections (closed: serve/guard.py).
A bad clip is a 4xx with the reason; vLLM down is a 503, vLLM failing or answering nonsense a 502.
Remote media in a passed-through chat request is refused unless the operator allows its host.
The gateway keeps serving through all of them. Requests and replies follow serve/contract.py;
every error is OpenAI-style JSON. Each request is logged in one line (logger "mellm.gateway").
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import shutil
import tempfile
import time
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import httpx
from fastapi import FastAPI, File, Form, HTTPException, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from mellm.analyze import PerceptionSettings
from mellm.errors import ClipError, ClipNotFoundError, ClipTooLargeError, ConfigError
from mellm.labels import au_name
from mellm.prompts import IMAGE_ROLES
from mellm.serve.clips import ClipRequestError, resolve_media_path, save_upload
from mellm.serve.contract import ERROR_RESPONSES, AnalyzeReply, QuestionError, error_reply
from mellm.serve.guard import Guard, idle_closing_protocol, key_given, key_ok
from mellm.serve.long_video import add_long_route
from mellm.serve.progress import ProgressBoard, RequestIdError
from mellm.serve.web import add_web_routes
from mellm.serve.workers import PerceptionTimeout, PerceptionWorkers, WorkerCrashed
from mellm.video import ClipLimits
from mellm.vqa import ANALYSIS_QUESTION

log = logging.getLogger("mellm.gateway")


@dataclass
class GatewayConfig:
    upstream: str  # vLLM's base URL, e.g. http://127.0.0.1:8000
    model: str  # the served model or adapter name asked by default
    api_key: str | None = None  # clients must send it (Authorization: Bearer, or X-API-Key)
    upstream_api_key: str | None = None
    media_root: Path | None = None  # clips may be named by a path under it; None: uploads only
    max_upload_mb: float = 200.0
    request_timeout_s: float = 120.0
    max_concurrency: int = 2  # clips analysed at once (perception is CPU-bound)
    max_queue: int = 8  # requests allowed to wait for a slot; more get 429
    max_tokens: int = 256
    image_roles: tuple[str, ...] = IMAGE_ROLES
    evidence_in_prompt: bool = True
    perception: PerceptionSettings = field(default_factory=PerceptionSettings)
    # --- what one request may ask of the machine (README: threat model) ---
    max_frames: int = 2000  # frames in a clip (a video's header or index, a folder's file count)
    max_frame_pixels: int = 4096 * 2160  # width x height of one frame, read from headers before decoding
    max_zip_files: int = 5000  # frames in an uploaded zip
    max_unpacked_mb: float = 1024.0  # what an uploaded zip may unpack to
    max_questions: int = 16  # questions in one analyze request
    max_question_chars: int = 2000
    max_answer_tokens: int = 2048  # the largest max_tokens a client may ask for
    max_chat_mb: float = 32.0  # body of a passed-through chat request (base64 images included)
    max_reply_mb: float = 64.0  # what the gateway buffers of a non-streamed upstream reply
    allowed_media_hosts: tuple[str, ...] = ()  # hosts remote image/video URLs may name; empty: none
    body_timeout_s: float = 30.0  # a client that sends no body bytes for this long gets 408
    head_timeout_s: float = 10.0  # a connection that sends no complete request head in time is closed
    keep_alive_s: float = 5.0  # idle kept-alive connections are closed after this
    max_connections: int = 256  # open connections and requests together; more get 503 from uvicorn

    @property
    def clip_limits(self) -> ClipLimits:
        return ClipLimits(max_frames=self.max_frames, max_pixels=self.max_frame_pixels)

    def uvicorn_options(self) -> dict:
        """The server settings these limits need (`uvicorn.run(app, **cfg.uvicorn_options())`)."""
        return {"http": idle_closing_protocol(self.head_timeout_s), "timeout_keep_alive": self.keep_alive_s,
                "limit_concurrency": self.max_connections, "h11_max_incomplete_event_size": 64 * 1024}


def as_trained(trained_dir: Path | None, images: str | None, evidence: bool | None,
               calibration: Path | None = None) -> dict:
    """Gateway settings: explicit flags, else how the adapter's training data was prompted and
    perceived (its serving.json, calibration included), else the build-data defaults. Asking the
    model in any other way than it was trained is train/serve skew. `calibration` (a file from
    `mellm calibrate`) replaces the AU thresholds."""
    from mellm.calibrate import with_calibration
    from mellm.serve.vllm_server import serving_notes

    notes = serving_notes(trained_dir) if trained_dir is not None else {}
    prompt = notes.get("prompt") or {}
    roles = tuple(prompt.get("image_roles", IMAGE_ROLES))
    with_evidence = bool(prompt.get("evidence_in_prompt", True))
    known = {f.name for f in fields(PerceptionSettings)}
    trained = notes.get("perception") or {}
    # Data built before the nuisance defences existed was perceived without them: serve it so.
    base = PerceptionSettings.legacy().to_dict() if trained and "pre_align" not in trained else {}
    perception = PerceptionSettings(**{k: v for k, v in {**base, **trained}.items() if k in known})
    perception = with_calibration(perception, calibration)
    if images is not None:
        roles = tuple(r.strip() for r in images.split(",") if r.strip())
    if evidence is not None:
        with_evidence = evidence
    return {"image_roles": roles, "evidence_in_prompt": with_evidence, "perception": perception}



class Limiter:
    """At most `concurrency` requests run and `queue` wait; the next one is refused at once."""

    def __init__(self, concurrency: int, queue: int):
        self.concurrency, self.queue = concurrency, queue
        self.running = self.waiting = 0
        self._sem = asyncio.Semaphore(concurrency)

    @asynccontextmanager
    async def slot(self):
        if self.running >= self.concurrency and self.waiting >= self.queue:
            raise HTTPException(429, f"busy: {self.running} requests running and {self.waiting} waiting; retry later",
                                headers={"Retry-After": "2"})
        self.waiting += 1
        try:
            await self._sem.acquire()
        finally:
            self.waiting -= 1
        self.running += 1
        try:
            yield
        finally:
            self.running -= 1
            self._sem.release()


def _check_key(cfg: GatewayConfig, request: Request) -> None:
    """Guard checks every /v1/ route before its body is read; routes call this too, in case they
    are mounted elsewhere."""
    if not key_ok(cfg.api_key, key_given(dict(request.scope["headers"]))):
        raise HTTPException(401, "missing or wrong API key (send Authorization: Bearer <key>)")


def _perceive(source: Path, onset, apex, offset, cfg: GatewayConfig):
    """Perception and the model's images as PNG bytes."""
    from mellm.analyze import analyze_clip

    result = analyze_clip(source, onset=onset, apex=apex, offset=offset, settings=cfg.perception,
                          limits=cfg.clip_limits)
    return result, result.pngs(cfg.image_roles)


def _perception_job(source: Path, onset, apex, offset, cfg: GatewayConfig, views: bool):
    """What a worker process sends back: the evidence, the model's images, the views (or None)."""
    if views:
        result, pngs, shown = _perceive_views(source, onset, apex, offset, cfg)
    else:
        (result, pngs), shown = _perceive(source, onset, apex, offset, cfg), None
    return result.evidence, pngs, shown


def _perceive_views(source: Path, onset, apex, offset, cfg: GatewayConfig):
    """`_perceive` plus what a person looks at (contract.Views, as a dict) and the motion curve."""
    from mellm.analyze import analyze_clip
    from mellm.serve.web import views_of

    result = analyze_clip(source, onset=onset, apex=apex, offset=offset, settings=cfg.perception, curve=True,
                          limits=cfg.clip_limits)
    return result, result.pngs(cfg.image_roles), views_of(result)


def _claims(claims: dict[int, str | None], evidence: dict) -> list[dict]:
    """Each AU an answer claims (`mellm.answers.claimed_aus`: {au: side or None}), checked against
    the evidence with `mellm.aus.claim_support`, the definition the GRPO evidence reward uses too."""
    from mellm.aus import claim_support, present_aus

    support = claim_support(claims, present_aus(evidence))
    scored = {a["au"]: a for a in evidence["au_scores"]}
    return [{"au": au, "name": au_name(au), "supported": support[au],
             "score": scored[au]["score"] if au in scored else None,
             "side": scored[au]["side"] if au in scored else None} for au in claims]


def _parsed(question: str, text: str) -> dict:
    from mellm.answers import parse_answer

    d = asdict(parse_answer(question, text))
    d["aus"] = sorted(d["aus"])
    return d


def create_app(cfg: GatewayConfig) -> FastAPI:
    state: dict = {}
    limiter = Limiter(cfg.max_concurrency, cfg.max_queue)
    max_bytes = int(cfg.max_upload_mb * (1 << 20))
    max_reply = int(cfg.max_reply_mb * (1 << 20))
    upstream_headers = {"Authorization": f"Bearer {cfg.upstream_api_key}"} if cfg.upstream_api_key else {}
    workers = PerceptionWorkers(cfg.max_concurrency)
    board = ProgressBoard()

    @asynccontextmanager
    async def lifespan(app):
        state["client"] = httpx.AsyncClient(base_url=cfg.upstream, headers=upstream_headers,
                                            timeout=httpx.Timeout(cfg.request_timeout_s, connect=5.0))
        workers.start()  # here, in the event loop's thread (see PerceptionWorkers)
        yield
        await state["client"].aclose()
        workers.close()

    app = FastAPI(title="MELLM ME gateway", lifespan=lifespan)
    app.state.perception = workers

    @app.exception_handler(StarletteHTTPException)  # FastAPI's HTTPException, and routing's 404 / 405
    async def http_error(request: Request, exc: StarletteHTTPException):
        return JSONResponse(error_reply(exc.status_code, str(exc.detail)), status_code=exc.status_code,
                            headers=getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception):  # a bug: still an OpenAI-style body, logged
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return JSONResponse(error_reply(500, f"internal error ({type(exc).__name__}); see the gateway's log"),
                            status_code=500)

    @app.exception_handler(RequestValidationError)
    async def form_error(request: Request, exc: RequestValidationError):
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors())
        return JSONResponse(error_reply(422, f"bad request fields: {problems}"), status_code=422)

    @app.middleware("http")
    async def log_request(request: Request, call_next):
        t = time.perf_counter()
        response = await call_next(request)
        timings = getattr(request.state, "timings", {})
        log.info("%s %s %d clip=%s perception_ms=%.0f model_ms=%.0f total_ms=%.0f", request.method,
                 request.url.path, response.status_code, getattr(request.state, "clip", "-"),
                 timings.get("perception", 0.0), timings.get("llm", 0.0), 1000 * (time.perf_counter() - t))
        return response

    # Outermost: the key and the body limits are checked before any route (or form parser) reads a byte.
    app.add_middleware(Guard, api_key=cfg.api_key, body_timeout_s=cfg.body_timeout_s,
                       limits={"/v1/me/analyze": max_bytes, "/v1/me/analyze_long": max_bytes, "/v1/chat/completions": int(cfg.max_chat_mb * (1 << 20))})

    @app.get("/health")
    async def health():
        try:
            r = await state["client"].get("/health", timeout=5.0)
            vllm = {"status": "ok" if r.status_code == 200 else f"http {r.status_code}", "url": cfg.upstream}
        except httpx.HTTPError as e:
            vllm = {"status": "down", "url": cfg.upstream, "detail": f"{type(e).__name__}: {e}"}
        return {"gateway": "ok", "vllm": vllm, "model": cfg.model,
                "load": {"running": limiter.running, "waiting": limiter.waiting},
                "perception": {"workers": workers.n, "stopped_at_deadline": workers.killed}}

    @app.get("/v1/me/progress/{request_id}")
    async def progress(request_id: str, request: Request):
        """How far the running request that named itself `request_id` has got (serve/progress.py)."""
        _check_key(cfg, request)
        found = board.get(request_id)
        if found is None:
            raise HTTPException(404, f"no running request has the id {request_id!r} (not started yet, or finished)")
        return found

    @app.post("/v1/me/analyze", response_model=AnalyzeReply,
              responses=ERROR_RESPONSES)
    async def analyze(
        request: Request,
        file: UploadFile | None = File(None, description="A video file or a .zip of frames."),
        path: str | None = Form(None, description="Instead of an upload: a clip path under the media root."),
        onset: int | None = Form(None), apex: int | None = Form(None), offset: int | None = Form(None),
        question: list[str] = Form([], description="Questions to ask (repeatable); default: the open analysis."),
        model: str | None = Form(None, description="Served model or adapter name."),
        max_tokens: int | None = Form(None),
        views: bool = Form(False, description="Also return the pictures a person looks at and the motion curve."),
        request_id: str | None = Form(None, description="Name this request to follow it at /v1/me/progress/{id}."),
    ):
        _check_key(cfg, request)
        _check_questions(question, max_tokens)
        async with limiter.slot():
            # The time limit is enforced phase by phase inside: perception in its process (killed at the
            # deadline), then the model with what is left. Waiting for a slot or a worker to start is not counted.
            return await _analyze(request, file, path, onset, apex, offset, question or [ANALYSIS_QUESTION], model,
                                  max_tokens, views, request_id)

    async def _analyze(request, file, path, onset, apex, offset, questions, model, max_tokens,
                       views: bool = False, request_id: str | None = None) -> AnalyzeReply:
        t0 = time.perf_counter()
        timings: dict[str, float] = {}
        async with _request_dir(request_id, "perception") as (workdir, run):
            source, name = await _open_clip(request, file, path, workdir, t0, timings,
                                            "no clip: upload `file` (video or zip of frames) or give `path`")
            t = time.perf_counter()
            try:
                # In a worker process: at the deadline (or when this request is cancelled) it is killed.
                found, pngs, shown = await workers.run(_perception_job, (source, onset, apex, offset, cfg, views),
                                                       timeout=cfg.request_timeout_s)
            except PerceptionTimeout:
                raise HTTPException(504, f"perception took longer than {cfg.request_timeout_s:g} s; it was stopped") from None
            except WorkerCrashed as e:
                raise HTTPException(503, f"perception failed: {e}; retry later") from None
            except ClipNotFoundError as e:
                raise HTTPException(404, _hide_paths(str(e), workdir, name)) from None
            except ClipTooLargeError as e:
                raise HTTPException(413, _hide_paths(f"{e.reason}: {e}", workdir, name)) from None
            except ClipError as e:
                raise HTTPException(422, _hide_paths(f"{e.reason}: {e}", workdir, name)) from None
            except ConfigError as e:
                raise HTTPException(422, _hide_paths(str(e), workdir, name)) from None
            timings["perception"] = 1000 * (time.perf_counter() - t)
            if run is not None:
                run.stage = "model"
            evidence = found.to_dict()
            evidence["clip"] = name
            t = time.perf_counter()
            left = max(1.0, cfg.request_timeout_s - timings["perception"] / 1000)
            try:
                asked = await asyncio.wait_for(asyncio.gather(*[
                    _ask(q, pngs, found.description, model, max_tokens, evidence) for q in questions]), timeout=left)
            except asyncio.TimeoutError:
                raise HTTPException(504, f"the request took longer than {cfg.request_timeout_s:g} s") from None
            timings["llm"] = 1000 * (time.perf_counter() - t)
            timings["total"] = 1000 * (time.perf_counter() - t0)
            timings["overhead"] = timings["total"] - timings["perception"] - timings["llm"]
            return AnalyzeReply(clip=name, model=model or cfg.model, evidence=evidence,
                                answers=[a for a in asked if not isinstance(a, QuestionError)],
                                errors=[a for a in asked if isinstance(a, QuestionError)],
                                timings_ms={k: round(v, 2) for k, v in timings.items()}, views=shown)

    def _check_questions(questions: list[str], max_tokens: int | None) -> None:
        """What one request may ask: questions (count, length) and answer length."""
        if len(questions) > cfg.max_questions:
            raise HTTPException(422, f"{len(questions)} questions: at most {cfg.max_questions} per request")
        if any(len(q) > cfg.max_question_chars for q in questions):
            raise HTTPException(422, f"a question is longer than {cfg.max_question_chars} characters")
        if max_tokens is not None and not 1 <= max_tokens <= cfg.max_answer_tokens:
            raise HTTPException(422, f"max_tokens must be 1..{cfg.max_answer_tokens}, got {max_tokens}")

    @asynccontextmanager
    async def _request_dir(request_id: str | None, stage: str):
        """One request's temporary folder and, when it named itself, its progress entry (at `stage`);
        both go when it ends, however it ends."""
        workdir = Path(tempfile.mkdtemp(prefix="mellm-gw-"))
        try:
            try:
                run = board.start(request_id, workdir, stage)
            except RequestIdError as e:
                raise HTTPException(422, str(e)) from None
            try:
                yield workdir, run
            finally:
                if run is not None:
                    board.end(request_id)
        finally:
            shutil.rmtree(workdir, ignore_errors=True)

    async def _open_clip(request: Request, file: UploadFile | None, path: str | None, workdir: Path, t0: float,
                         timings: dict, missing: str) -> tuple[Path, str]:
        """The request's clip (an upload, saved under `workdir`, or a path under the media root) and
        its name as the client gave it; the time it took is `timings["receive"]`."""
        try:
            if file is not None and file.filename:
                source, name = await _receive(file, workdir), file.filename
            elif path:
                source, name = resolve_media_path(cfg.media_root, path), path
            else:
                raise ClipRequestError(400, missing)
        except ClipRequestError as e:
            raise HTTPException(e.status, str(e)) from None
        request.state.clip = name
        request.state.timings = timings
        timings["receive"] = 1000 * (time.perf_counter() - t0)
        return source, name

    def _hide_paths(message: str, workdir: Path, name: str) -> str:
        """Error messages name the clip as the client did, never by its place on the server."""
        # An upload is saved as the request folder's clip.* or unpacked into its frames/: a frame is
        # named by its place in the zip, anything else there is the clip itself.
        def inside(m: re.Match) -> str:
            rest = (m.group(1) or "").lstrip("/")
            return f"{name}/{rest[len('frames/'):]}" if rest.startswith("frames/") else name

        message = re.sub(re.escape(str(workdir)) + r"(/[^\s'\":,]*)?", inside, message)
        if cfg.media_root is not None:
            message = message.replace(str(cfg.media_root.resolve()) + "/", "").replace(str(cfg.media_root.resolve()), "")
        return message

    async def _receive(file: UploadFile, workdir: Path) -> Path:
        """Stream the upload to disk, refusing it past the size limit (chunked uploads carry no length)."""
        target, size = workdir / "upload", 0
        with open(target, "wb") as out:
            while chunk := await file.read(1 << 20):
                size += len(chunk)
                if size > max_bytes:
                    raise ClipRequestError(413, f"upload exceeds the {cfg.max_upload_mb:g} MiB limit")
                out.write(chunk)
        return save_upload(file.filename, target, workdir, max_files=cfg.max_zip_files,
                           max_unpacked_bytes=int(cfg.max_unpacked_mb * (1 << 20)))

    async def _ask(question: str, pngs: list[bytes], evidence_text: str, model: str | None,
                   max_tokens: int | None, evidence: dict) -> dict | QuestionError:
        """One question's answer, or its QuestionError when the model server refuses just this one
        (a prompt too long, say). A server that is down or failing fails the whole request."""
        from mellm.prompts import build_messages, to_openai_messages
        from mellm.vqa import classify_question

        messages = build_messages(question, cfg.image_roles, evidence_text if cfg.evidence_in_prompt else None)
        body = {"model": model or cfg.model, "messages": to_openai_messages(messages, pngs),
                "max_tokens": max_tokens or cfg.max_tokens, "temperature": 0.0}
        try:
            r = await state["client"].post("/v1/chat/completions", json=body)
        except httpx.HTTPError as e:
            raise _upstream_error(e) from None
        if r.status_code >= 500:
            raise HTTPException(502, f"the model server failed: HTTP {r.status_code}: {r.text[:300]}")
        if r.status_code >= 400:
            return QuestionError(question=question, status=r.status_code,
                                 message=f"the model server refused the request: {r.text[:300]}")
        from mellm.answers import claimed_aus

        text = _answer_text(r)
        parsed = _parsed(question, text)
        return {"question": question, "qtype": classify_question(question).type.value, "answer": text,
                "parsed": parsed, "claims": _claims(claimed_aus(question, text), evidence)}

    def _upstream_error(e: httpx.HTTPError) -> HTTPException:
        """How a failed exchange with vLLM reads to the client: down 503, slow 504, broken 502."""
        if isinstance(e, (httpx.ConnectError, httpx.ConnectTimeout)):
            return HTTPException(503, f"the model server at {cfg.upstream} is unavailable ({type(e).__name__})")
        if isinstance(e, httpx.TimeoutException):
            return HTTPException(504, f"the model server at {cfg.upstream} did not answer in time")
        return HTTPException(502, f"the model server at {cfg.upstream} broke off the exchange ({type(e).__name__})")

    def _answer_text(r: httpx.Response) -> str:
        try:
            return r.json()["choices"][0]["message"]["content"] or ""
        except (ValueError, RecursionError):
            raise HTTPException(502, f"the model server answered with something that is not JSON: {r.text[:120]!r}") from None
        except (KeyError, IndexError, TypeError):
            raise HTTPException(502, f"the model server's reply has no choices[0].message.content: {r.text[:200]}") from None

    add_long_route(app, cfg, limiter=limiter, workers=workers, check_key=lambda request: _check_key(cfg, request),
                   check_questions=_check_questions, request_dir=_request_dir, open_clip=_open_clip, ask=_ask, hide_paths=_hide_paths)

    def _check_media(body) -> None:
        """A chat request may carry images inline (data: URLs). A URL would have vLLM fetch it, from
        wherever it points, 127.0.0.1 and the cloud metadata address included: refused unless the
        operator allowed its host (GatewayConfig.allowed_media_hosts)."""
        from urllib.parse import urlsplit

        for url in _urls(body):
            if url.startswith("data:"):
                continue
            parts = urlsplit(url)
            if parts.scheme in ("http", "https") and parts.hostname and parts.hostname.lower() in cfg.allowed_media_hosts:
                continue
            allowed = ", ".join(cfg.allowed_media_hosts) or "none"
            raise HTTPException(403, f"remote media {url[:100]!r} refused: this gateway fetches no URLs except from "
                                     f"allowed hosts ({allowed}); send images inline as data: URLs")

    async def _forward(request: Request, path: str) -> Response:
        _check_key(cfg, request)
        body = await request.body()
        stream = False
        if request.method == "POST":
            try:
                payload = json.loads(body)
            except (ValueError, RecursionError):
                raise HTTPException(400, "the request body is not JSON (or is nested too deeply)") from None
            if not isinstance(payload, dict):
                raise HTTPException(400, "the request body must be a JSON object")
            _check_media(payload)
            stream = payload.get("stream") is True
        headers = {"content-type": request.headers.get("content-type", "application/json")}
        req = state["client"].build_request(request.method, path, content=body, headers=headers)
        try:
            upstream = await state["client"].send(req, stream=True)
        except httpx.HTTPError as e:
            raise _upstream_error(e) from None
        kept = {k: v for k, v in upstream.headers.items() if k.lower() in ("content-type", "cache-control")}
        if stream and upstream.status_code == 200:
            return StreamingResponse(_relay(upstream), status_code=200, headers=kept)
        try:  # not streamed: read it whole (bounded) so that a broken reply is a 502, not a cut-off 200
            data = bytearray()
            async for chunk in upstream.aiter_raw():
                data += chunk
                if len(data) > max_reply:
                    raise HTTPException(502, f"the model server's reply exceeds {cfg.max_reply_mb:g} MiB")
        except httpx.HTTPError as e:
            raise _upstream_error(e) from None
        finally:
            await upstream.aclose()
        if upstream.status_code >= 500:
            raise HTTPException(502, f"the model server failed: HTTP {upstream.status_code}: "
                                     f"{bytes(data[:300]).decode(errors='replace')}")
        if upstream.status_code == 200:
            try:
                reply = json.loads(data)
            except (ValueError, RecursionError):
                raise HTTPException(502, "the model server answered with something that is not JSON") from None
            needed = "choices" if path.endswith("/chat/completions") else "data"
            if not isinstance(reply, dict) or not isinstance(reply.get(needed), list):
                raise HTTPException(502, f"the model server's reply has no {needed!r} list")
        return Response(bytes(data), status_code=upstream.status_code, headers=kept)

    async def _relay(upstream: httpx.Response):
        """A streamed reply, chunk by chunk. Past the first byte the status is sent: a model server
        that breaks off mid-stream ends the stream with an OpenAI-style error event instead."""
        try:
            async for chunk in upstream.aiter_raw():
                yield chunk
        except httpx.HTTPError as e:
            err = _upstream_error(e)
            yield b"data: " + json.dumps(error_reply(err.status_code, err.detail)).encode() + b"\n\n"
        finally:
            await upstream.aclose()

    add_web_routes(app, cfg, lambda request: _check_key(cfg, request))

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        return await _forward(request, "/v1/chat/completions")

    @app.get("/v1/models")
    async def models(request: Request):
        return await _forward(request, "/v1/models")

    return app


def _urls(obj, depth: int = 0):
    """Every string under a key naming a URL (url, image_url, video_url, ...), anywhere in `obj`."""
    if depth > 64:
        raise HTTPException(400, "the request body is nested too deeply")
    if isinstance(obj, dict):
        for key, value in obj.items():
            if isinstance(value, str) and str(key).lower().endswith("url"):
                yield value.strip()
            elif isinstance(value, (dict, list)):
                yield from _urls(value, depth + 1)
    elif isinstance(obj, list):
        for value in obj:
            yield from _urls(value, depth + 1)
