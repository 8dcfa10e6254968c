"""Progress bars of the commands that can run long -- deploy, bench small, fsck, gc, dump
and load -- on a real embedded volume: with stderr a pipe the bars write nothing at all
(stderr stays empty, or holds only a command's own summary lines), and with stderr a
pseudo-terminal (python's ``pty``) each draws its bar there, labelled, while stdout -- a
pipe -- carries the same result as without one.  Also the helper itself: a log line now
and then when asked for one, phases on one line.

About 20 s on the 2-core machine.
"""

from __future__ import annotations

import fcntl
import io
import os
import pty
import struct
import subprocess
import termios
import threading
from pathlib import Path

import pytest
from mounting import KVFS, Mount, kvfs

from kvfs.cli.progress import Progress

# What a drawn tqdm bar always holds: the percentage and the bar's left edge.
BAR = "%|"


def under_pty(*args: str) -> tuple[int, str, str]:
    """Run ``kvfs ARGS`` with stderr a pseudo-terminal 100 columns wide and stdout a pipe;
    (exit status, stdout, everything written to the terminal)."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))
    try:
        proc = subprocess.Popen([*KVFS, *args], stdin=subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=slave, text=True)
    finally:
        os.close(slave)
    chunks: list[bytes] = []

    def drain() -> None:  # a full terminal would block the command
        while True:
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO: every writer of the terminal is gone
                return
            if not data:
                return
            chunks.append(data)

    reader = threading.Thread(target=drain)
    reader.start()
    try:
        out, _ = proc.communicate(timeout=120)
    finally:
        reader.join(30)
        os.close(master)
    return proc.returncode, out, b"".join(chunks).decode(errors="replace")


def quiet(*args: str, own_lines: int = 0) -> str:
    """Run ``kvfs ARGS`` with stderr a pipe: exit 0 and no bar -- nothing on stderr but
    the command's ``own_lines`` summary lines, no carriage return; returns stdout."""
    res = kvfs(*args)
    assert "\r" not in res.stderr and BAR not in res.stderr, repr(res.stderr)
    assert len(res.stderr.splitlines()) == own_lines, res.stderr
    return res.stdout


def drawn(label: str, *args: str, total: bool = True) -> str:
    """Run ``kvfs ARGS`` under a terminal: exit 0, a bar labelled ``label`` drawn there
    (with a percentage when ``total``), none on stdout; returns stdout."""
    rc, out, tty = under_pty(*args)
    assert rc == 0, tty
    assert label in tty, tty
    if total:
        assert BAR in tty, tty
    assert "\r" not in out and label not in out, out
    print(f"kvfs {args[0]}: {len(tty)} bytes of progress on the terminal")
    return out


@pytest.mark.mount
def test_bars_only_on_a_terminal(tmp_path: Path) -> None:
    store = str(tmp_path / "store")
    kvfs("format", store, "bars")
    src = tmp_path / "src"
    (src / "d").mkdir(parents=True)
    for n in range(30):
        (src / "d" / f"f{n}").write_bytes(os.urandom(1000 + n))
    (src / "big").write_bytes(os.urandom(3 << 20))

    m = Mount(store, tmp_path / "m", "metrics=off")
    try:
        root = m.mountpoint
        assert quiet("deploy", str(src), str(root / "one")).startswith("deployed ")
        assert drawn("staging", "deploy", str(src), str(root / "two")).startswith("deployed ")
        assert "stat /s" in quiet("bench", "small", str(root), "--count", "50")
        assert "stat /s" in drawn("bench small", "bench", "small", str(root), "--count", "300")
        m.unmount()
    finally:
        m.cleanup()

    plain = quiet("fsck", store)
    assert drawn("verifying data", "fsck", store) == plain
    plain = quiet("gc", store)
    assert drawn("checking blocks", "gc", store) == plain
    dump = str(tmp_path / "vol.dump")
    quiet("dump", store, dump, "--with-data", own_lines=1)  # its summary
    drawn("dumping", "dump", store, str(tmp_path / "again.dump"), "--with-data", total=False)
    quiet("load", str(tmp_path / "copy1"), dump, own_lines=1)
    drawn("loading", "load", str(tmp_path / "copy2"), dump, total=False)


def test_log_lines_now_and_then_and_phases() -> None:
    now = [0.0]
    log = io.StringIO()  # not a terminal
    with Progress("copying", total=4 << 20, unit="B", log_every=10, stream=log,
                  clock=lambda: now[0]) as bar:
        bar.set(1 << 20, "1/4 files")
        assert log.getvalue() == ""  # too soon
        now[0] = 10.0
        bar.advance(1 << 20, "2/4 files")
        bar.set(1 << 20)  # never backwards
        bar.set(4 << 20, "4/4 files")
        bar.set(4 << 20)  # the last line once
        bar.phase("checking", total=3, unit="file")
        now[0] = 25.0
        bar.advance(2)
    assert log.getvalue() == ("copying: 2/4 files, 2.0 MiB of 4.0 MiB (50%)\n"
                              "copying: 4/4 files, 4.0 MiB of 4.0 MiB (100%)\n"
                              "checking: 2 of 3 files (66%)\n")
    silent = io.StringIO()
    with Progress("deleting", unit="key", stream=silent) as bar:  # no log_every: nothing
        now[0] = 100.0
        bar.advance(5)
    assert silent.getvalue() == ""
