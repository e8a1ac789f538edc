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


def read_definition(paths: DomainPaths, name: str, uuid: str | None = None) -> DomainDef:
    """The stored definition; `NoDomainError` if it is gone (or is another domain now)."""
    try:
        text = paths.definition.read_bytes()
    except (FileNotFoundError, NotADirectoryError):
        raise NoDomainError(f"no domain with matching name '{name}'") from None
    definition = DomainDef.parse(text)
    if uuid is not None and definition.uuid != uuid:
        raise NoDomainError(f"no domain with matching uuid '{uuid}' ({name})")
    return definition


def write_definition(paths: DomainPaths, definition: DomainDef) -> None:
    """Persist a definition atomically (`XMLError` if it could not be read back)."""
    atomic_write(paths.definition, storable_definition(definition))


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
    policy: LaunchPolicy = LaunchPolicy()
    """Who QEMU runs as and which files it may be given (`qdriver.runas`)."""
    """The live QEMU's run record; None while the domain is shut off."""

    @property
    def name(self) -> str:
        return self.definition.name

    def save_definition(self, definition: DomainDef) -> None:
        """Replace the stored definition (and this context's view of it)."""
        write_definition(self.paths, definition)
        self.definition = definition

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
        """Stop the running QEMU and reap it."""
        await self.runtime.stop(self.require_active(), reason, grace)
        self.record = None

    async def sync_run_state(self, mon: qmp.Monitor) -> None:
        """Bring the run record in line with what QEMU says (after snapshots)."""
        self.record = await self.runtime.reconcile()
        if self.record is None:
            return
        try:
            status = await domstate.query(mon, timeout=2)
        except QDriverError:
            return
        paused = not status.running
        if (self.record.paused, self.record.reason) != (paused, status.reason):
            self.runtime.update(self.record, paused=paused, reason=status.reason)


__all__ = ["OpContext", "read_definition", "write_definition"]
