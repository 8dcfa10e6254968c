"""The mount table, and finding kvfs mounts in it (issue 7, defect 6).

/proc/self/mounts escapes spaces, tabs, newlines and backslashes in paths, and names a
mountpoint by its canonical path: ``kvfs umount`` must accept a mountpoint with a space
in its name, and one reached through a symlink.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from mounting import is_mounted, kvfs, require_fuse

from kvfs.fuse import mounttab


def test_parse_undoes_octal_escapes() -> None:
    table = (b"sysfs /sys sysfs rw,nosuid 0 0\n"
             b"/srv/vol /mnt/a\\040b\\011c\\012d\\134e fuse.kvfs rw,allow_other 0 0\n"
             b"etcd://h:1/x /mnt/a\\040b\\011c\\012d\\134e fuse.kvfs ro 0 0\n"
             b"/dev/sda1 /mnt/caf\xc3\xa9\\134040 ext4 rw 0 0\n")
    entries = mounttab.parse(table)
    assert [e.mountpoint for e in entries] == [
        "/sys", "/mnt/a b\tc\nd\\e", "/mnt/a b\tc\nd\\e", "/mnt/café\\040"]
    assert entries[1] == mounttab.MountEntry("/srv/vol", "/mnt/a b\tc\nd\\e", "fuse.kvfs",
                                             "rw,allow_other")
    assert entries[1].is_kvfs and not entries[0].is_kvfs


def test_find_sees_the_mounts_of_this_system() -> None:
    root = mounttab.find("/")
    assert root is not None and root.fstype
    assert mounttab.find("/no/such/mountpoint") is None


@pytest.fixture
def volume(tmp_path: Path) -> str:
    store = tmp_path / "store"
    kvfs("format", str(store), "mt")
    return str(store)


def _cleanup(mp: Path) -> None:
    if is_mounted(mp):
        subprocess.run(["fusermount3", "-u", "-z", str(mp)], check=False)


@pytest.mark.mount
def test_umount_mountpoint_with_a_space(volume: str, tmp_path: Path) -> None:
    require_fuse()
    mp = tmp_path / "two words"
    mp.mkdir()
    kvfs("mount", "-d", "--log", str(tmp_path / "log"), volume, str(mp))
    try:
        assert is_mounted(mp)
        (mp / "f").write_text("x")
        kvfs("umount", str(mp))
        assert not is_mounted(mp)
    finally:
        _cleanup(mp)


@pytest.mark.mount
def test_mount_and_umount_through_a_symlink(volume: str, tmp_path: Path) -> None:
    require_fuse()
    real = tmp_path / "real"
    real.mkdir()
    link = tmp_path / "link"
    link.symlink_to(real)
    kvfs("mount", "-d", "--log", str(tmp_path / "log"), volume, str(link))
    try:
        assert is_mounted(real)  # the kernel names it by its canonical path
        kvfs("umount", str(link))
        assert not is_mounted(real)
        assert os.path.islink(link)
    finally:
        _cleanup(real)
