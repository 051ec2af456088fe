"""The gateway against hostile clients and a misbehaving model server, over real HTTP (issue 11,
items 2, 6, 7, 8, 11): pixel bombs and malformed zips, NUL bytes and endless paths, oversized and
stalled bodies, silent sockets, the key checked before a body is read, SSRF through image URLs, and
an upstream that drops the connection, answers non-JSON or no `choices`. Each gets its documented
status in OpenAI's error form, and the gateway keeps serving.

The model server here is a small raw-socket HTTP server that misbehaves on purpose (what vLLM does
when healthy is tested against real vLLM in test_serve.py)."""

from __future__ import annotations

import io
import json
import socket
import struct
import threading
import time
import zipfile
from pathlib import Path

import httpx
import pytest

from mellm.analyze import PerceptionSettings
from mellm.serve.background import free_port, serve_in_thread
from mellm.serve.gateway import GatewayConfig, create_app
from mellm.synth import SynthConfig, generate_corpus

KEY = "k"
AUTH = {"Authorization": f"Bearer {KEY}"}
GOOD_REPLY = {"id": "x", "object": "chat.completion", "model": "m",
              "choices": [{"index": 0, "message": {"role": "assistant", "content": "negative"}, "finish_reason": "stop"}]}


class Upstream:
    """A model server that answers each request as `mode` says: good, drop, not_json, no_choices,
    http500, slow, stream_drop. Records what it was asked."""

    def __init__(self):
        self.mode = "good"
        self.requests: list[tuple[str, bytes]] = []
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._one, args=(conn,), daemon=True).start()

    def _one(self, conn):
        with conn:
            data = b""
            while b"\r\n\r\n" not in data:
                chunk = conn.recv(65536)
                if not chunk:
                    return
                data += chunk
            head, body = data.split(b"\r\n\r\n", 1)
            length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                           if line.lower().startswith(b"content-length")), 0)
            while len(body) < length:
                body += conn.recv(65536)
            self.requests.append((head.split(b"\r\n")[0].decode(), body))
            mode = self.mode
            if mode == "drop":
                return
            if mode == "slow":
                time.sleep(3)
                return
            if mode == "stream_drop":
                conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n")
                event = b'data: {"choices": [{"delta": {"content": "neg"}}]}\n\n'
                conn.sendall(b"%x\r\n%s\r\n" % (len(event), event))
                return  # mid-stream, without the closing chunk
            status, payload, ctype = {
                "good": (200, json.dumps(GOOD_REPLY).encode(), "application/json"),
                "not_json": (200, b"<html>proxy error</html>", "text/html"),
                "no_choices": (200, b'{"id": "x", "object": "chat.completion"}', "application/json"),
                "http500": (500, b'{"error": {"message": "engine dead"}}', "application/json"),
            }[mode]
            conn.sendall(b"HTTP/1.1 %d X\r\ncontent-type: %s\r\ncontent-length: %d\r\nconnection: close\r\n\r\n%s"
                         % (status, ctype.encode(), len(payload), payload))


@pytest.fixture(scope="module")
def upstream():
    u = Upstream()
    yield u
    u.sock.close()


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    root = tmp_path_factory.mktemp("media")
    [clip] = generate_corpus(root, n=1, seed=2, config=SynthConfig(n_frames=8, width=320, height=240, face_iod=60))
    return root, clip


@pytest.fixture(scope="module")
def gateway(upstream, media):
    root, _ = media
    cfg = GatewayConfig(upstream=upstream.url, model="m", api_key=KEY, media_root=root, max_upload_mb=4,
                        max_chat_mb=1, max_concurrency=1, max_queue=4, request_timeout_s=60,
                        perception=PerceptionSettings(flow="dis"), max_frames=20, max_frame_pixels=1_000_000,
                        max_questions=4, body_timeout_s=1.5, head_timeout_s=1.5, max_unpacked_mb=1,
                        allowed_media_hosts=("media.example.org",))
    app = create_app(cfg)
    with serve_in_thread(app, **cfg.uvicorn_options()) as url:
        yield url, app


def analyze(url, **kw):
    return httpx.post(url + "/v1/me/analyze", headers=kw.pop("headers", AUTH), timeout=120, **kw)


def error_of(r: httpx.Response) -> dict:
    body = r.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "code"}, body
    assert body["error"]["code"] == r.status_code
    return body["error"]


# --- OpenAI error form everywhere (item 11) ---------------------------------------------------

def test_unknown_routes_and_methods_answer_in_openai_form(gateway):
    url, _ = gateway
    for r, status in ((httpx.get(url + "/v1/nope", headers=AUTH), 404), (httpx.get(url + "/v1/me/analyze", headers=AUTH), 405),
                      (httpx.delete(url + "/v1/chat/completions", headers=AUTH), 405)):
        assert r.status_code == status
        assert error_of(r)["type"] in ("not_found_error", "invalid_request_error")


# --- paths and zips (item 6) ------------------------------------------------------------------

@pytest.mark.parametrize("path, status", [("frames/synth_0000\x00/x", 400), ("a" * 6000, 400), ("a/" * 3000, 400),
                                          ("x" * 300, 400), ("\x7f", 400), ("../" * 50 + "etc/passwd", 403)])
def test_hostile_media_paths_get_4xx(gateway, path, status):
    url, _ = gateway
    r = analyze(url, data={"path": path})
    assert r.status_code == status, r.text
    assert len(error_of(r)["message"]) < 300


def _zip(files: dict[str, bytes], method=zipfile.ZIP_STORED) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", method) as zf:
        for name, data in files.items():
            zf.writestr(name, data)
    return buf.getvalue()


def _patch_headers(data: bytes, local_off: int, central_off: int, fmt: str, value) -> bytes:
    """Set a field in every local (PK\\3\\4) and central (PK\\1\\2) header."""
    out = bytearray(data)
    for sig, off in ((b"PK\x03\x04", local_off), (b"PK\x01\x02", central_off)):
        if off is None:
            continue
        start = 0
        while (i := out.find(sig, start)) >= 0:
            struct.pack_into(fmt, out, i + off, value)
            start = i + 4
    return bytes(out)


def _malformed_zips(frame: bytes) -> dict[str, tuple[bytes, int, str]]:
    good = _zip({"img1.png": frame, "img2.png": frame})
    bad_crc = bytearray(good)
    i = bad_crc.find(b"IDAT")
    bad_crc[i + 8] ^= 0xFF  # one byte of the first frame's data: the stored CRC no longer matches
    return {
        "bad_crc": (bytes(bad_crc), 422, "damaged"),
        "unknown_compression": (_patch_headers(good, 8, 10, "<H", 99), 422, "compression"),
        "encrypted": (_patch_headers(good, 6, 8, "<H", 0x1), 422, "encrypted"),
        "size_too_small": (_patch_headers(good, None, 24, "<I", 10), 422, "damaged"),
        "size_huge": (_patch_headers(good, None, 24, "<I", 0xFFFFFF00), 413, "unpacks to more than"),
        "deflate_bomb_with_lying_size": (_patch_headers(_zip({"img1.png": b"\0" * (8 << 20)}, zipfile.ZIP_DEFLATED),
                                                        None, 24, "<I", 1000), 422, "damaged"),
        "deflate_bomb": (_zip({"img1.png": b"\0" * (8 << 20)}, zipfile.ZIP_DEFLATED), 413, "unpacks to more than"),
        "truncated": (good[: len(good) // 2], 422, "not a valid zip"),
        "no_frames": (_zip({"readme.txt": b"hi"}), 422, "no image frames"),
        "same_names": (_zip({"a/img1.png": frame, "b/img1.png": frame}), 422, "same name"),
        "nul_in_name": (_zip({"img1.png": frame}).replace(b"img1.png", b"im\x00g.png"), 422, ""),
    }


def test_every_malformed_zip_gets_its_status_and_the_gateway_keeps_serving(gateway, media):
    url, _ = gateway
    root, clip = media
    frame = (root / clip.frames_dir / "img1.png").read_bytes()
    for case, (data, status, reason) in _malformed_zips(frame).items():
        r = analyze(url, files={"file": ("clip.zip", data, "application/zip")})
        assert r.status_code == status, (case, r.text)
        assert reason in error_of(r)["message"], (case, r.text)
    assert httpx.get(url + "/health").json()["gateway"] == "ok"


# --- pixel and frame bombs (item 2) -----------------------------------------------------------

def _peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def _png_bomb(side: int) -> bytes:
    """A valid grey PNG of side x side pixels, a few hundred KB: zlib squeezes the zero rows."""
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    row = b"\0" * (side + 1)
    comp = zlib.compressobj(9)
    raw = b"".join(comp.compress(row) for _ in range(side)) + comp.flush()
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", raw) + chunk(b"IEND", b""))


def test_a_pixel_bomb_is_refused_before_decoding(gateway):
    url, app = gateway
    bomb = _png_bomb(20000)  # 400 MP: 1.2 GB as an RGB frame
    data = _zip({"img1.png": bomb, "img2.png": bomb}, zipfile.ZIP_DEFLATED)
    assert len(data) < 1 << 20
    analyze(url, data={"path": "nope"})  # the worker is started
    [pid] = app.state.perception.pids
    before = _peak_rss_mb(pid)
    r = analyze(url, files={"file": ("bomb.zip", data, "application/zip")})
    assert r.status_code == 413, r.text
    assert "too_large" in error_of(r)["message"] and "img1.png" in error_of(r)["message"]
    peak = _peak_rss_mb(pid)
    print(f"perception worker peak RSS {before:.0f} MB before, {peak:.0f} MB after the 2 x 400 MP bomb")
    assert peak - before < 100  # decoding one frame would take 400-1200 MB


def test_a_clip_with_too_many_frames_is_refused_from_its_header(gateway, tmp_path):
    import av
    import numpy as np

    url, _ = gateway
    path = tmp_path / "long.mkv"
    with av.open(str(path), "w") as out:
        stream = out.add_stream("ffv1", rate=25)
        stream.width, stream.height, stream.pix_fmt = 64, 64, "yuv420p"
        for _ in range(30):
            for packet in stream.encode(av.VideoFrame.from_ndarray(np.zeros((64, 64, 3), np.uint8), format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    r = analyze(url, files={"file": ("long.mkv", path.read_bytes(), "video/x-matroska")})
    assert r.status_code == 413 and "30 frames; at most 20" in error_of(r)["message"], r.text
    assert "mellm-gw-" not in r.text


def test_an_unreadable_upload_is_named_as_the_client_named_it(gateway):
    url, _ = gateway
    r = analyze(url, files={"file": ("x.mp4", b"garbage" * 100, "video/mp4")})
    assert r.status_code == 422, r.text
    message = error_of(r)["message"]
    assert "cannot read video x.mp4:" in message and "x.mp4/" not in message, message
    assert "mellm-gw-" not in r.text


# --- bodies, keys, questions, sockets (item 8) ------------------------------------------------

def test_chat_body_is_capped_declared_or_chunked(gateway, upstream):
    url, _ = gateway
    asked = len(upstream.requests)
    big = {"model": "m", "messages": [{"role": "user", "content": "x" * (2 << 20)}]}
    r = httpx.post(url + "/v1/chat/completions", json=big, headers=AUTH, timeout=30)
    assert r.status_code == 413 and error_of(r)["type"] == "request_too_large"

    def chunks():
        for _ in range(3):
            yield b"x" * (1 << 20)

    r = httpx.post(url + "/v1/chat/completions", content=chunks(), headers={**AUTH, "content-type": "application/json"},
                   timeout=30)
    assert r.status_code == 413
    assert len(upstream.requests) == asked  # nothing was forwarded


def _raw(url: str, data: bytes, wait: float = 5.0, first: bool = False) -> bytes:
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=wait) as s:
        s.sendall(data)
        out = b""
        try:
            while chunk := s.recv(65536):
                out += chunk
                if first and b"\r\n\r\n" in out:
                    break
        except TimeoutError:
            pass
        return out


def test_the_key_is_checked_before_the_body_is_read(gateway):
    url, _ = gateway
    for path in ("/v1/me/analyze", "/v1/chat/completions"):
        t = time.perf_counter()
        # 300 MiB announced, none of it sent: the answer must not wait for the body
        reply = _raw(url, f"POST {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer wrong\r\n"
                          f"Content-Type: application/json\r\nContent-Length: {300 << 20}\r\n\r\n".encode(), first=True)
        assert reply.startswith(b"HTTP/1.1 401"), reply[:200]
        assert time.perf_counter() - t < 1.4  # before the 1.5 s body timeout could answer instead
        assert b"connection: close" in reply.lower()


def test_a_stalled_body_gets_408_and_a_silent_socket_is_closed(gateway):
    url, _ = gateway
    reply = _raw(url, b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer k\r\n"
                      b"Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"model\"")
    assert reply.startswith(b"HTTP/1.1 408"), reply[:200]
    sockets = []
    host, port = url.removeprefix("http://").split(":")
    for i in range(40):  # silent, or a request head dribbled and never finished
        s = socket.create_connection((host, int(port)))
        if i % 2:
            s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        s.settimeout(6)
        sockets.append(s)
    t = time.perf_counter()
    for s in sockets:
        assert s.recv(1024) == b""  # closed by the gateway
        s.close()
    assert time.perf_counter() - t < 6
    assert httpx.get(url + "/health").status_code == 200


def test_questions_and_answer_length_are_bounded(gateway):
    url, _ = gateway
    r = analyze(url, data={"path": "x", "question": ["What is the coarse expression class?"] * 5})
    assert r.status_code == 422 and "at most 4" in error_of(r)["message"]
    r = analyze(url, data={"path": "x", "question": "q" * 3000})
    assert r.status_code == 422 and "longer than" in error_of(r)["message"]
    r = analyze(url, data={"path": "x", "max_tokens": "100000000"})
    assert r.status_code == 422 and "max_tokens" in error_of(r)["message"]


# --- SSRF (item 7) ----------------------------------------------------------------------------

def _chat(image_url: str) -> dict:
    return {"model": "m", "max_tokens": 4, "messages": [{"role": "user", "content": [
        {"type": "text", "text": "What is the coarse expression class?"},
        {"type": "image_url", "image_url": {"url": image_url}}]}]}


@pytest.mark.parametrize("target", ["http://127.0.0.1:{port}/canary.png", "http://localhost:{port}/x",
                                    "http://169.254.169.254/latest/meta-data/", "file:///etc/passwd",
                                    "https://media.example.org.evil.com/x.png", "ftp://media.example.org/x.png",
                                    " http://[::1]:{port}/x", "HTTP://127.0.0.1:{port}/x"])
def test_remote_media_in_chat_requests_is_refused(gateway, upstream, target):
    url, _ = gateway
    canary = socket.socket()
    canary.bind(("127.0.0.1", 0))
    canary.listen(1)
    canary.settimeout(0.5)
    asked = len(upstream.requests)
    try:
        r = httpx.post(url + "/v1/chat/completions", json=_chat(target.format(port=canary.getsockname()[1])),
                       headers=AUTH, timeout=30)
        assert r.status_code == 403 and "refused" in error_of(r)["message"], r.text
        assert len(upstream.requests) == asked  # not forwarded, so nobody fetches it
        with pytest.raises(TimeoutError):
            canary.accept()
    finally:
        canary.close()
    for listed in ({"image_url": target}, {"video_url": {"url": target}}, {"nested": [{"audio_url": target}]}):
        body = {"model": "m", "messages": [{"role": "user", "content": [listed]}]}
        assert httpx.post(url + "/v1/chat/completions", json=body, headers=AUTH, timeout=30).status_code == 403


def test_inline_images_and_allowed_hosts_pass_through(gateway, upstream):
    url, _ = gateway
    upstream.mode = "good"
    for target in ("data:image/png;base64,iVBORw0KGgo=", "https://media.example.org/clip/apex.png"):
        r = httpx.post(url + "/v1/chat/completions", json=_chat(target), headers=AUTH, timeout=30)
        assert r.status_code == 200 and r.json() == GOOD_REPLY
        assert target.encode() in upstream.requests[-1][1]


def test_bodies_that_are_not_json_objects_get_400(gateway):
    url, _ = gateway
    for body in (b"not json", b"[1, 2]", b"[" * 100_000 + b"]" * 100_000, b'{"messages": ' + b"[" * 5000 + b"]" * 5000 + b"}"):
        r = httpx.post(url + "/v1/chat/completions", content=body, headers={**AUTH, "content-type": "application/json"},
                       timeout=30)
        assert r.status_code == 400, (body[:20], r.text)
        error_of(r)


# --- a misbehaving model server (item 6) ------------------------------------------------------

@pytest.mark.parametrize("mode, status", [("drop", 502), ("not_json", 502), ("no_choices", 502), ("http500", 502)])
def test_upstream_failures_in_the_chat_pass_through(gateway, upstream, mode, status):
    url, _ = gateway
    upstream.mode = mode
    try:
        r = httpx.post(url + "/v1/chat/completions", json=_chat("data:image/png;base64,AA=="), headers=AUTH, timeout=30)
        assert r.status_code == status, r.text
        assert error_of(r)["type"] == "upstream_error"
        r = httpx.get(url + "/v1/models", headers=AUTH, timeout=30)
        assert r.status_code == 502, r.text
    finally:
        upstream.mode = "good"


def test_a_stream_broken_off_ends_with_an_error_event(gateway, upstream):
    url, _ = gateway
    upstream.mode = "stream_drop"
    try:
        with httpx.stream("POST", url + "/v1/chat/completions", json={**_chat("data:,"), "stream": True},
                          headers=AUTH, timeout=30) as r:
            events = [line for line in r.iter_lines() if line.startswith("data:")]
        assert r.status_code == 200
        assert json.loads(events[-1][5:])["error"]["code"] == 502, events
    finally:
        upstream.mode = "good"


@pytest.mark.parametrize("mode", ["drop", "not_json", "no_choices", "http500"])
def test_upstream_failures_behind_analyze_are_502(gateway, upstream, media, mode):
    url, _ = gateway
    root, clip = media
    upstream.mode = mode
    try:
        r = analyze(url, data={"path": clip.frames_dir, "onset": str(clip.onset_frame), "apex": str(clip.apex_frame)})
        assert r.status_code == 502, r.text
        assert error_of(r)["type"] == "upstream_error"
    finally:
        upstream.mode = "good"
    r = analyze(url, data={"path": clip.frames_dir, "onset": str(clip.onset_frame), "apex": str(clip.apex_frame)})
    assert r.status_code == 200 and r.json()["answers"][0]["answer"] == "negative"


def test_an_upstream_that_is_down_or_slow(media, upstream):
    root, clip = media
    for up, status in ((f"http://127.0.0.1:{free_port()}", 503), (upstream.url, 504)):
        upstream.mode = "slow"
        cfg = GatewayConfig(upstream=up, model="m", request_timeout_s=1.0)
        try:
            with serve_in_thread(create_app(cfg), **cfg.uvicorn_options()) as url:
                r = httpx.post(url + "/v1/chat/completions", json=_chat("data:,"), timeout=30)
                assert r.status_code == status, r.text
                error_of(r)
        finally:
            upstream.mode = "good"
