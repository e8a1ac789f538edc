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


__all__ = ["side_by_side"]
