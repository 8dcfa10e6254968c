"""Network namespaces that reach each other, for partition tests of the Raft store.

:class:`BridgedHosts` makes one network namespace per member name, each joined by a veth
pair to one bridge in the root namespace, all on one private /29 (the bridge holds the
first address, so the test -- in the root namespace -- reaches every member, and members
reach each other through the bridge).  A member runs in its namespace under
:meth:`BridgedHosts.wrap` (``ip netns exec NS``).

:meth:`BridgedHosts.isolate` cuts one member off from the others: blackhole routes to the
others' addresses in its namespace, and to its address in theirs.  The test itself (the
bridge's address) still reaches the isolated member, so a client talking only to it sees
what it answers on the wrong side of a partition.  Neither iptables nor nft is needed.
:meth:`BridgedHosts.heal` removes the routes.

Invariants: :meth:`BridgedHosts.delete` removes every namespace, veth and the bridge this
object created, also after a half-finished set-up; subnets are picked in 10.214.0.0/16
from the ones no interface uses.
"""

from __future__ import annotations

import itertools
import os
import subprocess
from collections.abc import Sequence

import pytest

IP = "/usr/sbin/ip"

_counter = itertools.count()


def _ip(*args: str) -> str:
    res = subprocess.run([IP, *args], capture_output=True, text=True, timeout=30)
    if res.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {res.stderr.strip()}")
    return res.stdout


class BridgedHosts:
    """One namespace per name in ``names`` (at most 5) on a bridge (module docstring)."""

    def __init__(self, names: Sequence[str]) -> None:
        if not os.access(IP, os.X_OK):
            pytest.fail(f"{IP} is missing: install iproute2; the partition tests need "
                        "network namespaces", pytrace=False)
        if os.geteuid() != 0:
            pytest.fail("the partition tests need root (network namespaces)", pytrace=False)
        assert 0 < len(names) <= 5
        self.names = tuple(names)
        tag = f"{os.getpid() % 100000}x{next(_counter)}"
        self.bridge = f"kvb{tag}"  # interface names have at most 15 characters
        used = _ip("-o", "-4", "addr")
        base = (os.getpid() * 11) % 8192
        for i in range(8192):
            x = (base + i) % 8192  # the x-th /29 of 10.214.0.0/16
            prefix, first = f"10.214.{x >> 5}.", (x & 31) * 8
            if f" {prefix}{first + 1}/" not in used:
                break
        self.bridge_addr = f"{prefix}{first + 1}"
        self.addr = {name: f"{prefix}{first + 2 + i}" for i, name in enumerate(self.names)}
        self.ns = {name: f"kvfs-raft-{tag}-{name}" for name in self.names}
        self._veth = {name: f"kvv{tag}{i}" for i, name in enumerate(self.names)}
        self._routes: list[tuple[str, str]] = []  # (namespace, blackholed address)
        self._made: list[tuple[str, str]] = []  # ("netns"|"link", name), to delete
        try:
            _ip("link", "add", self.bridge, "type", "bridge")
            self._made.append(("link", self.bridge))
            _ip("addr", "add", f"{self.bridge_addr}/29", "dev", self.bridge)
            _ip("link", "set", self.bridge, "up")
            for name in self.names:
                ns, veth = self.ns[name], self._veth[name]
                _ip("netns", "add", ns)
                self._made.append(("netns", ns))
                _ip("link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", ns)
                self._made.append(("link", veth))
                _ip("link", "set", veth, "master", self.bridge)
                _ip("link", "set", veth, "up")
                _ip("-n", ns, "addr", "add", f"{self.addr[name]}/29", "dev", "eth0")
                _ip("-n", ns, "link", "set", "lo", "up")
                _ip("-n", ns, "link", "set", "eth0", "up")
        except BaseException:
            self.delete()
            raise

    def wrap(self, name: str) -> tuple[str, ...]:
        """Command prefix that runs a program in ``name``'s namespace."""
        return (IP, "netns", "exec", self.ns[name])

    def isolate(self, name: str) -> None:
        """Cut ``name`` off from every other member (both directions)."""
        for other in self.names:
            if other != name:
                self._blackhole(self.ns[name], self.addr[other])
                self._blackhole(self.ns[other], self.addr[name])

    def _blackhole(self, ns: str, addr: str) -> None:
        _ip("-n", ns, "route", "add", "blackhole", f"{addr}/32")
        self._routes.append((ns, addr))

    def heal(self) -> None:
        """Remove every cut."""
        while self._routes:
            ns, addr = self._routes.pop()
            _ip("-n", ns, "route", "del", "blackhole", f"{addr}/32")

    @property
    def cut(self) -> bool:
        return bool(self._routes)

    def delete(self) -> None:
        while self._made:
            kind, name = self._made.pop()
            args = ("link", "del", name) if kind == "link" else ("netns", "del", name)
            subprocess.run([IP, *args], capture_output=True, timeout=30)
        self._routes.clear()
