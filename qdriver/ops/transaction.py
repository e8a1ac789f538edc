"""The undo mechanism every operation shares: record, then act; roll back on failure.

An operation pushes the undo of each side effect as it makes it (before
creating a file, so that a partial one goes too).  If a later step fails,
or the task is cancelled, `Transaction.attempt` runs the undos newest first,
shielded from cancellation, and re-raises.  An undo that fails does not stop
the others: QEMU may be gone while the file undos still matter.
"""
from __future__ import annotations

import enum
from dataclasses import dataclass
from pathlib import Path
from typing import Awaitable, Callable, Generic, Mapping, Sequence, TypeVar

import anyio

from ..errors import QDriverError

Undo = Callable[[], Awaitable[object]]
S = TypeVar("S", bound=enum.Enum)
T = TypeVar("T")


@dataclass(frozen=True)
class UndoEntry:
    """One recorded side effect: what it was, and how to take it back."""

    what: str
    undo: Undo


class Transaction:
    """An undo stack with all-or-nothing execution."""

    def __init__(self) -> None:
        self.entries: list[UndoEntry] = []
        self.failed_undos: list[tuple[str, BaseException]] = []

    def on_undo(self, what: str, undo: Undo) -> None:
        """Record how to take back the side effect about to happen."""
        self.entries.append(UndoEntry(what, undo))

    async def attempt(self, body: Callable[[], Awaitable[T]]) -> T:
        """Run ``body``; if it raises (or is cancelled), roll back and re-raise."""
        try:
            return await body()
        except BaseException:
            with anyio.CancelScope(shield=True):
                await self.rollback()
            raise

    async def rollback(self) -> None:
        """Undo what was done, newest first; keep going past failures."""
        while self.entries:
            entry = self.entries.pop()
            try:
                await entry.undo()
            except (QDriverError, OSError) as e:
                self.failed_undos.append((entry.what, e))


async def remove_file(path: str) -> None:
    """The undo of creating a file."""
    Path(path).unlink(missing_ok=True)


class StepRunner(Generic[S]):
    """Dispatch a plan's steps to the methods that carry them out."""

    def __init__(self, table: Mapping[S, Callable[[], Awaitable[None]]]) -> None:
        self.table = table

    async def run(self, steps: Sequence[S]) -> None:
        for step in steps:
            await self.table[step]()


__all__ = ["Transaction", "UndoEntry", "Undo", "StepRunner", "remove_file"]
