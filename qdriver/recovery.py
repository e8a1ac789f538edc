"""Finish what a dead process left half-done, from the journal it left behind.

`Domain` calls `recover` in every job it opens, right after the state is read.  A
journal found then belongs to an operation whose process died (holding the
lock, it would still be in the operation): its actions run newest first,
which rolls the operation back, or forward once it had passed its point of
no return.  What was found and done is logged on the ``qdriver`` logger (the
CLI prints it) and returned.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field

from .errors import FormatError, QDriverError
from .job import Job
from .journal import Action, Journal, JournalRecord
from .launch import standby
from .ops import actions, delete_exec
from .paths import DomainPaths
from .snapshots.store import SnapshotStore

log = logging.getLogger("qdriver")


@dataclass
class RecoveryReport:
    """What recovery found and did."""

    domain: str
    operation: str
    direction: str
    """``rolled back`` or ``rolled forward``."""
    done: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        done = "; ".join(self.done) or "nothing was left to undo"
        failed = f"; could not take back: {'; '.join(self.failed)}" if self.failed else ""
        return (f"domain '{self.domain}': recovered the interrupted {self.operation}, "
                f"{self.direction}: {done}{failed}")


async def recover(job: Job) -> RecoveryReport | None:
    """Run a dead operation's journal, in the job that found it (and discard the
    standby QEMU of a domain whose own QEMU is gone: its reap was cut short)."""
    if job.record is None and job.paths.standby.exists():
        await _discard_standby(job)
    found = Journal(job.paths.journal).load()
    store = job.store
    if found is None and not store.marks_path.exists():
        return None
    unfinished = _unfinished(store)
    if found is None and not unfinished:
        store.clear_marks()
        return None
    op = found.describe() if found else "snapshot-delete (marked in the metadata)"
    report = RecoveryReport(job.name, op, "rolled forward" if found is None or found.committed
                            else "rolled back")
    for action in reversed(_steps(found, report)):
        try:
            await actions.run(job, action)
            report.done.append(f"{action.kind} ({action.what})")
        except (QDriverError, OSError) as e:
            report.failed.append(f"{action.what}: {e}")
    try:
        deleted = await delete_exec.finish(job)
        if deleted:
            report.done.append(f"finished deleting snapshots {', '.join(deleted)}")
    except (QDriverError, OSError) as e:
        report.failed.append(f"the delete of {', '.join(unfinished)}: {e}")
    if job.monitor_open:
        await job.sync_run_state()
    job.paths.journal.unlink(missing_ok=True)
    log.warning("%s", report)
    return report


async def _discard_standby(job: Job) -> None:
    if await standby.discard(job.paths):
        log.warning("domain '%s': discarded the standby QEMU of a QEMU that is gone", job.name)


def _steps(found: JournalRecord | None, report: RecoveryReport) -> list[Action]:
    """The journal's actions; none (reported by name) from a journal of another
    format or with a kind this release does not know, so the domain stays usable."""
    try:
        return found.steps() if found else []
    except FormatError as e:
        report.failed.append(f"{e.detail}: none of its actions was run")
        return []


def _unfinished(store: SnapshotStore) -> list[str]:
    """The snapshots a dead delete marked; none (said in the log) from an index of
    marks this release cannot read, which is then removed so the domain stays usable."""
    try:
        return store.read_marks()
    except FormatError as e:
        log.warning("domain '%s': %s: the delete it lists is not finished",
                    store.domain_name, e.detail)
        store.clear_marks()
        return []


def interrupted(paths: DomainPaths, name: str) -> str | None:
    """The operation a dead process left in the journal, if any (reads only)."""
    found = Journal(paths.journal).load()
    if found is not None:
        return None if found.owner_alive else found.describe()
    try:
        unfinished = SnapshotStore(paths.snapshots, name).read_marks()
    except FormatError as e:
        return f"a delete whose marks cannot be read ({e.detail})"
    return f"snapshot-delete of {', '.join(unfinished)}" if unfinished else None


__all__ = ["recover", "interrupted", "RecoveryReport"]
