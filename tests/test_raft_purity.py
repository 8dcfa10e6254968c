"""The pure packages stay pure: the Raft core, its simulator and the linearizability checker
import nothing from the rest of kvfs and nothing that does I/O, and draw no randomness of
their own (the core gets a seeded ``random.Random`` from its host)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# Standard-library modules a pure package may import.  Everything here is computation only.
ALLOWED_STDLIB = {
    "__future__", "abc", "bisect", "collections", "copy", "dataclasses", "enum", "functools",
    "hashlib", "heapq", "itertools", "math", "operator", "random", "struct", "typing",
}

# Which kvfs packages each pure package may use besides itself.
PURE_PACKAGES = {
    "kvfs.raft": set(),
    "kvfs.lincheck": set(),
    "kvfs.raftsim": {"kvfs.raft", "kvfs.lincheck"},
}

# Command-line entry points may parse arguments and print; nothing else may.
ENTRY_POINT_EXTRA = {"argparse", "sys", "time", "concurrent", "os"}


def _modules(package: str) -> list[Path]:
    directory = ROOT / package.replace(".", "/")
    return sorted(directory.rglob("*.py"))


def _imports(path: Path) -> list[tuple[str, int]]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found: list[tuple[str, int]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.extend((alias.name, node.lineno) for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.module, node.lineno))
    return found


@pytest.mark.parametrize("package", sorted(PURE_PACKAGES))
def test_pure_package_imports_only_computation(package: str) -> None:
    modules = _modules(package)
    assert modules, f"{package} has no modules"
    allowed_kvfs = PURE_PACKAGES[package] | {package}
    problems = []
    for path in modules:
        extra = ENTRY_POINT_EXTRA if path.name == "__main__.py" else set()
        for name, line in _imports(path):
            top = name.split(".")[0]
            if top == "kvfs":
                if not any(name == p or name.startswith(p + ".") for p in allowed_kvfs):
                    problems.append(f"{path.relative_to(ROOT)}:{line} imports {name}")
            elif top not in ALLOWED_STDLIB | extra:
                problems.append(f"{path.relative_to(ROOT)}:{line} imports {name}")
    assert not problems, "\n".join(problems)


def test_raft_core_draws_no_randomness_of_its_own() -> None:
    """Only ``random.Random`` (the type of the host's seeded generator) may be named."""
    problems = []
    for path in _modules("kvfs.raft"):
        for node in ast.walk(ast.parse(path.read_text())):
            if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
                    and node.value.id == "random" and node.attr != "Random"):
                problems.append(f"{path.relative_to(ROOT)}:{node.lineno} uses random.{node.attr}")
            if isinstance(node, ast.ImportFrom) and node.module == "random":
                problems.append(f"{path.relative_to(ROOT)}:{node.lineno} imports from random")
    assert not problems, "\n".join(problems)


def test_importing_the_core_loads_no_other_kvfs_module() -> None:
    code = ("import sys, kvfs.raft; "
            "print('\\n'.join(m for m in sys.modules if m.startswith('kvfs.') "
            "and not m.startswith('kvfs.raft')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=ROOT).stdout.split()
    assert out == [], out
