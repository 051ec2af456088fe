"""The ME gateway: an HTTP service in front of vLLM that explains a micro-expression clip.

POST /v1/me/analyze    a clip (upload: video or zip of frames; or a path under the media root),
                       optional onset/apex/offset and questions -> perception -> the training
                       prompt (mellm.prompts) -> vLLM -> answers, parsed labels, evidence, timings
POST /v1/chat/completions, GET /v1/models    passed through to vLLM
GET  /health           the gateway and vLLM, separately
GET  /                 a web page to look at a clip, and /v1/me/info, /v1/me/media for it (serve/web.py)

Limits: upload size (413), per-request time (504), concurrency (requests beyond the running and
queued ones get 429 at once), API key (401). A bad clip is a 4xx with the reason; vLLM down is a
503. The gateway keeps serving through all of them. Requests and replies follow serve/contract.py;
every error is OpenAI-style JSON. Each request is logged in one line (logger "mellm.gateway").
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import httpx
from fastapi import FastAPI, File, Form, HTTPException, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse

from mellm.analyze import PerceptionSettings
from mellm.errors import ClipError, ClipNotFoundError
from mellm.labels import au_name
from mellm.prompts import IMAGE_ROLES
from mellm.serve.clips import ClipRequestError, resolve_media_path, save_upload
from mellm.serve.contract import AnalyzeReply, ErrorReply, QuestionError, error_reply
from mellm.serve.web import add_web_routes
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


def as_trained(trained_dir: Path | None, images: str | None, evidence: bool | None) -> dict:
    """Gateway settings: explicit flags, else how the adapter's training data was prompted and
    perceived (its serving.json), else the build-data defaults. Asking the model in any other way
    than it was trained is train/serve skew."""
    from mellm.serve.vllm_server import serving_notes

    notes = serving_notes(trained_dir) if trained_dir is not None else {}
    prompt = notes.get("prompt") or {}
    roles = tuple(prompt.get("image_roles", IMAGE_ROLES))
    with_evidence = bool(prompt.get("evidence_in_prompt", True))
    known = {f.name for f in fields(PerceptionSettings)}
    perception = PerceptionSettings(**{k: v for k, v in (notes.get("perception") or {}).items() if k in known})
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


class BodyLimit:
    """ASGI middleware: a request body to `path` larger than `max_bytes` gets 413, whether the
    client declares its length or streams it chunked (then the body is cut off where it passes the
    limit, before the form parser spools it all to disk)."""

    def __init__(self, app, max_bytes: int, path: str):
        self.app, self.max_bytes, self.path = app, max_bytes, path

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["path"] != self.path:
            return await self.app(scope, receive, send)
        limit_mib = self.max_bytes / (1 << 20)
        length = dict(scope["headers"]).get(b"content-length", b"")
        if length.isdigit() and int(length) > self.max_bytes:
            return await JSONResponse(error_reply(413, f"upload of {int(length) / (1 << 20):.0f} MiB exceeds the "
                                                       f"{limit_mib:g} MiB limit"), status_code=413)(scope, receive, send)
        seen, over, answered = 0, False, False

        async def counted():
            nonlocal seen, over
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    over = True
                    return {"type": "http.disconnect"}
            return message

        async def too_large():
            nonlocal answered
            answered = True
            await JSONResponse(error_reply(413, f"upload exceeds the {limit_mib:g} MiB limit"),
                               status_code=413)(scope, receive, send)

        async def replaced(message):
            nonlocal answered
            if not over:
                answered = True
                return await send(message)
            if message["type"] == "http.response.start" and not answered:
                await too_large()

        try:
            await self.app(scope, counted, replaced)
        except Exception:
            if not over or answered:
                raise
            await too_large()


def _check_key(cfg: GatewayConfig, request: Request) -> None:
    if not cfg.api_key:
        return
    auth = request.headers.get("authorization", "")
    given = auth[7:] if auth.lower().startswith("bearer ") else request.headers.get("x-api-key")
    if given != cfg.api_key:
        raise HTTPException(401, "missing or wrong API key (send Authorization: Bearer <key>)")


def _perceive(source: Path, onset, apex, offset, cfg: GatewayConfig):
    """Perception and the model's images as PNG bytes (run in a worker thread)."""
    from mellm.analyze import analyze_clip

    result = analyze_clip(source, onset=onset, apex=apex, offset=offset, settings=cfg.perception)
    return result, result.pngs(cfg.image_roles)


def _perceive_views(source: Path, onset, apex, offset, cfg: GatewayConfig):
    """`_perceive` plus what a person looks at (contract.Views, as a dict) and the motion curve."""
    import base64

    from mellm.analyze import analyze_clip, png_bytes

    result = analyze_clip(source, onset=onset, apex=apex, offset=offset, settings=cfg.perception, curve=True)
    pictures = {"onset": result.onset_crop, "apex": result.apex_crop, "flow": result.flow_image(),
                "magnitude": result.magnitude_image()}
    views = {"crop_size": int(result.onset_crop.shape[0]), "regions": result.region_shapes(),
             "images": {role: "data:image/png;base64," + base64.b64encode(png_bytes(image)).decode("ascii")
                        for role, image in pictures.items()}}
    return result, result.pngs(cfg.image_roles), views


def _claims(aus: list[int], evidence: dict) -> list[dict]:
    """Each AU an answer names, checked against the evidence: present (score >= 0.5) or not."""
    present = {a["au"] for a in evidence["aus"]}
    scored = {a["au"]: a for a in evidence["au_scores"]}
    return [{"au": au, "name": au_name(au), "supported": au in present,
             "score": scored[au]["score"] if au in scored else None,
             "side": scored[au]["side"] if au in scored else None} for au in aus]


def _parsed(question: str, text: str) -> dict:
    from mellm.answers import parse_answer

    d = asdict(parse_answer(question, text))
    d["aus"] = sorted(d["aus"])
    return d


def create_app(cfg: GatewayConfig) -> FastAPI:
    state: dict = {}
    limiter = Limiter(cfg.max_concurrency, cfg.max_queue)
    max_bytes = int(cfg.max_upload_mb * (1 << 20))
    upstream_headers = {"Authorization": f"Bearer {cfg.upstream_api_key}"} if cfg.upstream_api_key else {}

    @asynccontextmanager
    async def lifespan(app):
        state["client"] = httpx.AsyncClient(base_url=cfg.upstream, headers=upstream_headers,
                                            timeout=httpx.Timeout(cfg.request_timeout_s, connect=5.0))
        state["pool"] = ThreadPoolExecutor(max_workers=cfg.max_concurrency, thread_name_prefix="perception")
        yield
        await state["client"].aclose()
        state["pool"].shutdown(wait=False, cancel_futures=True)

    app = FastAPI(title="MELLM ME gateway", lifespan=lifespan)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException):
        return JSONResponse(error_reply(exc.status_code, str(exc.detail)), status_code=exc.status_code,
                            headers=exc.headers)

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

    app.add_middleware(BodyLimit, max_bytes=max_bytes, path="/v1/me/analyze")

    @app.get("/health")
    async def health():
        try:
            r = await state["client"].get("/health", timeout=5.0)
            vllm = {"status": "ok" if r.status_code == 200 else f"http {r.status_code}", "url": cfg.upstream}
        except httpx.HTTPError as e:
            vllm = {"status": "down", "url": cfg.upstream, "detail": f"{type(e).__name__}: {e}"}
        return {"gateway": "ok", "vllm": vllm, "model": cfg.model,
                "load": {"running": limiter.running, "waiting": limiter.waiting}}

    @app.post("/v1/me/analyze", response_model=AnalyzeReply,
              responses={code: {"model": ErrorReply} for code in (400, 401, 403, 404, 413, 415, 422, 429, 502, 503, 504)})
    async def analyze(
        request: Request,
        file: UploadFile | None = File(None, description="A video file or a .zip of frames."),
        path: str | None = Form(None, description="Instead of an upload: a clip path under the media root."),
        onset: int | None = Form(None), apex: int | None = Form(None), offset: int | None = Form(None),
        question: list[str] = Form([], description="Questions to ask (repeatable); default: the open analysis."),
        model: str | None = Form(None, description="Served model or adapter name."),
        max_tokens: int | None = Form(None),
        views: bool = Form(False, description="Also return the pictures a person looks at and the motion curve."),
    ):
        _check_key(cfg, request)
        async with limiter.slot():
            try:
                return await asyncio.wait_for(
                    _analyze(request, file, path, onset, apex, offset, question or [ANALYSIS_QUESTION], model,
                             max_tokens, views),
                    timeout=cfg.request_timeout_s)
            except asyncio.TimeoutError:
                raise HTTPException(504, f"the request took longer than {cfg.request_timeout_s:g} s") from None

    async def _analyze(request, file, path, onset, apex, offset, questions, model, max_tokens,
                       views: bool = False) -> AnalyzeReply:
        t0 = time.perf_counter()
        timings: dict[str, float] = {}
        workdir = Path(tempfile.mkdtemp(prefix="mellm-gw-"))
        try:
            try:
                if file is not None and file.filename:
                    source, name = await _receive(file, workdir), file.filename
                elif path:
                    source, name = resolve_media_path(cfg.media_root, path), path
                else:
                    raise ClipRequestError(400, "no clip: upload `file` (video or zip of frames) or give `path`")
            except ClipRequestError as e:
                raise HTTPException(e.status, str(e)) from None
            request.state.clip = name
            request.state.timings = timings
            timings["receive"] = 1000 * (time.perf_counter() - t0)
            t = time.perf_counter()
            try:
                shown = None
                if views:
                    result, pngs, shown = await asyncio.get_running_loop().run_in_executor(
                        state["pool"], _perceive_views, source, onset, apex, offset, cfg)
                else:
                    result, pngs = await asyncio.get_running_loop().run_in_executor(
                        state["pool"], _perceive, source, onset, apex, offset, cfg)
            except ClipNotFoundError as e:
                raise HTTPException(404, _hide_paths(str(e), workdir, name)) from None
            except ClipError as e:
                raise HTTPException(422, _hide_paths(f"{e.reason}: {e}", workdir, name)) from None
            timings["perception"] = 1000 * (time.perf_counter() - t)
            evidence = result.evidence.to_dict()
            evidence["clip"] = name
            t = time.perf_counter()
            asked = await asyncio.gather(*[_ask(q, pngs, result.evidence.description, model, max_tokens, evidence)
                                           for q in questions])
            timings["llm"] = 1000 * (time.perf_counter() - t)
            timings["total"] = 1000 * (time.perf_counter() - t0)
            timings["overhead"] = timings["total"] - timings["perception"] - timings["llm"]
            return AnalyzeReply(clip=name, model=model or cfg.model, evidence=evidence,
                                answers=[a for a in asked if not isinstance(a, QuestionError)],
                                errors=[a for a in asked if isinstance(a, QuestionError)],
                                timings_ms={k: round(v, 2) for k, v in timings.items()}, views=shown)
        finally:
            shutil.rmtree(workdir, ignore_errors=True)

    def _hide_paths(message: str, workdir: Path, name: str) -> str:
        """Error messages name the clip as the client did, never by its place on the server."""
        message = message.replace(str(workdir), name)
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
        return save_upload(file.filename, target, workdir)

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
        except (httpx.ConnectError, httpx.ConnectTimeout) as e:
            raise HTTPException(503, f"the model server at {cfg.upstream} is unavailable ({type(e).__name__})") from None
        except httpx.TimeoutException:
            raise HTTPException(504, f"the model server at {cfg.upstream} did not answer in time") from None
        if r.status_code >= 500:
            raise HTTPException(502, f"the model server failed: HTTP {r.status_code}: {r.text[:300]}")
        if r.status_code >= 400:
            return QuestionError(question=question, status=r.status_code,
                                 message=f"the model server refused the request: {r.text[:300]}")
        text = r.json()["choices"][0]["message"]["content"] or ""
        parsed = _parsed(question, text)
        return {"question": question, "qtype": classify_question(question).type.value, "answer": text,
                "parsed": parsed, "claims": _claims(parsed["aus"], evidence)}

    async def _forward(request: Request, path: str) -> Response:
        _check_key(cfg, request)
        body = await request.body()
        headers = {"content-type": request.headers.get("content-type", "application/json")}
        req = state["client"].build_request(request.method, path, content=body, headers=headers)
        try:
            upstream = await state["client"].send(req, stream=True)
        except (httpx.ConnectError, httpx.ConnectTimeout) as e:
            raise HTTPException(503, f"the model server at {cfg.upstream} is unavailable ({type(e).__name__})") from None

        async def relay():
            try:
                async for chunk in upstream.aiter_raw():
                    yield chunk
            finally:
                await upstream.aclose()

        kept = {k: v for k, v in upstream.headers.items() if k.lower() in ("content-type", "cache-control")}
        return StreamingResponse(relay(), status_code=upstream.status_code, headers=kept)

    add_web_routes(app, cfg, lambda request: _check_key(cfg, request))

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        return await _forward(request, "/v1/chat/completions")

    @app.get("/v1/models")
    async def models(request: Request):
        return await _forward(request, "/v1/models")

    return app
