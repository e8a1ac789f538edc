"""Progress of long phases and the report of what an operation cost the guest."""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable


@dataclass(frozen=True)
class Progress:
    """How far a long phase (memory save) has come."""

    phase: str
    done: int
    total: int
    rate: float
    """Bytes per second."""


ProgressFn = Callable[[Progress], None]


class ProgressMeter:
    """Turns (done, total) samples of one phase into `Progress` reports."""

    def __init__(self, phase: str, report: ProgressFn | None) -> None:
        self.phase = phase
        self.report = report
        self.started = time.monotonic()

    def __call__(self, done: int, total: int) -> None:
        if self.report is not None:
            elapsed = max(time.monotonic() - self.started, 1e-6)
            self.report(Progress(self.phase, done, total, done / elapsed))


@dataclass(frozen=True)
class CreateReport:
    """What a snapshot creation cost the guest, measured with QEMU's own clock."""

    seconds: float
    """Wall time of the whole operation."""
    pause: float
    """Time the vCPUs were stopped (QEMU's STOP to RESUME event timestamps)."""
    memory_bytes: int
    """Size of the external memory file, if any."""
    flush: float = 0.0
    """Time spent making the memory file durable (fsync), after the guest resumed."""
    stopped_at: float | None = None
    """When the vCPUs stopped, by QEMU's clock (its STOP event; None if they never did):
    the instant a group snapshot's guests share."""

    @property
    def memory_rate(self) -> float:
        """Memory file write rate in bytes per second over the whole operation."""
        return self.memory_bytes / self.seconds if self.seconds else 0.0


def event_time(ev: dict[str, Any]) -> float:
    """A QMP event's timestamp (QEMU's clock), in seconds."""
    ts = ev.get("timestamp") or {}
    return float(ts.get("seconds", 0) + ts.get("microseconds", 0) / 1e6)


def first_stop(events: list[dict[str, Any]]) -> float | None:
    """The timestamp of the first STOP event, if any."""
    return next((event_time(ev) for ev in events if ev.get("event") == "STOP"), None)


def guest_pause(events: list[dict[str, Any]], end: float) -> float:
    """Seconds between STOP and RESUME events (an unmatched STOP runs to ``end``)."""
    total, stopped_at = 0.0, None
    for ev in events:
        at = event_time(ev)
        if ev.get("event") == "STOP" and stopped_at is None:
            stopped_at = at
        elif ev.get("event") == "RESUME" and stopped_at is not None:
            total, stopped_at = total + at - stopped_at, None
    return total + (end - stopped_at if stopped_at is not None else 0.0)


__all__ = ["Progress", "ProgressFn", "ProgressMeter", "CreateReport", "guest_pause",
           "first_stop"]
