"""Carry out a revert plan, with the domain lock held.

Reverting discards the current state by definition: a stopped QEMU and
images set back with ``qemu-img snapshot -a`` are not undone.  What is
undone if a later step fails is what would leave a lie behind: the
definition is put back and a QEMU started for the revert is stopped, so the
domain ends shut off with the definition it had, and the current snapshot
is left as it was.
"""
from __future__ import annotations

import logging
import os
import time
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Awaitable, Callable

import anyio

from .. import qemuimg, qmp, runas
from ..blockdev.nodes import open_images, top_nodes
from ..durable import copy_file, overwrite_file
from ..errors import OperationFailedError, OperationInvalidError, SystemError_
from ..events.kinds import EventType
from ..job import Job, JobView
from ..launch.standby import StandbyRecord
from ..memory import memfile
from ..parallel import side_by_side
from ..progress import ProgressFn, ProgressMeter
from ..qemuimg.graph import ImageGraph
from ..snapshots.tree import SnapshotTree
from ..xml.domain import DomainDef, disk_sources
from ..xml.snapshot import SnapshotDisk
from . import actions, standby
from .memsave import load_memory
from .revert_plan import RevertFlags, RevertPlan, RevertStep, plan_restore, plan_revert
from .shared import JOB_TIMEOUT, free_overlay_name, hmp_word
from .transaction import StepRunner, Transaction

log = logging.getLogger("qdriver")


async def plan(job: JobView, name: str, flags: RevertFlags) -> RevertPlan:
    """What reverting to ``name`` would do, from the job's state (and, while QEMU
    runs, what it says of itself: not for a snapshot with external memory, whose
    revert replaces the QEMU whatever its state, so that the QEMU going away is
    never even connected to)."""
    snap = job.tree.get(name)
    managed = job.paths.managed_save.exists()
    if job.record is None:
        return plan_revert(job.definition, "shutoff", snap, flags, managed_save=managed)
    if snap.memory == "external":
        state = "paused" if job.record.paused else "running"
        return plan_revert(job.definition, state, snap, flags, managed_save=managed)
    state, caps = await job.abilities()
    return plan_revert(job.definition, state, snap, flags, caps, managed)


async def revert(job: Job, name: str, flags: RevertFlags,
                 progress: ProgressFn | None = None) -> None:
    """Go back to snapshot ``name``, which becomes current; a template revert leaves
    the next one's QEMU started ahead (`ops.standby`)."""
    the_plan = await plan(job, name, flags)
    await RevertExecution(job, the_plan, progress).run()
    job.emit(EventType.DEFINED, "from_snapshot")  # as libvirt: the snapshot's definition
    job.emit(EventType.SNAPSHOT, "reverted", name)
    if job.record is not None and job.policy.standby and standby.usable(the_plan):
        await standby.prepare(job, the_plan)


async def prepare_standby(job: Job, name: str) -> bool:
    """Have the QEMU the next revert to ``name`` needs started and loaded ahead (what
    a template revert begins when the driver's ``standby`` is on); False if a
    revert to ``name`` cannot use one now."""
    the_plan = await plan(job, name, RevertFlags())
    if job.record is None or not standby.usable(the_plan):
        return False
    await standby.ensure(job, the_plan)
    return True


async def restore(job: Job, path: str, xml: str, was_running: bool, flags: RevertFlags,
                  progress: ProgressFn | None = None, managed: bool = False,
                  template_ram: str | None = None) -> None:
    """Start the shut-off domain from save file ``path``, whose definition is ``xml``
    (``template_ram``: a template snapshot's memory file, its RAM in that file)."""
    if job.record is not None:
        raise OperationInvalidError(f"domain '{job.name}' is already active")
    saved = DomainDef.parse(xml)
    if saved.uuid != job.definition.uuid:
        raise OperationInvalidError(f"save file '{path}' holds domain '{saved.name}' with "
                                    f"uuid {saved.uuid}, not '{job.name}'")
    if saved.emulator != job.inactive.emulator:  # a file must not choose what runs
        raise OperationInvalidError(
            f"save file '{path}' names emulator '{saved.emulator or 'the default'}', but "
            f"domain '{job.name}' uses '{job.inactive.emulator or 'the default'}'")
    the_plan = plan_restore(saved, path, was_running, flags, managed, template_ram)
    # QEMU runs what was saved; the persistent definition stays
    job.persistent, job.definition = job.inactive, saved
    await RevertExecution(job, the_plan, progress).run()


class RevertExecution:
    """One revert in progress."""

    def __init__(self, job: Job, plan: RevertPlan, progress: ProgressFn | None = None) -> None:
        self.job = job
        self.plan = plan
        self.progress = progress
        self.txn = Transaction(job, "snapshot-revert" if plan.name else "restore")
        self.sources = {d.target: d.source or "" for d in plan.definition.disks}
        """The snapshot-time images, by target."""
        self.definition = plan.definition
        """The definition the domain gets: the snapshot's, on the new overlays."""
        self.new_overlays: dict[str, str] = {}
        self.replaced: list[str] = []
        """Files of an earlier revert to this snapshot, no longer recorded after this one."""
        self.standby: StandbyRecord | None = None
        """The QEMU started ahead for this revert, claimed from the domain."""
        self.nvram_undo: actions.Action | None = None
        """Puts back the variable store the revert replaced, until the disks are reverted."""
        self.loaded_ahead: qmp.Monitor | None = None
        """The standby's monitor, once it loaded the memory file while the old QEMU stopped."""

    def preflight(self) -> None:
        """Refuse before the first change if an image the revert builds on is missing."""
        for target, image, _ in self.plan.overlays:
            if not Path(image).exists():
                raise SystemError_(f"Cannot access storage file '{image}' (disk {target} of "
                                   f"snapshot '{self.plan.name}'): No such file or directory")

    async def run(self) -> None:
        """Do every step; undo what would leave a lie and re-raise on failure."""
        self.preflight()
        table = {step: partial(method, self) for step, method in STEPS.items()}
        runner = StepRunner(table, self.txn.op)

        async def body() -> None:
            if RevertStep.START_INCOMING in self.plan.steps and self.plan.name:
                self.standby = await standby.claim(self.job, self.plan, self.txn)
            if self.standby is not None:  # it runs its own definition, on its overlays
                self.new_overlays = dict(self.standby.overlays)
                self.definition = DomainDef.parse(self.standby.definition)
            await runner.run(self.plan.steps)
        try:
            await self.txn.attempt(body)
        finally:  # through, or taken back: the store it replaced is not needed any more
            if self.definition.nvram:
                Path(f"{self.definition.nvram}.before-revert").unlink(missing_ok=True)
        if self.job.record is not None:
            await self.job.sync_run_state()

    # -- steps -------------------------------------------------------------------------

    async def stop(self) -> None:
        stop = partial(self.job.stop, "from snapshot", 0.0 if self._writes_discarded() else 3.0)
        if self.standby is None or RevertStep.LOAD_MEMORY_FILE not in self.plan.steps:
            await stop()
            return
        await side_by_side(stop, self._load_ahead)

    def _writes_discarded(self) -> bool:
        """Whether no image the running QEMU writes outlives the revert in anything's
        name (no snapshot but this one's replaced revert disks names it): then QEMU
        may be killed at once, its writes not flushed."""
        named = self.job.tree.files(but_revert_disks_of=self.plan.name)
        return all(d.readonly or not d.source or d.source not in named
                   for d in self.job.definition.disks)

    async def _load_ahead(self) -> None:
        """The standby loads the devices' state (unless it has) while the old QEMU
        goes: the two share nothing (the standby's disks are overlays of its own;
        both map the template's RAM privately)."""
        assert self.standby is not None
        self.loaded_ahead = await standby.load_ahead(self.job, self.standby,
                                                     self.plan.memory_file or "", self.progress)

    async def qemu_img_apply(self) -> None:
        await self.mark_stale()
        for target in self.plan.internal_disks:
            await qemuimg.snapshot_apply(self.sources[target], self.plan.name)
        self._disks_reverted()

    async def mark_stale(self) -> None:
        """Before an internal snapshot is applied to an image that others build on
        (a forced revert), say so in every snapshot whose disk state lies in or
        above that image: its images no longer hold it.  A delete of such a
        snapshot then only removes files, never merges them into live images."""
        changed = {self.sources[t] for t in self.plan.internal_disks if self.sources.get(t)}
        if not changed:
            return
        tree = self.job.tree
        hit = stale_snapshots(tree, self.job.image_graph(), changed, self.plan.name)
        why = (f"reverting to '{self.plan.name}' rewrote "
               f"{', '.join(sorted(changed))}, which its disk state builds on")
        for name in hit:
            tree.snaps[name] = replace(tree.snaps[name], stale=tree.snaps[name].stale or why)
        self.job.store.save(tree, hit)

    async def check_memory_file(self) -> None:
        memfile.check(self.plan.memory_file or "")

    async def create_overlays(self) -> None:
        if self.standby is not None:  # made with it; its journal entry removes them
            return
        stamp = int(time.time())
        for target, image, fmt in self.plan.overlays:
            path = free_overlay_name(image, stamp)
            undo = self.txn.on_undo(actions.remove_file(path, "revert overlay"))
            try:
                await qemuimg.create_overlay(path, image, fmt)
            except FileExistsError:
                self.txn.discard(undo)  # made by someone else since the name was free
                raise OperationFailedError(f"revert overlay '{path}' appeared meanwhile: "
                                           "try again") from None
            runas.hand_over(self.job.policy.qemu_user, path)
            self.new_overlays[target] = path
        self.definition = self.definition.with_disk_sources(
            {t: (p, "qcow2") for t, p in self.new_overlays.items()})

    async def switch_definition(self) -> None:
        """The snapshot's definition becomes the domain's (QEMU is stopped: the
        persistent one, which the new QEMU then runs), as libvirt's revert does."""
        before = self.job.inactive if self.job.record is None else self.job.definition
        self.txn.on_undo(actions.write_definition(before))
        self.job.save_definition(self.definition)

    async def start_paused(self) -> None:
        self.txn.on_undo(actions.stop_qemu("destroyed", "the QEMU started for the revert"))
        await self.job.launch(paused=True)
        self._started()

    def _started(self) -> None:
        self.job.emit(EventType.STARTED, "restored" if self.plan.is_restore else "from_snapshot")

    async def start_incoming(self) -> None:
        self.txn.on_undo(actions.stop_qemu("destroyed", "the QEMU started for the revert"))
        if self.standby is not None:
            await self.job.take_over(self.standby, self.loaded_ahead)
        else:
            await self.job.launch(paused=True, incoming=True,
                                  ram_template=self.plan.template_ram)
        self._started()

    async def load_memory_file(self) -> None:
        if self.loaded_ahead is not None:
            return
        await load_memory(self.job, self.plan.memory_file or "", self.progress,
                          self.plan.template_ram)

    async def record_revert_disks(self) -> None:
        """The snapshot now also names the new overlays (libvirt's ``<revertDisks>``)."""
        store, tree = self.job.store, self.job.tree
        snap = tree.get(self.plan.name)
        self.replaced = [d.source for d in snap.revert_disks or () if d.source]
        disks = [SnapshotDisk(t, "external", "file", p, "qcow2")
                 for t, p in self.new_overlays.items()]
        touched = [snap.name or "", *([tree.current] if tree.current else [])]
        self.txn.on_undo(actions.restore_files(store.dir, touched, "the snapshot metadata"))
        tree.snaps[self.plan.name] = replace(snap, revert_disks=disks)
        store.save(tree, [self.plan.name])

    async def drop_discarded(self) -> None:
        """Remove the overlays of an earlier revert to this snapshot that nothing names
        any more: the state they held is what this revert discards."""
        named = self.job.tree.files() | {d.source for d in self.definition.disks if d.source}
        dropped = [p for p in self.replaced if p not in named]
        # the point of no return: the metadata no longer names these files
        self.txn.commit([*(actions.remove_file(p, "discarded overlay") for p in dropped),
                         *self._managed_save_removal()])
        for path in dropped:
            Path(path).unlink(missing_ok=True)

    def _managed_save_removal(self) -> list[actions.Action]:
        if RevertStep.REMOVE_MANAGED_SAVE not in self.plan.steps:
            return []
        return [actions.remove_file(str(self.job.paths.managed_save), "managed save")]

    def _restore_finish(self) -> list[actions.Action]:
        """What a restore does once past its point of no return."""
        resume = [actions.resume_guest()] if RevertStep.RESUME in self.plan.steps else []
        return [*self._managed_save_removal(), *resume]

    async def remove_managed_save(self) -> None:
        if not self.txn.committed:
            # the guest loaded from the managed save must never load twice
            self.txn.commit(self._restore_finish())
        self.job.paths.managed_save.unlink(missing_ok=True)

    async def pause(self) -> None:
        self.txn.on_undo(actions.resume_guest())
        await self.job.vcpus(False, "from_snapshot")

    async def snapshot_load(self) -> None:
        await self.mark_stale()
        mon = await self.job.monitor()
        nodes = await top_nodes(mon)
        devices = [nodes[t] for t in self.plan.internal_disks]
        vmstate = await self._vmstate_node(mon, nodes)
        self.txn.on_undo(actions.wait_jobs())
        await qmp.run_job(mon, "snapshot-load", {
            "tag": self.plan.name, "vmstate": vmstate, "devices": devices},
            f"qdriver-load-{int(time.time())}", JOB_TIMEOUT,
            ProgressMeter("snapshot-load", self.progress))
        self._disks_reverted()

    async def _vmstate_node(self, mon: qmp.Monitor, nodes: dict[str, str]) -> str:
        """The node whose image holds the snapshot's memory (as libvirt finds it)."""
        with_vmstate = (await open_images(mon)).with_vmstate
        holders = [t for t in self.plan.internal_disks
                   if self.plan.name in with_vmstate.get(nodes[t], ())]
        if len(holders) != 1:
            raise OperationFailedError(
                f"missing vmstate section when reverting active internal snapshot "
                f"'{self.plan.name}'" if not holders else
                f"two disks images contain vm state section for internal snapshot "
                f"'{self.plan.name}'")
        return nodes[holders[0]]

    async def hmp_loadvm(self) -> None:
        await self.mark_stale()
        out = await (await self.job.monitor()).hmp(f"loadvm {hmp_word(self.plan.name)}",
                                                   JOB_TIMEOUT)
        if out.strip():  # HMP reports errors as text, not as a QMP error
            raise OperationFailedError(f"loadvm failed: {out.strip()}")
        self._disks_reverted()

    async def resume(self) -> None:
        if self.plan.is_restore and not self.txn.committed:
            # a restored guest that ran has changed its disks: the save file no
            # longer matches them, so from here the restore only goes forward
            self.txn.commit(self._restore_finish())
        # the event says "from snapshot" for a restore too, as libvirt's does
        await self.job.ensure_running(
            "from_snapshot", "restored" if self.plan.is_restore else "from snapshot")

    async def restore_nvram(self) -> None:
        """The UEFI variable store as the snapshot kept it; the one it replaces is
        kept aside until the revert is through (a rollback puts it back)."""
        copy = self.job.paths.nvram_copy(self.plan.name)
        store = self.definition.nvram
        if not store or not copy.exists():
            log.warning("snapshot '%s' of domain '%s' kept no UEFI variable store: the "
                        "current one stays", self.plan.name, self.job.name)
            return
        aside = f"{store}.before-revert"
        if not os.path.exists(store):  # never started: the copy becomes the store
            user = self.job.policy.qemu_user
            await anyio.to_thread.run_sync(copy_file, copy, store,
                                           (user.uid, user.gid) if user else None)
            return
        await anyio.to_thread.run_sync(copy_file, store, aside)
        self.nvram_undo = self.txn.on_undo(actions.restore_file(
            aside, store, "the UEFI variable store"))
        # in place: a QEMU that runs the guest (a load in place) holds the file open
        await anyio.to_thread.run_sync(overwrite_file, copy, store)

    def _disks_reverted(self) -> None:
        """The disks are the snapshot's for good (a load or ``qemu-img snapshot -a``
        has no undo): the variable store stays the snapshot's with them."""
        if self.nvram_undo is not None:
            self.txn.discard(self.nvram_undo)
            self.nvram_undo = None

    async def set_current(self) -> None:
        if self.job.tree.current != self.plan.name:
            self.job.store.set_current(self.job.tree, self.plan.name)


def stale_snapshots(tree: SnapshotTree, graph: ImageGraph, changed: set[str],
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


StepMethod = Callable[[RevertExecution], Awaitable[None]]
STEPS: dict[RevertStep, StepMethod] = {
    RevertStep.RESTORE_NVRAM: RevertExecution.restore_nvram,
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

__all__ = ["RevertExecution", "STEPS", "plan", "revert", "restore", "prepare_standby",
           "stale_snapshots"]
