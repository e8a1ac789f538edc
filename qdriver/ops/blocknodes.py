"""Block-node naming and discovery: each disk's active layer, every image QEMU has open.

Disks start as ``fmt-<target>`` over ``file-<target>`` (see ``cmdline``);
an external snapshot adds an overlay whose node names derive from its path,
so the same overlay always gets the same names.
"""
from __future__ import annotations

import hashlib
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, AsyncIterator

import anyio

from .. import qmp
from ..cmdline import aio_option
from ..errors import OperationFailedError


def overlay_nodes(target: str, path: str) -> tuple[str, str]:
    """Stable (format, file) node names for an overlay image."""
    tag = hashlib.sha256(path.encode()).hexdigest()[:8]
    return f"ov-{target}-{tag}", f"ovf-{target}-{tag}"


async def top_nodes(mon: qmp.Monitor) -> dict[str, str]:
    """The active (top) block node of each disk, by target name."""
    nodes: dict[str, str] = {}
    for dev in await mon.execute("query-block"):
        inserted = dev.get("inserted")
        qdev = str(dev.get("qdev", ""))
        if inserted:
            for part in qdev.split("/"):
                if part:
                    nodes.setdefault(part, inserted["node-name"])
    return nodes


async def add_overlay(mon: qmp.Monitor, target: str, path: str, io: str | None = None) -> str:
    """Open ``path`` as a qcow2 node with no backing yet, with the disk's I/O mode;
    return its node name."""
    fmt_node, file_node = overlay_nodes(target, path)
    await mon.execute("blockdev-add", {
        "driver": "qcow2", "node-name": fmt_node, "backing": None,
        "file": {"driver": "file", "filename": path, "node-name": file_node,
                 **aio_option(io)}})
    return fmt_node


@dataclass(frozen=True)
class OpenImages:
    """One ``query-named-block-nodes``: the images QEMU has open, by file."""

    nodes: dict[str, str]
    """image -> the format node QEMU opened it as (named by qdriver or by QEMU)."""
    held: dict[str, frozenset[str]]
    """format node -> the internal snapshots its image holds."""

    def node(self, image: str) -> str:
        if image not in self.nodes:
            raise OperationFailedError(f"QEMU has no block node for image '{image}'")
        return self.nodes[image]


PROTOCOL_DRIVERS = frozenset({"file", "host_device", "host_cdrom"})
"""Nodes that name the same file as the format node above them."""


async def open_images(mon: qmp.Monitor) -> OpenImages:
    """Every image QEMU has open, with its format node and internal snapshots."""
    nodes: dict[str, str] = {}
    held: dict[str, frozenset[str]] = {}
    for n in await mon.execute("query-named-block-nodes", {"flat": True}):
        if n.get("drv") in PROTOCOL_DRIVERS:
            continue
        nodes.setdefault(str(n.get("file")), str(n["node-name"]))
        held[str(n["node-name"])] = frozenset(
            str(s.get("name")) for s in n.get("image", {}).get("snapshots", ()))
    return OpenImages(nodes, held)


@asynccontextmanager
async def writable(mon: qmp.Monitor, node: str) -> AsyncIterator[None]:
    """Hold a format node read-write for a while: QEMU opens backing layers
    read-only, and an internal snapshot in one can only be deleted by the node
    itself once it may write.  The guest only reads that layer, so the reopen is
    invisible to it; the node goes back to read-only afterwards."""
    listing = await mon.execute("query-named-block-nodes", {"flat": True})
    entry = next((n for n in listing if n.get("node-name") == node), None)
    if entry is None or not entry.get("ro"):
        yield
        return
    options = _reopen_options(entry, listing)
    await mon.execute("blockdev-reopen", {"options": [{**options, "read-only": False}]})
    try:
        yield
    finally:
        with anyio.CancelScope(shield=True):
            await mon.execute("blockdev-reopen", {"options": [{**options, "read-only": True}]})


def _reopen_options(entry: dict[str, Any], listing: list[dict[str, Any]]) -> dict[str, Any]:
    """A format node's options as qdriver opened it (``blockdev-reopen`` resets
    what it is not given): its file node, its backing node if it has one (a
    backing attached by ``blockdev-snapshot`` must be named), and the discard
    mode ``cmdline`` gives a disk's first node."""
    path = entry.get("file")
    file_node = next(n["node-name"] for n in listing
                     if n.get("drv") in PROTOCOL_DRIVERS and n.get("file") == path)
    backing = entry.get("backing_file")
    backing_node = next((n["node-name"] for n in listing if backing
                         and n.get("drv") not in PROTOCOL_DRIVERS and n.get("file") == backing),
                        None)
    options: dict[str, Any] = {"driver": entry["drv"], "node-name": entry["node-name"],
                               "file": file_node}
    if backing_node is not None:
        options["backing"] = backing_node
    if str(entry["node-name"]).startswith("fmt-"):
        options["discard"] = "unmap"
    return options


__all__ = ["overlay_nodes", "top_nodes", "add_overlay", "OpenImages", "open_images",
           "writable"]
