"""Ask a running QEMU what the snapshot planner needs to know: its state and abilities."""
from __future__ import annotations

from .. import domstate, qemucaps, qmp
from ..qemucaps import QemuCaps
from ..domstate import PlannerState
from ..runtime import RunRecord, Runtime
from .create_plan import HostCaps
from .memfile import background_snapshot_usable


async def probe(mon: qmp.Monitor, runtime: Runtime, rec: RunRecord | None, live: bool = False,
                locked: bool = False) -> tuple[PlannerState, HostCaps]:
    """The domain state and what this QEMU can do, asked on an open monitor.

    Only a caller holding the domain lock (``locked``) may change anything:
    it remembers the answer in the run record and tries the
    background-snapshot capability on (QEMU checks the host kernel's
    userfaultfd write-protect right then).  Without the lock the probe only
    reads, so it cannot disturb another process's snapshot.
    """
    status = await domstate.query(mon)
    caps = await qemu_caps(mon, runtime, rec, locked)
    background = caps.background_snapshot and live and \
        await _background_usable(mon, runtime, rec, locked)
    return status.planner_state, HostCaps(snapshot_save=caps.snapshot_save,
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
