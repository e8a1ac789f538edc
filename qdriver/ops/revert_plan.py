"""The revert planner: (domain, state, snapshot, flags) -> plan or refusal.

Pure, like the creation planner.  The snapshot's kind and whether the
running QEMU can take the snapshot back in place decide the mechanism
(`MECHANISMS`); the requested and recorded states decide what follows.

- internal memory, QEMU running the snapshot's own definition: the QMP
  ``snapshot-load`` job (HMP ``loadvm`` where missing) in the same QEMU; no
  restart, console and VNC clients stay attached.  A guest with a ``<genid>``
  needs ``force`` for it, and restarts (QEMU cannot change the ID it shows).
- internal memory otherwise: stop QEMU, take the snapshot's definition,
  start a new QEMU paused, then ``snapshot-load`` (what libvirt 10.10+ does).
- internal disks without memory (offline and disk-only snapshots): stop
  QEMU, ``qemu-img snapshot -a`` on every image, take the snapshot's
  definition; start only with ``running``/``paused``.
- external memory: stop QEMU, new overlays on the snapshot's external disk
  images, the snapshot's definition on them, a new QEMU with ``-incoming
  defer`` fed the memory file (what libvirt 9.9+ does).
- external disks without memory: the same without the memory; the domain
  ends shut off unless ``running``/``paused`` asks otherwise.

A revert after which the guest runs gives it a new ``<genid>`` where it has one
(the guest learns that it runs from a copy of its past), as libvirt does.

New overlays leave every image the snapshot depends on untouched, so the
state the domain had stays on disk as a branch as long as a snapshot names
it; the executor records the new files in the snapshot's ``<revertDisks>``.
Internal snapshots are applied to the images the snapshot names; if the
domain has since moved to an overlay on top of such an image, that would
change a backing file others depend on, so it needs ``force``.
"""
from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Literal

from ..caps.running import RunningCaps
from ..errors import (
    InvalidArgError,
    OperationInvalidError,
    OperationUnsupportedError,
    SnapshotRevertRiskyError,
)
from ..xml.domain import DomainDef
from ..xml.snapshot import SnapshotDef

FinalState = Literal["running", "paused", "shutoff"]
Mechanism = Literal["load-in-place", "restart-and-load", "qemu-img-apply", "incoming",
                    "new-overlays"]


class RevertStep(enum.StrEnum):
    """Every step a revert plan can contain; the executor has one method each."""

    CHECK_MEMORY_FILE = "check-memory-file"
    STOP = "stop"
    QEMU_IMG_APPLY = "qemu-img-apply"
    CREATE_OVERLAYS = "create-overlays"
    SWITCH_DEFINITION = "switch-definition"
    START_PAUSED = "start-paused"
    START_INCOMING = "start-incoming"
    LOAD_MEMORY_FILE = "load-memory-file"
    PAUSE = "pause"
    SNAPSHOT_LOAD = "snapshot-load"
    HMP_LOADVM = "hmp-loadvm"
    RESUME = "resume"
    RECORD_REVERT_DISKS = "record-revert-disks"
    SET_CURRENT = "set-current"
    DROP_DISCARDED = "drop-discarded"
    REMOVE_MANAGED_SAVE = "remove-managed-save"
    RESTORE_NVRAM = "restore-nvram"


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
    """The targets whose images hold the internal snapshot (the snapshot-time sources)."""
    overlays: tuple[tuple[str, str, str], ...] = ()
    """(target, image, format): a new overlay goes on each snapshot-time image."""
    memory_file: str | None = None
    template_ram: str | None = None
    """A template snapshot's RAM file, which the new QEMU maps copy-on-write."""

    @property
    def is_restore(self) -> bool:
        """A restore from a save file (no snapshot to go back to)."""
        return not self.name

    def to_json(self) -> dict[str, object]:
        return {"name": self.name, "mechanism": self.mechanism, "state": self.state,
                "steps": [str(s) for s in self.steps],
                "internal_disks": list(self.internal_disks),
                "overlays_on": {t: image for t, image, _ in self.overlays},
                "memory_file": self.memory_file, "template_ram": self.template_ram}


def plan_revert(domain: DomainDef, state: str, snap: SnapshotDef,
                flags: RevertFlags = RevertFlags(), caps: RunningCaps = RunningCaps(),
                managed_save: bool = False) -> RevertPlan:
    """Decide what reverting to ``snap`` means; raise the refusal otherwise.

    ``managed_save``: the domain has a managed save image; it describes a state
    the revert discards, so the revert removes it, and for a snapshot without
    memory only with ``force`` (libvirt's rule).
    """
    name = snap.name or ""
    if flags.running and flags.paused:
        raise InvalidArgError("Flags 'VIR_DOMAIN_SNAPSHOT_REVERT_RUNNING' and "
                              "'VIR_DOMAIN_SNAPSHOT_REVERT_PAUSED' are mutually exclusive")
    if snap.domain is None:
        raise SnapshotRevertRiskyError(f"snapshot '{name}' lacks domain '{domain.name}' "
                                       "rollback info")
    pending = [d.name for d in snap.disks if d.delete_in_progress]
    if pending:
        raise OperationInvalidError(f"snapshot disk '{pending[0]}' was target of not "
                                    "completed snapshot delete")
    if snap.stale:
        raise OperationInvalidError(f"snapshot '{name}' can no longer be reverted to: "
                                    f"{snap.stale}")
    if snap.state == "pmsuspended":
        raise OperationUnsupportedError(
            "qemu doesn't support reversion of snapshot taken in PMSUSPENDED state")
    target = _renamed(DomainDef.from_element(snap.domain), domain)
    internal = tuple(d.name for d in snap.disks if d.snapshot == "internal")
    external = tuple(d.name for d in snap.disks if d.snapshot == "external")
    if not flags.force:
        _check_internal_images(name, internal, target, domain)
    overlays = tuple(_overlay_base(name, t, target) for t in external)
    live = state in ("running", "paused")
    memory = snap.memory in ("internal", "external") or snap.state in ("running", "paused")
    final = _final_state(snap, flags, memory)
    mechanism = _mechanism(name, snap, memory, bool(internal), bool(external), live,
                           target, domain)
    if mechanism == "load-in-place" and target.genid is not None:
        if not flags.force:  # QEMU cannot change a running guest's generation ID
            raise SnapshotRevertRiskyError("domain genid update requires restart")
        mechanism = "restart-and-load"
    if final != "shutoff":  # the guest runs from a copy of its past
        target = target.with_new_genid()
    memory_file = snap.memory_file if mechanism == "incoming" else None
    if mechanism == "incoming" and not memory_file:
        raise InvalidArgError(f"snapshot '{name}' has external memory but no memory file")
    if managed_save and not memory and not flags.force:
        raise SnapshotRevertRiskyError("snapshot without memory state, removal of existing "
                                       "managed saved state strongly recommended to avoid "
                                       "corruption")
    steps = _steps(mechanism, live, state == "running", final, caps, bool(internal),
                   bool(external))
    if managed_save:
        steps += (RevertStep.REMOVE_MANAGED_SAVE,)
    if target.loader is not None:
        steps = _with_nvram_restore(steps)
    return RevertPlan(name, mechanism, final, steps, target, internal, overlays, memory_file,
                      snap.template_ram if memory_file else None)


NVRAM_BEFORE = (RevertStep.QEMU_IMG_APPLY, RevertStep.START_PAUSED, RevertStep.START_INCOMING,
                RevertStep.SNAPSHOT_LOAD, RevertStep.HMP_LOADVM)
"""The steps the snapshot's UEFI variable store goes back before: before a QEMU opens
it, and before the disks change for good (a rollback until then puts it back)."""


def _with_nvram_restore(steps: tuple[RevertStep, ...]) -> tuple[RevertStep, ...]:
    at = min((steps.index(s) for s in NVRAM_BEFORE if s in steps), default=len(steps))
    return (*steps[:at], RevertStep.RESTORE_NVRAM, *steps[at:])


def standby_problem(definition: DomainDef) -> str | None:
    """Why a second QEMU for ``definition`` cannot be started ahead while the first
    runs it (a standby, `qdriver.launch.standby`), or None: both would claim one
    host resource, or the second would spoil the first's file."""
    for iface in definition.interfaces:
        if iface.forwards:
            return "a port forwarded from the host"
        if iface.type != "user" or iface.backend != "default":
            return f"an interface of type '{iface.type}' (backend '{iface.backend}')"
    for char in (*definition.serials, *definition.channels):
        if char.type not in ("pty", "unix") or (char.type == "unix" and char.path):
            return f"a {char.kind} of type '{char.type}'{_at(char.path)}"
    if definition.graphics:
        return "a graphical display"
    if definition.loader is not None:
        return "a UEFI variable store (one QEMU at a time may open it)"
    return None


def _at(path: str | None) -> str:
    return f" at '{path}'" if path else ""


def plan_restore(definition: DomainDef, memory_file: str, was_running: bool,
                 flags: RevertFlags = RevertFlags(), managed_save: bool = False,
                 template_ram: str | None = None) -> RevertPlan:
    """Restore from a save file: the same incoming path as an external revert, with the
    definition the file carries and no snapshot to make current.  A managed save
    is removed once loaded, before the guest runs (and changes its disks)."""
    if flags.running and flags.paused:
        raise InvalidArgError("Flags 'VIR_DOMAIN_SAVE_RUNNING' and 'VIR_DOMAIN_SAVE_PAUSED' "
                              "are mutually exclusive")
    final: FinalState = "running" if flags.running or (was_running and not flags.paused) \
        else "paused"
    S = RevertStep
    steps = (S.CHECK_MEMORY_FILE, S.START_INCOMING, S.LOAD_MEMORY_FILE,
             *([S.REMOVE_MANAGED_SAVE] if managed_save else []),
             *([S.RESUME] if final == "running" else []))
    return RevertPlan("", "incoming", final, steps, definition, (), (), memory_file,
                      template_ram)


def _mechanism(name: str, snap: SnapshotDef, memory: bool, internal: bool, external: bool,
               live: bool, target: DomainDef, domain: DomainDef) -> Mechanism:
    if snap.memory == "external":
        return "incoming"
    if memory:
        if live and not external and target.to_xml() == domain.to_xml():
            return "load-in-place"
        return "restart-and-load"
    if external:
        return "new-overlays"
    if not internal:
        raise InvalidArgError(f"snapshot '{name}' holds neither memory nor disk snapshots "
                              "to revert to")
    return "qemu-img-apply"


def _check_internal_images(name: str, internal: tuple[str, ...], target: DomainDef,
                           domain: DomainDef) -> None:
    """Applying an internal snapshot to an image the domain has since put an overlay
    on would change that overlay's backing file under it."""
    for t in internal:
        then, now = target.disk(t), domain.disk(t)
        if then is not None and now is not None and then.source != now.source:
            raise SnapshotRevertRiskyError(
                f"disk {t} has moved from '{then.source}' to '{now.source}' since snapshot "
                f"'{name}'; reverting its internal snapshot would change an image that "
                "later overlays may depend on")


def _overlay_base(name: str, t: str, target: DomainDef) -> tuple[str, str, str]:
    disk = target.disk(t)
    if disk is None or not disk.source:
        raise InvalidArgError(f"VM doesn't have disk '{t}' referenced by snapshot '{name}'")
    return t, disk.source, disk.format


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
           caps: RunningCaps, internal: bool, external: bool) -> tuple[RevertStep, ...]:
    S = RevertStep
    load = S.SNAPSHOT_LOAD if caps.snapshot_save else S.HMP_LOADVM
    resume = [S.RESUME] if final == "running" else []
    if mechanism == "load-in-place":
        pause = [S.PAUSE] if running else []
        return (*pause, load, *resume, S.SET_CURRENT)
    stop = [S.STOP] if live else []
    overlays = [S.CREATE_OVERLAYS] if external else []
    record = [S.RECORD_REVERT_DISKS] if external else []
    finish = [*record, S.SET_CURRENT, S.DROP_DISCARDED]
    if mechanism == "restart-and-load":
        return (*stop, *overlays, S.SWITCH_DEFINITION, S.START_PAUSED, load, *resume, *finish)
    apply = [S.QEMU_IMG_APPLY] if internal else []
    if mechanism == "incoming":
        return (S.CHECK_MEMORY_FILE, *stop, *apply, *overlays, S.SWITCH_DEFINITION,
                S.START_INCOMING, S.LOAD_MEMORY_FILE, *resume, *finish)
    start = [S.START_PAUSED] if final != "shutoff" else []
    return (*stop, *apply, *overlays, S.SWITCH_DEFINITION, *start, *resume, *finish)


__all__ = ["RevertFlags", "RevertPlan", "RevertStep", "plan_revert", "plan_restore",
           "standby_problem"]
