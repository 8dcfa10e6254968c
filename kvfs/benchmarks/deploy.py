"""Rename-deploy visibility between two mounts of one volume (the shared-/etc scenario).

Host A deploys a config the safe way -- write a temp file, then rename it over the target --
``rounds`` times; host B polls the target every ``poll`` seconds.  For each deploy we record
how long after A's ``rename`` returned B first read the new content, and count every poll
on B that failed with ENOENT, read an empty file, or read content that is neither the old
nor the new version (torn).  Works on any two directories, so the same run can measure
kvfs and JuiceFS side by side.
"""

from __future__ import annotations

import os
import statistics
import time
from dataclasses import dataclass, field


@dataclass
class DeployResult:
    latencies_ms: list[float] = field(default_factory=list)
    rename_ms: list[float] = field(default_factory=list)
    enoent: int = 0
    empty: int = 0
    torn: int = 0
    timeouts: int = 0

    def summary(self) -> str:
        lat = sorted(self.latencies_ms)
        return (f"{len(lat)} deploys: visible after min {lat[0]:.1f} / median "
                f"{statistics.median(lat):.1f} / max {lat[-1]:.1f} ms "
                f"(rename itself: median {statistics.median(self.rename_ms):.1f} ms); "
                f"ENOENT polls {self.enoent}, empty reads {self.empty}, torn reads "
                f"{self.torn}, timeouts {self.timeouts}")


def _content(i: int) -> bytes:
    line = f"server_name deploy-{i}; # generation {i}\n".encode()
    return line * (200 + i % 7)


def run(dir_a: str, dir_b: str, rounds: int = 20, poll: float = 0.010,
        timeout: float = 10.0, name: str = "deploy.conf") -> DeployResult:
    """Run the scenario (see module docstring); ``dir_a`` and ``dir_b`` are one directory
    of the same volume seen through two mounts."""
    target_a, target_b = os.path.join(dir_a, name), os.path.join(dir_b, name)
    res = DeployResult()
    _write(target_a, _content(0))
    deadline = time.monotonic() + timeout
    while _read(target_b) != _content(0):  # B must know the file before we start
        if time.monotonic() > deadline:
            raise RuntimeError(f"{target_b} never showed the initial content")
        time.sleep(poll)
    for i in range(1, rounds + 1):
        old, new = _content(i - 1), _content(i)
        tmp = os.path.join(dir_a, f".{name}.tmp-{i}")
        _write(tmp, new)
        t0 = time.monotonic()
        os.rename(tmp, target_a)
        t1 = time.monotonic()
        res.rename_ms.append((t1 - t0) * 1000)
        while True:
            try:
                data = _read(target_b)
            except FileNotFoundError:
                res.enoent += 1
                data = None
            now = time.monotonic()
            if data == new:
                res.latencies_ms.append((now - t1) * 1000)
                break
            if data is not None:
                if data == b"":
                    res.empty += 1
                elif data != old:
                    res.torn += 1
            if now - t1 > timeout:
                res.timeouts += 1
                res.latencies_ms.append(timeout * 1000)
                break
            time.sleep(poll)
        time.sleep(poll)
    os.unlink(target_a)
    return res


def _write(path: str, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()
