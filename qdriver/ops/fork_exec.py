"""Carry out a fork: every new domain defined on overlays of its own, then all
started side by side; all of them or none.

The source domain's job holds its lock throughout (its snapshot and files stay
as planned), and its journal holds the whole fork: each fork's overlays are
recorded for removal before they are made, and the fork itself (by name and
the uuid it is defined with) before it is defined.  A failure, or a process
killed at any point, takes back every fork (its QEMU stopped, its domain
removed) and its overlays; once all run, the journal lets them go.  Each new
domain starts like a restore of the snapshot's memory, in a job of its own:
the caller's ``start`` (`revert_exec.restore`, which this module may not import).
"""
from __future__ import annotations

import uuid as uuidlib
from functools import partial
from typing import Awaitable, Callable, TypeVar

from .. import qemuimg, runas
from ..errors import OperationFailedError
from ..job import Job, JobView
from ..parallel import side_by_side
from . import actions
from .fork_plan import ForkPlan, plan_fork
from .memsave import check_not_owned
from .transaction import Transaction

D = TypeVar("D")
"""The caller's handle of a new domain."""


def plan(job: JobView, snapshot: str, names: list[str], taken: set[str]) -> ForkPlan:
    """What forking ``snapshot`` of the job's domain into ``names`` would do."""
    return plan_fork(job.tree.get(snapshot), names, taken)


async def fork(job: Job, the_plan: ForkPlan, define: Callable[[str], Awaitable[D]],
               start: Callable[[D], Awaitable[None]]) -> list[D]:
    """Define every fork (``define``: domain XML to handle), then ``start`` them side
    by side; on any failure none is left.

    :raise QDriverError: what stopped a fork; every fork is taken back first.
    """
    txn = Transaction(job, "fork")

    async def body() -> list[D]:
        made = [await _define_one(txn, job, the_plan, name, define) for name in the_plan.names]
        await side_by_side(*(partial(start, new) for new in made))
        txn.discard(*txn.entries)  # all run: their domains and overlays are theirs now
        return made
    return await txn.attempt(body)


async def _define_one(txn: Transaction, job: Job, the_plan: ForkPlan, name: str,
                      define: Callable[[str], Awaitable[D]]) -> D:
    """A fork's overlays, then its definition (which names them from then on)."""
    sources = await create_overlays(txn, job, the_plan, name)
    uuid = str(uuidlib.uuid4())
    txn.on_undo(actions.discard_fork(name, uuid))
    return await define(the_plan.definition.forked(name, sources, uuid).to_xml())


async def create_overlays(txn: Transaction, job: Job, the_plan: ForkPlan,
                          name: str) -> dict[str, tuple[str, str]]:
    """Fork ``name``'s new overlays, ``{target: (file, format)}``."""
    sources: dict[str, tuple[str, str]] = {}
    for target, image, fmt in the_plan.images:
        path = the_plan.overlay(name, target)
        check_not_owned(path, f"overlay of disk '{target}' of fork '{name}'",
                        job.paths.state_dir)
        undo = txn.on_undo(actions.remove_file(path, "fork overlay"))
        try:
            await qemuimg.create_overlay(path, image, fmt)
        except FileExistsError:
            txn.discard(undo)  # someone else's file
            raise OperationFailedError(f"fork overlay '{path}' already exists") from None
        runas.hand_over(job.policy.qemu_user, path)
        sources[target] = (path, "qcow2")
    return sources


__all__ = ["plan", "fork", "create_overlays"]
