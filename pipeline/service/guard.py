"""The service's door: a bearer token on every request when one is set, the Host header
checked on a token-less loopback service (a web page elsewhere cannot reach it by renaming
itself), requests that change something refused from another origin, and bodies of bounded
size. An ASGI middleware in front of the whole app (page included)."""

from __future__ import annotations

import hmac
import ipaddress
import json
from collections.abc import Awaitable, Callable, MutableMapping
from http.cookies import SimpleCookie
from typing import Any
from urllib.parse import parse_qs

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

COOKIE = "window_recon_token"
"""The cookie a browser keeps the token in once ``/?token=T`` was opened."""



def is_loopback(host: str) -> bool:
    """Whether ``host`` (a name or an address, IPv6 with or without brackets) is this
    machine's loopback."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


class Guard:
    """Wraps ``app``; see the module's docstring.

    Args:
        app: The ASGI app.
        token: The bearer token every request needs, or None.
        max_body_bytes: Largest body accepted (413 beyond).
        loopback_only: Accept only loopback names in the Host header (a token-less service
            bound to loopback).
    """

    def __init__(self, app: Any, *, token: str | None, max_body_bytes: int,
                 loopback_only: bool) -> None:
        self.app, self.token = app, token
        self.max_body_bytes, self.loopback_only = max_body_bytes, loopback_only

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1")
                   for k, v in scope.get("headers", [])}
        refusal = self._refusal(scope, headers)
        if refusal is not None:
            await _respond(send, *refusal)
            return
        if self.token is not None and self._token_in_query(scope):
            await _respond(send, 303, "signed in", extra=[
                (b"location", b"/"),
                (b"set-cookie", f"{COOKIE}={self.token}; HttpOnly; SameSite=Strict; "
                                "Path=/".encode())])
            return
        body, too_large = await _read_body(receive, headers, self.max_body_bytes)
        if too_large:
            await _respond(send, 413, f"request body over {self.max_body_bytes} bytes")
            return
        sent = False

        async def replay() -> Message:
            nonlocal sent
            if sent:
                return await receive()  # the client's disconnect, for streaming responses
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(scope, replay, send)

    def _refusal(self, scope: Scope, headers: dict[str, str]) -> tuple[int, str] | None:
        host = headers.get("host", "")
        if self.loopback_only and not is_loopback(_host_name(host)):
            return 403, f"Host {host!r} is not this loopback service's"
        if self.token is not None and not self._authorized(scope, headers):
            return 401, "missing or wrong token: send 'Authorization: Bearer TOKEN'"
        origin = headers.get("origin")
        if scope["method"] not in ("GET", "HEAD", "OPTIONS") and origin is not None:
            if origin.split("://", 1)[-1] != host:
                return 403, f"requests from origin {origin} are refused"
        return None

    def _authorized(self, scope: Scope, headers: dict[str, str]) -> bool:
        expected = self.token.encode()
        scheme, _, given = headers.get("authorization", "").partition(" ")
        if scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), expected):
            return True
        cookie = SimpleCookie()
        try:
            cookie.load(headers.get("cookie", ""))
        except Exception:  # noqa: BLE001 - a malformed cookie header is no token
            return False
        if COOKIE in cookie and hmac.compare_digest(cookie[COOKIE].value.encode(), expected):
            return True
        return scope["path"] == "/" and self._token_in_query(scope)

    def _token_in_query(self, scope: Scope) -> bool:
        if scope["path"] != "/" or self.token is None:
            return False
        given = parse_qs(scope.get("query_string", b"").decode("latin-1")).get("token", [""])
        return hmac.compare_digest(given[0].encode(), self.token.encode())


def _host_name(host: str) -> str:
    if host.startswith("["):
        return host.split("]")[0] + "]"
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


async def _read_body(receive: Receive, headers: dict[str, str],
                     limit: int) -> tuple[bytes, bool]:
    """The whole request body, or ``(b"", True)`` once it exceeds ``limit``."""
    declared = headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        return b"", True
    chunks, size = [], 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            return b"".join(chunks), False
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            return b"", True
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks), False


async def _respond(send: Send, status: int, detail: str,
                   extra: list[tuple[bytes, bytes]] | None = None) -> None:
    body = json.dumps({"detail": detail}).encode()
    headers = [(b"content-type", b"application/json"),
               (b"content-length", str(len(body)).encode()), *(extra or [])]
    if status == 401:
        headers.append((b"www-authenticate", b"Bearer"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
