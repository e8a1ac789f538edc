"""Block jobs (``block-commit``): start one, follow it to its end, finish a dead one's.

A commit job reports by events: an active commit is READY once the top is
merged, and pivots when told ``job-complete``; every commit ends with
BLOCK_JOB_COMPLETED carrying its error.  ``query-jobs`` (`qmp.job_info`) is
asked only when nothing happens for a while: for progress, or a lost event.
"""
from __future__ import annotations

import time
from typing import Any, Mapping

import anyio
from qemu.qmp import EventListener

from .. import qmp
from ..errors import OperationFailedError
from ..qmp.jobs import ProgressFn

COMMIT_TIMEOUT = 3600.0
EVENTS = ("BLOCK_JOB_READY", "BLOCK_JOB_COMPLETED")


async def commit(mon: qmp.Monitor, arguments: Mapping[str, object], job: str,
                 progress: ProgressFn | None = None) -> None:
    """Run one ``block-commit`` to its end (pivoting an active one);
    raise `qmp.JobError` with QEMU's message if it fails."""
    with mon.listener(*EVENTS) as events:
        await mon.execute("block-commit", {**arguments, "job-id": job})
        await follow(mon, events, job, progress)


async def follow(mon: qmp.Monitor, events: EventListener, job: str,
                 progress: ProgressFn | None = None) -> None:
    """Wait for ``job``'s end on ``events``, completing it at READY."""
    deadline = time.monotonic() + COMMIT_TIMEOUT
    if progress is not None:  # the first report (0 %), for someone listening
        await _status(mon, job, progress)
    while time.monotonic() < deadline:
        ev: Any = None
        with anyio.move_on_after(0.25):
            while ev is None:
                got = await events.get()
                if qmp.data(got).get("device") == job:
                    ev = got
        if ev is None:
            if await _status(mon, job, progress) == "ready":
                await mon.execute("job-complete", {"id": job})
        elif ev["event"] == "BLOCK_JOB_READY":
            await mon.execute("job-complete", {"id": job})  # pivot to the merged image
        elif ev["event"] == "BLOCK_JOB_COMPLETED":
            if qmp.data(ev).get("error"):
                raise qmp.JobError(job, str(qmp.data(ev)["error"]))
            return
    raise OperationFailedError(f"block job '{job}' did not finish within {COMMIT_TIMEOUT:g} s")


async def _status(mon: qmp.Monitor, job: str, progress: ProgressFn | None) -> str | None:
    """The job's status (reporting its progress); None once QEMU dismissed it (its
    BLOCK_JOB_COMPLETED event is already queued then)."""
    info = await qmp.job_info(mon, job)
    if info is None:
        return None
    if progress is not None:
        progress(int(info.get("current-progress", 0)), int(info.get("total-progress", 0)))
    return str(info["status"])


async def settle(mon: qmp.Monitor, prefix: str) -> None:
    """Let the commits a dead process started (ids starting with ``prefix``) end,
    completing those that are READY."""
    with mon.listener(*EVENTS) as events:
        for job in await mon.execute("query-jobs"):
            if str(job.get("id", "")).startswith(prefix):
                await follow(mon, events, str(job["id"]))


__all__ = ["commit", "follow", "settle", "COMMIT_TIMEOUT"]
