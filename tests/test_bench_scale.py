"""Smoke test of ``kvfs bench scale`` (kvfs.benchmarks.scale): it runs and prints every row.

Runs the real command at tiny sizes -- directories of 20 and 50 entries, volumes of 200
and 1,200 files, two writing mounts for 1 s per phase -- on the default engines (embedded
volumes, an etcd the run starts for the mounts part), and the directory and volume parts
once more on etcd, and checks that each table has one row per size or mount with a
number in every cell, and that nothing the run started is left behind: no mount, no
process, no directory.  Speed
is never asserted.  A bad argument is one line on stderr and exit status 1.

Needs root, /dev/fuse and Debian's etcd; a missing one fails the test.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
from etcd_cluster import require_etcd
from mounting import KVFS, left_behind, require_fuse

pytestmark = pytest.mark.mount

NUMBER = re.compile(r"^[0-9][0-9,]*(\.[0-9]+)?$")


def _tables(out: str) -> dict[str, list[list[str]]]:
    """Each table of the output under its title: the rows' cells, headings left out."""
    tables: dict[str, list[list[str]]] = {}
    title = ""
    for line in out.splitlines():
        if line.startswith("### "):
            title = line[4:]
            tables[title] = []
        elif line.startswith("| ") and title:
            tables[title].append([c.strip() for c in line.strip("|").split("|")])
    return {t: rows[1:] for t, rows in tables.items()}  # the first row is the headings


def _check_numbers(rows: list[list[str]], first: int, allow_empty: bool = False) -> None:
    for row in rows:
        for cell in row[first:]:
            assert NUMBER.match(cell) or (allow_empty and cell == ""), row


def _run(root: Path, *args: str) -> dict[str, list[list[str]]]:
    """Run ``kvfs bench scale ARGS`` in ``root``; its tables, once it left nothing behind."""
    require_fuse()
    require_etcd()
    res = subprocess.run([*KVFS, "bench", "scale", *args, "--dir", str(root)],
                         capture_output=True, text=True, timeout=300)
    print(res.stdout)
    assert res.returncode == 0, res.stderr[-3000:]
    assert re.search(r"load average \(1, 5, 15 min\): [0-9.]+, .* at the start, "
                     r"[0-9.]+, .* at the end", res.stdout), res.stdout
    assert left_behind(root) == []
    return _tables(res.stdout)


def test_every_row_is_printed(tmp_path: Path) -> None:
    """The default engines: embedded volumes, and an etcd for the mounts part."""
    tables = _run(tmp_path, "--entries", "20,50", "--files", "200,1200", "--mounts", "2",
                  "--seconds", "1", "--samples", "10")
    assert len(tables) == 3, tables
    directory = tables["One directory of N entries"]
    assert [r[0] for r in directory] == ["20", "50"], directory
    _check_numbers(directory, 1)
    volume = tables["A volume of M files"]
    assert [r[:2] for r in volume] == [["200", "1"], ["1,200", "2"]], volume
    _check_numbers(volume, 1)
    mounts = tables["2 mounts changing files in one etcd volume, 1 s per phase"]
    assert [r[0] for r in mounts] == ["writer 0", "writer 1", "observer, nothing cached",
                                      "observer, all cached (ls -lR)", "etcd server"], mounts
    _check_numbers(mounts, 1, allow_empty=True)
    assert int(mounts[0][4]) > 0 and int(mounts[1][4]) == 0, mounts  # writer 0 went alone
    assert all(int(r[5]) > 0 for r in mounts[:2]), mounts  # then both wrote


def test_on_etcd(tmp_path: Path) -> None:
    """--engine etcd: the directory and volume parts on the etcd the run starts."""
    tables = _run(tmp_path, "--engine", "etcd", "--parts", "dir,volume", "--entries", "30",
                  "--files", "150", "--samples", "10")
    assert list(tables) == ["One directory of N entries", "A volume of M files"], tables
    assert [r[0] for r in tables["One directory of N entries"]] == ["30"]
    assert [r[:2] for r in tables["A volume of M files"]] == [["150", "1"]]
    for rows in tables.values():
        _check_numbers(rows, 1)


def test_bad_argument_is_one_line(tmp_path: Path) -> None:
    res = subprocess.run([*KVFS, "bench", "scale", "--parts", "dir,nope", "--dir",
                          str(tmp_path)], capture_output=True, text=True, timeout=60)
    assert res.returncode == 1
    assert res.stderr == "kvfs: error: unknown part 'nope': choose from dir, volume, watch\n"
    assert left_behind(tmp_path) == []
