"""Small-file and metadata operation rates in one directory, the workloads of FACTS.md.

Each phase runs ``count`` operations from one process and reports operations per second;
``readdir`` reports milliseconds to list ``count`` entries.  Run it against a kvfs mount
and a JuiceFS mount of the same engine in one session and compare the ratios.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable

PAYLOAD = b"k" * 1024


def _rate(n: int, fn: Callable[[int], object]) -> float:
    t0 = time.perf_counter()
    for i in range(n):
        fn(i)
    return n / (time.perf_counter() - t0)


def run(root: str, count: int = 1000) -> dict[str, float]:
    """Run every phase in a fresh directory under ``root``; returns phase -> figure."""
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

    out["create empty file /s"] = _rate(count, create)
    out["stat /s"] = _rate(count, lambda i: os.stat(p("e", i)))
    out["write 1 KiB file /s"] = _rate(count, write)
    out["read 1 KiB file /s"] = _rate(count, read)
    out["rename /s"] = _rate(count, lambda i: os.rename(p("e", i), p("r", i)))
    t0 = time.perf_counter()
    names = os.listdir(base)
    out[f"readdir of {len(names)} entries ms"] = (time.perf_counter() - t0) * 1000
    out["unlink /s"] = _rate(count, lambda i: os.unlink(p("r", i)))
    for i in range(count):
        os.unlink(p("w", i))
    os.rmdir(base)
    return out
