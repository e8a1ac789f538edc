"""Start, pause, resume and power off a domain's guest, in a job.

Each operation records what it must take back (a QEMU it started) before it
acts, through the same `Transaction` the snapshot operations use.
"""
from __future__ import annotations

import time
from functools import partial

import anyio

from .. import agent, process, qmp, runstatus
from ..durable import locked
from ..errors import (
    ArgumentUnsupportedError,
    DomainBusyError,
    OperationInvalidError,
    ShutdownTimeoutError,
)
from ..events.kinds import EventType
from ..job import Job
from ..launch.runtime import Runtime
from ..paths import DomainPaths
from ..runstatus import DomainState
from ..testing import faults
from . import actions
from .transaction import Transaction


async def boot(job: Job, paused: bool = False) -> None:
    """Launch QEMU and boot the guest (a managed save image, if any, is discarded)."""
    if job.record is not None:
        raise OperationInvalidError("domain is already running")
    job.paths.managed_save.unlink(missing_ok=True)
    txn = Transaction(job, "start")

    async def launch() -> None:
        txn.on_undo(actions.stop_qemu("failed", "the QEMU being started"))
        await job.launch(paused)
    await txn.attempt(launch)
    for type_, detail in BOOT_EVENTS[paused]:
        job.emit(type_, detail)


BOOT_EVENTS = {
    False: ((EventType.RESUMED, "unpaused"), (EventType.STARTED, "booted")),
    True: ((EventType.STARTED, "booted"), (EventType.SUSPENDED, "paused")),
}
"""The events of a start, running or paused, in libvirt's order (its ``cont`` is seen
before its start job ends)."""


async def reset(job: Job) -> None:
    """The guest's reset button (``virsh reset``): QEMU's ``system_reset``; the guest
    boots again in the same QEMU, paused or running as it was."""
    job.require_active()
    await (await job.monitor()).execute("system_reset")


REBOOT_MODES = ("acpi", "agent")


async def reboot(job: Job, mode: str, timeout: float) -> None:
    """``virsh reboot``: the guest restarts in the same QEMU.  ``acpi``: its power
    button, and once it has powered off, QEMU (told to pause rather than exit)
    resets it and runs it again; ``agent``: the guest agent's ``guest-shutdown``
    in mode reboot.

    :raise ShutdownTimeoutError: the guest did not power off within ``timeout`` s.
    :raise ArgumentUnsupportedError: an unknown mode, or no agent for ``agent``.
    """
    if mode not in REBOOT_MODES:
        raise ArgumentUnsupportedError(f"unknown reboot mode '{mode}'")
    job.require_active()
    if mode == "agent":
        await agent.execute(agent.require_socket(job.definition, job.paths), "guest-shutdown",
                            timeout, {"mode": "reboot"})
        return
    mon = await job.monitor()
    after = "pause" if job.definition.on_poweroff == "preserve" else "poweroff"
    await mon.execute("set-action", {"shutdown": "pause"})
    try:
        await mon.execute("system_powerdown")
        with anyio.move_on_after(timeout):
            while (await runstatus.query(mon)).qmp != "shutdown":
                await anyio.sleep(0.05)
        if (await runstatus.query(mon)).qmp != "shutdown":
            raise ShutdownTimeoutError(
                f"domain '{job.name}' did not power off to reboot within {timeout:g} s")
        await mon.execute("system_reset")
        await job.vcpus(True, "")
    finally:
        await mon.execute("set-action", {"shutdown": after})


async def suspend(job: Job) -> None:
    """Pause the guest's vCPUs (``virsh suspend``)."""
    job.require_active()
    await job.vcpus(False)


async def resume(job: Job) -> None:
    """Resume a paused guest (``virsh resume``)."""
    job.require_active()
    if (await job.run_status()).running:
        raise OperationInvalidError("domain is already running")
    await job.vcpus(True)


async def shutdown(job: Job, timeout: float, escalate: bool) -> bool:
    """ACPI power-down; wait up to ``timeout`` s, then destroy if ``escalate``.
    True if the guest powered off by itself."""
    job.require_active()
    txn = Transaction(job, "shutdown", journal_optional=True)
    return await txn.attempt(partial(_power_down, job, timeout, escalate))


async def _power_down(job: Job, timeout: float, escalate: bool) -> bool:
    """Nothing to undo, but the journal shows the shutdown going on."""
    rec = job.require_active()
    job.update_record(stop_requested="shutdown")
    await (await job.monitor()).execute("system_powerdown")
    if timeout <= 0:
        return False  # the button pressed, as libvirt's virDomainShutdown returns
    faults.point("shutdown:waiting")
    if await process.wait_exit(rec.proc, timeout):
        await job.sync_run_state()  # QEMU is gone: reaped, the persistent definition back
        return True
    if not escalate:
        job.update_record(stop_requested=None)
        raise ShutdownTimeoutError(
            f"domain '{job.name}' did not shut down within {timeout:g} s")
    await job.stop("destroyed")
    return False


EXIT_WAIT = 5.0
"""How long a state query waits for a QEMU that has removed its sockets to exit."""


async def queried_state(paths: DomainPaths, runtime: Runtime,
                        name: str) -> tuple[DomainState, str]:
    """The state asked from QEMU itself (it sees guest-initiated pauses), without
    waiting for the lock: a QEMU found dead is reaped only if the lock is free at
    once; if an operation holds it, that operation will."""
    if runtime.peek() is not None:
        try:
            async with qmp.open_monitor(paths.qmp_query) as mon:
                status = await runstatus.query(mon)
            rec = runtime.peek()  # QEMU's plain pause: the record says why (migrated)
            if status.reason == "user" and rec is not None and rec.paused:
                return status.state, rec.reason
            return status.state, status.reason
        except (qmp.MonitorConnectError, qmp.MonitorClosedError):
            if await _still_running(paths, runtime):
                raise
    reason = await runtime.settled_reason()
    if paths.runtime.exists():
        try:
            async with locked(paths.lock, 0, f"domain '{name}'", create_dir=False):
                await runtime.reconcile()
        except (DomainBusyError, FileNotFoundError):
            pass  # the operation holding the lock reaps it
    return DomainState.SHUTOFF, reason


async def _still_running(paths: DomainPaths, runtime: Runtime) -> bool:
    """After a failed connect: whether QEMU still runs.  QEMU removes its sockets as it
    exits, so one whose socket is gone gets a moment to finish exiting (and its
    supervisor to record how)."""
    deadline = time.monotonic() + EXIT_WAIT
    while (rec := runtime.peek()) is not None and not paths.qmp_query.exists():
        if time.monotonic() > deadline:
            break
        await process.wait_exit(rec.proc, 0.05)
        await anyio.sleep(0.02)
    return runtime.peek() is not None


async def set_current(job: Job, name: str) -> None:
    """Make ``name`` the current snapshot (``snapshot-current DOM NAME``): all the
    metadata files it rewrites, or, even if this process dies half-way, none."""
    txn = Transaction(job, "snapshot-current")

    async def change() -> None:
        txn.on_undo(actions.restore_dir(job.store.dir, "the snapshot metadata"))
        faults.point("snapshot-current:writing")
        job.store.set_current(job.tree, name)
    await txn.attempt(change)


__all__ = ["boot", "suspend", "resume", "shutdown", "queried_state", "set_current"]
