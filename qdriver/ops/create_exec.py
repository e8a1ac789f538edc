"""Carry out a snapshot-creation plan on a domain, all or nothing.

Every `Step` of a plan has a method here (`STEPS`).  Each side effect
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

from .. import agent, faults, qemuimg, qmp, runas
from .. import snapshot_tree as meta
from ..errors import (ConfigUnsupportedError, InvalidArgError, OperationFailedError,
                      OperationInvalidError, SystemError_)
from ..opcontext import OpContext
from ..paths import owner_dir
from ..saveimage import mark_complete
from ..xml.domain import DomainDef
from ..xml.snapshot import SnapshotDef, SnapshotDisk
from . import memfile
from .blocknodes import add_overlay, open_images, overlay_nodes, top_nodes
from .create_plan import DiskPlan, Plan, Step
from .progress import CreateReport, ProgressFn, ProgressMeter, guest_pause
from . import actions
from .transaction import StepRunner, Transaction

JOB_TIMEOUT = 3600.0


class CreateExecution:
    """One snapshot creation in progress."""

    def __init__(self, ctx: OpContext, plan: Plan, progress: ProgressFn | None,
                 mon: qmp.Monitor | None = None, halt_reason: str = "from snapshot",
                 resume_on_restore: bool | None = None) -> None:
        self.ctx = ctx
        self.plan = plan
        self.progress = progress
        self.mon = mon
        """The open operations monitor of a running domain (the caller's)."""
        self.nodes: dict[str, str] = {}
        self.before = ctx.definition
        self.online = plan.state != "shutoff" and not plan.flags.redefine
        self.created = int(time.time())
        self.events: list[dict[str, Any]] = []
        self.memory_fd: int | None = None
        """The memory file, kept open until the guest runs again, then completed."""
        self.flush_seconds = 0.0
        self.report: CreateReport | None = None
        self.switched: set[str] = set()
        """Disks whose new overlay QEMU already writes to: never undone."""
        self.frozen = False
        self.halt_reason = halt_reason
        """What ``domstate --reason`` says after a HALT step (``saved`` for virsh save)."""
        self.resume_on_restore = resume_on_restore
        """The memory file header's "was running": the state a restore goes back to."""
        op = "save" if halt_reason == "saved" else "snapshot-create"
        self.txn = Transaction(actions.ActionEnv(ctx, self._current_monitor), op)
        self.overlay_undos: dict[str, list[actions.Action]] = {}
        """Per disk: the undos that stop applying once QEMU writes to its overlay."""

    async def _current_monitor(self) -> qmp.Monitor | None:
        return self.mon if self.online else None

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
            mon = self.monitor
            try:
                with mon.listener("STOP", "RESUME") as listener:
                    await self.txn.attempt(self._online_steps)
                    self.events = [dict(e) for e in listener.clear()]
            finally:
                with anyio.CancelScope(shield=True):
                    await self.ctx.sync_run_state(mon)
        mem = Path(self.plan.memory_file) if self.plan.memory_file else None
        self.report = CreateReport(time.monotonic() - started,
                                   guest_pause(self.events, time.time()),
                                   mem.stat().st_size if mem and mem.exists() else 0,
                                   self.flush_seconds)
        return self.record()

    async def _online_steps(self) -> None:
        self.nodes = await top_nodes(self.monitor)
        await self._check_internal_names()
        try:
            await self._steps()
            await self._complete_memory_file()  # with NO_METADATA no step did it
        finally:
            if self.memory_fd is not None:
                os.close(self.memory_fd)
                self.memory_fd = None

    async def _steps(self) -> None:
        await StepRunner({step: partial(method, self) for step, method in STEPS.items()},
                         self.txn.op).run(self.plan.steps)

    async def _complete_memory_file(self) -> None:
        """Flush the memory file and mark it complete.

        Flushing hundreds of MiB takes time, so this runs after the guest runs
        again, but before metadata names the file.
        """
        if self.memory_fd is not None:
            started = time.monotonic()
            await anyio.to_thread.run_sync(mark_complete, self.memory_fd)
            self.flush_seconds = time.monotonic() - started
            os.close(self.memory_fd)
            self.memory_fd = None

    def preflight(self) -> None:
        """Refuse before any side effect if the name, the target files or the size of
        the metadata are wrong."""
        tree = self.ctx.snapshot_tree()
        if not self.plan.flags.redefine and self.plan.name in tree.snaps:
            raise OperationInvalidError(f"Snapshot '{self.plan.name}' already exists")
        if not self.plan.flags.no_metadata:
            record = self.record()
            meta.storable(replace(record, parent=record.parent or tree.current, active=True))
        if self.plan.flags.redefine:
            return  # metadata only: its files may be elsewhere (moved between hosts)
        for d in self.external():
            self._check_not_owned(d.file or "", f"overlay of disk '{d.target}'")
            _check_overlay_target(d, self.plan.flags.reuse_ext)
            self._check_qemu_user_reaches(d)
        if self.plan.memory_file:
            mem = Path(self.plan.memory_file)
            if mem != self.ctx.paths.managed_save:
                self._check_not_owned(mem, "memory file")
            _check_memory_target(mem)
            if not mem.parent.is_dir():
                raise OperationFailedError(f"directory '{mem.parent}' for the memory "
                                           "snapshot does not exist")

    def _check_qemu_user_reaches(self, d: DiskPlan) -> None:
        """QEMU opens a new overlay as its own user: that user must reach it."""
        user = self.ctx.policy.qemu_user
        if user is None or not self.online:
            return
        reuse = self.plan.flags.reuse_ext
        problem = runas.access_problem(user, d.file or "", write=True) if reuse else \
            runas.access_problem(user, str(Path(d.file or "").parent), write=False)
        if problem:
            raise SystemError_(f"QEMU runs as '{user.name}' and could not open the overlay "
                               f"of disk '{d.target}': {problem}")

    def _check_not_owned(self, path: str | Path, what: str) -> None:
        """qdriver's own directories are no target: a file there could replace
        metadata, and ``destroy`` removes what it finds in the runtime dir."""
        owned = owner_dir(path, self.ctx.paths.state_dir)
        if owned is not None:
            raise InvalidArgError(f"{what} '{path}' is inside qdriver's own directory "
                                  f"'{owned}': choose a path outside it")

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
            if not self.plan.flags.reuse_ext:
                self._overlay_undo(d, actions.remove_file(d.file, "overlay"))
            await qemuimg.create(d.file, "qcow2", backing=d.source, backing_fmt=d.source_format)
            if not self.plan.flags.reuse_ext:
                runas.hand_over(self.ctx.policy.qemu_user, d.file)

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
        self.ctx.save_definition(self._on_overlays())

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
        """Bring a paused guest out of ``postmigrate``, where an earlier memory save
        left it: QEMU offers no way from there to plain ``paused`` except through
        running, so the vCPUs run for the two commands' round trip (well under a
        millisecond) and the images become active again."""
        await self.monitor.execute("cont")
        await self.monitor.execute("stop")

    async def pause(self) -> None:
        self.txn.on_undo(actions.resume_guest())
        await self.monitor.execute("stop")

    async def resume(self) -> None:
        await self.monitor.execute("cont")

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
        internal_elsewhere = (Step.SNAPSHOT_SAVE, Step.HMP_SAVEVM, Step.TRANSACTION_INTERNAL)
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
        if self.plan.flags.no_metadata or Step.MIGRATE_TO_FILE not in steps or \
                steps.index(Step.MIGRATE_TO_FILE) > steps.index(Step.TRANSACTION):
            return
        store = self.ctx.snapshot_store()
        tree = store.load()
        new = replace(self.record(), parent=tree.current)
        files = {f"{self.plan.name}.xml": meta.storable(replace(new, active=True))}
        if tree.current:
            files[f"{tree.current}.xml"] = meta.storable(
                replace(tree.snaps[tree.current], active=False))
        self.txn.commit([
            actions.follow_overlays(overlays, switched=True),
            actions.complete_memory_file(self.plan.memory_file or ""),
            actions.write_metadata_files(store.dir, files, f"the metadata of {self.plan.name}"),
            *([actions.resume_guest()] if Step.RESUME in steps else [])])

    async def migrate_to_file(self) -> None:
        await self._migrate(background=False)

    async def migrate_live(self) -> None:
        # pre-copy ends with the guest paused
        self.txn.on_undo(actions.resume_guest())
        await self._migrate(background=False)

    async def migrate_background(self) -> None:
        await self._migrate(background=True)

    async def _migrate(self, background: bool) -> None:
        path = self.plan.memory_file or ""
        was_running = self.resume_on_restore if self.resume_on_restore is not None else \
            self.plan.resume or Step.MIGRATE_LIVE in self.plan.steps
        # O_EXCL: never take over (and on undo remove) a file someone else made, nor
        # a symbolic link (even a dangling one); the undo is recorded first, so it
        # can name a file that never came to be
        _check_memory_target(Path(path))
        undo = self.txn.on_undo(actions.remove_file(path, "memory file"))
        try:
            self.memory_fd = memfile.create(path, self.before.to_xml(),
                                             self.before.save_cookie(), was_running)
        except FileExistsError:
            self.txn.discard(undo)  # made by someone else since the check: not ours to remove
            raise OperationFailedError(f"memory snapshot file '{path}' already exists") \
                from None
        self.txn.on_undo(actions.cancel_migration())
        await memfile.save(self.monitor, self.memory_fd, background,
                           ProgressMeter("memory", self.progress), resume=self.plan.resume)

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
        path = agent.socket_path(self.ctx.definition, self.ctx.paths)
        if path is None:
            raise ConfigUnsupportedError("QEMU guest agent is not configured")
        return path

    async def halt(self) -> None:
        """Stop QEMU: the point of no return (the memory file is complete and
        the metadata written by now, see the plan's order)."""
        await self._complete_memory_file()
        self.txn.commit([actions.stop_qemu(self.halt_reason)])
        await self.ctx.stop(self.halt_reason)

    async def write_metadata(self) -> None:
        await self._complete_memory_file()
        store = self.ctx.snapshot_store()
        tree = store.load()
        touched = [self.plan.name, *([tree.current] if tree.current else [])]
        if not self.txn.committed:  # past the point of no return, failure finishes it
            self.txn.on_undo(actions.restore_files(store.dir, touched,
                                                   f"the metadata of {self.plan.name}"))
        meta.add(store, tree, self.record())

    async def redefine_metadata(self) -> None:
        store = self.ctx.snapshot_store()
        meta.redefine(store, store.load(), self.plan.definition, self.ctx.definition.uuid,
                      make_current=False)

    async def set_current(self) -> None:
        store = self.ctx.snapshot_store()
        meta.set_current(store, store.load(), self.plan.name)

    # -- the record ------------------------------------------------------------------

    def record(self) -> SnapshotDef:
        """The snapshot as it is stored: disks as taken, the domain as it was."""
        if self.plan.flags.redefine:
            return self.plan.definition
        disks = [SnapshotDisk(d.target, d.snapshot, "file" if d.file else None, d.file,
                              "qcow2" if d.file else None) for d in self.plan.disks]
        return replace(self.plan.definition, disks=disks, creation_time=self.created,
                       domain=self.before.root_copy(), parent=None, active=False)


def hmp_word(name: str) -> str:
    """A snapshot name as one HMP argument: HMP splits on blanks and reads
    quotes and backslashes, so names with those cannot go through HMP."""
    if not name or any(c.isspace() or c in "\"'\\" for c in name):
        raise ConfigUnsupportedError(
            f"snapshot name '{name}' cannot be passed to this QEMU's savevm/loadvm "
            "(it lacks snapshot-save): use a name without blanks, quotes or backslashes")
    return name


def _check_memory_target(path: Path) -> None:
    """A memory file is made new: refuse a path where anything is, a symbolic link
    (even a dangling one) included, since an undo would then remove the user's."""
    if os.path.lexists(path):
        what = "a symbolic link" if path.is_symlink() else "a file"
        raise OperationFailedError(f"memory snapshot file '{path}' already exists ({what}): "
                                   "choose a path where nothing is")


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
STEPS: dict[Step, StepMethod] = {
    Step.QEMU_IMG_SNAPSHOT: CreateExecution.qemu_img_snapshot,
    Step.QEMU_IMG_CREATE: CreateExecution.qemu_img_create,
    Step.CHECK_REUSED_OVERLAYS: CreateExecution.check_reused_overlays,
    Step.SWITCH_DEFINITION: CreateExecution.switch_definition,
    Step.CREATE_OVERLAYS: CreateExecution.create_overlays,
    Step.LEAVE_POSTMIGRATE: CreateExecution.leave_postmigrate,
    Step.PAUSE: CreateExecution.pause,
    Step.RESUME: CreateExecution.resume,
    Step.SNAPSHOT_SAVE: CreateExecution.snapshot_save,
    Step.HMP_SAVEVM: CreateExecution.hmp_savevm,
    Step.TRANSACTION: CreateExecution.transaction,
    Step.TRANSACTION_INTERNAL: CreateExecution.transaction_internal,
    Step.MIGRATE_TO_FILE: CreateExecution.migrate_to_file,
    Step.MIGRATE_LIVE: CreateExecution.migrate_live,
    Step.MIGRATE_BACKGROUND: CreateExecution.migrate_background,
    Step.AGENT_FREEZE: CreateExecution.agent_freeze,
    Step.AGENT_THAW: CreateExecution.agent_thaw,
    Step.HALT: CreateExecution.halt,
    Step.WRITE_METADATA: CreateExecution.write_metadata,
    Step.REDEFINE_METADATA: CreateExecution.redefine_metadata,
    Step.SET_CURRENT: CreateExecution.set_current,
}

__all__ = ["CreateExecution", "STEPS", "JOB_TIMEOUT"]
