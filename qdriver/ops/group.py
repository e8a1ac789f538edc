"""Group snapshots: one snapshot of several domains at one instant, and the revert
of them all together (a lab of guests that talk to each other).

The caller opens every domain's job first (in name order, so that two groups
over the same domains wait for each other instead of deadlocking).  A group
snapshot plans each domain's snapshot as it is, with the guest paused for the
whole snapshot whatever its kind (`create_plan`'s ``group``), then runs the
executions side by side: every running guest is paused, and none goes on
until all are (`Rendezvous`); each takes its own snapshot, journaled in its
own domain as any snapshot is; none resumes until all are taken, then all
resume.  A failure in one before every snapshot is taken cancels the others,
which roll back; one after it (a domain's metadata write, say) deletes the
snapshots the others finished.  Either way no guest keeps a snapshot of a
group that was not taken whole.  (A process killed in the middle is recovered
domain by domain, by each domain's journal: then a group can be left taken in
some domains only; each of those snapshots is whole.)  A group revert reverts each
domain side by side, each left paused (each revert pauses its own guest first,
journaled as any revert), then resumes together those whose snapshot was
running (or all with ``running``); a journal in each of those says so until
then (`revert`).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from functools import partial

import anyio

from ..errors import OperationAbortedError, QDriverError
from ..events.kinds import EventType
from ..job import Job
from ..journal import Journal
from ..parallel import Rendezvous, RendezvousAborted, side_by_side
from ..progress import CreateReport
from ..testing import faults
from . import actions, create_exec, delete_exec, revert_exec
from .create_plan import CreateFlags, CreatePlan, CreateStep
from .delete_plan import DeleteFlags
from .revert_plan import RevertFlags
from .shared import GroupSync

log = logging.getLogger("qdriver")


@dataclass(frozen=True)
class Taken:
    """One domain's part of a group snapshot."""

    domain: str
    snapshot: str
    report: CreateReport | None


async def snapshot(jobs: list[Job], xml: str, flags: CreateFlags) -> list[Taken]:
    """Take snapshot ``xml`` (one name for all) of every job's domain at one instant.

    :raise QDriverError: a domain's snapshot was refused or failed; none is kept.
    """
    plans = [await create_exec.plan(job, xml, flags, group=True) for job in jobs]
    pausing = sum(CreateStep.PAUSE in p.steps for p in plans)
    sync = GroupSync(Rendezvous(pausing), Rendezvous(pausing))
    executions = [create_exec.CreateExecution(
        job, the_plan, None, group=sync if CreateStep.PAUSE in the_plan.steps else None)
        for job, the_plan in zip(jobs, plans)]

    finished: list[tuple[Job, str]] = []

    async def run(job: Job, the_plan: CreatePlan,
                  execution: create_exec.CreateExecution) -> None:
        try:
            await execution.run()
        except RendezvousAborted as e:  # another domain failed: this one rolled back
            raise OperationAbortedError(f"snapshot of domain '{job.name}' not kept: {e}") \
                from e
        except BaseException as e:
            sync.abort(f"domain '{job.name}': {e}")
            raise
        finished.append((job, the_plan.name))
    try:
        await side_by_side(*(partial(run, job, p, e)
                             for job, p, e in zip(jobs, plans, executions)))
    except BaseException:
        if len(finished) < len(jobs):  # failed past the instant: the others' go too
            with anyio.CancelScope(shield=True):
                for job, name in finished:
                    await _take_back(job, name)
        raise
    for job, the_plan in zip(jobs, plans):
        job.emit(EventType.SNAPSHOT, "created", the_plan.name)
    return [Taken(job.name, the_plan.name, e.report)
            for job, the_plan, e in zip(jobs, plans, executions)]


async def _take_back(job: Job, name: str) -> None:
    """Delete a snapshot of a group that failed after it was taken."""
    try:
        await delete_exec.delete(job, name, DeleteFlags())
    except (QDriverError, OSError) as e:
        log.warning("domain '%s' keeps snapshot '%s' of a group that failed: %s",
                    job.name, name, e)


async def revert(jobs: list[Job], name: str, running: bool = False,
                 paused: bool = False) -> None:
    """Revert every job's domain to its snapshot ``name``, then let them run together
    (those whose snapshot ran, or all with ``running``; none with ``paused``).

    Each guest that is to run gets a journal the moment its revert is done: a
    process killed before the guests resume leaves them to the next command,
    which resumes them (rolled forward); a revert that fails in another domain
    resumes the ones that were reverted, and raises.
    """
    wake = {job.name for job in jobs
            if not paused and (running or job.tree.get(name).state == "running")}
    waiting: list[tuple[Job, Journal]] = []

    async def one(job: Job) -> None:
        await revert_exec.revert(job, name, RevertFlags(paused=True))
        if job.name in wake:  # no await between the revert's journal and this one
            journal = Journal(job.paths.journal)
            journal.begin("group-revert")
            journal.update([actions.resume_guest()], committed=True)
            waiting.append((job, journal))
    try:
        await side_by_side(*(partial(one, job) for job in jobs))
        faults.point("group-revert:reverted")
    finally:
        with anyio.CancelScope(shield=True):
            await side_by_side(*(job.ensure_running for job, _ in waiting))
            for _, journal in waiting:
                journal.end()
            for job in jobs:  # the run records say what QEMU does now
                await job.sync_run_state()


__all__ = ["snapshot", "revert", "Taken"]
