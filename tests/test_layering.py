"""The layering of docs/architecture.md ("Layers"), kept by parsing every module of kvfs/.

Each module belongs to one component (``COMPONENTS``: the longest matching module prefix),
and ``ALLOWED`` lists, for each component, the components it may import besides itself.
Imports point downwards: ``fuse → vfs → chunk/meta → kv/objstore``, with the history beside
meta (its service at the vfs level), ``watch``, ``deploy`` and ``mountpath`` beside the CLI,
and ``cli`` free to import anything.  Every import counts, including lazy ones inside
functions and those under ``TYPE_CHECKING``.  Besides, only ``kvfs.fuse`` imports pyfuse3,
and the Raft core and the key table import only the standard library (tests/test_raft_purity.py
holds the pure packages to a stricter list).

``EXCEPTIONS`` names the few module-to-module imports that break the layering today, each
with its reason; the test fails when one of them goes away, so the list cannot go stale.
"""

from __future__ import annotations

import ast
import re
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# Module prefix -> component.  The longest prefix matching a module names its component;
# "kvfs" (the package itself, which holds __version__) matches only itself, so a new
# module or package must be placed here before it passes.
COMPONENTS: dict[str, str] = {
    "kvfs": "kvfs",
    "kvfs.cli": "cli",
    "kvfs.benchmarks": "benchmarks",
    "kvfs.dump": "dump",
    "kvfs.watch": "watch",
    "kvfs.deploy": "deploy",
    "kvfs.mountpath": "mountpath",
    "kvfs.fuse": "fuse",
    "kvfs.volume": "volume",
    "kvfs.history.service": "history.service",
    "kvfs.vfs": "vfs",
    "kvfs.history": "history",
    "kvfs.chunk": "chunk",
    "kvfs.chunk.layout": "chunk.layout",
    "kvfs.meta": "meta",
    "kvfs.meta.keys": "meta.keys",
    "kvfs.outage": "outage",
    "kvfs.errors": "errors",
    "kvfs.objstore": "objstore",
    "kvfs.kv": "kv",
    "kvfs.raftkv": "raftkv",
    "kvfs.durable": "durable",
    "kvfs.raft": "raft",
    "kvfs.raftsim": "raftsim",
    "kvfs.lincheck": "lincheck",
}

_MIDDLE = {"chunk", "chunk.layout", "meta", "meta.keys", "kv", "objstore", "outage", "errors"}

# Component -> the components it may import (besides itself).  "*": anything.
# docs/architecture.md (Layers) shows the same table; a test keeps the two equal.
ALLOWED: dict[str, set[str]] = {
    "cli": {"*"},
    "watch": {"deploy", "volume", "meta", "meta.keys", "kv", "errors"},
    "deploy": {"history", "errors"},
    "mountpath": {"fuse", "errors"},
    "benchmarks": {"volume", "fuse", "kv", "errors", "kvfs"},
    "dump": {"volume", "history", "chunk.layout", "meta.keys", "kv", "objstore", "outage",
             "errors", "kvfs"},
    "fuse": {"history.service", "volume", "vfs", "history", "raftkv", "durable", "kvfs"}
            | _MIDDLE,
    "volume": {"vfs", "history", "raftkv", "durable"} | _MIDDLE,
    "history.service": {"vfs", "history"} | _MIDDLE,
    "vfs": {"history"} | _MIDDLE,
    "history": set(_MIDDLE),
    "chunk": _MIDDLE - {"chunk"},
    # meta and chunk import each other only this narrowly: meta uses the pure slice codec.
    "meta": (_MIDDLE - {"meta", "chunk"}) | {"kvfs"},
    "outage": {"kv", "objstore"},
    "objstore": {"kv", "meta.keys", "durable"},  # kvblob names its blocks by the key table
    "kv": {"durable"},
    "raftkv": {"raft", "kv", "durable"},
    "raftsim": {"raft", "lincheck"},
    "raft": set(),
    "lincheck": set(),
    "meta.keys": set(),  # the key table: importable from any layer, so it imports nothing
    "chunk.layout": set(),
    "errors": set(),
    "durable": set(),
    "kvfs": set(),
}

# (importer, imported) -> why this upward import exists.  Remove an entry when it is fixed.
EXCEPTIONS: dict[tuple[str, str], str] = {}

# Third-party or standard modules -> the only components that may import them.
RESTRICTED = {"pyfuse3": {"fuse"}}
STDLIB_ONLY = {"raft", "meta.keys"}


def component(module: str) -> str | None:
    best = None
    for prefix in COMPONENTS:
        covers = module == prefix or (prefix != "kvfs" and module.startswith(prefix + "."))
        if covers and (best is None or len(prefix) > len(best)):
            best = prefix
    return COMPONENTS[best] if best is not None else None


def module_files() -> dict[str, Path]:
    out = {}
    for path in sorted((ROOT / "kvfs").rglob("*.py")):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def imports_of(module: str, source: str, known: set[str],
               is_package: bool = False) -> list[tuple[str, int]]:
    """Every module ``module`` imports, anywhere in its source, with the line.

    ``from P import name`` counts as importing ``P.name`` when that is a module in
    ``known``, else ``P``."""
    found: list[tuple[str, int]] = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.extend((a.name, node.lineno) for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                package = module.split(".")
                if not is_package:
                    package.pop()
                package = package[:len(package) - node.level + 1]
                base = ".".join(package + ([base] if base else []))
            for a in node.names:
                full = f"{base}.{a.name}"
                found.append((full if full in known else base, node.lineno))
    return found


def violations(graph: Mapping[str, Iterable[tuple[str, int]]],
               exceptions: Mapping[tuple[str, str], str] = EXCEPTIONS) -> list[str]:
    """Imports in ``graph`` (module -> imported names with lines) that break the rules."""
    out = []
    for module, imported in sorted(graph.items()):
        mine = component(module)
        if mine is None:
            out.append(f"{module}: not placed in any component (add it to COMPONENTS)")
            continue
        for name, line in imported:
            top = name.split(".")[0]
            if top == "kvfs":
                theirs = component(name)
                if theirs is None:
                    out.append(f"{module}:{line} imports {name}, which is in no component")
                elif theirs != mine and "*" not in ALLOWED[mine] \
                        and theirs not in ALLOWED[mine] and (module, name) not in exceptions:
                    out.append(f"{module}:{line} ({mine}) imports {name} ({theirs})")
            elif top in RESTRICTED and mine not in RESTRICTED[top]:
                out.append(f"{module}:{line} imports {name}: only "
                           f"{sorted(RESTRICTED[top])} may")
            elif mine in STDLIB_ONLY and top not in sys.stdlib_module_names \
                    and top != "__future__":
                out.append(f"{module}:{line} imports {name}: {mine} uses only the standard "
                           f"library")
    return out


def kvfs_graph() -> dict[str, list[tuple[str, int]]]:
    files = module_files()
    known = set(files)
    return {m: imports_of(m, p.read_text(), known, p.name == "__init__.py")
            for m, p in files.items()}


# -- the codebase ----------------------------------------------------------------------


def test_every_import_follows_the_layers() -> None:
    graph = kvfs_graph()
    assert len(graph) > 100, "kvfs/ looks empty"
    problems = violations(graph)
    assert not problems, "layering broken (see docs/architecture.md, Layers):\n" + \
        "\n".join(problems)


def test_every_exception_is_still_needed() -> None:
    graph = kvfs_graph()
    for (importer, imported), why in EXCEPTIONS.items():
        assert imported in {n for n, _ in graph.get(importer, [])}, \
            f"{importer} no longer imports {imported} ({why}): remove the exception"
        assert violations({importer: [(imported, 0)]}, exceptions={}), \
            f"{importer} -> {imported} is allowed anyway: remove the exception"


def test_the_allowed_edges_form_layers() -> None:
    """Every named component exists, and no chain of allowed imports leads back to where it
    started (cli aside, which sits on top)."""
    names = set(COMPONENTS.values())
    assert set(ALLOWED) == names
    for comp, targets in ALLOWED.items():
        assert targets - {"*"} <= names, (comp, targets - names)
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(comp: str, path: list[str]) -> None:
        assert state.get(comp) != 1, "cycle: " + " -> ".join([*path, comp])
        if state.get(comp) == 2:
            return
        state[comp] = 1
        for t in sorted(ALLOWED[comp] - {"*"}):
            visit(t, [*path, comp])
        state[comp] = 2

    for comp in sorted(names - {"cli"}):
        visit(comp, [])


def doc_table() -> dict[str, set[str]]:
    """The table under "## Layers" in docs/architecture.md: part(s) -> what they may import
    (the backquoted names of each cell; "anything" is "*")."""
    text = (ROOT / "docs" / "architecture.md").read_text()
    section = text.split("\n## Layers\n", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| ")][1:]
    assert rows, "docs/architecture.md has no table of allowed imports under Layers"
    out: dict[str, set[str]] = {}
    for row in rows:
        parts, targets = (cell.strip() for cell in row.strip("|").split("|"))
        names = set(re.findall(r"`([^`]+)`", targets))
        if targets == "anything":
            names = {"*"}
        for part in re.findall(r"`([^`]+)`", parts):
            assert part not in out, f"{part} has two rows"
            out[part] = names
    return out


def test_the_doc_shows_the_same_table() -> None:
    assert doc_table() == ALLOWED


# -- the checker itself, on made-up modules --------------------------------------------


def test_checker_flags_a_lower_layer_importing_a_higher_one() -> None:
    fake = {
        "kvfs.meta.metadata": [("kvfs.vfs.fs", 3)],
        "kvfs.kv.local": [("kvfs.meta.keys", 4)],
        "kvfs.vfs.fs": [("kvfs.fuse.ops", 5)],
        "kvfs.chunk.layout": [("kvfs.chunk.slices", 6)],
        "kvfs.meta.fsck": [("kvfs.chunk.filedata", 7)],
        "kvfs.raft.core": [("kvfs.raftkv.node", 8)],
        "kvfs.history.store": [("kvfs.history.service", 9)],
        "kvfs.objstore.kvblob": [("kvfs.meta.metadata", 10)],
    }
    problems = violations(fake)
    assert len(problems) == len(fake), problems
    for module, [(name, line)] in fake.items():
        assert any(p.startswith(f"{module}:{line} ") and name in p for p in problems)


def test_checker_accepts_downward_imports() -> None:
    fake = {
        "kvfs.fuse.ops": [("kvfs.vfs.fs", 1), ("pyfuse3", 2), ("trio", 3)],
        "kvfs.vfs.fs": [("kvfs.chunk.filedata", 1), ("kvfs.history.recorder", 2)],
        "kvfs.history.service": [("kvfs.vfs.fs", 1)],
        "kvfs.chunk.cleanup": [("kvfs.meta.metadata", 1)],
        "kvfs.meta.metadata": [("kvfs.chunk.layout", 1), ("kvfs.kv.api", 2)],
        "kvfs.objstore.kvblob": [("kvfs.meta.keys", 1), ("kvfs.kv.api", 2)],
        "kvfs.cli.anything": [("kvfs.fuse.mount", 1), ("kvfs.raft.core", 2)],
        "kvfs.raft.core": [("collections", 1), ("kvfs.raft.types", 2)],
    }
    assert violations(fake) == []


def test_checker_flags_restricted_and_unplaced_modules() -> None:
    problems = violations({
        "kvfs.vfs.fs": [("pyfuse3", 1)],
        "kvfs.raft.core": [("trio", 2)],
        "kvfs.meta.keys": [("msgpack", 3)],
        "kvfs.newthing": [("kvfs.kv.api", 4)],
    })
    assert len(problems) == 4, problems
    for expected in ("kvfs.vfs.fs:1 imports pyfuse3", "kvfs.raft.core:2 imports trio",
                     "kvfs.meta.keys:3 imports msgpack", "kvfs.newthing: not placed"):
        assert any(p.startswith(expected) for p in problems), (expected, problems)


def test_checker_sees_lazy_and_relative_imports() -> None:
    source = (
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n"
        "    from kvfs.fuse import ops\n"
        "def f() -> None:\n"
        "    import kvfs.vfs.fs\n"
        "    from . import records\n"
        "    from .keys import attr\n"
    )
    known = {"kvfs.fuse.ops", "kvfs.meta.records", "kvfs.meta.keys"}
    found = imports_of("kvfs.meta.metadata", source, known)
    assert ("kvfs.fuse.ops", 3) in found
    assert ("kvfs.vfs.fs", 5) in found
    assert ("kvfs.meta.records", 6) in found
    assert ("kvfs.meta.keys", 7) in found
    problems = violations({"kvfs.meta.metadata": found})
    assert len(problems) == 2, problems


@pytest.mark.parametrize("module,expected", [
    ("kvfs", "kvfs"), ("kvfs.raft.core", "raft"), ("kvfs.raftkv.node", "raftkv"),
    ("kvfs.raftsim.world", "raftsim"), ("kvfs.meta.keys", "meta.keys"),
    ("kvfs.meta.fsck", "meta"), ("kvfs.chunk.layout", "chunk.layout"),
    ("kvfs.history.service", "history.service"),
    ("kvfs.history.store", "history"), ("kvfs.deploy", "deploy"), ("kvfsx", None),
    ("kvfs.newthing", None),
])
def test_components_match_by_whole_names(module: str, expected: str | None) -> None:
    assert component(module) == expected
