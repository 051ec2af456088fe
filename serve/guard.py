"""What the gateway refuses before any of its routes run: a request without the API key (401,
before its body is read), a body larger than its route allows (413, whether the length is declared
or the body is streamed chunked), a client that stops sending its body (408), and connections that
never send a request (closed). The limits and their defaults are in the README's threat model."""

from __future__ import annotations

import asyncio
import hmac

from fastapi.responses import JSONResponse

from mellm.serve.contract import error_reply


def key_given(headers: dict[bytes, bytes]) -> str | None:
    auth = headers.get(b"authorization", b"").decode("latin-1")
    if auth.lower().startswith("bearer "):
        return auth[7:]
    key = headers.get(b"x-api-key")
    return key.decode("latin-1") if key is not None else None


def key_ok(expected: str | None, given: str | None) -> bool:
    if not expected:
        return True
    return given is not None and hmac.compare_digest(given.encode(), expected.encode())


class Guard:
    """ASGI middleware in front of the whole app.

    `limits` maps a path to its largest body in bytes; other paths get `default_bytes`. Paths under
    `protected` need the API key; /health and the OpenAPI document do not."""

    def __init__(self, app, api_key: str | None, limits: dict[str, int], default_bytes: int = 1 << 20,
                 body_timeout_s: float = 30.0, protected: str = "/v1/"):
        self.app, self.api_key, self.limits = app, api_key, limits
        self.default_bytes, self.body_timeout_s, self.protected = default_bytes, body_timeout_s, protected

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope["headers"])
        path = scope["path"]
        if path.startswith(self.protected) and not key_ok(self.api_key, key_given(headers)):
            return await _refuse(scope, receive, send, 401, "missing or wrong API key (send Authorization: Bearer <key>)")
        max_bytes = self.limits.get(path, self.default_bytes)
        limit_mib = f"{max_bytes / (1 << 20):g} MiB"
        length = headers.get(b"content-length", b"")
        if length.isdigit() and int(length) > max_bytes:
            return await _refuse(scope, receive, send, 413, f"request body of {int(length) / (1 << 20):.1f} MiB "
                                                            f"exceeds the {limit_mib} limit of {path}")
        seen = 0
        refusal: tuple[int, str] | None = None
        answered = False

        async def counted():
            nonlocal seen, refusal
            try:
                message = await asyncio.wait_for(receive(), self.body_timeout_s)
            except asyncio.TimeoutError:
                refusal = (408, f"the request body stalled: nothing received for {self.body_timeout_s:g} s")
                return {"type": "http.disconnect"}
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > max_bytes:
                    refusal = (413, f"request body exceeds the {limit_mib} limit of {path}")
                    return {"type": "http.disconnect"}
            return message

        async def refuse_now():
            nonlocal answered
            answered = True
            await _refuse(scope, receive, send, *refusal)

        async def replaced(message):
            nonlocal answered
            if refusal is None:
                answered = True
                return await send(message)
            if message["type"] == "http.response.start" and not answered:
                await refuse_now()

        try:
            await self.app(scope, counted, replaced)
        except Exception:
            if refusal is None or answered:
                raise
            await refuse_now()
        else:
            if refusal is not None and not answered:
                await refuse_now()


async def _refuse(scope, receive, send, status: int, message: str) -> None:
    headers = {"Connection": "close"} if status in (401, 408, 413) else None  # the body stays unread
    await JSONResponse(error_reply(status, message), status_code=status, headers=headers)(scope, receive, send)


def idle_closing_protocol(head_timeout_s: float):
    """uvicorn's h11 protocol, closing a connection that has not sent a complete request head within
    `head_timeout_s` of opening (uvicorn's own keep-alive timeout starts only after a first reply,
    so a socket that connects and says nothing, or dribbles a header a byte at a time, is held
    forever otherwise)."""
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class IdleClosingH11(H11Protocol):
        def connection_made(self, transport):
            super().connection_made(transport)
            self._answered = None  # the last request cycle that got its reply
            self._head_timer = self.loop.call_later(head_timeout_s, self._close_if_idle)

        def _close_if_idle(self):
            self._head_timer = None
            if self.cycle is self._answered and not self.transport.is_closing():
                self.transport.close()

        def _stop_timer(self):
            if self._head_timer is not None:
                self._head_timer.cancel()
                self._head_timer = None

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            if self.cycle is not self._answered:  # a request head was complete
                self._stop_timer()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            self._answered = self.cycle
            self._stop_timer()  # a kept-alive connection gets the same bound for its next request head
            if not self.transport.is_closing():
                self._head_timer = self.loop.call_later(head_timeout_s, self._close_if_idle)

        def connection_lost(self, exc):
            self._stop_timer()
            super().connection_lost(exc)

    return IdleClosingH11
