"""Processes a test may leave behind."""
from __future__ import annotations

from pathlib import Path

from qdriver.guestpool import qemu_pids


def qemu_pids_for(state_dir: Path) -> list[int]:
    """QEMU processes whose command line mentions this state dir."""
    return qemu_pids(state_dir)


def alive(pid: int) -> bool:
    """Whether a process runs (a zombie does not)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"
