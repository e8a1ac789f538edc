"""The undo mechanism every operation shares: record, then act; roll back on failure.

An operation records the undo of each side effect, as a journal `Action`,
before it makes it (before creating a file, so that a partial one goes
too).  The list is written to the domain's journal each time, so a process
that dies mid-way leaves behind exactly what to take back (`qdriver.recovery`
runs it).  If a later step fails, or the task is cancelled,
`Transaction.attempt` runs the undos newest first, shielded from
cancellation, and re-raises.  An undo that fails does not stop the others:
QEMU may be gone while the file undos still matter.

Past its point of no return an operation calls `commit` with the actions
that finish it; from then on a failure or a dead process rolls forward.
"""
from __future__ import annotations

import enum
import logging
from typing import Awaitable, Callable, Generic, Mapping, Sequence, TypeVar

import anyio

from ..errors import QDriverError
from ..job import Job
from ..journal import Action, Journal
from ..testing import faults
from . import actions

S = TypeVar("S", bound=enum.Enum)
log = logging.getLogger("qdriver")
T = TypeVar("T")


class Transaction:
    """An undo stack, journaled, with all-or-nothing execution."""

    def __init__(self, job: Job, op: str, journal_optional: bool = False) -> None:
        self.job = job
        self.op = op
        self.journal_optional = journal_optional
        """An operation with nothing to undo (shutdown) goes on when the journal
        cannot be written (a full state disk)."""
        self.journal = Journal(job.paths.journal)
        self.entries: list[Action] = []
        self.committed = False
        self.failed_undos: list[tuple[str, BaseException]] = []

    def on_undo(self, action: Action) -> Action:
        """Record how to take back the side effect about to happen."""
        self.entries.append(action)
        self.journal.update(self.entries, self.committed)
        faults.point(f"{self.op}:recorded:{action.kind}")
        return action

    def discard(self, *done: Action) -> None:
        """Forget undos whose side effect became permanent (QEMU writes to an overlay)."""
        self.entries = [a for a in self.entries if a not in done]
        self.journal.update(self.entries, self.committed)

    def commit(self, finish: Sequence[Action]) -> None:
        """The point of no return: from now on, failure runs ``finish`` (newest
        last, like undos) instead of rolling back."""
        self.entries = list(reversed(finish))
        self.committed = True
        self.journal.update(self.entries, committed=True)

    async def attempt(self, body: Callable[[], Awaitable[T]]) -> T:
        """Run ``body`` under a journal; if it raises (or is cancelled), roll back
        (or forward, once committed) and re-raise."""
        try:
            self.journal.begin(self.op)
        except OSError as e:
            if not self.journal_optional:
                raise
            log.warning("cannot journal %s: %s", self.op, e.strerror or e)
            self.journal.record = None
        try:
            result = await body()
            faults.point(f"{self.op}:end")
        except BaseException:
            with anyio.CancelScope(shield=True):
                await self.rollback()
                self.journal.end()
            raise
        self.journal.end()
        return result

    async def rollback(self) -> None:
        """Undo what was done, newest first; keep going past failures."""
        while self.entries:
            entry = self.entries[-1]
            try:
                await actions.run(self.job, entry)
            except (QDriverError, OSError) as e:
                self.failed_undos.append((entry.what, e))
            self.entries.pop()
            self.journal.update(self.entries, self.committed)


class StepRunner(Generic[S]):
    """Dispatch a plan's steps to the methods that carry them out."""

    def __init__(self, table: Mapping[S, Callable[[], Awaitable[None]]], op: str = "") -> None:
        self.table = table
        self.op = op

    async def run(self, steps: Sequence[S]) -> None:
        """Run ``steps`` in order; an exception leaves with a note naming the step
        and the operation (``in step 'snapshot-load' of snapshot-revert``)."""
        for step in steps:
            faults.point(f"{self.op}:{step.value}")
            try:
                await self.table[step]()
            except Exception as e:
                e.add_note(f"in step '{step.value}' of {self.op}")
                raise


__all__ = ["Transaction", "StepRunner"]
