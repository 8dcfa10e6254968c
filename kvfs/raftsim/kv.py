"""The simulated hosts' replicated state machine: a small key-value map with client sessions.

A write command is ``put <key> <value> <client> <seq>``.  Each client numbers its writes;
the machine applies a write only if its ``seq`` is above the last one applied for that
client, so a write that a client retried and that therefore commits twice changes the state
once (Raft gives at-least-once; sessions give exactly-once, dissertation 6.3).  Every other
entry (empty entries of a new term, membership changes) leaves the state unchanged.

Invariant: the state is a pure function of the sequence of commands applied, so two nodes
that applied the same prefix of the log hold equal states with equal :meth:`KV.digest`.
"""

from __future__ import annotations

from dataclasses import dataclass, field


def encode_put(key: str, value: str, client: int, seq: int) -> bytes:
    return f"put {key} {value} {client} {seq}".encode()


def decode_put(data: bytes) -> tuple[str, str, int, int] | None:
    """(key, value, client, seq) of a write command; None for anything else."""
    parts = data.split(b" ")
    if len(parts) != 5 or parts[0] != b"put":
        return None
    return parts[1].decode(), parts[2].decode(), int(parts[3]), int(parts[4])


@dataclass(slots=True)
class KV:
    data: dict[str, str] = field(default_factory=dict)
    sessions: dict[int, int] = field(default_factory=dict)  # client -> last applied seq

    def apply(self, command: bytes) -> None:
        put = decode_put(command)
        if put is None:
            return
        key, value, client, seq = put
        if seq <= self.sessions.get(client, 0):
            return  # a duplicate of a write already applied
        self.sessions[client] = seq
        self.data[key] = value

    def digest(self) -> int:
        # Compared only within one process, so Python's (salted) hash is deterministic enough.
        return hash((frozenset(self.data.items()), frozenset(self.sessions.items())))

    def encode(self) -> bytes:
        """The snapshot form: one ``k <key> <value>`` or ``s <client> <seq>`` per line."""
        lines = [f"k {k} {v}" for k, v in sorted(self.data.items())]
        lines += [f"s {c} {s}" for c, s in sorted(self.sessions.items())]
        return "\n".join(lines).encode()

    @classmethod
    def decode(cls, blob: bytes) -> KV:
        kv = cls()
        for line in blob.decode().split("\n"):
            if not line:
                continue
            kind, a, b = line.split(" ")
            if kind == "k":
                kv.data[a] = b
            else:
                kv.sessions[int(a)] = int(b)
        return kv
