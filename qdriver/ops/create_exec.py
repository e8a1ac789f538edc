"""Carry out a snapshot-creation plan on a domain, all or nothing.

Every `CreateStep` of a plan has a method here (`STEPS`).  Each side effect
records its undo in the shared `Transaction` first; if a later step fails,
the undos run newest first: created overlays and memory files are removed,
added block nodes deleted, internal snapshots dropped, the old definition
put back, and the guest resumed if we paused it.  Checks that need the
filesystem (files that must not, or must, exist) run in `preflight`, before
the first side effect.  The caller holds the domain lock and passes the
state it read under it (`OpContext`).
"""
from __future__ import annotations

import os
import time
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Any, Awaitable, Callable

import anyio

from .. import agent, qemuimg, qmp, runas
from ..blockdev.nodes import add_overlay, open_images, overlay_nodes, top_nodes
from ..caps.running import RunningCaps
from ..durable import copy_file
from ..errors import (
    ConfigUnsupportedError,
    OperationFailedError,
    OperationInvalidError,
    OperationUnsupportedError,
    SystemError_,
)
from ..events.kinds import EventType
from ..job import Job, JobView
from ..memory.template import move_ram
from ..paths import make_private_dir
from ..progress import CreateReport, ProgressFn, ProgressMeter, first_stop, guest_pause
from ..snapshots.store import storable
from ..testing import faults
from ..xml.domain import DomainDef
from ..xml.snapshot import SnapshotDef, SnapshotDisk
from . import actions
from .create_plan import CreateFlags, CreatePlan, CreateStep, DiskPlan, plan_snapshot
from .memsave import MemoryFile, check_not_owned, check_place, check_target, load_memory
from .shared import JOB_TIMEOUT, GroupSync, hmp_word
from .transaction import StepRunner, Transaction


async def plan(job: JobView, xml: str | bytes, flags: CreateFlags,
               group: bool = False) -> CreatePlan:
    """What creating this snapshot would do, from the job's state (and, while QEMU
    runs, what it says of itself); ``group``: as one of a group (`ops.group`)."""
    if job.record is None or flags.redefine:  # a redefinition asks QEMU nothing
        return plan_snapshot(job.definition, "shutoff", xml, flags, RunningCaps(),
                             group=group)
    await job.read_tree_and_connect()
    state, caps = await job.abilities(flags.live)
    return plan_snapshot(job.definition, state, xml, flags, caps, group=group)


async def create(job: Job, xml: str | bytes, flags: CreateFlags,
                 progress: ProgressFn | None = None) -> tuple[str, CreateReport | None]:
    """Take the snapshot ``xml`` describes; its name and what it cost the guest."""
    the_plan = await plan(job, xml, flags)
    execution = CreateExecution(job, the_plan, progress)
    await execution.run()
    job.emit(EventType.SNAPSHOT, "created", the_plan.name)
    return the_plan.name, execution.report


class CreateExecution:
    """One snapshot creation in progress."""

    op = "snapshot-create"
    halt_reason = "from snapshot"
    """What ``domstate --reason`` says after a HALT step."""

    def __init__(self, job: Job, plan: CreatePlan, progress: ProgressFn | None,
                 group: GroupSync | None = None) -> None:
        self.job = job
        self.group = group
        """A group snapshot's points to wait at (paused; taken), if one of a group."""
        self.plan = plan
        self.progress = progress
        self.mon: qmp.Monitor | None = None
        """The running QEMU's monitor (`run` opens it for an online snapshot)."""
        self.nodes: dict[str, str] = {}
        self.before = job.definition
        self.online = plan.state != "shutoff" and not plan.flags.redefine
        self.created = int(time.time())
        self.events: list[dict[str, Any]] = []
        self.report: CreateReport | None = None
        self.switched: set[str] = set()
        """Disks whose new overlay QEMU already writes to: never undone."""
        self.frozen = False
        self.resumed_at: float | None = None
        """When a clone took the guest over (its pause ends there, not at the end)."""
        self.txn = Transaction(job, self.op)
        self.memory = MemoryFile(self.txn, plan.memory_file or "",
                                 plan.definition.template_ram)
        """The memory file, kept open until the guest runs again, then completed."""
        self.overlay_undos: dict[str, list[actions.Action]] = {}
        """Per disk: the undos that stop applying once QEMU writes to its overlay."""

    @property
    def was_running(self) -> bool:
        """The memory file header's "was running": the state a restore goes back to."""
        return self.plan.resume or CreateStep.MIGRATE_LIVE in self.plan.steps

    # -- driver ------------------------------------------------------------------

    async def run(self) -> SnapshotDef:
        """Do every step; roll back and re-raise on the first failure."""
        self.preflight()
        started = time.monotonic()
        if not self.online:
            if not self.plan.flags.redefine:  # a redefinition takes nothing from an image
                await self._check_internal_names()
            await self.txn.attempt(self._steps)
        else:
            mon = self.mon = await self.job.monitor()
            try:
                with mon.listener("STOP", "RESUME") as listener:
                    await self.txn.attempt(self._online_steps)
                    self.events = [dict(e) for e in listener.clear()]
            finally:
                with anyio.CancelScope(shield=True):
                    await self.job.sync_run_state()
        mem = Path(self.plan.memory_file) if self.plan.memory_file else None
        self.report = CreateReport(time.monotonic() - started,
                                   guest_pause(self.events, self.resumed_at or time.time()),
                                   mem.stat().st_size if mem and mem.exists() else 0,
                                   self.memory.flush_seconds, first_stop(self.events))
        return self.record()

    async def _online_steps(self) -> None:
        self.nodes = await top_nodes(self.monitor)
        await self._check_internal_names()
        try:
            await self._steps()
            await self.memory.complete()  # with NO_METADATA no step did it
        finally:
            self.memory.close()

    async def _steps(self) -> None:
        await StepRunner({step: partial(method, self) for step, method in STEPS.items()},
                         self.txn.op).run(self.plan.steps)

    def preflight(self) -> None:
        """Refuse before any side effect if the name, the target files or the size of
        the metadata are wrong."""
        tree = self.job.tree
        if not self.plan.flags.redefine and self.plan.name in tree.snaps:
            raise OperationInvalidError(f"Snapshot '{self.plan.name}' already exists")
        if not self.plan.flags.no_metadata:
            record = self.record()
            storable(replace(record, parent=record.parent or tree.current, active=True))
        if self.plan.flags.redefine:
            return  # metadata only: its files may be elsewhere (moved between hosts)
        for d in self.external():
            check_not_owned(d.file or "", f"overlay of disk '{d.target}'",
                            self.job.paths.state_dir)
            _check_overlay_target(d, self.plan.flags.reuse_ext)
            self._check_qemu_user_reaches(d)
        if self.plan.memory_file:
            check_place(Path(self.plan.memory_file), self.job.paths.state_dir,
                        self.job.paths.managed_save)
        if self.plan.definition.template_ram:
            self._check_template_possible(self.plan.definition.template_ram)

    def _check_template_possible(self, ram: str) -> None:
        """A template needs the guest's RAM file (a clone has none) and a free name."""
        record = self.job.record
        if record is not None and record.ram_template:
            raise OperationUnsupportedError(
                f"domain '{self.job.name}' runs as a clone of template RAM file "
                f"'{record.ram_template}': its RAM is in no file of its own to "
                "make a template of (start it afresh, or take a plain memory snapshot)")
        check_target(Path(ram))

    def _check_qemu_user_reaches(self, d: DiskPlan) -> None:
        """QEMU opens a new overlay as its own user: that user must reach it."""
        user = self.job.policy.qemu_user
        if user is None or not self.online:
            return
        reuse = self.plan.flags.reuse_ext
        problem = runas.access_problem(user, d.file or "", write=True) if reuse else \
            runas.access_problem(user, str(Path(d.file or "").parent), write=False)
        if problem:
            raise SystemError_(f"QEMU runs as '{user.name}' and could not open the overlay "
                               f"of disk '{d.target}': {problem}")

    async def _check_internal_names(self) -> None:
        """Refuse a name an image already holds: the undo of taking the internal
        snapshot deletes it by name, and must never delete someone else's."""
        held = await (self._held_online() if self.online else self._held_offline())
        for d in self.internal():
            if self.plan.name in held.get(d.target, ()):
                raise OperationInvalidError(
                    f"internal snapshot '{self.plan.name}' already exists in image "
                    f"'{d.source}' (disk {d.target})")

    async def _held_offline(self) -> dict[str, set[str]]:
        return {d.target: {s.name for s in await qemuimg.snapshot_list(d.source or "")}
                for d in self.internal()}

    async def _held_online(self) -> dict[str, set[str]]:
        if not self.internal():
            return {}
        held = (await open_images(self.monitor)).held
        return {d.target: set(held.get(self.nodes.get(d.target, ""), ()))
                for d in self.internal()}

    # -- helpers -----------------------------------------------------------------

    def external(self) -> list[DiskPlan]:
        return [d for d in self.plan.disks if d.snapshot == "external"]

    def internal(self) -> list[DiskPlan]:
        return [d for d in self.plan.disks if d.snapshot == "internal"]

    @property
    def monitor(self) -> qmp.Monitor:
        assert self.mon is not None, "online step without a monitor"
        return self.mon

    # -- offline steps -------------------------------------------------------------

    async def qemu_img_snapshot(self) -> None:
        for d in self.internal():
            assert d.source is not None
            self.txn.on_undo(actions.qemu_img_snapshot_delete(d.source, self.plan.name))
            await qemuimg.snapshot_create(d.source, self.plan.name)

    async def qemu_img_create(self) -> None:
        for d in self.external():
            assert d.file is not None and d.source is not None
            undo = actions.remove_file(d.file, "overlay")
            self._overlay_undo(d, undo)
            try:
                await qemuimg.create_overlay(d.file, d.source, d.source_format)
            except FileExistsError:
                self.txn.discard(undo)  # made by someone else since the check: not ours
                raise OperationFailedError(f"external snapshot file for disk {d.target} "
                                           f"already exists: {d.file}") from None
            runas.hand_over(self.job.policy.qemu_user, d.file)

    def _overlay_undo(self, d: DiskPlan, action: actions.Action) -> None:
        self.overlay_undos.setdefault(d.target, []).append(self.txn.on_undo(action))

    async def check_reused_overlays(self) -> None:
        for d in self.external():
            info = await qemuimg.info(d.file or "")
            if info.format != "qcow2" or info.backing_filename != d.source:
                raise ConfigUnsupportedError(
                    f"reused overlay '{d.file}' for disk {d.target} must be a qcow2 image "
                    f"backed by '{d.source}' (it is {info.format}, backed by "
                    f"'{info.backing_filename}')")
        if self.online:
            await self._add_overlay_nodes()

    async def switch_definition(self) -> None:
        if not self.switched:  # once QEMU writes to the overlays they are the truth
            self.txn.on_undo(actions.write_definition(self.before))
        self.job.save_definition(self._on_overlays())

    def _on_overlays(self) -> DomainDef:
        return self.before.with_disk_sources(
            {d.target: (d.file or "", "qcow2") for d in self.external()})

    # -- online steps ----------------------------------------------------------------

    async def create_overlays(self) -> None:
        await self.qemu_img_create()
        await self._add_overlay_nodes()

    async def _add_overlay_nodes(self) -> None:
        for d in self.external():
            node = overlay_nodes(d.target, d.file or "")[0]  # its file node goes with it
            self._overlay_undo(d, actions.qmp_command(
                f"block node {node}", "blockdev-del", {"node-name": node}))
            io = next((x.io for x in self.before.disks if x.target == d.target), None)
            await add_overlay(self.monitor, d.target, d.file or "", io)

    async def leave_postmigrate(self) -> None:
        await self.job.leave_postmigrate()

    async def pause(self) -> None:
        self.txn.on_undo(actions.resume_guest())
        await self.job.vcpus(False)
        if self.group is not None:  # every guest of the group stops before any is saved
            await self.group.paused.arrive()

    async def resume(self) -> None:
        if self.group is not None:  # and none runs until all are saved
            await self.group.taken.arrive()
        await self.job.vcpus(True)

    async def snapshot_save(self) -> None:
        devices = [self.nodes[d.target] for d in self.internal()]
        self.txn.on_undo(actions.qmp_job(f"internal snapshot {self.plan.name}",
                                         "snapshot-delete",
                                         {"tag": self.plan.name, "devices": devices}))
        self.txn.on_undo(actions.wait_jobs())  # a dead process's save runs to its end first
        await qmp.run_job(self.monitor, "snapshot-save", {
            "tag": self.plan.name, "vmstate": devices[0], "devices": devices},
            f"qdriver-save-{self.created}", JOB_TIMEOUT,
            ProgressMeter("snapshot-save", self.progress))

    async def hmp_savevm(self) -> None:
        name = hmp_word(self.plan.name)
        self.txn.on_undo(actions.hmp(f"internal snapshot {self.plan.name}", f"delvm {name}"))
        out = await self.monitor.hmp(f"savevm {name}", JOB_TIMEOUT)
        if out.strip():  # HMP reports errors as text, not as a QMP error
            raise OperationFailedError(f"savevm failed: {out.strip()}")

    async def transaction_internal(self) -> None:
        """Internal disk snapshots only, taken before a migration inactivates the images."""
        await self._transaction(external=False, internal=True)

    async def transaction(self) -> None:
        internal_elsewhere = (CreateStep.SNAPSHOT_SAVE, CreateStep.HMP_SAVEVM,
                              CreateStep.TRANSACTION_INTERNAL)
        await self._transaction(external=True, internal=not any(
            s in self.plan.steps for s in internal_elsewhere))

    async def _transaction(self, external: bool, internal: bool) -> None:
        todo: list[dict[str, object]] = []
        for d in self.plan.disks:
            if d.snapshot == "internal" and internal:
                self.txn.on_undo(actions.qmp_command(
                    f"internal snapshot of {d.target}", "blockdev-snapshot-delete-internal-sync",
                    {"device": self.nodes[d.target], "name": self.plan.name}))
        for d in self.plan.disks:
            if d.snapshot == "external" and external:
                todo.append({"type": "blockdev-snapshot", "data": {
                    "node": self.nodes[d.target],
                    "overlay": overlay_nodes(d.target, d.file or "")[0]}})
            elif d.snapshot == "internal" and internal:
                todo.append({"type": "blockdev-snapshot-internal-sync", "data": {
                    "device": self.nodes[d.target], "name": self.plan.name}})
        switching = [d for d in self.external() if external]
        overlays = {d.target: d.file or "" for d in switching}
        if switching:
            # Once the overlays are the active layers the guest writes into them, so
            # the external part is never undone (that would need a block-commit):
            # whatever happens next, the definition must name them.
            follow = self.txn.on_undo(actions.follow_overlays(overlays))
        await self.monitor.execute("transaction", {"actions": todo})
        faults.point(f"{self.txn.op}:switched")  # QEMU writes the overlays; not recorded yet
        for d in switching:
            self.nodes[d.target] = overlay_nodes(d.target, d.file or "")[0]
            self.switched.add(d.target)
            self.txn.discard(*self.overlay_undos.pop(d.target, []))
        if switching:
            self.txn.discard(follow)
            self.txn.on_undo(actions.follow_overlays(overlays, switched=True))
            self._roll_forward_if_complete(overlays)

    def _roll_forward_if_complete(self, overlays: dict[str, str]) -> None:
        """The disks switched after the memory was saved: everything the snapshot
        needs exists, so from here a failure (or a dead process) finishes it."""
        steps = self.plan.steps
        if self.plan.flags.no_metadata or CreateStep.MIGRATE_TO_FILE not in steps or \
                steps.index(CreateStep.MIGRATE_TO_FILE) > steps.index(CreateStep.TRANSACTION):
            return
        follow = actions.follow_overlays(overlays, switched=True)
        if self.plan.definition.template_ram:
            self.txn.commit([follow, *self._template_finish()])
            return
        self.txn.commit([
            follow,
            actions.complete_memory_file(self.plan.memory_file or ""),
            actions.write_metadata_files(self.job.store.dir, self._metadata_files(),
                                         f"the metadata of {self.plan.name}"),
            *([actions.resume_guest()] if CreateStep.RESUME in steps else [])])

    def _metadata_files(self) -> dict[str, str]:
        """The metadata files the new snapshot writes (it, and the one current before)."""
        tree = self.job.tree
        new = replace(self.record(), parent=tree.current)
        files = {f"{self.plan.name}.xml": storable(replace(new, active=True))}
        if tree.current:
            files[f"{tree.current}.xml"] = storable(
                replace(tree.snaps[tree.current], active=False))
        return files

    async def migrate_to_file(self) -> None:
        await self._migrate(background=False)

    def _template_finish(self) -> list[actions.Action]:
        """What finishes a template snapshot past its point of no return, if this
        process dies: the RAM file moves to the template's, the paused QEMU (which
        must never run again on it) stops, the files are completed, the metadata
        written.  The guest then stays shut off; reverting to the snapshot resumes it."""
        ram = self.plan.definition.template_ram or ""
        return [actions.move_ram_file(self.job.paths.ram_file, ram),
                actions.stop_qemu(self.halt_reason, "the QEMU that saved the template"),
                actions.complete_memory_file(self.plan.memory_file or "", ram),
                actions.write_metadata_files(self.job.store.dir, self._metadata_files(),
                                             f"the metadata of {self.plan.name}")]

    async def switch_to_clone(self) -> None:
        """The guest goes on as a clone of its own template: its RAM file becomes the
        template's (QEMU is paused and never runs again), a new QEMU maps that file
        copy-on-write and loads the devices' state.  The point of no return."""
        ram = self.plan.definition.template_ram or ""
        if not self.txn.committed:
            self.txn.commit(self._template_finish())
        await self.memory.complete(template_ram=False)  # the clone loads it
        live, persistent = self.job.definition, self.job.inactive
        await anyio.to_thread.run_sync(move_ram, self.job.paths.ram_file, ram)
        await self.job.stop(self.halt_reason, grace=0.0)  # paused, its state saved
        self.job.persistent, self.job.definition = persistent, live
        await self.job.launch(paused=True, incoming=True, ram_template=ram)
        await load_memory(self.job, self.plan.memory_file or "", self.progress, ram)
        if self.plan.resume:
            await self.job.ensure_running()
            self.resumed_at = time.time()  # the old QEMU's STOP has no RESUME to end it

    async def migrate_live(self) -> None:
        # pre-copy ends with the guest paused
        self.txn.on_undo(actions.resume_guest())
        await self._migrate(background=False)

    async def migrate_background(self) -> None:
        await self._migrate(background=True)

    async def _migrate(self, background: bool) -> None:
        await self.memory.write(self.monitor, self.before, self.was_running, background,
                                self.plan.resume, self.progress)

    async def agent_freeze(self) -> None:
        undo = self.txn.on_undo(actions.thaw(self._agent_path()))
        try:
            await agent.fsfreeze(self._agent_path())
        except agent.AgentNotReachedError:
            self.txn.discard(undo)  # the freeze never reached the guest: nothing to thaw
            raise
        self.frozen = True

    async def agent_thaw(self) -> None:
        await self._thaw_if_frozen()

    async def _thaw_if_frozen(self) -> None:
        if self.frozen:
            await agent.fsthaw(self._agent_path())
            self.frozen = False

    def _agent_path(self) -> Path:
        path = agent.socket_path(self.job.definition, self.job.paths)
        if path is None:
            raise ConfigUnsupportedError("QEMU guest agent is not configured")
        return path

    async def halt(self) -> None:
        """Stop QEMU: the point of no return (the memory file is complete and
        the metadata written by now, see the plan's order)."""
        await self.memory.complete()
        self.txn.commit([actions.stop_qemu(self.halt_reason)])
        await self.job.stop(self.halt_reason)

    async def copy_nvram(self) -> None:
        """Keep the UEFI variable store as it is now, beside the snapshot's metadata
        (the store is a raw image: no internal snapshot, no overlay holds it)."""
        store = self.job.definition.nvram
        if not store or not os.path.exists(store):
            return  # never started: the template is what a revert would give
        copy = self.job.paths.nvram_copy(self.plan.name)
        self.txn.on_undo(actions.remove_file(str(copy), "the copy of the UEFI variable store"))
        make_private_dir(copy.parent)
        await anyio.to_thread.run_sync(copy_file, store, copy)

    async def write_metadata(self) -> None:
        await self.memory.complete()
        store, tree = self.job.store, self.job.tree
        touched = [self.plan.name, *([tree.current] if tree.current else [])]
        if not self.txn.committed:  # past the point of no return, failure finishes it
            self.txn.on_undo(actions.restore_files(store.dir, touched,
                                                   f"the metadata of {self.plan.name}"))
        store.add(tree, self.record())

    async def redefine_metadata(self) -> None:
        self.job.store.redefine(self.job.tree, self.plan.definition, self.job.uuid,
                                make_current=False)

    async def set_current(self) -> None:
        self.job.store.set_current(self.job.tree, self.plan.name)

    # -- the record ------------------------------------------------------------------

    def record(self) -> SnapshotDef:
        """The snapshot as it is stored: disks as taken, the domain as it was."""
        if self.plan.flags.redefine:
            return self.plan.definition
        disks = [SnapshotDisk(d.target, d.snapshot, "file" if d.file else None, d.file,
                              "qcow2" if d.file else None) for d in self.plan.disks]
        return replace(self.plan.definition, disks=disks, creation_time=self.created,
                       domain=self.before.root_copy(), parent=None, active=False)


def _check_overlay_target(d: DiskPlan, reuse: bool) -> None:
    path = Path(d.file or "")
    if reuse:
        if not path.is_file():
            raise OperationFailedError(f"missing existing file for disk {d.target}: {path}")
    elif path.exists():
        raise OperationFailedError(f"external snapshot file for disk {d.target} "
                                   f"already exists and is not a block device: {path}")
    if not path.parent.is_dir():
        raise OperationFailedError(f"directory '{path.parent}' for the overlay of disk "
                                   f"{d.target} does not exist")


StepMethod = Callable[[CreateExecution], Awaitable[None]]
STEPS: dict[CreateStep, StepMethod] = {
    CreateStep.COPY_NVRAM: CreateExecution.copy_nvram,
    CreateStep.QEMU_IMG_SNAPSHOT: CreateExecution.qemu_img_snapshot,
    CreateStep.QEMU_IMG_CREATE: CreateExecution.qemu_img_create,
    CreateStep.CHECK_REUSED_OVERLAYS: CreateExecution.check_reused_overlays,
    CreateStep.SWITCH_DEFINITION: CreateExecution.switch_definition,
    CreateStep.CREATE_OVERLAYS: CreateExecution.create_overlays,
    CreateStep.LEAVE_POSTMIGRATE: CreateExecution.leave_postmigrate,
    CreateStep.PAUSE: CreateExecution.pause,
    CreateStep.RESUME: CreateExecution.resume,
    CreateStep.SNAPSHOT_SAVE: CreateExecution.snapshot_save,
    CreateStep.HMP_SAVEVM: CreateExecution.hmp_savevm,
    CreateStep.TRANSACTION: CreateExecution.transaction,
    CreateStep.TRANSACTION_INTERNAL: CreateExecution.transaction_internal,
    CreateStep.MIGRATE_TO_FILE: CreateExecution.migrate_to_file,
    CreateStep.SWITCH_TO_CLONE: CreateExecution.switch_to_clone,
    CreateStep.MIGRATE_LIVE: CreateExecution.migrate_live,
    CreateStep.MIGRATE_BACKGROUND: CreateExecution.migrate_background,
    CreateStep.AGENT_FREEZE: CreateExecution.agent_freeze,
    CreateStep.AGENT_THAW: CreateExecution.agent_thaw,
    CreateStep.HALT: CreateExecution.halt,
    CreateStep.WRITE_METADATA: CreateExecution.write_metadata,
    CreateStep.REDEFINE_METADATA: CreateExecution.redefine_metadata,
    CreateStep.SET_CURRENT: CreateExecution.set_current,
}

__all__ = ["CreateExecution", "STEPS", "plan", "create"]
