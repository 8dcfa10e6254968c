"""Fault injection for ``kvfs fsck --repair`` and ``kvfs gc``, on the embedded store and on etcd.

A volume is written through a real mount, unmounted, and damaged behind kvfs's back: a
byte of a block flipped, a chunk record cut short (a length that is not whole records), a
file's ``nlink`` wrong, a directory entry pointing nowhere, a hold of a session that is
gone, a block nobody refers to, and the ``R`` record of a removed file's slice
dropped (so only the history version refers to that slice).  Then:

* fsck finds every damage, one line each, exit 1;
* ``fsck --repair`` repairs the metadata and says so, and a second fsck shows only the
  corrupt block, which it said it cannot repair; ``--json`` says the same;
* reading the file with the flipped block through a mount gives EIO, never other bytes;
* gc reports the leaked block as too young under the default minimum age, takes it with
  ``--min-age 0``, deletes it with ``--delete``, and leaves every referenced block --
  the one only a history version refers to included.

A second fault injection covers every other repair ``fsck --repair`` claims (the table in
docs/operations.md, "fsck"), each fault planted through the engine: a file whose only entry
is lost, and one with no links that nothing holds or queues (both go to ``/lost+found``
with their content), an entry of the wrong type, a directory whose parent field is wrong,
an entry that does not decode, an entry in a missing directory, a linked file on the
deletion queue (its data must survive a mount's cleaner) and usage counters far off.
fsck names each one, ``--repair`` says what it did for each, a second fsck finds nothing,
and a mount shows the repaired tree.  A hard-linked file whose parent records (``P`` keys)
are gone (and one left names a directory it is not in) is repaired in a test of its own,
on etcd too, which refuses a transaction that deletes a range and puts keys inside it.

A last test runs fsck beside a live etcd mount that keeps writing: the re-check leaves no
problem to report.  The default run takes about a minute.
"""

from __future__ import annotations

import errno
import json
import os
import stat
import subprocess
import threading
from pathlib import Path

import msgpack
import pytest
from etcd_cluster import Member, etcd_procs, etcd_single, unique_prefix
from mounting import Mount, kvfs

from kvfs.chunk.cleanup import Cleaner
from kvfs.chunk.layout import decode_slices
from kvfs.kv.api import Delete, Put, prefix_end
from kvfs.meta import keys
from kvfs.meta.fsck import blocks_of
from kvfs.meta.records import Attr, decode_dentry, encode_dentry
from kvfs.objstore.api import BlockNotFound, block_name
from kvfs.volume import Volume, open_volume

__all__ = ["etcd_procs", "etcd_single"]  # fixtures used by this module

GONE_SESSION = 4242
LEAKED_SLICE = 987_654
WRONG_PARENT = 424_242
MISSING_DIR = 777_777_777
STRAY = 515_151  # a directory a parent record names, though no entry is in it


async def _ino(vol: Volume, name: bytes) -> int:
    got = await vol.kv.get(keys.dentry(keys.ROOT_INO, name))
    assert got is not None, name
    return decode_dentry(got.value)[1]


async def _blocks_of_file(vol: Volume, ino: int) -> list[str]:
    got = await vol.kv.get(keys.chunk(ino, 0))
    assert got is not None
    return [n for s in decode_slices(got.value) if s.id
            for n, _ in blocks_of(s.id, s.size, vol.fmt.block_size)]


async def _damage(url: str) -> dict[str, object]:
    """Damage the (unmounted) volume; returns what the checks need to know."""
    vol = await open_volume(url)
    try:
        kv = vol.kv
        data_ino = await _ino(vol, b"data.bin")
        (victim,) = await _blocks_of_file(vol, data_ino)
        key = keys.block(victim)
        raw = await kv.get(key)
        assert raw is not None
        flipped = bytearray(raw.value)
        flipped[-7] ^= 0x20
        await kv.commit((), [Put(key, bytes(flipped))])

        meta_ino = await _ino(vol, b"meta.bin")
        chunk = await kv.get(keys.chunk(meta_ino, 0))
        assert chunk is not None
        await kv.commit((), [Put(chunk.key, chunk.value[:-5])])

        links_ino = await _ino(vol, b"links.txt")
        got = await kv.get(keys.attr(links_ino))
        assert got is not None
        a = Attr.decode(got.value)
        a.nlink = 3
        await kv.commit((), [Put(got.key, a.encode())])

        await kv.commit((), [Put(keys.dentry(keys.ROOT_INO, b"ghost"),
                                 encode_dentry(8, 999_999_999))])
        good_ino = await _ino(vol, b"good.txt")
        leaked = block_name(LEAKED_SLICE, 0, 5)
        await vol.store.put(leaked, b"stray")

        # The removed file's slice: the cleaner (run here as a mount's would, with the
        # volume's retention) moves it to an R record, and a history version refers to it.
        # Without the R record only the version does.
        vol.meta.retain_seconds = vol.fmt.history_settings.retain_seconds
        cleaner = Cleaner(vol.meta, vol.slices)
        for item in (await kv.range(keys.DELFILE_PREFIX, b"E")).kvs:
            await cleaner.delete_inode_data(keys.key_ino(item.key))
        retained = await kv.range(keys.RETAINED_PREFIX, b"S", limit=100)
        assert retained.kvs, "overwriting a file with history on keeps its old slice"
        history_only = [n for item in retained.kvs for s in decode_slices(item.value)
                        if s.id for n, _ in blocks_of(s.id, s.size, vol.fmt.block_size)]
        await kv.commit((), (), [Delete(item.key) for item in retained.kvs])
        await kv.commit((), [Put(keys.sustained(GONE_SESSION, good_ino), b"")])
        return {"victim": victim, "data_ino": data_ino, "meta_ino": meta_ino,
                "links_ino": links_ino, "good_ino": good_ino, "leaked": leaked,
                "history_only": history_only}
    finally:
        await vol.aclose()


async def _present(url: str, names: list[str]) -> list[bool]:
    vol = await open_volume(url)
    try:
        out = []
        for n in names:
            try:
                await vol.store.get(n)
                out.append(True)
            except BlockNotFound:
                out.append(False)
        return out
    finally:
        await vol.aclose()


def _lines(res: subprocess.CompletedProcess[str]) -> list[str]:
    return res.stdout.splitlines()


async def _fault_injection(url: str, tmp_path: Path) -> None:
    # No trash: the removed file's slice must go the way of a deleted file's (to R).
    kvfs("format", url, "vol", "--trash-days", "0")
    m = Mount(url, tmp_path / "mnt")
    try:
        root = m.mountpoint
        good = os.urandom(3000)
        (root / "good.txt").write_bytes(good)
        (root / "data.bin").write_bytes(os.urandom(5000))
        (root / "meta.bin").write_bytes(os.urandom(4000))
        (root / "links.txt").write_bytes(b"one link\n")
        (root / "hist.txt").write_bytes(b"a version the history keeps\n")
        (root / "hist.txt").unlink()
        m.unmount()
    finally:
        m.cleanup()
    assert kvfs("fsck", url, check=False).returncode == 0
    facts = await _damage(url)
    victim, meta_ino, links_ino = facts["victim"], facts["meta_ino"], facts["links_ino"]

    res = kvfs("fsck", url, check=False)
    assert res.returncode == 1, res.stdout + res.stderr
    lines = _lines(res)
    expected = [
        "entry b'ghost' in directory 1 points to missing inode 999999999",
        f"inode {facts['good_ino']} is held open by session {GONE_SESSION}, which is gone",
        f"inode {links_ino} has nlink 3, expected 1",
        f"inode {meta_ino}: chunk 0 does not decode",
    ]
    for want in expected:
        assert sum(want in line for line in lines) == 1, (want, lines)
    corrupt = [ln for ln in lines if f"block {victim} is corrupt" in ln]
    assert len(corrupt) == 1 and corrupt[0].startswith(
        f"file /data.bin (inode {facts['data_ino']}), chunk 0: "), lines
    assert len(lines) == len(expected) + 2, lines  # and the summary

    fixed = kvfs("fsck", "--repair", url, check=False)
    assert fixed.returncode == 1, fixed.stdout + fixed.stderr
    out = fixed.stdout
    assert "repaired: removed a dangling entry (inode 999999999): b'ghost' in directory 1" \
        in out, out
    assert f"repaired: set nlink of inode {links_ino} to 1" in out, out
    assert f"repaired: dropped chunk 0 of inode {meta_ino}, which did not decode: the file " \
           "reads as zeros (a hole) there" in out, out
    assert f"repaired: released the hold of gone session {GONE_SESSION}" in out, out
    assert _lines(fixed)[-1].endswith(": 1 problems, 4 repaired"), out

    again = kvfs("fsck", url, check=False)
    assert again.returncode == 1
    assert _lines(again)[:-1] == corrupt, again.stdout
    as_json = json.loads(kvfs("fsck", "--json", url, check=False).stdout)
    assert [(p["kind"], p["repair"]) for p in as_json["problems"]] == [("block", None)]
    assert as_json["counts"]["problems"] == 1

    # A mount reads the corrupt block as EIO, never as other bytes.
    m = Mount(url, tmp_path / "mnt")
    try:
        with pytest.raises(OSError) as err:
            (m.mountpoint / "data.bin").read_bytes()
        assert err.value.errno == errno.EIO
        assert (m.mountpoint / "good.txt").read_bytes() == good
        m.unmount()
    finally:
        m.cleanup()

    leaked = str(facts["leaked"])
    history_only = list(facts["history_only"])  # type: ignore[call-overload]
    young = kvfs("gc", url, check=False)
    assert young.returncode == 0, young.stdout + young.stderr
    assert ": 0 unreferenced blocks (0 bytes), 1 more younger" in young.stdout, young.stdout
    report = kvfs("gc", "--min-age", "0", "--json", url, check=False)
    assert report.returncode == 1
    found = json.loads(report.stdout)
    assert [p["text"].split(" is ")[0] for p in found["problems"]] == [f"block {leaked}"]
    assert found["counts"]["unreferenced_bytes"] == 5
    assert await _present(url, [leaked]) == [True]
    gone = kvfs("gc", "--delete", "--min-age", "0", url, check=False)
    assert gone.returncode == 0, gone.stdout + gone.stderr
    assert "deleted 1 blocks (5 bytes)" in gone.stdout, gone.stdout
    assert await _present(url, [leaked, *history_only]) == [False] + [True] * len(
        history_only)
    final = kvfs("fsck", "--leaked", url, check=False)
    assert _lines(final)[:-1] == corrupt, final.stdout
    assert kvfs("gc", "--min-age", "0", url, check=False).returncode == 0


@pytest.mark.mount
async def test_fault_injection_embedded(tmp_path: Path) -> None:
    await _fault_injection(str(tmp_path / "store"), tmp_path)


@pytest.mark.mount
async def test_fault_injection_etcd(etcd_single: Member, tmp_path: Path) -> None:
    url = f"etcd://{etcd_single.endpoint}/{unique_prefix('fsckrep')}"
    await _fault_injection(url, tmp_path)


async def _damage_namespace(url: str) -> dict[str, int]:
    """Plant the namespace faults of the second fault injection (module docstring)."""
    vol = await open_volume(url)
    try:
        kv = vol.kv
        ino = {name: await _ino(vol, name.encode())
               for name in ("lost.txt", "zero.txt", "typed.txt", "sub", "queued.txt")}

        async def rewrite_attr(i: int, **fields: int) -> None:
            got = await kv.get(keys.attr(i))
            assert got is not None
            a = Attr.decode(got.value)
            for k, v in fields.items():
                setattr(a, k, v)
            await kv.commit((), [Put(got.key, a.encode())])

        await kv.commit((), (), [Delete(keys.dentry(keys.ROOT_INO, b"lost.txt"))])
        await kv.commit((), (), [Delete(keys.dentry(keys.ROOT_INO, b"zero.txt"))])
        await rewrite_attr(ino["zero.txt"], nlink=0)
        await kv.commit((), [Put(keys.dentry(keys.ROOT_INO, b"typed.txt"),
                                 encode_dentry(stat.S_IFDIR >> 12, ino["typed.txt"]))])
        await rewrite_attr(ino["sub"], parent=WRONG_PARENT)
        await kv.commit((), [Put(keys.dentry(keys.ROOT_INO, b"garbage"), b"\xc1\xc1")])
        await kv.commit((), [Put(keys.dentry(MISSING_DIR, b"stray"),
                                 encode_dentry(stat.S_IFREG >> 12, ino["typed.txt"]))])
        await kv.commit((), [Put(keys.delfile(ino["queued.txt"]),
                                 msgpack.packb([12, 1_700_000_000]))])
        await kv.commit((), [Put(keys.USED_SPACE, msgpack.packb(1 << 40))])
        return ino
    finally:
        await vol.aclose()


async def _namespace_repairs(url: str, tmp_path: Path) -> None:
    kvfs("format", url, "vol")
    content = {name: os.urandom(1000 + n) for n, name in enumerate(
        ("lost.txt", "zero.txt", "typed.txt", "queued.txt"))}
    m = Mount(url, tmp_path / "mnt")
    try:
        root = m.mountpoint
        for name, data in content.items():
            (root / name).write_bytes(data)
        (root / "sub").mkdir()
        m.unmount()
    finally:
        m.cleanup()
    assert kvfs("fsck", url, check=False).returncode == 0
    ino = await _damage_namespace(url)

    found = kvfs("fsck", url, check=False)
    assert found.returncode == 1, found.stdout + found.stderr
    expected = {
        "no-entry": f"inode {ino['lost.txt']} (-rw-r--r--) is not in any directory",
        "unreachable": f"inode {ino['zero.txt']} has no links, no session holds it open and "
                       "it is not queued for deletion",
        "entry-type": f"entry b'typed.txt' in directory 1 has type 4, inode "
                      f"{ino['typed.txt']} has 8",
        "dir-parent": f"directory {ino['sub']} is in 1 but its parent field says "
                      f"{WRONG_PARENT}",
        "bad-entry": "entry b'garbage' in directory 1 does not decode",
        "entry-in-missing-directory": f"entry b'stray' lives in missing directory "
                                      f"{MISSING_DIR}",
        "queued-linked": f"inode {ino['queued.txt']} is queued for deletion but still has "
                         "links",
        "usage": f"usage counters say {1 << 40} bytes",
    }
    as_json = json.loads(kvfs("fsck", "--json", url, check=False).stdout)
    kinds = sorted(p["kind"] for p in as_json["problems"])
    assert kinds == sorted(expected), kinds
    for p in as_json["problems"]:
        assert p["text"].startswith(expected[p["kind"]]), (p, expected[p["kind"]])
        assert p["repair"], p
    assert len(_lines(found)) == len(expected) + 1, found.stdout

    fixed = kvfs("fsck", "--repair", url, check=False)
    assert fixed.returncode == 0, fixed.stdout + fixed.stderr
    claims = [
        f"repaired: moved inode {ino['lost.txt']} to /lost+found/#{ino['lost.txt']}",
        f"repaired: moved inode {ino['zero.txt']} to /lost+found/#{ino['zero.txt']}",
        "repaired: set the type of entry b'typed.txt' in directory 1 to its inode's (8)",
        f"repaired: set the parent of directory {ino['sub']} to 1",
        "repaired: removed an entry that does not decode: b'garbage' in directory 1",
        f"repaired: removed entry b'stray' of missing directory {MISSING_DIR}",
        f"repaired: took inode {ino['queued.txt']}, which has links, off the deletion queue",
        "repaired: set the usage counters to ",
    ]
    for claim in claims:
        assert sum(claim in line for line in _lines(fixed)) == 1, (claim, fixed.stdout)
    assert _lines(fixed)[-1].endswith(": 0 problems, 8 repaired"), fixed.stdout
    assert kvfs("fsck", url, check=False).returncode == 0

    # What each repair claims, seen through the engine and through a mount.
    vol = await open_volume(url)
    try:
        got = await vol.kv.get(keys.attr(ino["sub"]))
        assert got is not None and Attr.decode(got.value).parent == keys.ROOT_INO
        assert await vol.kv.get(keys.delfile(ino["queued.txt"])) is None
        assert await vol.kv.get(keys.dentry(MISSING_DIR, b"stray")) is None
        used = await vol.kv.get(keys.USED_SPACE)
        assert used is not None and msgpack.unpackb(used.value) < 1 << 20
    finally:
        await vol.aclose()
    m = Mount(url, tmp_path / "mnt")
    try:
        root = m.mountpoint
        lost_found = root / "lost+found"
        assert stat.S_IMODE(lost_found.stat().st_mode) == 0o700
        assert sorted(os.listdir(lost_found)) == sorted(
            [f"#{ino['lost.txt']}", f"#{ino['zero.txt']}"])
        for name in ("lost.txt", "zero.txt"):
            moved = lost_found / f"#{ino[name]}"
            assert moved.read_bytes() == content[name]
            assert moved.stat().st_nlink == 1
        assert (root / "typed.txt").is_file()
        assert (root / "typed.txt").read_bytes() == content["typed.txt"]
        assert os.stat(root / "sub" / "..").st_ino == os.stat(root).st_ino
        assert "garbage" not in os.listdir(root)
        # The cleaner of this mount would have freed a queued file's data.
        assert (root / "queued.txt").read_bytes() == content["queued.txt"]
        m.unmount()
    finally:
        m.cleanup()
    assert kvfs("fsck", url, check=False).returncode == 0


@pytest.mark.mount
async def test_namespace_repairs_embedded(tmp_path: Path) -> None:
    await _namespace_repairs(str(tmp_path / "store"), tmp_path)


@pytest.mark.mount
async def test_namespace_repairs_etcd(etcd_single: Member, tmp_path: Path) -> None:
    await _namespace_repairs(f"etcd://{etcd_single.endpoint}/{unique_prefix('fsckns')}",
                             tmp_path)


async def _parent_records_repair(url: str, tmp_path: Path) -> None:
    """A file with two links whose parent records are lost but for one naming a directory
    it is not in: fsck finds it, ``--repair`` writes them again from the entries and
    removes the stray one."""
    kvfs("format", url, "vol")
    m = Mount(url, tmp_path / "mnt")
    try:
        (m.mountpoint / "sub").mkdir()
        (m.mountpoint / "hl").write_bytes(b"two links\n")
        os.link(m.mountpoint / "hl", m.mountpoint / "sub" / "hl2")
        m.unmount()
    finally:
        m.cleanup()
    vol = await open_volume(url)
    try:
        hl, sub = await _ino(vol, b"hl"), await _ino(vol, b"sub")
        parents = keys.link_parent_prefix(hl)
        assert (await vol.kv.range(parents, prefix_end(parents))).kvs, "two links: P records"
        await vol.kv.commit((), (), [Delete(parents, prefix_end(parents))])
        await vol.kv.commit((), [Put(keys.link_parent(hl, STRAY), keys.u64(1))])
    finally:
        await vol.aclose()
    found = kvfs("fsck", url, check=False)
    assert _lines(found)[:-1] == [f"inode {hl}'s parent records name directories "
                                  f"{{{STRAY}: 1}}, its entries are in {{1: 1, {sub}: 1}}"
                                  ], found.stdout
    fixed = kvfs("fsck", "--repair", url, check=False)
    assert fixed.returncode == 0, fixed.stdout + fixed.stderr
    assert f"repaired: rewrote the parent records of inode {hl}" in fixed.stdout
    vol = await open_volume(url)
    try:
        records = (await vol.kv.range(parents, prefix_end(parents))).kvs
        assert sorted(keys.link_parent_of(r.key) for r in records) == sorted([1, sub])
    finally:
        await vol.aclose()
    assert kvfs("fsck", url, check=False).returncode == 0


@pytest.mark.mount
async def test_parent_records_repair_embedded(tmp_path: Path) -> None:
    await _parent_records_repair(str(tmp_path / "store"), tmp_path)


@pytest.mark.mount
async def test_parent_records_repair_etcd(etcd_single: Member, tmp_path: Path) -> None:
    await _parent_records_repair(
        f"etcd://{etcd_single.endpoint}/{unique_prefix('fsckpr')}", tmp_path)


@pytest.mark.mount
def test_fsck_beside_a_busy_live_etcd_mount(etcd_single: Member, tmp_path: Path) -> None:
    """fsck of a volume a mount keeps changing reports nothing (it re-checks what it saw),
    and gc under the default minimum age takes none of the blocks being written."""
    url = f"etcd://{etcd_single.endpoint}/{unique_prefix('fscklive')}"
    kvfs("format", url, "vol")
    m = Mount(url, tmp_path / "mnt")
    stop = threading.Event()
    rounds = [0]

    def churn() -> None:
        d = m.mountpoint / "busy"
        d.mkdir()
        while not stop.is_set():
            i = rounds[0]
            (d / f"f{i % 20}").write_bytes(os.urandom(2000 + i))
            (d / f"sub{i % 5}").mkdir(exist_ok=True)
            if i % 3 == 0:
                (d / f"f{(i + 7) % 20}").unlink(missing_ok=True)
                os.replace(d / f"f{i % 20}", d / f"g{i % 4}")
            rounds[0] += 1

    writer = threading.Thread(target=churn)
    try:
        writer.start()
        for _ in range(3):
            res = kvfs("fsck", url, check=False)
            assert res.returncode == 0, res.stdout + res.stderr
            gc = kvfs("gc", url, check=False)
            assert gc.returncode == 0, gc.stdout + gc.stderr
        stop.set()
        writer.join()
        print(f"writer rounds during 3 fsck and gc runs: {rounds[0]}")
        assert rounds[0] > 0
        refused = kvfs("gc", "--delete", "--min-age", "0", url, check=False)
        assert refused.returncode == 1
        assert refused.stderr.startswith("kvfs: error: 1 sessions are live"), refused.stderr
        m.unmount()
    finally:
        stop.set()
        if writer.is_alive():
            writer.join()
        m.cleanup()


def test_gc_bad_min_age() -> None:
    res = kvfs("gc", "--min-age", "soon", "mem://", check=False)
    assert res.returncode == 1
    assert res.stderr.startswith("kvfs: error: --min-age 'soon': expected"), res.stderr

