"""The source's side of a migration (``virsh migrate``'s meanings, no daemon).

In the domain's job: run the destination's qdriver (`uri.Destination`) and ask
it to prepare; mirror the copied disks into its NBD exports until they are in
step (``blockdev-mirror``, READY); migrate RAM and devices straight to its QEMU;
complete the mirrors; ask the destination to finish (it resumes the guest); then
stop the source's QEMU (and with ``undefine_source`` forget the domain).  Until
the destination answers ``finish`` every step is taken back on failure or
cancel: the migration cancelled, the mirrors cancelled and their NBD nodes
removed, the guest resumed if it ran; the destination discards what it made when
the channel closes.  Undos are journaled, so a killed process is rolled back by
the next command on the domain.
"""
from __future__ import annotations

import contextlib
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import anyio
from anyio.abc import Process

from ..errors import (
    InvalidArgError,
    OperationAbortedError,
    OperationFailedError,
    OperationInvalidError,
)
from ..job import Job
from ..launch.cmdline import format_node
from ..ops import actions
from ..ops.transaction import Transaction
from ..progress import ProgressFn, ProgressMeter
from ..qmp import Monitor
from .channel import Channel
from .tls import CREDS as TLS_CREDS
from .tls import PSK_DIR, cert_dir, new_psk, psk_creds, remove_psk, write_psk
from .tls import check as check_certs
from .tls import creds as tls_creds
from .uri import Destination, forward_argv

POLL = 0.05
DEFAULT_BANDWIDTH = 1 << 50
"""QEMU's own default caps migration at 128 MiB/s; as libvirt, qdriver lifts it."""
MIGRATED = "migrated"
"""The source QEMU's end, as ``domstate --reason`` and the events say it."""


@dataclass(frozen=True)
class MigrateFlags:
    """``virsh migrate``'s options that qdriver honours."""

    live: bool = False
    persistent: bool = False
    undefine_source: bool = False
    copy_storage: str | None = None
    """``all`` (every writable disk, whole) or ``inc`` (its top image only: the
    destination has the backing images at the same paths)."""
    parallel: int = 0
    """Migration connections (multifd); 0: one."""
    auto_converge: bool = False
    timeout: float | None = None
    """Seconds of live migration after which the guest is paused to finish."""
    dest_xml: str | None = None
    suspend: bool = False
    """Leave the guest paused on the destination."""
    bandwidth: int = 0
    """MiB/s for memory and for each disk copy; 0: as fast as it goes."""
    tls: bool = False
    """Memory and disks over TLS, with certificates as libvirt keeps them
    (`tls.TLS_FILES`): here from ``tls_dir``, there from the URI's ``tls_dir``."""
    tls_dir: str | None = None
    tunnelled: bool = False
    """Memory and disks through the ssh connection's forwarding of private UNIX
    sockets, not over a TCP port of the destination."""


@dataclass
class MigrateReport:
    """The final numbers: QEMU's own figures."""

    total_ms: int = 0
    downtime_ms: int = 0
    ram_bytes: int = 0
    disk_bytes: int = 0
    paused_for_timeout: bool = False
    """``timeout`` passed: the guest was paused so that the migration ended."""
    destination: dict[str, Any] = field(default_factory=dict)


ABORT_FILE = "abort-job"
"""In the domain's directory: ``domjobabort``'s request to the process that migrates
the domain (which holds the lock) to stop."""


def abort_file(job: Job) -> Path:
    return job.paths.dir / ABORT_FILE


class Migration:
    """One outgoing migration, in the domain's job."""

    op = "migrate"

    def __init__(self, job: Job, dest: Destination, flags: MigrateFlags,
                 progress: ProgressFn | None) -> None:
        self.job, self.dest, self.flags, self.progress = job, dest, flags, progress
        self.txn = Transaction(job, self.op)
        self.report = MigrateReport()
        self.copied: dict[str, dict[str, Any]] = {}
        self.mirrors: list[str] = []
        self.was_running = False
        self.started = time.monotonic()
        self.meters: dict[str, ProgressMeter] = {}
        self.dest_ended: Callable[[], bool] = lambda: False
        self.stack = contextlib.AsyncExitStack()
        """What lives as long as the migration: the destination's command, a tunnel."""

    @property
    def secured_by_psk(self) -> bool:
        """The default: TCP between the two QEMUs, TLS with a key of this migration's
        own (x509 with ``--tls``; ssh itself with ``--tunnelled``)."""
        return not self.flags.tls and not self.flags.tunnelled

    def _check_abort(self) -> None:
        """Stop if ``domjobabort`` asked, or the destination's side is gone."""
        if abort_file(self.job).exists():
            raise OperationAbortedError("migration job: canceled by client")
        if self.dest_ended():
            raise OperationFailedError("the destination closed the migration channel: its "
                                       "qdriver ended during the migration")

    async def run(self) -> MigrateReport:
        job = self.job
        job.require_active()
        if job.definition.loader is not None:
            raise InvalidArgError("migrating a UEFI guest (its variable store) is not "
                                  "supported yet")
        snapshots = len(job.tree.names())
        if snapshots:  # libvirt's refusal: their files would not follow
            raise OperationInvalidError(f"cannot migrate domain with {snapshots} snapshots")
        if job.definition.filesystems:
            raise InvalidArgError("a guest with host folders (<filesystem>) cannot migrate: "
                                  "QEMU does not migrate their state")
        abort_file(job).unlink(missing_ok=True)
        try:
            await self._run()
        finally:  # an abort asked or not, it is answered
            abort_file(job).unlink(missing_ok=True)
        return self.report

    async def _run(self) -> None:
        self.was_running = (await self.job.run_status()).running
        mon = await self.job.monitor()
        self.copied = await self._copied_disks(mon)
        async with self.stack, await anyio.open_process(
                self.dest.argv(), stdin=subprocess.PIPE, stdout=subprocess.PIPE) as proc:
            assert proc.stdin is not None and proc.stdout is not None
            channel = Channel(proc.stdout, proc.stdin, "the destination")
            self.dest_ended = lambda: proc.returncode is not None
            try:
                await self.txn.attempt(lambda: self._migrate(mon, channel))
            finally:
                with anyio.CancelScope(shield=True):
                    await proc.stdin.aclose()
                    with anyio.move_on_after(30):
                        await proc.wait()
                    if proc.returncode is None:
                        proc.kill()

    async def _copied_disks(self, mon: Monitor) -> dict[str, dict[str, Any]]:
        """The disks to copy (writable, with an image) and what the destination needs
        to make their images: the virtual size, an incremental copy's backing."""
        if not self.flags.copy_storage:
            return {}
        nodes = {n["node-name"]: n for n in await mon.execute(
            "query-named-block-nodes", {"flat": True})}
        out = {}
        for disk in self.job.definition.disks:
            if disk.readonly or not disk.source:
                continue
            node = nodes.get(format_node(disk.target))
            if node is None:
                raise OperationFailedError(f"disk '{disk.target}' has no image node to copy")
            spec: dict[str, Any] = {"size": node["image"]["virtual-size"]}
            backing = node["image"].get("backing-filename")  # the header's, as qdriver read it
            if self.flags.copy_storage == "inc" and backing:
                spec["backing"] = [backing, node["image"].get("backing-filename-format",
                                                              "qcow2")]
            out[disk.target] = spec
        return out

    async def _migrate(self, mon: Monitor, channel: Channel) -> None:
        request = {"op": "prepare", "xml": self.job.definition.to_xml(),
                   "dest_xml": self.flags.dest_xml, "copy": self.copied,
                   "address": self.dest.address, "parallel": self.flags.parallel,
                   "tls": self.flags.tls, "tls_dir": self.dest.tls_dir,
                   "tunnelled": self.flags.tunnelled}
        tls_dir = cert_dir(self.flags.tls_dir) if self.flags.tls else None
        if tls_dir is not None:
            check_certs(tls_dir, "client")
        psk = new_psk() if self.secured_by_psk else None
        request["psk"] = psk
        target = await channel.call(request)
        if self.flags.tunnelled and self.dest.host is not None:
            target = await self._tunnel(target)
        self._check_abort()
        if tls_dir is not None or psk is not None:
            self.txn.on_undo(actions.qmp_command("TLS credentials", "object-del",
                                                 {"id": TLS_CREDS}))
        if tls_dir is not None:
            await mon.execute("object-add", tls_creds(tls_dir, "client"))
        elif psk is not None:
            keys = self.job.paths.sockets / PSK_DIR
            write_psk(keys, psk, self.job.policy.qemu_user)
            try:
                await mon.execute("object-add", psk_creds(keys, "client"))
            finally:  # the client keeps the key it loaded; the file goes at once
                remove_psk(keys)
        await self._capabilities(mon)
        if self.was_running and not self.flags.live:
            self.txn.on_undo(actions.resume_guest())
            await self.job.vcpus(False, MIGRATED, MIGRATED)
        try:
            await self._mirror(mon, target.get("nbd") or {})
            self.txn.on_undo(actions.cancel_migration())
            await mon.execute("migrate", {"uri": target["uri"]})
            await self._wait_migration(mon)
            await self._complete_mirrors(mon)
        except BaseException:
            with anyio.CancelScope(shield=True):
                await self._take_back(mon)
            raise
        self.report.destination = await channel.call({
            "op": "finish", "running": self.was_running and not self.flags.suspend})
        self.txn.commit([actions.stop_qemu(MIGRATED)])  # the guest runs there now
        await self.job.stop(MIGRATED)

    async def _tunnel(self, target: dict[str, Any]) -> dict[str, Any]:
        """Forward the destination's sockets to sockets of our own through ssh (a
        process that lives as long as the migration); the target through them."""
        sockets = self.job.paths.sockets
        pairs = [(str(sockets / "migrate-out.sock"), target["uri"][len("unix:"):])]
        nbd = target.get("nbd")
        if nbd:
            pairs.append((str(sockets / "nbd-out.sock"), nbd["path"]))
        forwarder = await self.stack.enter_async_context(
            await anyio.open_process(forward_argv(self.dest, pairs),
                                     stdin=subprocess.DEVNULL))
        for local, _ in pairs:  # ssh leaves its listening sockets behind
            self.stack.callback(Path(local).unlink, missing_ok=True)
        self.stack.callback(_kill, forwarder)  # it forwards until killed
        deadline = time.monotonic() + 15
        while not all(Path(local).exists() for local, _ in pairs):
            if forwarder.returncode is not None or time.monotonic() > deadline:
                raise OperationFailedError("ssh does not forward the migration's sockets "
                                           "(does the destination's sshd allow "
                                           "StreamLocalForwarding?)")
            await anyio.sleep(0.02)
        tunnelled = {"uri": f"unix:{pairs[0][0]}"}
        return tunnelled | ({"nbd": {"type": "unix", "path": pairs[1][0]}} if nbd else {})

    async def _capabilities(self, mon: Monitor) -> None:
        f = self.flags
        await mon.execute("migrate-set-capabilities", {"capabilities": [
            {"capability": "auto-converge", "state": f.auto_converge},
            {"capability": "multifd", "state": bool(f.parallel)}]})
        params: dict[str, Any] = {"max-bandwidth": f.bandwidth << 20 if f.bandwidth
                                  else DEFAULT_BANDWIDTH}
        if f.tls or self.secured_by_psk:
            self.txn.on_undo(actions.qmp_command("migration over TLS", "migrate-set-parameters",
                                                 {"tls-creds": ""}))
            params |= {"tls-creds": TLS_CREDS, "tls-hostname": self.dest.address}
        if f.parallel:
            params["multifd-channels"] = f.parallel
        await mon.execute("migrate-set-parameters", params)

    async def _mirror(self, mon: Monitor, nbd: dict[str, Any]) -> None:
        """Each copied disk mirrored into the destination's export, until all are in
        step with the guest's writes (READY)."""
        for target in self.copied:
            node = f"mig-{target}"
            self.txn.on_undo(actions.qmp_command(f"NBD node of disk {target}", "blockdev-del",
                                                 {"node-name": node}))
            secure = {"tls-creds": TLS_CREDS, "tls-hostname": self.dest.address} \
                if self.flags.tls or self.secured_by_psk else {}
            await mon.execute("blockdev-add", {
                "driver": "nbd", "node-name": node, "export": target, "server": nbd,
                **secure})
            self.txn.on_undo(actions.qmp_command(f"mirror of disk {target}", "block-job-cancel",
                                                 {"device": node, "force": True}))
            await mon.execute("blockdev-mirror", {
                "job-id": node, "device": format_node(target), "target": node,
                "sync": "top" if self.flags.copy_storage == "inc" else "full",
                "speed": self.flags.bandwidth << 20})
            self.mirrors.append(node)
        while self.mirrors:
            jobs = {j["device"]: j for j in await mon.execute("query-block-jobs")}
            missing = [m for m in self.mirrors if m not in jobs]
            if missing:
                raise OperationFailedError(f"the mirror of disk {missing[0][4:]} ended before "
                                           "it was in step (the destination's disk is full, "
                                           "or it went away)")
            done = sum(jobs[m]["offset"] for m in self.mirrors)
            total = sum(max(jobs[m]["len"], 1) for m in self.mirrors)
            self._progress("copying disks", done, total)
            if all(jobs[m].get("ready") for m in self.mirrors):
                return
            self._check_abort()
            await anyio.sleep(POLL)

    async def _wait_migration(self, mon: Monitor) -> None:
        """Follow the migration to its end; past ``timeout`` pause the guest so that
        it ends (virsh's default action)."""
        while True:
            info = await mon.execute("query-migrate")
            status = info.get("status")
            ram = info.get("ram") or {}
            if status == "completed":
                self.report.total_ms = int(info.get("total-time", 0))
                self.report.downtime_ms = int(info.get("downtime", 0))
                self.report.ram_bytes = int(ram.get("transferred", 0))
                return
            if status in ("failed", "cancelled"):
                raise OperationFailedError(f"migration {status}: "
                                           f"{info.get('error-desc', 'no reason given')}")
            self._progress("migrating memory", int(ram.get("transferred", 0)),
                           int(ram.get("total", 0)) or 1)
            self._check_abort()
            timeout = self.flags.timeout
            if timeout and time.monotonic() - self.started > timeout and \
                    (await self.job.run_status()).running:
                await self.job.vcpus(False, MIGRATED, MIGRATED)
                self.report.paused_for_timeout = True
            await anyio.sleep(POLL)

    async def _complete_mirrors(self, mon: Monitor) -> None:
        """The guest is stopped with everything written: end each mirror without
        switching to its target (cancelling a READY mirror completes it)."""
        jobs = {j["device"]: j for j in await mon.execute("query-block-jobs")}
        self.report.disk_bytes = sum(int(jobs[m]["offset"]) for m in self.mirrors if m in jobs)
        for node in self.mirrors:
            await mon.execute("block-job-cancel", {"device": node})
        await self._jobs_gone(mon)
        for node in self.mirrors:
            await mon.execute("blockdev-del", {"node-name": node})
        self.mirrors = []

    async def _jobs_gone(self, mon: Monitor) -> None:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            jobs = {j["device"] for j in await mon.execute("query-block-jobs")}
            if not jobs & set(self.mirrors):
                return
            await anyio.sleep(0.01)

    async def _take_back(self, mon: Monitor) -> None:
        """Cancel the migration and the mirrors, remove the NBD nodes (the journaled
        undos then find nothing left to do)."""
        with contextlib.suppress(Exception):
            if (await mon.execute("query-migrate")).get("status") not in (
                    None, "none", "completed", "failed", "cancelled"):
                await mon.execute("migrate_cancel")
        for node in self.mirrors:
            with contextlib.suppress(Exception):
                await mon.execute("block-job-cancel", {"device": node, "force": True})
        with contextlib.suppress(Exception):
            await self._jobs_gone(mon)
        for target in self.copied:
            with contextlib.suppress(Exception):
                await mon.execute("blockdev-del", {"node-name": f"mig-{target}"})
        self.mirrors = []

    def _progress(self, phase: str, done: int, total: int) -> None:
        meter = self.meters.setdefault(phase, ProgressMeter(phase, self.progress))
        meter(min(done, total), total)


def _kill(proc: Process) -> None:
    with contextlib.suppress(ProcessLookupError):
        proc.kill()


async def migrate(job: Job, dest: Destination, flags: MigrateFlags,
                  progress: ProgressFn | None = None) -> MigrateReport:
    """Move the running guest of ``job`` to ``dest``; the report's numbers."""
    if flags.copy_storage not in (None, "all", "inc"):
        raise InvalidArgError(f"unknown storage copy mode '{flags.copy_storage}'")
    return await Migration(job, dest, flags, progress).run()


__all__ = ["ABORT_FILE", "MigrateFlags", "MigrateReport", "Migration", "abort_file", "migrate"]
