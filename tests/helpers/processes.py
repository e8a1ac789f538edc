"""Processes a test may leave behind."""
from __future__ import annotations

from qdriver import process
from qdriver.testing.guestpool import qemu_pids

__all__ = ["alive", "qemu_pids"]


def alive(pid: int) -> bool:
    """Whether a process runs (a zombie does not)."""
    return process.start_time(pid) is not None
