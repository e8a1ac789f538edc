"""Snapshot metadata: the tree of one domain's snapshots, stored like libvirt.

Each snapshot is one ``<name>.xml`` in the domain's snapshot directory, in
libvirt's on-disk format (the full ``<domainsnapshot>`` with ``<domain>`` and
``<active>`` marking the current one), written atomically.  Loading skips a
file that does not parse and says which, so one damaged file never takes
the others down.  `SnapshotTree` answers the tree questions; it is pure.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path

from .errors import (FormatError, InvalidArgError, NoSnapshotError, OperationInvalidError,
                     QDriverError)
from .statestore import atomic_write, fsync_dir
from .xml.safe import check_storable
from .xml.snapshot import SnapshotDef, validate_name

ACTIVE_EXCLUDED = ("shutoff", "disk-snapshot")
MARKS_FILE = "delete-in-progress.json"
MARKS_FORMAT = 1


@dataclass(frozen=True)
class ListFilter:
    """libvirt's snapshot list flags; each group filters only when one of its flags is set."""

    roots: bool = False
    leaves: bool = False
    no_leaves: bool = False
    metadata: bool = False
    no_metadata: bool = False
    inactive: bool = False
    active: bool = False
    disk_only: bool = False
    internal: bool = False
    external: bool = False
    topological: bool = False


class SnapshotTree:
    """The snapshots of one domain, their parent links and the current one."""

    def __init__(self, snaps: dict[str, SnapshotDef], current: str | None = None) -> None:
        self.snaps = snaps
        self.current = current if current in snaps else None

    def get(self, name: str) -> SnapshotDef:
        try:
            return self.snaps[name]
        except KeyError:
            raise NoSnapshotError(f"no domain snapshot with matching name '{name}'") from None

    def parent(self, name: str) -> str | None:
        parent = self.get(name).parent
        return parent if parent in self.snaps else None

    def children(self, name: str | None, descendants: bool = False) -> list[str]:
        """Direct children (or all descendants) of ``name``; None means the roots."""
        kids = self._sorted(n for n in self.snaps if self.parent(n) == name)
        if not descendants:
            return kids
        out: list[str] = []
        for kid in kids:
            out += [kid] + self.children(kid, True)
        return out

    def _sorted(self, names: object) -> list[str]:
        return sorted(names, key=lambda n: (self.snaps[n].creation_time or 0, n))  # type: ignore[call-overload,no-any-return]

    def names(self, f: ListFilter = ListFilter(), start: str | None = None,
              descendants: bool = False) -> list[str]:
        """Names matching ``f``; below ``start`` if given (all levels with ``descendants``)."""
        if start is not None:
            self.get(start)
            names = self.children(start, descendants)
        elif f.roots:
            names = self.children(None)
        else:
            # a depth-first walk lists parents before their children
            names = self.children(None, descendants=True) if f.topological \
                else self._sorted(self.snaps)
        return [n for n in names if self._matches(n, f)]

    def _matches(self, name: str, f: ListFilter) -> bool:
        snap = self.snaps[name]
        leaf = not self.children(name)
        if (f.leaves or f.no_leaves) and not ((f.leaves and leaf) or (f.no_leaves and not leaf)):
            return False
        if (f.metadata or f.no_metadata) and not f.metadata:
            return False  # qdriver snapshots always have metadata
        if f.inactive or f.active or f.disk_only:
            state = snap.state or "shutoff"
            ok = (f.inactive and state == "shutoff") or (f.disk_only and state == "disk-snapshot") \
                or (f.active and state not in ACTIVE_EXCLUDED)
            if not ok:
                return False
        if (f.internal or f.external) and not (
                (f.external and snap.is_external) or (f.internal and not snap.is_external)):
            return False
        return True

    def ancestors(self, name: str) -> list[str]:
        out: list[str] = []
        parent = self.parent(name)
        while parent is not None and parent not in out:
            out.append(parent)
            parent = self.parent(parent)
        return out


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
        current = _newest(snaps, claimants)
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

    def write_marks(self, names: list[str]) -> None:
        atomic_write(self.marks_path, json.dumps({"format": MARKS_FORMAT, "snapshots": names}))

    def read_marks(self) -> list[str]:
        """The snapshots a delete marked and did not finish ([] if none).

        :raise FormatError: the index is of another format (a newer release's).
        """
        try:
            raw = json.loads(self.marks_path.read_text())
        except FileNotFoundError:
            return []
        except (OSError, ValueError) as e:
            raise FormatError(f"'{self.marks_path}' cannot be read: {e}") from e
        if not isinstance(raw, dict) or raw.get("format") != MARKS_FORMAT:
            raise FormatError(f"'{self.marks_path}' is of format "
                              f"{raw.get('format') if isinstance(raw, dict) else None!r}; "
                              f"this release reads format {MARKS_FORMAT}")
        return [str(n) for n in raw.get("snapshots", [])]

    def clear_marks(self) -> None:
        self.marks_path.unlink(missing_ok=True)


def storable(snap: SnapshotDef) -> str:
    """A snapshot's metadata file text; `XMLError` if it is too large to read back."""
    return check_storable(snap.format(internal=True), f"the metadata of snapshot '{snap.name}'")


# -- tree changes (metadata only) ----------------------------------------------

def redefine(store: SnapshotStore, tree: SnapshotTree, snap: SnapshotDef, domain_uuid: str,
             make_current: bool) -> None:
    """Import ``snap`` (REDEFINE), validating it as libvirt does."""
    from .xml.snapshot import check_redefine_uuid
    name = snap.name or ""
    check_redefine_uuid(snap, domain_uuid)
    if snap.parent is not None:
        if snap.parent not in tree.snaps:
            raise InvalidArgError(f"parent {snap.parent} for snapshot {name} not found")
        if snap.parent == name or name in tree.ancestors(snap.parent):
            raise InvalidArgError(f"parent {snap.parent} would create cycle to {name}")
    old = tree.snaps.get(name)
    if old is not None:
        _check_same_kind(old, snap, name)
    tree.snaps[name] = snap
    if make_current:
        set_current(store, tree, name)
    else:
        store.write(snap, tree.current == name)


def _online(state: str | None) -> bool:
    return state not in ("shutoff", "disk-snapshot", None)


def _check_same_kind(old: SnapshotDef, new: SnapshotDef, name: str) -> None:
    if _online(old.state) != _online(new.state):
        raise InvalidArgError(f"cannot change between online and offline snapshot state in "
                              f"snapshot {name}")
    if (old.state == "disk-snapshot") != (new.state == "disk-snapshot"):
        raise InvalidArgError(f"cannot change between disk only and full system in "
                              f"snapshot {name}")


def set_current(store: SnapshotStore, tree: SnapshotTree, name: str | None) -> None:
    """Make ``name`` current (None: no current snapshot); rewrite its file and that of
    every other snapshot that claims to be current (an interrupted change can leave
    two), so that exactly one claims it afterwards."""
    if name is not None:
        tree.get(name)
    others = {n for n, s in tree.snaps.items() if s.active} | {tree.current}
    tree.current = name
    if name is not None:
        store.write(tree.snaps[name], True, sync_dir=False)
        tree.snaps[name] = replace(tree.snaps[name], active=True)
    for old in sorted(n for n in others if n is not None and n != name and n in tree.snaps):
        store.write(tree.snaps[old], False, sync_dir=False)
        tree.snaps[old] = replace(tree.snaps[old], active=False)
    if store.dir.is_dir():
        fsync_dir(store.dir)


def _newest(snaps: dict[str, SnapshotDef], names: list[str]) -> str | None:
    """The most recently created of ``names`` (ties: the last name): the snapshot
    an interrupted change most likely meant to make current."""
    if not names:
        return None
    return max(names, key=lambda n: (snaps[n].creation_time or 0, n))


def add(store: SnapshotStore, tree: SnapshotTree, snap: SnapshotDef) -> None:
    """Record a newly created snapshot: parent = the old current, now current."""
    name = snap.name or ""
    if name in tree.snaps:
        raise OperationInvalidError(f"Snapshot '{name}' already exists")
    snap = replace(snap, parent=tree.current)
    tree.snaps[name] = snap
    set_current(store, tree, name)


def remove_metadata(store: SnapshotStore, tree: SnapshotTree, name: str,
                    children: bool = False, children_only: bool = False) -> list[str]:
    """Forget snapshots (metadata only); re-parent children, move current up."""
    if children and children_only:
        raise InvalidArgError("Flags 'VIR_DOMAIN_SNAPSHOT_DELETE_CHILDREN' and "
                              "'VIR_DOMAIN_SNAPSHOT_DELETE_CHILDREN_ONLY' are mutually exclusive")
    tree.get(name)
    doomed = tree.children(name, descendants=True) if (children or children_only) else []
    if not children_only:
        doomed.append(name)
    for victim in reversed(doomed):
        parent = tree.parent(victim)
        for kid in tree.children(victim):
            tree.snaps[kid] = replace(tree.snaps[kid], parent=parent)
            store.write(tree.snaps[kid], tree.current == kid)
        if tree.current == victim:
            tree.current = None
            if parent is not None:
                set_current(store, tree, parent)
        del tree.snaps[victim]
        store.remove(victim)
    return doomed
