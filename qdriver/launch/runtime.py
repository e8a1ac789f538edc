"""The runtime layer: launch, stop and reap one domain's QEMU; own its run record.

Nothing here takes the domain lock.  Every method that writes (`launch`,
`stop`, `reap`, `reconcile`, `update`) must be called by an operation that
holds it; `peek` and `ended_reason` only read, so state queries may use them
without the lock: they report a dead QEMU as shut off but leave the clean-up
to the next locked operation.
"""
from __future__ import annotations

import logging
import os
import signal
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar

import anyio

from .. import process, qmp
from ..durable import atomic_write, read_record, write_record
from ..errors import FormatError, InternalError, OperationFailedError
from ..events import log as events_log
from ..events.kinds import EventType
from ..paths import DomainPaths, make_private_dir, make_private_dirs, open_private_log
from ..runas import QemuUser
from ..runstatus import DomainState
from ..testing import faults
from . import helpers, standby
from .helpers import Helper

START_TIMEOUT = 30.0
EXIT_FILE_WAIT = 0.5
"""How long the supervisor may take to record QEMU's exit status."""
KILL_WAIT = 5.0
"""How long a SIGKILLed QEMU may take to be gone (a stopped one goes at once)."""

log = logging.getLogger("qdriver")

STOP_EVENTS: dict[str, tuple[tuple[EventType, str], ...]] = {
    "destroyed": ((EventType.SHUTDOWN, "host"), (EventType.STOPPED, "destroyed")),
    "shutdown": ((EventType.STOPPED, "shutdown"),),
    "crashed": ((EventType.STOPPED, "crashed"),),
    "saved": ((EventType.STOPPED, "saved"),),
    "from snapshot": ((EventType.STOPPED, "from_snapshot"),),
    "failed": ((EventType.STOPPED, "failed"),),
    "migrated": ((EventType.STOPPED, "migrated"),),
}
"""The events a QEMU's end records, by the reason the domain stopped (libvirt's: a
destroy is a host's shutdown, then the stop)."""


@dataclass
class RunRecord:
    """What a later process needs to find and control a running QEMU."""

    FORMAT: ClassVar[int] = 2
    """The stored file's format version (`durable.write_record`); 2 added ``slot``,
    which a reader of format 1 would ignore and take a standby's QEMU for dead."""
    READABLE: ClassVar[tuple[int, ...]] = (0, 1, 2)
    pid: int
    start_time: int
    id: int
    accel: str
    paused: bool = True
    reason: str = "starting up"
    stop_requested: str | None = None
    console_pty: str | None = None
    vnc_port: int | None = None
    caps: dict[str, Any] | None = None
    """What this QEMU offers (`QemuCaps`), probed once by the first operation that asks."""
    background_usable: bool | None = None
    """Whether background-snapshot worked when first tried on this host."""
    supervisor: tuple[int, int] | None = None
    """The supervisor's pid and start time: while it lives, QEMU's exit is being recorded."""
    ram_template: str | None = None
    """A clone's template RAM file: its RAM is a private mapping of it, in no file
    of its own (so it cannot be a template itself), and the file must stay."""
    emulator: str | None = None
    """Which emulator binary runs (`QemuCommand.emulator`): a QEMU started from the
    same one, in the same job, inherits ``caps`` and ``background_usable``."""
    slot: str | None = None
    """The QEMU was started ahead as a standby in this slot (`DomainPaths.in_slot`):
    its command line names the slot's sockets, and its supervisor writes the slot's
    exit file."""

    @property
    def proc(self) -> process.ProcessId:
        return process.ProcessId(self.pid, self.start_time)

    @property
    def supervisor_proc(self) -> process.ProcessId | None:
        return process.ProcessId(*self.supervisor) if self.supervisor else None

    @property
    def state(self) -> tuple[DomainState, str]:
        return (DomainState.PAUSED if self.paused else DomainState.RUNNING), self.reason


@dataclass(frozen=True)
class QemuCommand:
    """How to start one QEMU: its command line and what goes around it."""

    argv: list[str]
    """QEMU's own command line (what ``domxml-to-native`` prints)."""
    accel: str
    env: dict[str, str]
    """Extra environment (a prefix QEMU's module directory)."""
    drop: list[str]
    """What goes before ``argv`` so that QEMU starts as its user (`emulator.drop_prefix`)."""
    user: QemuUser | None = None
    """The user QEMU starts as, when it is not qdriver's own."""
    ram_template: str | None = None
    """The template RAM file a clone maps (copy-on-write)."""
    emulator: str = ""
    """The emulator binary's identity: path, device, inode, modification time."""
    helpers: list[Helper] = field(default_factory=list)
    """Processes started before QEMU for it to connect to (passt)."""


@dataclass
class StatusRecord:
    """How the domain last stopped (kept while it is shut off)."""

    FORMAT: ClassVar[int] = 1

    reason: str = "unknown"
    exit_recorded: bool = False
    """The supervisor had written QEMU's exit status, its last act: no supervisor of
    that QEMU can write the exit file of the next one."""


class Runtime:
    """The QEMU process of one domain, found through its files."""

    def __init__(self, paths: DomainPaths) -> None:
        self.paths = paths

    def own(self, rec: RunRecord) -> DomainPaths:
        """The paths ``rec``'s QEMU was started with: its command line's monitor path
        tells it from a recycled pid, and its supervisor writes its exit file there."""
        return self.paths.in_slot(rec.slot) if rec.slot else self.paths

    def _alive(self, rec: RunRecord) -> bool:
        return process.is_alive(rec.proc, str(self.own(rec).qmp))

    # -- reading (no lock needed) ---------------------------------------------------

    def peek(self) -> RunRecord | None:
        """The run record if its QEMU still runs; None otherwise. Writes nothing.

        A QEMU that has just exited counts as running until its supervisor
        has recorded the exit status, so that the state never reads "shut off"
        before the reason for it can be told.
        """
        rec = read_record(self.paths.runtime, RunRecord)
        if rec is None:
            return None
        if self._alive(rec):
            return rec
        sup = rec.supervisor_proc
        if sup is not None and process.exit_status(self.own(rec).exitfile) is None \
                and process.is_running(sup):
            return rec
        return None

    def ended_reason(self) -> str:
        """Why the domain is shut off, as far as the files tell, without waiting."""
        rec = read_record(self.paths.runtime, RunRecord)
        if rec is None:
            return self.last_status().reason
        return _reason(rec, process.exit_status(self.own(rec).exitfile))

    async def settled_reason(self) -> str:
        """`ended_reason`, after giving the supervisor a moment to record the exit."""
        rec = read_record(self.paths.runtime, RunRecord)
        if rec is None:
            return self.last_status().reason
        return _reason(rec, await self._exit_status(rec))

    async def _exit_status(self, rec: RunRecord) -> int | None:
        """The exit status the supervisor records just after QEMU exits: known the
        moment the supervisor is gone (its exit is waited on, not polled for)."""
        exitfile = self.own(rec).exitfile
        status = process.exit_status(exitfile)
        sup = rec.supervisor_proc
        if status is None and sup is not None:
            await process.wait_exit(sup, EXIT_FILE_WAIT)
            status = process.exit_status(exitfile)
        with anyio.move_on_after(EXIT_FILE_WAIT if status is None else 0):
            while status is None:  # no supervisor recorded, or one that hangs
                await anyio.sleep(0.005)
                status = process.exit_status(exitfile)
        return status

    def last_status(self) -> StatusRecord:
        return read_record(self.paths.status, StatusRecord) or StatusRecord()

    # -- changing (the caller holds the domain lock) -----------------------------------

    async def reconcile(self) -> RunRecord | None:
        """The live run record; a QEMU that died is reaped first."""
        rec = read_record(self.paths.runtime, RunRecord)
        if rec is None:
            return None
        if self._alive(rec):
            return rec
        await self.reap(rec)
        return None

    async def still_running(self, rec: RunRecord) -> RunRecord | None:
        """``rec`` if its QEMU still runs, else None, once it is reaped (the record
        held is not read again)."""
        if self._alive(rec):
            return rec
        await self.reap(rec)
        return None

    async def reap(self, rec: RunRecord) -> None:
        """QEMU is gone: record why, and remove what it left behind (a full state
        disk loses the reason, not the cleanup)."""
        await qmp.kept.release(self.paths.qmp_keep)
        await helpers.stop(self.paths)  # passt ends with QEMU; whatever is left goes
        await _discard_standby(self.paths)  # it lives no longer than the QEMU it stands by
        status = await self._exit_status(rec)  # also: the supervisor is done once it is known
        reason = "destroyed" if self.paths.destroy_marker.exists() else _reason(rec, status)
        _tolerant(lambda: write_record(self.paths.status,
                                       StatusRecord(reason, exit_recorded=status is not None)),
                  f"the reason domain '{self.paths.dir.name}' stopped")
        self.cleanup(rec)
        for type_, detail in STOP_EVENTS.get(reason, STOP_EVENTS["failed"]):
            events_log.append(self.paths.state_dir, self.paths.dir.name, type_, detail)

    def cleanup(self, rec: RunRecord | None = None) -> None:
        """Remove the files of a QEMU that no longer runs (``rec``'s, if known)."""
        p = self.paths
        if rec is not None and rec.slot:
            self.own(rec).exitfile.unlink(missing_ok=True)
        for path in (p.runtime, p.pidfile, p.exitfile, p.qmp, p.qmp_query, p.qmp_keep, p.events,
                     p.keep_lease, p.ram_file, p.console,
                     p.destroy_marker, p.live_definition):
            path.unlink(missing_ok=True)
        if p.sockets.is_dir():
            for chan in p.sockets.glob("channel*.sock"):
                chan.unlink(missing_ok=True)
        # the domain's socket dir, then the state dir's and the per-user base
        # once nothing else uses them
        for directory in (p.sockets, p.sockets.parent, p.sockets.parent.parent):
            try:
                directory.rmdir()
            except OSError:
                break  # not empty (another domain runs) or already gone

    def update(self, rec: RunRecord, **changes: object) -> None:
        """Change fields of the run record and store it.  The record only tells
        what QEMU can be asked, so a full state disk leaves it stale with a
        warning instead of failing what was already done to QEMU."""
        for key, value in changes.items():
            setattr(rec, key, value)
        _tolerant(lambda: write_record(self.paths.runtime, rec, durable=False),
                  f"the run state of domain '{self.paths.dir.name}'")

    async def kill_now(self, rec: RunRecord) -> None:
        """SIGKILL QEMU without the domain lock (``destroy`` preempts whatever holds
        it) and wait until it is gone; the marker makes the reap say "destroyed"."""
        _tolerant(self.paths.destroy_marker.touch, "the destroy request")
        process.signal_process(rec.proc, signal.SIGKILL)
        if not await process.wait_exit(rec.proc, KILL_WAIT):
            raise OperationFailedError(f"QEMU process {rec.pid} did not exit within "
                                       f"{KILL_WAIT:g} s of SIGKILL")

    async def launch(self, command: QemuCommand, domain_id: int,
                     paused: bool, keep: AsyncExitStack | None = None,
                     live_xml: str | None = None, known: RunRecord | None = None
                     ) -> tuple[RunRecord, qmp.Monitor | None]:
        """Spawn QEMU (started with ``-S``), connect, and run the guest unless ``paused``.

        With ``keep`` the monitor connection stays open in that stack and is
        returned with the record: an operation that goes on talking to
        the new QEMU (a revert's load) does not connect a second time.  On any
        failure QEMU is killed and its files removed before the error
        propagates.  ``live_xml`` is the definition QEMU runs, kept as long as it does.
        ``known``: the record of a QEMU this job ran before; what it learned of its
        emulator holds for this one if the binary is the same.
        """
        if self._earlier_supervisor_possible():
            await process.wait_supervisors_gone(self.paths.exitfile, KILL_WAIT)
        self.cleanup()  # leftovers of a QEMU that died unseen
        log_since = self._spawn(command, self.paths)
        self.paths.status.unlink(missing_ok=True)  # before the spawn: see the check above
        await helpers.start(command.helpers, self.paths)
        process.spawn([*command.drop, *command.argv], self.paths.exitfile, self.paths.qemu_log,
                      command.env, self.paths.console_log if command.user else None)
        faults.point("launch:spawned")
        return await self._started(self.paths, command, domain_id, paused, keep, live_xml,
                                   known, log_since)

    def spawn_ahead(self, command: QemuCommand, slot: str) -> None:
        """Spawn a standby QEMU in ``slot`` (`DomainPaths.in_slot`) and return at once:
        it starts up while the domain's own QEMU runs on; `take_over` makes it the
        domain's.  Its command line must have been built for the slot's paths."""
        own = self.paths.in_slot(slot)
        self._spawn(command, own)
        process.spawn([*command.drop, *command.argv], own.exitfile, self.paths.qemu_log,
                      command.env, self.paths.console_log if command.user else None)

    async def connect_ahead(self, slot: str, keep: AsyncExitStack) -> qmp.Monitor:
        """A monitor of the standby QEMU of ``slot``, once it is up, kept open in
        ``keep`` (work it can do before it is the domain's: loading its memory)."""
        own = self.paths.in_slot(slot)
        proc = await process.wait_for_start(own.pidfile, own.qmp, own.exitfile,
                                            self.paths.qemu_log, START_TIMEOUT)
        mon = await qmp.connect_new(own.qmp, lambda: process.is_alive(proc, str(own.qmp)))
        keep.push_async_callback(qmp.close, mon)
        return mon

    async def take_over(self, command: QemuCommand, slot: str, domain_id: int,
                        keep: AsyncExitStack | None = None, live_xml: str | None = None,
                        known: RunRecord | None = None, mon: qmp.Monitor | None = None
                        ) -> tuple[RunRecord, qmp.Monitor | None]:
        """The standby QEMU of ``slot`` becomes the domain's, paused (the caller has
        stopped the domain's own QEMU): once it is up, its socket directory takes the
        place of the domain's.  ``mon``: a monitor of it (`connect_ahead`) to go on
        with.  On failure it is killed and its files removed."""
        self.cleanup()  # what the stopped QEMU left
        self.paths.status.unlink(missing_ok=True)
        return await self._started(self.paths.in_slot(slot), command, domain_id, True, keep,
                                   live_xml, known, 0, mon)

    def _spawn(self, command: QemuCommand, own: DomainPaths) -> int:
        """Make the directories and logs a QEMU started with ``own`` paths needs; where
        the QEMU log ends now (its tail after that is this start's)."""
        make_private_dirs(own.sockets, user=command.user)
        make_private_dir(self.paths.dir)
        for log_file in (self.paths.qemu_log, self.paths.console_log):
            open_private_log(log_file)
        return process.log_size(self.paths.qemu_log)

    async def _started(self, own: DomainPaths, command: QemuCommand, domain_id: int,
                       paused: bool, keep: AsyncExitStack | None, live_xml: str | None,
                       known: RunRecord | None, log_since: int,
                       connected: qmp.Monitor | None = None
                       ) -> tuple[RunRecord, qmp.Monitor | None]:
        """Wait for a spawned QEMU, move a standby's sockets in, connect (unless
        ``connected``, whose closing the caller has arranged) and record it."""
        # while QEMU starts up: what only matters once it runs (the caller's journal
        # stops a QEMU whose start was not seen through, recorded or not)
        if live_xml is not None:
            atomic_write(self.paths.live_definition, live_xml, durable=False)
        rec: RunRecord | None = None
        try:
            proc = await process.wait_for_start(own.pidfile, own.qmp, own.exitfile,
                                                self.paths.qemu_log, START_TIMEOUT, log_since)
            sup = process.parent(proc.pid)
            rec = RunRecord(proc.pid, proc.start_time, domain_id, command.accel,
                            supervisor=(sup.pid, sup.start_time) if sup else None,
                            ram_template=command.ram_template, emulator=command.emulator,
                            slot=own.slot or None)
            if known is not None and known.emulator == command.emulator:
                rec.caps, rec.background_usable = known.caps, known.background_usable
            if own.slot:
                os.rename(own.sockets, self.paths.sockets)
            try:
                mon = connected or await qmp.connect_new(
                    self.paths.qmp, lambda: process.is_alive(proc, str(own.qmp)))
                try:
                    rec.console_pty = await _console_pty(mon)
                    if not paused:
                        await mon.execute("cont")
                finally:
                    if keep is None and connected is None:
                        await qmp.close(mon)
                if keep is not None and connected is None:
                    keep.push_async_callback(qmp.close, mon)
            except (qmp.MonitorConnectError, qmp.MonitorClosedError) as e:
                await self._exited_while_connecting(proc, e, log_since)
                raise
            rec.paused, rec.reason = paused, "user" if paused else "booted"
            write_record(self.paths.runtime, rec, durable=False)  # one write, complete
            return rec, mon if keep is not None else None
        except BaseException:
            with anyio.CancelScope(shield=True):
                await self._abort_launch(rec, own)
            raise

    def _earlier_supervisor_possible(self) -> bool:
        """Whether the supervisor of an earlier QEMU may still write the exit file,
        so that the /proc scan for it is needed: not when no QEMU ever ran for this
        domain (it has no log yet), nor when the last stop recorded QEMU's exit
        status (writing it was that supervisor's last act).  A start that died
        after removing the status record leaves none, so the next one scans."""
        if not self.paths.qemu_log.exists():
            return False
        try:
            last = read_record(self.paths.status, StatusRecord)
        except FormatError:
            return True
        return last is None or not last.exit_recorded

    async def _exited_while_connecting(self, proc: process.ProcessId, e: Exception,
                                       log_since: int) -> None:
        """QEMU made its socket, then exited (a bad device, say): say why, from its log."""
        if await process.wait_exit(proc, 5.0):
            raise InternalError("process exited while connecting to monitor: "
                                f"{process.log_tail(self.paths.qemu_log, since=log_since)}"
                                ) from e

    async def _abort_launch(self, rec: RunRecord | None, own: DomainPaths) -> None:
        proc = rec.proc if rec is not None else pid_from_file(own.pidfile)
        if proc is not None:
            await process.terminate(proc, grace=1.0)
        if own.slot:
            await standby.kill(self.paths, own.slot)
        await helpers.stop(self.paths)
        self.cleanup(rec)
        write_record(self.paths.status, StatusRecord("failed"))

    async def stop(self, rec: RunRecord, reason: str, grace: float = 3.0) -> None:
        """Stop QEMU (SIGTERM, then SIGKILL) and reap it; ``reason`` is what
        ``domstate --reason`` says afterwards."""
        self.update(rec, stop_requested=reason)
        await process.terminate(rec.proc, grace)
        await self.reap(rec)


async def _discard_standby(paths: DomainPaths) -> None:
    try:
        await standby.discard(paths)
    except OSError as e:
        log.warning("cannot discard the standby QEMU of domain '%s': %s", paths.dir.name, e)


def _tolerant(write: Callable[[], object], what: str) -> None:
    """Run a state write; a full or read-only state disk is a warning, not an error."""
    try:
        write()
    except OSError as e:
        log.warning("cannot record %s: %s", what, e.strerror or e)


def _reason(rec: RunRecord, exit_status: int | None) -> str:
    if rec.stop_requested == "shutdown" and exit_status not in (None, 0):
        return "crashed"  # asked to power off, but killed (a guest's own power-off exits 0)
    if rec.stop_requested:
        return rec.stop_requested
    if exit_status is None:
        return "unknown"
    return "shutdown" if exit_status == 0 else "crashed"


def pid_from_file(pidfile: Path) -> process.ProcessId | None:
    """The QEMU a pidfile names, with its start time (None if it is gone)."""
    try:
        pid = int(pidfile.read_text())
    except (OSError, ValueError):
        return None
    st = process.start_time(pid)
    return process.ProcessId(pid, st) if st is not None else None


async def _console_pty(mon: qmp.Monitor) -> str | None:
    for chardev in await mon.execute("query-chardev"):
        if chardev["label"] == "charserial0" and str(chardev["filename"]).startswith("pty:"):
            return str(chardev["filename"])[4:]
    return None


def template_users(state_dir: Path, templates: set[str]) -> dict[str, list[str]]:
    """Which running domains of ``state_dir`` map each of these template RAM files
    (clones started from a template snapshot): a file they map must stay."""
    users: dict[str, list[str]] = {}
    if not templates:
        return users
    for domain in sorted((state_dir / "domains").iterdir()):
        rec = Runtime(DomainPaths.of(state_dir, domain.name)).peek()
        if rec is not None and rec.ram_template in templates:
            users.setdefault(rec.ram_template, []).append(domain.name)
    return users


__all__ = ["Runtime", "RunRecord", "StatusRecord", "QemuCommand", "START_TIMEOUT", "pid_from_file",
           "template_users"]

