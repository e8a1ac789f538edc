"""Carry out a snapshot plan on a real domain.

Every step of a `Plan` has a method here (`STEPS`).  A step that has a side
effect pushes its undo (before creating a file, so a partial one goes too;
after the other side effects succeed); if any later step fails,
the undo stack runs in reverse: created overlays and memory files are
removed, added block nodes deleted, internal snapshots dropped, the old
definition put back, and the guest resumed if we paused it.  Checks that
need the filesystem (files that must not, or must, exist) run in `preflight`
before the first side effect.
"""
from __future__ import annotations

import hashlib
import os
import time
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, Awaitable, Callable

import anyio
from qemu.qmp import EventListener

from . import agent, process, qemuimg, qmp
from . import snapshots as meta
from .errors import ConfigUnsupportedError, OperationFailedError, QDriverError
from .planner import AGENT_CHANNEL, DiskPlan, Plan
from .saveimage import mark_complete, write_header
from .xml.domain import DomainDef
from .xml.snapshot import SnapshotDef, SnapshotDisk

if TYPE_CHECKING:
    from .domain import Domain

MAX_BANDWIDTH = 9223372036853727232  # what libvirt sets for local saves
JOB_TIMEOUT = 3600.0
Undo = Callable[[], Awaitable[object]]


@dataclass(frozen=True)
class Progress:
    """How far a long phase (memory save) has come."""

    phase: str
    done: int
    total: int
    rate: float
    """Bytes per second."""


ProgressFn = Callable[[Progress], None]


@dataclass(frozen=True)
class CreateReport:
    """What a snapshot creation cost the guest, measured with QEMU's own clock."""

    seconds: float
    """Wall time of the whole operation."""
    pause: float
    """Time the vCPUs were stopped (QEMU's STOP to RESUME event timestamps)."""
    memory_bytes: int
    """Size of the external memory file, if any."""
    flush: float = 0.0
    """Time spent making the memory file durable (fsync), after the guest resumed."""

    @property
    def memory_rate(self) -> float:
        """Memory file write rate in bytes per second over the whole operation."""
        return self.memory_bytes / self.seconds if self.seconds else 0.0


def guest_pause(events: list[dict[str, Any]], end: float) -> float:
    """Seconds between STOP and RESUME events (an unmatched STOP runs to ``end``)."""
    total, stopped_at = 0.0, None
    for ev in events:
        ts = ev.get("timestamp") or {}
        at = ts.get("seconds", 0) + ts.get("microseconds", 0) / 1e6
        if ev.get("event") == "STOP" and stopped_at is None:
            stopped_at = at
        elif ev.get("event") == "RESUME" and stopped_at is not None:
            total, stopped_at = total + at - stopped_at, None
    return total + (end - stopped_at if stopped_at is not None else 0.0)


def overlay_nodes(target: str, path: str) -> tuple[str, str]:
    """Stable (format, file) node names for an overlay image."""
    tag = hashlib.sha256(path.encode()).hexdigest()[:8]
    return f"ov-{target}-{tag}", f"ovf-{target}-{tag}"


class Execution:
    """One snapshot creation in progress."""

    def __init__(self, dom: Domain, plan: Plan, progress: ProgressFn | None,
                 mon: qmp.Monitor | None = None) -> None:
        self.dom = dom
        self.plan = plan
        self.progress = progress
        self.undo: list[Undo] = []
        self.mon = mon
        """The open operations monitor of a running domain (the caller's)."""
        self.nodes: dict[str, str] = {}
        self.before: DomainDef = dom.definition
        self.online = plan.state != "shutoff"
        self.created = int(time.time())
        self.events: list[dict[str, Any]] = []
        self.memory_fd: int | None = None
        self.flush_seconds = 0.0
        """The memory file, kept open until the guest runs again, then completed."""
        self.report: CreateReport | None = None
        self.switched: set[str] = set()
        """Disks whose new overlay QEMU already writes to: never undone."""
        self.frozen = False

    # -- driver ------------------------------------------------------------------

    async def run(self) -> SnapshotDef:
        """Do every step; roll back and re-raise on the first failure."""
        self.preflight()
        started = time.monotonic()
        if not self.online:
            await self._attempt(self._steps)
        else:
            mon = self.monitor
            try:
                with mon.listener("STOP", "RESUME") as listener:
                    await self._attempt(self._online_steps)
                    self.events = [dict(e) for e in listener.clear()]
            finally:
                with anyio.CancelScope(shield=True):
                    await self.dom._sync_run_state(mon)
        mem = Path(self.plan.memory_file) if self.plan.memory_file else None
        self.report = CreateReport(time.monotonic() - started,
                                   guest_pause(self.events, time.time()),
                                   mem.stat().st_size if mem and mem.exists() else 0,
                                   self.flush_seconds)
        return self.record()

    async def _attempt(self, steps: Callable[[], Awaitable[None]]) -> None:
        try:
            await steps()
        except BaseException:
            with anyio.CancelScope(shield=True):
                await self.rollback()
            raise

    async def _online_steps(self) -> None:
        self.nodes = await top_nodes(self.monitor)
        try:
            await self._steps()
            await self._complete_memory_file()  # with NO_METADATA no step did it
        finally:
            if self.memory_fd is not None:
                os.close(self.memory_fd)
                self.memory_fd = None

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

    async def _steps(self) -> None:
        for step in self.plan.steps:
            await STEPS[step](self)

    async def rollback(self) -> None:
        """Undo what was done, newest first; keep going past failures."""
        while self.undo:
            try:
                await self.undo.pop()()
            except (QDriverError, OSError):
                continue  # QEMU may be gone; the file undos still run

    def preflight(self) -> None:
        """Refuse before any side effect if target files are wrong."""
        for d in self.external():
            path = Path(d.file or "")
            if self.plan.flags.reuse_ext:
                if not path.is_file():
                    raise OperationFailedError(f"missing existing file for disk {d.target}: "
                                               f"{path}")
            elif path.exists():
                raise OperationFailedError(f"external snapshot file for disk {d.target} "
                                           f"already exists and is not a block device: {path}")
            if not path.parent.is_dir():
                raise OperationFailedError(f"directory '{path.parent}' for the overlay of disk "
                                           f"{d.target} does not exist")
        if self.plan.memory_file:
            mem = Path(self.plan.memory_file)
            if mem.exists():
                raise OperationFailedError(f"memory snapshot file '{mem}' already exists")
            if not mem.parent.is_dir():
                raise OperationFailedError(f"directory '{mem.parent}' for the memory "
                                           "snapshot does not exist")

    # -- helpers -----------------------------------------------------------------

    def external(self) -> list[DiskPlan]:
        return [d for d in self.plan.disks if d.snapshot == "external"]

    def internal(self) -> list[DiskPlan]:
        return [d for d in self.plan.disks if d.snapshot == "internal"]

    @property
    def monitor(self) -> qmp.Monitor:
        assert self.mon is not None, "online step without a monitor"
        return self.mon

    def _progress(self, phase: str, done: int, total: int, started: float) -> None:
        if self.progress is not None:
            elapsed = max(time.monotonic() - started, 1e-6)
            self.progress(Progress(phase, done, total, done / elapsed))

    # -- offline steps -------------------------------------------------------------

    async def qemu_img_snapshot(self) -> None:
        for d in self.internal():
            assert d.source is not None
            await qemuimg.snapshot_create(d.source, self.plan.name)
            self.undo.append(partial(qemuimg.snapshot_delete, d.source, self.plan.name))

    async def qemu_img_create(self) -> None:
        for d in self.external():
            assert d.file is not None and d.source is not None
            self.undo.append(partial(self._drop_overlay_file, d))
            await qemuimg.create(d.file, "qcow2", backing=d.source, backing_fmt=d.source_format)

    async def _drop_overlay_file(self, d: DiskPlan) -> None:
        if d.target not in self.switched and not self.plan.flags.reuse_ext:
            await _unlink(d.file or "")

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
        self.undo.append(self._restore_definition)
        self.dom.definition = self.before.with_disk_sources(
            {d.target: (d.file or "", "qcow2") for d in self.external()})
        self.dom.save_definition()

    async def _restore_definition(self) -> None:
        if self.switched:
            return  # QEMU writes to the overlays now: the new definition is the truth
        self.dom.definition = self.before
        self.dom.save_definition()

    # -- online steps ----------------------------------------------------------------

    async def create_overlays(self) -> None:
        await self.qemu_img_create()
        await self._add_overlay_nodes()

    async def _add_overlay_nodes(self) -> None:
        for d in self.external():
            fmt_node, file_node = overlay_nodes(d.target, d.file or "")
            await self.monitor.execute("blockdev-add", {
                "driver": "qcow2", "node-name": fmt_node, "backing": None,
                "file": {"driver": "file", "filename": d.file, "node-name": file_node}})
            self.undo.append(partial(self._drop_overlay_node, d, fmt_node))

    async def _drop_overlay_node(self, d: DiskPlan, node: str) -> None:
        if d.target not in self.switched:
            await self.monitor.execute("blockdev-del", {"node-name": node})

    async def pause(self) -> None:
        await self.monitor.execute("stop")
        self.undo.append(self._resume_if_paused)

    async def _resume_if_paused(self) -> None:
        status = await self.monitor.execute("query-status")
        if status["status"] != "running":
            await self.monitor.execute("cont")

    async def resume(self) -> None:
        await self.monitor.execute("cont")

    async def snapshot_save(self) -> None:
        devices = [self.nodes[d.target] for d in self.internal()]
        job = f"qdriver-save-{self.created}"
        started = time.monotonic()
        await qmp.run_job(self.monitor, "snapshot-save", {
            "tag": self.plan.name, "vmstate": devices[0], "devices": devices}, job,
            JOB_TIMEOUT, lambda cur, tot: self._progress("snapshot-save", cur, tot, started))
        self.undo.append(partial(qmp.run_job, self.monitor, "snapshot-delete", {
            "tag": self.plan.name, "devices": devices}, f"qdriver-undo-{self.created}", 60))

    async def hmp_savevm(self) -> None:
        out = await self.monitor.hmp(f"savevm {self.plan.name}", JOB_TIMEOUT)
        if out.strip():  # HMP reports errors as text, not as a QMP error
            raise OperationFailedError(f"savevm failed: {out.strip()}")
        self.undo.append(partial(self.monitor.hmp, f"delvm {self.plan.name}"))

    async def transaction_internal(self) -> None:
        """Internal disk snapshots only, taken before a migration inactivates the images."""
        await self._transaction(external=False, internal=True)

    async def transaction(self) -> None:
        internal_elsewhere = ("snapshot-save", "hmp-savevm", "transaction-internal")
        await self._transaction(external=True, internal=not any(
            s in self.plan.steps for s in internal_elsewhere))

    async def _transaction(self, external: bool, internal: bool) -> None:
        actions: list[dict[str, object]] = []
        for d in self.plan.disks:
            if d.snapshot == "external" and external:
                actions.append({"type": "blockdev-snapshot", "data": {
                    "node": self.nodes[d.target],
                    "overlay": overlay_nodes(d.target, d.file or "")[0]}})
            elif d.snapshot == "internal" and internal:
                actions.append({"type": "blockdev-snapshot-internal-sync", "data": {
                    "device": self.nodes[d.target], "name": self.plan.name}})
        await self.monitor.execute("transaction", {"actions": actions})
        # Once the overlays are the active layers the guest writes into them, so
        # the external part is not undone (that would need a block-commit).
        # Internal snapshots taken here are.
        for d in self.plan.disks:
            if d.snapshot == "external" and external:
                self.nodes[d.target] = overlay_nodes(d.target, d.file or "")[0]
                self.switched.add(d.target)
            elif d.snapshot == "internal" and internal:
                self.undo.append(partial(self.monitor.execute,
                                         "blockdev-snapshot-delete-internal-sync",
                                         {"device": self.nodes[d.target],
                                          "name": self.plan.name}))

    async def migrate_to_file(self) -> None:
        await self._migrate(background=False)

    async def migrate_live(self) -> None:
        self.undo.append(self._resume_if_paused)  # pre-copy ends with the guest paused
        await self._migrate(background=False)

    async def migrate_background(self) -> None:
        await self._migrate(background=True)

    async def _migrate(self, background: bool) -> None:
        path = self.plan.memory_file or ""
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        self.memory_fd = fd
        self.undo.append(partial(_unlink, path))
        was_running = self.plan.resume or "migrate-live" in self.plan.steps
        write_header(fd, self.before.to_xml(), "<cookie/>", was_running)
        await self._set_migration(background)
        try:
            with self.monitor.listener("MIGRATION") as events:
                await self.monitor.send_fd(fd, "qdriver-migrate")
                await self.monitor.execute("migrate", {"uri": "fd:qdriver-migrate"})
                await self._wait_migration(events)
        finally:
            if background:
                await self.monitor.execute("migrate-set-capabilities", {"capabilities": [
                    {"capability": "background-snapshot", "state": False}]})

    async def _set_migration(self, background: bool) -> None:
        await self.monitor.execute("migrate-set-capabilities", {"capabilities": [
            {"capability": "events", "state": True},
            {"capability": "background-snapshot", "state": background}]})
        await self.monitor.execute("migrate-set-parameters", {"max-bandwidth": MAX_BANDWIDTH})

    async def _wait_migration(self, events: EventListener) -> None:
        started = time.monotonic()
        while True:
            info = await self.monitor.execute("query-migrate")
            status = str(info.get("status"))
            ram = info.get("ram", {})
            if ram:
                self._progress("memory", int(ram.get("transferred", 0)),
                               int(ram.get("total", 0)), started)
            if status == "completed":
                return
            if status in ("failed", "cancelled"):
                raise OperationFailedError("saving the memory state failed: "
                                           f"{info.get('error-desc', status)}")
            with anyio.move_on_after(0.1):
                await events.get()

    async def agent_freeze(self) -> None:
        self.undo.append(self._thaw_if_frozen)
        await agent.fsfreeze(self._agent_path())
        self.frozen = True

    async def agent_thaw(self) -> None:
        await self._thaw_if_frozen()

    async def _thaw_if_frozen(self) -> None:
        if self.frozen:
            await agent.fsthaw(self._agent_path())
            self.frozen = False

    def _agent_path(self) -> Path:
        for i, chan in enumerate(self.dom.definition.channels):
            if chan.target_name == AGENT_CHANNEL:
                return Path(chan.path) if chan.path else self.dom.paths.channel(i)
        raise ConfigUnsupportedError("QEMU guest agent is not configured")

    async def halt(self) -> None:
        rec = self.dom._require_active()
        self.dom._update(rec, stop_requested="from snapshot")
        await process.terminate(rec.proc)

    async def write_metadata(self) -> None:
        await self._complete_memory_file()
        store = self.dom.snapshot_store()
        meta.add(store, store.load(), self.record())

    # -- the record ------------------------------------------------------------------

    def record(self) -> SnapshotDef:
        """The snapshot as it is stored: disks as taken, the domain as it was."""
        disks = [SnapshotDisk(d.target, d.snapshot, "file" if d.file else None, d.file,
                              "qcow2" if d.file else None) for d in self.plan.disks]
        return replace(self.plan.definition, disks=disks, creation_time=self.created,
                       domain=self.before.root_copy(), parent=None, active=False)


async def _unlink(path: str) -> None:
    Path(path).unlink(missing_ok=True)


async def top_nodes(mon: qmp.Monitor) -> dict[str, str]:
    """The active (top) block node of each disk, by target name."""
    nodes: dict[str, str] = {}
    for dev in await mon.execute("query-block"):
        inserted = dev.get("inserted")
        qdev = str(dev.get("qdev", ""))
        if inserted:
            for part in qdev.split("/"):
                if part:
                    nodes.setdefault(part, inserted["node-name"])
    return nodes


STEPS: dict[str, Callable[[Execution], Awaitable[None]]] = {
    "qemu-img-snapshot": Execution.qemu_img_snapshot,
    "qemu-img-create": Execution.qemu_img_create,
    "check-reused-overlays": Execution.check_reused_overlays,
    "switch-definition": Execution.switch_definition,
    "create-overlays": Execution.create_overlays,
    "pause": Execution.pause,
    "resume": Execution.resume,
    "snapshot-save": Execution.snapshot_save,
    "hmp-savevm": Execution.hmp_savevm,
    "transaction": Execution.transaction,
    "transaction-internal": Execution.transaction_internal,
    "migrate-to-file": Execution.migrate_to_file,
    "migrate-live": Execution.migrate_live,
    "migrate-background": Execution.migrate_background,
    "agent-freeze": Execution.agent_freeze,
    "agent-thaw": Execution.agent_thaw,
    "halt": Execution.halt,
    "write-metadata": Execution.write_metadata,
}
