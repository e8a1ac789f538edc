"""Domains: define, start, pause, stop and snapshot, like libvirt's virDomain.

A `Domain` is a handle by name and uuid; it caches nothing.  Each method that
changes the domain opens a `Job` (the lock, the state read once under it,
recovery of a dead process's operation) and calls one operation of `qdriver.ops`
(or `qdriver.migrate`), which acts on the job and writes back before the lock goes.
State queries read the files without the lock and never clean up: a QEMU that died
is reported as shut off and reaped by the next job.
"""
from __future__ import annotations

import logging
from contextlib import asynccontextmanager
from pathlib import Path
from typing import AsyncIterator, Protocol

from . import qmp, recovery
from .console import console_path
from .durable import locked
from .errors import DomainBusyError, InvalidArgError, NoDomainError, OperationInvalidError
from .guestinfo import GuestInfo
from .job import Job, JobView, read_definition
from .launch.runtime import Runtime
from .memory import memfile
from .migrating import Migrating
from .ops import create_exec, delete_exec, lifecycle, revert_exec, save_exec
from .ops.create_plan import CreateFlags, CreatePlan, plan_snapshot
from .ops.delete_plan import DeleteFlags, DeletePlan
from .ops.revert_plan import RevertFlags, RevertPlan
from .paths import DomainPaths
from .progress import ProgressFn
from .runas import LaunchPolicy
from .runstatus import DomainState
from .snapshots.handle import Snapshot, SnapshotReading
from .xml.domain import DomainDef
from .xml.snapshot import validate_schema

DESTROY_LOCK_WAIT = 10.0
"""How long ``destroy`` waits, after the kill, for the operation in progress to end."""

log = logging.getLogger("qdriver")


class Host(Protocol):
    """What a domain needs from its driver (a `Driver` is one)."""

    state_dir: Path
    lock_timeout: float
    policy: LaunchPolicy

    def next_id(self) -> int: ...

    async def fork(self, dom: Domain, snapshot: str, names: list[str],
                   progress: ProgressFn | None, paused: bool = False) -> list[Domain]: ...

    async def same_hardware(self, saved: DomainDef, xml: str | bytes) -> DomainDef:
        """``xml`` as stored, if it gives the guest saved from ``saved`` the same
        hardware; else `ConfigUnsupportedError`."""
        ...


class Domain(SnapshotReading, GuestInfo, Migrating):
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

    @asynccontextmanager
    async def job(self, lock_timeout: float | None = None) -> AsyncIterator[Job]:
        """Open a job: hold the domain lock, with the state read once under it and
        whatever a dead process left recovered first.

        :raise DomainBusyError: another process held the lock past the timeout.
        :raise NoDomainError: the domain is gone (or is another domain now).
        """
        wait = self.driver.lock_timeout if lock_timeout is None else lock_timeout
        try:
            async with locked(self.paths.lock, wait, f"domain '{self.name}'", create_dir=False):
                job = await Job.read(self.paths, self.name, self.uuid, self.runtime,
                                     self.driver.policy, self.driver.next_id)
                async with job.stack:
                    self.last_recovery = await recovery.recover(job) or self.last_recovery
                    yield job
        except (FileNotFoundError, NotADirectoryError) as e:
            if self.paths.definition.exists():
                raise
            raise NoDomainError(f"no domain with matching name '{self.name}'") from e

    @asynccontextmanager
    async def _view(self) -> AsyncIterator[JobView]:
        """The state as the files say now, without the lock, for a question (a plan)."""
        view = JobView.peek(self.paths, self.name, self.uuid, self.runtime, self.driver.policy)
        async with view.stack:
            yield view

    # -- state (read-only, no lock) ------------------------------------------------

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
        """Recover an interrupted operation now (any job does it too)."""
        async with self.job():
            return self.last_recovery

    async def get_state(self) -> tuple[DomainState, str]:
        """The state asked from QEMU itself; a dead QEMU is reaped if the lock is free."""
        return await lifecycle.queried_state(self.paths, self.runtime, self.name)

    @asynccontextmanager
    async def monitor(self) -> AsyncIterator[qmp.Monitor]:
        """The domain's QMP monitor, under the domain lock, for raw commands."""
        async with self.job() as job:
            yield await job.monitor()

    # -- lifecycle ----------------------------------------------------------

    async def start(self, paused: bool = False, force_boot: bool = False,
                    progress: ProgressFn | None = None) -> None:
        """Launch QEMU; return once QMP is ready (and the guest runs unless paused).
        A managed save image is restored instead, as libvirt does (``force_boot``: boot)."""
        async with self.job() as job:
            managed = self.paths.managed_save
            if job.record is None and managed.exists() and not force_boot:
                header = memfile.check(str(managed))
                await revert_exec.restore(job, str(managed), header.domain_xml,
                                          header.was_running, RevertFlags(paused=paused),
                                          progress, managed=True)
            else:
                await lifecycle.boot(job, paused)

    async def suspend(self) -> None:
        """Pause the guest's vCPUs (``virsh suspend``)."""
        async with self.job() as job:
            await lifecycle.suspend(job)

    async def resume(self) -> None:
        """Resume a paused guest (``virsh resume``)."""
        async with self.job() as job:
            await lifecycle.resume(job)

    async def reset(self) -> None:
        """Reset the guest at once, as its reset button would (``virsh reset``)."""
        async with self.job() as job:
            await lifecycle.reset(job)

    async def shutdown(self, timeout: float = 60.0, escalate: bool = True) -> bool:
        """ACPI power-down; wait up to ``timeout`` s, then destroy if ``escalate``.
        True if the guest powered off by itself; without ``escalate`` a guest that
        ignores the power button is `ShutdownTimeoutError`."""
        async with self.job() as job:
            return await lifecycle.shutdown(job, timeout, escalate)

    async def destroy(self) -> None:
        """Stop QEMU at once (``virsh destroy``): SIGKILL first, without the lock, so an
        operation in progress fails and rolls back, as a libvirt job does."""
        rec = self.runtime.peek()
        if rec is not None:
            await self.runtime.kill_now(rec)
        try:
            async with self.job(lock_timeout=DESTROY_LOCK_WAIT) as job:
                if job.record is not None:  # started after the peek
                    await job.stop("destroyed")
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

        ``running``/``paused`` choose the state a restore goes back to (default: the
        state now).  The disks are not snapshotted: restore needs them unchanged."""
        if running and paused:
            raise InvalidArgError("Flags 'VIR_DOMAIN_SAVE_RUNNING' and "
                                  "'VIR_DOMAIN_SAVE_PAUSED' are mutually exclusive")
        async with self.job() as job:
            await save_exec.save(job, str(path), running, paused, progress)

    async def managed_save(self, running: bool = False, paused: bool = False,
                           progress: ProgressFn | None = None) -> None:
        """``virsh managedsave``: save into the state dir; the next ``start`` restores."""
        await self.save(self.paths.managed_save, running, paused, progress)

    def has_managed_save(self) -> bool:
        return self.paths.managed_save.exists()

    async def managed_save_remove(self) -> None:
        """``virsh managedsave-remove``."""
        async with self.job():
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
        async with self.job() as job:
            await revert_exec.restore(job, str(path), domain_xml, header.was_running,
                                      RevertFlags(running, paused), progress)

    # -- definition ---------------------------------------------------------

    def xml_desc(self, inactive: bool = False) -> str:
        """The domain XML: the live one (with ``id``) while running, unless ``inactive``."""
        if inactive:
            return self.inactive_definition.to_xml()
        return self.definition.to_xml(self.id)

    def console_path(self) -> Path | str:
        """The pty or UNIX socket of the first serial port."""
        rec = self.runtime.peek()
        return console_path(self.definition, rec, self.paths)

    # -- snapshots: changing (each in a job) -------------------------------------

    async def snapshot_set_current(self, name: str) -> None:
        """Make ``name`` the current snapshot (``snapshot-current DOM NAME``)."""
        async with self.job() as job:
            await lifecycle.set_current(job, name)

    async def snapshot_create_xml(self, xml: str | bytes, progress: ProgressFn | None = None,
                                  **flag_args: bool) -> Snapshot:
        """``virDomainSnapshotCreateXML`` with libvirt's flags as keywords."""
        flags = CreateFlags(**flag_args)
        if flags.validate:
            validate_schema(xml)
        async with self.job() as job:
            name, report = await create_exec.create(job, xml, flags, progress)
        return Snapshot(self, name, report)

    async def plan_snapshot(self, xml: str | bytes, flags: CreateFlags = CreateFlags(),
                            assume_state: str | None = None) -> CreatePlan:
        """What creating this snapshot would do, doing nothing (``assume_state``: as
        if the domain were in that state)."""
        if assume_state:
            return plan_snapshot(self.definition, assume_state, xml, flags)
        async with self._view() as view:
            return await create_exec.plan(view, xml, flags)

    async def revert_to_snapshot(self, snapshot: Snapshot | str, running: bool = False,
                                 paused: bool = False, force: bool = False,
                                 progress: ProgressFn | None = None) -> None:
        """``virDomainRevertToSnapshot``: go back to ``snapshot``, which becomes current,
        in the snapshot's state unless ``running``/``paused`` says otherwise."""
        name = snapshot if isinstance(snapshot, str) else snapshot.name
        async with self.job() as job:
            await revert_exec.revert(job, name, RevertFlags(running, paused, force), progress)

    async def prepare_standby(self, snapshot: str) -> bool:
        """Start and load ahead the QEMU the next revert to ``snapshot`` needs
        (`qdriver.launch.standby`); False if that revert cannot use one."""
        async with self.job() as job:
            return await revert_exec.prepare_standby(job, snapshot)

    async def plan_revert(self, snapshot: str, running: bool = False, paused: bool = False,
                          force: bool = False) -> RevertPlan:
        """What reverting would do, without doing it (or waiting for the lock)."""
        async with self._view() as view:
            return await revert_exec.plan(view, snapshot, RevertFlags(running, paused, force))

    async def fork(self, snapshot: str, *names: str, progress: ProgressFn | None = None,
                   paused: bool = False) -> list[Domain]:
        """New running (or ``paused``) domains from an external memory snapshot."""
        return await self.driver.fork(self, snapshot, list(names), progress, paused)

    async def delete_snapshot(self, name: str, metadata_only: bool = False,
                              children: bool = False, children_only: bool = False,
                              progress: ProgressFn | None = None) -> list[str]:
        """Delete a snapshot (and its children if asked) with its data: internal
        snapshots, overlays merged with block-commit or ``qemu-img commit``,
        memory files.  Returns the names removed."""
        flags = DeleteFlags(children, children_only, metadata_only)
        async with self.job() as job:
            return await delete_exec.delete(job, name, flags, progress)

    async def plan_delete(self, name: str, metadata_only: bool = False, children: bool = False,
                          children_only: bool = False) -> DeletePlan:
        """What deleting would do (files committed, rebased, removed, kept), doing nothing."""
        flags = DeleteFlags(children, children_only, metadata_only)
        async with self._view() as view:
            return await delete_exec.plan(view, name, flags, online=False)


__all__ = ["Domain", "DomainState", "Host"]
