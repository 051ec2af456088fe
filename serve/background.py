"""Running an ASGI app (the gateway, a test server) with uvicorn in a background thread."""

from __future__ import annotations

import socket
import threading
import time
from contextlib import contextmanager


def free_port(host: str = "127.0.0.1") -> int:
    """A port nobody listens on right now."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


@contextmanager
def serve_in_thread(app, host: str = "127.0.0.1", port: int = 0, lifespan: str = "on", **options):
    """Serve `app` until the block ends; yields its base URL. Port 0 picks a free one. `options`:
    more uvicorn settings (the gateway's: GatewayConfig.uvicorn_options())."""
    import uvicorn

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind((host, port))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan=lifespan, **options))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.time() + 30
    while not server.started and time.time() < deadline and thread.is_alive():
        time.sleep(0.02)
    if not server.started:
        raise RuntimeError(f"the server on {host}:{sock.getsockname()[1]} did not start")
    try:
        yield f"http://{host}:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()
