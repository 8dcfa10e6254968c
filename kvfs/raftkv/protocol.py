"""The client protocol of the Raft store: how a ``raft://`` client talks to any member.

Responsibility: the byte-level format, its strict validation, and the mapping between
typed wire errors and :mod:`kvfs.kv.api` exceptions.  Both ends import it; it does no I/O
beyond reading frames from a trio stream.

Frames
    Every frame is ``[u32 big-endian length][msgpack body]``, ``0 < length <= MAX_FRAME``.
    Byte strings are msgpack ``bin``, text is ``str``; no extension types.

Requests (client -> member): ``{"id": uint, "op": str, "args": map}``.
    The first request on a connection must be ``hello`` with ``{"version": 1}``; the member
    answers ``{"version": 1, "member": id}``, or ``bad_request`` and closes when it does not
    speak that version (the hello exchange is the one part every version keeps).  Then any
    number of requests may be in flight at once; each gets exactly one *final* response,
    and responses may come back in any order, matched by ``id`` (ids must be unique among
    the requests in flight on a connection).

Responses (member -> client): a map with ``"id"`` and exactly one of
    ``"ok": map`` (final: success), ``"error": map`` (final: failure) or ``"more": map``
    (a non-final part: a large ``range``/``get_many`` answer is split into parts of about
    :data:`PART_BYTES`, and a ``watch`` streams its batches as parts).

Ops, their ``args`` and final ``ok`` bodies (``kv`` = ``[key, value, mod_revision,
create_revision, lease]``; ``event`` = ``[key, value or nil, mod_revision]``; ``timeout``
= seconds the member may wait for a leader on this attempt):

    ======================  =========================================  =======================
    op                      args                                       ok
    ======================  =========================================  =======================
    hello                   version                                    version, member
    get                     key, timeout                               kv|nil, revision
    get_many                keys, timeout                              kvs (kv|nil each)
    range                   start, end, limit, keys_only, timeout      kvs, more, revision
    commit                  client_id, seq, compares [[key, rev]],     succeeded, revision
                            puts [[key, value, lease]],
                            deletes [[key, range_end|nil]], timeout
    current_revision        timeout                                    revision
    lease_grant             client_id, seq, ttl, timeout               lease
    lease_keepalive         lease                                      alive
    lease_revoke            client_id, seq, lease, timeout             {}
    compact                 client_id, seq, revision, timeout          {}
    watch                   start, end, start_revision                 {} (the stream ended)
    cancel                  target (a watch's request id)              {}
    status                  (none)                                     member, leader,
                                                                       leader_endpoint, role,
                                                                       term, commit, applied
    member_list             timeout                                    members, leader,
                                                                       cluster_token
    member_add              client_id, seq, name, peer_url,            member, members,
                            client_url, learner, timeout               cluster_token
    member_promote          client_id, seq, target, timeout            member
    member_remove           client_id, seq, target, timeout            member
    transfer_leader         target, timeout                            leader
    snapshot                timeout                                    index, size, hash
    ======================  =========================================  =======================

    Membership and operations (``kvfs raft member``, ``transfer-leader``, ``snapshot
    save``): a ``member`` is ``[id, name, peer_url, client_url, learner]`` (the replicated
    member table, :mod:`kvfs.raftkv.members`); ``target`` names a member by name or by its
    id in hex.  ``member_list`` and ``snapshot`` are answered by any member after a read
    barrier (so they reflect every change committed before the request); ``snapshot``
    streams the state machine's snapshot as ``{"data": bytes}`` parts, and its final
    answer gives the applied index it was taken at, its size and its xxh64 (16 hex digits).
    ``member_add``/``_promote``/``_remove`` are answered by the leader only (any other
    member answers ``not_leader`` with the leader's hint, which admin clients follow) and
    return once the change is applied there; a refused change is ``failed`` with the
    reason.  ``transfer_leader`` is served by any member (it is forwarded to the leader)
    and returns once the member serving it sees ``target`` lead; ``failed`` when that did
    not happen within the request's timeout.

    A ``range``/``get_many`` part is ``{"kvs": [...]}``; the client concatenates the parts'
    ``kvs`` and the final one's.  A ``watch`` sends ``{"events": [], "complete": true}``
    once the member has accepted it (its start is not compacted), then
    ``{"events": [...], "complete": bool}`` parts in revision order; ``complete`` is false
    when the part ends in the middle of a revision (the client holds such events back
    until the revision is complete).  A watch ends with one final
    response: ``ok`` after ``cancel`` or when the member shuts down, ``error`` otherwise.
    An ``end`` of ``b"\\x00"`` means "to the end of the keyspace", as in :mod:`kvfs.kv.state`.

Errors: ``{"code", "message"}`` plus, by code:
    ``unavailable`` (no leader answered in time, or the member stopped: try another member);
    ``not_leader`` + ``leader`` (id, 0 if unknown) and ``endpoint`` (the leader's client
    address, or nil) -- lease keep-alives and membership changes need the leader;
    ``compacted`` + ``requested``, ``compact_revision``; ``too_large``; ``no_space``;
    ``bad_request`` (unknown op, unsupported version); ``failed`` (any other refusal).

Invariants:
  * Decoding is strict: a frame that is too long, not msgpack, or not exactly the shape
    above (unknown or missing keys, wrong types, out-of-range numbers) raises
    :class:`ProtocolError`, and the receiving end closes that connection.  Only an op
    name the member does not know is answered (``bad_request``) -- so newer clients can
    tell.
  * Writes carry the client's ``(client_id, seq)``; a member applies each pair at most once
    (:mod:`kvfs.raftkv.statemachine`), so re-sending one after a broken connection, to any
    member, is safe and returns the first result.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Callable, Mapping
from typing import Any

import msgpack
import trio

from kvfs.kv.api import (
    Compacted,
    EngineUnavailable,
    KeyValue,
    KVError,
    NoSpace,
    TxnTooLarge,
    WatchEvent,
)

PROTOCOL_VERSION = 1
MAX_FRAME = 64 * 1024 * 1024
PART_BYTES = 1 << 20
_HEADER = struct.Struct(">I")
_U63 = 1 << 63

# Error codes (see module docstring).
UNAVAILABLE = "unavailable"
NOT_LEADER = "not_leader"
COMPACTED = "compacted"
TOO_LARGE = "too_large"
NO_SPACE = "no_space"
BAD_REQUEST = "bad_request"
FAILED = "failed"


class ProtocolError(KVError):
    """A frame violates the protocol; the connection it came on must be closed."""


# -- frames ----------------------------------------------------------------------------------


def encode_frame(message: Mapping[str, Any]) -> bytes:
    body = msgpack.packb(message, use_bin_type=True)
    if len(body) > MAX_FRAME:
        raise ProtocolError(f"frame of {len(body)} bytes exceeds the limit of {MAX_FRAME}")
    return _HEADER.pack(len(body)) + body


class FrameReader:
    """Reads whole frames from a trio stream."""

    def __init__(self, stream: trio.abc.ReceiveStream) -> None:
        self._stream = stream
        self._buf = bytearray()

    async def _fill(self, n: int) -> bool:
        """Buffer at least ``n`` bytes; False on end of stream."""
        while len(self._buf) < n:
            chunk = await self._stream.receive_some(max(65536, n - len(self._buf)))
            if not chunk:
                return False
            self._buf += chunk
        return True

    async def receive(self) -> dict[str, Any] | None:
        """The next frame's decoded body (a map), or None at the end of the stream.

        Raises :class:`ProtocolError` for a malformed frame or a stream that ends inside
        one.
        """
        if not await self._fill(_HEADER.size):
            if self._buf:
                raise ProtocolError("connection closed inside a frame header")
            return None
        (length,) = _HEADER.unpack_from(self._buf)
        if not 0 < length <= MAX_FRAME:
            raise ProtocolError(f"frame length {length} out of range (1..{MAX_FRAME})")
        if not await self._fill(_HEADER.size + length):
            raise ProtocolError("connection closed inside a frame")
        body = bytes(self._buf[_HEADER.size:_HEADER.size + length])
        del self._buf[:_HEADER.size + length]
        try:
            message = msgpack.unpackb(body, raw=False, strict_map_key=True)
        except Exception as exc:  # msgpack raises several unrelated types for bad input
            raise ProtocolError(f"frame is not valid msgpack: {type(exc).__name__}: "
                                f"{_short(str(exc))}") from None
        if type(message) is not dict:
            raise ProtocolError(f"frame is a {type(message).__name__}, not a map")
        return message


# -- validators: each checks one value's exact type and range and returns it -----------------

Validator = Callable[[object, str], Any]


def _fail(where: str, expected: str, value: object) -> ProtocolError:
    return ProtocolError(f"{where}: expected {expected}, got {type(value).__name__}")


def v_bytes(value: object, where: str) -> bytes:
    if type(value) is not bytes:
        raise _fail(where, "bytes", value)
    return value


def v_str(value: object, where: str) -> str:
    if type(value) is not str:
        raise _fail(where, "text", value)
    return value


def v_bool(value: object, where: str) -> bool:
    if type(value) is not bool:
        raise _fail(where, "a boolean", value)
    return value


def v_uint(value: object, where: str) -> int:
    # ``type() is int`` on purpose: a bool is not a number on the wire.
    if type(value) is not int or not 0 <= value < _U63:
        raise _fail(where, "an integer in [0, 2**63)", value)
    return value


def v_id(value: object, where: str) -> int:
    """A positive 63-bit integer (client ids and sequence numbers; 0 means "none")."""
    if type(value) is not int or not 0 < value < _U63:
        raise _fail(where, "an integer in [1, 2**63)", value)
    return value


def v_seconds(value: object, where: str) -> float:
    """A positive, finite number of seconds."""
    if type(value) not in (int, float) or not (0 < value < math.inf):  # type: ignore[operator]
        raise _fail(where, "a positive finite number of seconds", value)
    return float(value)  # type: ignore[arg-type]


def v_optional(inner: Validator) -> Validator:
    def check(value: object, where: str) -> Any:
        return None if value is None else inner(value, where)
    return check


def v_list(inner: Validator) -> Validator:
    def check(value: object, where: str) -> list[Any]:
        if type(value) is not list:
            raise _fail(where, "a list", value)
        return [inner(item, f"{where}[{i}]") for i, item in enumerate(value)]
    return check


def v_tuple(*inners: Validator) -> Validator:
    """A fixed-length list whose items have the given types."""
    def check(value: object, where: str) -> list[Any]:
        if type(value) is not list or len(value) != len(inners):
            raise ProtocolError(f"{where}: expected a list of {len(inners)} items")
        return [inner(item, f"{where}[{i}]") for i, (inner, item)
                in enumerate(zip(inners, value, strict=True))]
    return check


Schema = Mapping[str, Validator]


def v_map(value: object, where: str, required: Schema,
          optional: Schema | None = None) -> dict[str, Any]:
    """A map with exactly the ``required`` keys plus any of the ``optional`` ones."""
    if type(value) is not dict:
        raise _fail(where, "a map", value)
    optional = optional or {}
    unknown = [k for k in value if k not in required and k not in optional]
    if unknown:
        raise ProtocolError(f"{where}: unexpected field {_short(repr(unknown[0]))}")
    out: dict[str, Any] = {}
    for name, check in required.items():
        if name not in value:
            raise ProtocolError(f"{where}: missing field {name!r}")
        out[name] = check(value[name], f"{where}.{name}")
    for name, check in optional.items():
        if name in value:
            out[name] = check(value[name], f"{where}.{name}")
    return out


KV = v_tuple(v_bytes, v_bytes, v_uint, v_uint, v_uint)
EVENT = v_tuple(v_bytes, v_optional(v_bytes), v_uint)

# -- requests --------------------------------------------------------------------------------

REQUEST_ARGS: dict[str, Schema] = {
    "hello": {"version": v_uint},
    "get": {"key": v_bytes, "timeout": v_seconds},
    "get_many": {"keys": v_list(v_bytes), "timeout": v_seconds},
    "range": {"start": v_bytes, "end": v_bytes, "limit": v_uint, "keys_only": v_bool,
              "timeout": v_seconds},
    "commit": {"client_id": v_id, "seq": v_id,
               "compares": v_list(v_tuple(v_bytes, v_uint)),
               "puts": v_list(v_tuple(v_bytes, v_bytes, v_uint)),
               "deletes": v_list(v_tuple(v_bytes, v_optional(v_bytes))),
               "timeout": v_seconds},
    "current_revision": {"timeout": v_seconds},
    "lease_grant": {"client_id": v_id, "seq": v_id, "ttl": v_seconds, "timeout": v_seconds},
    "lease_keepalive": {"lease": v_uint},
    "lease_revoke": {"client_id": v_id, "seq": v_id, "lease": v_uint, "timeout": v_seconds},
    "compact": {"client_id": v_id, "seq": v_id, "revision": v_uint, "timeout": v_seconds},
    "watch": {"start": v_bytes, "end": v_bytes, "start_revision": v_uint},
    "cancel": {"target": v_uint},
    "status": {},
    "member_list": {"timeout": v_seconds},
    "member_add": {"client_id": v_id, "seq": v_id, "name": v_str, "peer_url": v_str,
                   "client_url": v_str, "learner": v_bool, "timeout": v_seconds},
    "member_promote": {"client_id": v_id, "seq": v_id, "target": v_str,
                       "timeout": v_seconds},
    "member_remove": {"client_id": v_id, "seq": v_id, "target": v_str,
                      "timeout": v_seconds},
    "transfer_leader": {"target": v_str, "timeout": v_seconds},
    "snapshot": {"timeout": v_seconds},
}


class Request:
    """A decoded request.  ``args`` is None when ``op`` is not one this side knows."""

    __slots__ = ("id", "op", "args")

    def __init__(self, id: int, op: str, args: dict[str, Any] | None) -> None:
        self.id = id
        self.op = op
        self.args = args


def decode_request(message: dict[str, Any]) -> Request:
    frame = v_map(message, "request", {"id": v_uint, "op": v_str, "args": _any_map})
    op = frame["op"]
    schema = REQUEST_ARGS.get(op)
    if schema is None:
        return Request(frame["id"], op, None)
    return Request(frame["id"], op, v_map(frame["args"], op, schema))


def request_frame(request_id: int, op: str, args: Mapping[str, Any]) -> bytes:
    return encode_frame({"id": request_id, "op": op, "args": dict(args)})


def _any_map(value: object, where: str) -> dict[str, Any]:
    if type(value) is not dict:
        raise _fail(where, "a map", value)
    return value


# -- responses -------------------------------------------------------------------------------

_STATUS = {"member": v_uint, "leader": v_uint, "leader_endpoint": v_optional(v_str),
           "role": v_str, "term": v_uint, "commit": v_uint, "applied": v_uint}

MEMBER = v_tuple(v_uint, v_str, v_str, v_str, v_bool)
_MEMBERS = {"members": v_list(MEMBER), "cluster_token": v_str}

RESPONSE_OK: dict[str, Schema] = {
    "hello": {"version": v_uint, "member": v_uint},
    "get": {"kv": v_optional(KV), "revision": v_uint},
    "get_many": {"kvs": v_list(v_optional(KV))},
    "range": {"kvs": v_list(KV), "more": v_bool, "revision": v_uint},
    "commit": {"succeeded": v_bool, "revision": v_uint},
    "current_revision": {"revision": v_uint},
    "lease_grant": {"lease": v_uint},
    "lease_keepalive": {"alive": v_bool},
    "lease_revoke": {},
    "compact": {},
    "watch": {},
    "cancel": {},
    "status": _STATUS,
    "member_list": {**_MEMBERS, "leader": v_uint},
    "member_add": {**_MEMBERS, "member": v_uint},
    "member_promote": {"member": v_uint},
    "member_remove": {"member": v_uint},
    "transfer_leader": {"leader": v_uint},
    "snapshot": {"index": v_uint, "size": v_uint, "hash": v_str},
}

RESPONSE_MORE: dict[str, Schema] = {
    "get_many": {"kvs": v_list(v_optional(KV))},
    "range": {"kvs": v_list(KV)},
    "watch": {"events": v_list(EVENT), "complete": v_bool},
    "snapshot": {"data": v_bytes},
}

_ERROR_REQUIRED: Schema = {"code": v_str, "message": v_str}
_ERROR_OPTIONAL: Schema = {"leader": v_uint, "endpoint": v_optional(v_str),
                           "requested": v_uint, "compact_revision": v_uint}


class RemoteError(Exception):
    """A typed error response (see module docstring)."""

    def __init__(self, code: str, message: str, fields: Mapping[str, Any]) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.fields = dict(fields)

    def to_kv_error(self) -> KVError:
        """The :mod:`kvfs.kv.api` exception this error stands for."""
        if self.code == COMPACTED:
            return Compacted(self.fields.get("requested", 0),
                             self.fields.get("compact_revision", 0))
        if self.code == TOO_LARGE:
            return TxnTooLarge(self.message)
        if self.code == NO_SPACE:
            return NoSpace(self.message)
        if self.code in (UNAVAILABLE, NOT_LEADER):
            return EngineUnavailable(self.message)
        if self.code == BAD_REQUEST:
            return KVError(f"the raft member refused the request: {self.message}")
        return KVError(self.message)


class Response:
    """A decoded response: ``kind`` is "ok", "more" or "error"; ``body`` is validated for
    ok and more (against the op of the request it answers), ``error`` set for errors."""

    __slots__ = ("id", "kind", "body", "error")

    def __init__(self, id: int, kind: str, body: dict[str, Any],
                 error: RemoteError | None) -> None:
        self.id = id
        self.kind = kind
        self.body = body
        self.error = error


def response_id(message: dict[str, Any]) -> int:
    """The id a response answers (checked before the op it belongs to is looked up)."""
    return v_uint(message.get("id"), "response.id")


def decode_response(message: dict[str, Any], op: str) -> Response:
    """Validate ``message`` as a response to a request of ``op``."""
    if len(message) != 2:
        raise ProtocolError("response: expected an id and exactly one of ok, more, error")
    request_id = response_id(message)
    if "ok" in message:
        return Response(request_id, "ok", v_map(message["ok"], f"{op}.ok", RESPONSE_OK[op]),
                        None)
    if "more" in message:
        schema = RESPONSE_MORE.get(op)
        if schema is None:
            raise ProtocolError(f"response: {op} has no partial answers")
        return Response(request_id, "more", v_map(message["more"], f"{op}.more", schema), None)
    if "error" in message:
        body = v_map(message["error"], f"{op}.error", _ERROR_REQUIRED, _ERROR_OPTIONAL)
        code, text = body.pop("code"), body.pop("message")
        return Response(request_id, "error", {}, RemoteError(code, text, body))
    raise ProtocolError("response: expected one of ok, more, error")


def ok_frame(request_id: int, body: Mapping[str, Any]) -> bytes:
    return encode_frame({"id": request_id, "ok": dict(body)})


def more_frame(request_id: int, body: Mapping[str, Any]) -> bytes:
    return encode_frame({"id": request_id, "more": dict(body)})


def error_frame(request_id: int, code: str, message: str, **fields: Any) -> bytes:
    return encode_frame({"id": request_id, "error": {"code": code, "message": message,
                                                     **fields}})


def error_of(exc: BaseException) -> tuple[str, str, dict[str, Any]]:
    """The wire error (code, message, extra fields) for an exception raised serving a
    request.  Anything not a :class:`KVError` is the server's own fault: ``failed``."""
    if isinstance(exc, Compacted):
        return COMPACTED, str(exc), {"requested": exc.requested,
                                     "compact_revision": exc.compact_revision}
    if isinstance(exc, TxnTooLarge):
        return TOO_LARGE, str(exc), {}
    if isinstance(exc, NoSpace):
        return NO_SPACE, str(exc), {}
    if isinstance(exc, EngineUnavailable):
        return UNAVAILABLE, str(exc), {}
    return FAILED, _short(str(exc) or type(exc).__name__), {}


# -- values ----------------------------------------------------------------------------------


def kv_size(key: bytes, value: bytes) -> int:
    """Roughly what one key-value costs in a frame (to cut answers into parts)."""
    return len(key) + len(value) + 24


def kv_from_wire(item: list[Any], prefix: bytes) -> KeyValue:
    """A validated wire ``kv`` as a :class:`KeyValue` with ``prefix`` removed."""
    key = _strip(item[0], prefix)
    return KeyValue(key, item[1], item[2], item[3], item[4])


def event_from_wire(item: list[Any], prefix: bytes) -> WatchEvent:
    return WatchEvent(_strip(item[0], prefix), item[1], item[2])


def _strip(key: bytes, prefix: bytes) -> bytes:
    if not key.startswith(prefix):
        raise ProtocolError(f"member returned key {_short(repr(key))} outside the "
                            "volume's prefix")
    return key[len(prefix):]


def one_line(text: str, limit: int = 200) -> str:
    """One line of at most ``limit`` characters (for logs and error messages)."""
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit] + "..."


_short = one_line
