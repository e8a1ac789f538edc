"""Async ``qemu-img``: argument lists (never a shell), ``--output=json``.

Offline snapshots go through here; an empty overlay is written in this process
(`overlay`), as are reads of qcow2 headers (`header`) and backing graphs.  A failing ``qemu-img``
raises `QemuImgError` carrying its stderr.
"""
from . import chain, graph, header, overlay
from .image import (
    ImageInfo,
    QemuImgError,
    SnapshotInfo,
    check,
    commit,
    create,
    create_overlay,
    info,
    rebase_unsafe,
    repair_leaks,
    snapshot_apply,
    snapshot_create,
    snapshot_delete,
    snapshot_list,
)

__all__ = ["ImageInfo", "QemuImgError", "SnapshotInfo", "check", "commit", "create",
           "create_overlay", "info", "rebase_unsafe", "repair_leaks", "snapshot_apply",
           "snapshot_create", "snapshot_delete", "snapshot_list", "header", "chain", "graph",
           "overlay"]
