"""`side_by_side`: steps run at once, every one ends, the first failure comes out as is."""
from __future__ import annotations

import anyio
import pytest

from qdriver.errors import OperationFailedError
from qdriver.parallel import side_by_side

pytestmark = pytest.mark.no_qemu  # pure: runs no QEMU program


async def test_steps_overlap_and_all_end_before_the_first_failure_is_raised() -> None:
    log: list[str] = []

    async def slow_ok() -> None:
        log.append("ok start")
        await anyio.sleep(0.05)
        log.append("ok end")

    async def fails() -> None:
        log.append("bad start")
        raise OperationFailedError("disk 'vda' failed")

    async def fails_later() -> None:
        await anyio.sleep(0.01)
        raise OperationFailedError("disk 'vdb' failed")

    with pytest.raises(OperationFailedError, match="vda"):  # not an ExceptionGroup
        await side_by_side(slow_ok, fails, fails_later)
    assert log == ["ok start", "bad start", "ok end"]  # the sibling was not cancelled


async def test_one_step_runs_alone_and_none_is_nothing() -> None:
    ran: list[int] = []

    async def step() -> None:
        ran.append(1)
    await side_by_side(step)
    await side_by_side()
    assert ran == [1]
