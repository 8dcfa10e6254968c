"""The transport under :class:`~kvfs.kv.etcd.EtcdEngine`: grpc channels and the trio bridge.

Responsibilities:

* :class:`Channels` -- one lazily created grpc channel (with pyetcd's generated stubs) per
  endpoint, and the index of the endpoint in use; :meth:`Channels.rotate` moves on to the
  next endpoint after a failure.  Channels are never closed while the engine is open, so a
  call in flight on an old endpoint is not cancelled by a rotation.
* :func:`await_future` -- awaits a grpc ``.future()`` call without blocking the trio loop
  and without a thread per call: grpc's completion callback wakes the waiting task through
  ``TrioToken.run_sync_soon``.  Cancelling the task cancels the grpc call.
* :class:`WatchStream` -- one bidirectional Watch call whose blocking response iterator runs
  in one daemon thread, feeding a trio memory channel (with back-pressure).  Closing it
  cancels the grpc call, which ends the thread.
* :func:`run_first_response` -- a one-request stream call (LeaseKeepAlive) in a worker thread.

Invariant: every call made here carries a deadline except the watch stream, whose liveness
is checked by HTTP/2 keep-alive pings instead.
"""

from __future__ import annotations

import queue
import threading
from collections import deque
from collections.abc import AsyncGenerator, Callable, Iterator
from typing import Any

import grpc
import trio
from pyetcd import etcdrpc

MAX_MESSAGE_BYTES = 64 << 20

_CHANNEL_OPTIONS: list[tuple[str, Any]] = [
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    # Reconnect quickly after an outage (grpc's default backoff grows to 120 s).
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1000),
    # Detect a dead peer under a long-lived watch; etcd allows a ping every 5 s.
    ("grpc.keepalive_time_ms", 10_000),
    ("grpc.keepalive_timeout_ms", 5_000),
    ("grpc.keepalive_permit_without_calls", 0),
    ("grpc.http2.max_pings_without_data", 0),
    ("grpc.enable_retries", 0),  # the engine retries itself, across endpoints
]


def one_line(text: str, limit: int = 300) -> str:
    """``text`` flattened to one line and shortened (grpc details can be long)."""
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit] + "..."


def rpc_details(exc: grpc.RpcError) -> tuple[Any, str]:
    """The status code and details of a grpc error."""
    code = exc.code() if hasattr(exc, "code") else grpc.StatusCode.UNKNOWN
    details = exc.details() if hasattr(exc, "details") else str(exc)
    return code, details or ""


class Stubs:
    """pyetcd's generated stubs over one channel."""

    __slots__ = ("channel", "kv", "watch", "lease", "maintenance", "auth")

    def __init__(self, channel: grpc.Channel) -> None:
        self.channel = channel
        self.kv = etcdrpc.KVStub(channel)
        self.watch = etcdrpc.WatchStub(channel)
        self.lease = etcdrpc.LeaseStub(channel)
        self.maintenance = etcdrpc.MaintenanceStub(channel)
        self.auth = etcdrpc.AuthStub(channel)


class Channels:
    """A channel per endpoint, created on first use, and the endpoint currently preferred."""

    def __init__(self, endpoints: tuple[str, ...],
                 credentials: grpc.ChannelCredentials | None,
                 server_name: str | None = None) -> None:
        self.endpoints = endpoints
        self.index = 0
        self._credentials = credentials
        self._options = list(_CHANNEL_OPTIONS)
        if server_name:
            self._options.append(("grpc.ssl_target_name_override", server_name))
        self._stubs: dict[int, Stubs] = {}

    def current(self) -> tuple[int, Stubs]:
        """The preferred endpoint's index and stubs."""
        i = self.index
        stubs = self._stubs.get(i)
        if stubs is None:
            target = self.endpoints[i]
            if self._credentials is None:
                channel = grpc.insecure_channel(target, options=self._options)
            else:
                channel = grpc.secure_channel(target, self._credentials, options=self._options)
            stubs = self._stubs[i] = Stubs(channel)
        return i, stubs

    @property
    def endpoint(self) -> str:
        return self.endpoints[self.index]

    def rotate(self, failed: int) -> None:
        """Prefer the endpoint after ``failed`` (unless another task rotated already)."""
        if self.index == failed:
            self.index = (failed + 1) % len(self.endpoints)

    def close(self) -> None:
        for stubs in self._stubs.values():
            stubs.channel.close()
        self._stubs.clear()


class _Waiter:
    __slots__ = ("task", "waiting")

    def __init__(self, task: trio.lowlevel.Task) -> None:
        self.task = task
        self.waiting = True

    def wake(self) -> None:  # on the trio thread
        if self.waiting:
            self.waiting = False
            trio.lowlevel.reschedule(self.task)


async def await_future(fut: Any) -> Any:
    """The result of a grpc future (raises its ``grpc.RpcError``); cancellable."""
    token = trio.lowlevel.current_trio_token()
    waiter = _Waiter(trio.lowlevel.current_task())

    def on_done(_: Any) -> None:  # on a grpc thread (or here, if already done)
        try:
            token.run_sync_soon(waiter.wake)
        except trio.RunFinishedError:
            pass

    fut.add_done_callback(on_done)

    def abort(_: Any) -> trio.lowlevel.Abort:
        waiter.waiting = False
        fut.cancel()
        return trio.lowlevel.Abort.SUCCEEDED

    await trio.lowlevel.wait_task_rescheduled(abort)
    return fut.result()


def _first_response(call_fn: Callable[..., Any], request: Any, timeout: float,
                    metadata: Any) -> Any:
    call = call_fn(iter([request]), timeout=timeout, metadata=metadata)
    try:
        return next(call)
    except StopIteration:
        return None
    finally:
        call.cancel()


async def run_first_response(call_fn: Callable[..., Any], request: Any, timeout: float,
                             metadata: Any) -> Any:
    """Send one request on a stream-stream call and return the first response (a thread)."""
    return await trio.to_thread.run_sync(_first_response, call_fn, request, timeout, metadata,
                                         abandon_on_cancel=True)


class StreamEnd:
    """Delivered through :meth:`WatchStream.receive` when the server ended the stream."""


# Queued by the pump thread as it stops: nothing follows.
_END = object()


class WatchStream:
    """One Watch call; responses (or the final ``grpc.RpcError`` / :class:`StreamEnd`)
    arrive through :meth:`receive`.  Use as a context manager: leaving it cancels the call.

    The pump thread hands responses over through a queue and wakes the trio task at most
    once per burst (``TrioToken.run_sync_soon``), not through a trio call per response:
    every mount follows every change of the volume, so this hand-off is paid for each
    change anywhere.  At most ``_QUEUED`` responses wait; the pump then waits for the
    receiver (back-pressure reaches etcd through the stream's flow control)."""

    _QUEUED = 64

    def __init__(self, stubs: Stubs, create: Any, metadata: Any) -> None:
        self._token = trio.lowlevel.current_trio_token()
        self._lock = threading.Lock()
        self._items: deque[Any] = deque()  # guarded by _lock
        self._wake_scheduled = False  # guarded by _lock
        self._room = threading.Event()
        self._room.set()
        self._arrived = trio.Event()  # trio thread only
        self._closed = False
        self._requests: queue.Queue[Any] = queue.Queue()
        self._requests.put(etcdrpc.WatchRequest(create_request=create))
        self._call = stubs.watch.Watch(self._request_iter(), metadata=metadata)
        self._thread = threading.Thread(target=self._pump, name="kvfs-etcd-watch", daemon=True)
        self._thread.start()

    def _request_iter(self) -> Iterator[Any]:
        # Stays open (blocking in grpc's request thread) until close(): a half-closed
        # stream is not needed by etcd, but keeping it open is the documented usage.
        while True:
            item = self._requests.get()
            if item is None:
                return
            yield item

    # -- the pump thread -------------------------------------------------------------------

    def _deliver(self, item: Any) -> bool:
        """Queue ``item`` for the receiver; False once nobody will receive it."""
        while not self._closed:
            with self._lock:
                if len(self._items) < self._QUEUED or item is _END:
                    self._items.append(item)
                    wake = not self._wake_scheduled
                    self._wake_scheduled = True
                    break
                self._room.clear()
            self._room.wait(0.5)
        else:
            return False
        if wake:
            try:
                self._token.run_sync_soon(self._wake)
            except trio.RunFinishedError:
                return False
        return True

    def _pump(self) -> None:
        try:
            for resp in self._call:
                if not self._deliver(resp):
                    return
            self._deliver(StreamEnd())
        except grpc.RpcError as exc:
            self._deliver(exc)
        finally:
            self._requests.put(None)
            self._call.cancel()
            self._deliver(_END)

    # -- the trio side ---------------------------------------------------------------------

    def _wake(self) -> None:  # on the trio thread
        with self._lock:
            self._wake_scheduled = False
        self._arrived.set()

    async def receive(self) -> AsyncGenerator[Any, None]:
        """Every response in order, then the stream's end (a ``grpc.RpcError`` or a
        :class:`StreamEnd`); stops when the pump has stopped."""
        while True:
            with self._lock:
                items = list(self._items)
                self._items.clear()
            self._room.set()
            if not items:
                self._arrived = trio.Event()
                with self._lock:
                    pending = bool(self._items)
                if not pending:
                    await self._arrived.wait()
                continue
            for item in items:
                if item is _END:
                    return
                yield item

    def close(self) -> None:
        self._closed = True
        self._room.set()
        self._requests.put(None)
        self._call.cancel()

    def __enter__(self) -> WatchStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
