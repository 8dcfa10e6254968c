"""Histories of operations on the KV seam, as clients observed them.

A history is a set of :class:`Operation` records, one per call a client made: who made it,
when it was called, when it returned, what it asked (the *input*: :class:`Get`,
:class:`GetMany`, :class:`Range`, :class:`Commit`, :class:`CurrentRevision`) and what it was
told (the *output*: :class:`GetOut`, :class:`GetManyOut`, :class:`RangeOut`,
:class:`CommitOut`, :class:`RevisionOut`).  :class:`History` records them as they happen
(``invoke`` / ``ok`` / ``unknown``) and writes and parses a one-event-per-line text format,
so a failing history can be saved and replayed.

Invariants:
  * An operation's return time is ``None`` exactly when its output is ``None``: its outcome
    is unknown (a timeout, a broken connection).  Such an operation is *open-ended*: it may
    have taken effect at any moment after its call, or never.
  * ``call <= ret`` whenever ``ret`` is known, and the output's type matches the input's.
  * Inputs and outputs are immutable and hashable; keys and values are ``bytes``.
  * A revision field of an output that is ``None`` was not recorded and is not checked.

Times are plain numbers on any one clock shared by all clients; only their order matters.
Two events at the same time are taken as concurrent.  The recorder keeps its own counter,
so tests need no wall clock.

Text format (``History.dumps`` / ``History.loads``): one JSON array per line, in event
order; ``#`` starts a comment line.  Bytes are written as JSON strings of their latin-1
decoding (so ASCII keys stay readable and every byte string round-trips)::

    ["call", ID, CLIENT, TIME, INPUT]
    ["ok", ID, TIME, OUTPUT]
    ["unknown", ID]              # optional: an operation without "ok" is unknown anyway

    INPUT:  ["get", KEY]  |  ["get_many", [KEY...]]  |  ["range", START, END, LIMIT, KEYS_ONLY]
            ["commit", [[KEY, MOD_REV]...], [[KEY, VALUE]...], [[KEY, END|null]...]]
            ["current_revision"]
    OUTPUT: ["get", VALUE|null, MOD_REV|null, REVISION|null, CREATE_REV|null]
            ["get_many", [[VALUE|null, MOD_REV|null]...], REVISION|null]
            ["range", [[KEY, VALUE, MOD_REV|null]...], REVISION|null, MORE|null]
            ["commit", SUCCEEDED, REVISION|null]
            ["current_revision", REVISION]
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from kvfs.lincheck import jsonlite

Client = str | int

# -- inputs ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Get:
    """``get(key)``: the key's value and mod revision."""

    key: bytes


@dataclass(frozen=True, slots=True, init=False)
class GetMany:
    """``get_many(keys)``: several keys read at one revision."""

    keys: tuple[bytes, ...]

    def __init__(self, keys: Iterable[bytes]) -> None:
        object.__setattr__(self, "keys", tuple(keys))


@dataclass(frozen=True, slots=True)
class Range:
    """``range(start, end)``: keys in ``[start, end)`` (``end == b"\\x00"``: no bound)."""

    start: bytes
    end: bytes
    limit: int = 0
    keys_only: bool = False


@dataclass(frozen=True, slots=True, init=False)
class Commit:
    """``commit(compares, puts, deletes)``: all-or-nothing, guarded by mod-revision compares.

    ``deletes`` holds ``(key, None)`` for one key or ``(start, end)`` for a range; the
    constructor also takes a bare key.
    """

    compares: tuple[tuple[bytes, int], ...]
    puts: tuple[tuple[bytes, bytes], ...]
    deletes: tuple[tuple[bytes, bytes | None], ...]

    def __init__(self, compares: Iterable[tuple[bytes, int]] = (),
                 puts: Iterable[tuple[bytes, bytes]] = (),
                 deletes: Iterable[bytes | tuple[bytes, bytes | None]] = ()) -> None:
        object.__setattr__(self, "compares", tuple((k, int(r)) for k, r in compares))
        object.__setattr__(self, "puts", tuple((k, v) for k, v in puts))
        object.__setattr__(self, "deletes", tuple(
            (d, None) if isinstance(d, bytes) else (d[0], d[1]) for d in deletes))


@dataclass(frozen=True, slots=True)
class CurrentRevision:
    """``current_revision()``: the store's latest revision."""


Input = Get | GetMany | Range | Commit | CurrentRevision

# -- outputs -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class GetOut:
    value: bytes | None  # None: the key is absent
    mod_revision: int | None  # 0 when absent; None: not recorded
    revision: int | None = None  # the revision the read was served at (etcd's header)
    create_revision: int | None = None


@dataclass(frozen=True, slots=True, init=False)
class GetManyOut:
    items: tuple[tuple[bytes | None, int | None], ...]  # (value, mod_revision) per key
    revision: int | None

    def __init__(self, items: Iterable[tuple[bytes | None, int | None]],
                 revision: int | None = None) -> None:
        object.__setattr__(self, "items", tuple((v, r) for v, r in items))
        object.__setattr__(self, "revision", revision)


@dataclass(frozen=True, slots=True, init=False)
class RangeOut:
    kvs: tuple[tuple[bytes, bytes, int | None], ...]  # (key, value, mod_revision) in key order
    revision: int | None
    more: bool | None

    def __init__(self, kvs: Iterable[tuple[bytes, bytes, int | None]],
                 revision: int | None = None, more: bool | None = None) -> None:
        object.__setattr__(self, "kvs", tuple((k, v, r) for k, v, r in kvs))
        object.__setattr__(self, "revision", revision)
        object.__setattr__(self, "more", more)


@dataclass(frozen=True, slots=True)
class CommitOut:
    succeeded: bool
    revision: int | None  # the new revision on success, the current one on failure


@dataclass(frozen=True, slots=True)
class RevisionOut:
    revision: int


Output = GetOut | GetManyOut | RangeOut | CommitOut | RevisionOut

_OUTPUT_OF: dict[type, type] = {
    Get: GetOut, GetMany: GetManyOut, Range: RangeOut, Commit: CommitOut,
    CurrentRevision: RevisionOut,
}


def check_output_type(inp: Input, out: Output) -> None:
    """Raise TypeError unless ``out`` is the kind of output ``inp`` produces."""
    want = _OUTPUT_OF[type(inp)]
    if type(out) is not want:
        raise TypeError(f"{type(inp).__name__} returns {want.__name__}, "
                        f"not {type(out).__name__}")


# -- operations --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Operation:
    """One call and what came of it; ``ret is None`` (and ``output is None``): unknown."""

    id: int
    client: Client
    call: float
    ret: float | None
    input: Input
    output: Output | None

    def __post_init__(self) -> None:
        if (self.ret is None) != (self.output is None):
            raise ValueError(f"operation {self.id}: a return time needs an output and "
                             "an output needs a return time")
        if self.ret is not None and self.ret < self.call:
            raise ValueError(f"operation {self.id} returns ({self.ret}) before its call "
                             f"({self.call})")
        if self.output is not None:
            check_output_type(self.input, self.output)

    @property
    def pending(self) -> bool:
        """True when the outcome is unknown (open-ended)."""
        return self.output is None

    def describe(self) -> str:
        """One line: id, client, interval, the call and its outcome."""
        end = "?" if self.ret is None else f"{self.ret:g}"
        outcome = "outcome unknown" if self.output is None else format_output(self.output)
        return (f"op {self.id} (client {self.client}, [{self.call:g}, {end}]): "
                f"{format_input(self.input)} -> {outcome}")


def _b(b: bytes | None) -> str:
    return "absent" if b is None else repr(b)


def format_input(inp: Input) -> str:
    if isinstance(inp, Get):
        return f"get({inp.key!r})"
    if isinstance(inp, GetMany):
        return f"get_many({', '.join(repr(k) for k in inp.keys)})"
    if isinstance(inp, Range):
        extra = (f", limit={inp.limit}" if inp.limit else "") + (
            ", keys_only" if inp.keys_only else "")
        return f"range({inp.start!r}, {inp.end!r}{extra})"
    if isinstance(inp, Commit):
        parts = [f"{k!r}@{r}" for k, r in inp.compares]
        parts = ["if " + " and ".join(parts)] if parts else []
        parts += [f"put {k!r}={v!r}" for k, v in inp.puts]
        parts += [f"del {k!r}" if e is None else f"del [{k!r}, {e!r})" for k, e in inp.deletes]
        return f"commit({'; '.join(parts)})"
    return "current_revision()"


def _rev(label: str, r: int | None) -> str:
    return "" if r is None else f" {label} {r}"


def format_output(out: Output) -> str:
    if isinstance(out, GetOut):
        return (f"{_b(out.value)}{_rev('mod', out.mod_revision)}"
                f"{_rev('create', out.create_revision)}{_rev('at rev', out.revision)}")
    if isinstance(out, GetManyOut):
        items = ", ".join(f"{_b(v)}{_rev('mod', r)}" for v, r in out.items)
        return f"[{items}]{_rev('at rev', out.revision)}"
    if isinstance(out, RangeOut):
        items = ", ".join(f"{k!r}={v!r}{_rev('mod', r)}" for k, v, r in out.kvs)
        more = "" if out.more is None else f" more={out.more}"
        return f"[{items}]{more}{_rev('at rev', out.revision)}"
    if isinstance(out, CommitOut):
        return ("succeeded" if out.succeeded else "failed") + _rev("rev", out.revision)
    return f"rev {out.revision}"


# -- the recorder ------------------------------------------------------------------------


class History:
    """A history under construction, or loaded from text.

    ``invoke`` returns a token (the operation's id); ``ok`` completes it with its output;
    ``unknown`` marks its outcome unknown (as does never completing it).  Times are taken
    from ``at=`` when given, otherwise from a counter one past the latest time seen.
    """

    def __init__(self) -> None:
        self._calls: dict[int, tuple[Client, float, Input]] = {}
        self._rets: dict[int, tuple[float, Output]] = {}
        self._unknown: set[int] = set()
        self._next_id = 0
        self._now: float = 0

    def _time(self, at: float | None) -> float:
        if at is None:
            at = self._now
        self._now = max(self._now, at + 1)
        return at

    def invoke(self, client: Client, op: Input, *, at: float | None = None,
               op_id: int | None = None) -> int:
        """Record a call; returns the token (the operation's id) to complete it with."""
        if op_id is None:
            op_id = self._next_id
        if op_id in self._calls:
            raise ValueError(f"operation {op_id} was already invoked")
        self._next_id = max(self._next_id, op_id + 1)
        self._calls[op_id] = (client, self._time(at), op)
        return op_id

    def ok(self, token: int, output: Output, *, at: float | None = None) -> None:
        """Record that the call ``token`` returned ``output``."""
        client, call, inp = self._calls[token]
        if token in self._rets or token in self._unknown:
            raise ValueError(f"operation {token} already has an outcome")
        check_output_type(inp, output)
        t = self._time(at)
        if t < call:
            raise ValueError(f"operation {token} returns ({t}) before its call ({call})")
        self._rets[token] = (t, output)

    def unknown(self, token: int) -> None:
        """Record that the call ``token`` will never report its outcome."""
        if token not in self._calls:
            raise KeyError(token)
        if token in self._rets:
            raise ValueError(f"operation {token} already returned")
        self._unknown.add(token)

    def add(self, op: Operation) -> None:
        """Add a complete record (its id must be new)."""
        self.invoke(op.client, op.input, at=op.call, op_id=op.id)
        if op.output is None:
            self.unknown(op.id)
        else:
            assert op.ret is not None
            self.ok(op.id, op.output, at=op.ret)

    @property
    def operations(self) -> list[Operation]:
        """Every operation, by id; unfinished ones are open-ended."""
        out = []
        for i in sorted(self._calls):
            client, call, inp = self._calls[i]
            ret = self._rets.get(i)
            out.append(Operation(i, client, call, None if ret is None else ret[0], inp,
                                 None if ret is None else ret[1]))
        return out

    def __len__(self) -> int:
        return len(self._calls)

    def __iter__(self) -> Iterator[Operation]:
        return iter(self.operations)

    @classmethod
    def of(cls, ops: Iterable[Operation]) -> History:
        h = cls()
        for op in ops:
            h.add(op)
        return h

    # -- text format -----------------------------------------------------------------

    def dumps(self) -> str:
        """The history as text, one event per line in time order (see module docstring)."""
        events: list[tuple[float, int, int, str]] = []
        for op in self.operations:
            call = ["call", op.id, op.client, op.call, _input_json(op.input)]
            events.append((op.call, 0, op.id, jsonlite.dumps(call)))
            if op.output is not None:
                assert op.ret is not None
                events.append((op.ret, 1, op.id,
                               jsonlite.dumps(["ok", op.id, op.ret, _output_json(op.output)])))
            elif op.id in self._unknown:
                events.append((op.call, 2, op.id, jsonlite.dumps(["unknown", op.id])))
        events.sort(key=lambda e: e[:3])
        lines = ["# kvfs lincheck history v1"] + [e[3] for e in events]
        return "\n".join(lines) + "\n"

    @classmethod
    def loads(cls, text: str) -> History:
        """Parse :meth:`dumps` output (ValueError names the bad line)."""
        h = cls()
        for n, line in enumerate(text.splitlines(), 1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            try:
                parsed = jsonlite.loads(line)
                if not isinstance(parsed, list) or not parsed:
                    raise ValueError("an event is a non-empty array")
                ev: list[Any] = parsed  # the field parsers check each field's type
                tag = ev[0]
                if tag == "call":
                    _, op_id, client, at, inp = ev
                    if isinstance(client, bool) or not isinstance(client, str | int):
                        raise ValueError(f"{client!r} is not a client id")
                    h.invoke(client, _input_from(inp), at=_num(at), op_id=_int(op_id))
                elif tag == "ok":
                    _, op_id, at, out = ev
                    h.ok(_int(op_id), _output_from(out), at=_num(at))
                elif tag == "unknown":
                    h.unknown(_int(ev[1]))
                else:
                    raise ValueError(f"unknown event {tag!r}")
            except (ValueError, TypeError, KeyError, IndexError) as e:
                raise ValueError(f"history line {n}: {e}: {line}") from e
        return h


# -- the JSON form of inputs and outputs -------------------------------------------------


def _num(x: Any) -> float:
    if isinstance(x, bool) or not isinstance(x, int | float):
        raise ValueError(f"{x!r} is not a time")
    return x


def _enc(b: bytes | None) -> str | None:
    return None if b is None else b.decode("latin-1")


def _dec(s: Any) -> bytes:
    if not isinstance(s, str):
        raise ValueError(f"{s!r} is not a byte string")
    return s.encode("latin-1")


def _dec_opt(s: Any) -> bytes | None:
    return None if s is None else _dec(s)


def _int(x: Any) -> int:
    if isinstance(x, bool) or not isinstance(x, int):
        raise ValueError(f"{x!r} is not an integer")
    return x


def _int_opt(x: Any) -> int | None:
    return None if x is None else _int(x)


def _bool_opt(x: Any) -> bool | None:
    if x is not None and not isinstance(x, bool):
        raise ValueError(f"{x!r} is not a boolean")
    return x


def _input_json(inp: Input) -> list[Any]:
    if isinstance(inp, Get):
        return ["get", _enc(inp.key)]
    if isinstance(inp, GetMany):
        return ["get_many", [_enc(k) for k in inp.keys]]
    if isinstance(inp, Range):
        return ["range", _enc(inp.start), _enc(inp.end), inp.limit, inp.keys_only]
    if isinstance(inp, Commit):
        return ["commit", [[_enc(k), r] for k, r in inp.compares],
                [[_enc(k), _enc(v)] for k, v in inp.puts],
                [[_enc(k), _enc(e)] for k, e in inp.deletes]]
    return ["current_revision"]


def _input_from(j: Sequence[Any]) -> Input:
    tag = j[0]
    if tag == "get":
        return Get(_dec(j[1]))
    if tag == "get_many":
        return GetMany(_dec(k) for k in j[1])
    if tag == "range":
        if not isinstance(j[4], bool):
            raise ValueError("keys_only must be a boolean")
        return Range(_dec(j[1]), _dec(j[2]), _int(j[3]), j[4])
    if tag == "commit":
        return Commit([(_dec(k), _int(r)) for k, r in j[1]],
                      [(_dec(k), _dec(v)) for k, v in j[2]],
                      [(_dec(k), _dec_opt(e)) for k, e in j[3]])
    if tag == "current_revision":
        return CurrentRevision()
    raise ValueError(f"unknown input {tag!r}")


def _output_json(out: Output) -> list[Any]:
    if isinstance(out, GetOut):
        return ["get", _enc(out.value), out.mod_revision, out.revision, out.create_revision]
    if isinstance(out, GetManyOut):
        return ["get_many", [[_enc(v), r] for v, r in out.items], out.revision]
    if isinstance(out, RangeOut):
        return ["range", [[_enc(k), _enc(v), r] for k, v, r in out.kvs], out.revision,
                out.more]
    if isinstance(out, CommitOut):
        return ["commit", out.succeeded, out.revision]
    return ["current_revision", out.revision]


def _output_from(j: Sequence[Any]) -> Output:
    tag = j[0]
    if tag == "get":
        return GetOut(_dec_opt(j[1]), _int_opt(j[2]), _int_opt(j[3]), _int_opt(j[4]))
    if tag == "get_many":
        return GetManyOut([(_dec_opt(v), _int_opt(r)) for v, r in j[1]], _int_opt(j[2]))
    if tag == "range":
        return RangeOut([(_dec(k), _dec(v), _int_opt(r)) for k, v, r in j[1]],
                        _int_opt(j[2]), _bool_opt(j[3]))
    if tag == "commit":
        if not isinstance(j[1], bool):
            raise ValueError("succeeded must be a boolean")
        return CommitOut(j[1], _int_opt(j[2]))
    if tag == "current_revision":
        return RevisionOut(_int(j[1]))
    raise ValueError(f"unknown output {tag!r}")
