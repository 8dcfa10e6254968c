"""Two real mounts of one etcd volume racing on the same names (issue 7, defect 1).

Mount A loops ``open(O_CREAT); close; unlink`` on one name while mount B makes that name a
directory (or a symlink) and removes it again; in the third variant both mounts run random
operations on a few shared names (tests/workloads.py:RandomOps).  Every errno must be one a
local filesystem gives for the race -- never EIO, and ESTALE no more often than the kernel
gives it itself (tests/workloads.py) -- and afterwards both mounts show the same tree
and ``kvfs fsck`` is clean.

Each variant runs ``KVFS_RACE_SECONDS`` seconds (8 by default; the acceptance run is
``KVFS_RACE_SECONDS=60 .venv/bin/pytest -q tests/test_races.py``).
"""

from __future__ import annotations

import os
import time
from collections import Counter
from pathlib import Path

import pytest
from etcd_cluster import EtcdProcesses, Member, etcd_procs, unique_prefix
from mounting import fsck, kvfs
from nemesis import Timeline
from test_etcd_mounts import mounts, wait_until
from workloads import RACE_ERRNOS, RandomOps, Worker, judge, tree, tree_diff

pytestmark = pytest.mark.mount

__all__ = ["etcd_procs"]

SECONDS = float(os.environ.get("KVFS_RACE_SECONDS", "8"))


@pytest.fixture(scope="module")
def race_etcd(etcd_procs: EtcdProcesses) -> Member:
    return etcd_procs.member("races")


class CreateUnlink(Worker):
    """open(O_CREAT|O_WRONLY); close; unlink -- of one name, over and over."""

    workload = "create-unlink"
    race_errnos = RACE_ERRNOS

    def step(self) -> None:
        p = self.root / "x"

        def create() -> None:
            self.call = "open"
            fd = os.open(p, os.O_CREAT | os.O_WRONLY, 0o644)
            self.call = "close"
            os.close(fd)

        self.attempt("create", "x", create)
        self.attempt("unlink", "x", lambda: os.unlink(p))


class MakeRemove(Worker):
    """Make the name a directory or a symlink, then remove it, over and over."""

    race_errnos = RACE_ERRNOS

    def __init__(self, mount: str, root: Path, seed: int, kind: str) -> None:
        self.workload = f"{kind}-remove"
        super().__init__(mount, root, seed)
        self.kind = kind

    def step(self) -> None:
        p = self.root / "x"
        if self.kind == "mkdir":
            self.attempt("mkdir", "x", lambda: os.mkdir(p))
            self.attempt("rmdir", "x", lambda: os.rmdir(p))
        else:
            self.attempt("symlink", "x -> x-target", lambda: os.symlink("x-target", p))
            self.attempt("unlink", "x", lambda: os.unlink(p))


@pytest.mark.parametrize("variant", ["directory", "symlink", "random"])
def test_two_mounts_race_on_shared_names(race_etcd: Member, tmp_path: Path,
                                         variant: str) -> None:
    url = f"etcd://{race_etcd.endpoint}/{unique_prefix('race')}"
    kvfs("format", url, "race")
    with mounts(url, tmp_path, "a", "b") as (a, b):
        os.mkdir(a.mountpoint / "race")
        wait_until(lambda: (b.mountpoint / "race").is_dir(), "race directory on b")
        ra, rb = a.mountpoint / "race", b.mountpoint / "race"
        seed = int(time.time())
        print(f"seed {seed}")
        workers: list[Worker]
        if variant == "random":
            workers = [RandomOps("a", ra, seed), RandomOps("b", rb, seed + 1)]
        else:
            workers = [CreateUnlink("a", ra, seed),
                       MakeRemove("b", rb, seed + 1, "mkdir" if variant == "directory"
                                  else "symlink")]
        timeline = Timeline()
        for w in workers:
            w.start()
        time.sleep(SECONDS)
        for w in workers:
            w.stopping.set()
        for w in workers:
            w.join(60)
            assert not w.is_alive(), f"{w.name} hangs in {w.current}"
        verdict = judge(workers, timeline, grace=0.0)
        errors = Counter(f"{k}" for k in verdict.failed_ops.elements())
        print(f"{verdict.ops} operations; failures by kind: {dict(errors)}")
        assert not verdict.unexpected, "\n".join(verdict.unexpected[:20])
        assert verdict.ops > 100  # the workers really ran
        wait_until(lambda: not tree_diff(tree(ra), tree(rb)), "the same tree on both mounts",
                   timeout=10)
    fsck(url)
