"""Read an image's format and backing file from its header, without a subprocess.

Planning a snapshot delete needs the backing graph of every image a domain's
snapshots name; spawning ``qemu-img info`` for each costs ~15 ms apiece, while
the qcow2 header holds the answer in its first bytes (QEMU's docs/interop/qcow2.txt:
magic ``QFI\\xfb``, backing file offset at byte 8 (u64 BE), its length at 16 (u32 BE)).
Anything that is not qcow2 is reported as ``raw`` with no backing file.
"""
from __future__ import annotations

import os
import struct
from dataclasses import dataclass

QCOW2_MAGIC = b"QFI\xfb"
MAX_BACKING_NAME = 1023  # QEMU's own limit


@dataclass(frozen=True)
class Header:
    format: str
    backing: str | None
    """The backing file as an absolute path (relative names resolve against the image's dir)."""


def read(path: str) -> Header:
    """The format and backing file of ``path``; OSError if it cannot be read."""
    with open(path, "rb") as f:
        head = f.read(20)
        if head[:4] != QCOW2_MAGIC or len(head) < 20:
            return Header("raw", None)
        offset, size = struct.unpack(">QI", head[8:20])
        if not offset or not size or size > MAX_BACKING_NAME:
            return Header("qcow2", None)
        f.seek(offset)
        name = f.read(size).decode(errors="surrogateescape")
    if not name.startswith("/") and ":" not in name.split("/")[0]:
        name = os.path.join(os.path.dirname(os.path.abspath(path)), name)
    return Header("qcow2", os.path.normpath(name) if name.startswith("/") else name)


__all__ = ["Header", "read"]
