"""A linearizability checker for histories of the KV seam (:mod:`kvfs.kv.api`).

Record what clients called and saw in a :class:`History`, then :func:`check` it against
the sequential :class:`KVModel`.  See ``docs/lincheck.md``.  The package imports only
computation-only standard modules (``tests/test_raft_purity.py``): no I/O, no threads, no
clock of its own.
"""

from kvfs.lincheck.checker import (
    DEFAULT_MAX_STEPS,
    CheckResult,
    Stuck,
    Verdict,
    check,
    partition_blocker,
    split_by_key,
)
from kvfs.lincheck.history import (
    Commit,
    CommitOut,
    CurrentRevision,
    Get,
    GetMany,
    GetManyOut,
    GetOut,
    History,
    Input,
    Operation,
    Output,
    Range,
    RangeOut,
    RevisionOut,
)
from kvfs.lincheck.kvmodel import KVModel, State

__all__ = [
    "DEFAULT_MAX_STEPS", "CheckResult", "Commit", "CommitOut", "CurrentRevision", "Get",
    "GetMany", "GetManyOut", "GetOut", "History", "Input", "KVModel", "Operation", "Output",
    "Range", "RangeOut", "RevisionOut", "State", "Stuck", "Verdict", "check",
    "partition_blocker", "split_by_key",
]
