"""One monitor connection per QEMU kept open by a process, between its jobs.

Connecting costs more than most commands: after a moment of idleness, QEMU's
greeting and the capability negotiation take 5-12 ms here, where a command
takes under 1 ms.  libvirt keeps one connection for QEMU's whole life; qdriver
has no daemon, and a QEMU monitor serves one client at a time, so a kept
connection must never stand in the next process's way.  QEMU therefore has a
monitor of its own for it (``keep.sock``), and the process that keeps it holds
an ``flock`` on a lease file for as long as it does.  Any other process (a
command-line call while an application keeps the connection) connects to the
ordinary socket per job, as before.  The lease ends with the process, and QEMU
then accepts the next keeper.

A connection belongs to the event loop it was made in: one kept from a loop
that is closed is abandoned (its socket closed) and made again; one that
another thread's running loop keeps is left to it.  Commands on the
kept connection are sent only by a job, under the domain lock, like those on
the ordinary socket.
"""
from __future__ import annotations

import asyncio
import fcntl
import os
from dataclasses import dataclass
from pathlib import Path

from .connection import Monitor, close, connect
from .errors import MonitorConnectError


@dataclass
class _Kept:
    monitor: Monitor
    lease: int
    """The open lease file, flocked: closing it ends the lease."""
    owner: object
    """Which QEMU the connection reaches (a later QEMU on the same path is another)."""


_KEPT: dict[Path, _Kept] = {}


async def borrow(path: Path, lease: Path, owner: object) -> Monitor | None:
    """This process's kept connection to the monitor at ``path``, made on first use.

    ``owner`` tells this QEMU from a later one at the same path.  None when the
    socket is absent (a QEMU started without it) or another process keeps it;
    the caller then connects to the ordinary socket for its job.
    """
    kept = _KEPT.get(path)
    if kept is not None:
        mine = kept.monitor.loop is asyncio.get_running_loop()
        if mine and kept.owner == owner and kept.monitor.connected:
            return kept.monitor
        if not mine and not kept.monitor.loop.is_closed():
            return None  # another thread's event loop keeps it: leave it be
        await release(path)
    if not path.exists():
        return None
    fd = _take_lease(lease)
    if fd is None:
        return None
    try:
        monitor = await connect(path)
    except MonitorConnectError:
        os.close(fd)
        return None
    _KEPT[path] = _Kept(monitor, fd, owner)
    return monitor


async def release(path: Path) -> None:
    """Close the kept connection to ``path`` (if any) and end its lease."""
    kept = _KEPT.pop(path, None)
    if kept is None:
        return
    try:
        if kept.monitor.loop is asyncio.get_running_loop():
            await close(kept.monitor)
        else:
            kept.monitor.abandon()
    finally:
        os.close(kept.lease)


async def release_under(directory: Path) -> None:
    """Release every kept connection whose socket lies under ``directory``."""
    for path in [p for p in _KEPT if p.is_relative_to(directory)]:
        await release(path)


def kept_paths() -> list[Path]:
    """The sockets this process keeps a connection to."""
    return list(_KEPT)


def _take_lease(lease: Path) -> int | None:
    """The lease file, open and flocked; None if another process holds it."""
    try:
        fd = os.open(lease, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        return None
    return fd


__all__ = ["borrow", "release", "release_under", "kept_paths"]
