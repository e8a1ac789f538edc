"""Domains: define, start, pause, stop and reconnect, like libvirt's virDomain.

A `Domain` is a handle on the files of one domain in the state dir; every
process (this one, the next CLI call) sees the same truth there.  Operations
that change a domain take its lock, connect to QEMU's monitor for the
duration, and record what they did before doing it, so that a process that
dies half-way leaves a record the next one can reconcile.
"""
from __future__ import annotations

import enum
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, AsyncIterator

import anyio

from . import accel, cmdline, process, qmp
from .errors import (ConfigUnsupportedError, OperationInvalidError, QDriverError,
                     SystemError_)
from .paths import DomainPaths
from .snapshot import SnapshotsMixin
from .statestore import atomic_write, locked, read_record, write_record
from .xml.domain import DomainDef

if TYPE_CHECKING:
    from .driver import Driver

START_TIMEOUT = 30.0


class DomainState(enum.IntEnum):
    """libvirt's ``virDomainState``."""

    NOSTATE = 0
    RUNNING = 1
    BLOCKED = 2
    PAUSED = 3
    SHUTDOWN = 4
    SHUTOFF = 5
    CRASHED = 6
    PMSUSPENDED = 7

    @property
    def label(self) -> str:
        """The word ``virsh domstate`` prints."""
        return STATE_LABELS[self]


STATE_LABELS = {
    DomainState.NOSTATE: "no state", DomainState.RUNNING: "running",
    DomainState.BLOCKED: "idle", DomainState.PAUSED: "paused",
    DomainState.SHUTDOWN: "in shutdown", DomainState.SHUTOFF: "shut off",
    DomainState.CRASHED: "crashed", DomainState.PMSUSPENDED: "pmsuspended",
}

# QMP run states (query-status) to libvirt states and reasons.
QMP_STATES: dict[str, tuple[DomainState, str]] = {
    "running": (DomainState.RUNNING, "unpaused"),
    "paused": (DomainState.PAUSED, "user"),
    "prelaunch": (DomainState.PAUSED, "user"),  # only left there by start --paused
    "postmigrate": (DomainState.PAUSED, "migrated"),
    "finish-migrate": (DomainState.PAUSED, "migrating"),
    "inmigrate": (DomainState.PAUSED, "migrating"),
    "save-vm": (DomainState.PAUSED, "saving"),
    "restore-vm": (DomainState.PAUSED, "restoring"),
    "io-error": (DomainState.PAUSED, "I/O error"),
    "watchdog": (DomainState.PAUSED, "watchdog"),
    "guest-panicked": (DomainState.CRASHED, "panicked"),
    "internal-error": (DomainState.PAUSED, "unknown"),
    "debug": (DomainState.PAUSED, "debugger"),
    "shutdown": (DomainState.SHUTDOWN, "user"),
    "suspended": (DomainState.PMSUSPENDED, "unknown"),
    "colo": (DomainState.PAUSED, "colo"),
}


@dataclass
class RunRecord:
    """What a later process needs to find and control a running QEMU."""

    pid: int
    start_time: int
    id: int
    accel: str
    paused: bool = True
    reason: str = "starting up"
    stop_requested: str | None = None
    console_pty: str | None = None
    vnc_port: int | None = None
    snapshot_save: bool | None = None
    """Whether this QEMU has QMP snapshot-save (asked once, then remembered)."""

    @property
    def proc(self) -> process.ProcessId:
        return process.ProcessId(self.pid, self.start_time)


@dataclass
class StatusRecord:
    """How the domain last stopped (kept while it is shut off)."""

    reason: str = "unknown"


class Domain(SnapshotsMixin):
    """One defined domain."""

    def __init__(self, driver: Driver, definition: DomainDef) -> None:
        self.driver = driver
        self.definition = definition
        self.paths = DomainPaths.of(driver.state_dir, definition.name)

    def __repr__(self) -> str:
        return f"<Domain {self.name!r} {self.state.label}>"

    @property
    def name(self) -> str:
        return self.definition.name

    @property
    def uuid(self) -> str:
        return self.definition.uuid

    # -- state ------------------------------------------------------------

    def _record(self) -> RunRecord | None:
        """The runtime record of a live QEMU; reconciles a dead one first."""
        rec = read_record(self.paths.runtime, RunRecord)
        if rec is None:
            return None
        if process.is_alive(rec.proc, str(self.paths.qmp)):
            return rec
        self._reap(rec)
        return None

    def _reap(self, rec: RunRecord) -> None:
        """QEMU is gone: record why, and remove what it left behind."""
        status = None
        for _ in range(40):  # the supervisor writes the exit file just after QEMU exits
            status = process.exit_status(self.paths.exitfile)
            if status is not None:
                break
            time.sleep(0.005)
        if rec.stop_requested:
            reason = rec.stop_requested
        else:
            reason = "shutdown" if status == 0 else "crashed"
        write_record(self.paths.status, StatusRecord(reason))
        self._cleanup_runtime()

    def _cleanup_runtime(self) -> None:
        for path in (self.paths.runtime, self.paths.pidfile, self.paths.exitfile,
                     self.paths.qmp, self.paths.qmp_query, self.paths.console):
            path.unlink(missing_ok=True)
        for i in range(len(self.definition.channels)):
            self.paths.channel(i).unlink(missing_ok=True)
        # the domain's socket dir, then the state dir's and the per-user base
        # once nothing else uses them
        for directory in (self.paths.sockets, self.paths.sockets.parent,
                          self.paths.sockets.parent.parent):
            try:
                directory.rmdir()
            except OSError:
                break  # not empty (another domain runs) or already gone

    def _status(self) -> StatusRecord:
        return read_record(self.paths.status, StatusRecord) or StatusRecord()

    @property
    def state(self) -> DomainState:
        """The last known state; a QEMU that died is noticed here."""
        return self.state_reason()[0]

    def state_reason(self) -> tuple[DomainState, str]:
        """The state and libvirt's reason word (``shut off (crashed)``)."""
        rec = self._record()
        if rec is None:
            return DomainState.SHUTOFF, self._status().reason
        return (DomainState.PAUSED if rec.paused else DomainState.RUNNING), rec.reason

    @property
    def is_active(self) -> bool:
        return self._record() is not None

    @property
    def id(self) -> int | None:
        """libvirt's domain id while running, else None."""
        rec = self._record()
        return rec.id if rec else None

    async def get_state(self) -> tuple[DomainState, str]:
        """The state asked from QEMU itself (sees guest-initiated pauses)."""
        rec = self._record()
        if rec is None:
            return DomainState.SHUTOFF, self._status().reason
        try:
            async with qmp.open_monitor(self.paths.qmp_query) as mon:
                status = await mon.execute("query-status")
        except (qmp.MonitorConnectError, qmp.MonitorClosedError):
            if self._record() is None:
                return DomainState.SHUTOFF, self._status().reason
            raise
        return QMP_STATES.get(str(status["status"]),
                              (DomainState.NOSTATE, "unknown"))

    async def _sync_run_state(self, mon: qmp.Monitor) -> None:
        """Bring the runtime record in line with what QEMU says (after snapshots)."""
        rec = self._record()
        if rec is None:
            return
        try:
            status = await mon.execute("query-status", timeout=2)
        except QDriverError:
            return
        state, reason = QMP_STATES.get(str(status["status"]),
                                       (DomainState.PAUSED, "unknown"))
        paused = state != DomainState.RUNNING
        if (rec.paused, rec.reason) != (paused, reason):
            self._update(rec, paused=paused, reason=reason)

    # -- locking and monitor access -----------------------------------------

    @asynccontextmanager
    async def _locked(self) -> AsyncIterator[None]:
        async with locked(self.paths.lock, self.driver.lock_timeout, f"domain '{self.name}'"):
            yield

    def _require_active(self) -> RunRecord:
        rec = self._record()
        if rec is None:
            raise OperationInvalidError("domain is not running")
        return rec

    @asynccontextmanager
    async def monitor(self) -> AsyncIterator[qmp.Monitor]:
        """The domain's QMP monitor, under the domain lock, for raw commands."""
        async with self._locked():
            self._require_active()
            async with qmp.open_monitor(self.paths.qmp) as mon:
                yield mon

    def _update(self, rec: RunRecord, **changes: object) -> None:
        for key, value in changes.items():
            setattr(rec, key, value)
        write_record(self.paths.runtime, rec)

    # -- lifecycle ----------------------------------------------------------

    async def start(self, paused: bool = False) -> None:
        """Launch QEMU; return once QMP is ready (and the guest runs unless paused)."""
        async with self._locked():
            if self._record() is not None:
                raise OperationInvalidError("domain is already running")
            status = accel.probe(self.definition.type)
            if not status.usable:
                raise ConfigUnsupportedError(
                    f"Domain requires KVM, but it is not usable here: {status.reason}")
            self._check_files()
            argv = cmdline.build(self.definition, self.paths, status.name)
            await self._launch(argv, status.name, paused)

    def _check_files(self) -> None:
        d = self.definition
        wanted: list[tuple[str, str | None]] = [
            ("storage file", disk.source) for disk in d.disks if disk.source]
        wanted += [("kernel", d.kernel), ("initrd", d.initrd)]
        for what, path in wanted:
            if path and not Path(path).exists():
                raise SystemError_(f"Cannot access {what} '{path}': No such file or directory")

    async def _launch(self, argv: list[str], accel_name: str, paused: bool) -> None:
        self._cleanup_runtime()  # leftovers of a QEMU that died unseen
        self.paths.sockets.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.paths.status.unlink(missing_ok=True)
        domain_id = self.driver.next_id()
        process.spawn(argv, self.paths.exitfile, self.paths.qemu_log)
        rec: RunRecord | None = None
        try:
            proc = await process.wait_for_start(self.paths.pidfile, self.paths.qmp,
                                                self.paths.exitfile, self.paths.qemu_log,
                                                START_TIMEOUT)
            rec = RunRecord(proc.pid, proc.start_time, domain_id, accel_name)
            write_record(self.paths.runtime, rec)
            async with qmp.open_monitor(self.paths.qmp) as mon:
                rec.console_pty = await _console_pty(mon)
                if not paused:
                    await mon.execute("cont")
            self._update(rec, paused=paused, reason="user" if paused else "booted")
        except BaseException:
            with anyio.CancelScope(shield=True):
                await self._abort_start(rec)
            raise

    async def _abort_start(self, rec: RunRecord | None) -> None:
        """Undo a start that failed: kill QEMU, remove its files."""
        if rec is not None:
            await process.terminate(rec.proc, grace=1.0)
        else:
            try:
                pid = int(self.paths.pidfile.read_text())
                st = process.start_time(pid)
                if st is not None:
                    await process.terminate(process.ProcessId(pid, st), grace=1.0)
            except (OSError, ValueError):
                pass
        self._cleanup_runtime()
        write_record(self.paths.status, StatusRecord("failed"))

    async def suspend(self) -> None:
        """Pause the guest's vCPUs (``virsh suspend``)."""
        async with self._locked():
            rec = self._require_active()
            async with qmp.open_monitor(self.paths.qmp) as mon:
                await mon.execute("stop")
            self._update(rec, paused=True, reason="user")

    async def resume(self) -> None:
        """Resume a paused guest (``virsh resume``)."""
        async with self._locked():
            rec = self._require_active()
            async with qmp.open_monitor(self.paths.qmp) as mon:
                status = await mon.execute("query-status")
                if status["status"] == "running":
                    raise OperationInvalidError("domain is already running")
                await mon.execute("cont")
            self._update(rec, paused=False, reason="unpaused")

    async def shutdown(self, timeout: float = 60.0, escalate: bool = True) -> bool:
        """ACPI power-down; wait up to ``timeout`` s, then destroy if ``escalate``.

        Returns True if the guest powered off by itself.
        """
        async with self._locked():
            rec = self._require_active()
            self._update(rec, stop_requested="shutdown")
            async with qmp.open_monitor(self.paths.qmp) as mon:
                await mon.execute("system_powerdown")
            if await process.wait_exit(rec.proc, timeout):
                self._record()
                return True
            if not escalate:
                self._update(rec, stop_requested=None)
                raise qmp.MonitorTimeoutError(
                    f"domain '{self.name}' did not shut down within {timeout:g} s")
            self._update(rec, stop_requested="destroyed")
            await process.terminate(rec.proc)
            self._record()
            return False

    async def destroy(self) -> None:
        """Stop QEMU at once (SIGTERM, then SIGKILL), like ``virsh destroy``."""
        async with self._locked():
            rec = self._require_active()
            self._update(rec, stop_requested="destroyed")
            await process.terminate(rec.proc)
            self._record()

    # -- definition ---------------------------------------------------------

    def xml_desc(self, inactive: bool = False) -> str:
        """The domain XML (live XML carries ``id`` while running)."""
        return self.definition.to_xml(None if inactive else self.id)

    def console_path(self) -> Path | str:
        """The pty or UNIX socket of the first serial port."""
        rec = self._require_active()
        if not self.definition.serials:
            raise OperationInvalidError(f"domain '{self.name}' has no console device")
        serial = self.definition.serials[0]
        if serial.type == "pty" and rec.console_pty:
            return rec.console_pty
        if serial.type == "unix":
            return Path(serial.path) if serial.path else self.paths.console
        raise OperationInvalidError(f"character device serial0 of type '{serial.type}' "
                                    "cannot be attached to")

    def save_definition(self) -> None:
        """Persist the definition atomically."""
        atomic_write(self.paths.definition, self.definition.to_xml())


async def _console_pty(mon: qmp.Monitor) -> str | None:
    for chardev in await mon.execute("query-chardev"):
        if chardev["label"] == "charserial0" and str(chardev["filename"]).startswith("pty:"):
            return str(chardev["filename"])[4:]
    return None


__all__ = ["Domain", "DomainState", "RunRecord", "StatusRecord"]
