"""How gRPC failures of etcd calls are classified (kvfs.kv.etcd_errors), on the messages
grpc and etcd really produce (captured from grpcio against etcd 3.4 on this platform)."""

from __future__ import annotations

import grpc
import pytest

from kvfs.kv.etcd_errors import Failure, classify

SC = grpc.StatusCode
PARTITIONED = ("failed to connect to all addresses; last error: UNKNOWN: "
               "ipv4:10.77.0.3:2379: tcp handshaker shutdown")
REFUSED = ("failed to connect to all addresses; last error: UNKNOWN: ipv4:127.0.0.1:1: "
           "Failed to connect to remote host: Connection refused")
UNTRUSTED_SERVER = ("failed to connect to all addresses; last error: UNKNOWN: "
                    "ipv4:127.0.0.1:5: Tls handshake failed (TSI_PROTOCOL_FAILURE): "
                    "SSL_ERROR_SSL: error:1000007d:SSL routines:OPENSSL_internal:"
                    "CERTIFICATE_VERIFY_FAILED: unable to get local issuer certificate: OK")
CLIENT_CERT_REJECTED = ("failed to connect to all addresses; last error: UNAVAILABLE: "
                        "ipv4:127.0.0.1:5: Unwrap failed (TSI_DATA_CORRUPTED)")
WRONG_NAME = ("failed to connect to all addresses; last error: UNKNOWN: ipv4:127.0.0.1:5: "
              "Custom verification check failed with error: UNAUTHENTICATED: Hostname "
              "Verification Check failed.")


@pytest.mark.parametrize("tls", [False, True])
def test_a_partition_is_retried_on_any_channel(tls: bool) -> None:
    assert classify(SC.UNAVAILABLE, PARTITIONED, tls=tls) is Failure.UNSENT
    assert classify(SC.UNAVAILABLE, REFUSED, tls=tls) is Failure.UNSENT
    assert classify(SC.DEADLINE_EXCEEDED, "Deadline Exceeded", tls=tls) is Failure.MAYBE_SENT
    assert classify(SC.UNAVAILABLE, "etcdserver: request timed out",
                    tls=tls) is Failure.MAYBE_SENT
    # A follower's linearizable read when the leader was just killed (a fault-suite run).
    assert classify(SC.UNKNOWN, "context deadline exceeded", tls=tls) is Failure.MAYBE_SENT


@pytest.mark.parametrize("details", [UNTRUSTED_SERVER, CLIENT_CERT_REJECTED, WRONG_NAME])
def test_tls_negotiation_failures_only_on_tls_channels(details: str) -> None:
    assert classify(SC.UNAVAILABLE, details, tls=True) is Failure.TLS
    assert classify(SC.UNAVAILABLE, details, tls=False).transient


@pytest.mark.parametrize("details", [
    "failed to connect to all addresses; last error: UNAVAILABLE: ipv4:127.0.0.1:5: "
    "Handshake read failed (Socket closed)",
    "failed to connect to all addresses; last error: UNKNOWN: ipv4:127.0.0.1:5: Tls "
    "handshake failed (TSI_PROTOCOL_FAILURE): SSL_ERROR_SYSCALL: Connection reset by peer",
])
def test_a_handshake_cut_off_on_a_tls_channel_is_retried(details: str) -> None:
    assert classify(SC.UNAVAILABLE, details, tls=True) is Failure.UNSENT


@pytest.mark.parametrize(("code", "details", "failure"), [
    (SC.RESOURCE_EXHAUSTED, "etcdserver: mvcc: database space exceeded", Failure.NO_SPACE),
    (SC.RESOURCE_EXHAUSTED, "etcdserver: too many requests", Failure.UNSENT),
    (SC.RESOURCE_EXHAUSTED, "Received message larger than max (5 vs. 4)", Failure.TOO_LARGE),
    (SC.INVALID_ARGUMENT, "etcdserver: too many operations in txn request", Failure.TOO_LARGE),
    (SC.INVALID_ARGUMENT, "etcdserver: request is too large", Failure.TOO_LARGE),
    (SC.INVALID_ARGUMENT, "etcdserver: duplicate key given in txn request", Failure.TOO_LARGE),
    (SC.INVALID_ARGUMENT, "etcdserver: authentication failed, invalid user ID or password",
     Failure.AUTH),
    (SC.OUT_OF_RANGE, "etcdserver: mvcc: required revision has been compacted",
     Failure.COMPACTED),
    (SC.NOT_FOUND, "etcdserver: requested lease not found", Failure.LEASE_NOT_FOUND),
    (SC.UNAUTHENTICATED, "etcdserver: invalid auth token", Failure.AUTH_TOKEN_EXPIRED),
    (SC.PERMISSION_DENIED, "etcdserver: permission denied", Failure.AUTH),
    (SC.FAILED_PRECONDITION, "etcdserver: authentication is not enabled",
     Failure.AUTH_NOT_ENABLED),
    (SC.FAILED_PRECONDITION, "etcdserver: user name not found", Failure.AUTH),
    (SC.UNAVAILABLE, "etcdserver: no leader", Failure.UNSENT),
    (SC.UNKNOWN, "something new", Failure.OTHER),
])
def test_etcd_errors_by_code(code: grpc.StatusCode, details: str, failure: Failure) -> None:
    assert classify(code, details, tls=False) is failure
