"""The revert planner: (domain, state, snapshot, flags) -> plan or refusal.

Pure, like the creation planner.  The snapshot's kind and whether the
running QEMU can take the snapshot back in place decide the mechanism
(`MECHANISMS`); the requested and recorded states decide what follows.

- internal memory, QEMU running the snapshot's own definition: the QMP
  ``snapshot-load`` job (HMP ``loadvm`` where missing) in the same QEMU; no
  restart, console and VNC clients stay attached.
- internal memory otherwise: stop QEMU, take the snapshot's definition,
  start a new QEMU paused, then ``snapshot-load`` (what libvirt 10.10+ does).
- internal disks without memory (offline and disk-only snapshots): stop
  QEMU, ``qemu-img snapshot -a`` on every image, take the snapshot's
  definition; start only with ``running``/``paused``.
- external memory or disks: not built yet, refused with a message saying so.
"""
from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Literal

from ..errors import (InvalidArgError, NoSupportError, OperationUnsupportedError,
                      SnapshotRevertRiskyError)
from ..xml.domain import DomainDef
from ..xml.snapshot import SnapshotDef
from .create_plan import HostCaps

FinalState = Literal["running", "paused", "shutoff"]
Mechanism = Literal["load-in-place", "restart-and-load", "qemu-img-apply"]


class RevertStep(enum.StrEnum):
    """Every step a revert plan can contain; the executor has one method each."""

    STOP = "stop"
    QEMU_IMG_APPLY = "qemu-img-apply"
    SWITCH_DEFINITION = "switch-definition"
    START_PAUSED = "start-paused"
    PAUSE = "pause"
    SNAPSHOT_LOAD = "snapshot-load"
    HMP_LOADVM = "hmp-loadvm"
    RESUME = "resume"
    SET_CURRENT = "set-current"


@dataclass(frozen=True)
class RevertFlags:
    """``virDomainSnapshotRevertFlags`` as booleans."""

    running: bool = False
    paused: bool = False
    force: bool = False


@dataclass(frozen=True)
class RevertPlan:
    """The decision for one revert request, as data."""

    name: str
    mechanism: Mechanism
    state: FinalState
    """The domain's state afterwards."""
    steps: tuple[RevertStep, ...]
    definition: DomainDef
    """The definition the domain has afterwards (the snapshot's, under the domain's name)."""
    internal_disks: tuple[str, ...]
    """The images that hold the internal snapshot (the snapshot-time sources)."""

    def to_json(self) -> dict[str, object]:
        return {"name": self.name, "mechanism": self.mechanism, "state": self.state,
                "steps": [str(s) for s in self.steps],
                "internal_disks": list(self.internal_disks)}


def plan_revert(domain: DomainDef, state: str, snap: SnapshotDef,
                flags: RevertFlags = RevertFlags(), caps: HostCaps = HostCaps()) -> RevertPlan:
    """Decide what reverting to ``snap`` means; raise the refusal otherwise."""
    name = snap.name or ""
    if flags.running and flags.paused:
        raise InvalidArgError("Flags 'VIR_DOMAIN_SNAPSHOT_REVERT_RUNNING' and "
                              "'VIR_DOMAIN_SNAPSHOT_REVERT_PAUSED' are mutually exclusive")
    if snap.domain is None:
        raise SnapshotRevertRiskyError(f"snapshot '{name}' lacks domain '{domain.name}' "
                                       "rollback info")
    if snap.state == "pmsuspended":
        raise OperationUnsupportedError(
            "qemu doesn't support reversion of snapshot taken in PMSUSPENDED state")
    if snap.is_external:
        raise NoSupportError(f"reverting to external snapshot '{name}' is not implemented "
                             "yet; internal snapshots can be reverted")
    target = _renamed(DomainDef.from_element(snap.domain), domain)
    internal = tuple(d.name for d in snap.disks if d.snapshot == "internal")
    live = state in ("running", "paused")
    memory = snap.memory == "internal" or snap.state in ("running", "paused")
    final = _final_state(snap, flags, memory)
    if memory:
        in_place = live and target.to_xml() == domain.to_xml()
        mechanism: Mechanism = "load-in-place" if in_place else "restart-and-load"
    else:
        if not internal:
            raise InvalidArgError(f"snapshot '{name}' holds neither memory nor internal "
                                  "disk snapshots to revert to")
        mechanism = "qemu-img-apply"
    steps = _steps(mechanism, live, state == "running", final, caps)
    return RevertPlan(name, mechanism, final, steps, target, internal)


def _renamed(target: DomainDef, domain: DomainDef) -> DomainDef:
    """The snapshot's definition under the domain's current name (libvirt forces it)."""
    if target.name == domain.name:
        return target
    root = target.root_copy()
    name_el = root.find("name")
    assert name_el is not None
    name_el.text = domain.name
    return DomainDef.from_element(root)


def _final_state(snap: SnapshotDef, flags: RevertFlags, memory: bool) -> FinalState:
    if flags.running:
        return "running"
    if flags.paused:
        return "paused"
    if memory:
        return "running" if snap.state == "running" else "paused"
    return "shutoff"


def _steps(mechanism: Mechanism, live: bool, running: bool, final: FinalState,
           caps: HostCaps) -> tuple[RevertStep, ...]:
    load = RevertStep.SNAPSHOT_LOAD if caps.snapshot_save else RevertStep.HMP_LOADVM
    resume = [RevertStep.RESUME] if final == "running" else []
    if mechanism == "load-in-place":
        pause = [RevertStep.PAUSE] if running else []
        return (*pause, load, *resume, RevertStep.SET_CURRENT)
    stop = [RevertStep.STOP] if live else []
    if mechanism == "restart-and-load":
        return (*stop, RevertStep.SWITCH_DEFINITION, RevertStep.START_PAUSED, load, *resume,
                RevertStep.SET_CURRENT)
    start = [RevertStep.START_PAUSED] if final != "shutoff" else []
    return (*stop, RevertStep.QEMU_IMG_APPLY, RevertStep.SWITCH_DEFINITION, *start, *resume,
            RevertStep.SET_CURRENT)


__all__ = ["RevertFlags", "RevertPlan", "RevertStep", "plan_revert"]
