"""Block-node naming and discovery: which node is each disk's active layer.

Disks start as ``fmt-<target>`` over ``file-<target>`` (see ``cmdline``);
an external snapshot adds an overlay whose node names derive from its path,
so the same overlay always gets the same names.
"""
from __future__ import annotations

import hashlib

from .. import qmp
from ..cmdline import aio_option


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


__all__ = ["overlay_nodes", "top_nodes", "add_overlay"]
