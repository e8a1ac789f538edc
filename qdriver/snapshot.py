"""Snapshots of a domain: the API of libvirt's virDomainSnapshot.

`SnapshotsMixin` gives `Domain` its snapshot methods; `Snapshot` is a handle
on one snapshot.  Every call reads the metadata directory afresh, so all
processes sharing a state dir see the same tree.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from . import qmp
from . import snapshots as meta
from .errors import NoSnapshotError, NoSupportError, OperationInvalidError, QDriverError
from .executor import CreateReport, Execution, ProgressFn
from .planner import CreateFlags, HostCaps, Plan, plan_snapshot
from .snapshots import ListFilter, SnapshotStore, SnapshotTree
from .xml.snapshot import validate_schema

if TYPE_CHECKING:
    from .domain import Domain

# QMP run states the planner names differently from "paused"
QMP_STATUS_TO_PLANNER = {"running": "running", "suspended": "pmsuspended"}


class Snapshot:
    """One snapshot of a domain (``virDomainSnapshot``)."""

    def __init__(self, domain: Domain, name: str, report: CreateReport | None = None) -> None:
        self.domain = domain
        self.name = name
        self.report = report
        """For a snapshot just created: its total time, guest pause and memory size."""

    def __repr__(self) -> str:
        return f"<Snapshot {self.domain.name}/{self.name}>"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Snapshot) and (other.domain.name, other.name) == \
            (self.domain.name, self.name)

    def __hash__(self) -> int:
        return hash((self.domain.name, self.name))

    def _tree(self) -> SnapshotTree:
        tree = self.domain.snapshot_tree()
        tree.get(self.name)
        return tree

    def xml_desc(self) -> str:
        """``virsh snapshot-dumpxml``: the snapshot without the metadata marker."""
        return self._tree().get(self.name).format()

    def parent(self) -> Snapshot:
        parent = self._tree().parent(self.name)
        if parent is None:
            raise NoSnapshotError(f"snapshot '{self.name}' does not have a parent")
        return Snapshot(self.domain, parent)

    def children(self, descendants: bool = False) -> list[Snapshot]:
        return [Snapshot(self.domain, n)
                for n in self._tree().children(self.name, descendants)]

    def is_current(self) -> bool:
        return self._tree().current == self.name

    def has_metadata(self) -> bool:
        self._tree()
        return True

    async def delete(self, metadata_only: bool = False, children: bool = False,
                     children_only: bool = False) -> list[str]:
        """Delete the snapshot (and children if asked); returns the names removed."""
        if not metadata_only:
            raise NoSupportError("deleting snapshot data is not implemented yet; "
                                 "use metadata_only=True (virsh --metadata)")
        async with self.domain._locked():
            store = self.domain.snapshot_store()
            return meta.remove_metadata(store, store.load(), self.name, children,
                                        children_only)


class SnapshotsMixin:
    """The snapshot methods of `Domain`."""

    def snapshot_store(self: Domain) -> SnapshotStore:  # type: ignore[misc]
        return SnapshotStore(self.paths.snapshots, self.name)

    def snapshot_tree(self: Domain) -> SnapshotTree:  # type: ignore[misc]
        return self.snapshot_store().load()

    def snapshot_load_errors(self: Domain) -> list[str]:  # type: ignore[misc]
        """Why metadata files were skipped at load (corrupt, conflicting)."""
        store = self.snapshot_store()
        store.load()
        return store.errors

    def list_snapshots(self: Domain, start: str | None = None,  # type: ignore[misc]
                       descendants: bool = False, **flags: bool) -> list[Snapshot]:
        """``listAllSnapshots`` with libvirt's filters as keyword flags."""
        names = self.snapshot_tree().names(ListFilter(**flags), start, descendants)
        return [Snapshot(self, n) for n in names]

    def snapshot_lookup(self: Domain, name: str) -> Snapshot:  # type: ignore[misc]
        self.snapshot_tree().get(name)
        return Snapshot(self, name)

    def has_current_snapshot(self: Domain) -> bool:  # type: ignore[misc]
        return self.snapshot_tree().current is not None

    def current_snapshot(self: Domain) -> Snapshot:  # type: ignore[misc]
        current = self.snapshot_tree().current
        if current is None:
            raise NoSnapshotError("the domain does not have a current snapshot")
        return Snapshot(self, current)

    async def snapshot_set_current(self: Domain, name: str) -> None:  # type: ignore[misc]
        """Make ``name`` the current snapshot (``snapshot-current DOM NAME``)."""
        async with self._locked():
            store = self.snapshot_store()
            meta.set_current(store, store.load(), name)

    async def probe(self: Domain, mon: qmp.Monitor, live: bool = False,  # type: ignore[misc]
                    locked: bool = False) -> tuple[str, HostCaps]:
        """The domain state and what this QEMU can do, asked on an open monitor.

        Only a caller holding the domain lock (``locked``) may change anything:
        it remembers the answer in the runtime record and tries the
        background-snapshot capability on (QEMU checks the host kernel's
        userfaultfd write-protect right then).  Without the lock the probe only
        reads, so it cannot disturb another process's snapshot.
        """
        status = await mon.execute("query-status")
        state = QMP_STATUS_TO_PLANNER.get(str(status["status"]), "paused")
        rec = self._record()
        has_save = rec.snapshot_save if rec is not None else None
        if has_save is None:  # a QEMU's commands do not change while it runs: ask once
            commands = {c["name"] for c in await mon.execute("query-commands")}
            has_save = "snapshot-save" in commands
            if rec is not None and locked:
                self._update(rec, snapshot_save=has_save)
        background = live and await _background_snapshot(mon, locked)
        return state, HostCaps(snapshot_save=has_save, background_snapshot=background)

    async def plan_snapshot(self: Domain, xml: str | bytes,  # type: ignore[misc]
                            flags: CreateFlags = CreateFlags(),
                            assume_state: str | None = None) -> Plan:
        """What creating this snapshot would do, without doing it."""
        if assume_state or not self.is_active:
            return plan_snapshot(self.definition, assume_state or "shutoff", xml, flags)
        async with qmp.open_monitor(self.paths.qmp_query) as mon:
            state, caps = await self.probe(mon, flags.live)
        return plan_snapshot(self.definition, state, xml, flags, caps)

    async def snapshot_create_xml(self: Domain, xml: str | bytes,  # type: ignore[misc]
                                  progress: ProgressFn | None = None,
                                  **flag_args: bool) -> Snapshot:
        """``virDomainSnapshotCreateXML`` with libvirt's flags as keywords."""
        flags = CreateFlags(**flag_args)
        if flags.validate:
            validate_schema(xml)
        async with self._locked():
            if flags.redefine or not self.is_active:
                return await self._create(None, xml, flags, progress)
            async with qmp.open_monitor(self.paths.qmp) as mon:
                return await self._create(mon, xml, flags, progress)

    async def _create(self: Domain, mon: qmp.Monitor | None,  # type: ignore[misc]
                      xml: str | bytes, flags: CreateFlags,
                      progress: ProgressFn | None) -> Snapshot:
        """Plan, then carry out (or, for REDEFINE, record); the lock is held."""
        state, caps = await self.probe(mon, flags.live, locked=True) if mon \
            else ("shutoff", HostCaps())
        plan = plan_snapshot(self.definition, state, xml, flags, caps)
        store = self.snapshot_store()
        tree = store.load()
        if flags.redefine:
            meta.redefine(store, tree, plan.definition, self.uuid, flags.current)
            return Snapshot(self, plan.name)
        if plan.name in tree.snaps:
            raise OperationInvalidError(f"Snapshot '{plan.name}' already exists")
        execution = Execution(self, plan, progress, mon)
        await execution.run()
        return Snapshot(self, plan.name, execution.report)


async def _background_snapshot(mon: qmp.Monitor, try_it: bool) -> bool:
    """Whether the background-snapshot migration capability is usable.

    Trying it (on, then off) is the only way to learn whether the host kernel
    supports it; without ``try_it`` only its presence in QEMU is checked.
    """
    if not try_it:
        caps = await mon.execute("query-migrate-capabilities")
        return any(c["capability"] == "background-snapshot" for c in caps)
    try:
        for on in (True, False):
            await mon.execute("migrate-set-capabilities", {"capabilities": [
                {"capability": "background-snapshot", "state": on}]})
    except QDriverError:
        return False
    return True
