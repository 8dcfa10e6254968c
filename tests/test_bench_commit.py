"""``kvfs bench commit``: commit throughput and latency of an engine, from worker processes
(here an embedded store); bad input is one line and a non-zero exit."""

from __future__ import annotations

import json
from pathlib import Path

import trio
from mounting import kvfs

from kvfs.volume import open_engine


def test_bench_commit_measures_and_cleans_up(tmp_path: Path) -> None:
    store = tmp_path / "vol"
    kvfs("format", str(store), "bench")
    res = kvfs("bench", "commit", str(store), "--clients", "3", "--seconds", "0.5",
               "--processes", "1", "--json")
    figures = json.loads(res.stdout)
    assert figures["clients"] == 3 and figures["commits"] > 0
    assert 0 < figures["p50_ms"] <= figures["p99_ms"]

    async def leftovers() -> int:
        kv = await open_engine(str(store))
        try:
            return len((await kv.range(b"/kvfs-bench/", b"/kvfs-bench0")).kvs)
        finally:
            await kv.aclose()

    assert trio.run(leftovers) == 0


def test_bench_commit_bad_input(tmp_path: Path) -> None:
    store = tmp_path / "vol"
    kvfs("format", str(store), "bench")
    for args, words in ((["--clients", "0"], "clients"),
                        (["--seconds", "-1"], "seconds")):
        res = kvfs("bench", "commit", str(store), *args, check=False)
        assert res.returncode != 0
        lines = res.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("kvfs: error: ") and words in lines[0]
    res = kvfs("bench", "commit", str(tmp_path / "missing"), "--seconds", "0.2", check=False)
    assert res.returncode != 0 and len(res.stderr.strip().splitlines()) == 1
