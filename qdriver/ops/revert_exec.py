"""Carry out a revert plan, with the domain lock held.

Reverting discards the current state by definition: a stopped QEMU and
images set back with ``qemu-img snapshot -a`` are not undone.  What is
undone if a later step fails is what would leave a lie behind: the
definition is put back and a QEMU started for the revert is stopped, so the
domain ends shut off with the definition it had, and the current snapshot
is left as it was.
"""
from __future__ import annotations

import time
from contextlib import AsyncExitStack
from functools import partial
from typing import Awaitable, Callable

from .. import domstate, qemuimg, qmp
from .. import snapshot_tree as meta
from ..errors import OperationFailedError
from ..launch import start_qemu
from ..opcontext import OpContext
from .blocknodes import top_nodes
from .create_exec import JOB_TIMEOUT
from .progress import ProgressFn, ProgressMeter
from .revert_plan import RevertPlan, RevertStep
from .transaction import StepRunner, Transaction


class RevertExecution:
    """One revert in progress."""

    def __init__(self, ctx: OpContext, plan: RevertPlan, next_id: Callable[[], int],
                 progress: ProgressFn | None = None) -> None:
        self.ctx = ctx
        self.plan = plan
        self.next_id = next_id
        self.progress = progress
        self.txn = Transaction()
        self.before = ctx.definition
        self.sources = {d.target: d.source or "" for d in plan.definition.disks}
        """The snapshot-time images, by target."""
        self.mon: qmp.Monitor | None = None
        self.stack = AsyncExitStack()

    async def run(self) -> None:
        """Do every step; undo what would leave a lie and re-raise on failure."""
        async with self.stack:
            table = {step: partial(method, self) for step, method in STEPS.items()}
            await self.txn.attempt(partial(StepRunner(table).run, self.plan.steps))
            if self.ctx.record is not None and self.mon is not None:
                await self.ctx.sync_run_state(self.mon)

    async def monitor(self) -> qmp.Monitor:
        """The monitor of the QEMU that runs now (reopened after a restart)."""
        if self.mon is None:
            self.mon = await self.stack.enter_async_context(qmp.open_monitor(self.ctx.paths.qmp))
        return self.mon

    # -- steps -------------------------------------------------------------------------

    async def stop(self) -> None:
        if self.mon is not None:
            await qmp.close(self.mon)
            self.mon = None
        await self.ctx.stop("from snapshot")

    async def qemu_img_apply(self) -> None:
        for target in self.plan.internal_disks:
            await qemuimg.snapshot_apply(self.sources[target], self.plan.name)

    async def switch_definition(self) -> None:
        self.txn.on_undo("the domain definition", self._restore_definition)
        self.ctx.save_definition(self.plan.definition)

    async def _restore_definition(self) -> None:
        self.ctx.save_definition(self.before)

    async def start_paused(self) -> None:
        self.txn.on_undo("the QEMU started for the revert", self._stop_started)
        await start_qemu(self.ctx, self.next_id, paused=True)

    async def _stop_started(self) -> None:
        if self.ctx.record is not None:
            await self.stop()

    async def pause(self) -> None:
        await (await self.monitor()).execute("stop")
        self.txn.on_undo("the guest pause", self.resume)

    async def snapshot_load(self) -> None:
        mon = await self.monitor()
        nodes = await top_nodes(mon)
        devices = [nodes[t] for t in self.plan.internal_disks]
        vmstate = await self._vmstate_node(nodes)
        await qmp.run_job(mon, "snapshot-load", {
            "tag": self.plan.name, "vmstate": vmstate, "devices": devices},
            f"qdriver-load-{int(time.time())}", JOB_TIMEOUT,
            ProgressMeter("snapshot-load", self.progress))

    async def _vmstate_node(self, nodes: dict[str, str]) -> str:
        """The node whose image holds the snapshot's memory (as libvirt finds it)."""
        holders = []
        for target in self.plan.internal_disks:
            infos = await qemuimg.snapshot_list(self.sources[target])
            if any(s.name == self.plan.name and s.vm_state_size > 0 for s in infos):
                holders.append(target)
        if len(holders) != 1:
            raise OperationFailedError(
                f"missing vmstate section when reverting active internal snapshot "
                f"'{self.plan.name}'" if not holders else
                f"two disks images contain vm state section for internal snapshot "
                f"'{self.plan.name}'")
        return nodes[holders[0]]

    async def hmp_loadvm(self) -> None:
        out = await (await self.monitor()).hmp(f"loadvm {self.plan.name}", JOB_TIMEOUT)
        if out.strip():  # HMP reports errors as text, not as a QMP error
            raise OperationFailedError(f"loadvm failed: {out.strip()}")

    async def resume(self) -> None:
        mon = await self.monitor()
        if not (await domstate.query(mon)).running:
            await mon.execute("cont")

    async def set_current(self) -> None:
        store = self.ctx.snapshot_store()
        meta.set_current(store, store.load(), self.plan.name)


StepMethod = Callable[[RevertExecution], Awaitable[None]]
STEPS: dict[RevertStep, StepMethod] = {
    RevertStep.STOP: RevertExecution.stop,
    RevertStep.QEMU_IMG_APPLY: RevertExecution.qemu_img_apply,
    RevertStep.SWITCH_DEFINITION: RevertExecution.switch_definition,
    RevertStep.START_PAUSED: RevertExecution.start_paused,
    RevertStep.PAUSE: RevertExecution.pause,
    RevertStep.SNAPSHOT_LOAD: RevertExecution.snapshot_load,
    RevertStep.HMP_LOADVM: RevertExecution.hmp_loadvm,
    RevertStep.RESUME: RevertExecution.resume,
    RevertStep.SET_CURRENT: RevertExecution.set_current,
}

__all__ = ["RevertExecution", "STEPS"]
