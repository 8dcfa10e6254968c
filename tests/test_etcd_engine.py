"""EtcdEngine against real etcd servers: the KV contract plus etcd-specific behaviour.

Servers come from tests/etcd_cluster.py (a shared single member; a TLS member; an auth
member; a 3-member cluster; a throwaway member with a tiny quota).  If etcd is not
installed these tests fail with a clear message -- they never skip.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import trio
from etcd_cluster import (
    ROOT_PASSWORD,
    Certs,
    EtcdProcesses,
    Member,
    enable_auth,
    etcd_procs,
    etcd_single,
    make_certs,
    scratch_dir,
    unique_prefix,
)
from kv_contract import KVContract, collect_watch, put

from kvfs.benchmarks.launch import free_port
from kvfs.kv.api import (
    Compare,
    Delete,
    EngineUnavailable,
    KVError,
    NoSpace,
    Put,
    prefix_end,
)
from kvfs.kv.etcd import EngineAuthError, EtcdEngine
from kvfs.kv.etcd_url import parse_etcd_url
from kvfs.volume import VolumeError, format_volume, open_engine, read_format

__all__ = ["etcd_procs", "etcd_single"]  # fixtures used by this module


class TestEtcdEngine(KVContract):
    lease_ttl = 1.0  # etcd leases are whole seconds (the test member allows 1 s)

    @pytest.fixture
    async def kv(self, etcd_single: Member) -> AsyncIterator[EtcdEngine]:
        engine = await EtcdEngine.open(f"etcd://{etcd_single.endpoint}/{unique_prefix()}")
        yield engine
        await engine.aclose()


async def open_on(member: Member, prefix: str | None = None, query: str = "") -> EtcdEngine:
    url = f"etcd://{member.endpoint}/{prefix or unique_prefix()}"
    return await EtcdEngine.open(url + (f"?{query}" if query else ""))


# -- namespacing -----------------------------------------------------------------------------


async def test_prefixes_isolate_volumes(etcd_single: Member) -> None:
    base = unique_prefix("iso")
    a = await open_on(etcd_single, base)
    b = await open_on(etcd_single, base + "b")  # "X" and "Xb": no prefix may leak into another
    try:
        await a.commit([], [Put(b"k", b"from-a"), Put(b"\xff", b"a-last")])
        await b.commit([], [Put(b"k", b"from-b"), Put(b"", b"b-empty-key")])
        got = await a.get(b"k")
        assert got is not None and got.value == b"from-a"
        assert [x.key for x in (await a.range(b"", b"\x00")).kvs] == [b"k", b"\xff"]
        assert [x.key for x in (await b.range(b"", b"\x00")).kvs] == [b"", b"k"]
        # Deleting "everything" in one volume leaves the other alone.
        await a.commit([], [], [Delete(b"", b"\x00")])
        assert (await a.range(b"", b"\x00")).kvs == []
        assert len((await b.range(b"", b"\x00")).kvs) == 2
        # A compare on a key of the other volume sees it as absent.
        assert (await a.commit([Compare(b"k", 0)], [Put(b"k", b"again")])).succeeded
        # Watches only see their own volume.
        rev = await a.current_revision()
        await b.commit([], [Put(b"w", b"b")])
        r = await put(a, b"w", b"a")
        events = await collect_watch(a, b"", b"\x00", rev + 1, r)
        assert [(e.key, e.value) for e in events] == [(b"w", b"a")]
    finally:
        await a.aclose()
        await b.aclose()


async def test_range_pages_internally(etcd_single: Member) -> None:
    kv = await open_on(etcd_single)
    kv._page = 7  # force several pages under one unlimited range
    try:
        keys = [b"p%03d" % i for i in range(40)]
        for i in range(0, 40, 20):
            await kv.commit([], [Put(k, k) for k in keys[i:i + 20]])
        res = await kv.range(b"p", prefix_end(b"p"))
        assert [x.key for x in res.kvs] == keys and not res.more
        res = await kv.range(b"p", prefix_end(b"p"), limit=15)
        assert [x.key for x in res.kvs] == keys[:15] and res.more
        res = await kv.range(b"p", prefix_end(b"p"), limit=40)
        assert len(res.kvs) == 40 and not res.more
    finally:
        await kv.aclose()


# -- URLs ------------------------------------------------------------------------------------


def test_url_parsing_good() -> None:
    u = parse_etcd_url("etcd://h1:1,h2,[::1]:3/vol1")
    assert u.endpoints == ("h1:1", "h2:2379", "[::1]:3") and u.prefix == "vol1"
    assert u.timeout == 30 and not u.tls and u.key_prefix == b"vol1/"
    u = parse_etcd_url("etcd://127.0.0.1:2379/v.2_x-y?cacert=/c/ca.crt&cert=/c/c.crt&"
                       "key=/c/c.key&server_name=etcd.local&user=kvfs&password_env=PW&"
                       "timeout=2.5")
    assert u.tls and u.cert == "/c/c.crt" and u.key == "/c/c.key"
    assert (u.server_name, u.user, u.password_env, u.timeout) == ("etcd.local", "kvfs", "PW",
                                                                  2.5)
    assert parse_etcd_url(u.describe()) == u


@pytest.mark.parametrize("url", [
    "etcd://h:1", "etcd://h:1/", "etcd://h:1/a/b", "etcd:///vol", "etcd://h:99999/v",
    "etcd://h:1,/v", "etcd://h:1/v?bogus=1", "etcd://h:1/v?timeout=0",
    "etcd://h:1/v?timeout=abc", "etcd://h:1/v?cert=/a", "etcd://h:1/v?cert=/a&key=/b",
    "etcd://h:1/v?server_name=x", "etcd://h:1/v?user=", "etcd://h:1/v?password_env=X",
    "etcd://h:1/v?user=u&password_env=1bad", "etcd://h:1/v?timeout=1&timeout=2",
    "http://h:1/v", "etcd://h:1/v?password=hunter2",
])
def test_url_parsing_bad(url: str) -> None:
    with pytest.raises(ValueError) as info:
        parse_etcd_url(url)
    msg = str(info.value)
    assert "\n" not in msg and msg
    assert "hunter2" not in msg


async def test_open_engine_routes_etcd_urls(etcd_single: Member) -> None:
    url = f"etcd://{etcd_single.endpoint}/{unique_prefix('vol')}"
    kv = await open_engine(url)
    try:
        assert isinstance(kv, EtcdEngine) and kv.describe() == url
        await format_volume(kv, "v1")
        fmt = await read_format(kv)
        assert fmt is not None and fmt.name == "v1"
    finally:
        await kv.aclose()
    with pytest.raises(VolumeError, match="prefix"):
        await open_engine(f"etcd://{etcd_single.endpoint}/")


# -- TLS -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def certs() -> Iterator[Certs]:
    d = scratch_dir("certs")
    try:
        yield make_certs(d)
    finally:
        import shutil

        shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="module")
def tls_member(etcd_procs: EtcdProcesses, certs: Certs) -> Member:
    return etcd_procs.member("tls", tls={"cacert": certs.ca, "cert": certs.server_cert,
                                         "key": certs.server_key})


async def test_tls_end_to_end(tls_member: Member, certs: Certs) -> None:
    q = f"cacert={certs.ca}&cert={certs.client_cert}&key={certs.client_key}"
    kv = await open_on(tls_member, query=q)
    try:
        r = await put(kv, b"secure", b"yes")
        got = await kv.get(b"secure")
        assert got is not None and got.mod_revision == r
    finally:
        await kv.aclose()
    # The server name can be overridden (the certificate names "localhost" too).
    kv = await open_on(tls_member, query=q + "&server_name=localhost")
    await kv.aclose()


@pytest.mark.parametrize("which", ["unrelated client cert", "no client cert",
                                   "untrusted server", "wrong server name"])
async def test_tls_wrong_certificate_fails_fast(tls_member: Member, certs: Certs,
                                                which: str) -> None:
    q = {"unrelated client cert": f"cacert={certs.ca}&cert={certs.other_cert}"
                                  f"&key={certs.other_key}",
         "no client cert": f"cacert={certs.ca}",
         "untrusted server": f"cacert={certs.other_ca}&cert={certs.client_cert}"
                             f"&key={certs.client_key}",
         "wrong server name": f"cacert={certs.ca}&cert={certs.client_cert}"
                              f"&key={certs.client_key}&server_name=not-the-server"}[which]
    t0 = time.monotonic()
    with pytest.raises(KVError) as info:
        await open_on(tls_member, query=q + "&timeout=20")
    assert time.monotonic() - t0 < 10
    assert isinstance(info.value, EngineAuthError)
    msg = str(info.value)
    assert "\n" not in msg and "TLS" in msg and tls_member.endpoint in msg


async def test_missing_certificate_file_is_a_url_error(tls_member: Member,
                                                       tmp_path: Path) -> None:
    with pytest.raises(VolumeError, match="cacert"):
        await open_engine(f"etcd://{tls_member.endpoint}/v?cacert={tmp_path}/missing.crt")


# -- user and password -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def auth_member(etcd_procs: EtcdProcesses) -> Member:
    m = etcd_procs.member("auth")
    enable_auth(m)
    return m


async def test_user_password_auth(auth_member: Member, monkeypatch: pytest.MonkeyPatch
                                  ) -> None:
    base = f"etcd://{auth_member.endpoint}/{unique_prefix('auth')}"
    monkeypatch.setenv("KVFS_ETCD_PASSWORD", ROOT_PASSWORD)
    kv = await EtcdEngine.open(base + "?user=root")
    try:
        r = await put(kv, b"k", b"v")
        got = await kv.get(b"k")
        assert got is not None and got.mod_revision == r
        lease = await kv.lease_grant(5)
        assert await kv.lease_keepalive(lease)
        await kv.lease_revoke(lease)
        events = await collect_watch(kv, b"k", b"k\x00", r, r)
        assert events[0].value == b"v"
        for text in (kv.describe(), repr(kv), str(vars(kv))):
            assert ROOT_PASSWORD not in text
    finally:
        await kv.aclose()
    # Another variable name works too.
    monkeypatch.delenv("KVFS_ETCD_PASSWORD")
    monkeypatch.setenv("MY_ETCD_PW", ROOT_PASSWORD)
    kv = await EtcdEngine.open(base + "?user=root&password_env=MY_ETCD_PW")
    await kv.aclose()


@pytest.mark.parametrize("case", ["wrong password", "no user", "unset variable"])
async def test_auth_failures_are_one_line(auth_member: Member, monkeypatch: pytest.MonkeyPatch,
                                          case: str) -> None:
    base = f"etcd://{auth_member.endpoint}/{unique_prefix('auth')}?timeout=5"
    wrong = "wrong-" + ROOT_PASSWORD
    monkeypatch.setenv("KVFS_ETCD_PASSWORD", wrong)
    url = {"wrong password": base + "&user=root", "no user": base,
           "unset variable": base + "&user=root&password_env=KVFS_NO_SUCH_VAR"}[case]
    t0 = time.monotonic()
    expected: type[Exception] = ValueError if case == "unset variable" else EngineAuthError
    with pytest.raises(expected) as info:
        await EtcdEngine.open(url)
    assert time.monotonic() - t0 < 5
    msg = str(info.value)
    assert "\n" not in msg and wrong not in msg and ROOT_PASSWORD not in msg
    assert wrong not in repr(info.value)


# -- unavailability and failover -------------------------------------------------------------


async def test_unreachable_cluster_is_engine_unavailable() -> None:
    ports = [free_port(), free_port()]
    url = f"etcd://127.0.0.1:{ports[0]},127.0.0.1:{ports[1]}/vol?timeout=2"
    t0 = time.monotonic()
    with pytest.raises(EngineUnavailable) as info:
        await EtcdEngine.open(url)
    elapsed = time.monotonic() - t0
    assert 1.5 < elapsed < 10
    msg = str(info.value)
    assert "\n" not in msg and "unreachable for 2 s" in msg and str(ports[1]) in msg
    with pytest.raises(KVError):  # open_engine does not hide engine errors
        await open_engine(url)


@contextmanager
def silent_endpoint() -> Iterator[str]:
    """host:port of a listener that never answers, as a host behind a partition: its
    accept queue is full, so the kernel drops every further SYN and connects hang."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port = listener.getsockname()[1]
    fillers = []
    for _ in range(4):
        c = socket.socket()
        c.setblocking(False)
        c.connect_ex(("127.0.0.1", port))
        fillers.append(c)
    try:
        yield f"127.0.0.1:{port}"
    finally:
        for c in fillers:
            c.close()
        listener.close()


async def test_silent_endpoint_is_unreachable_not_a_tls_failure() -> None:
    """A partitioned endpoint is retried until the URL's timeout, then reported as
    unreachable -- a plain-text URL never fails as a "TLS handshake"."""
    with silent_endpoint() as dead:
        t0 = time.monotonic()
        with pytest.raises(EngineUnavailable) as info:
            await EtcdEngine.open(f"etcd://{dead}/vol?timeout=3")
        assert time.monotonic() - t0 >= 3
        msg = str(info.value)
        assert "unreachable for 3 s" in msg and "TLS" not in msg, msg


async def test_failover_past_a_silent_endpoint(etcd_single: Member) -> None:
    with silent_endpoint() as dead:
        url = f"etcd://{dead},{etcd_single.endpoint}/{unique_prefix('silent')}?timeout=6"
        for i in range(10):
            kv = await EtcdEngine.open(url)
            try:
                await put(kv, b"k", str(i).encode())
                assert kv.current_endpoint == etcd_single.endpoint
            finally:
                await kv.aclose()


async def test_member_down_after_open_gives_engine_unavailable(etcd_procs: EtcdProcesses
                                                              ) -> None:
    m = etcd_procs.member("doomed")
    kv = await open_on(m, query="timeout=1.5")
    try:
        await put(kv, b"a", b"1")
        m.kill()
        t0 = time.monotonic()
        with pytest.raises(EngineUnavailable):
            await kv.get(b"a")
        with pytest.raises(EngineUnavailable):
            await kv.commit([], [Put(b"b", b"2")])
        assert time.monotonic() - t0 < 8
        m.start()  # back again: the same engine recovers
        m.wait_healthy()
        with trio.fail_after(10):
            got = await kv.get(b"a")
        assert got is not None and got.value == b"1"
    finally:
        await kv.aclose()


@pytest.fixture(scope="module")
def cluster3(etcd_procs: EtcdProcesses) -> list[Member]:
    return etcd_procs.cluster(3)


async def test_failover_across_members(cluster3: list[Member]) -> None:
    url = f"etcd://{','.join(m.endpoint for m in cluster3)}/{unique_prefix('ha')}?timeout=10"
    kv = await EtcdEngine.open(url)
    watched: list[int] = []

    async def watcher(start: int) -> None:
        async for batch in kv.watch(b"n", b"n\x00", start):
            watched.extend(int(e.value or b"0") for e in batch.events)
            if watched[-1] == 60:
                return

    try:
        start = await kv.current_revision() + 1
        async with trio.open_nursery() as nursery:
            nursery.start_soon(watcher, start)
            first: Member | None = None
            for i in range(1, 61):
                if i == 40:  # the first victim comes back before the second goes down
                    assert first is not None
                    first.start()
                    await trio.to_thread.run_sync(first.wait_healthy)
                if i in (20, 40):
                    victim = next(m for m in cluster3 if m.endpoint == kv.current_endpoint)
                    await trio.to_thread.run_sync(victim.stop)
                    first = first or victim
                with trio.fail_after(15):
                    res = await kv.commit([], [Put(b"n", b"%d" % i)])
                assert res.succeeded
                got = await kv.get(b"n")
                assert got is not None and got.value == b"%d" % i
            with trio.fail_after(15):
                while not watched or watched[-1] != 60:
                    await trio.sleep(0.05)
        assert watched == list(range(1, 61))
    finally:
        await kv.aclose()
        for m in cluster3:
            if m.proc is None or m.proc.poll() is not None:
                m.start()


# -- NOSPACE ---------------------------------------------------------------------------------


async def test_nospace_maps_to_nospace(etcd_procs: EtcdProcesses) -> None:
    m = etcd_procs.member("tiny", extra=["--quota-backend-bytes", str(16 << 20)])
    kv = await open_on(m)
    try:
        value = os.urandom(1000 * 1024)
        with pytest.raises(NoSpace) as info:
            for i in range(200):
                await kv.commit([], [Put(b"fill%d" % i, value)])
        assert "\n" not in str(info.value)
        assert await kv.get(b"fill0") is not None  # reads still work
    finally:
        await kv.aclose()
        m.kill()
