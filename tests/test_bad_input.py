"""Bad input everywhere (issue 12, item 8): every case runs the CLI as a subprocess and must
get exactly one line on stderr, ``kvfs: error: …`` (no traceback), exit status 1, and
change nothing -- the engine's keys, values and revisions are compared before and after
wherever a volume exists, and nothing is created where none does.

Cases, on the embedded store, on etcd (one server for the module, a prefix per test) and
on a one-member ``kvfs raft serve`` (also one for the module):

* malformed META_URLs (etcd://, raft://, local) and unknown schemes, across every command
  that takes one; an empty META_URL (nothing made in the current directory); credentials
  in a URL (``user:password@host``), never echoed;
* unformatted volumes -- an empty directory, a missing one, a store without a format
  record, an empty etcd or raft prefix -- for every command that opens a volume;
* newer-version and corrupted format records (written through the engine), for every
  command that opens a volume;
* a wrong UUID for ``destroy`` and format mismatches (another name, another block size);
* loads refused: into a non-empty volume, and from truncated and corrupted dump files
  (naming the offset), from a file and from a pipe -- the target stays empty;
* ``destroy`` with a live session (etcd) and of a mounted embedded store;
* an unreachable engine (etcd and raft:// on a closed port, ``?timeout=2``): the error
  comes after about the timeout, never a hang; the subprocess's 60 s limit is the
  functional bound, and the times are printed.

Corrupted blocks and records inside a volume (fsck finds them, reads give EIO, ``--repair``
fixes what it claims) are tests/test_fsck_repair.py's; damaged dump files into an embedded
store are also in tests/test_dump_load.py.  The CLI runs go side by side (a few at a
time), so the module takes about a minute on a two-core machine.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import msgpack
import pytest
import trio
from etcd_cluster import Member, etcd_procs, etcd_single, unique_prefix
from mounting import Mount, is_mounted
from raft_cluster import RaftCluster, loopback_addresses

from kvfs.benchmarks.launch import free_port
from kvfs.kv.api import Put
from kvfs.meta import keys
from kvfs.raftkv.embedded import open_embedded
from kvfs.volume import open_engine

__all__ = ["etcd_procs", "etcd_single"]  # fixtures used by name

KVFS = [sys.executable, "-m", "kvfs.cli.main"]
WORKERS = 4
WRONG_UUID = "11111111-2222-3333-4444-555555555555"

State = list[tuple[bytes, bytes, int]]


def run(args: Sequence[str], *, stdin: bytes | None = None, timeout: float = 60,
        cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """The CLI with ``args``, stdin ``stdin`` (else /dev/null), in directory ``cwd`` (else
    this one); a hang fails the test."""
    if stdin is None:
        res = subprocess.run([*KVFS, *args], stdin=subprocess.DEVNULL, capture_output=True,
                             timeout=timeout, cwd=cwd)
    else:
        res = subprocess.run([*KVFS, *args], input=stdin, capture_output=True,
                             timeout=timeout, cwd=cwd)
    return subprocess.CompletedProcess(res.args, res.returncode,
                                       res.stdout.decode(errors="replace"),
                                       res.stderr.decode(errors="replace"))


def assert_refused(res: subprocess.CompletedProcess[str], expected: str) -> str:
    """One line ``kvfs: error: …`` holding ``expected``, exit status 1; the line."""
    what = f"kvfs {' '.join(res.args[len(KVFS):])}"
    assert "Traceback" not in res.stderr, f"{what}: {res.stderr}"
    lines = res.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("kvfs: error: "), f"{what}: {res.stderr!r}"
    assert res.returncode == 1, f"{what}: exit status {res.returncode}"
    assert expected in lines[0], f"{what}: {lines[0]!r} lacks {expected!r}"
    return lines[0]


Case = tuple[list[str], str]  # the CLI's arguments, and text the error line must hold


def refuse_all(groups: Sequence[Sequence[Case]], *, never: Sequence[str] = (),
               cwd: Path | None = None) -> None:
    """Run the groups side by side (in directory ``cwd``), the cases of a group one after
    another (an embedded store admits one process at a time), and check that each is
    refused (and prints none of the texts in ``never``)."""
    def one(group: Sequence[Case]) -> None:
        for args, expected in group:
            res = run(args, cwd=cwd)
            line = assert_refused(res, expected)
            assert not any(t in res.stdout + res.stderr for t in never), line

    with ThreadPoolExecutor(WORKERS) as pool:
        for done in [pool.submit(one, g) for g in groups]:
            done.result()


async def _state(url: str) -> State:
    kv = await open_engine(url)
    try:
        items: list[tuple[bytes, bytes, int]] = []
        start = b""
        while True:
            page = await kv.range(start, b"\x00", limit=500)
            items += [(i.key, i.value, i.mod_revision) for i in page.kvs]
            if not page.more:
                return items
            start = page.kvs[-1].key + b"\x00"
    finally:
        await kv.aclose()


def state(url: str) -> State:
    """Every key of the volume, with its value and revision (the engine's own revision
    is not compared: on etcd and raft:// other volumes move it)."""
    return trio.run(_state, url)


def put_setting(url: str, value: bytes) -> None:
    async def put() -> None:
        kv = await open_engine(url)
        try:
            await kv.commit((), [Put(keys.SETTING, value)])
        finally:
            await kv.aclose()

    trio.run(put)


def setting(url: str) -> dict[str, object]:
    got = [v for k, v, _ in state(url) if k == keys.SETTING]
    assert len(got) == 1
    return dict(msgpack.unpackb(got[0]))


@pytest.fixture(scope="module")
def small_dump(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A valid dump (with data) of a new embedded volume."""
    base = tmp_path_factory.mktemp("dump")
    assert run(["format", str(base / "store"), "vol"]).returncode == 0
    _dump(str(base / "store"), base / "small.dump")
    return base / "small.dump"


@pytest.fixture(scope="module")
def raft(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RaftCluster]:
    base = tmp_path_factory.mktemp("raft")
    with RaftCluster(base, "badinput", loopback_addresses(("m1",))) as cluster:
        yield cluster


ENGINES = ["embedded", "etcd", "raft"]


@pytest.fixture(params=ENGINES)
def engine(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def new_url(engine: str, tmp_path: Path, request: pytest.FixtureRequest, tag: str) -> str:
    """A URL of nothing yet: a directory not made, an etcd or raft prefix never used."""
    if engine == "embedded":
        return str(tmp_path / f"store-{tag}")
    if engine == "etcd":
        member: Member = request.getfixturevalue("etcd_single")
        return f"etcd://{member.endpoint}/{unique_prefix(tag)}"
    cluster: RaftCluster = request.getfixturevalue("raft")
    return cluster.url(prefix=unique_prefix(tag).replace("-", "_"), timeout=60)


def formatted(engine: str, tmp_path: Path, request: pytest.FixtureRequest, tag: str) -> str:
    url = new_url(engine, tmp_path, request, tag)
    res = run(["format", url, "vol"])
    assert res.returncode == 0, res.stderr
    return url


# -- malformed URLs and unknown schemes --------------------------------------------------

BAD_URLS = [
    ("etcd://", "etcd URL needs a volume prefix"),
    ("etcd://127.0.0.1:2379", "etcd URL needs a volume prefix"),
    ("etcd://127.0.0.1:notaport/p", "invalid etcd endpoint '127.0.0.1:notaport'"),
    ("etcd://127.0.0.1:2379/a/b", "invalid etcd prefix"),
    ("etcd://127.0.0.1:2379/p?colour=blue", "unknown etcd URL parameter 'colour'"),
    ("etcd://127.0.0.1:2379/p?password=x", "etcd URL must not contain a password"),
    ("raft://", "raft URL needs at least one member"),
    ("raft://h:notaport/x", "invalid raft URL endpoint 'h:notaport'"),
    ("raft://127.0.0.1:1", "raft URL needs a volume prefix"),
    ("bogus://x/y", "unsupported metadata URL scheme 'bogus'"),
    ("http://example.com/vol", "unsupported metadata URL scheme 'http'"),
    ("s3://bucket/vol", "unsupported metadata URL scheme 's3'"),
]


def with_url(command: str, url: str, tmp_path: Path, dump: Path | None = None) -> list[str]:
    """``command``'s arguments around META_URL ``url`` (``dump``: a valid dump to load)."""
    return {
        "status": ["status", url], "fsck": ["fsck", url], "gc": ["gc", url],
        "config": ["config", url], "dump": ["dump", url, str(tmp_path / "out.dump")],
        "load": ["load", url, str(dump)],
        "destroy": ["destroy", "--yes", url, WRONG_UUID],
        "mount": ["mount", url, str(tmp_path / "mnt")], "format": ["format", url, "vol"],
    }[command]


URL_COMMANDS = ["status", "fsck", "gc", "config", "dump", "load", "destroy", "mount",
                "format"]


def test_malformed_urls_and_unknown_schemes(tmp_path: Path, small_dump: Path) -> None:
    (tmp_path / "mnt").mkdir()
    before = sorted(os.listdir(tmp_path))
    # Every URL with three commands, in turn, so that every command sees several URLs.
    cases = [(with_url(URL_COMMANDS[(3 * i + j) % len(URL_COMMANDS)], url, tmp_path,
                       small_dump), want)
             for i, (url, want) in enumerate(BAD_URLS) for j in range(3)]
    refuse_all([[case] for case in cases])
    assert sorted(os.listdir(tmp_path)) == before
    assert not is_mounted(tmp_path / "mnt")


SECRET = "s3cr:et@pw"
SECRET_URLS = [
    (f"etcd://user:{SECRET}@127.0.0.1:2379/p", "etcd URL must not contain credentials "
     "(user:***@127.0.0.1:2379/p)"),
    (f"etcd://user:{SECRET}@127.0.0.1:2379", "(user:***@127.0.0.1:2379)"),
    (f"etcd://:{SECRET}@127.0.0.1:2379/p", "(:***@127.0.0.1:2379/p)"),
    (f"raft://user:{SECRET}@127.0.0.1:1/p", "invalid raft URL endpoint 'user:***@127.0.0.1:1'"),
    (f"raft://user:{SECRET}@127.0.0.1:1", "raft URL needs a volume prefix"),
]


def test_credentials_in_a_url_are_never_echoed(tmp_path: Path, small_dump: Path) -> None:
    """A password written into the URL (``user:password@host``) never reaches the error
    line, which shows ``user:***@`` instead -- each URL with three commands in turn."""
    (tmp_path / "mnt").mkdir()
    before = sorted(os.listdir(tmp_path))
    refuse_all([[(with_url(URL_COMMANDS[(3 * i + j) % len(URL_COMMANDS)], url, tmp_path,
                           small_dump), want)]
                for i, (url, want) in enumerate(SECRET_URLS) for j in range(3)],
               never=("s3cr", "et@pw"))
    assert sorted(os.listdir(tmp_path)) == before
    assert not is_mounted(tmp_path / "mnt")


def test_an_empty_meta_url(tmp_path: Path, small_dump: Path) -> None:
    """An empty META_URL (an unset shell variable) is refused by every command, and nothing
    appears in the current directory, which "" would name as a path."""
    here = tmp_path / "cwd"
    here.mkdir()
    (tmp_path / "mnt").mkdir()
    refuse_all([[(with_url(c, "", tmp_path, small_dump), "empty META_URL")]
                for c in URL_COMMANDS], cwd=here)
    assert os.listdir(here) == []
    assert not is_mounted(tmp_path / "mnt")


# -- unformatted volumes -----------------------------------------------------------------

OPENING_COMMANDS = ["status", "fsck", "gc", "config", "dump", "destroy", "mount"]


def test_unformatted_volumes(engine: str, tmp_path: Path,
                             request: pytest.FixtureRequest) -> None:
    (tmp_path / "mnt").mkdir()
    if engine == "embedded":
        empty = tmp_path / "empty"
        empty.mkdir()
        bare = tmp_path / "bare"  # a store, but no volume: nothing was ever formatted

        async def make_bare() -> None:
            await (await open_embedded(str(bare), create=True)).aclose()

        trio.run(make_bare)
        bare_state = state(str(bare))
        before = sorted(os.listdir(tmp_path))
        # Every command on an empty directory, some on the other forms.
        refuse_all([[(with_url(c, str(empty), tmp_path), "no kvfs volume here")]
                    for c in OPENING_COMMANDS]
                   + [[(with_url(c, url, tmp_path), "no kvfs volume here")]
                      for c in ("fsck", "mount")
                      for url in (str(tmp_path / "missing"), f"local://{tmp_path}/missing")]
                   + [[(with_url(c, str(bare), tmp_path), "not a formatted kvfs volume")
                       for c in ("status", "dump", "destroy", "mount")]])
        assert sorted(os.listdir(tmp_path)) == before
        assert os.listdir(empty) == []
        assert state(str(bare)) == bare_state
    else:
        url = new_url(engine, tmp_path, request, "unformatted")
        refuse_all([[(with_url(c, url, tmp_path), "not a formatted kvfs volume")]
                    for c in OPENING_COMMANDS])
        assert state(url) == []
    assert not is_mounted(tmp_path / "mnt")


# -- newer and corrupted format records --------------------------------------------------

def _newer(fmt: dict[str, object]) -> bytes:
    return msgpack.packb({**fmt, "version": 99})


FORMAT_FAULTS = {
    "newer": (_newer, "volume format 99 is newer than this kvfs"),
    "garbage": (lambda fmt: b"\xc1\x00 not msgpack", "format record is corrupt"),
    "not a map": (lambda fmt: msgpack.packb([1, 2, 3]), "format record is corrupt"),
    "fields missing": (lambda fmt: msgpack.packb({"version": 1}),
                       "format record is corrupt (fields"),
    "wrong type": (lambda fmt: msgpack.packb({**fmt, "block_size": "big"}),
                   "format record is corrupt (fields block_size)"),
}


def _format_cases(url: str, uuid: str, tmp_path: Path, want: str, every: bool
                  ) -> list[Case]:
    """Every command that opens the volume (``every``), or three of them."""
    cases = [(["status", url], want), (["mount", url, str(tmp_path / "mnt")], want),
             (["format", "--force", url, "vol"], want)]
    if every:
        cases += [(with_url(c, url, tmp_path), want)
                  for c in ("fsck", "gc", "config", "dump")]
        cases += [(["config", url, "--history-days", "3"], want),
                  (["destroy", "--yes", url, uuid], want)]
    return cases


def test_newer_and_corrupt_format_records(engine: str, tmp_path: Path,
                                          request: pytest.FixtureRequest) -> None:
    """Every command refuses a volume whose format record is newer or damaged (every
    command that opens a volume for the newer one, three for the others); on etcd and
    raft:// two of the faults, as the record is read the same way everywhere."""
    (tmp_path / "mnt").mkdir()
    faults = list(FORMAT_FAULTS) if engine == "embedded" else ["newer", "garbage"]
    groups, urls = [], []
    for n, fault in enumerate(faults):
        url = formatted(engine, tmp_path, request, f"fmt{n}")
        fmt = setting(url)
        make, want = FORMAT_FAULTS[fault]
        put_setting(url, make(fmt))
        urls.append((url, state(url)))
        groups.append(_format_cases(url, str(fmt["uuid"]), tmp_path, want,
                                    every=fault == "newer"))
    refuse_all(groups)
    for url, before in urls:
        assert state(url) == before, url
    assert not is_mounted(tmp_path / "mnt")


# -- wrong UUID, format mismatches, loads refused -----------------------------------------

def _dump(url: str, path: Path) -> None:
    res = run(["dump", url, str(path), "--with-data"])
    assert res.returncode == 0, res.stderr


LAYOUT_KEPT = ("--force cannot change the storage or block size of volume 'vol' (it has "
               "storage kv and 1024 KiB blocks)")


def test_wrong_uuid_format_mismatch_and_refused_loads(
        engine: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    url = formatted(engine, tmp_path, request, "vol")
    good = tmp_path / "good.dump"
    _dump(url, good)
    data = good.read_bytes()
    truncated, corrupted = tmp_path / "truncated.dump", tmp_path / "corrupted.dump"
    truncated.write_bytes(data[:len(data) - 20])
    flipped = bytearray(data)
    flipped[len(data) // 2] ^= 0x01
    corrupted.write_bytes(bytes(flipped))
    empty_target = new_url(engine, tmp_path, request, "target")
    before = state(url)
    uuid = str(setting(url)["uuid"])
    refuse_all([
        [(["destroy", "--yes", url, WRONG_UUID],
          f"'{WRONG_UUID}' is not the UUID of volume vol"),
         (["destroy", "--yes", url, uuid.upper()], "is not the UUID of volume vol"),
         (["format", url, "other"], "already formatted as volume 'vol'"),
         (["format", "--force", "--block-size", "512", url, "vol"], LAYOUT_KEPT),
         (["format", "--force", "--storage", "file", "--bucket", str(tmp_path / "b"), url,
           "vol"], LAYOUT_KEPT),
         (["load", url, str(good)], "the target engine is not empty")],
        [(["load", empty_target, str(truncated)], "dump file truncated at offset "),
         (["load", empty_target, str(corrupted)], "checksum mismatch")],
    ])
    assert state(url) == before
    # From a pipe the load verifies as it goes: on damage it removes what it wrote.
    for damaged, want in ((truncated, "dump file truncated at offset "),
                          (corrupted, "checksum mismatch")):
        res = run(["load", empty_target, "-"], stdin=damaged.read_bytes())
        assert_refused(res, want)
    if engine == "embedded":
        assert not os.path.exists(empty_target)
    else:
        assert state(empty_target) == []
    assert not (tmp_path / "b").exists()


# -- live sessions -----------------------------------------------------------------------

@pytest.mark.mount
def test_destroy_with_a_live_session_etcd(etcd_single: Member, tmp_path: Path) -> None:
    url = f"etcd://{etcd_single.endpoint}/{unique_prefix('live')}"
    assert run(["format", url, "vol"]).returncode == 0
    uuid = str(setting(url)["uuid"])
    m = Mount(url, tmp_path / "mnt")
    try:
        (m.mountpoint / "kept").write_bytes(b"still here\n")
        line = assert_refused(run(["destroy", "--yes", url, uuid]),
                              "volume vol has 1 live session(s): #")
        assert line.endswith("unmount them first (nothing destroyed)"), line
        assert (m.mountpoint / "kept").read_bytes() == b"still here\n"
        m.unmount()
    finally:
        m.cleanup()
    names = [k for k, _, _ in state(url)]
    assert keys.SETTING in names and any(k.endswith(b"kept") for k in names)


@pytest.mark.mount
def test_commands_refused_on_a_mounted_embedded_store(tmp_path: Path) -> None:
    url = str(tmp_path / "store")
    assert run(["format", url, "vol"]).returncode == 0
    uuid = str(setting(url)["uuid"])
    before = state(url)
    (tmp_path / "mnt2").mkdir()
    m = Mount(url, tmp_path / "mnt")
    try:
        mounted = f"{url} is mounted at {m.mountpoint}"
        in_use = f"store directory {url}/raft is in use by pid {m.pid}"
        refuse_all([[(["destroy", "--yes", url, uuid], mounted),
                     (["config", url, "--history-days", "3"], mounted),
                     (["fsck", url], in_use), (["gc", url], in_use),
                     (["dump", url, str(tmp_path / "out.dump")], in_use),
                     (["format", "--force", url, "vol"], in_use),
                     (["mount", url, str(tmp_path / "mnt2")], in_use)]])
        m.unmount()
    finally:
        m.cleanup()
    after = state(url)
    # The mount itself wrote (its session, usage counters); the volume's files are intact.
    assert [i for i in after if i[0] == keys.SETTING] == \
        [i for i in before if i[0] == keys.SETTING]
    assert not (tmp_path / "out.dump").exists()


# -- an unreachable engine ---------------------------------------------------------------

def test_an_unreachable_engine_fails_after_its_timeout(tmp_path: Path,
                                                        small_dump: Path) -> None:
    (tmp_path / "mnt").mkdir()
    closed = free_port()  # nothing listens there
    etcd = f"etcd://127.0.0.1:{closed}/vol?timeout=2"
    raft = f"raft://127.0.0.1:{closed}/vol?timeout=2"
    cases = [(with_url(c, etcd, tmp_path, small_dump),
              f"etcd at 127.0.0.1:{closed}: unreachable for 2 s")
             for c in URL_COMMANDS] + [
             (with_url(c, raft, tmp_path), f"raft store at 127.0.0.1:{closed}: unavailable "
              "for 2 s") for c in ("status", "fsck", "dump", "mount", "format")]
    times: list[float] = []

    def one(case: Case) -> None:
        started = time.monotonic()
        assert_refused(run(case[0]), case[1])
        times.append(time.monotonic() - started)

    with ThreadPoolExecutor(WORKERS) as pool:
        for done in [pool.submit(one, c) for c in cases]:
            done.result()
    print(f"unreachable engine, timeout=2: refused after {min(times):.1f} to "
          f"{max(times):.1f} s ({len(times)} commands)")
    assert os.listdir(tmp_path) == ["mnt"]
    assert not is_mounted(tmp_path / "mnt")
