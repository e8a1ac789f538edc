"""Domains: define, start, pause, stop and snapshot, like libvirt's virDomain.

A `Domain` is a handle by name and uuid; it caches nothing.  Every operation
that changes the domain takes its lock, reads the definition, run record and
snapshot tree under it (`operation` yields them as an `OpContext`), acts on
that and writes back before releasing the lock, so a handle held for hours
stays correct while other processes change the same domain.  State queries
read the files without the lock and never clean up: a QEMU that died is
reported as shut off and reaped by the next locked operation.
"""
from __future__ import annotations

import logging
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path
from typing import AsyncIterator, Callable, Protocol, TypeVar

from . import domstate, faults, process, qmp, recovery
from . import snapshot_tree as meta
from .domstate import DomainState
from .errors import (DomainBusyError, InvalidArgError, NoDomainError, NoSnapshotError,
                     OperationInvalidError, ShutdownTimeoutError)
from .launch import start_qemu
from .opcontext import OpContext, read_definition
from .ops import memfile
from .ops.create_exec import CreateExecution
from .ops.create_plan import CreateFlags, HostCaps, Plan, plan_snapshot
from .ops.delete_exec import DeleteExecution, image_graph
from .ops.delete_plan import DeleteFlags, DeletePlan, ImageGraph, plan_delete, victims
from .ops.hostprobe import probe, qemu_caps
from .ops.progress import ProgressFn
from .ops.revert_exec import RevertExecution
from .ops import actions
from .ops.revert_plan import RevertFlags, RevertPlan, plan_restore, plan_revert
from .ops.transaction import Transaction
from .paths import DomainPaths
from .runas import LaunchPolicy
from .runtime import Runtime, RunRecord
from .snapshot_handle import Snapshot
from .snapshot_tree import ListFilter, SnapshotStore, SnapshotTree
from .statestore import locked
from .xml.domain import DomainDef
from .xml.snapshot import SnapshotDef, SnapshotDisk, validate_schema


T = TypeVar("T")
DESTROY_LOCK_WAIT = 10.0
"""How long ``destroy`` waits, after the kill, for the operation in progress to end."""

log = logging.getLogger("qdriver")


class Host(Protocol):
    """What a domain needs from its driver (a `Driver` is one)."""

    state_dir: Path
    lock_timeout: float
    policy: LaunchPolicy

    def next_id(self) -> int: ...

    async def same_hardware(self, saved: DomainDef, xml: str | bytes) -> DomainDef:
        """``xml`` as stored, if it gives the guest saved from ``saved`` the same
        hardware; else `ConfigUnsupportedError`."""
        ...


class Domain:
    """One defined domain (``virDomain``)."""

    def __init__(self, driver: Host, name: str, uuid: str) -> None:
        self.driver = driver
        self.name = name
        self.uuid = uuid
        self.paths = DomainPaths.of(driver.state_dir, name)
        self.runtime = Runtime(self.paths)
        self.last_recovery: recovery.RecoveryReport | None = None
        """What the last recovery of a dead process's operation found and did."""

    def __repr__(self) -> str:
        return f"<Domain {self.name!r} {self.state.label}>"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Domain) and (other.paths, other.uuid) == (self.paths, self.uuid)

    def __hash__(self) -> int:
        return hash((self.paths, self.uuid))

    @property
    def definition(self) -> DomainDef:
        """The definition as stored now: the live one while QEMU runs (what
        ``virsh dumpxml`` shows), else the persistent one."""
        return read_definition(self.paths, self.name, self.uuid,
                               live=self.runtime.peek() is not None)

    @property
    def inactive_definition(self) -> DomainDef:
        """The persistent definition, which ``define`` changes and the next start uses
        (``dumpxml --inactive``)."""
        return read_definition(self.paths, self.name, self.uuid)

    @asynccontextmanager
    async def operation(self, lock_timeout: float | None = None) -> AsyncIterator[OpContext]:
        """Hold the domain lock and the state read under it, for one change."""
        try:
            wait = self.driver.lock_timeout if lock_timeout is None else lock_timeout
            lock = locked(self.paths.lock, wait, f"domain '{self.name}'", create_dir=False)
            async with lock:
                self.last_recovery = await recovery.recover(self.paths, self.runtime,
                                                            self.name, self.uuid) \
                    or self.last_recovery
                record = await self.runtime.reconcile()
                persistent = read_definition(self.paths, self.name, self.uuid)
                live = read_definition(self.paths, self.name, self.uuid, live=True) \
                    if record is not None else persistent
                yield OpContext(self.paths, live, self.runtime, record, self.driver.policy,
                                persistent if live is not persistent else None)
        except (FileNotFoundError, NotADirectoryError) as e:
            if self.paths.definition.exists():
                raise
            raise NoDomainError(f"no domain with matching name '{self.name}'") from e

    # -- state (read-only, no lock) ------------------------------------------------

    @property
    def state(self) -> DomainState:
        """The last known state; a QEMU that died shows as shut off."""
        return self.state_reason()[0]

    def state_reason(self) -> tuple[DomainState, str]:
        """The state and libvirt's reason word (``shut off (crashed)``)."""
        rec = self.runtime.peek()
        if rec is None:
            return DomainState.SHUTOFF, self.runtime.ended_reason()
        return rec.state

    @property
    def is_active(self) -> bool:
        return self.runtime.peek() is not None

    @property
    def id(self) -> int | None:
        """libvirt's domain id while running, else None."""
        rec = self.runtime.peek()
        return rec.id if rec else None

    def interrupted_operation(self) -> str | None:
        """An operation whose process died mid-way, until the next change recovers it."""
        return recovery.interrupted(self.paths, self.name)

    async def recover(self) -> recovery.RecoveryReport | None:
        """Recover an interrupted operation now (any locked operation does it too)."""
        async with self.operation():
            return self.last_recovery

    async def get_state(self) -> tuple[DomainState, str]:
        """The state asked from QEMU itself (sees guest-initiated pauses).

        A QEMU found dead is reaped here if the domain lock is free at once;
        if another operation holds it, that operation will.
        """
        if self.runtime.peek() is None:
            return await self._shut_off_state()
        try:
            async with qmp.open_monitor(self.paths.qmp_query) as mon:
                status = await domstate.query(mon)
        except (qmp.MonitorConnectError, qmp.MonitorClosedError):
            if self.runtime.peek() is None:
                return await self._shut_off_state()
            raise
        return status.state, status.reason

    async def _shut_off_state(self) -> tuple[DomainState, str]:
        reason = await self.runtime.settled_reason()
        if self.paths.runtime.exists():
            try:
                async with locked(self.paths.lock, 0, f"domain '{self.name}'",
                                  create_dir=False):
                    await self.runtime.reconcile()
            except (DomainBusyError, FileNotFoundError):
                pass  # the operation holding the lock reaps it
        return DomainState.SHUTOFF, reason

    @asynccontextmanager
    async def _live_monitor(self, ctx: OpContext,
                            wanted: bool = True) -> AsyncIterator[qmp.Monitor | None]:
        """The operations monitor while QEMU runs; None while the domain is shut off
        (or when the operation does not talk to QEMU)."""
        if ctx.record is None or not wanted:
            yield None
            return
        async with qmp.open_monitor(self.paths.qmp) as mon:
            yield mon

    @asynccontextmanager
    async def monitor(self) -> AsyncIterator[qmp.Monitor]:
        """The domain's QMP monitor, under the domain lock, for raw commands."""
        async with self.operation() as ctx:
            ctx.require_active()
            async with qmp.open_monitor(self.paths.qmp) as mon:
                yield mon

    # -- lifecycle ----------------------------------------------------------

    async def start(self, paused: bool = False, force_boot: bool = False,
                    progress: ProgressFn | None = None) -> None:
        """Launch QEMU; return once QMP is ready (and the guest runs unless paused).

        A managed save image is restored instead of booting, and removed once the
        guest runs from it, as libvirt does; ``force_boot`` discards it and boots.
        """
        async with self.operation() as ctx:
            if ctx.record is not None:
                raise OperationInvalidError("domain is already running")
            managed = self.paths.managed_save
            if managed.exists() and not force_boot:
                header = memfile.check(str(managed))
                await self._restore(ctx, str(managed), header.domain_xml, header.was_running,
                                    RevertFlags(paused=paused), progress, managed=True)
                return
            managed.unlink(missing_ok=True)
            txn = self._transaction(ctx, "start")
            await txn.attempt(partial(self._launch, ctx, txn, paused))

    async def _launch(self, ctx: OpContext, txn: Transaction, paused: bool) -> None:
        txn.on_undo(actions.stop_qemu("failed", "the QEMU being started"))
        await start_qemu(ctx, self.driver.next_id, paused)

    @staticmethod
    def _transaction(ctx: OpContext, op: str) -> Transaction:
        """A journaled transaction for an operation without a plan of its own."""
        return Transaction(actions.ActionEnv.fixed(ctx, None), op)

    async def suspend(self) -> None:
        """Pause the guest's vCPUs (``virsh suspend``)."""
        async with self.operation() as ctx:
            ctx.require_active()
            async with qmp.open_monitor(self.paths.qmp) as mon:
                await mon.execute("stop")
            ctx.update_record(paused=True, reason="user")

    async def resume(self) -> None:
        """Resume a paused guest (``virsh resume``)."""
        async with self.operation() as ctx:
            ctx.require_active()
            async with qmp.open_monitor(self.paths.qmp) as mon:
                if (await domstate.query(mon)).running:
                    raise OperationInvalidError("domain is already running")
                await mon.execute("cont")
            ctx.update_record(paused=False, reason="unpaused")

    async def shutdown(self, timeout: float = 60.0, escalate: bool = True) -> bool:
        """ACPI power-down; wait up to ``timeout`` s, then destroy if ``escalate``.

        Returns True if the guest powered off by itself; without ``escalate``
        a guest that ignores the power button is `ShutdownTimeoutError`.
        """
        async with self.operation() as ctx:
            rec = ctx.require_active()
            txn = Transaction(actions.ActionEnv.fixed(ctx, None), "shutdown",
                              journal_optional=True)
            return await txn.attempt(partial(self._shutdown, ctx, rec, timeout, escalate))

    async def _shutdown(self, ctx: OpContext, rec: RunRecord, timeout: float,
                        escalate: bool) -> bool:
        """Power the guest off; nothing to undo, but the journal shows it going on."""
        ctx.update_record(stop_requested="shutdown")
        async with qmp.open_monitor(self.paths.qmp) as mon:
            await mon.execute("system_powerdown")
        faults.point("shutdown:waiting")
        if await process.wait_exit(rec.proc, timeout):
            await self.runtime.reap(rec)
            ctx.record = None
            return True
        if not escalate:
            ctx.update_record(stop_requested=None)
            raise ShutdownTimeoutError(
                f"domain '{self.name}' did not shut down within {timeout:g} s")
        await ctx.stop("destroyed")
        return False

    async def destroy(self) -> None:
        """Stop QEMU at once, like ``virsh destroy``, whatever else is going on.

        QEMU is SIGKILLed first, without waiting for the domain lock: an operation
        in progress (a snapshot waiting on a frozen QEMU, say) then fails on the
        dead QEMU and rolls back, as a libvirt job does when its domain is
        destroyed.  The bookkeeping follows under the lock; if the lock stays
        held, the operation holding it reaps the dead QEMU itself.  A full state
        disk costs the recorded reason, not the destroy.
        """
        rec = self.runtime.peek()
        if rec is not None:
            await self.runtime.kill_now(rec)
        try:
            async with self.operation(lock_timeout=DESTROY_LOCK_WAIT) as ctx:
                if ctx.record is not None:  # started after the peek
                    await ctx.stop("destroyed")
                elif rec is None:
                    raise OperationInvalidError("domain is not running")
        except DomainBusyError:
            if rec is None:
                raise
            log.warning("QEMU of domain '%s' is killed; the operation in progress records "
                        "it when it ends", self.name)

    # -- save and restore ---------------------------------------------------

    async def save(self, path: str | Path, running: bool = False, paused: bool = False,
                   progress: ProgressFn | None = None) -> None:
        """``virsh save``: the guest's memory to ``path``, then QEMU stops.

        ``running``/``paused`` choose the state a restore goes back to (default:
        the state now).  The disks are not snapshotted: restore needs them unchanged.
        """
        if running and paused:
            raise InvalidArgError("Flags 'VIR_DOMAIN_SAVE_RUNNING' and "
                                  "'VIR_DOMAIN_SAVE_PAUSED' are mutually exclusive")
        async with self.operation() as ctx:
            ctx.require_active()
            await self._save(ctx, str(path), running, paused, progress)

    async def _save(self, ctx: OpContext, path: str, running: bool, paused: bool,
                    progress: ProgressFn | None) -> None:
        request = SnapshotDef(name="save", memory="external", memory_file=path,
                              disks=[SnapshotDisk(d.target, "no") for d in ctx.definition.disks])
        async with qmp.open_monitor(self.paths.qmp) as mon:
            state, caps = await probe(mon, self.runtime, ctx.record, locked=True)
            plan = plan_snapshot(ctx.definition, state, request,
                                 CreateFlags(halt=True, no_metadata=True), caps)
            back_running = running or (state == "running" and not paused)
            await CreateExecution(ctx, plan, progress, mon, halt_reason="saved",
                                  resume_on_restore=back_running).run()

    async def managed_save(self, running: bool = False, paused: bool = False,
                           progress: ProgressFn | None = None) -> None:
        """``virsh managedsave``: save into the state dir; the next ``start`` restores."""
        await self.save(self.paths.managed_save, running, paused, progress)

    def has_managed_save(self) -> bool:
        return self.paths.managed_save.exists()

    async def managed_save_remove(self) -> None:
        """``virsh managedsave-remove``."""
        async with self.operation():
            self.paths.managed_save.unlink(missing_ok=True)

    async def restore_from(self, path: str | Path, running: bool = False,
                           paused: bool = False, progress: ProgressFn | None = None,
                           xml: str | bytes | None = None) -> None:
        """Start this shut-off domain from a save file (``virsh restore``); ``xml``
        replaces the file's definition with one of the same hardware.

        :raise ConfigUnsupportedError: ``xml`` describes other hardware.
        """
        header = memfile.check(str(path))
        domain_xml = header.domain_xml
        if xml is not None:
            saved = DomainDef.parse(header.domain_xml)
            domain_xml = (await self.driver.same_hardware(saved, xml)).to_xml()
        async with self.operation() as ctx:
            if ctx.record is not None:
                raise OperationInvalidError(f"domain '{self.name}' is already active")
            await self._restore(ctx, str(path), domain_xml, header.was_running,
                                RevertFlags(running, paused), progress)

    async def _restore(self, ctx: OpContext, path: str, xml: str, was_running: bool,
                       flags: RevertFlags, progress: ProgressFn | None,
                       managed: bool = False) -> None:
        saved = DomainDef.parse(xml)
        if saved.uuid != ctx.definition.uuid:
            raise OperationInvalidError(f"save file '{path}' holds domain '{saved.name}' with "
                                        f"uuid {saved.uuid}, not '{self.name}'")
        if saved.emulator != ctx.inactive.emulator:  # a file must not choose what runs
            raise OperationInvalidError(
                f"save file '{path}' names emulator '{saved.emulator or 'the default'}', but "
                f"domain '{self.name}' uses '{ctx.inactive.emulator or 'the default'}'")
        plan = plan_restore(saved, path, was_running, flags, managed)
        # QEMU runs what was saved; the persistent definition stays
        ctx.persistent, ctx.definition = ctx.inactive, saved
        await RevertExecution(ctx, plan, self.driver.next_id, progress).run()

    # -- definition ---------------------------------------------------------

    def xml_desc(self, inactive: bool = False) -> str:
        """The domain XML: the live one (with ``id``) while running, unless ``inactive``."""
        if inactive:
            return self.inactive_definition.to_xml()
        return self.definition.to_xml(self.id)

    def console_path(self) -> Path | str:
        """The pty or UNIX socket of the first serial port."""
        rec = self.runtime.peek()
        if rec is None:
            raise OperationInvalidError("domain is not running")
        definition = self.definition
        if not definition.serials:
            raise OperationInvalidError(f"domain '{self.name}' has no console device")
        serial = definition.serials[0]
        if serial.type == "pty" and rec.console_pty:
            return rec.console_pty
        if serial.type == "unix":
            return Path(serial.path) if serial.path else self.paths.console
        raise OperationInvalidError(f"character device serial0 of type '{serial.type}' "
                                    "cannot be attached to")

    # -- snapshots: reading (metadata files are replaced atomically) ------------

    def snapshot_store(self) -> SnapshotStore:
        return SnapshotStore(self.paths.snapshots, self.name)

    def snapshot_tree(self) -> SnapshotTree:
        return self.snapshot_store().load()

    def snapshot_load_errors(self) -> list[str]:
        """Why metadata files were skipped at load (corrupt, conflicting)."""
        store = self.snapshot_store()
        store.load()
        return store.errors

    def list_snapshots(self, start: str | None = None, descendants: bool = False,
                       **flags: bool) -> list[Snapshot]:
        """``listAllSnapshots`` with libvirt's filters as keyword flags."""
        names = self.snapshot_tree().names(ListFilter(**flags), start, descendants)
        return [Snapshot(self, n) for n in names]

    def snapshot_lookup(self, name: str) -> Snapshot:
        self.snapshot_tree().get(name)
        return Snapshot(self, name)

    def has_current_snapshot(self) -> bool:
        return self.snapshot_tree().current is not None

    def current_snapshot(self) -> Snapshot:
        current = self.snapshot_tree().current
        if current is None:
            raise NoSnapshotError("the domain does not have a current snapshot")
        return Snapshot(self, current)

    async def plan_snapshot(self, xml: str | bytes, flags: CreateFlags = CreateFlags(),
                            assume_state: str | None = None) -> Plan:
        """What creating this snapshot would do, without doing it (and without the lock)."""
        definition = self.definition
        rec = self.runtime.peek()
        if assume_state or rec is None:
            return plan_snapshot(definition, assume_state or "shutoff", xml, flags)
        async with qmp.open_monitor(self.paths.qmp_query) as mon:
            state, caps = await probe(mon, self.runtime, rec, flags.live)
        return plan_snapshot(definition, state, xml, flags, caps)

    # -- snapshots: changing (under the lock) -------------------------------------

    async def snapshot_set_current(self, name: str) -> None:
        """Make ``name`` the current snapshot (``snapshot-current DOM NAME``)."""
        async with self.operation() as ctx:
            store = ctx.snapshot_store()
            await self._metadata_change(ctx, "snapshot-current", meta.set_current,
                                        store, store.load(), name)

    async def snapshot_create_xml(self, xml: str | bytes, progress: ProgressFn | None = None,
                                  **flag_args: bool) -> Snapshot:
        """``virDomainSnapshotCreateXML`` with libvirt's flags as keywords."""
        flags = CreateFlags(**flag_args)
        if flags.validate:
            validate_schema(xml)
        async with self.operation() as ctx, \
                self._live_monitor(ctx, wanted=not flags.redefine) as mon:
            return await self._create(ctx, mon, xml, flags, progress)

    async def _create(self, ctx: OpContext, mon: qmp.Monitor | None, xml: str | bytes,
                      flags: CreateFlags, progress: ProgressFn | None) -> Snapshot:
        """Plan, then carry out; the lock is held."""
        state, caps = await probe(mon, self.runtime, ctx.record, flags.live, locked=True) \
            if mon else ("shutoff", HostCaps())
        plan = plan_snapshot(ctx.definition, state, xml, flags, caps)
        execution = CreateExecution(ctx, plan, progress, mon)
        await execution.run()
        return Snapshot(self, plan.name, execution.report)

    async def revert_to_snapshot(self, snapshot: Snapshot | str, running: bool = False,
                                 paused: bool = False, force: bool = False,
                                 progress: ProgressFn | None = None) -> None:
        """``virDomainRevertToSnapshot``: go back to ``snapshot``, which becomes current.

        The state afterwards is the snapshot's unless ``running``/``paused`` says
        otherwise; an internal snapshot of the definition QEMU runs is loaded in
        the same QEMU (no restart).
        """
        name = snapshot if isinstance(snapshot, str) else snapshot.name
        flags = RevertFlags(running, paused, force)
        async with self.operation() as ctx, self._live_monitor(ctx) as mon:
            plan = await self._plan_revert(ctx, mon, name, flags)
            await RevertExecution(ctx, plan, self.driver.next_id, progress, mon).run()

    async def _plan_revert(self, ctx: OpContext, mon: qmp.Monitor | None, name: str,
                           flags: RevertFlags) -> RevertPlan:
        snap = ctx.snapshot_tree().get(name)
        managed = self.has_managed_save()
        if mon is None:
            return plan_revert(ctx.definition, "shutoff", snap, flags, managed_save=managed)
        state, caps = await probe(mon, self.runtime, ctx.record, locked=True)
        return plan_revert(ctx.definition, state, snap, flags, caps, managed)

    async def plan_revert(self, snapshot: str, running: bool = False, paused: bool = False,
                          force: bool = False) -> RevertPlan:
        """What reverting would do, without doing it."""
        flags = RevertFlags(running, paused, force)
        async with self.operation() as ctx, self._live_monitor(ctx) as mon:
            return await self._plan_revert(ctx, mon, snapshot, flags)

    async def delete_snapshot(self, name: str, metadata_only: bool = False,
                              children: bool = False, children_only: bool = False,
                              progress: ProgressFn | None = None) -> list[str]:
        """Delete a snapshot (and its children if asked) with its data: internal
        snapshots, overlays merged with block-commit or ``qemu-img commit``,
        memory files.  Returns the names removed."""
        flags = DeleteFlags(children, children_only, metadata_only)
        async with self.operation() as ctx, self._live_monitor(ctx) as mon:
            tree = ctx.snapshot_tree()
            plan = await self._plan_delete(ctx, mon, tree, name, flags)
            await DeleteExecution(ctx, plan, mon, progress, tree).run()
            return plan.names

    async def plan_delete(self, name: str, metadata_only: bool = False, children: bool = False,
                          children_only: bool = False) -> DeletePlan:
        """What deleting would do (files committed, rebased, removed, kept), doing nothing."""
        flags = DeleteFlags(children, children_only, metadata_only)
        async with self.operation() as ctx:
            return await self._plan_delete(ctx, None, ctx.snapshot_tree(), name, flags)

    async def _plan_delete(self, ctx: OpContext, mon: qmp.Monitor | None, tree: SnapshotTree,
                           name: str, flags: DeleteFlags) -> DeletePlan:
        names = victims(tree, name, flags)
        graph = await image_graph(ctx, tree) if not flags.metadata_only else ImageGraph({})
        job = (await qemu_caps(mon, self.runtime, ctx.record, locked=True)).snapshot_save \
            if mon is not None else True
        return plan_delete(tree, ctx.definition, ctx.record is not None, names, graph,
                           flags.metadata_only, snapshot_job=job)

    async def _metadata_change(self, ctx: OpContext, op: str, change: Callable[..., T],
                               *args: object) -> T:
        """A change of several metadata files: all of them or, even if this
        process dies half-way, none."""
        txn = self._transaction(ctx, op)

        async def body() -> T:
            txn.on_undo(actions.restore_dir(ctx.paths.snapshots, "the snapshot metadata"))
            faults.point(f"{op}:writing")
            return change(*args)
        return await txn.attempt(body)


__all__ = ["Domain", "DomainState", "Host"]
