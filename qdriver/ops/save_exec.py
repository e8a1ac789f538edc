"""``virsh save``: the guest's memory to a file, then its QEMU stops.

A save is planned like a memory-only snapshot that halts (`plan_snapshot`
with HALT and no metadata: the disks are not snapshotted, a restore needs
them unchanged), and carried out here: leave ``postmigrate`` if an earlier
save left QEMU there, pause a running guest, migrate its memory into a new
file, then complete the file and stop QEMU, the point of no return.
"""
from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Awaitable, Callable

import anyio

from ..errors import InternalError
from ..job import Job
from ..progress import ProgressFn
from ..xml.snapshot import SnapshotDef, SnapshotDisk
from . import actions
from .create_plan import CreateFlags, CreatePlan, CreateStep, plan_snapshot
from .memsave import MemoryFile, check_place
from .transaction import StepRunner, Transaction

HALT_REASON = "saved"
"""What ``domstate --reason`` says after a save."""


async def save(job: Job, path: str, running: bool = False, paused: bool = False,
               progress: ProgressFn | None = None) -> None:
    """Save the running guest to ``path`` and stop it; ``running``/``paused`` choose
    the state a restore goes back to (default: the state now)."""
    job.require_active()
    request = SnapshotDef(name="save", memory="external", memory_file=path,
                          disks=[SnapshotDisk(d.target, "no") for d in job.definition.disks])
    state, caps = await job.abilities()
    plan = plan_snapshot(job.definition, state, request,
                         CreateFlags(halt=True, no_metadata=True), caps)
    back_running = running or (state == "running" and not paused)
    await SaveExecution(job, plan, back_running, progress).run()


class SaveExecution:
    """One save in progress."""

    op = "save"

    def __init__(self, job: Job, plan: CreatePlan, back_running: bool,
                 progress: ProgressFn | None = None) -> None:
        self.job = job
        self.plan = plan
        self.back_running = back_running
        """The memory file header's "was running": the state a restore goes back to."""
        self.progress = progress
        self.txn = Transaction(job, self.op)
        self.memory = MemoryFile(self.txn, plan.memory_file or "")
        unknown = set(plan.steps) - set(STEPS)
        if unknown:
            raise InternalError(f"a save cannot carry out {sorted(s.value for s in unknown)}")

    async def run(self) -> None:
        """Do every step; roll back and re-raise on the first failure."""
        check_place(Path(self.memory.path), self.job.paths.state_dir,
                    self.job.paths.managed_save)
        table = {step: partial(method, self) for step, method in STEPS.items()}
        try:
            await self.txn.attempt(partial(StepRunner(table, self.op).run, self.plan.steps))
        finally:
            self.memory.close()
            with anyio.CancelScope(shield=True):
                await self.job.sync_run_state()

    async def leave_postmigrate(self) -> None:
        await self.job.leave_postmigrate()

    async def pause(self) -> None:
        self.txn.on_undo(actions.resume_guest())
        await self.job.vcpus(False)

    async def migrate_to_file(self) -> None:
        await self.memory.write(await self.job.monitor(), self.job.definition,
                                self.back_running, background=False, resume=False,
                                progress=self.progress)

    async def halt(self) -> None:
        """Complete the file, then stop QEMU: the point of no return."""
        await self.memory.complete()
        self.txn.commit([actions.stop_qemu(HALT_REASON)])
        await self.job.stop(HALT_REASON)


StepMethod = Callable[[SaveExecution], Awaitable[None]]
STEPS: dict[CreateStep, StepMethod] = {
    CreateStep.LEAVE_POSTMIGRATE: SaveExecution.leave_postmigrate,
    CreateStep.PAUSE: SaveExecution.pause,
    CreateStep.MIGRATE_TO_FILE: SaveExecution.migrate_to_file,
    CreateStep.HALT: SaveExecution.halt,
}

__all__ = ["save", "SaveExecution", "STEPS", "HALT_REASON"]
