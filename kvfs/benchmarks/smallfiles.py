"""Small-file and metadata operation rates in one directory, the workloads of FACTS.md.

Each phase runs ``count`` operations from one process and reports operations per second;
``readdir`` reports milliseconds to list ``count`` entries.  ``progress``, when given, is
called after every operation with the phase's name (a CLI draws a bar with it; the call's
time counts in the rates, so it must be cheap).  Run it against a kvfs mount
and a JuiceFS mount of the same engine in one session and compare the ratios.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable

PAYLOAD = b"k" * 1024
# The phases of count operations each, in order (readdir, one listing, is not among them).
PHASES = ("create empty file /s", "stat /s", "write 1 KiB file /s", "read 1 KiB file /s",
          "rename /s", "unlink /s")

ProgressFn = Callable[[str], None]


def _rate(n: int, fn: Callable[[int], object], phase: str,
          progress: ProgressFn | None) -> float:
    t0 = time.perf_counter()
    for i in range(n):
        fn(i)
        if progress is not None:
            progress(phase)
    return n / (time.perf_counter() - t0)


def run(root: str, count: int = 1000, progress: ProgressFn | None = None) -> dict[str, float]:
    """Run every phase in a fresh directory under ``root``; returns phase -> figure, the
    :data:`PHASES` among them."""
    base = os.path.join(root, f"kvfs-bench-{os.getpid()}")
    os.mkdir(base)
    out: dict[str, float] = {}

    def p(kind: str, i: int) -> str:
        return os.path.join(base, f"{kind}{i}")

    def create(i: int) -> None:
        os.close(os.open(p("e", i), os.O_CREAT | os.O_WRONLY, 0o644))

    def write(i: int) -> None:
        fd = os.open(p("w", i), os.O_CREAT | os.O_WRONLY, 0o644)
        os.write(fd, PAYLOAD)
        os.close(fd)

    def read(i: int) -> None:
        with open(p("w", i), "rb") as f:
            f.read()

    def phase(name: str, fn: Callable[[int], object]) -> None:
        out[name] = _rate(count, fn, name, progress)

    phase("create empty file /s", create)
    phase("stat /s", lambda i: os.stat(p("e", i)))
    phase("write 1 KiB file /s", write)
    phase("read 1 KiB file /s", read)
    phase("rename /s", lambda i: os.rename(p("e", i), p("r", i)))
    t0 = time.perf_counter()
    names = os.listdir(base)
    out[f"readdir of {len(names)} entries ms"] = (time.perf_counter() - t0) * 1000
    phase("unlink /s", lambda i: os.unlink(p("r", i)))
    for i in range(count):
        os.unlink(p("w", i))
    os.rmdir(base)
    return out
