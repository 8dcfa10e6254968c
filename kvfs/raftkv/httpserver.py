"""A minimal HTTP/1.1 server for a member's health and metrics port (trio, GET only).

Enough for Prometheus and for health probes (curl, a load balancer, Kubernetes), nothing
more: each connection sends one request, whose head must arrive within
:data:`REQUEST_TIMEOUT` seconds and fit in :data:`MAX_HEAD` bytes; the answer is computed
by the route named by the path (the query is ignored) and sent with ``Content-Length``
and ``Connection: close``, then the connection is closed.  GET and HEAD only; an unknown
path is 404, another method 405, a malformed request 400.

Invariant: a client's behaviour (silence, garbage, a reset) ends only its own connection.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping

import trio

log = logging.getLogger(__name__)

MAX_HEAD = 8192
REQUEST_TIMEOUT = 10.0

# A route answers (status, content type, body).
Route = Callable[[], tuple[int, str, bytes]]

_REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed",
            500: "Internal Server Error", 503: "Service Unavailable"}


def parse_address(text: str, what: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[v6]:PORT`` for IPv6); ValueError with a one-line message."""
    host, sep, port = text.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"{what} must look like HOST:PORT or off, not {text!r}")
    return host, int(port)


async def serve_http(listeners: list[trio.SocketListener], routes: Mapping[str, Route], *,
                     task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
    """Serve ``routes`` on ``listeners`` (from ``trio.open_tcp_listeners``) until
    cancelled; started with the bound port."""
    bound = listeners[0].socket.getsockname()[1]

    async def handle(stream: trio.SocketStream) -> None:
        try:
            with trio.move_on_after(REQUEST_TIMEOUT):
                await _answer(stream, routes)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass  # the client went away
        finally:
            await trio.aclose_forcefully(stream)

    async with trio.open_nursery() as nursery:
        await nursery.start(trio.serve_listeners, handle, listeners)
        task_status.started(bound)


async def _answer(stream: trio.SocketStream, routes: Mapping[str, Route]) -> None:
    head = bytearray()
    while b"\r\n\r\n" not in head and b"\n\n" not in head:
        if len(head) > MAX_HEAD:
            await _send(stream, 400, "text/plain", b"request head too large\n", body=True)
            return
        chunk = await stream.receive_some(4096)
        if not chunk:
            return
        head += chunk
    request_line = bytes(head).split(b"\n", 1)[0].decode("latin-1").strip()
    parts = request_line.split()
    if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
        await _send(stream, 400, "text/plain", b"malformed request\n", body=True)
        return
    method, target = parts[0], parts[1]
    if method not in ("GET", "HEAD"):
        await _send(stream, 405, "text/plain", b"only GET\n", body=True, allow=True)
        return
    route = routes.get(target.split("?", 1)[0])
    if route is None:
        await _send(stream, 404, "text/plain", b"not found\n", body=method == "GET")
        return
    try:
        status, content_type, payload = route()
    except Exception:
        log.exception("answering %s failed", target)
        status, content_type, payload = 500, "text/plain", b"internal error\n"
    await _send(stream, status, content_type, payload, body=method == "GET")


async def _send(stream: trio.SocketStream, status: int, content_type: str, payload: bytes,
                *, body: bool, allow: bool = False) -> None:
    head = [f"HTTP/1.1 {status} {_REASONS.get(status, '')}",
            f"Content-Type: {content_type}", f"Content-Length: {len(payload)}",
            "Connection: close"]
    if allow:
        head.append("Allow: GET, HEAD")
    data = ("\r\n".join(head) + "\r\n\r\n").encode("latin-1")
    await stream.send_all(data + payload if body else data)
