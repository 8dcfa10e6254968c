"""Fault injection for real-mount tests: a small nemesis library, after etcd's robustness
tests, aimed at a filesystem instead of a key-value API.

A :class:`Fault` is something that can go wrong around a mount, injected as a context
manager (the fault holds while the ``with`` body runs and is healed on the way out, even
when the body raises):

* :class:`EtcdKill` -- ``kill -9`` of an etcd member, restarted on the same data directory;
* :class:`EtcdPause` -- SIGSTOP of a member, SIGCONT after the hold (either is an outage
  for a single member, and must go unnoticed when a cluster keeps its quorum);
* :class:`EtcdRestart` -- a graceful restart (SIGTERM, start again);
* :class:`Partition` -- a mount's daemon cut off from etcd.  The daemon runs in a network
  namespace of its own (:class:`NetNamespace`, joined with ``nsenter --net``, so its FUSE
  mount stays visible in the test's mount namespace) and reaches etcd through a veth pair
  on an address etcd listens on in the root namespace.  The partition takes the root end of
  the pair down: packets vanish silently, as on a real network; healing brings it up;
* :class:`MountPause` -- SIGSTOP of a mount daemon for longer than its session lease TTL,
  so its session expires while it sleeps (a VM pause, a long GC stall).

A :class:`Timeline` records every fault's window -- monotonic start before the fault is
injected, end once it is healed and the service answers again -- so checks can tell an
error inside an outage from one outside it.  :class:`Nemesis` injects random faults from a
list, one at a time with quiet periods between them, in a background thread.

Invariants: every fault is healed when its context exits (a stopped process is continued,
a link brought up, a killed member restarted); a :class:`NetNamespace` deletes its
namespace and veth pair on :meth:`~NetNamespace.delete`; nothing here kills a process it
was not given.
"""

from __future__ import annotations

import abc
import itertools
import math
import os
import random
import signal
import subprocess
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import pytest
from etcd_cluster import Member
from mounting import Mount

IP = "/usr/sbin/ip"
NSENTER = "/usr/bin/nsenter"


# -- fault windows ---------------------------------------------------------------------------


@dataclass
class Window:
    """When one fault held, and which mounts it may disturb."""

    kind: str
    target: str
    affects: frozenset[str] | None  # mount names; None: every mount
    outage: bool  # cuts mounts off from the engine, so EIO is an allowed answer
    stall: bool  # stops a daemon's clock-watching: requests in flight may time out
    start: float
    end: float = math.inf  # set once healed

    def disturbs(self, mount: str) -> bool:
        return self.affects is None or mount in self.affects

    def overlaps(self, start: float, end: float, grace: float) -> bool:
        return start <= self.end + grace and end >= self.start

    def describe(self, t0: float) -> str:
        end = "still active" if self.end == math.inf else f"+{self.end - t0:.2f}s"
        return f"{self.kind} {self.target} +{self.start - t0:.2f}s..{end}"


@dataclass
class Timeline:
    """The fault windows of one run (thread-safe); ``t0`` is the run's time origin."""

    t0: float = field(default_factory=time.monotonic)
    windows: list[Window] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @contextmanager
    def window(self, fault: Fault) -> Iterator[Window]:
        w = Window(fault.kind, fault.target, fault.affects, fault.outage, fault.stall,
                   time.monotonic())
        with self._lock:
            self.windows.append(w)
        try:
            yield w
        finally:
            w.end = time.monotonic()

    def excuses(self, mount: str, start: float, end: float, grace: float) -> Window | None:
        """An outage window that overlaps ``[start, end]`` on ``mount`` (widened by ``grace``
        seconds after the heal, the time clients take to reconnect), if any."""
        with self._lock:
            for w in self.windows:
                if w.outage and w.disturbs(mount) and w.overlaps(start, end, grace):
                    return w
        return None

    def stalled(self, mount: str, start: float, end: float) -> Window | None:
        """A stall of ``mount``'s daemon that began while ``[start, end]`` was in flight."""
        with self._lock:
            for w in self.windows:
                if w.stall and w.disturbs(mount) and start <= w.start <= end:
                    return w
        return None

    def context(self, mount: str, start: float, end: float) -> str:
        """Where ``[start, end]`` on ``mount`` lies relative to the fault windows."""
        with self._lock:
            inside = [w for w in self.windows if w.overlaps(start, end, 0.0)]
            before = [w for w in self.windows if w.end < start]
        if inside:
            return "during " + ", ".join(
                w.describe(self.t0) + ("" if w.disturbs(mount) else " (not this mount)")
                for w in inside)
        if before:
            last = max(before, key=lambda w: w.end)
            return (f"outside any fault window; {start - last.end:.2f}s after "
                    f"{last.describe(self.t0)}")
        return "outside any fault window; before the first fault"

    def counts(self) -> dict[str, int]:
        with self._lock:
            out: dict[str, int] = {}
            for w in self.windows:
                out[w.kind] = out.get(w.kind, 0) + 1
            return out

    @property
    def last_end(self) -> float:
        with self._lock:
            return max((w.end for w in self.windows), default=self.t0)


# -- faults ----------------------------------------------------------------------------------


class Fault(abc.ABC):
    """One kind of trouble (see module docstring)."""

    kind: str
    outage: bool = True
    stall: bool = False

    def __init__(self, target: str, affects: frozenset[str] | None,
                 hold: tuple[float, float]) -> None:
        self.target = target
        self.affects = affects
        self.hold = hold  # seconds the fault is held, drawn uniformly from this range

    @abc.abstractmethod
    @contextmanager
    def injected(self) -> Iterator[None]:
        """The fault holds while the body runs; healed on exit."""


def _heal(member: Member) -> None:
    """Wait until ``member`` serves again; if it does not, say why (its log's tail).  A
    restart replays the write-ahead log, which takes long after heavy traffic."""
    try:
        member.wait_healthy(180)
    except RuntimeError as e:
        log = member.data_dir / "etcd.log"
        tail = log.read_text(errors="replace")[-3000:] if log.exists() else "(no log)"
        raise RuntimeError(f"{e}; the end of {log}:\n{tail}") from None


class _MemberDown(Fault):
    """A fault that takes etcd ``member`` away for a while.  ``outage=False`` for a
    member of a cluster that keeps its quorum without it."""

    def __init__(self, member: Member, hold: tuple[float, float] = (1.0, 6.0), *,
                 outage: bool = True) -> None:
        super().__init__(member.name, None, hold)
        self.member = member
        self.outage = outage


class EtcdKill(_MemberDown):
    kind = "etcd-kill"

    @contextmanager
    def injected(self) -> Iterator[None]:
        self.member.kill()
        try:
            yield
        finally:
            self.member.start()
            _heal(self.member)


class EtcdPause(_MemberDown):
    kind = "etcd-pause"

    @contextmanager
    def injected(self) -> Iterator[None]:
        assert self.member.proc is not None
        pid = self.member.proc.pid
        os.kill(pid, signal.SIGSTOP)
        try:
            yield
        finally:
            os.kill(pid, signal.SIGCONT)
            _heal(self.member)


class EtcdRestart(Fault):
    kind = "etcd-restart"

    def __init__(self, member: Member) -> None:
        super().__init__(member.name, None, (0.0, 0.5))
        self.member = member

    @contextmanager
    def injected(self) -> Iterator[None]:
        self.member.stop()
        try:
            yield
        finally:
            self.member.start()
            _heal(self.member)


class MountPause(Fault):
    """SIGSTOP of a mount daemon past its session TTL.  Not an outage: a paused daemon's
    callers just wait, and nothing may fail because of it once it runs again -- except
    what was in flight when it stopped, if the pause outlasts the URL's ``timeout=``
    (the engine finds its deadline passed; see :meth:`Timeline.stalled`)."""

    kind = "mount-pause"
    outage = False
    stall = True

    def __init__(self, name: str, mount: Mount, ttl: float) -> None:
        # Long enough for the lease to expire (etcd checks expiry every 500 ms).
        super().__init__(name, frozenset({name}), (ttl + 1.5, 2 * ttl + 2.0))
        self.mount = mount

    @contextmanager
    def injected(self) -> Iterator[None]:
        os.kill(self.mount.pid, signal.SIGSTOP)
        try:
            yield
        finally:
            os.kill(self.mount.pid, signal.SIGCONT)


class Partition(Fault):
    """The mount named ``name``, whose daemon runs in ``netns``, loses the network."""

    kind = "partition"

    def __init__(self, name: str, netns: NetNamespace,
                 hold: tuple[float, float] = (1.0, 8.0)) -> None:
        super().__init__(name, frozenset({name}), hold)
        self.netns = netns

    @contextmanager
    def injected(self) -> Iterator[None]:
        self.netns.link(up=False)
        try:
            yield
        finally:
            self.netns.link(up=True)


# -- a second "host": a network namespace ----------------------------------------------------


def require_netns_tools() -> None:
    for binary in (IP, NSENTER):
        if not os.access(binary, os.X_OK):
            pytest.fail(f"{binary} is missing: install iproute2 and util-linux; the "
                        "partition tests need network namespaces", pytrace=False)


_ns_counter = itertools.count()


def _ip(*args: str) -> str:
    res = subprocess.run([IP, *args], capture_output=True, text=True, timeout=30)
    if res.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {res.stderr.strip()}")
    return res.stdout


class NetNamespace:
    """A network namespace joined to the root one by a veth pair on a private /30.

    ``host_addr`` is the root end (etcd listens there), ``ns_addr`` the namespace's end.
    The subnet is picked in 10.213.0.0/16 so that it collides with no address in use.
    """

    def __init__(self) -> None:
        require_netns_tools()
        n = next(_ns_counter)
        tag = f"{os.getpid() % 100000}x{n}"
        self.name = f"kvfs-nemesis-{tag}"
        self.host_if, self.ns_if = f"kvh{tag}", f"kvn{tag}"  # <= 15 characters
        used = _ip("-o", "-4", "addr")
        base = (os.getpid() * 7 + n * 131) % 16384
        for i in range(16384):
            x = (base + i) % 16384  # the x-th /30 of 10.213.0.0/16
            net, last = f"10.213.{x >> 6}.", (x & 63) * 4
            self.host_addr, self.ns_addr = f"{net}{last + 1}", f"{net}{last + 2}"
            if f" {self.host_addr}/" not in used and f" {self.ns_addr}/" not in used:
                break
        self._created = False
        try:
            _ip("netns", "add", self.name)
            self._created = True
            _ip("link", "add", self.host_if, "type", "veth", "peer", "name", self.ns_if)
            _ip("link", "set", self.ns_if, "netns", self.name)
            _ip("addr", "add", f"{self.host_addr}/30", "dev", self.host_if)
            _ip("-n", self.name, "addr", "add", f"{self.ns_addr}/30", "dev", self.ns_if)
            _ip("-n", self.name, "link", "set", "lo", "up")
            _ip("-n", self.name, "link", "set", self.ns_if, "up")
            _ip("link", "set", self.host_if, "up")
        except BaseException:
            self.delete()
            raise

    @property
    def wrap(self) -> list[str]:
        """Command prefix that runs a program in this namespace (network only)."""
        return [NSENTER, f"--net=/run/netns/{self.name}"]

    def link(self, *, up: bool) -> None:
        _ip("link", "set", self.host_if, "up" if up else "down")

    def delete(self) -> None:
        if not self._created:
            return
        subprocess.run([IP, "link", "del", self.host_if], capture_output=True, timeout=30)
        subprocess.run([IP, "netns", "del", self.name], capture_output=True, timeout=30)
        self._created = False


# -- the nemesis -----------------------------------------------------------------------------


class Nemesis:
    """Injects random faults from ``faults`` until stopped, one at a time, separated by
    quiet periods drawn from ``quiet``; records each in ``timeline``.  Each kind of fault
    is drawn equally often, then one fault of that kind (a target)."""

    def __init__(self, faults: Sequence[Fault], timeline: Timeline, rng: random.Random, *,
                 quiet: tuple[float, float] = (2.0, 5.0)) -> None:
        assert faults
        self.faults = list(faults)
        self.timeline = timeline
        self.rng = rng
        self.quiet = quiet
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._main, name="nemesis", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 300) -> None:
        """Stop after the current fault is healed; re-raise whatever broke the nemesis."""
        self._stop.set()
        self._thread.join(timeout)
        assert not self._thread.is_alive(), "the nemesis did not stop (a fault not healing?)"
        if self.error is not None:
            raise AssertionError(f"the nemesis failed: {self.error!r}") from self.error

    def _main(self) -> None:
        try:
            while not self._stop.wait(self.rng.uniform(*self.quiet)):
                # Each kind of fault equally often, whatever the number of its targets.
                kind = self.rng.choice(sorted({f.kind for f in self.faults}))
                fault = self.rng.choice([f for f in self.faults if f.kind == kind])
                hold = self.rng.uniform(*fault.hold)
                with self.timeline.window(fault), fault.injected():
                    # Hold the fault in full even when asked to stop: a shorter hold would
                    # not be the fault that was drawn.
                    time.sleep(hold)
        except BaseException as e:  # noqa: BLE001 - reported by stop()
            self.error = e
