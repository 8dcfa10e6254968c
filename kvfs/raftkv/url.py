"""Parsing ``raft://`` metadata URLs into a :class:`RaftURL` (no I/O, no secrets kept).

Form: ``raft://HOST:PORT[,HOST:PORT...]/PREFIX[?cacert=&cert=&key=&timeout=]``.

* The endpoints are the members' *client* addresses (``kvfs raft serve``), each with an
  explicit port: the Raft store has no well-known port.  IPv6 hosts go in brackets.  The
  client starts with the first one and fails over in order.
* ``PREFIX`` (required) namespaces the volume: key ``k`` lives at ``PREFIX/k`` in the store.
  It is one path component of letters, digits, ``.``, ``_`` and ``-``, so two prefixes can
  never nest (``a`` and ``a/b`` would overlap) -- the same rule as ``etcd://``.
* ``cacert`` turns TLS on (the CA that signed the members' certificates); ``cert`` and
  ``key`` (together, and only with ``cacert``) are the client certificate for members that
  demand one.  ``timeout`` (seconds, default 30) bounds how long one call keeps trying
  before it fails with ``EngineUnavailable``.

Invariant: the URL holds only paths and numbers, never a secret, so :meth:`RaftURL.describe`
and every parse error may be shown as they are.  Every error is a one-line
:class:`ValueError`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import quote

from kvfs.kv.urlquery import check_tls, parse_query, parse_timeout, safe

DEFAULT_TIMEOUT = 30.0
SCHEME = "raft://"

_PREFIX_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*\Z")
_HOST_RE = re.compile(r"(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._-]+):(\d{1,5})\Z")
_KNOWN = ("cacert", "cert", "key", "timeout")


@dataclass(frozen=True, slots=True)
class RaftURL:
    """A parsed ``raft://`` URL (see module docstring)."""

    endpoints: tuple[str, ...]  # "host:port", IPv6 hosts in brackets
    prefix: str
    cacert: str | None = None
    cert: str | None = None
    key: str | None = None
    timeout: float = DEFAULT_TIMEOUT

    @property
    def tls(self) -> bool:
        return self.cacert is not None

    @property
    def key_prefix(self) -> bytes:
        """What every key of this volume starts with in the store: ``PREFIX/``."""
        return self.prefix.encode() + b"/"

    def describe(self) -> str:
        """The canonical URL (it never holds a secret)."""
        query = [f"{name}={quote(value, safe='/._-')}"
                 for name in ("cacert", "cert", "key")
                 if (value := getattr(self, name)) is not None]
        if self.timeout != DEFAULT_TIMEOUT:
            query.append(f"timeout={self.timeout:g}")
        tail = "?" + "&".join(query) if query else ""
        return f"{SCHEME}{','.join(self.endpoints)}/{self.prefix}{tail}"


def split_endpoint(endpoint: str) -> tuple[str, int]:
    """``"host:port"`` (as in :attr:`RaftURL.endpoints`) as a host to connect to and a port."""
    host, _, port = endpoint.rpartition(":")
    if host.startswith("["):
        host = host[1:-1]
    return host, int(port)


def parse_raft_url(url: str) -> RaftURL:
    """Parse ``url``; :class:`ValueError` with a one-line message if it is malformed."""
    if not url.startswith(SCHEME):
        raise ValueError(f"not a raft URL (expected raft://HOST:PORT/PREFIX): {safe(url)}")
    rest, _, query = url[len(SCHEME):].partition("?")
    hosts, slash, prefix = rest.partition("/")
    if not hosts:
        raise ValueError("raft URL needs at least one member: raft://HOST:PORT/PREFIX")
    if not slash or not prefix:
        raise ValueError("raft URL needs a volume prefix: raft://HOST:PORT/PREFIX")
    if not _PREFIX_RE.match(prefix):
        raise ValueError(f"invalid raft URL prefix {safe(prefix)!r} (one name of letters, "
                         "digits, . _ -; no slashes)")
    endpoints = tuple(_endpoint(h) for h in hosts.split(","))
    if len(set(endpoints)) != len(endpoints):
        raise ValueError("raft URL lists a member endpoint twice")
    params = parse_query(query, "raft URL", _KNOWN)
    timeout = parse_timeout(params, "raft URL", DEFAULT_TIMEOUT)
    check_tls(params, "raft URL")
    return RaftURL(endpoints, prefix, params.get("cacert"), params.get("cert"),
                   params.get("key"), timeout)


def _endpoint(text: str) -> str:
    m = _HOST_RE.match(text)
    if m is None:
        if text and ":" not in text:
            raise ValueError(f"raft URL endpoint {safe(text)!r} needs a port (HOST:PORT)")
        raise ValueError(f"invalid raft URL endpoint {safe(text)!r} (expected HOST:PORT)")
    port = int(m.group(2))
    if not 0 < port < 65536:
        raise ValueError(f"invalid port in raft URL endpoint {safe(text)!r}")
    return f"{m.group(1)}:{port}"
