"""Plan the deletion of snapshots with their data: a pure function of the metadata,
the definition and the image graph (which image backs which).

What a snapshot holds, per disk:
- an external disk snapshot *froze* an image: the one the domain wrote to at
  snapshot time (``<domain>``'s disk source).  Its content is the snapshot's
  disk state and must not change while a snapshot needs it;
- it also made a *top*: the overlay the domain wrote to afterwards
  (``<disks>``'s source), and a revert to it made more (``<revertDisks>``);
- an internal snapshot lives inside the image that was current then;
- a memory file, for external memory.

Deleting snapshots removes their internal snapshots and memory files, then
simplifies the image graph until nothing more can go (`_simplify`):
- an image qdriver made for a deleted snapshot (a top, a revert overlay) that
  nothing names and nothing is backed by is removed;
- an image a deleted snapshot froze, that no remaining snapshot freezes, and
  that backs exactly one image, takes that image's data (a commit: block-commit
  while QEMU uses the chain, ``qemu-img commit`` otherwise); the committed file
  goes, and whatever named it names the merged image instead;
- an image that backs several images (the branches a revert makes) stays as
  it is: merging would change what the other branches see.  The plan says so.
Nothing here touches a file or QEMU; `delete_exec` carries the plan out.
"""
from __future__ import annotations

import enum
from dataclasses import dataclass, field, replace
from typing import Literal

from ..errors import InvalidArgError
from ..qemuimg.graph import ImageGraph
from ..snapshots.tree import SnapshotTree
from ..xml.domain import DomainDef, disk_sources
from ..xml.snapshot import SnapshotDef

CommitMode = Literal["active", "intermediate", "offline"]


class DeleteStep(enum.StrEnum):
    """The kinds of change a delete plan makes, in the order they run."""

    MARK = "mark"
    DELETE_INTERNAL = "delete-internal"
    COMMIT = "commit"
    REMOVE_FILE = "remove-file"
    REMOVE_METADATA = "remove-metadata"


@dataclass(frozen=True)
class DeleteFlags:
    """``virDomainSnapshotDeleteFlags`` as booleans."""

    children: bool = False
    children_only: bool = False
    metadata_only: bool = False


@dataclass(frozen=True)
class InternalDelete:
    target: str
    image: str
    name: str
    online: bool
    """True when the running QEMU has the image open (QMP ``snapshot-delete``)."""
    hmp: bool = False
    """Online on a QEMU without the ``snapshot-delete`` job: HMP ``delvm``."""


@dataclass(frozen=True)
class Commit:
    """Merge ``top`` into its backing file ``base``; then ``top`` goes."""

    target: str
    top: str
    base: str
    mode: CommitMode
    rebase: tuple[str, ...]
    """Other images backed by ``top`` (branches QEMU does not see): re-pointed at ``base``."""


@dataclass
class DeletePlan:
    """The decision for one delete request, as data."""

    names: list[str]
    """The snapshots whose metadata goes, deepest first."""
    metadata_only: bool
    internal: list[InternalDelete] = field(default_factory=list)
    commits: list[Commit] = field(default_factory=list)
    remove: list[str] = field(default_factory=list)
    """Files that go: committed tops, images nothing needs, memory files."""
    renames: dict[str, str] = field(default_factory=dict)
    """Image paths the definition and the remaining metadata change (top -> base)."""
    kept: list[tuple[str, str]] = field(default_factory=list)
    """(image, why it stays) for images the deleted snapshots held."""

    @property
    def steps(self) -> list[DeleteStep]:
        S = DeleteStep
        if self.metadata_only:
            return [S.REMOVE_METADATA]
        return [S.MARK, *([S.DELETE_INTERNAL] if self.internal else []),
                *([S.COMMIT] if self.commits else []),
                *([S.REMOVE_FILE] if self.remove else []), S.REMOVE_METADATA]

    def to_json(self) -> dict[str, object]:
        return {
            "snapshots": self.names, "steps": [str(s) for s in self.steps],
            "internal": [{"disk": i.target, "image": i.image, "online": i.online,
                          "via": "hmp delvm" if i.hmp else "snapshot-delete" if i.online
                          else "qemu-img"} for i in self.internal],
            "commits": [{"disk": c.target, "top": c.top, "into": c.base, "mode": c.mode,
                         "rebase": list(c.rebase)} for c in self.commits],
            "remove": self.remove, "renames": self.renames,
            "kept": [{"image": i, "why": why} for i, why in self.kept]}


def victims(tree: SnapshotTree, name: str, flags: DeleteFlags) -> list[str]:
    """The snapshots a request deletes, deepest first (libvirt's flags)."""
    if flags.children and flags.children_only:
        raise InvalidArgError("Flags 'VIR_DOMAIN_SNAPSHOT_DELETE_CHILDREN' and "
                              "'VIR_DOMAIN_SNAPSHOT_DELETE_CHILDREN_ONLY' are mutually exclusive")
    tree.get(name)
    doomed = tree.children(name, descendants=True) if flags.children or flags.children_only \
        else []
    if not flags.children_only:
        doomed.insert(0, name)
    return list(reversed(doomed))


def plan_delete(tree: SnapshotTree, definition: DomainDef, running: bool, names: list[str],
                graph: ImageGraph, metadata_only: bool = False,
                snapshot_job: bool = True) -> DeletePlan:
    """What deleting ``names`` (from `victims`) does to images, QEMU and metadata.

    ``snapshot_job``: the running QEMU has the QMP ``snapshot-delete`` job
    (QEMU >= 6.0); without it internal snapshots it has open go by HMP ``delvm``.
    """
    plan = DeletePlan(list(names), metadata_only)
    if metadata_only:
        return plan
    doomed = [tree.get(n) for n in names]
    remaining = [s for n, s in tree.snaps.items() if n not in names]
    active = {d.target: d.source for d in definition.disks if d.source} if running else {}
    for snap in doomed:
        plan.internal += [replace(i, hmp=i.online and not snapshot_job)
                          for i in _internal(snap, graph, active)]
        if snap.memory == "external" and snap.memory_file:
            plan.remove.append(snap.memory_file)
            if snap.template_ram:
                plan.remove.append(snap.template_ram)
    _simplify(plan, doomed, remaining, definition, graph, active)
    return plan


def _internal(snap: SnapshotDef, graph: ImageGraph, active: dict[str, str]
              ) -> list[InternalDelete]:
    then = _domain_sources(snap)
    return [InternalDelete(d.name, then[d.name], snap.name or "",
                           then[d.name] in graph.chain(active.get(d.name)))
            for d in snap.disks if d.snapshot == "internal" and d.name in then]


def _domain_sources(snap: SnapshotDef) -> dict[str, str]:
    return disk_sources(snap.domain) if snap.domain is not None else {}


@dataclass
class _Refs:
    """Who names which image, updated as the simulation merges images."""

    named: dict[str, set[str]]
    """image -> targets it is named for (definition or a remaining snapshot)."""
    frozen: set[str]
    holders: dict[str, str]
    """image -> a remaining internal snapshot it holds: its file must stay."""
    candidates_remove: set[str]
    candidates_merge: dict[str, str]
    """image a deleted snapshot froze -> its disk target."""
    tops: set[str] = field(default_factory=set)
    """The images the definition's disks write: nothing is ever merged into one."""


def _refs(doomed: list[SnapshotDef], remaining: list[SnapshotDef], definition: DomainDef
          ) -> _Refs:
    named: dict[str, set[str]] = {}
    frozen: set[str] = set()
    holders: dict[str, str] = {}
    for d in definition.disks:
        if d.source:
            named.setdefault(d.source, set()).add(d.target)
    for snap in remaining:
        ext = {d.name for d in snap.disks if d.snapshot == "external"}
        inside = {d.name for d in snap.disks if d.snapshot == "internal"}
        for target, image in _domain_sources(snap).items():
            named.setdefault(image, set()).add(target)
            if target in ext:
                frozen.add(image)
            if target in inside:
                holders[image] = snap.name or ""
        for d in [*snap.disks, *(snap.revert_disks or ())]:
            if d.source:
                named.setdefault(d.source, set()).add(d.name)
    made: set[str] = set()
    merge: dict[str, str] = {}
    for snap in doomed:
        ext = {d.name for d in snap.disks if d.snapshot == "external"}
        made |= {d.source for d in [*snap.disks, *(snap.revert_disks or ())]
                 if d.source and d.snapshot != "internal"}
        if snap.stale is None:  # a stale snapshot's data is worth nothing: never merged
            merge.update({img: t for t, img in _domain_sources(snap).items() if t in ext})
    tops = {d.source for d in definition.disks if d.source and not d.readonly}
    return _Refs(named, frozen, holders, made, merge, tops)


def _simplify(plan: DeletePlan, doomed: list[SnapshotDef], remaining: list[SnapshotDef],
              definition: DomainDef, graph: ImageGraph, active: dict[str, str]) -> None:
    refs = _refs(doomed, remaining, definition)
    g = replace(graph, backing=dict(graph.backing))
    changed = True
    while changed:
        changed = _remove_unneeded(plan, refs, g) or _merge_one(plan, refs, g, active)
    for image in sorted(refs.candidates_merge):
        if image in g.backing and image not in refs.frozen and len(g.children(image)) > 1:
            plan.kept.append((image, "it backs several images (branches): "
                                     + ", ".join(g.children(image))))
        elif image in refs.frozen:
            plan.kept.append((image, "another snapshot's disk state is this image"))


def _remove_unneeded(plan: DeletePlan, refs: _Refs, g: ImageGraph) -> bool:
    """Remove one image qdriver made for a deleted snapshot that nothing needs."""
    for image in sorted(refs.candidates_remove):
        if image not in refs.named and not g.children(image) and image not in plan.remove:
            plan.remove.append(image)
            refs.candidates_remove.discard(image)
            g.backing.pop(image, None)
            return True
    return False


def _merge_one(plan: DeletePlan, refs: _Refs, g: ImageGraph, active: dict[str, str]) -> bool:
    """Commit the only child of one image a deleted snapshot froze into it."""
    for base, target in sorted(refs.candidates_merge.items()):
        kids = g.children(base)
        if base in refs.frozen or len(kids) != 1 or base not in g.writable:
            continue
        top = kids[0]
        if base in refs.tops:
            plan.kept.append((base, "the domain writes this image now: merging an older "
                                    f"layer ({top}) into it would change its disk"))
            del refs.candidates_merge[base]
            return True
        if top in refs.holders:
            plan.kept.append((top, f"it holds internal snapshot '{refs.holders[top]}'"))
            del refs.candidates_merge[base]
            return True
        in_use = g.chain(active.get(target))
        mode: CommitMode = "active" if active.get(target) == top else \
            "intermediate" if top in in_use else "offline"
        above = g.children(top)
        rebase = tuple(i for i in above if i not in in_use or mode == "offline")
        plan.commits.append(Commit(target, top, base, mode, rebase))
        for child in above:
            g.backing[child] = base
        g.backing.pop(top, None)
        plan.remove.append(top)
        del refs.candidates_merge[base]
        _rename(plan, refs, top, base)
        if active.get(target) == top:
            active[target] = base
        return True
    return False


def _rename(plan: DeletePlan, refs: _Refs, old: str, new: str) -> None:
    for k, v in list(plan.renames.items()):
        if v == old:
            plan.renames[k] = new
    plan.renames[old] = new
    if old in refs.named:
        refs.named.setdefault(new, set()).update(refs.named.pop(old))
    if old in refs.frozen:
        refs.frozen.discard(old)
        refs.frozen.add(new)
    refs.candidates_remove.discard(old)  # the merged image keeps its own standing
    if old in refs.candidates_merge:
        refs.candidates_merge.setdefault(new, refs.candidates_merge.pop(old))


__all__ = ["DeleteFlags", "DeletePlan", "DeleteStep", "ImageGraph", "Commit",
           "InternalDelete", "victims", "plan_delete"]
