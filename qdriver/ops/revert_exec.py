"""Carry out a revert plan, with the domain lock held.

Reverting discards the current state by definition: a stopped QEMU and
images set back with ``qemu-img snapshot -a`` are not undone.  What is
undone if a later step fails is what would leave a lie behind: the
definition is put back and a QEMU started for the revert is stopped, so the
domain ends shut off with the definition it had, and the current snapshot
is left as it was.
"""
from __future__ import annotations

import time
from contextlib import AsyncExitStack
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Awaitable, Callable

from .. import domstate, process, qemuimg, qmp, runas
from .. import snapshot_tree as meta
from ..errors import OperationFailedError, SystemError_
from ..launch import start_qemu
from ..opcontext import OpContext
from ..statestore import fsync_dir
from ..xml.domain import disk_sources
from ..xml.snapshot import SnapshotDisk
from . import memfile
from .blocknodes import top_nodes
from .create_exec import JOB_TIMEOUT, hmp_word
from .delete_exec import image_graph
from .delete_plan import ImageGraph
from .progress import ProgressFn, ProgressMeter
from .revert_plan import RevertPlan, RevertStep
from . import actions
from .transaction import StepRunner, Transaction


class RevertExecution:
    """One revert in progress."""

    def __init__(self, ctx: OpContext, plan: RevertPlan, next_id: Callable[[], int],
                 progress: ProgressFn | None = None, mon: qmp.Monitor | None = None) -> None:
        self.ctx = ctx
        self.plan = plan
        self.next_id = next_id
        self.progress = progress
        self.txn = Transaction(actions.ActionEnv(ctx, self._current_monitor),
                               "snapshot-revert" if plan.name else "restore")
        self.sources = {d.target: d.source or "" for d in plan.definition.disks}
        """The snapshot-time images, by target."""
        self.definition = plan.definition
        """The definition the domain gets: the snapshot's, on the new overlays."""
        self.new_overlays: dict[str, str] = {}
        self.replaced: list[str] = []
        """Files of an earlier revert to this snapshot, no longer recorded after this one."""
        self.mon = mon
        """The monitor of the QEMU that runs now: the caller's, until a restart."""
        self.stack = AsyncExitStack()

    def preflight(self) -> None:
        """Refuse before the first change if an image the revert builds on is missing."""
        for target, image, _ in self.plan.overlays:
            if not Path(image).exists():
                raise SystemError_(f"Cannot access storage file '{image}' (disk {target} of "
                                   f"snapshot '{self.plan.name}'): No such file or directory")

    async def run(self) -> None:
        """Do every step; undo what would leave a lie and re-raise on failure."""
        self.preflight()
        async with self.stack:
            table = {step: partial(method, self) for step, method in STEPS.items()}
            await self.txn.attempt(partial(StepRunner(table, self.txn.op).run, self.plan.steps))
            if self.ctx.record is not None and self.mon is not None:
                await self.ctx.sync_run_state(self.mon)

    async def _current_monitor(self) -> qmp.Monitor | None:
        return await self.monitor() if self.ctx.record is not None else None

    async def monitor(self) -> qmp.Monitor:
        """The monitor of the QEMU that runs now (reopened after a restart)."""
        if self.mon is None:
            self.mon = await self.stack.enter_async_context(qmp.open_monitor(self.ctx.paths.qmp))
        return self.mon

    # -- steps -------------------------------------------------------------------------

    async def stop(self) -> None:
        if self.mon is not None:
            await qmp.close(self.mon)  # closing twice (its owner does too) is harmless
            self.mon = None
        await self.ctx.stop("from snapshot")

    async def qemu_img_apply(self) -> None:
        await self.mark_stale()
        for target in self.plan.internal_disks:
            await qemuimg.snapshot_apply(self.sources[target], self.plan.name)

    async def mark_stale(self) -> None:
        """Before an internal snapshot is applied to an image that others build on
        (a forced revert), say so in every snapshot whose disk state lies in or
        above that image: its images no longer hold it.  A delete of such a
        snapshot then only removes files, never merges them into live images."""
        changed = {self.sources[t] for t in self.plan.internal_disks if self.sources.get(t)}
        if not changed:
            return
        store = self.ctx.snapshot_store()
        tree = store.load()
        hit = stale_snapshots(tree, await image_graph(self.ctx, tree), changed, self.plan.name)
        why = (f"reverting to '{self.plan.name}' rewrote "
               f"{', '.join(sorted(changed))}, which its disk state builds on")
        for name in hit:
            store.write(replace(tree.snaps[name], stale=tree.snaps[name].stale or why),
                        tree.current == name, sync_dir=False)
        if hit:
            fsync_dir(store.dir)

    async def check_memory_file(self) -> None:
        memfile.check(self.plan.memory_file or "")

    async def create_overlays(self) -> None:
        stamp = int(time.time())
        for target, image, fmt in self.plan.overlays:
            path = _free_name(image, stamp)
            self.txn.on_undo(actions.remove_file(path, "revert overlay"))
            await qemuimg.create(path, "qcow2", backing=image, backing_fmt=fmt)
            runas.hand_over(self.ctx.policy.qemu_user, path)
            self.new_overlays[target] = path
        self.definition = self.definition.with_disk_sources(
            {t: (p, "qcow2") for t, p in self.new_overlays.items()})

    async def switch_definition(self) -> None:
        """The snapshot's definition becomes the domain's (QEMU is stopped: the
        persistent one, which the new QEMU then runs), as libvirt's revert does."""
        before = self.ctx.inactive if self.ctx.record is None else self.ctx.definition
        self.txn.on_undo(actions.write_definition(before))
        self.ctx.save_definition(self.definition)

    async def start_paused(self) -> None:
        self.txn.on_undo(actions.stop_qemu("destroyed", "the QEMU started for the revert"))
        self.mon = await start_qemu(self.ctx, self.next_id, paused=True, keep=self.stack)

    async def start_incoming(self) -> None:
        self.txn.on_undo(actions.stop_qemu("destroyed", "the QEMU started for the revert"))
        self.mon = await start_qemu(self.ctx, self.next_id, paused=True, incoming=True,
                                    keep=self.stack)

    async def load_memory_file(self) -> None:
        path = self.plan.memory_file or ""
        try:
            await memfile.load(await self.monitor(), path,
                               ProgressMeter("load", self.progress))
        except qmp.MonitorClosedError as e:
            raise OperationFailedError(
                f"QEMU exited while loading memory file '{path}': "
                f"{process.log_tail(self.ctx.paths.qemu_log, 2)}") from e

    async def record_revert_disks(self) -> None:
        """The snapshot now also names the new overlays (libvirt's ``<revertDisks>``)."""
        store = self.ctx.snapshot_store()
        tree = store.load()
        snap = tree.get(self.plan.name)
        self.replaced = [d.source for d in snap.revert_disks or () if d.source]
        disks = [SnapshotDisk(t, "external", "file", p, "qcow2")
                 for t, p in self.new_overlays.items()]
        touched = [snap.name or "", *([tree.current] if tree.current else [])]
        self.txn.on_undo(actions.restore_files(store.dir, touched, "the snapshot metadata"))
        store.write(replace(snap, revert_disks=disks), tree.current == snap.name)

    async def drop_discarded(self) -> None:
        """Remove the overlays of an earlier revert to this snapshot that nothing names
        any more: the state they held is what this revert discards."""
        named = _named_files(self.ctx.snapshot_store().load()) | {
            d.source for d in self.definition.disks if d.source}
        dropped = [p for p in self.replaced if p not in named]
        # the point of no return: the metadata no longer names these files
        self.txn.commit([*(actions.remove_file(p, "discarded overlay") for p in dropped),
                         *self._managed_save_removal()])
        for path in dropped:
            Path(path).unlink(missing_ok=True)

    def _managed_save_removal(self) -> list[actions.Action]:
        if RevertStep.REMOVE_MANAGED_SAVE not in self.plan.steps:
            return []
        return [actions.remove_file(str(self.ctx.paths.managed_save), "managed save")]

    def _restore_finish(self) -> list[actions.Action]:
        """What a restore does once past its point of no return."""
        resume = [actions.resume_guest()] if RevertStep.RESUME in self.plan.steps else []
        return [*self._managed_save_removal(), *resume]

    async def remove_managed_save(self) -> None:
        if not self.txn.committed:
            # the guest loaded from the managed save must never load twice
            self.txn.commit(self._restore_finish())
        self.ctx.paths.managed_save.unlink(missing_ok=True)

    async def pause(self) -> None:
        self.txn.on_undo(actions.resume_guest())
        await (await self.monitor()).execute("stop")

    async def snapshot_load(self) -> None:
        await self.mark_stale()
        mon = await self.monitor()
        nodes = await top_nodes(mon)
        devices = [nodes[t] for t in self.plan.internal_disks]
        vmstate = await self._vmstate_node(nodes)
        self.txn.on_undo(actions.wait_jobs())
        await qmp.run_job(mon, "snapshot-load", {
            "tag": self.plan.name, "vmstate": vmstate, "devices": devices},
            f"qdriver-load-{int(time.time())}", JOB_TIMEOUT,
            ProgressMeter("snapshot-load", self.progress))

    async def _vmstate_node(self, nodes: dict[str, str]) -> str:
        """The node whose image holds the snapshot's memory (as libvirt finds it)."""
        mon = await self.monitor()
        images = {n["node-name"]: n.get("image", {})
                  for n in await mon.execute("query-named-block-nodes", {"flat": True})}
        holders = [t for t in self.plan.internal_disks if any(
            s.get("name") == self.plan.name and int(s.get("vm-state-size", 0)) > 0
            for s in images.get(nodes[t], {}).get("snapshots", ()))]
        if len(holders) != 1:
            raise OperationFailedError(
                f"missing vmstate section when reverting active internal snapshot "
                f"'{self.plan.name}'" if not holders else
                f"two disks images contain vm state section for internal snapshot "
                f"'{self.plan.name}'")
        return nodes[holders[0]]

    async def hmp_loadvm(self) -> None:
        await self.mark_stale()
        out = await (await self.monitor()).hmp(f"loadvm {hmp_word(self.plan.name)}",
                                               JOB_TIMEOUT)
        if out.strip():  # HMP reports errors as text, not as a QMP error
            raise OperationFailedError(f"loadvm failed: {out.strip()}")

    async def resume(self) -> None:
        if self.plan.is_restore and not self.txn.committed:
            # a restored guest that ran has changed its disks: the save file no
            # longer matches them, so from here the restore only goes forward
            self.txn.commit(self._restore_finish())
        await domstate.ensure_running(await self.monitor())

    async def set_current(self) -> None:
        store = self.ctx.snapshot_store()
        tree = store.load()
        if tree.current != self.plan.name:
            meta.set_current(store, tree, self.plan.name)


def _free_name(image: str, stamp: int) -> str:
    """libvirt's revert overlay name, ``<image without suffix>.<epoch>``, made unique."""
    base = str(Path(image).with_suffix("")) + f".{stamp}"
    path, n = base, 0
    while Path(path).exists():
        n += 1
        path = f"{base}.{n}"
    return path


def stale_snapshots(tree: meta.SnapshotTree, graph: ImageGraph, changed: set[str],
                    reverted: str) -> list[str]:
    """The snapshots whose disk state an internal revert rewriting ``changed`` spoils:
    an external one whose frozen image is, or is backed by, a changed image; an
    internal one that lives in an image backed by one (its own image's internal
    snapshots are apart from the rewrite)."""
    hit: list[str] = []
    for name, snap in tree.snaps.items():
        if name == reverted or snap.domain is None:
            continue
        then = disk_sources(snap.domain)
        for d in snap.disks:
            image = then.get(d.name)
            if image is None or d.snapshot not in ("internal", "external"):
                continue
            chain = graph.chain(image)
            below = chain if d.snapshot == "external" else chain[1:]
            if changed.intersection(below):
                hit.append(name)
                break
    return hit


def _named_files(tree: meta.SnapshotTree) -> set[str]:
    """Every file some snapshot's metadata names (its disks, revert disks, domain)."""
    named: set[str] = set()
    for snap in tree.snaps.values():
        for d in [*snap.disks, *(snap.revert_disks or ())]:
            if d.source:
                named.add(d.source)
        if snap.domain is not None:
            named.update(disk_sources(snap.domain).values())
    return named


StepMethod = Callable[[RevertExecution], Awaitable[None]]
STEPS: dict[RevertStep, StepMethod] = {
    RevertStep.CHECK_MEMORY_FILE: RevertExecution.check_memory_file,
    RevertStep.CREATE_OVERLAYS: RevertExecution.create_overlays,
    RevertStep.START_INCOMING: RevertExecution.start_incoming,
    RevertStep.LOAD_MEMORY_FILE: RevertExecution.load_memory_file,
    RevertStep.RECORD_REVERT_DISKS: RevertExecution.record_revert_disks,
    RevertStep.DROP_DISCARDED: RevertExecution.drop_discarded,
    RevertStep.REMOVE_MANAGED_SAVE: RevertExecution.remove_managed_save,
    RevertStep.STOP: RevertExecution.stop,
    RevertStep.QEMU_IMG_APPLY: RevertExecution.qemu_img_apply,
    RevertStep.SWITCH_DEFINITION: RevertExecution.switch_definition,
    RevertStep.START_PAUSED: RevertExecution.start_paused,
    RevertStep.PAUSE: RevertExecution.pause,
    RevertStep.SNAPSHOT_LOAD: RevertExecution.snapshot_load,
    RevertStep.HMP_LOADVM: RevertExecution.hmp_loadvm,
    RevertStep.RESUME: RevertExecution.resume,
    RevertStep.SET_CURRENT: RevertExecution.set_current,
}

__all__ = ["RevertExecution", "STEPS"]
