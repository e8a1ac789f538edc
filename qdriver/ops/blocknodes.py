"""Block-node naming and discovery: each disk's active layer, every image QEMU has open.

Disks start as ``fmt-<target>`` over ``file-<target>`` (see ``cmdline``);
an external snapshot adds an overlay whose node names derive from its path,
so the same overlay always gets the same names.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass

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


__all__ = ["overlay_nodes", "top_nodes", "add_overlay", "OpenImages", "open_images"]
