"""Snapshot metadata on disk, stored like libvirt's.

Each snapshot is one ``<name>.xml`` in the domain's snapshot directory, in
libvirt's on-disk format (the full ``<domainsnapshot>`` with ``<domain>`` and
``<active>`` marking the current one), written atomically.  Loading skips a
file that does not parse and says which, so one damaged file never takes the
others down.  Beside them, an index of delete marks (versioned JSON) says
which snapshots a delete in progress marked.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import ClassVar, Iterable

from ..durable import atomic_write, fsync_dir, read_record, write_record
from ..errors import FormatError, InvalidArgError, QDriverError
from ..xml.safe import check_storable
from ..xml.snapshot import SnapshotDef, validate_name
from .tree import SnapshotTree, newest

MARKS_FILE = "delete-in-progress.json"


@dataclass
class DeleteMarks:
    """The index of delete marks, as stored."""

    FORMAT: ClassVar[int] = 1
    UNVERSIONED_TOO: ClassVar[bool] = False
    """The index always had a version: a file without one is not this format."""
    snapshots: list[str] = field(default_factory=list)


class SnapshotStore:
    """Reads and writes one domain's snapshot metadata directory."""

    def __init__(self, directory: Path, domain_name: str) -> None:
        self.dir = directory
        self.domain_name = domain_name
        self.errors: list[str] = []

    def path(self, name: str) -> Path:
        """The metadata file of ``name``; the name can never leave the directory."""
        validate_name(name)
        path = self.dir / f"{name}.xml"
        if path.resolve().parent != self.dir.resolve():
            raise InvalidArgError(f"invalid snapshot name '{name}'")
        return path

    def load(self) -> SnapshotTree:
        """Every readable snapshot; unreadable files are listed in ``errors``."""
        self.errors = []
        snaps: dict[str, SnapshotDef] = {}
        if not self.dir.is_dir():
            return SnapshotTree({})
        for file in sorted(self.dir.glob("*.xml")):
            try:
                snap = SnapshotDef.parse(file.read_bytes(), internal=True)
            except (QDriverError, OSError, UnicodeError) as e:
                self.errors.append(f"Failed to parse snapshot XML from file '{file}': {e}")
                continue
            if snap.name != file.stem:
                self.errors.append(f"snapshot file '{file}' holds snapshot '{snap.name}'")
                continue
            snaps[file.stem] = snap
        claimants = [n for n, s in snaps.items() if s.active]
        current = newest(snaps, claimants)
        if len(claimants) > 1:
            self.errors.append(
                f"Too many snapshots claiming to be current for domain {self.domain_name} "
                f"({', '.join(claimants)}): using the newest, '{current}'; "
                "'snapshot-current DOMAIN NAME' repairs it")
        return SnapshotTree(snaps, current)

    def write(self, snap: SnapshotDef, active: bool, sync_dir: bool = True) -> None:
        assert snap.name is not None
        atomic_write(self.path(snap.name), storable(replace(snap, active=active)),
                     sync_dir=sync_dir)

    def remove(self, name: str) -> None:
        self.path(name).unlink(missing_ok=True)

    # -- the delete marks' index ------------------------------------------------------

    @property
    def marks_path(self) -> Path:
        """Which snapshots a delete in progress marked (``<snapshotDeleteInProgress/>``
        in their files): one small file, so that no operation has to read every
        snapshot to learn whether a dead process left a delete to finish."""
        return self.dir / MARKS_FILE

    def write_marks(self, names: list[str], sync_dir: bool = True) -> None:
        write_record(self.marks_path, DeleteMarks(names), sync_dir=sync_dir)

    def read_marks(self) -> list[str]:
        """The snapshots a delete marked and did not finish ([] if none).

        :raise FormatError: the index is of another format (a newer release's), or
            cannot be read at all.
        """
        marks = read_record(self.marks_path, DeleteMarks)
        if marks is None:
            if self.marks_path.exists():
                raise FormatError(f"'{self.marks_path}' cannot be read")
            return []
        return [str(n) for n in marks.snapshots]

    def clear_marks(self) -> None:
        self.marks_path.unlink(missing_ok=True)

    def save(self, tree: SnapshotTree, changed: Iterable[str],
             removed: Iterable[str] = ()) -> None:
        """Write the files of ``changed`` as ``tree`` has them, remove those of
        ``removed``, then make it durable (one directory sync)."""
        wrote = False
        for name in dict.fromkeys(changed):
            self.write(tree.snaps[name], tree.current == name, sync_dir=False)
            wrote = True
        for name in removed:
            self.remove(name)
            wrote = True
        if wrote and self.dir.is_dir():
            fsync_dir(self.dir)

    def add(self, tree: SnapshotTree, snap: SnapshotDef) -> None:
        """`SnapshotTree.add`, written."""
        self.save(tree, tree.add(snap))

    def set_current(self, tree: SnapshotTree, name: str | None) -> None:
        """`SnapshotTree.set_current`, written."""
        self.save(tree, tree.set_current(name))

    def redefine(self, tree: SnapshotTree, snap: SnapshotDef, domain_uuid: str,
                 make_current: bool) -> None:
        """`SnapshotTree.redefine`, written."""
        self.save(tree, tree.redefine(snap, domain_uuid, make_current))

    def remove_metadata(self, tree: SnapshotTree, name: str, children: bool = False,
                        children_only: bool = False) -> list[str]:
        """`SnapshotTree.remove`, written; returns the names removed."""
        removed, changed = tree.remove(name, children, children_only)
        self.save(tree, changed, removed)
        return removed


def storable(snap: SnapshotDef) -> str:
    """A snapshot's metadata file text; `XMLError` if it is too large to read back."""
    return check_storable(snap.format(internal=True), f"the metadata of snapshot '{snap.name}'")


__all__ = ["SnapshotStore", "storable", "MARKS_FILE", "DeleteMarks"]
