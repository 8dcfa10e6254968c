"""The client side of a mount's control socket (:mod:`kvfs.fuse.control` serves it).

Light on purpose -- the standard library and msgpack -- so the commands that use it start
quickly.  A request and its answer are each one msgpack map preceded by its length (4 bytes,
big-endian); one request per connection.
"""

from __future__ import annotations

import hashlib
import os
import socket
import struct
from typing import Any

import msgpack

RUN_DIR = "/run/kvfs"
LENGTH = struct.Struct(">I")


def socket_path(mountpoint: str) -> str:
    """Where the mount at ``mountpoint`` listens (named after its canonical path)."""
    digest = hashlib.sha256(os.path.realpath(mountpoint).encode()).hexdigest()[:24]
    return os.path.join(RUN_DIR, f"control-{digest}.sock")


def request(mountpoint: str, req: dict[str, Any], timeout: float = 300) -> dict[str, Any]:
    """Send one request to the mount at ``mountpoint`` (blocking; for the CLI).  Raises
    ConnectionError with a one-line message when the mount does not answer."""
    path = socket_path(mountpoint)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        try:
            s.connect(path)
        except (FileNotFoundError, ConnectionRefusedError):
            raise ConnectionError(f"the kvfs mount at {mountpoint} has no control socket "
                                  f"({path}); remount it with this kvfs version") from None
        except PermissionError:
            raise ConnectionError(f"permission denied on {path}: history commands need "
                                  "root") from None
        raw = msgpack.packb(req)
        s.sendall(LENGTH.pack(len(raw)) + raw)
        buf = bytearray()
        try:
            while True:
                got = s.recv(1 << 20)
                if not got:
                    break
                buf += got
        except TimeoutError:
            raise ConnectionError(f"the kvfs mount at {mountpoint} did not answer within "
                                  f"{timeout:g} s") from None
    if len(buf) < 4 or len(buf) != 4 + LENGTH.unpack_from(buf)[0]:
        raise ConnectionError(f"the kvfs mount at {mountpoint} sent a broken answer")
    answer: dict[str, Any] = msgpack.unpackb(bytes(buf[4:]))
    return answer
