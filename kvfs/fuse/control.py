"""The mount's control socket, served: how ``kvfs log``, ``diff`` and ``restore`` reach a
mount (the client side is :mod:`kvfs.fuse.controlsocket`).

Each mount listens on a Unix socket named after its mountpoint (:func:`socket_path`), mode
0600, so only root (who mounts) may use it.  A request and its answer are each one msgpack
map preceded by its length (4 bytes, big-endian); one request per connection.  The caller's
uid (``SO_PEERCRED``) is the author of what a request changes.

Requests: ``{"op": "log", "path"}``, ``{"op": "content", "path", "rev"}``,
``{"op": "restore", "path", "rev" | "at_rev" | "at_time"}``, ``{"op": "info", "path"}``
(``kvfs info``: :func:`kvfs.vfs.inspect.inspect`) and ``{"op": "metrics"}`` (``kvfs stats``:
every sample of the mount's metrics registry as ``[name, labels, value]``, so it works with
the metrics endpoint off).  Answers are ``{"ok": true, ...}`` or
``{"ok": false, "error": "<one line>"}``.
"""

from __future__ import annotations

import logging
import os
import socket
import struct
from typing import Any

import msgpack
import trio
from prometheus_client import CollectorRegistry

from kvfs.errors import FSError
from kvfs.fuse.controlsocket import LENGTH, RUN_DIR, socket_path
from kvfs.history.service import AsOf, HistoryError, HistoryService
from kvfs.outage import log_failure
from kvfs.vfs.inspect import inspect

log = logging.getLogger("kvfs.control")
MAX_REQUEST = 1 << 20


async def _recv_exactly(stream: trio.SocketStream, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        got = await stream.receive_some(n - len(buf))
        if not got:
            raise EOFError("connection closed")
        buf += got
    return bytes(buf)


async def _send(stream: trio.SocketStream, obj: dict[str, Any]) -> None:
    raw = msgpack.packb(obj)
    await stream.send_all(LENGTH.pack(len(raw)) + raw)


class ControlServer:
    """Serves :class:`HistoryService`, :func:`~kvfs.vfs.inspect.inspect` and the samples
    of ``registry`` (the mount's metrics) on the mount's control socket."""

    def __init__(self, mountpoint: str, history: HistoryService,
                 registry: CollectorRegistry) -> None:
        self.path = socket_path(mountpoint)
        self.history = history
        self.registry = registry

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
                  ) -> None:
        os.makedirs(RUN_DIR, mode=0o755, exist_ok=True)
        sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            os.unlink(self.path)  # left by a mount of this mountpoint that died
        except FileNotFoundError:
            pass
        old = os.umask(0o177)
        try:
            await sock.bind(self.path)
        finally:
            os.umask(old)
        sock.listen(16)
        listener = trio.SocketListener(sock)
        task_status.started()
        try:
            await trio.serve_listeners(self._serve, [listener])
        finally:
            try:
                os.unlink(self.path)
            except OSError:
                pass

    async def _serve(self, stream: trio.SocketStream) -> None:
        async with stream:
            try:
                (n,) = LENGTH.unpack(await _recv_exactly(stream, 4))
                if n > MAX_REQUEST:
                    raise ValueError("request too large")
                req = msgpack.unpackb(await _recv_exactly(stream, n))
                creds = stream.socket.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED,
                                                 struct.calcsize("3i"))
                _, uid, _ = struct.unpack("3i", creds)
                answer = await self._answer(req, uid)
            except (HistoryError, FSError, ValueError, KeyError, TypeError) as exc:
                answer = {"ok": False, "error": str(exc).splitlines()[0] if str(exc)
                          else type(exc).__name__}
            except EOFError:
                return
            except Exception as exc:  # noqa: BLE001 - answer, log, keep serving
                log_failure(log, "control request failed")
                answer = {"ok": False, "error": f"the mount failed: {exc}"}
            try:
                await _send(stream, answer)
            except trio.BrokenResourceError:
                pass

    async def _answer(self, req: dict[str, Any], uid: int) -> dict[str, Any]:
        op = req["op"]
        if op == "metrics":
            return {"ok": True, "samples": [[s.name, s.labels, s.value]
                                            for family in self.registry.collect()
                                            for s in family.samples]}
        path, h = bytes(req["path"]), self.history
        if op == "info":
            return {"ok": True, "info": await inspect(h.fs, path)}
        if op == "log":
            return {"ok": True, "versions": [v.summary() for v in await h.log(path)]}
        if op == "content":
            v = await h.version(path, int(req["rev"]))
            return {"ok": True, "version": v.summary(), "target": v.target,
                    "data": await h.content(path, int(req["rev"]))}
        if op == "restore":
            if req.get("rev"):
                lines = await h.restore(path, revision=int(req["rev"]), uid=uid)
            else:
                as_of = AsOf(revision=int(req.get("at_rev", 0)),
                             time_ns=int(req.get("at_time", 0)))
                lines = await h.restore(path, as_of=as_of, uid=uid)
            return {"ok": True, "lines": lines}
        raise ValueError(f"unknown request {op!r}")
