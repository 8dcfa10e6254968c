"""Parsing ``etcd://`` metadata URLs into an :class:`EtcdURL` (no I/O, no secrets kept).

Form: ``etcd://host:port[,host:port...]/PREFIX[?query]``.

* ``PREFIX`` (required) namespaces the volume: every key ``k`` lives at ``PREFIX/k`` on the
  wire.  It is one path component of letters, digits, ``.``, ``_`` and ``-`` so that two
  prefixes can never nest (``a`` and ``a/b`` would overlap).
* Query parameters: ``cacert``, ``cert``, ``key`` (TLS; TLS is on when ``cacert`` is given,
  ``cert``/``key`` go together and need ``cacert``), ``server_name`` (TLS name override),
  ``user`` (password from ``$KVFS_ETCD_PASSWORD`` or the variable named by ``password_env``),
  ``timeout`` (seconds, default 30: how long an unreachable cluster is retried).

Invariant: nothing secret is ever part of a parsed URL, so :meth:`EtcdURL.describe` can be
shown verbatim.  A ``password=`` parameter is refused without echoing it, and so are
credentials before the endpoints (``user:password@host``); every error quotes the user's
text through :func:`~kvfs.kv.urlquery.safe`, which shows those as ``user:***@``.  Every
error is a one-line :class:`ValueError`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import parse_qsl, quote

from kvfs.kv.urlquery import check_tls, parse_query, parse_timeout, safe

DEFAULT_PORT = 2379
DEFAULT_TIMEOUT = 30.0
DEFAULT_PASSWORD_ENV = "KVFS_ETCD_PASSWORD"

_PREFIX_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*\Z")
_HOST_RE = re.compile(r"(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._-]+)(?::(\d{1,5}))?\Z")
_ENV_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_KNOWN = ("cacert", "cert", "key", "server_name", "user", "password_env", "timeout")


@dataclass(frozen=True, slots=True)
class EtcdURL:
    """A parsed ``etcd://`` URL (see module docstring)."""

    endpoints: tuple[str, ...]  # "host:port", IPv6 hosts in brackets
    prefix: str
    cacert: str | None = None
    cert: str | None = None
    key: str | None = None
    server_name: str | None = None
    user: str | None = None
    password_env: str = DEFAULT_PASSWORD_ENV
    timeout: float = DEFAULT_TIMEOUT

    @property
    def tls(self) -> bool:
        return self.cacert is not None

    @property
    def key_prefix(self) -> bytes:
        """What every wire key starts with: ``PREFIX/``."""
        return self.prefix.encode() + b"/"

    def describe(self) -> str:
        """The canonical URL; it never holds a secret (passwords live in the environment)."""
        query = []
        for name in ("cacert", "cert", "key", "server_name", "user"):
            value = getattr(self, name)
            if value is not None:
                query.append(f"{name}={quote(value, safe='/._-')}")
        if self.user is not None and self.password_env != DEFAULT_PASSWORD_ENV:
            query.append(f"password_env={self.password_env}")
        if self.timeout != DEFAULT_TIMEOUT:
            query.append(f"timeout={self.timeout:g}")
        tail = "?" + "&".join(query) if query else ""
        return f"etcd://{','.join(self.endpoints)}/{self.prefix}{tail}"


def parse_etcd_url(url: str) -> EtcdURL:
    """Parse ``url``; :class:`ValueError` with a one-line message if it is malformed."""
    if not url.startswith("etcd://"):
        raise ValueError(f"not an etcd URL (expected etcd://host:port/PREFIX): {safe(url)}")
    rest = url[len("etcd://"):]
    rest, _, query = rest.partition("?")
    if "@" in rest:  # user:password@host -- a prefix never holds an @
        raise ValueError(f"etcd URL must not contain credentials ({safe(rest)}): give "
                         f"user=NAME in its query and the password in the environment "
                         f"variable {DEFAULT_PASSWORD_ENV}")
    hosts, slash, prefix = rest.partition("/")
    if not slash or not prefix:
        raise ValueError("etcd URL needs a volume prefix: etcd://host:port/PREFIX")
    if not _PREFIX_RE.match(prefix):
        raise ValueError(f"invalid etcd prefix {safe(prefix)!r} (one name of letters, "
                         "digits, . _ -; no slashes)")
    endpoints = tuple(_endpoint(h) for h in hosts.split(","))
    if any(name == "password" for name, _ in parse_qsl(query, keep_blank_values=True)):
        raise ValueError("etcd URL must not contain a password; set it in the "
                         f"environment variable {DEFAULT_PASSWORD_ENV}")
    params = parse_query(query, "etcd URL", _KNOWN)
    timeout = parse_timeout(params, "etcd URL", DEFAULT_TIMEOUT)
    check_tls(params, "etcd URL")
    if "server_name" in params and "cacert" not in params:
        raise ValueError("etcd URL: server_name= only applies to TLS (give cacert=)")
    password_env = params.get("password_env", DEFAULT_PASSWORD_ENV)
    if not _ENV_RE.match(password_env):
        raise ValueError(f"invalid password_env variable name {safe(password_env)!r}")
    if "password_env" in params and "user" not in params:
        raise ValueError("etcd URL: password_env= only applies with user=")
    return EtcdURL(endpoints, prefix, params.get("cacert"), params.get("cert"),
                   params.get("key"), params.get("server_name"), params.get("user"),
                   password_env, timeout)


def _endpoint(text: str) -> str:
    m = _HOST_RE.match(text)
    if not text or m is None:
        raise ValueError(f"invalid etcd endpoint {safe(text)!r} (expected host:port)")
    port = int(m.group(2)) if m.group(2) else DEFAULT_PORT
    if not 0 < port < 65536:
        raise ValueError(f"invalid port in etcd endpoint {safe(text)!r}")
    return f"{m.group(1)}:{port}"
