"""Domain states: libvirt's vocabulary, and the one mapping from QEMU's run status.

QEMU reports its run status in ``query-status``; libvirt users think in
``virDomainState`` plus a reason word (``paused (migrated)``).  `RunStatus`
is the single place where one becomes the other, so every caller (state
queries, snapshot planning, resume checks) reads QEMU the same way.
"""
from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Literal

from . import qmp

PlannerState = Literal["running", "paused", "shutoff", "pmsuspended"]
"""The states the snapshot planner distinguishes."""


class DomainState(enum.IntEnum):
    """libvirt's ``virDomainState``."""

    NOSTATE = 0
    RUNNING = 1
    BLOCKED = 2
    PAUSED = 3
    SHUTDOWN = 4
    SHUTOFF = 5
    CRASHED = 6
    PMSUSPENDED = 7

    @property
    def label(self) -> str:
        """The word ``virsh domstate`` prints."""
        return STATE_LABELS[self]

    def __str__(self) -> str:  # ``print(dom.state)``: the name, not libvirt's number
        return f"{type(self).__name__}.{self.name}"

    def __format__(self, spec: str) -> str:
        return format(str(self), spec)


STATE_LABELS = {
    DomainState.NOSTATE: "no state", DomainState.RUNNING: "running",
    DomainState.BLOCKED: "idle", DomainState.PAUSED: "paused",
    DomainState.SHUTDOWN: "in shutdown", DomainState.SHUTOFF: "shut off",
    DomainState.CRASHED: "crashed", DomainState.PMSUSPENDED: "pmsuspended",
}

# QMP run states (query-status) to libvirt states and reasons.
QMP_STATES: dict[str, tuple[DomainState, str]] = {
    "running": (DomainState.RUNNING, "unpaused"),
    "paused": (DomainState.PAUSED, "user"),
    "prelaunch": (DomainState.PAUSED, "user"),  # only left there by start --paused
    "postmigrate": (DomainState.PAUSED, "migrated"),
    "finish-migrate": (DomainState.PAUSED, "migrating"),
    "inmigrate": (DomainState.PAUSED, "migrating"),
    "save-vm": (DomainState.PAUSED, "saving"),
    "restore-vm": (DomainState.PAUSED, "restoring"),
    "io-error": (DomainState.PAUSED, "I/O error"),
    "watchdog": (DomainState.PAUSED, "watchdog"),
    "guest-panicked": (DomainState.CRASHED, "panicked"),
    "internal-error": (DomainState.PAUSED, "unknown"),
    "debug": (DomainState.PAUSED, "debugger"),
    "shutdown": (DomainState.SHUTDOWN, "user"),
    "suspended": (DomainState.PMSUSPENDED, "unknown"),
    "colo": (DomainState.PAUSED, "colo"),
}
UNKNOWN = (DomainState.PAUSED, "unknown")


@dataclass(frozen=True)
class RunStatus:
    """QEMU's run status and what it means to libvirt and to the planner."""

    qmp: str

    @property
    def state(self) -> DomainState:
        return QMP_STATES.get(self.qmp, UNKNOWN)[0]

    @property
    def reason(self) -> str:
        return QMP_STATES.get(self.qmp, UNKNOWN)[1]

    @property
    def running(self) -> bool:
        return self.qmp == "running"

    @property
    def planner_state(self) -> PlannerState:
        """``running``, ``pmsuspended``, or ``paused`` for every other live state."""
        return "running" if self.running else \
            "pmsuspended" if self.qmp == "suspended" else "paused"


async def query(mon: qmp.Monitor, timeout: float = qmp.DEFAULT_TIMEOUT) -> RunStatus:
    """Ask QEMU for its run status."""
    status = await mon.execute("query-status", timeout=timeout)
    return RunStatus(str(status["status"]))


async def ensure_running(mon: qmp.Monitor) -> None:
    """``cont`` unless the vCPUs already run (``cont`` on a running guest is an error)."""
    if not (await query(mon)).running:
        await mon.execute("cont")


__all__ = ["DomainState", "PlannerState", "RunStatus", "query", "ensure_running",
           "QMP_STATES", "STATE_LABELS"]
