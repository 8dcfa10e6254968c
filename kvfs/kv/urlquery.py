"""The query part of a remote engine's URL (``etcd://``, ``raft://``): one set of rules.

``?name=value&...`` with known names only, each at most once and never empty; ``timeout``
a number of seconds in (0, 86400]; TLS client certificates (``cert``, ``key``) only
together and only with ``cacert``.  Every refusal is a one-line ``ValueError`` naming the
URL kind (``what``: "etcd URL", "raft URL").
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from re import Match
from urllib.parse import parse_qsl

# The user information of a URL's authority (``user:password@``): a password may hold
# any character but a space (``@``, ``:`` and ``/`` too, when not percent-encoded), so it
# reaches up to the last ``@`` of its word -- hiding too much rather than too little.
_USERINFO = re.compile(r"([^\s/?#@:,]*)(:(?!//)\S*)?@")


def safe(text: str) -> str:
    """User text quoted in an error message, flattened and shortened (keeps it one line),
    with any credentials in it hidden: ``user:password@`` shows as ``user:***@``, and a
    bare ``token@`` as ``***@``."""
    text = _USERINFO.sub(_hide_userinfo, " ".join(text.split()))
    return text if len(text) <= 200 else text[:200] + "..."


def _hide_userinfo(m: Match[str]) -> str:
    return f"{m.group(1)}:***@" if m.group(2) is not None else "***@"


def parse_query(query: str, what: str, known: Sequence[str]) -> dict[str, str]:
    params: dict[str, str] = {}
    for name, value in parse_qsl(query, keep_blank_values=True):
        if name not in known:
            raise ValueError(f"unknown {what} parameter {safe(name)!r} "
                             f"(known: {', '.join(known)})")
        if name in params:
            raise ValueError(f"{what} parameter {name!r} given twice")
        if not value:
            raise ValueError(f"{what} parameter {name!r} is empty")
        params[name] = value
    if query and not params:
        raise ValueError(f"malformed {what} query (expected name=value&...)")
    return params


def parse_timeout(params: dict[str, str], what: str, default: float) -> float:
    if "timeout" not in params:
        return default
    try:
        timeout = float(params["timeout"])
    except ValueError:
        timeout = -1.0
    if not 0 < timeout <= 86400:
        raise ValueError(f"{what} timeout must be a number of seconds in (0, 86400], "
                         f"not {safe(params['timeout'])!r}")
    return timeout


def check_tls(params: dict[str, str], what: str) -> None:
    if ("cert" in params) != ("key" in params):
        raise ValueError(f"{what} parameters cert= and key= must be given together")
    if "cert" in params and "cacert" not in params:
        raise ValueError(f"{what}: client certificates (cert=, key=) need cacert= (TLS)")
