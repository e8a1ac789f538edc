"""A disk's backing chain, read by qdriver from the image headers, layer by layer.

QEMU is never left to follow backing file names itself: an image's header is
data anyone who wrote the image controls, and a name like
``json:{"driver":"raw","file":{"filename":"/etc/shadow"}}`` or ``nbd://...``
would have QEMU open whatever it says.  qdriver reads each header, accepts
only plain files, checks each one, and hands QEMU every layer as its own
block node with its backing named explicitly (as libvirt does).
"""
from __future__ import annotations

import os
from dataclasses import dataclass

from ..errors import InvalidArgError
from .header import read as read_header

MAX_DEPTH = 256
"""QEMU's own limit on backing chain length is far above any real chain; this ends loops."""


@dataclass(frozen=True)
class Layer:
    """One image below a disk's top: its file and format."""

    path: str
    format: str


def backing_layers(top: str, top_format: str, what: str) -> tuple[Layer, ...]:
    """The images below ``top``, nearest first; `InvalidArgError` names a backing
    name that is not a plain file (``json:``, a protocol), a loop, or a chain
    too deep; OSError if an image cannot be read."""
    layers: list[Layer] = []
    seen = {os.path.realpath(top)}
    current, fmt = top, top_format
    while fmt == "qcow2":
        head = read_header(current)
        if head.backing is None:
            break
        backing = head.backing
        if not backing.startswith("/"):
            raise InvalidArgError(
                f"{what}: image '{current}' names backing file '{backing}', which is not a "
                "plain file; qdriver only opens files it has checked (rebase the image "
                "onto a file: qemu-img rebase -u)")
        if os.path.realpath(backing) in seen or len(layers) >= MAX_DEPTH:
            raise InvalidArgError(f"{what}: the backing chain of '{top}' loops or is deeper "
                                  f"than {MAX_DEPTH} images")
        seen.add(os.path.realpath(backing))
        fmt = head.backing_format or _probe(backing)
        if fmt not in ("qcow2", "raw"):
            raise InvalidArgError(f"{what}: backing file '{backing}' of '{current}' has "
                                  f"format '{fmt}', which qdriver does not open")
        layers.append(Layer(backing, fmt))
        current = backing
    return tuple(layers)


def _probe(path: str) -> str:
    """The format of a backing file whose overlay does not record it."""
    try:
        return read_header(path).format
    except OSError:
        return "raw"  # a missing file is named by the caller's check


__all__ = ["Layer", "backing_layers"]
