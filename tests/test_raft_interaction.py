"""Scripted interaction tests of the Raft core: one test per ``tests/raft_testdata/*.txt``.

Each script (format and commands: ``tests/raft_interaction.py``) is run against a fresh
in-memory cluster; the test fails with a unified diff when any command's output differs from
the output recorded under it.  ``KVFS_REWRITE_GOLDEN=1`` rewrites the recorded outputs in
place instead -- then read the diff: a golden file pins only what its reader checked.
"""

from __future__ import annotations

import difflib
import os
from pathlib import Path

import pytest
from raft_interaction import run_script

TESTDATA = Path(__file__).parent / "raft_testdata"
SCRIPTS = sorted(TESTDATA.glob("*.txt"))


@pytest.mark.parametrize("path", SCRIPTS, ids=[p.stem for p in SCRIPTS])
def test_interaction(path: Path) -> None:
    expected, actual = run_script(path)
    if actual == expected:
        return
    if os.environ.get("KVFS_REWRITE_GOLDEN") == "1":
        path.write_text(actual)
        return
    diff = difflib.unified_diff(expected.splitlines(), actual.splitlines(),
                                f"{path.name} (expected)", f"{path.name} (actual)",
                                lineterm="")
    pytest.fail("\n".join(diff), pytrace=False)
