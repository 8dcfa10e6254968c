"""The peer wire encoding of Raft messages and of the connection handshake (msgpack).

Responsibility: turn every :class:`kvfs.raft.Message` -- all its fields, its entries, and
its snapshot with metadata, configuration and data -- into bytes and back, and do the same
for the two handshake records a peer connection opens with.  Framing (lengths) and
sockets belong to :mod:`kvfs.raftkv.transport`; nothing here does I/O.

Wire format ``FORMAT`` = 1.  A message is one msgpack array of 13 items::

    [format, type, to, sender, term, log_term, index, entries, commit, reject,
     reject_hint, snapshot, context]

    type      int, from MESSAGE_CODES below (stable numbers, not the enum's names)
    entries   [[term, index, kind, data], ...]         kind: EntryKind value
    snapshot  nil | [index, term, [voter ids], [learner ids], data]
    reject    bool; context and every data: bin; every other item: uint (< 2**64)

The handshake is one msgpack map per side: the connecting side sends a *hello*
``{"format", "cluster_token", "sender_id"}``; the accepting side answers with its own
hello, or with a *refusal* ``{"format", "refused": reason}`` and closes.

Invariants:

* ``decode_message(encode_message(m)) == m`` for every well-formed message.
* Decoding is strict: a frame that is not exactly one value of the shape above (wrong
  format number, wrong arity or item type, an out-of-range number, an unknown type or entry
  kind, a node id 0, a configuration whose voters and learners overlap, trailing bytes)
  raises :class:`CodecError` -- and nothing else, whatever the bytes -- so a malformed or
  hostile frame costs its connection, never the server.
* A change to the layout gets a new ``FORMAT``; peers of different formats refuse each
  other at the handshake instead of misreading each other.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import msgpack

from kvfs.raft import (
    ConfState,
    Entry,
    EntryKind,
    Message,
    MessageType,
    NodeId,
    Snapshot,
    SnapshotMeta,
)

FORMAT = 1

# Explicit numbers, so that renaming an enum member or its value never changes the wire.
MESSAGE_CODES: dict[MessageType, int] = {
    MessageType.APPEND: 1,
    MessageType.APPEND_RESPONSE: 2,
    MessageType.VOTE: 3,
    MessageType.VOTE_RESPONSE: 4,
    MessageType.PRE_VOTE: 5,
    MessageType.PRE_VOTE_RESPONSE: 6,
    MessageType.HEARTBEAT: 7,
    MessageType.HEARTBEAT_RESPONSE: 8,
    MessageType.SNAPSHOT: 9,
    MessageType.PROPOSE: 10,
    MessageType.READ_INDEX: 11,
    MessageType.READ_INDEX_RESPONSE: 12,
    MessageType.TRANSFER_LEADER: 13,
    MessageType.TIMEOUT_NOW: 14,
}
_TYPES_BY_CODE = {code: kind for kind, code in MESSAGE_CODES.items()}
assert len(_TYPES_BY_CODE) == len(MESSAGE_CODES) == len(MessageType)

_U64 = 1 << 64
_MESSAGE_ITEMS = 13
_MAX_TOKEN = 1024  # a cluster token is a short name; a huge one is a malformed hello
_MAX_REASON = 1024


class CodecError(ValueError):
    """A frame that is not a well-formed message or handshake record of our format."""


# -- messages ---------------------------------------------------------------------------------


def encode_message(message: Message) -> bytes:
    snapshot = message.snapshot
    packed_snapshot = None if snapshot is None else [
        snapshot.meta.index, snapshot.meta.term,
        sorted(snapshot.meta.conf_state.voters), sorted(snapshot.meta.conf_state.learners),
        snapshot.data]
    return msgpack.packb([
        FORMAT, MESSAGE_CODES[message.type], message.to, message.sender, message.term,
        message.log_term, message.index,
        [[e.term, e.index, int(e.kind), e.data] for e in message.entries],
        message.commit, message.reject, message.reject_hint, packed_snapshot,
        message.context,
    ], use_bin_type=True)


def decode_message(frame: bytes) -> Message:
    items = _unpack(frame)
    if not isinstance(items, list) or not items:
        raise CodecError("a message frame must be a msgpack array")
    if items[0] != FORMAT or isinstance(items[0], bool):
        raise CodecError(f"message of wire format {items[0]!r}, expected {FORMAT}")
    if len(items) != _MESSAGE_ITEMS:
        raise CodecError(f"message has {len(items)} items, expected {_MESSAGE_ITEMS}")
    (_, code, to, sender, term, log_term, index, entries, commit, reject, reject_hint,
     snapshot, context) = items
    kind = _TYPES_BY_CODE.get(code) if type(code) is int else None
    if kind is None:
        raise CodecError(f"unknown message type {code!r}")
    if not isinstance(entries, list):
        raise CodecError("message entries must be an array")
    if type(reject) is not bool:
        raise CodecError("message reject must be a boolean")
    return Message(
        type=kind,
        to=_node("to", to),
        sender=_node("sender", sender),
        term=_uint("term", term),
        log_term=_uint("log_term", log_term),
        index=_uint("index", index),
        entries=tuple(_entry(e) for e in entries),
        commit=_uint("commit", commit),
        reject=reject,
        reject_hint=_uint("reject_hint", reject_hint),
        snapshot=None if snapshot is None else _snapshot(snapshot),
        context=_bytes("context", context),
    )


def _entry(item: Any) -> Entry:
    if not isinstance(item, list) or len(item) != 4:
        raise CodecError("an entry must be an array [term, index, kind, data]")
    term, index, kind, data = item
    try:
        entry_kind = EntryKind(_uint("entry kind", kind))
    except ValueError:
        raise CodecError(f"unknown entry kind {kind!r}") from None
    return Entry(_uint("entry term", term), _uint("entry index", index), entry_kind,
                 _bytes("entry data", data))


def _snapshot(item: Any) -> Snapshot:
    if not isinstance(item, list) or len(item) != 5:
        raise CodecError("a snapshot must be an array [index, term, voters, learners, data]")
    index, term, voters, learners, data = item
    voter_ids = _ids("snapshot voters", voters)
    learner_ids = _ids("snapshot learners", learners)
    if voter_ids & learner_ids:
        raise CodecError("snapshot configuration lists a node as voter and learner")
    meta = SnapshotMeta(_uint("snapshot index", index), _uint("snapshot term", term),
                        ConfState(voter_ids, learner_ids))
    return Snapshot(meta, _bytes("snapshot data", data))


def _ids(what: str, item: Any) -> frozenset[NodeId]:
    if not isinstance(item, list):
        raise CodecError(f"{what} must be an array")
    ids = frozenset(_node(what, i) for i in item)
    if len(ids) != len(item):
        raise CodecError(f"{what} lists a node twice")
    return ids


# -- the handshake ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Hello:
    """What each side of a peer connection says first: who it is, in which cluster."""

    cluster_token: str
    sender_id: NodeId
    format: int = FORMAT


@dataclass(frozen=True, slots=True)
class Refusal:
    """The accepting side's answer to a hello it will not talk to (then it closes)."""

    reason: str
    format: int = FORMAT


def encode_hello(hello: Hello) -> bytes:
    return msgpack.packb({"format": hello.format, "cluster_token": hello.cluster_token,
                          "sender_id": hello.sender_id}, use_bin_type=True)


def encode_refusal(refusal: Refusal) -> bytes:
    return msgpack.packb({"format": refusal.format, "refused": refusal.reason[:_MAX_REASON]},
                         use_bin_type=True)


def decode_handshake(frame: bytes) -> Hello | Refusal:
    """Decode a hello or a refusal.

    The format number is read and returned, not checked: a peer of another format must be
    told so in words (the caller refuses it), not dropped as garbage.
    """
    record = _unpack(frame)
    if not isinstance(record, dict):
        raise CodecError("a handshake frame must be a msgpack map")
    fmt = _uint("handshake format", record.get("format"))
    if set(record) == {"format", "refused"}:
        reason = record["refused"]
        if not isinstance(reason, str) or len(reason) > _MAX_REASON:
            raise CodecError("a refusal's reason must be a short string")
        return Refusal(reason, fmt)
    if set(record) != {"format", "cluster_token", "sender_id"}:
        raise CodecError(f"handshake has fields {sorted(map(str, record))}, expected "
                         "format, cluster_token and sender_id")
    token = record["cluster_token"]
    if not isinstance(token, str) or len(token) > _MAX_TOKEN:
        raise CodecError("a hello's cluster_token must be a short string")
    return Hello(token, _node("sender_id", record["sender_id"]), fmt)


# -- strict primitives ------------------------------------------------------------------------


def _unpack(frame: bytes) -> Any:
    try:
        # raw=False: str and bin stay apart (a token must be text, data must be bytes);
        # strict_map_key: only str/bytes map keys.  Any failure of the unpacker on hostile
        # bytes (truncation, trailing data, bad UTF-8, nesting depth, ...) is a CodecError.
        return msgpack.unpackb(frame, raw=False, strict_map_key=True, use_list=True)
    except Exception as exc:  # noqa: BLE001 - msgpack raises a variety of types
        raise CodecError(f"undecodable frame: {type(exc).__name__}: {exc}") from None


def _uint(what: str, value: Any) -> int:
    # bool is an int subclass; a msgpack true where a number belongs is malformed.
    if type(value) is not int or not 0 <= value < _U64:
        raise CodecError(f"{what} must be an unsigned 64-bit integer, got {value!r:.40}")
    return value


def _node(what: str, value: Any) -> NodeId:
    node = _uint(what, value)
    if node == 0:
        raise CodecError(f"{what} must be a node id (> 0)")
    return NodeId(node)


def _bytes(what: str, value: Any) -> bytes:
    if type(value) is not bytes:
        raise CodecError(f"{what} must be binary, got {type(value).__name__}")
    return value
