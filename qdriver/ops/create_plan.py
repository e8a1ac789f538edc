"""The snapshot planner: (domain, state, snapshot XML, flags) -> plan or refusal.

Pure: no I/O, no QEMU.  It applies libvirt 12.8's defaults, then looks the
request up in `TABLE`, one row per (online, memory mode, disk kinds) case,
and derives the ordered steps the executor carries out.  Rows marked
``libvirt=False`` are what qdriver does beyond libvirt (mixing internal and
external, internal disk-only snapshots of a running guest); every refusal
carries libvirt's error code and, where libvirt has one, its message.
Refusing happens here, before any side effect.
"""
from __future__ import annotations

import enum
from dataclasses import dataclass, field, fields, replace
from typing import Literal, cast

from ..agent import CHANNEL as AGENT_CHANNEL
from ..caps.running import RunningCaps
from ..errors import (
    ArgumentUnsupportedError,
    ConfigUnsupportedError,
    ErrorCode,
    InvalidArgError,
    NoSupportError,
    OperationInvalidError,
    OperationUnsupportedError,
    QDriverError,
    XMLError,
)
from ..xml.domain import DomainDef
from ..xml.snapshot import SnapshotDef, SnapshotDisk, align_disks, default_name, validate_name

ONLINE_STATES = ("running", "paused")

MemoryMode = Literal["no", "internal", "external"]
PauseMode = Literal["none", "whole", "brief"]
"""none | whole (paused for the whole operation) | brief (only to switch disks)."""
LiveMode = Literal["none", "background", "precopy"]
"""none | background (background-snapshot) | precopy (live migration, then pause)."""


class CreateStep(enum.StrEnum):
    """Every step a snapshot-creation plan can contain; the executor has one method each."""

    QEMU_IMG_SNAPSHOT = "qemu-img-snapshot"
    QEMU_IMG_CREATE = "qemu-img-create"
    CHECK_REUSED_OVERLAYS = "check-reused-overlays"
    SWITCH_DEFINITION = "switch-definition"
    CREATE_OVERLAYS = "create-overlays"
    LEAVE_POSTMIGRATE = "leave-postmigrate"
    PAUSE = "pause"
    RESUME = "resume"
    SNAPSHOT_SAVE = "snapshot-save"
    HMP_SAVEVM = "hmp-savevm"
    TRANSACTION = "transaction"
    TRANSACTION_INTERNAL = "transaction-internal"
    MIGRATE_TO_FILE = "migrate-to-file"
    SWITCH_TO_CLONE = "switch-to-clone"
    MIGRATE_LIVE = "migrate-live"
    MIGRATE_BACKGROUND = "migrate-background"
    AGENT_FREEZE = "agent-freeze"
    AGENT_THAW = "agent-thaw"
    HALT = "halt"
    WRITE_METADATA = "write-metadata"
    REDEFINE_METADATA = "redefine-metadata"
    SET_CURRENT = "set-current"
    COPY_NVRAM = "copy-nvram"


@dataclass(frozen=True)
class CreateFlags:
    """``virDomainSnapshotCreateFlags`` as booleans."""

    redefine: bool = False
    current: bool = False
    no_metadata: bool = False
    halt: bool = False
    disk_only: bool = False
    reuse_ext: bool = False
    quiesce: bool = False
    atomic: bool = False
    live: bool = False
    validate: bool = False
    template: bool = False
    """qdriver's own: a memory template (bit 1024 of the mask, which libvirt leaves free)."""

    @staticmethod
    def libvirt_name(flag: str) -> str:
        return f"VIR_DOMAIN_SNAPSHOT_CREATE_{flag.upper()}"

    @classmethod
    def from_mask(cls, mask: int) -> CreateFlags:
        """From libvirt's integer flags (REDEFINE=1 ... VALIDATE=512)."""
        return cls(**{f.name: bool(mask & (1 << i)) for i, f in enumerate(fields(cls))})


@dataclass(frozen=True)
class Row:
    """One cell of the decision table: the mechanisms that do the work."""

    mechanisms: tuple[str, ...]
    libvirt: bool
    """Whether libvirt 12.8 accepts this case too."""


@dataclass(frozen=True)
class Refuse:
    """A cell of the decision table that is impossible."""

    error: type[QDriverError]
    message: str


NOTHING = Refuse(ConfigUnsupportedError, "nothing selected for snapshot")
NO_VMSTATE_DISK = Refuse(ConfigUnsupportedError,
                         "internal memory snapshot needs at least one disk with "
                         "snapshot='internal' (a qcow2 image) to hold the memory state")

# (online, memory, disks) -> what happens.  disks: none | int | ext | mix.
# Offline memory snapshots are refused earlier, as in libvirt's parser.
TABLE: dict[tuple[bool, str, str], Row | Refuse] = {
    # offline                              mechanisms                         libvirt
    (False, "no", "none"):       NOTHING,
    (False, "no", "int"):        Row(("qemu-img-snapshot",), True),
    (False, "no", "ext"):        Row(("qemu-img-create",), True),
    (False, "no", "mix"):        Row(("qemu-img-snapshot", "qemu-img-create"), False),
    # online, no memory: a disk-only snapshot, atomic through one transaction
    (True, "no", "none"):        NOTHING,
    (True, "no", "int"):         Row(("transaction",), False),
    (True, "no", "ext"):         Row(("transaction",), True),
    (True, "no", "mix"):         Row(("transaction",), False),
    # online, memory inside a qcow2 image (snapshot-save: vmstate + devices)
    (True, "internal", "none"):  NO_VMSTATE_DISK,
    (True, "internal", "int"):   Row(("snapshot-save",), True),
    (True, "internal", "ext"):   NO_VMSTATE_DISK,
    (True, "internal", "mix"):   Row(("snapshot-save", "transaction"), False),
    # online, memory to a file (migration), disks in one transaction
    (True, "external", "none"):  Row(("migrate",), True),
    (True, "external", "int"):   Row(("migrate", "transaction"), False),
    (True, "external", "ext"):   Row(("migrate", "transaction"), True),
    (True, "external", "mix"):   Row(("migrate", "transaction"), False),
}


@dataclass(frozen=True)
class DiskPlan:
    """What happens to one domain disk."""

    target: str
    snapshot: str
    file: str | None = None
    """The new overlay (external) file."""
    source: str | None = None
    """The image the domain uses now."""
    source_format: str = "raw"


@dataclass(frozen=True)
class CreatePlan:
    """The decision for one snapshot request, as data."""

    name: str
    memory: MemoryMode
    memory_file: str | None
    disks: tuple[DiskPlan, ...]
    state: str
    pause: PauseMode
    live: LiveMode
    steps: tuple[CreateStep, ...]
    resume: bool
    """Whether the guest runs afterwards."""
    libvirt: bool
    """Whether libvirt 12.8 would accept the same request."""
    definition: SnapshotDef = field(compare=False)
    flags: CreateFlags = CreateFlags()

    def disk(self, target: str) -> DiskPlan:
        return next(d for d in self.disks if d.target == target)

    def to_json(self) -> dict[str, object]:
        """The ``snapshot-plan --json`` contract."""
        return {
            "name": self.name, "memory": self.memory, "memory_file": self.memory_file,
            "disks": {d.target: {"snapshot": d.snapshot, "file": d.file} for d in self.disks},
            "state": self.state, "pause": self.pause, "live": self.live,
            "steps": [str(s) for s in self.steps], "resume": self.resume, "libvirt": self.libvirt,
        }


def refusal_json(err: QDriverError) -> dict[str, object]:
    """A refusal in the ``snapshot-plan --json`` contract."""
    return {"error": {"code": ErrorCode(err.code).name, "message": err.message}}


# -- the pipeline ---------------------------------------------------------------

def plan_snapshot(domain: DomainDef, state: str, xml: str | bytes | SnapshotDef,
                  flags: CreateFlags = CreateFlags(), caps: RunningCaps = RunningCaps(),
                  now: float | None = None, group: bool = False) -> CreatePlan:
    """Decide what creating this snapshot means; raise the refusal otherwise.

    ``group``: one of a group snapshot's (`ops.group`): a running guest is paused
    for the whole snapshot, whatever its kind, so that every guest of the group
    stops and resumes at one instant.
    """
    check_flags(flags)
    if group:
        _check_group_flags(flags)
    if state == "pmsuspended":
        raise OperationUnsupportedError(
            "qemu doesn't support taking snapshots of PMSUSPENDED guests")
    snap = xml if isinstance(xml, SnapshotDef) else SnapshotDef.parse(xml, flags.redefine)
    snap = replace(snap, name=snap.name or default_name(now))
    validate_name(snap.name or "")
    if flags.redefine:
        return _plan_redefine(snap, flags)
    online = state in ONLINE_STATES
    memory, default_location = _memory_defaults(snap, online, flags)
    if memory != "no" and domain.filesystems:
        shared = domain.filesystems[0]
        raise OperationUnsupportedError(
            f"the guest's memory cannot be saved while it shares host folder "
            f"'{shared.target}' ({'virtiofs' if shared.driver == 'virtiofs' else '9p'}: QEMU "
            "migrates neither): take a disk-only snapshot")
    if flags.template:
        snap = _template(snap, domain, online, memory, flags)
    disks = align_disks(snap, domain, default_location)
    _check_disks(disks, domain, flags)
    kinds = _kinds(disks)
    cell = TABLE[(online, memory, kinds)]
    if isinstance(cell, Refuse):
        raise cell.error(cell.message)
    if flags.quiesce:
        _check_quiesce(domain, state)
    the_plan = _build(domain, state, snap, memory, disks, cell, flags, caps, now, group)
    if domain.loader is None or flags.no_metadata:
        return the_plan
    return replace(the_plan, steps=_with_nvram_copy(the_plan.steps))


def _with_nvram_copy(steps: tuple[CreateStep, ...]) -> tuple[CreateStep, ...]:
    """The UEFI variable store is copied while the guest is paused for the snapshot
    (before it resumes), else just before the metadata is written."""
    at = next((steps.index(s) for s in (CreateStep.RESUME, CreateStep.WRITE_METADATA)
               if s in steps), len(steps))
    return (*steps[:at], CreateStep.COPY_NVRAM, *steps[at:])


GROUP_REFUSED = ("live", "template", "halt", "quiesce", "redefine", "no_metadata")
"""Flags a group snapshot does not take: each would end or stretch one guest's
pause on its own, or take no snapshot to revert the group to."""


def _check_group_flags(flags: CreateFlags) -> None:
    for name in GROUP_REFUSED:
        if getattr(flags, name):
            raise InvalidArgError(f"a group snapshot cannot take flag "
                                  f"'{CreateFlags.libvirt_name(name)}'")


def check_flags(flags: CreateFlags) -> None:
    """libvirt's flag rules, in libvirt's order."""
    name = CreateFlags.libvirt_name
    if flags.current and not flags.redefine:
        raise InvalidArgError(f"Flag '{name('redefine')}' is required by flag "
                              f"'{name('current')}'")
    for other in ("no_metadata", "halt", "live"):
        if flags.redefine and getattr(flags, other):
            raise InvalidArgError(f"Flags '{name('redefine')}' and '{name(other)}' are "
                                  "mutually exclusive")
    if flags.quiesce and not flags.disk_only:
        raise InvalidArgError(f"Flag '{name('disk_only')}' is required by flag "
                              f"'{name('quiesce')}'")


def _plan_redefine(snap: SnapshotDef, flags: CreateFlags) -> CreatePlan:
    if flags.disk_only and snap.state != "disk-snapshot":
        raise InvalidArgError(f"disk-only flag for snapshot {snap.name} requires "
                              "disk-snapshot state")
    disks = tuple(DiskPlan(d.name, d.snapshot or "no", d.source) for d in snap.disks)
    return CreatePlan(name=snap.name or "", memory=cast(MemoryMode, snap.memory or "no"),
                memory_file=snap.memory_file,
                disks=disks, state=snap.state or "shutoff", pause="none", live="none",
                steps=(CreateStep.REDEFINE_METADATA,)
                + ((CreateStep.SET_CURRENT,) if flags.current else ()),
                resume=False, libvirt=True, definition=snap, flags=flags)


def _memory_defaults(snap: SnapshotDef, online: bool, flags: CreateFlags
                     ) -> tuple[MemoryMode, str]:
    """The memory mode and the default disk location, as libvirt derives them."""
    if (not online or flags.disk_only) and snap.memory in ("internal", "external"):
        raise XMLError("memory state cannot be saved with offline or disk-only snapshot")
    memory = cast(MemoryMode, snap.memory or (
        "internal" if online and not flags.disk_only else "no"))
    if flags.live and not (online and memory == "external"):
        raise OperationUnsupportedError(
            "live snapshot creation is supported only during full system snapshots")
    external_default = flags.disk_only or memory == "external" or (online and memory == "no")
    return memory, "external" if external_default else "internal"


TEMPLATE_RAM = "<memoryBacking><source type='file'/><access mode='shared'/></memoryBacking>"


def _template(snap: SnapshotDef, domain: DomainDef, online: bool, memory: str,
              flags: CreateFlags) -> SnapshotDef:
    """A template snapshot: the memory file holds the devices' state, the guest's
    shared RAM file becomes ``FILE.ram``, and the guest goes on as a clone of it."""
    if not online or memory != "external" or flags.live or flags.halt or flags.no_metadata:
        raise InvalidArgError("a template snapshot is an external memory snapshot of an "
                              "active domain, without --live, --halt or --no-metadata")
    ram = domain.memory_backing
    if (ram.source, ram.shared) != ("file", True):
        raise ConfigUnsupportedError(f"a template snapshot needs the guest's RAM in a "
                                     f"shared file: {TEMPLATE_RAM} in domain '{domain.name}'")
    return replace(snap, template_ram=f"{snap.memory_file}.ram")


def _check_disks(disks: list[SnapshotDisk], domain: DomainDef, flags: CreateFlags) -> None:
    for disk in disks:
        ddisk = domain.disk(disk.name)
        assert ddisk is not None
        if disk.snapshot in ("internal", "external") and ddisk.type == "block":
            raise ConfigUnsupportedError(f"{disk.snapshot} snapshot of disk {disk.name} on "
                                         f"block device '{ddisk.source}' is not supported: "
                                         "give it snapshot='no'")
        if disk.snapshot == "internal" and ddisk.format != "qcow2":
            raise ConfigUnsupportedError(f"internal snapshot for disk {disk.name} "
                                         f"unsupported for storage type {ddisk.format}")
        if disk.snapshot == "external":
            if (disk.driver or "qcow2") != "qcow2":
                raise ConfigUnsupportedError(f"external snapshot format for disk {disk.name} "
                                             f"is unsupported: {disk.driver}")
            if (disk.type or "file") != "file":
                raise ConfigUnsupportedError(f"external snapshot of disk {disk.name} onto a "
                                             f"'{disk.type}' target is not supported")
        if disk.snapshot == "manual" and flags.quiesce:
            raise ConfigUnsupportedError(
                "'manual' disk snapshot mode requires explicit quiescing "
                "(VIR_DOMAIN_SNAPSHOT_CREATE_QUIESCE is not supported)")


def _kinds(disks: list[SnapshotDisk]) -> str:
    modes = {d.snapshot for d in disks}
    has_int, has_ext = "internal" in modes, "external" in modes
    return {(False, False): "none", (True, False): "int", (False, True): "ext",
            (True, True): "mix"}[(has_int, has_ext)]


def _check_quiesce(domain: DomainDef, state: str) -> None:
    if state != "running":
        raise OperationInvalidError(f"domain is {'paused' if state == 'paused' else 'not running'}"
                                    ": the guest agent cannot freeze filesystems")
    if not any(c.target_name == AGENT_CHANNEL for c in domain.channels):
        raise ArgumentUnsupportedError("QEMU guest agent is not configured")


def _build(domain: DomainDef, state: str, snap: SnapshotDef, memory: MemoryMode,
           disks: list[SnapshotDisk], row: Row, flags: CreateFlags, caps: RunningCaps,
           now: float | None, group: bool = False) -> CreatePlan:
    online = state in ONLINE_STATES
    running = state == "running"
    manual = any(d.snapshot == "manual" for d in disks)
    live: LiveMode = "none"
    if flags.live and running:
        live = "background" if caps.background_snapshot else "precopy"
    pause: PauseMode
    if not running:
        pause = "none"
    elif memory == "no":
        pause = "whole" if manual else "none"
    else:
        pause = "brief" if live != "none" else "whole"
    snap_state = "shutoff" if not online else ("disk-snapshot" if memory == "no" else state)
    plan_disks = tuple(_disk_plan(d, domain) for d in disks)
    if memory == "internal" and not caps.snapshot_save and any(
            d.snapshot != "internal" and d.source is not None for d in plan_disks):
        raise NoSupportError("this QEMU has no snapshot-save: HMP savevm cannot leave "
                             "disks out of an internal snapshot")
    if live == "precopy" and any(d.snapshot == "internal" for d in plan_disks):
        raise ConfigUnsupportedError(
            "a live snapshot with internal disk snapshots needs the background-snapshot "
            "migration capability, which this host does not offer")
    steps = _steps(online, running, memory, plan_disks, row, live, manual or group, flags,
                   caps)
    if group and running:  # paused throughout: the group resumes every guest together
        pause = "whole"
        steps = _resume_replaced(steps, CreateStep.RESUME)
    if flags.template:  # the clone's start takes the place of the resume
        steps = _resume_replaced(steps, CreateStep.SWITCH_TO_CLONE)
    resume = running and (group or not manual) and not flags.halt
    definition = replace(snap, state=snap_state, memory=memory, disks=disks,
                         creation_time=int(now) if now is not None else snap.creation_time)
    return CreatePlan(name=snap.name or "", memory=memory, memory_file=snap.memory_file,
                disks=plan_disks, state=snap_state, pause=pause, live=live, steps=steps,
                resume=resume, libvirt=_libvirt_accepts(online, memory, plan_disks, row, flags),
                definition=definition, flags=flags)


def _resume_replaced(steps: tuple[CreateStep, ...], by: CreateStep) -> tuple[CreateStep, ...]:
    """``steps`` with their RESUME taken out and ``by`` put after everything that
    changes QEMU (just before WRITE_METADATA, else last): a group member's one
    late resume, or a template's switch to the clone."""
    kept = [s for s in steps if s != CreateStep.RESUME]
    at = kept.index(CreateStep.WRITE_METADATA) if CreateStep.WRITE_METADATA in kept \
        else len(kept)
    return (*kept[:at], by, *kept[at:])


def _libvirt_accepts(online: bool, memory: str, disks: tuple[DiskPlan, ...], row: Row,
                     flags: CreateFlags) -> bool:
    """Whether libvirt 12.8 would take the same request (see facts c.2)."""
    if online and memory == "no" and not flags.disk_only:
        return False  # "internal snapshot of a running VM must include the memory state"
    if memory == "internal" and any(d.snapshot in ("no", "manual") and d.source
                                    for d in disks):
        return False  # "internal and full system snapshots require all disks ..."
    return row.libvirt


def _disk_plan(d: SnapshotDisk, domain: DomainDef) -> DiskPlan:
    ddisk = domain.disk(d.name)
    assert ddisk is not None
    return DiskPlan(d.name, d.snapshot or "no", d.source if d.snapshot == "external" else None,
                    ddisk.source, ddisk.format)


def _steps(online: bool, running: bool, memory: str, disks: tuple[DiskPlan, ...], row: Row,
           live: LiveMode, manual: bool, flags: CreateFlags, caps: RunningCaps
           ) -> tuple[CreateStep, ...]:
    has_ext = any(d.snapshot == "external" for d in disks)
    overlays = CreateStep.CHECK_REUSED_OVERLAYS if flags.reuse_ext else (
        CreateStep.QEMU_IMG_CREATE if not online else CreateStep.CREATE_OVERLAYS)
    steps: list[CreateStep] = []
    if not online:
        if "qemu-img-snapshot" in row.mechanisms:
            steps.append(CreateStep.QEMU_IMG_SNAPSHOT)
        if has_ext:
            steps += [overlays, CreateStep.SWITCH_DEFINITION]
    else:
        if caps.migrated and (memory != "no" or any(d.snapshot == "internal" for d in disks)):
            steps.append(CreateStep.LEAVE_POSTMIGRATE)
        if has_ext:
            steps.append(overlays)
        if flags.quiesce:
            steps.append(CreateStep.AGENT_FREEZE)
        has_int = any(d.snapshot == "internal" for d in disks)
        steps += _online_core(running, memory, row, live, manual, has_int, has_ext, caps)
        if flags.quiesce:
            steps.append(CreateStep.AGENT_THAW)
        if has_ext:
            steps.append(CreateStep.SWITCH_DEFINITION)
        if running and memory != "no" and not manual and not flags.halt and \
                live != "background":
            steps.append(CreateStep.RESUME)
    if not flags.no_metadata:
        steps.append(CreateStep.WRITE_METADATA)
    if online and flags.halt:  # last: stopping QEMU is the point of no return
        steps.append(CreateStep.HALT)
    return tuple(steps)


def _online_core(running: bool, memory: str, row: Row, live: LiveMode, manual: bool,
                 has_int: bool, has_ext: bool, caps: RunningCaps) -> list[CreateStep]:
    pause = [CreateStep.PAUSE] if running else []
    txn = [CreateStep.TRANSACTION] if "transaction" in row.mechanisms else []
    if memory == "internal":
        save = CreateStep.SNAPSHOT_SAVE if caps.snapshot_save else CreateStep.HMP_SAVEVM
        return pause + [save] + txn
    if memory == "external":
        if live == "background":  # the vCPUs run again once the devices are saved
            return pause + txn + [CreateStep.MIGRATE_BACKGROUND]
        if live == "precopy":  # the migration ends with the guest paused
            return [CreateStep.MIGRATE_LIVE] + txn
        # a finished migration leaves the images inactive, where QEMU refuses
        # internal snapshots: take those first (the guest is paused throughout)
        internal = [CreateStep.TRANSACTION_INTERNAL] if has_int else []
        external = txn if has_ext else []
        return pause + internal + [CreateStep.MIGRATE_TO_FILE] + external
    return (pause if manual else []) + txn
