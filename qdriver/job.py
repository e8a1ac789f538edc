"""A job: one change of one domain, from taking its lock to letting it go.

Only `Domain` opens a job: it takes the domain lock, reaps a QEMU that died,
reads the run record and the definition once (`Job.read`), and lets recovery
finish what a dead process left, in this same job.  Operations and their
executors receive the job and act on what it holds:

- the definition QEMU runs (the live one while it runs), and the persistent
  one, read only if the job needs it;
- the run record;
- the snapshot tree, read on first use and kept in step with every metadata
  file the job writes (through its one `SnapshotStore`);
- the QMP monitor of the running QEMU, opened on first use and closed with
  the job;
- QEMU's run status, asked once and then kept current from the job's own
  ``stop``/``cont`` and QEMU's STOP/RESUME events.

Nothing below the job reads those files again, and nothing else writes them.
"""
from __future__ import annotations

from contextlib import AsyncExitStack
from pathlib import Path
from typing import Callable, cast

import anyio
from qemu.qmp import EventListener

from . import qmp
from .caps.qemucaps import QemuCaps
from .caps.running import RunningCaps, probe, qemu_caps
from .durable import atomic_write
from .errors import NoDomainError, OperationInvalidError, QDriverError
from .events import log as events_log
from .events.kinds import EventType
from .launch.runtime import QemuCommand, RunRecord, Runtime
from .launch.standby import StandbyRecord
from .launch.start import qemu_command
from .parallel import side_by_side
from .paths import DomainPaths
from .qemuimg.graph import ImageGraph, image_graph
from .runas import LaunchPolicy
from .runstatus import PlannerState, RunStatus
from .snapshots.store import SnapshotStore
from .snapshots.tree import SnapshotTree
from .xml import safe
from .xml.domain import DomainDef

_UNREAD = cast(DomainDef, object())
"""Stands for a persistent definition the job has not needed yet."""


class JobView:
    """A domain's state as read once, for a question (a plan): without the lock,
    so it never waits for an operation in progress and never changes anything.

    Its monitor is QEMU's state-query socket, and probing QEMU writes nothing
    (`LOCKED` is False); a `Job` is the same state read under the lock, and the
    one way to change it.
    """

    LOCKED = False
    """Whether the domain lock is held: only then may QEMU's answers be remembered
    in the run record and capabilities be tried."""

    def __init__(self, paths: DomainPaths, runtime: Runtime, record: RunRecord | None,
                 definition: DomainDef, policy: LaunchPolicy = LaunchPolicy(),
                 next_id: Callable[[], int] = lambda: 1, uuid: str | None = None) -> None:
        self.paths = paths
        self.runtime = runtime
        self.record = record
        """The live QEMU's run record; None while the domain is shut off."""
        self.definition = definition
        """What QEMU runs (the live definition), or the persistent one while shut off."""
        self.policy = policy
        """Who QEMU runs as and which files it may be given (`qdriver.runas`)."""
        self.next_id = next_id
        self.uuid = uuid or definition.uuid
        self._persistent: DomainDef | None = _UNREAD if record is not None else None
        self.store = SnapshotStore(paths.snapshots, definition.name)
        self._tree: SnapshotTree | None = None
        self.stack = AsyncExitStack()
        """What the job keeps open until it ends (the monitor)."""
        self._mon: qmp.Monitor | None = None
        self._events: EventListener | None = None
        self._status: RunStatus | None = None
        self._stopped: RunRecord | None = None
        """The record of the QEMU this job stopped (a revert's next QEMU learns from it)."""

    @classmethod
    def peek(cls, paths: DomainPaths, name: str, uuid: str, runtime: Runtime,
             policy: LaunchPolicy) -> JobView:
        """The domain's state as the files say now (no lock: a dead QEMU shows as
        shut off and is left for the next job to reap)."""
        record = runtime.peek()
        definition = read_definition(paths, name, uuid, live=record is not None)
        return cls(paths, runtime, record, definition, policy, uuid=uuid)

    @property
    def name(self) -> str:
        return self.definition.name

    @property
    def persistent(self) -> DomainDef | None:
        """The persistent definition where it differs from ``definition`` (which is
        the live one while QEMU runs, or the one a restore is about to run); None
        when the two are one.  Read the first time a job asks."""
        if self._persistent is _UNREAD:
            self._persistent = read_definition(self.paths, self.name, self.uuid)
        return self._persistent

    @persistent.setter
    def persistent(self, value: DomainDef | None) -> None:
        self._persistent = value

    @property
    def inactive(self) -> DomainDef:
        """The persistent definition, which the next start uses."""
        persistent = self.persistent
        return persistent if persistent is not None else self.definition

    @property
    def tree(self) -> SnapshotTree:
        """The snapshot tree: read once, then changed in place as files are written."""
        if self._tree is None:
            self._tree = self.store.load()
        return self._tree

    async def read_tree_and_connect(self) -> None:
        """Read the snapshot tree (in a thread) while the running QEMU's monitor
        connects: the first two waits of a snapshot operation, overlapped."""
        if self._tree is not None or self.record is None or self._mon is not None:
            return
        await side_by_side(self._try_monitor, self._read_tree_in_thread)

    async def _try_monitor(self) -> None:
        await self.qemu()

    async def _read_tree_in_thread(self) -> None:
        await anyio.to_thread.run_sync(lambda: self.tree)

    def image_graph(self) -> ImageGraph:
        """The backing graph of every image the definition and the snapshot tree name."""
        return image_graph([*(d.source for d in self.definition.disks if d.source),
                            *self.tree.files()])

    def require_active(self) -> RunRecord:
        if self.record is None:
            raise OperationInvalidError("domain is not running")
        return self.record

    # -- QEMU ------------------------------------------------------------------------

    @property
    def _socket(self) -> Path:
        return self.paths.qmp_query

    async def monitor(self) -> qmp.Monitor:
        """The running QEMU's monitor, opened once for the job: the connection this
        process keeps to it (`qmp.kept`) when it can, else one for the job alone."""
        if self._mon is None:
            record = self.require_active()
            mon = await self._kept_monitor(record)
            if mon is None:
                mon = await self.stack.enter_async_context(qmp.open_monitor(self._socket))
            self._adopt(mon)
        assert self._mon is not None
        return self._mon

    async def _kept_monitor(self, record: RunRecord) -> qmp.Monitor | None:
        """None: only a job under the lock may use the kept connection."""
        return None

    @property
    def monitor_open(self) -> bool:
        return self._mon is not None

    async def qemu(self) -> qmp.Monitor | None:
        """The monitor; None when no QEMU runs or it cannot be reached (it died)."""
        if self.record is None:
            return None
        try:
            return await self.monitor()
        except qmp.MonitorConnectError:
            return None

    def _adopt(self, mon: qmp.Monitor) -> None:
        self._mon = mon
        self._events = self.stack.enter_context(mon.listener("STOP", "RESUME"))
        self._status = None

    async def run_status(self) -> RunStatus:
        """QEMU's run status: asked once, then followed through the job's own
        ``stop``/``cont`` and the STOP/RESUME events QEMU sends meanwhile."""
        mon = await self.monitor()
        self._follow_events()
        if self._status is None:
            status = await mon.execute("query-status")
            self._status = RunStatus(str(status["status"]))
        return self._status

    def _follow_events(self) -> None:
        """A RESUME means running; a STOP can mean several states, so it is asked
        again when needed."""
        if self._events is None:
            return
        for event in self._events.clear():
            self._status = RunStatus("running") if event["event"] == "RESUME" else None

    async def abilities(self, live: bool = False) -> tuple[PlannerState, RunningCaps]:
        """The state the planners see and what this QEMU can do (`caps.running.probe`)."""
        status = await self.run_status()
        return await probe(await self.monitor(), self.runtime, self.record, status, live,
                           locked=self.LOCKED)

    async def qemu_caps(self) -> QemuCaps:
        return await qemu_caps(await self.monitor(), self.runtime, self.record,
                               locked=self.LOCKED)


class Job(JobView):
    """A domain's state as read once under its lock, and the one way to change it."""

    LOCKED = True

    @classmethod
    async def read(cls, paths: DomainPaths, name: str, uuid: str, runtime: Runtime,
                   policy: LaunchPolicy, next_id: Callable[[], int]) -> Job:
        """The domain's state, read once (the caller holds the lock); a QEMU found
        dead is reaped first."""
        record = await runtime.reconcile()
        definition = read_definition(paths, name, uuid, live=record is not None)
        return cls(paths, runtime, record, definition, policy, next_id, uuid)

    @property
    def _socket(self) -> Path:
        return self.paths.qmp

    async def _kept_monitor(self, record: RunRecord) -> qmp.Monitor | None:
        return await qmp.kept.borrow(self.paths.qmp_keep, self.paths.keep_lease, record.proc)

    # -- definitions ---------------------------------------------------------------

    def save_definition(self, definition: DomainDef) -> None:
        """Replace the definition the job acts on: while QEMU runs the live one (the
        persistent one follows its disks where they were the same images), else
        the persistent one."""
        if self.record is None:
            write_definition(self.paths, definition)
            self.persistent = None
        else:
            persistent = self.inactive
            followed = follow_disks(persistent, self.definition, definition)
            write_live_definition(self.paths, definition)
            if followed is not persistent:
                write_definition(self.paths, followed)
            self.persistent = followed
        self.definition = definition

    def save_persistent(self, definition: DomainDef) -> None:
        """Replace the persistent definition only (``define``): a running QEMU
        goes on with its live definition; the new one applies at the next start."""
        write_definition(self.paths, definition)
        if self.record is None:
            self.definition = definition
        else:
            self.persistent = definition

    def forget_tree(self) -> None:
        """Metadata files were put back from the journal: read them again when asked."""
        self._tree = None

    # -- the run record and QEMU ---------------------------------------------------

    def update_record(self, **changes: object) -> None:
        self.runtime.update(self.require_active(), **changes)

    async def launch(self, paused: bool, incoming: bool = False,
                     ram_template: str | None = None) -> qmp.Monitor:
        """Start QEMU for ``definition`` (checked first); the job keeps its monitor.

        With ``incoming`` QEMU waits for an incoming migration (it stays paused);
        with ``ram_template`` its RAM is a private mapping of that template file.
        """
        command = qemu_command(self.definition, self.paths, self.policy, incoming,
                               ram_template=ram_template)
        persistent = self.inactive
        return self._running(persistent, *await self.runtime.launch(
            command, self.next_id(), paused or incoming, self.stack,
            storable_definition(self.definition), known=self._stopped))

    async def connect_ahead(self, standby: StandbyRecord) -> qmp.Monitor:
        """A monitor of a claimed standby QEMU, before it is the domain's; it closes
        with the job."""
        return await self.runtime.connect_ahead(standby.slot, self.stack)

    async def take_over(self, standby: StandbyRecord, mon: qmp.Monitor | None = None
                        ) -> qmp.Monitor:
        """Make a claimed standby QEMU the domain's, paused, for ``definition`` (the
        standby's own, which the caller made the domain's); ``mon``: its monitor
        from `connect_ahead`."""
        command = QemuCommand([], standby.accel, {}, [], ram_template=standby.ram_template,
                              emulator=standby.emulator)
        persistent = self.inactive
        mon = self._running(persistent, *await self.runtime.take_over(
            command, standby.slot, self.next_id(), self.stack,
            storable_definition(self.definition), known=self._stopped, mon=mon))
        self._status = RunStatus("paused")  # as every QEMU waiting for its state is
        return mon

    def _running(self, persistent: DomainDef, record: RunRecord,
                 mon: qmp.Monitor | None) -> qmp.Monitor:
        """A QEMU this job started (or took over) runs: its record and monitor are
        the job's; the persistent definition read before stays the domain's."""
        assert mon is not None
        self.record, self.persistent = record, persistent
        self._adopt(mon)
        return mon

    async def stop(self, reason: str, grace: float = 3.0) -> None:
        """Stop the running QEMU and reap it; the persistent definition applies again."""
        rec = self.require_active()
        await self.close_monitor()
        await self.runtime.stop(rec, reason, grace)
        self._stopped = rec
        self.record = None
        self.definition = self.inactive
        self.persistent = None

    async def close_monitor(self) -> None:
        """QEMU is about to go: close the monitor now (the job's end closes it again,
        which is harmless)."""
        if self._mon is not None:
            await qmp.close(self._mon)
        self._mon = None
        self._events = None
        self._status = None

    async def vcpus(self, run: bool, detail: str | None = None,
                    reason: str | None = None) -> None:
        """``cont`` or ``stop``, remembered as the run status and in the run record
        (``reason``: why, as ``domstate --reason`` says it; default ``unpaused`` or
        ``user``), and recorded as the event resumed or suspended (``detail``: its
        word, default ``unpaused``/``paused``).  ``detail=""``: a passing change,
        neither recorded nor an event."""
        mon = await self.monitor()
        await mon.execute("cont" if run else "stop")
        self._follow_events()
        self._status = RunStatus("running" if run else "paused")
        if detail == "":
            return
        self.emit(EventType.RESUMED if run else EventType.SUSPENDED,
                  detail or ("unpaused" if run else "paused"))
        if self.record is not None:
            self.runtime.update(self.record, paused=not run,
                                reason=reason or ("unpaused" if run else "user"))

    def emit(self, type_: EventType, detail: str, snapshot: str | None = None) -> None:
        """Record an event of this domain (`qdriver.events`): the job holds the lock,
        so the domain's events are recorded in the order they happen."""
        events_log.append(self.paths.state_dir, self.name, type_, detail, snapshot)

    async def leave_postmigrate(self) -> None:
        """Bring a paused guest out of ``postmigrate``, where an earlier memory save
        left it: QEMU offers no way from there to plain ``paused`` except through
        running, so the vCPUs run for the two commands' round trip (well under a
        millisecond) and the images become active again."""
        await self.vcpus(True, "")
        await self.vcpus(False, "")

    async def ensure_running(self, detail: str | None = None,
                             reason: str | None = None) -> None:
        """``cont`` unless the vCPUs already run (``cont`` on a running guest is an
        error); ``detail`` and ``reason`` as for `vcpus`."""
        if not (await self.run_status()).running:
            await self.vcpus(True, detail, reason)

    async def sync_run_state(self) -> None:
        """Bring the run record in line with QEMU (after a change that may have
        stopped it, paused it or let it run)."""
        if self.record is not None:
            self.record = await self.runtime.still_running(self.record)
        if self.record is None:
            self.definition, self.persistent = self.inactive, None
            await self.close_monitor()
            return
        try:
            status = await self.run_status()
        except QDriverError:
            return
        paused = not status.running  # a running guest keeps why it runs (booted, restored)
        why = status.reason
        if paused and self.record.paused and why == "user":  # QEMU's plain pause: the
            why = self.record.reason                           # record says why (migrated)
        if self.record.paused != paused or (paused and self.record.reason != why):
            self.runtime.update(self.record, paused=paused, reason=why)


def read_definition(paths: DomainPaths, name: str, uuid: str | None = None,
                    live: bool = False) -> DomainDef:
    """The persistent definition, or with ``live`` the running QEMU's (the persistent
    one when there is none); `NoDomainError` if it is gone (or is another domain now)."""
    text = None
    if live:
        try:
            text = paths.live_definition.read_bytes()
        except (FileNotFoundError, NotADirectoryError):
            pass
    try:
        text = text if text is not None else paths.definition.read_bytes()
    except (FileNotFoundError, NotADirectoryError):
        raise NoDomainError(f"no domain with matching name '{name}'") from None
    definition = DomainDef.parse(text)
    if uuid is not None and definition.uuid != uuid:
        raise NoDomainError(f"no domain with matching uuid '{uuid}' ({name})")
    return definition


def write_definition(paths: DomainPaths, definition: DomainDef) -> None:
    """Persist a definition atomically (`XMLError` if it could not be read back)."""
    atomic_write(paths.definition, storable_definition(definition))


def write_live_definition(paths: DomainPaths, definition: DomainDef) -> None:
    """Record what the running QEMU runs: it lives as long as QEMU, so a page-cache
    write suffices (a host crash ends QEMU too)."""
    atomic_write(paths.live_definition, storable_definition(definition), durable=False)


def follow_disks(persistent: DomainDef, old_live: DomainDef, new_live: DomainDef) -> DomainDef:
    """The persistent definition after the live one's disks moved (a snapshot's
    overlay, a commit's pivot): a persistent disk follows only where it named the
    same image as the live one, as libvirt does; one a later ``define`` pointed
    elsewhere keeps what the user asked for."""
    moved: dict[str, tuple[str, str]] = {}
    for disk in new_live.disks:
        before = old_live.disk(disk.target)
        kept = persistent.disk(disk.target)
        if before is None or kept is None or disk.source is None:
            continue
        if disk.source != before.source and kept.source == before.source:
            moved[disk.target] = (disk.source, disk.format)
    return persistent.with_disk_sources(moved) if moved else persistent


def storable_definition(definition: DomainDef) -> str:
    """The definition as stored; `XMLError` if it is too large to read back."""
    return safe.check_storable(definition.to_xml(),
                               f"the definition of domain '{definition.name}'")


__all__ = ["Job", "JobView", "read_definition", "write_definition", "follow_disks",
           "storable_definition"]
