"""What a guest does, from its QEMU's event monitor into the event log.

Each QEMU has a monitor of its own for events (`DomainPaths.events`).  It
takes one client at a time: a listening process connects to it, and a second
listener's connection waits in the socket's backlog until the first lets go,
so exactly one process records a QEMU's events however many listen.  Only
what the guest (or QEMU itself) causes is recorded here; operations record
their own events as they act.  When the monitor closes, QEMU is gone: the
recorder sees it reaped at once (the reap records how the domain stopped).
"""
from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any, Callable

from ..durable import locked, read_record
from ..errors import DomainBusyError, FormatError
from ..launch.runtime import RunRecord, Runtime
from ..paths import DomainPaths
from . import log
from .kinds import EventType

REAP_WAIT = 10.0
"""How long a recorder tries to reap its QEMU after the monitor closed (an operation
holding the domain lock that long reaps it itself)."""

SAME_REBOOT = 1.0
"""A reset this soon after the last one is the same reboot: the firmware (SeaBIOS)
resets the machine once more as it starts again, 30-40 ms after the guest's reset."""

Translation = tuple[EventType, str] | None


def _shutdown(data: dict[str, Any]) -> Translation:
    # a host's stop is the operation's to record; a panic's shutdown is a crash
    if data.get("guest") and data.get("reason") != "guest-panic":
        return EventType.SHUTDOWN, "guest"
    return None


QMP_EVENTS: dict[str, Callable[[dict[str, Any]], Translation]] = {
    "SHUTDOWN": _shutdown,
    "GUEST_PANICKED": lambda d: (EventType.CRASHED, "panicked"),
    "GUEST_CRASHLOADED": lambda d: (EventType.CRASHED, "crashloaded"),
    "RESET": lambda d: (EventType.REBOOT, "guest" if d.get("guest") else "host"),
    "SUSPEND": lambda d: (EventType.PMSUSPENDED, "memory"),
    "SUSPEND_DISK": lambda d: (EventType.PMSUSPENDED, "disk"),
    "WAKEUP": lambda d: (EventType.STARTED, "wakeup"),
}
"""QEMU's events that a guest causes, as lifecycle events (the rest are not recorded)."""


def translate(message: dict[str, Any]) -> Translation:
    """A QMP event as a lifecycle event, if it is one the guest causes."""
    event = QMP_EVENTS.get(str(message.get("event")))
    data = message.get("data")
    return event(data if isinstance(data, dict) else {}) if event else None


async def record(state_dir: Path, name: str, pid: int) -> None:
    """Record the events of domain ``name``'s QEMU ``pid`` until it exits."""
    paths = DomainPaths.of(state_dir, name)
    try:
        reader, writer = await asyncio.open_unix_connection(str(paths.events))
    except OSError:
        return  # not up yet, or gone: the next scan tries again
    try:
        if not await reader.readline():  # the greeting: another recorder may hold it
            return
        last_reset = 0.0
        writer.write(b'{"execute": "qmp_capabilities"}\n')
        await writer.drain()
        while line := await reader.readline():
            try:
                message = json.loads(line)
            except ValueError:
                continue
            found = translate(message) if isinstance(message, dict) else None
            when = _timestamp(message) if found else None
            if found is not None and not (found[0] is EventType.REBOOT and when is not None
                                          and when - last_reset < SAME_REBOOT):
                log.append(state_dir, name, *found, when=when)
            if found is not None and found[0] is EventType.REBOOT:
                last_reset = when or 0.0
    except OSError:
        pass
    finally:
        writer.close()
    await _see_reaped(paths, name, pid)


def _timestamp(message: dict[str, Any]) -> float | None:
    """When QEMU says the event happened."""
    stamp = message.get("timestamp")
    try:
        return float(stamp["seconds"]) + float(stamp["microseconds"]) / 1e6  # type: ignore[index]
    except (TypeError, KeyError, ValueError):
        return None


async def _see_reaped(paths: DomainPaths, name: str, pid: int) -> None:
    """QEMU ``pid`` closed its monitor: reap it as soon as it is gone, unless an
    operation holding the lock does (as a state query would)."""
    runtime = Runtime(paths)
    deadline = time.monotonic() + REAP_WAIT
    while time.monotonic() < deadline:
        try:
            rec = read_record(paths.runtime, RunRecord)
        except FormatError:
            return
        if rec is None or rec.pid != pid:
            return
        if runtime.peek() is None:
            try:
                async with locked(paths.lock, 0, f"domain '{name}'", create_dir=False):
                    await runtime.reconcile()
                return
            except (DomainBusyError, FileNotFoundError):
                pass
        await asyncio.sleep(0.05)


__all__ = ["record", "translate", "QMP_EVENTS"]
