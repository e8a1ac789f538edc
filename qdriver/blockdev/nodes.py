"""Block-node naming and discovery: each disk's active layer, every image QEMU has open.

Disks start as ``fmt-<target>`` over ``file-<target>`` (see ``cmdline``), each
image below as ``ov-<target>-<tag>``; an external snapshot adds an overlay
named the same way, from its path, so the same image always gets the same names.
"""
from __future__ import annotations

import json
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, AsyncIterator, Mapping

import anyio

from .. import qmp
from ..errors import OperationFailedError
from ..launch.cmdline import aio_option, layer_nodes
from ..qemuimg import header


def overlay_nodes(target: str, path: str) -> tuple[str, str]:
    """Stable (format, file) node names for an overlay image (those of a backing
    layer QEMU started with, `cmdline.layer_nodes`)."""
    return layer_nodes(target, path)


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
    with_vmstate: dict[str, frozenset[str]]
    """format node -> those of its internal snapshots that hold the guest's memory."""
    read_only: frozenset[str] = frozenset()
    """The format nodes QEMU opened read-only (backing layers)."""

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
    vmstate: dict[str, frozenset[str]] = {}
    read_only: set[str] = set()
    for n in await mon.execute("query-named-block-nodes", {"flat": True}):
        if n.get("drv") in PROTOCOL_DRIVERS:
            continue
        name = str(n["node-name"])
        nodes.setdefault(image_file(n), name)
        snaps = n.get("image", {}).get("snapshots", ())
        held[name] = frozenset(str(s.get("name")) for s in snaps)
        vmstate[name] = frozenset(str(s.get("name")) for s in snaps
                                  if int(s.get("vm-state-size", 0)) > 0)
        if n.get("ro"):
            read_only.add(name)
    return OpenImages(nodes, held, vmstate, frozenset(read_only))


@asynccontextmanager
async def writable(mon: qmp.Monitor, node: str, images: OpenImages | None = None
                   ) -> AsyncIterator[None]:
    """Hold a format node read-write for a while: QEMU opens backing layers
    read-only, and an internal snapshot in one can only be deleted by the node
    itself once it may write.  The guest only reads that layer, so the reopen is
    invisible to it; the node goes back to read-only afterwards.  ``images``, just
    asked, says a node is writable already without asking QEMU again."""
    if images is not None and node in images.nodes.values() and node not in images.read_only:
        yield
        return
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
    what it is not given): its file node, its backing node if it has one (an
    explicit backing must be named: the one its header names, as qdriver opened
    it), and the discard mode ``cmdline`` gives a disk's first node."""
    path = image_file(entry)
    file_node = next(n["node-name"] for n in listing
                     if n.get("drv") in PROTOCOL_DRIVERS and n.get("file") == path)
    backing = header.read(path).backing
    backing_node = next((n["node-name"] for n in listing if backing
                         and n.get("drv") not in PROTOCOL_DRIVERS
                         and image_file(n) == backing), None)
    options: dict[str, Any] = {"driver": entry["drv"], "node-name": entry["node-name"],
                               "file": file_node}
    if backing_node is not None:
        options["backing"] = backing_node
    if str(entry["node-name"]).startswith("fmt-"):
        options["discard"] = "unmap"
    return options


def image_file(entry: Mapping[str, Any]) -> str:
    """The image a block node (or ``query-block``'s inserted medium) has open.

    QEMU reports a ``json:`` description instead of the file name when a node's
    backing is not the one its header names verbatim (qdriver names every
    backing node itself); the image is that description's ``file.filename``."""
    name = str(entry.get("file", ""))
    if not name.startswith("json:"):
        return name
    try:
        spec = json.loads(name[len("json:"):])
    except ValueError:
        return name
    inner = spec.get("file") if isinstance(spec, dict) else None
    filename = inner.get("filename") if isinstance(inner, dict) else None
    return filename if isinstance(filename, str) else name


__all__ = ["overlay_nodes", "top_nodes", "add_overlay", "OpenImages", "open_images",
           "writable", "image_file"]
