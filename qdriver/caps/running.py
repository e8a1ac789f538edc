"""What a running QEMU lets a snapshot use, asked once per QEMU and remembered.

The answer (`QemuCaps` and whether background-snapshot works on this host
kernel) is kept in the run record, since it cannot change while QEMU runs.
"""
from __future__ import annotations

from dataclasses import dataclass

from .. import qmp, runstatus
from ..launch.runtime import RunRecord, Runtime
from ..memory.memfile import background_snapshot_usable
from ..runstatus import PlannerState, RunStatus
from . import qemucaps
from .qemucaps import QemuCaps


@dataclass(frozen=True)
class RunningCaps:
    """What the running QEMU (and the host kernel under it) let a snapshot use:
    asked by `probe`, read by the planners."""

    snapshot_save: bool = True
    """QMP ``snapshot-save`` exists (QEMU >= 6.0); else HMP ``savevm``."""
    background_snapshot: bool = True
    """The ``background-snapshot`` migration capability is usable."""
    migrated: bool = False
    """QEMU sits in ``postmigrate`` after an earlier memory save of a paused guest: its
    images are inactive and it refuses another migration until the vCPUs have run."""


async def probe(mon: qmp.Monitor, runtime: Runtime, rec: RunRecord | None,
                status: RunStatus | None = None, live: bool = False,
                locked: bool = False) -> tuple[PlannerState, RunningCaps]:
    """The domain state and what this QEMU can do, asked on an open monitor
    (the run status only if ``status`` is not known yet).

    Only a caller holding the domain lock (``locked``) may change anything:
    it remembers the answer in the run record and tries the
    background-snapshot capability on (QEMU checks the host kernel's
    userfaultfd write-protect right then).  Without the lock the probe only
    reads, so it cannot disturb another process's snapshot.
    """
    status = status or await runstatus.query(mon)
    caps = await qemu_caps(mon, runtime, rec, locked)
    background = caps.background_snapshot and live and \
        await _background_usable(mon, runtime, rec, locked)
    return status.planner_state, RunningCaps(snapshot_save=caps.snapshot_save,
                                             background_snapshot=background,
                                             migrated=status.qmp == "postmigrate")


async def qemu_caps(mon: qmp.Monitor, runtime: Runtime, rec: RunRecord | None,
                    locked: bool = False) -> QemuCaps:
    """What this QEMU can do: asked once per QEMU process and remembered in its run
    record (by a caller holding the lock), since it cannot change while QEMU runs."""
    caps = QemuCaps.from_record(rec.caps) if rec is not None and rec.caps else None
    if caps is None:
        caps = await qemucaps.probe(mon)
        if rec is not None and locked:
            runtime.update(rec, caps=caps.to_record())
    return caps


async def _background_usable(mon: qmp.Monitor, runtime: Runtime, rec: RunRecord | None,
                             locked: bool) -> bool:
    """Whether the host kernel lets QEMU use background-snapshot (tried once, remembered)."""
    if rec is not None and rec.background_usable is not None:
        return rec.background_usable
    usable = await background_snapshot_usable(mon, locked)
    if rec is not None and locked:
        runtime.update(rec, background_usable=usable)
    return usable


__all__ = ["probe", "qemu_caps"]
