"""Waiting for QMP events with a timeout."""
from __future__ import annotations

from typing import Callable, Mapping

import anyio
from qemu.qmp import EventListener

from .errors import MonitorTimeoutError

Event = Mapping[str, object]


async def wait_event(listener: EventListener, match: Callable[[Event], bool],
                     timeout: float, what: str) -> Event:
    """The first event from ``listener`` that satisfies ``match``."""
    try:
        with anyio.fail_after(timeout):
            while True:
                event = await listener.get()
                if match(event):
                    return event
    except TimeoutError as e:
        raise MonitorTimeoutError(f"no {what} within {timeout:g} s") from e


def data(event: Event) -> Mapping[str, object]:
    """An event's ``data`` member (empty when absent)."""
    value = event.get("data")
    return value if isinstance(value, Mapping) else {}
