"""Async ``qemu-img``: argument lists (never a shell), ``--output=json``.

Offline snapshots and overlays go through here.  A failing ``qemu-img``
raises `QemuImgError` carrying its stderr.
"""
from . import chain, header
from .image import (
    ImageInfo,
    QemuImgError,
    SnapshotInfo,
    check,
    commit,
    create,
    info,
    rebase_unsafe,
    repair_leaks,
    snapshot_apply,
    snapshot_create,
    snapshot_delete,
    snapshot_list,
)

__all__ = ["ImageInfo", "QemuImgError", "SnapshotInfo", "check", "commit", "create", "info",
           "rebase_unsafe", "repair_leaks", "snapshot_apply", "snapshot_create", "snapshot_delete",
           "snapshot_list", "header", "chain"]
