"""Carry out a snapshot delete plan, with the domain lock held.

Order, and why:
1. the snapshots being deleted get libvirt's ``<snapshotDeleteInProgress/>`` on
   their disks (undo: the metadata as it was);
2. from the first change to an image on, a delete cannot be undone (a commit
   rewrites the image below), so the journal is committed with nothing to
   undo: the marks are what a later process finishes (`finish`), by planning
   again from the images as they are then;
3. internal snapshots go (QMP ``snapshot-delete`` where QEMU has the image
   open, ``qemu-img snapshot -d`` elsewhere), then the commits (each disk's in
   order, different disks at once), then the definition and every remaining
   snapshot name the merged image, then the committed file goes; then memory
   files and images nothing needs;
4. the metadata of the deleted snapshots goes last.

The snapshot tree is read once, under the lock, and kept in step with every
file this execution writes, so no step reads the metadata back.
"""
from __future__ import annotations

import logging
import os
import time
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Any, Collection

import anyio

from .. import qemuimg, qmp
from ..blockdev import jobs as blockjobs
from ..blockdev.nodes import OpenImages, open_images, writable
from ..errors import OperationFailedError, OperationInvalidError
from ..events.kinds import EventType
from ..job import Job, JobView
from ..launch.runtime import template_users
from ..parallel import side_by_side
from ..progress import ProgressFn, ProgressMeter
from ..qemuimg.graph import ImageGraph
from ..snapshots.store import MARKS_FILE, SnapshotStore
from ..snapshots.tree import SnapshotTree
from ..testing import faults
from ..xml.domain import disk_sources, replace_disk_source
from ..xml.snapshot import SnapshotDef
from . import actions
from .delete_plan import Commit, DeleteFlags, DeletePlan, InternalDelete, plan_delete, victims
from .shared import JOB_TIMEOUT, hmp_word
from .transaction import Transaction

COMMIT_PREFIX = "qdriver-commit-"
log = logging.getLogger("qdriver")


async def plan(job: JobView, name: str, flags: DeleteFlags, online: bool = True) -> DeletePlan:
    """What deleting ``name`` would do, from the job's state (``online``: asking the
    running QEMU whether it has the snapshot-delete job)."""
    if online and not flags.metadata_only:
        await job.read_tree_and_connect()
    names = victims(job.tree, name, flags)
    if not flags.metadata_only:
        _refuse_templates_in_use(job, names)
    graph = job.image_graph() if not flags.metadata_only else ImageGraph({})
    snapshot_job = (await job.qemu_caps()).snapshot_save \
        if online and job.record is not None else True
    return plan_delete(job.tree, job.definition, job.record is not None, names, graph,
                       flags.metadata_only, snapshot_job=snapshot_job)


def _refuse_templates_in_use(job: JobView, names: Collection[str]) -> None:
    """A template snapshot's RAM file stays while a clone maps it.

    :raise OperationInvalidError: naming the snapshot and the domains that use it.
    """
    templates = {ram: n for n in names if (ram := job.tree.snaps[n].template_ram)}
    for ram, domains in template_users(job.paths.state_dir, set(templates)).items():
        raise OperationInvalidError(
            f"snapshot '{templates[ram]}' is the memory template of running domain(s) "
            f"{', '.join(repr(d) for d in domains)}: their RAM maps '{ram}'; destroy "
            "them (or revert them to another snapshot) first")


async def delete(job: Job, name: str, flags: DeleteFlags,
                 progress: ProgressFn | None = None) -> list[str]:
    """Delete ``name`` (and its children if asked) with its data; the names removed."""
    the_plan = await plan(job, name, flags)
    await DeleteExecution(job, the_plan, progress).run()
    drop_nvram_copies(job)
    for removed in the_plan.names:
        job.emit(EventType.SNAPSHOT, "deleted", removed)
    return the_plan.names


def drop_nvram_copies(job: Job) -> None:
    """Remove every copy of the UEFI variable store whose snapshot is gone (the
    copies of the snapshots just deleted, and any a dead process left)."""
    directory = job.paths.snapshots
    for copy in directory.glob("*.nvram") if directory.is_dir() else ():
        if copy.stem not in job.tree.snaps:
            copy.unlink(missing_ok=True)


class DeleteExecution:
    """One snapshot delete in progress."""

    def __init__(self, job: Job, plan: DeletePlan, progress: ProgressFn | None = None,
                 mon: qmp.Monitor | None = None) -> None:
        self.job = job
        self.plan = plan
        self.mon = mon
        """The running QEMU's monitor (`run` opens it); None while shut off."""
        self.progress = progress
        self.txn = Transaction(job, "snapshot-delete")
        self.tops: dict[str, str] = {}
        """Each disk's active image as the commits leave it (the root node's image)."""
        self.images: OpenImages | None = None

    @property
    def store(self) -> SnapshotStore:
        return self.job.store

    @property
    def tree(self) -> SnapshotTree:
        """The metadata as on disk: the job's, changed with each write."""
        return self.job.tree

    async def run(self) -> None:
        self.mon = await self.job.qemu()
        await self.txn.attempt(self._all)

    async def _all(self) -> None:
        if self.plan.metadata_only:  # children re-parented, current moved: any file
            self.txn.on_undo(actions.restore_dir(self.store.dir, "the snapshot metadata"))
        else:  # only the marks come before the point of no return
            self.txn.on_undo(actions.restore_files(
                self.store.dir, self.plan.names, "the marked snapshots' metadata",
                new=[MARKS_FILE]))
            await self._mark_and_ask()
            self.txn.commit([])  # from here on the marks say what to finish
        await self.carry_out()

    async def _mark_and_ask(self) -> None:
        """Write the marks; while they go to disk (in a thread), QEMU says which
        images it has open, a read-only question the commits need answered."""
        if not self._asks_qemu():
            mark(self.store, self.tree, self.plan.names)
            return
        await side_by_side(self._learn_open_images, partial(
            anyio.to_thread.run_sync, mark, self.store, self.tree, self.plan.names))

    def _online_commits(self) -> bool:
        return self.mon is not None and any(c.mode != "offline" for c in self.plan.commits)

    def _asks_qemu(self) -> bool:
        """Whether the running QEMU's open images are needed (commits, or internal
        snapshots deleted by its job)."""
        return self._online_commits() or self.mon is not None and any(
            i.online and not i.hmp for i in self.plan.internal)

    async def _learn_open_images(self) -> None:
        assert self.mon is not None
        self.images = await open_images(self.mon)  # a delete only ever closes nodes

    async def carry_out(self) -> None:
        """Steps 3 and 4 (also what `finish` runs for a dead process's delete)."""
        for item in self.plan.internal:
            await self._delete_internal(item)
        await self._commits()
        faults.point("snapshot-delete:committed")
        await side_by_side(self._close_removed, self._rename_and_remove)
        for name in self.plan.names:
            if name in self.tree.snaps:
                self.store.remove_metadata(self.tree, name)
                faults.point("snapshot-delete:metadata")
        self.store.clear_marks()

    # -- internal snapshots ------------------------------------------------------------

    async def _delete_internal(self, item: InternalDelete) -> None:
        if not os.path.exists(item.image):
            return
        if item.hmp and self.mon is not None:
            out = await self.mon.hmp(f"delvm {hmp_word(item.name)}", JOB_TIMEOUT)
            if out.strip():  # HMP reports errors as text, not as a QMP error
                raise OperationFailedError(f"delvm failed: {out.strip()}")
            return
        if item.online and self.mon is not None:
            images = self.images or await open_images(self.mon)
            node = images.node(item.image)
            if item.name in images.held.get(node, ()):
                async with writable(self.mon, node, images):  # a backing layer is read-only
                    await qmp.run_job(self.mon, "snapshot-delete",
                                      {"tag": item.name, "devices": [node]},
                                      f"qdriver-delete-{int(time.time() * 1000)}",
                                      JOB_TIMEOUT)
            return
        if item.name in {s.name for s in await qemuimg.snapshot_list(item.image)}:
            await qemuimg.snapshot_delete(item.image, item.name)

    # -- commits -----------------------------------------------------------------------

    async def _commits(self) -> None:
        """Each disk's commits in plan order, the disks side by side: their images are
        disjoint, and QEMU (or a ``qemu-img`` each) runs their jobs in parallel.  A
        failure lets the other disks' commits end, then the first one is raised
        (the marks stay, so what is left is finished later)."""
        by_disk: dict[str, list[Commit]] = {}
        for c in self.plan.commits:
            by_disk.setdefault(c.target, []).append(c)
        self.tops = {d.target: d.source for d in self.job.definition.disks if d.source}
        if self.images is None and self._online_commits():
            await self._learn_open_images()

        async def one_disk(commits: list[Commit]) -> None:
            for c in commits:
                await self._commit(c)
        await side_by_side(*(partial(one_disk, commits) for commits in by_disk.values()))

    async def _commit(self, c: Commit) -> None:
        try:
            if c.mode == "offline" or self.mon is None:
                await qemuimg.commit(c.top)
            else:
                await self._block_commit(self.mon, c)
        except (qmp.MonitorClosedError, qmp.JobError, qemuimg.QemuImgError) as e:
            raise OperationFailedError(f"block commit failed while deleting disk '{c.target}' "
                                       f"snapshot: '{e}'") from e
        for child in c.rebase:
            await qemuimg.rebase_unsafe(child, c.base, _format(c.base))

    async def _close_removed(self) -> None:
        """QEMU lets go of every file the delete removes that it still has open (the
        merged overlays; after a dead delete, an overlay it had committed but not
        closed), so that a later snapshot finds the disk's image free and removing
        the file frees its space.  All asked at once: QEMU answers them in turn."""
        mon = self.mon
        if mon is None or not self.plan.remove:
            return
        if self.images is None:
            await self._learn_open_images()
        assert self.images is not None
        nodes = [self.images.nodes[p] for p in self.plan.remove if p in self.images.nodes]

        async def close(node: str) -> None:
            try:  # the format node, and with it its file node
                await mon.execute("blockdev-del", {"node-name": node})
            except qmp.CommandError:
                pass  # not a node qdriver added (QEMU opened it as a backing file)
        await side_by_side(*(partial(close, n) for n in nodes))

    async def _block_commit(self, mon: qmp.Monitor, c: Commit) -> None:
        """One commit job; the disk's root node is the one its active image (the
        definition's source, the base once an active commit pivoted) opened as."""
        job = f"{COMMIT_PREFIX}{c.target}-{int(time.time() * 1000)}"
        images = self.images
        assert images is not None  # asked once in _commits, before the first job
        args: dict[str, Any] = {"device": images.node(self.tops.get(c.target, c.top)),
                                "base-node": images.node(c.base)}
        if c.mode == "intermediate":
            args["top-node"] = images.node(c.top)
        meter = ProgressMeter(f"commit {c.target}", self.progress) if self.progress else None
        await blockjobs.commit(mon, args, job, meter)
        if c.mode == "active":
            self.tops[c.target] = c.base

    async def adopt_finished_commits(self, graph: ImageGraph) -> None:
        """Rename what a commit finished before its process died.

        A snapshot's top is backed by the image it froze, unless that image was
        committed into its own backing file: QEMU then re-points the top at
        that file when (and only when) the commit completes.  Such a frozen
        image holds nothing of its own any more: its names move to the file it
        was committed into, and it goes.
        """
        for snap in list(self.tree.snaps.values()):
            froze = disk_sources(snap.domain) if snap.domain is not None else {}
            for d in snap.disks:
                frozen = froze.get(d.name)
                if d.snapshot != "external" or not d.source or not frozen:
                    continue
                below = graph.backing.get(d.source)
                if below and below != frozen and below == graph.backing.get(frozen) \
                        and not graph.children(frozen):
                    self._rename({frozen: below})
                    Path(frozen).unlink(missing_ok=True)

    async def _rename_and_remove(self) -> None:
        """The merged images' new names, on disk before any committed file goes; then
        the files go.  In a thread, while QEMU closes the merged overlays (a file
        QEMU still has open can go: its space is freed when QEMU lets go)."""
        def rename_then_remove() -> None:
            if self.plan.renames:
                self._rename(self.plan.renames, going=self.plan.names)
            faults.point("snapshot-delete:renamed")
            for path in self.plan.remove:
                Path(path).unlink(missing_ok=True)
        await anyio.to_thread.run_sync(rename_then_remove)

    def _rename(self, renames: dict[str, str], going: Collection[str] = ()) -> None:
        """Every name of each old image (definition, metadata) becomes the new one:
        one write of the definition and of each snapshot that changes.

        The snapshots ``going`` (marked, their metadata goes next) keep the old
        names: a process that dies before they are gone leaves them naming the
        committed file, which nothing else names, so finishing removes it."""
        formats = {new: _format(new) for new in renames.values()}
        defn = self.job.definition
        moved = {d.target: (renames[d.source], formats[renames[d.source]])
                 for d in defn.disks if d.source in renames}
        if moved:
            self.job.save_definition(defn.with_disk_sources(moved))
        changed: list[str] = []
        for name, snap in list(self.tree.snaps.items()):
            renamed = snap
            for old, new in renames.items():
                renamed = _rename_snapshot(renamed, old, new, formats[new])
            if renamed is not snap and name not in going:
                self.tree.snaps[name] = renamed
                changed.append(name)
        self.store.save(self.tree, changed)


def mark(store: SnapshotStore, tree: SnapshotTree, names: list[str]) -> None:
    """Give each snapshot libvirt's ``<snapshotDeleteInProgress/>`` (file and ``tree``),
    and list them in the store's index of marks (what recovery looks for)."""
    store.write_marks(names, sync_dir=False)  # the save below syncs the directory
    for name in names:
        snap = tree.get(name)
        tree.snaps[name] = replace(snap, disks=[replace(d, delete_in_progress=True)
                                                for d in snap.disks])
    store.save(tree, names)


def _rename_snapshot(snap: SnapshotDef, old: str, new: str, fmt: str) -> SnapshotDef:
    def fix(disks: list[Any] | None) -> list[Any] | None:
        if disks is None:
            return None
        return [replace(d, source=new) if d.source == old else d for d in disks]
    changed = replace(snap, disks=fix(snap.disks) or [], revert_disks=fix(snap.revert_disks))
    if snap.domain is not None:
        if old in disk_sources(snap.domain).values():
            changed = replace(changed, domain=replace_disk_source(snap.domain, old, new, fmt))
    return snap if changed == snap else changed


def _format(image: str) -> str:
    try:
        return qemuimg.header.read(image).format
    except OSError:
        return "qcow2"


async def finish(job: Job) -> list[str]:
    """Finish the deletes a dead process left marked: plan again from the images
    as they are now and carry that out.  Returns the snapshots deleted."""
    store = job.store
    marks = store.read_marks()
    names = [n for n in marks if n in job.tree.snaps] if marks else []
    if not names:
        store.clear_marks()
        return []
    tree = job.tree
    mon = await job.qemu()
    if mon is not None:
        await blockjobs.settle(mon, COMMIT_PREFIX)
        await actions.run(job, actions.follow_disks())
    execution = DeleteExecution(job, DeletePlan(names, False), mon=mon)
    graph = job.image_graph()
    if mon is None:
        await _repair_leaks(job, graph)
    await execution.adopt_finished_commits(graph)  # renames images in the tree itself
    execution.plan = plan_delete(tree, job.definition, mon is not None, names, job.image_graph())
    await execution.carry_out()
    return names


async def _repair_leaks(job: Job, graph: ImageGraph) -> None:
    """QEMU died while it wrote (a commit, the guest): free the clusters it left
    allocated and unreferenced in the chains it had open, before they are committed.

    Only the domain's own images are repaired (those its definition or snapshots
    name: a QEMU of this domain wrote nothing else), and only where no other
    process has the image open (its lock is taken): a base image other guests
    share is left alone."""
    own = {d.source for d in job.definition.disks if d.source and not d.readonly}
    own |= job.tree.files()
    for disk in job.definition.disks:
        image = disk.source if not disk.readonly else None
        while image is not None:
            if image in own and graph.formats.get(image) == "qcow2" \
                    and os.path.exists(image):
                try:
                    await qemuimg.repair_leaks(image)
                except qemuimg.QemuImgError as e:
                    if "lock" not in str(e):
                        raise
                    log.warning("not repairing '%s': another process has it open", image)
            image = graph.backing.get(image)


__all__ = ["DeleteExecution", "plan", "delete", "mark", "finish"]
