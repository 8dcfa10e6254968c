"""What a failed etcd gRPC call means: the one place where gRPC errors are classified.

gRPC's status code says what kind of failure it was; etcd's message says which of its
errors shares that code (etcd's ``rpctypes``: NOSPACE and "too many requests" are both
RESOURCE_EXHAUSTED, oversized transactions and bad passwords are both INVALID_ARGUMENT).
:func:`classify` looks at the code first and at etcd's message only to tell apart the
errors behind one code -- never at free-form transport text to decide *whether* to retry.

Invariants:

* Every UNAVAILABLE or DEADLINE_EXCEEDED -- and an UNKNOWN that is etcd's server-side
  "context deadline exceeded" -- is retryable (:attr:`Failure.UNSENT` or
  :attr:`Failure.MAYBE_SENT`), with one exception: on a TLS channel, the markers of a
  failed TLS negotiation (an untrusted or rejected certificate, a wrong server name) make
  it :attr:`Failure.TLS`, which retrying cannot cure.  A plain-text channel never yields
  :attr:`Failure.TLS`: a TCP connect cut short by a partition ("tcp handshaker shutdown")
  is an unreachable endpoint, to be retried and failed over like any other.
* :attr:`Failure.UNSENT` is claimed only when the failure proves the request never
  reached etcd's state machine (no connection, no leader, rate-limited), so a mutation may
  be re-sent blindly; anything else that may have been applied is MAYBE_SENT.
"""

from __future__ import annotations

import enum
from typing import Any

import grpc

_SC = grpc.StatusCode

# Transport failures that prove the request was never delivered.
_UNSENT = ("failed to connect", "connection refused", "no leader", "dns resolution",
           "name resolution", "too many requests", "not ready", "empty address list")
# A TLS negotiation that failed on a certificate or a name, as grpc's TLS stack words it
# (checked on TLS channels only).  A handshake merely cut off -- a member killed or
# restarting mid-handshake -- matches none of these and is retried like any disconnection.
_TLS = ("certificate_verify_failed", "certificate verify failed", "bad_certificate",
        "unknown_ca", "certificate_required", "hostname verification",
        "tsi_data_corrupted")


class Failure(enum.Enum):
    """The kinds of failure the engine acts on differently."""

    UNSENT = "transient, never delivered"  # retry, re-send even a mutation
    MAYBE_SENT = "transient, maybe applied"  # retry; a mutation's outcome is unknown
    TLS = "TLS negotiation failed"
    NO_SPACE = "database space exceeded"
    TOO_LARGE = "request too large"
    COMPACTED = "revision compacted"
    LEASE_NOT_FOUND = "lease not found"
    AUTH_TOKEN_EXPIRED = "auth token invalid"  # authenticate again, then retry
    AUTH_NOT_ENABLED = "authentication is not enabled"
    AUTH = "authentication or permission refused"
    OTHER = "other"

    @property
    def transient(self) -> bool:
        return self in (Failure.UNSENT, Failure.MAYBE_SENT)


def classify(code: Any, details: str, *, tls: bool) -> Failure:
    """The :class:`Failure` behind status ``code`` with message ``details`` on a channel
    that does (``tls``) or does not use TLS."""
    low = details.lower()
    if code in (_SC.UNAVAILABLE, _SC.DEADLINE_EXCEEDED):
        if tls and any(m in low for m in _TLS):
            return Failure.TLS
        return Failure.UNSENT if any(m in low for m in _UNSENT) else Failure.MAYBE_SENT
    if code == _SC.UNKNOWN and "context deadline exceeded" in low:
        # etcd's own deadline for the request (ours, carried over) ran out on the server
        # first: a linearizable read or a proposal waiting on a leader that just died.
        return Failure.MAYBE_SENT
    if code == _SC.RESOURCE_EXHAUSTED:
        if "too many requests" in low:
            return Failure.UNSENT
        if "space exceeded" in low or "nospace" in low:
            return Failure.NO_SPACE
        return Failure.TOO_LARGE  # a message over grpc's or etcd's size limit
    if code == _SC.INVALID_ARGUMENT:
        if "too many operations" in low or "too large" in low or "duplicate key" in low:
            return Failure.TOO_LARGE
        if "authentication failed" in low or "user name" in low:
            return Failure.AUTH
        return Failure.OTHER
    if code == _SC.OUT_OF_RANGE and "compacted" in low:
        return Failure.COMPACTED
    if code == _SC.NOT_FOUND and "lease not found" in low:
        return Failure.LEASE_NOT_FOUND
    if code == _SC.UNAUTHENTICATED:
        return Failure.AUTH_TOKEN_EXPIRED if "invalid auth token" in low else Failure.AUTH
    if code == _SC.PERMISSION_DENIED:
        return Failure.AUTH
    if code == _SC.FAILED_PRECONDITION:
        if "authentication is not enabled" in low:
            return Failure.AUTH_NOT_ENABLED
        if "user name" in low or "role name" in low:
            return Failure.AUTH
    return Failure.OTHER
