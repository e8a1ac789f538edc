"""The tree of one domain's snapshots: pure, no file is read or written here.

`SnapshotTree` answers libvirt's tree questions (parents, children, the
current one, list filters) and makes its changes (add, redefine, remove, set
current) in memory; each change returns the snapshots whose metadata files
must be rewritten, which `qdriver.snapshots.store` then writes.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

from ..errors import InvalidArgError, NoSnapshotError, OperationInvalidError
from ..xml.domain import disk_sources
from ..xml.snapshot import SnapshotDef, check_redefine_uuid

ACTIVE_EXCLUDED = ("shutoff", "disk-snapshot")


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

    def files(self, but_revert_disks_of: str | None = None) -> set[str]:
        """Every image file some snapshot names (its disks, revert disks, domain);
        ``but_revert_disks_of``: not counting that snapshot's revert disks (which
        a revert to it replaces)."""
        named: set[str] = set()
        for name, snap in self.snaps.items():
            reverts = snap.revert_disks or () if name != but_revert_disks_of else ()
            named.update(d.source for d in [*snap.disks, *reverts] if d.source)
            if snap.domain is not None:
                named.update(disk_sources(snap.domain).values())
        return named

    # -- changes: each returns the snapshots whose files must be rewritten ---------

    def set_current(self, name: str | None) -> list[str]:
        """Make ``name`` current (None: none).  Every other snapshot that claims to be
        current (an interrupted change can leave two) is rewritten too, so that
        exactly one claims it afterwards."""
        if name is not None:
            self.get(name)
        others = {n for n, s in self.snaps.items() if s.active} | {self.current}
        self.current = name
        changed = [name] if name is not None else []
        changed += sorted(n for n in others if n is not None and n != name and n in self.snaps)
        for n in changed:
            self.snaps[n] = replace(self.snaps[n], active=n == name)
        return changed

    def add(self, snap: SnapshotDef) -> list[str]:
        """A newly created snapshot: its parent is the old current; it becomes current."""
        name = snap.name or ""
        if name in self.snaps:
            raise OperationInvalidError(f"Snapshot '{name}' already exists")
        self.snaps[name] = replace(snap, parent=self.current)
        return self.set_current(name)

    def redefine(self, snap: SnapshotDef, domain_uuid: str, make_current: bool) -> list[str]:
        """Import ``snap`` (REDEFINE), validated as libvirt does."""
        name = snap.name or ""
        check_redefine_uuid(snap, domain_uuid)
        if snap.parent is not None:
            if snap.parent not in self.snaps:
                raise InvalidArgError(f"parent {snap.parent} for snapshot {name} not found")
            if snap.parent == name or name in self.ancestors(snap.parent):
                raise InvalidArgError(f"parent {snap.parent} would create cycle to {name}")
        old = self.snaps.get(name)
        if old is not None:
            _check_same_kind(old, snap, name)
        self.snaps[name] = replace(snap, active=self.current == name)
        return self.set_current(name) if make_current else [name]

    def remove(self, name: str, children: bool = False,
               children_only: bool = False) -> tuple[list[str], list[str]]:
        """Forget snapshots (metadata only): children move up to the parent, and so
        does current.  Returns the names removed and the names to rewrite."""
        if children and children_only:
            raise InvalidArgError(
                "Flags 'VIR_DOMAIN_SNAPSHOT_DELETE_CHILDREN' and "
                "'VIR_DOMAIN_SNAPSHOT_DELETE_CHILDREN_ONLY' are mutually exclusive")
        self.get(name)
        doomed = self.children(name, descendants=True) if (children or children_only) else []
        if not children_only:
            doomed.append(name)
        changed: list[str] = []
        for victim in reversed(doomed):
            parent = self.parent(victim)
            for kid in self.children(victim):
                self.snaps[kid] = replace(self.snaps[kid], parent=parent)
                changed.append(kid)
            if self.current == victim:
                self.current = None
                if parent is not None:
                    changed += self.set_current(parent)
            del self.snaps[victim]
        return doomed, [n for n in dict.fromkeys(changed) if n in self.snaps]


def _online(state: str | None) -> bool:
    return state not in ("shutoff", "disk-snapshot", None)


def _check_same_kind(old: SnapshotDef, new: SnapshotDef, name: str) -> None:
    if _online(old.state) != _online(new.state):
        raise InvalidArgError(f"cannot change between online and offline snapshot state in "
                              f"snapshot {name}")
    if (old.state == "disk-snapshot") != (new.state == "disk-snapshot"):
        raise InvalidArgError(f"cannot change between disk only and full system in "
                              f"snapshot {name}")


def newest(snaps: dict[str, SnapshotDef], names: list[str]) -> str | None:
    """The most recently created of ``names`` (ties: the last name): the snapshot
    an interrupted change most likely meant to make current."""
    if not names:
        return None
    return max(names, key=lambda n: (snaps[n].creation_time or 0, n))


__all__ = ["ListFilter", "SnapshotTree", "newest"]
