"""The one-line error contract of ``kvfs``, for errors raised side by side in a group."""

from __future__ import annotations

import argparse
import sys
import types

import pytest

from kvfs.cli import main as cli_main
from kvfs.errors import VolumeError


def _command(exc: BaseException) -> types.ModuleType:
    mod = types.ModuleType("kvfs.cli.fake")

    def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:  # type: ignore[type-arg]
        return sub.add_parser("fake")  # type: ignore[no-any-return]

    def run(args: argparse.Namespace) -> int:
        raise exc

    mod.add_parser = add_parser  # type: ignore[attr-defined]
    mod.run = run  # type: ignore[attr-defined]
    return mod


def test_a_group_of_user_errors_is_one_line(monkeypatch: pytest.MonkeyPatch,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    group = ExceptionGroup("tasks", [VolumeError("first problem\nmore"),
                                     ExceptionGroup("inner", [OSError("second")])])
    monkeypatch.setitem(sys.modules, "kvfs.cli.fake", _command(group))
    monkeypatch.setattr(cli_main, "COMMANDS", ("fake",))
    assert cli_main.main(["fake"]) == 1
    assert capsys.readouterr().err == "kvfs: error: first problem\n"


def test_a_group_holding_a_bug_keeps_its_traceback(monkeypatch: pytest.MonkeyPatch) -> None:
    group = ExceptionGroup("tasks", [VolumeError("fine"), KeyError("a bug")])
    monkeypatch.setitem(sys.modules, "kvfs.cli.fake", _command(group))
    monkeypatch.setattr(cli_main, "COMMANDS", ("fake",))
    with pytest.raises(ExceptionGroup):
        cli_main.main(["fake"])
