"""`Snapshot`: a handle on one snapshot of a domain, like libvirt's virDomainSnapshot.

A handle holds names only; every call reads the metadata afresh, so all
processes sharing a state dir see the same tree.  Changes go through the
owning domain, which takes the domain lock.
"""
from __future__ import annotations

from typing import Protocol, runtime_checkable

from ..errors import NoSnapshotError
from ..paths import DomainPaths
from ..progress import CreateReport
from .store import SnapshotStore
from .tree import ListFilter, SnapshotTree


@runtime_checkable
class SnapshotOwner(Protocol):
    """What a snapshot handle needs from its domain (a `Domain` is one)."""

    name: str

    def snapshot_tree(self) -> SnapshotTree: ...

    async def delete_snapshot(self, name: str, metadata_only: bool = False,
                              children: bool = False, children_only: bool = False
                              ) -> list[str]: ...

    async def revert_to_snapshot(self, snapshot: str, running: bool = False,
                                 paused: bool = False, force: bool = False) -> None: ...


class Snapshot:
    """One snapshot of a domain (``virDomainSnapshot``)."""

    def __init__(self, domain: SnapshotOwner, name: str,
                 report: CreateReport | None = None) -> None:
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

    async def revert(self, running: bool = False, paused: bool = False,
                     force: bool = False) -> None:
        """Revert the domain to this snapshot (``virDomainRevertToSnapshot``)."""
        await self.domain.revert_to_snapshot(self.name, running, paused, force)

    async def delete(self, metadata_only: bool = False, children: bool = False,
                     children_only: bool = False) -> list[str]:
        """Delete the snapshot (and children if asked); returns the names removed."""
        return await self.domain.delete_snapshot(self.name, metadata_only, children,
                                                 children_only)


class SnapshotReading:
    """A domain's snapshot queries (``listAllSnapshots``, ``snapshotCurrent``...):
    they read the metadata without the lock (each file is replaced atomically)."""

    name: str
    paths: DomainPaths

    def snapshot_store(self) -> SnapshotStore:
        return SnapshotStore(self.paths.snapshots, self.name)

    def snapshot_tree(self) -> SnapshotTree:
        return self.snapshot_store().load()

    def snapshot_load_errors(self) -> list[str]:
        """Why metadata files were skipped at load (corrupt, conflicting)."""
        store = self.snapshot_store()
        store.load()
        return store.errors

    def list_snapshots(self, start: str | None = None, descendants: bool = False,
                       **flags: bool) -> list[Snapshot]:
        """``listAllSnapshots`` with libvirt's filters as keyword flags."""
        names = self.snapshot_tree().names(ListFilter(**flags), start, descendants)
        return [Snapshot(self._owner(), n) for n in names]

    def snapshot_lookup(self, name: str) -> Snapshot:
        self.snapshot_tree().get(name)
        return Snapshot(self._owner(), name)

    def has_current_snapshot(self) -> bool:
        return self.snapshot_tree().current is not None

    def current_snapshot(self) -> Snapshot:
        current = self.snapshot_tree().current
        if current is None:
            raise NoSnapshotError("the domain does not have a current snapshot")
        return Snapshot(self._owner(), current)

    def _owner(self) -> SnapshotOwner:
        assert isinstance(self, SnapshotOwner)
        return self


__all__ = ["Snapshot", "SnapshotOwner", "SnapshotReading"]
