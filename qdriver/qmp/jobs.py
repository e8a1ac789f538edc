"""Run QEMU jobs (``snapshot-save``, ``blockdev-create``, ...) to completion.

QEMU reports a job's failure only in ``query-jobs`` after it concludes, so a
job is: start it, wait for ``JOB_STATUS_CHANGE`` to ``concluded``, read its
error, then ``job-dismiss`` it whatever happened.  A job that fails or is
cancelled passes through ``aborting`` on its way to ``concluded``; one that
did not has no error to read, which spares the ``query-jobs`` round trip.
"""
from __future__ import annotations

from typing import Any, Callable, Mapping

import anyio

from .connection import Monitor
from .errors import JobError
from .events import Event, data, wait_event

ProgressFn = Callable[[int, int], None]


async def run_job(mon: Monitor, command: str, arguments: Mapping[str, object], job_id: str,
                  timeout: float, progress: ProgressFn | None = None) -> None:
    """Start a job with ``command`` and wait until it concluded; raise `JobError`."""
    seen: set[object] = set()

    def concluded(event: Event) -> bool:
        if data(event).get("id") != job_id:
            return False
        seen.add(data(event).get("status"))
        return data(event).get("status") == "concluded"

    with mon.listener("JOB_STATUS_CHANGE") as listener:
        await mon.execute(command, {**arguments, "job-id": job_id})
        async with anyio.create_task_group() as tg:
            if progress is not None:
                tg.start_soon(_report_progress, mon, job_id, progress)
            await wait_event(listener, concluded, timeout, f"end of job '{job_id}'")
            tg.cancel_scope.cancel()
    job = (await job_info(mon, job_id) or {}) if "aborting" in seen else {}
    await mon.execute("job-dismiss", {"id": job_id})
    if job.get("error"):
        raise JobError(job_id, str(job["error"]))


async def job_info(mon: Monitor, job_id: str) -> dict[str, Any] | None:
    """``query-jobs``' entry for ``job_id``; None if QEMU has no such job (any more)."""
    jobs: list[dict[str, Any]] = await mon.execute("query-jobs")
    return next((j for j in jobs if j.get("id") == job_id), None)


async def _report_progress(mon: Monitor, job_id: str, progress: ProgressFn) -> None:
    progress(0, 0)  # the job has begun: a phase that ends quickly is still shown
    while True:
        await anyio.sleep(0.25)
        job = await job_info(mon, job_id)
        if job is not None:
            progress(int(job.get("current-progress", 0)), int(job.get("total-progress", 0)))
