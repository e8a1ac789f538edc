"""Carry out a snapshot delete plan, with the domain lock held.

Order, and why:
1. the snapshots being deleted get libvirt's ``<snapshotDeleteInProgress/>`` on
   their disks (undo: the metadata as it was);
2. from the first change to an image on, a delete cannot be undone (a commit
   rewrites the image below), so the journal is committed with nothing to
   undo: the marks are what a later process finishes (`finish`), by planning
   again from the images as they are then;
3. internal snapshots go (QMP ``snapshot-delete`` where QEMU has the image
   open, ``qemu-img snapshot -d`` elsewhere), then each commit, then the
   definition and every remaining snapshot name the merged image, then the
   committed file goes; then memory files and images nothing needs;
4. the metadata of the deleted snapshots goes last.
"""
from __future__ import annotations

import os
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import anyio

from .. import faults, qemuimg, qmp
from .. import snapshot_tree as meta
from ..errors import OperationFailedError
from ..opcontext import OpContext
from ..xml.domain import disk_sources, replace_disk_source
from ..xml.snapshot import SnapshotDef
from . import actions
from .blocknodes import overlay_nodes, top_nodes
from .create_exec import hmp_word
from .delete_plan import Commit, DeletePlan, ImageGraph, InternalDelete, plan_delete
from .progress import ProgressFn, ProgressMeter
from .transaction import Transaction

COMMIT_TIMEOUT = 3600.0


async def image_graph(ctx: OpContext, tree: meta.SnapshotTree) -> ImageGraph:
    """The backing graph of every image the definition and ``tree`` name."""
    todo = [d.source for d in ctx.definition.disks if d.source]
    for snap in tree.snaps.values():
        todo += [d.source for d in [*snap.disks, *(snap.revert_disks or ())] if d.source]
        if snap.domain is not None:
            todo += disk_sources(snap.domain).values()
    backing: dict[str, str | None] = {}
    formats: dict[str, str] = {}
    while todo:
        image = todo.pop()
        if image in backing or not os.path.isfile(image):
            continue
        head = qemuimg.header.read(image)
        backing[image], formats[image] = head.backing, head.format
        if head.backing:
            todo.append(head.backing)
    writable = frozenset(i for i in backing if os.access(i, os.W_OK))
    return ImageGraph(backing, formats, writable)


def marked(tree: meta.SnapshotTree) -> list[str]:
    """Snapshots a delete started on and did not finish."""
    return [n for n, s in tree.snaps.items() if any(d.delete_in_progress for d in s.disks)]


class DeleteExecution:
    """One snapshot delete in progress."""

    def __init__(self, ctx: OpContext, plan: DeletePlan, mon: qmp.Monitor | None,
                 progress: ProgressFn | None = None) -> None:
        self.ctx = ctx
        self.plan = plan
        self.mon = mon
        self.progress = progress
        self.txn = Transaction(actions.ActionEnv.fixed(ctx, mon), "snapshot-delete")

    async def run(self) -> None:
        await self.txn.attempt(self._all)

    async def _all(self) -> None:
        store = self.ctx.snapshot_store()
        self.txn.on_undo(actions.restore_dir(store.dir, "the snapshot metadata"))
        if not self.plan.metadata_only:
            _mark(store, self.plan.names)
            self.txn.commit([])  # from here on the marks say what to finish
        await self.carry_out()

    async def carry_out(self) -> None:
        """Steps 3 and 4 (also what `finish` runs for a dead process's delete)."""
        for item in self.plan.internal:
            await self._delete_internal(item)
        for commit in self.plan.commits:
            await self._commit(commit)
        if self.plan.renames:  # durable before any committed file goes
            self._rename(self.plan.renames)
        for path in self.plan.remove:
            Path(path).unlink(missing_ok=True)
        store = self.ctx.snapshot_store()
        for name in self.plan.names:
            tree = store.load()
            if name in tree.snaps:
                meta.remove_metadata(store, tree, name)
                faults.point("snapshot-delete:metadata")

    # -- internal snapshots ------------------------------------------------------------

    async def _delete_internal(self, item: InternalDelete) -> None:
        if not os.path.exists(item.image):
            return
        if item.hmp and self.mon is not None:
            out = await self.mon.hmp(f"delvm {hmp_word(item.name)}", COMMIT_TIMEOUT)
            if out.strip():  # HMP reports errors as text, not as a QMP error
                raise OperationFailedError(f"delvm failed: {out.strip()}")
            return
        if item.online and self.mon is not None:
            node = await _node_of(self.mon, item.image)
            held = await _held(self.mon, node)
            if item.name in held:
                await qmp.run_job(self.mon, "snapshot-delete",
                                  {"tag": item.name, "devices": [node]},
                                  f"qdriver-delete-{int(time.time() * 1000)}", COMMIT_TIMEOUT)
            return
        if item.name in {s.name for s in await qemuimg.snapshot_list(item.image)}:
            await qemuimg.snapshot_delete(item.image, item.name)

    # -- commits -----------------------------------------------------------------------

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
        if self.mon is not None and c.mode != "offline":
            try:  # the overlay's format node, and with it its file node
                await self.mon.execute("blockdev-del",
                                       {"node-name": overlay_nodes(c.target, c.top)[0]})
            except qmp.CommandError:
                pass  # not a node qdriver added (QEMU opened it as a backing file)

    async def _block_commit(self, mon: qmp.Monitor, c: Commit) -> None:
        root = (await top_nodes(mon))[c.target]
        job = f"qdriver-commit-{c.target}-{int(time.time() * 1000)}"
        nodes = await _nodes_of(mon, c.base, c.top)
        args: dict[str, Any] = {"job-id": job, "device": root, "base-node": nodes[c.base]}
        if c.mode == "intermediate":
            args["top-node"] = nodes[c.top]
        meter = ProgressMeter(f"commit {c.target}", self.progress)
        with mon.listener("BLOCK_JOB_READY", "BLOCK_JOB_COMPLETED") as events:
            await mon.execute("block-commit", args)
            await _wait_job(mon, events, job, meter)

    async def adopt_finished_commits(self, graph: ImageGraph) -> None:
        """Rename what a commit finished before its process died.

        A snapshot's top is backed by the image it froze, unless that image was
        committed into its own backing file: QEMU then re-points the top at
        that file when (and only when) the commit completes.  Such a frozen
        image holds nothing of its own any more: its names move to the file it
        was committed into, and it goes.
        """
        for snap in self.ctx.snapshot_tree().snaps.values():
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

    def _rename(self, renames: dict[str, str]) -> None:
        """Every name of each old image (definition, metadata) becomes the new one:
        one write of the definition and of each snapshot that changes."""
        formats = {new: _format(new) for new in renames.values()}
        defn = self.ctx.definition
        moved = {d.target: (renames[d.source], formats[renames[d.source]])
                 for d in defn.disks if d.source in renames}
        if moved:
            self.ctx.save_definition(defn.with_disk_sources(moved))
        store = self.ctx.snapshot_store()
        tree = store.load()
        for name, snap in tree.snaps.items():
            renamed = snap
            for old, new in renames.items():
                renamed = _rename_snapshot(renamed, old, new, formats[new])
            if renamed is not snap:
                store.write(renamed, tree.current == name)


def _mark(store: meta.SnapshotStore, names: list[str]) -> None:
    tree = store.load()
    for name in names:
        snap = tree.get(name)
        disks = [replace(d, delete_in_progress=True) for d in snap.disks]
        store.write(replace(snap, disks=disks), tree.current == name)


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


async def _node_of(mon: qmp.Monitor, image: str) -> str:
    return (await _nodes_of(mon, image))[image]


async def _nodes_of(mon: qmp.Monitor, *images: str) -> dict[str, str]:
    """The format node QEMU opened each image as (named by qdriver or by QEMU)."""
    found: dict[str, str] = {}
    for node in await mon.execute("query-named-block-nodes", {"flat": True}):
        if node.get("file") in images and node.get("drv") != "file":
            found.setdefault(str(node["file"]), str(node["node-name"]))
    for image in images:
        if image not in found:
            raise OperationFailedError(f"QEMU has no block node for image '{image}'")
    return found


async def _held(mon: qmp.Monitor, node: str) -> set[str]:
    for n in await mon.execute("query-named-block-nodes", {"flat": True}):
        if n.get("node-name") == node:
            return {s.get("name") for s in n.get("image", {}).get("snapshots", ())}
    return set()


async def _wait_job(mon: qmp.Monitor, events: Any, job: str, meter: ProgressMeter) -> None:
    """Follow a commit job by its events: complete it at BLOCK_JOB_READY (an active
    commit: the pivot), end at BLOCK_JOB_COMPLETED (raising its error).
    ``query-jobs`` only when nothing happens for a while (progress, a lost job)."""
    deadline = time.monotonic() + COMMIT_TIMEOUT
    await _job_status(mon, job, meter)  # the first progress report (0 %)
    while time.monotonic() < deadline:
        ev: Any = None
        with anyio.move_on_after(0.25):
            while ev is None:
                got = await events.get()
                if qmp.data(got).get("device") == job:
                    ev = got
        if ev is None:
            if await _job_status(mon, job, meter) == "ready":
                await mon.execute("job-complete", {"id": job})
        elif ev["event"] == "BLOCK_JOB_READY":
            await mon.execute("job-complete", {"id": job})  # pivot to the merged image
        elif ev["event"] == "BLOCK_JOB_COMPLETED":
            if qmp.data(ev).get("error"):
                raise qmp.JobError(job, str(qmp.data(ev)["error"]))
            return
    raise OperationFailedError(f"block job '{job}' did not finish within {COMMIT_TIMEOUT:g} s")


async def _job_status(mon: qmp.Monitor, job: str, meter: ProgressMeter) -> str | None:
    """The job's status (reporting its progress); None once QEMU dismissed it (its
    BLOCK_JOB_COMPLETED event is already queued then)."""
    info = next((j for j in await mon.execute("query-jobs") if j.get("id") == job), None)
    if info is None:
        return None
    meter(int(info.get("current-progress", 0)), int(info.get("total-progress", 0)))
    return str(info["status"])


async def finish(ctx: OpContext, mon: qmp.Monitor | None) -> list[str]:
    """Finish the deletes a dead process left marked: plan again from the images
    as they are now and carry that out.  Returns the snapshots deleted."""
    names = marked(ctx.snapshot_tree())
    if not names:
        return []
    if mon is not None:
        await _settle_jobs(mon)
        await actions.run(actions.ActionEnv.fixed(ctx, mon), actions.follow_disks())
    execution = DeleteExecution(ctx, DeletePlan(names, False), mon)
    graph = await image_graph(ctx, ctx.snapshot_tree())
    if mon is None:
        await _repair_leaks(ctx, graph)
    await execution.adopt_finished_commits(graph)
    tree = ctx.snapshot_tree()  # the adoption may have renamed images in it
    execution.plan = plan_delete(tree, ctx.definition, mon is not None, names,
                                 await image_graph(ctx, tree))
    await execution.carry_out()
    return names


async def _repair_leaks(ctx: OpContext, graph: ImageGraph) -> None:
    """QEMU died while it wrote (a commit, the guest): free the clusters it left
    allocated and unreferenced in the chains it had open, before they are committed."""
    for disk in ctx.definition.disks:
        image = disk.source if not disk.readonly else None
        while image is not None:
            if graph.formats.get(image) == "qcow2" and os.path.exists(image):
                await qemuimg.repair_leaks(image)
            image = graph.backing.get(image)


async def _settle_jobs(mon: qmp.Monitor) -> None:
    """Let a commit the dead process started end (completing it when READY)."""
    with mon.listener("BLOCK_JOB_READY", "BLOCK_JOB_COMPLETED") as events:
        for job in await mon.execute("query-jobs"):
            if str(job.get("id", "")).startswith("qdriver-commit-"):
                await _wait_job(mon, events, job["id"], ProgressMeter("commit", None))


__all__ = ["DeleteExecution", "image_graph", "marked", "finish"]
