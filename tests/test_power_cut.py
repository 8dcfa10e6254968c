"""Power loss, not just kill -9: stores on powerfs lose what they did not sync, and nothing
acknowledged.

``tests/powerfs.py`` keeps every unsynced change in memory and drops it when the power is
cut; its model is checked first, by the ``test_powerfs_*`` tests.  Then three scenarios put
kvfs's durable files on it and cut the power many times, at random moments, while a workload
writes and records what was acknowledged:

* an embedded volume (blocks in the store) mounted through FUSE, the workload creating,
  replacing (write a temporary file, fsync, rename it over), appending to and unlinking files;
* the same with ``--storage file``: metadata store and block bucket both on powerfs;
* the embedded engine alone (the one-member Raft store), with tiny snapshot and segment
  thresholds so that snapshots, segment rotation, the deletion of covered segments and
  the freeing of value files happen in almost every cycle.

Each cut is either strict (every unsynced change lost) or torn (part of them kept, the last
write torn; see powerfs), and comes either at once or as one of the next sync requests
arrives -- where the most is pending, and a torn cut can tear a log's last batch.  Then:
kill -9 whatever used the store, clear its mount, restart powerfs, and check that the store
opens (a torn tail is cut off, never a refusal), every acknowledged change is there, nothing
acknowledged as removed came back, and ``kvfs fsck`` is clean.  The operation in flight at
the cut may have happened or not, nothing else.

``KVFS_POWER_CUTS`` is the number of cuts, shared among the three scenarios (default 15, under
a minute).  ``KVFS_POWER_SEED`` fixes every random choice of a run -- the workloads, when the
power goes and how much a torn cut keeps -- and is printed; the timing of the processes still
varies.  The long run:

    KVFS_POWER_CUTS=200 .venv/bin/pytest -q tests/test_power_cut.py
"""

from __future__ import annotations

import errno
import hashlib
import os
import random
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import trio
from mounting import Mount, kvfs
from powerfs import PowerFS

from kvfs.durable import fsync_dir
from kvfs.kv.api import StoreCorrupt
from kvfs.raftkv.embedded import open_embedded

pytestmark = pytest.mark.mount

CUTS = int(os.environ.get("KVFS_POWER_CUTS", "15"))
SEED = int(os.environ.get("KVFS_POWER_SEED", str(random.randrange(1 << 32))))


def _cuts(scenario: int) -> int:
    """This scenario's share of ``CUTS`` (three scenarios, at least one cut each)."""
    return max(1, CUTS // 3 + (1 if scenario < CUTS % 3 else 0))


def _rng(name: str) -> random.Random:
    print(f"power-cut seed {SEED} ({name}); replay with KVFS_POWER_SEED={SEED}")
    return random.Random(f"{SEED}-{name}")


@pytest.fixture
def power(tmp_path: Path) -> Iterator[PowerFS]:
    with PowerFS(tmp_path / "backing", tmp_path / "power") as pfs:
        yield pfs


def _write(path: Path, data: bytes, *, sync: bool, flags: int = 0) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | flags, 0o644)
    try:
        os.write(fd, data)
        if sync:
            os.fsync(fd)
    finally:
        os.close(fd)


# -- the model of powerfs -------------------------------------------------------------------


def test_powerfs_keeps_only_synced_contents(power: PowerFS) -> None:
    root = power.mountpoint
    _write(root / "synced", b"kept", sync=True)
    _write(root / "unsynced", b"lost", sync=False)
    fsync_dir(root)  # both names durable; only one file's contents
    _write(root / "synced", b" and this is lost", sync=False, flags=os.O_APPEND)
    _write(root / "nameless", b"contents synced, name not", sync=True)
    assert (root / "synced").read_bytes() == b"kept and this is lost"
    power.cut()
    with pytest.raises(OSError) as e:
        os.listdir(root)
    assert e.value.errno == errno.EIO  # the device is gone
    power.restart()
    assert sorted(os.listdir(root)) == ["synced", "unsynced"]
    assert (root / "synced").read_bytes() == b"kept"
    assert (root / "unsynced").read_bytes() == b""


def test_powerfs_namespace_changes_need_fsyncdir(power: PowerFS) -> None:
    root = power.mountpoint
    (root / "d").mkdir()
    _write(root / "d" / "f", b"1", sync=True)
    _write(root / "old", b"old", sync=True)
    _write(root / "gone", b"", sync=True)
    fsync_dir(root)  # d, old and gone are durable; d's own entries are not
    _write(root / "tmp", b"new", sync=True)
    os.rename(root / "tmp", root / "old")  # replace, not synced
    os.unlink(root / "gone")
    (root / "e").mkdir()
    assert sorted(os.listdir(root)) == ["d", "e", "old"]
    assert (root / "old").read_bytes() == b"new"
    power.cut()
    power.restart()
    assert sorted(os.listdir(root)) == ["d", "gone", "old"]
    assert os.listdir(root / "d") == []
    assert (root / "old").read_bytes() == b"old"
    # the same changes, synced this time
    _write(root / "d" / "f", b"1", sync=True)
    fsync_dir(root / "d")
    _write(root / "tmp", b"new", sync=True)
    os.rename(root / "tmp", root / "old")
    os.unlink(root / "gone")
    fsync_dir(root)
    power.cut()
    power.restart()
    assert sorted(os.listdir(root)) == ["d", "old"]
    assert (root / "old").read_bytes() == b"new"
    assert (root / "d" / "f").read_bytes() == b"1"


def test_powerfs_reads_what_was_written(power: PowerFS, tmp_path: Path) -> None:
    """Random writes and truncates, half of them synced, read back as a local file has them;
    after a strict cut the file is what it was at its last fsync."""
    rng = random.Random(7)
    ours, ref = power.mountpoint / "f", tmp_path / "ref"
    with open(ours, "w+b") as a, open(ref, "w+b") as b:
        synced = b""
        for _ in range(300):
            if rng.random() < 0.2:
                size = rng.randrange(0, 70_000)
                a.truncate(size)
                b.truncate(size)
            else:
                off, data = rng.randrange(0, 60_000), rng.randbytes(rng.randrange(1, 9000))
                for f in (a, b):
                    f.seek(off)
                    f.write(data)
                    f.flush()
            if rng.random() < 0.1:
                os.fsync(a.fileno())
                synced = ref.read_bytes()
            a.seek(0)
            assert a.read() == ref.read_bytes()
    fsync_dir(power.mountpoint)
    power.cut()
    power.restart()
    assert ours.read_bytes() == synced


def test_powerfs_torn_cut_keeps_a_prefix_of_the_writes(power: PowerFS) -> None:
    """A torn cut keeps the synced part, then some of the later appends in order, the last
    one possibly cut short or zero-filled -- never anything else."""
    rng = random.Random(11)
    sizes = set()
    for seed in range(8):
        log = power.mountpoint / f"log{seed}"
        records = [rng.randbytes(rng.randrange(1, 300)) for _ in range(20)]
        with open(log, "ab") as f:
            f.write(b"".join(records[:5]))
            f.flush()
            os.fsync(f.fileno())
            for r in records[5:]:
                f.write(r)
                f.flush()
        fsync_dir(power.mountpoint)
        power.cut(torn_seed=seed)
        power.restart()
        got = log.read_bytes()
        whole = b"".join(records)
        synced = len(b"".join(records[:5]))
        same = next((i for i, (x, y) in enumerate(zip(got, whole, strict=False)) if x != y),
                    len(got))
        assert same >= synced and len(got) <= len(whole), seed
        assert not any(got[same:]), seed  # after the kept prefix, only zeros
        sizes.add(len(got))
    # Not all or nothing: seeds keep different amounts (the seeds are fixed, so is this).
    assert len(sizes) > 4, sizes


def test_powerfs_armed_cut_strikes_at_a_sync(power: PowerFS) -> None:
    root = power.mountpoint
    power.cut(at_sync=3)
    _write(root / "a", b"a", sync=True)  # sync 1
    fsync_dir(root)  # sync 2
    assert power.is_on()
    with pytest.raises(OSError) as e:
        _write(root / "b", b"b", sync=True)  # sync 3: the power goes instead
    assert e.value.errno == errno.EIO
    assert not power.is_on()
    power.restart()
    assert os.listdir(root) == ["a"]
    assert (root / "a").read_bytes() == b"a"


def _cut_power(power: PowerFS, rng: random.Random) -> str:
    """Cut the power, strict or torn, at once or as one of the next syncs arrives (where
    most is pending); returns how."""
    torn = rng.randrange(1 << 32) if rng.random() < 0.5 else None
    kind = "strict" if torn is None else "torn"
    if rng.random() < 0.25:
        power.cut(torn)
        return f"{kind}, at once"
    n = rng.randint(1, 30)
    power.cut(torn, at_sync=n)
    deadline = time.monotonic() + 60
    while power.is_on():
        if time.monotonic() > deadline:  # the workload stopped syncing: cut it short
            power.cut(torn)
            return f"{kind}, at once (sync {n} never came)"
        time.sleep(0.05)
    return f"{kind}, at sync {n}"


# -- workloads through kvfs -----------------------------------------------------------------

# Prints "B NAME SIZE DIGEST EXTRA" before each operation -- the state NAME will have after
# it (SIZE -1: gone) and a temporary name it uses (or -) -- and "A" once it is acknowledged.
WRITER = r"""
import hashlib, os, random, sys
root, seed, cycle = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
rng = random.Random(seed)

def say(*words):  # one write per line: print writes piecemeal, and we get killed
    os.write(1, (" ".join(map(str, words)) + "\n").encode())

def digest(b):
    return hashlib.sha256(b).hexdigest()[:20]

def put(path, data, flags):
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | flags, 0o644)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    finally:
        os.close(fd)

def size():
    kind = rng.random()
    if kind < 0.1:
        return 0
    if kind < 0.5:
        return rng.randrange(1, 4096)
    if kind < 0.8:
        return rng.randrange(4096, 70_000)
    return rng.randrange(70_000, 400_000)

try:
    for d in ("d0", "d1"):
        os.makedirs(os.path.join(root, d), exist_ok=True)
    files, logs = [], {}
    for dirpath, _, names in os.walk(root):
        for n in names:
            rel = os.path.relpath(os.path.join(dirpath, n), root)
            if n.startswith("log"):
                with open(os.path.join(root, rel), "rb") as f:
                    logs[rel] = f.read()
            else:
                files.append(rel)
    files.sort()
    n = 0
    while True:
        n += 1
        # about 40 files and logs of at most 256 KiB: a long run checks a tree of bounded size
        crowded = len(files) > 40
        op = rng.choices(["new", "replace", "append", "unlink"], [1 + 3 * (not crowded), 3, 3,
                                                                 1 + 3 * crowded])[0]
        log = f"log{rng.randrange(3)}"
        if op == "append" and len(logs.get(log, b"")) > 256 << 10:
            say("B", log, -1, "-", "-")
            os.unlink(os.path.join(root, log))
            del logs[log]
        elif op == "new" or not files:
            name = os.path.join(rng.choice(["", "d0", "d1"]), f"f{cycle}-{n}")
            data = rng.randbytes(size())
            say("B", name, len(data), digest(data), "-")
            put(os.path.join(root, name), data, os.O_EXCL)
            files.append(name)
        elif op == "replace":
            name = rng.choice(files)
            data = rng.randbytes(size())
            say("B", name, len(data), digest(data), name + ".tmp")
            put(os.path.join(root, name + ".tmp"), data, os.O_TRUNC)
            os.rename(os.path.join(root, name + ".tmp"), os.path.join(root, name))
        elif op == "append":
            name = log
            data = rng.randbytes(rng.randrange(1, 5000))
            new = logs.get(name, b"") + data
            say("B", name, len(new), digest(new), "-")
            put(os.path.join(root, name), data, os.O_APPEND)
            logs[name] = new
        else:
            name = files.pop(rng.randrange(len(files)))
            say("B", name, -1, "-", "-")
            os.unlink(os.path.join(root, name))
        say("A")
except OSError:
    sys.exit(0)  # the power went, or the daemon
"""

State = tuple[int, str] | None  # (size, digest) of a file; None: absent


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:20]


@dataclass
class InFlight:
    """The operation that was running when the power went."""

    name: str
    new: State
    tmp: str | None
    creates: bool  # a new file: it may also exist, empty, without its data


class Ledger:
    """What the workload had acknowledged, and what it was doing when the power went."""

    def __init__(self) -> None:
        self.acked: dict[str, tuple[int, str]] = {}
        self.in_flight: InFlight | None = None
        self.operations = 0

    def record(self, output: str) -> None:
        begun: InFlight | None = None
        for line in output.splitlines():
            words = line.split()
            if words[0] == "B":
                name, size, digest, tmp = words[1], int(words[2]), words[3], words[4]
                begun = InFlight(name, None if size < 0 else (size, digest),
                                 None if tmp == "-" else tmp,
                                 creates=name not in self.acked)
            else:
                assert begun is not None
                if begun.new is None:
                    del self.acked[begun.name]
                else:
                    self.acked[begun.name] = begun.new
                self.operations += 1
                begun = None
        self.in_flight = begun

    def check(self, root: Path, where: str) -> None:
        """Compare the tree with the acknowledged state, then adopt what the operation in
        flight left (removing its temporary file)."""
        found: dict[str, tuple[int, str]] = {}
        for path in root.rglob("*"):
            if path.is_file():
                data = path.read_bytes()
                found[str(path.relative_to(root))] = (len(data), _digest(data))
        fl = self.in_flight
        for name in sorted(set(found) | set(self.acked)):
            got, want = found.get(name), self.acked.get(name)
            if fl is not None and name == fl.tmp:
                continue
            if fl is not None and name == fl.name:
                allowed = [want, fl.new] + ([(0, _digest(b""))] if fl.creates else [])
                assert got in allowed, (f"{where}: {name} is {got}; the operation in flight "
                                        f"allows only {allowed}")
            else:
                assert got == want, (f"{where}: {name} is {got}, acknowledged as {want}")
        if fl is not None:
            if found.get(fl.name) is None:
                self.acked.pop(fl.name, None)
            else:
                self.acked[fl.name] = found[fl.name]
            if fl.tmp is not None and fl.tmp in found:
                os.unlink(root / fl.tmp)
        self.in_flight = None


class _Workload:
    """A workload script in a subprocess, its report going to a local file (a pipe left
    unread would fill up and stall the workload exactly when the power is cut), its errors
    to another next to it."""

    def __init__(self, args: list[str], out: Path) -> None:
        self.out = out
        with open(out, "wb") as f, open(out.with_suffix(".err"), "ab") as err:
            self.proc = subprocess.Popen([sys.executable, "-c", *args], stdout=f, stderr=err)

    def output(self) -> str:
        """Wait for the workload to end and read its report."""
        self.proc.wait(120)
        return self.out.read_text()


def _fsck(store: Path) -> int:
    """Run ``kvfs fsck`` on the store, the first to open it after a cut: assert it is clean
    and return how many torn log tails its recovery cut off.

    The killed mount's usage counters lag by the deltas it had not yet added (about a
    second's changes: mounts add them once a second), and the lag of several cuts adds up
    now that removed files stay in the trash instead of cancelling out creations; fsck
    reports that and ``--repair`` recomputes them -- that, and only that, is allowed
    (as ``mounting.fsck(after_kill=True)``)."""
    res = kvfs("fsck", str(store), check=False)
    torn = res.stderr.count("torn tail")
    if res.returncode != 0:
        problems = res.stdout.splitlines()[:-1]  # the last line is the summary
        assert problems and all(p.startswith("usage counters say") for p in problems), \
            f"fsck found problems:\n{res.stdout}{res.stderr}"
        kvfs("fsck", str(store), "--repair")
        res = kvfs("fsck", str(store), check=False)
    assert res.returncode == 0, f"fsck found problems:\n{res.stdout}{res.stderr}"
    return torn


def _power_cut_loop(power: PowerFS, tmp_path: Path, store: Path, cuts: int,
                    rng: random.Random) -> Ledger:
    """Mount, check, write until the power goes, kill the daemon, power on, fsck; repeat."""
    ledger = Ledger()
    torn_tails = 0
    mnt = tmp_path / "mnt"
    for cycle in range(cuts + 1):
        where = f"after cut {cycle}" if cycle else "fresh volume"
        m = Mount(str(store), mnt)
        try:
            ledger.check(m.mountpoint, where)
            if cycle == cuts:
                m.unmount()
                break
            writer = _Workload([WRITER, str(m.mountpoint), str(rng.randrange(1 << 32)),
                                str(cycle)], tmp_path / "writer.out")
            time.sleep(rng.uniform(0.2, 2.0))
            how = _cut_power(power, rng)
            # Stop the workload first: once the dead mount is cleared, its paths would lead
            # into the local directory underneath (and while it exits it keeps the mount
            # busy).
            writer.proc.kill()
            report = writer.output()
            m.kill9()
            ledger.record(report)
            print(f"cut {cycle + 1}: {how}; {ledger.operations} operations acknowledged so far")
        finally:
            m.cleanup()
        power.restart()
        torn_tails += _fsck(store)
    _fsck(store)
    print(f"{cuts} cuts, {ledger.operations} operations acknowledged, {torn_tails} torn log "
          f"tails cut off")
    return ledger


def test_power_cuts_embedded_volume(power: PowerFS, tmp_path: Path) -> None:
    store = power.mountpoint / "vol" / "meta"
    kvfs("format", str(store), "power")
    ledger = _power_cut_loop(power, tmp_path, store, _cuts(0), _rng("embedded"))
    assert ledger.operations, "the workload never got an operation acknowledged"


def test_power_cuts_file_bucket(power: PowerFS, tmp_path: Path) -> None:
    store, bucket = power.mountpoint / "vol" / "meta", power.mountpoint / "vol" / "data" / "blocks"
    kvfs("format", str(store), "power", "--storage", "file", "--bucket", str(bucket),
         "--block-size", "64")
    ledger = _power_cut_loop(power, tmp_path, store, _cuts(1), _rng("file"))
    assert ledger.operations, "the workload never got an operation acknowledged"


# -- the engine alone, snapshotting all the time ----------------------------------------------

# Four tasks commit puts and deletes on keys of their own, printing "B TASK KEY SIZE DIGEST"
# (SIZE -1: a delete) before a commit and "A TASK" once it returned.
ENGINE_WRITER = r"""
import hashlib, os, random, sys
import trio
from kvfs.kv.api import Delete, Put
from kvfs.raftkv.embedded import open_embedded

def say(*words):  # one write per line: print writes piecemeal, and we get killed
    os.write(1, (" ".join(map(str, words)) + "\n").encode())

async def task(engine, t, rng):
    while True:
        key = f"t{t}/k{rng.randrange(12)}"
        if rng.random() < 0.2:
            say("B", t, key, -1, "-")
            await engine.commit([], [], [Delete(key.encode())])
        else:
            big = rng.random() < 0.3  # over 64 KiB: a value file
            data = rng.randbytes(rng.randrange(65_537, 200_000) if big else rng.randrange(300))
            say("B", t, key, len(data), hashlib.sha256(data).hexdigest()[:20])
            await engine.commit([], [Put(key.encode(), data)])
        say("A", t)

async def main(path, seed):
    engine = await open_embedded(path, create=True, snapshot_every=40,
                                 snapshot_bytes=256 << 10, segment_bytes=32 << 10)
    async with trio.open_nursery() as nursery:
        for t in range(4):
            nursery.start_soon(task, engine, t, random.Random(f"{seed}-{t}"))

try:
    trio.run(main, sys.argv[1], sys.argv[2])
except BaseException as exc:
    print("stopped:", repr(exc)[:200], file=sys.stderr)
    sys.exit(0)
"""


async def _engine_contents(path: str) -> dict[str, tuple[int, str]]:
    engine = await open_embedded(path)
    try:
        res = await engine.range(b"", b"\xff")
        assert not res.more
        return {kv.key.decode(): (len(kv.value), _digest(kv.value)) for kv in res.kvs}
    finally:
        await engine.aclose()


def test_power_cuts_embedded_engine_snapshots(power: PowerFS, tmp_path: Path,
                                             caplog: pytest.LogCaptureFixture) -> None:
    rng = _rng("engine")
    path = str(power.mountpoint / "store")
    acked: dict[str, tuple[int, str]] = {}
    for cut in range(_cuts(2)):
        writer = _Workload([ENGINE_WRITER, path, str(rng.randrange(1 << 32))],
                           tmp_path / "writer.out")
        time.sleep(rng.uniform(0.5, 2.0))
        how = _cut_power(power, rng)
        writer.proc.kill()
        out = writer.output()
        begun: dict[str, tuple[str, tuple[int, str] | None]] = {}
        for line in out.splitlines():
            words = line.split()
            if words[0] == "B":
                size = int(words[3])
                begun[words[1]] = (words[2], None if size < 0 else (size, words[4]))
            else:
                key, new = begun.pop(words[1])
                if new is None:
                    acked.pop(key, None)
                else:
                    acked[key] = new
        power.restart()
        try:
            found = trio.run(_engine_contents, path)
        except StoreCorrupt as exc:
            raise AssertionError(f"after cut {cut + 1} the store does not open: {exc}") from exc
        in_flight = dict(begun.values())
        for key in sorted(set(found) | set(acked)):
            allowed = [acked.get(key)] + ([in_flight[key]] if key in in_flight else [])
            assert found.get(key) in allowed, (f"after cut {cut + 1}: {key} is "
                                               f"{found.get(key)}, allowed: {allowed}")
        acked = found  # what the in-flight commits left is the new baseline
        print(f"cut {cut + 1}: {how}; {len(acked)} keys")
    torn_tails = sum("torn tail" in r.getMessage() for r in caplog.records)
    print(f"{_cuts(2)} cuts, {torn_tails} torn log tails cut off")
    assert acked, "no commit was ever acknowledged"
