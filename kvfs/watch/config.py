"""``kvfs watch --config FILE``: several watched trees in one TOML file.

The file::

    host = "web-1"          # optional: the name this host records under
    lease_ttl = 15          # optional: seconds (as --lease-ttl)

    [[watch]]
    path = "/etc/nginx"     # MOUNTPOINT/PATH, as the positional argument
    check = "nginx -t"
    reload = "nginx -s reload"
    quiet_ms = 500          # optional, as --quiet-ms
    timeout = 30            # optional, as --timeout

A value the file leaves out comes from the command line's flag, else the flag's default.
:func:`load` checks everything it can without touching the paths: unknown keys, missing
fields, wrong types and non-positive numbers are one :class:`ConfigError` naming the file
and the entry (``FILE: [[watch]] entry 2 (/etc/nginx): ...``).
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass

from kvfs.volume import VolumeError

TOP_KEYS = frozenset({"host", "lease_ttl", "watch"})
ENTRY_KEYS = frozenset({"path", "check", "reload", "quiet_ms", "timeout"})
REQUIRED = ("path", "check", "reload")


class ConfigError(VolumeError):
    """A watch config file that cannot be used; one line naming the file and the entry."""


@dataclass(frozen=True, slots=True)
class Defaults:
    """What an entry or the file leaves out."""

    host: str
    lease_ttl: float
    quiet_ms: float
    timeout: float


@dataclass(frozen=True, slots=True)
class Entry:
    path: str
    check: str
    reload: str
    quiet_ms: float
    timeout: float


@dataclass(frozen=True, slots=True)
class WatchFile:
    host: str
    lease_ttl: float
    entries: tuple[Entry, ...]


def _string(where: str, key: str, value: object) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"{where}: {key} must be a non-empty string")
    return value


def _seconds(where: str, key: str, value: object) -> float:
    # bool is an int to Python, but `timeout = true` is a mistake, not 1 second.
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0 \
            or value == float("inf"):
        raise ConfigError(f"{where}: {key} must be a positive number")
    return float(value)


def _unknown(where: str, table: dict[str, object], known: frozenset[str]) -> None:
    extra = sorted(set(table) - known)
    if extra:
        raise ConfigError(f"{where}: unknown key {extra[0]!r} (known: "
                          f"{', '.join(sorted(known))})")


def load(path: str, defaults: Defaults) -> WatchFile:
    """Read and check the config file at ``path``; ConfigError (or OSError if it cannot
    be read) on any problem.  Paths are returned as written; duplicates are an error."""
    try:
        with open(path, "rb") as f:
            doc = tomllib.load(f)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: not valid TOML: {e}") from None
    _unknown(path, doc, TOP_KEYS)
    host = _string(path, "host", doc.get("host", defaults.host))
    lease_ttl = _seconds(path, "lease_ttl", doc.get("lease_ttl", defaults.lease_ttl))
    tables = doc.get("watch")
    if tables is None:
        raise ConfigError(f"{path}: no [[watch]] entries")
    if not isinstance(tables, list) or not all(isinstance(t, dict) for t in tables):
        raise ConfigError(f"{path}: watch must be an array of tables ([[watch]])")
    entries: list[Entry] = []
    for n, table in enumerate(tables, 1):
        named = table.get("path")
        where = f"{path}: [[watch]] entry {n}" + (f" ({named})" if isinstance(named, str)
                                                  else "")
        _unknown(where, table, ENTRY_KEYS)
        for key in REQUIRED:
            if key not in table:
                raise ConfigError(f"{where}: missing {key!r}")
        entry = Entry(
            _string(where, "path", table["path"]), _string(where, "check", table["check"]),
            _string(where, "reload", table["reload"]),
            _seconds(where, "quiet_ms", table.get("quiet_ms", defaults.quiet_ms)),
            _seconds(where, "timeout", table.get("timeout", defaults.timeout)))
        if any(e.path.rstrip("/") == entry.path.rstrip("/") for e in entries):
            raise ConfigError(f"{where}: {entry.path} is watched twice")
        entries.append(entry)
    if not entries:
        raise ConfigError(f"{path}: no [[watch]] entries")
    return WatchFile(host, lease_ttl, tuple(entries))
