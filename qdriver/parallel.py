"""Run independent steps of one operation side by side.

A delete commits each disk in its own QEMU job and writes metadata while QEMU
answers; these steps share nothing, so running them at once saves their
waits.  The caller sees the first failure as it was raised (not wrapped in an
``ExceptionGroup``), after every step has ended: no step is left half-done
because a sibling failed.
"""
from __future__ import annotations

from typing import Awaitable, Callable

import anyio

Step = Callable[[], Awaitable[None]]


async def side_by_side(*steps: Step) -> None:
    """Run ``steps`` at once until all end; then raise the first failure, if any."""
    if len(steps) == 1:
        await steps[0]()
        return
    failures: list[Exception] = []

    async def one(step: Step) -> None:
        try:
            await step()
        except Exception as e:  # noqa: BLE001 - re-raised below, once all have ended
            failures.append(e)
    async with anyio.create_task_group() as tg:
        for step in steps:
            tg.start_soon(one, step)
    if failures:
        raise failures[0]


class Rendezvous:
    """A point every member of a group reaches before any goes past it; a member that
    fails calls `abort`, and the others stop waiting and raise `RendezvousAborted`."""

    def __init__(self, members: int) -> None:
        self.members = members
        self.arrived = 0
        self.aborted: str | None = None
        self._all_here = anyio.Event()

    async def arrive(self) -> None:
        """Wait for every member.

        :raise RendezvousAborted: a member failed (its reason is the message).
        """
        self.arrived += 1
        if self.arrived >= self.members:
            self._all_here.set()
        await self._all_here.wait()
        if self.aborted is not None:
            raise RendezvousAborted(self.aborted)

    def abort(self, reason: str) -> None:
        if self.aborted is None:
            self.aborted = reason
        self._all_here.set()


class RendezvousAborted(Exception):
    """Another member of the group failed."""


__all__ = ["side_by_side", "Rendezvous", "RendezvousAborted"]
