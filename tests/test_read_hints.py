"""ReadHints: what reads may teach the hints (pure logic).

A read answered after one of this process's commits must not bring back the value the
commit replaced: ``Metadata.getattr`` answers from the hints, and an O_APPEND write takes
its offset from that answer (tests/test_append_flush_race.py is the end-to-end case).
"""

from __future__ import annotations

from kvfs.kv.txn import ReadHints


def test_a_late_read_does_not_undo_a_commit() -> None:
    h = ReadHints()
    h.put(b"k", b"new", 12)  # our commit
    h.learn(b"k", b"old", 10)  # a read sent before it, answered after it
    assert h.get(b"k") == (b"new", 12)
    h.learn(b"k", b"newer", 15)  # another mount's later change
    assert h.get(b"k") == (b"newer", 15)


def test_absence_of_unknown_age_drops_a_contradicting_hint() -> None:
    h = ReadHints()
    h.put(b"k", b"v", 7)
    h.learn(b"k", None, 0)  # deleted since, or not yet created when read: unknown
    assert h.get(b"k") is None
    h.put(b"gone", None, 0)  # our delete
    h.learn(b"gone", b"v", 5)  # stale, or created again elsewhere: unknown
    assert h.get(b"gone") is None
    h.learn(b"new", None, 0)  # nothing known yet: a read is the best guess
    assert h.get(b"new") == (None, 0)
    h.learn(b"new", None, 0)
    assert h.get(b"new") == (None, 0)
