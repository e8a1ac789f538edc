"""What one operation sees while it holds the domain lock.

`Domain` takes the lock, then loads an `OpContext`: the definition, the run
record (a dead QEMU already reaped) and the snapshot store, all read under
that lock.  Operations act on the context and write back through it, so no
operation ever acts on state another process has since changed.
"""
from __future__ import annotations

from dataclasses import dataclass

from . import domstate, qmp
from .errors import NoDomainError, OperationInvalidError, QDriverError
from .paths import DomainPaths
from .runas import LaunchPolicy
from .runtime import RunRecord, Runtime
from .snapshot_tree import SnapshotStore, SnapshotTree
from .statestore import atomic_write
from .xml import safe
from .xml.domain import DomainDef


def read_definition(paths: DomainPaths, name: str, uuid: str | None = None,
                    live: bool = False) -> DomainDef:
    """The persistent definition, or with ``live`` the running QEMU's (the persistent
    one when there is none); `NoDomainError` if it is gone (or is another domain now)."""
    text = None
    if live:
        try:
            text = paths.live_definition.read_bytes()
        except (FileNotFoundError, NotADirectoryError):
            pass
    try:
        text = text if text is not None else paths.definition.read_bytes()
    except (FileNotFoundError, NotADirectoryError):
        raise NoDomainError(f"no domain with matching name '{name}'") from None
    definition = DomainDef.parse(text)
    if uuid is not None and definition.uuid != uuid:
        raise NoDomainError(f"no domain with matching uuid '{uuid}' ({name})")
    return definition


def write_definition(paths: DomainPaths, definition: DomainDef) -> None:
    """Persist a definition atomically (`XMLError` if it could not be read back)."""
    atomic_write(paths.definition, storable_definition(definition))


def write_live_definition(paths: DomainPaths, definition: DomainDef) -> None:
    """Record what the running QEMU runs: it lives as long as QEMU, so a page-cache
    write suffices (a host crash ends QEMU too)."""
    atomic_write(paths.live_definition, storable_definition(definition), durable=False)


def follow_disks(persistent: DomainDef, old_live: DomainDef, new_live: DomainDef) -> DomainDef:
    """The persistent definition after the live one's disks moved (a snapshot's
    overlay, a commit's pivot): a persistent disk follows only where it named the
    same image as the live one, as libvirt does; one a later ``define`` pointed
    elsewhere keeps what the user asked for."""
    moved: dict[str, tuple[str, str]] = {}
    for disk in new_live.disks:
        before = old_live.disk(disk.target)
        kept = persistent.disk(disk.target)
        if before is None or kept is None or disk.source is None:
            continue
        if disk.source != before.source and kept.source == before.source:
            moved[disk.target] = (disk.source, disk.format)
    return persistent.with_disk_sources(moved) if moved else persistent


def storable_definition(definition: DomainDef) -> str:
    """The definition as stored; `XMLError` if it is too large to read back."""
    return safe.check_storable(definition.to_xml(),
                               f"the definition of domain '{definition.name}'")


@dataclass
class OpContext:
    """A domain's state as read under its lock, and the way to change it."""

    paths: DomainPaths
    definition: DomainDef
    runtime: Runtime
    record: RunRecord | None
    """The live QEMU's run record; None while the domain is shut off."""
    policy: LaunchPolicy = LaunchPolicy()
    """Who QEMU runs as and which files it may be given (`qdriver.runas`)."""
    persistent: DomainDef | None = None
    """The persistent definition where it differs from ``definition`` (which is the
    live one while QEMU runs, or the one a restore is about to run); None when
    the two are one."""

    @property
    def name(self) -> str:
        return self.definition.name

    @property
    def inactive(self) -> DomainDef:
        """The persistent definition, which the next start uses."""
        return self.persistent if self.persistent is not None else self.definition

    def save_definition(self, definition: DomainDef) -> None:
        """Replace the definition the operation acts on: while QEMU runs the live
        one (the persistent one follows its disks where they were the same
        images), else the persistent one."""
        if self.record is None:
            write_definition(self.paths, definition)
            self.persistent = None
        else:
            persistent = self.inactive
            followed = follow_disks(persistent, self.definition, definition)
            write_live_definition(self.paths, definition)
            if followed is not persistent:
                write_definition(self.paths, followed)
            self.persistent = followed
        self.definition = definition

    def save_persistent(self, definition: DomainDef) -> None:
        """Replace the persistent definition only (``define``): a running QEMU
        goes on with its live definition; the new one applies at the next start."""
        write_definition(self.paths, definition)
        if self.record is None:
            self.definition = definition
        else:
            self.persistent = definition


    def require_active(self) -> RunRecord:
        if self.record is None:
            raise OperationInvalidError("domain is not running")
        return self.record

    def snapshot_store(self) -> SnapshotStore:
        return SnapshotStore(self.paths.snapshots, self.name)

    def snapshot_tree(self) -> SnapshotTree:
        return self.snapshot_store().load()

    def update_record(self, **changes: object) -> None:
        self.runtime.update(self.require_active(), **changes)

    async def stop(self, reason: str, grace: float = 3.0) -> None:
        """Stop the running QEMU and reap it; the persistent definition applies again."""
        await self.runtime.stop(self.require_active(), reason, grace)
        self.record = None
        self.definition = self.inactive
        self.persistent = None

    async def sync_run_state(self, mon: qmp.Monitor) -> None:
        """Bring the run record in line with what QEMU says (after snapshots)."""
        self.record = await self.runtime.reconcile()
        if self.record is None:
            self.definition, self.persistent = self.inactive, None
            return
        try:
            status = await domstate.query(mon, timeout=2)
        except QDriverError:
            return
        paused = not status.running
        if (self.record.paused, self.record.reason) != (paused, status.reason):
            self.runtime.update(self.record, paused=paused, reason=status.reason)


__all__ = ["OpContext", "read_definition", "write_definition", "follow_disks"]
