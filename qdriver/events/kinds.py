"""The event vocabulary: libvirt's lifecycle events, their details, and qdriver's two more."""
from __future__ import annotations

import enum
from dataclasses import dataclass


class EventType(enum.IntEnum):
    """libvirt's ``virDomainEventType`` (same values), then reboot and snapshot."""

    DEFINED = 0
    UNDEFINED = 1
    STARTED = 2
    SUSPENDED = 3
    RESUMED = 4
    STOPPED = 5
    SHUTDOWN = 6
    PMSUSPENDED = 7
    CRASHED = 8
    REBOOT = 100
    """The guest was reset (libvirt's ``VIR_DOMAIN_EVENT_ID_REBOOT``, a callback of its own)."""
    SNAPSHOT = 101
    """A snapshot was created, reverted to or deleted (``Event.snapshot`` names it)."""

    def __str__(self) -> str:
        return self.name.lower()


DETAILS: dict[EventType, tuple[str, ...]] = {
    EventType.DEFINED: ("added", "updated", "renamed", "from_snapshot"),
    EventType.UNDEFINED: ("removed", "renamed"),
    EventType.STARTED: ("booted", "migrated", "restored", "from_snapshot", "wakeup"),
    EventType.SUSPENDED: ("paused", "migrated", "ioerror", "watchdog", "restored",
                          "from_snapshot", "api_error", "postcopy", "postcopy_failed"),
    EventType.RESUMED: ("unpaused", "migrated", "from_snapshot", "postcopy", "postcopy_failed"),
    EventType.STOPPED: ("shutdown", "destroyed", "crashed", "migrated", "saved", "failed",
                        "from_snapshot"),
    EventType.SHUTDOWN: ("finished", "guest", "host"),
    EventType.PMSUSPENDED: ("memory", "disk"),
    EventType.CRASHED: ("panicked", "crashloaded"),
    EventType.REBOOT: ("guest", "host"),
    EventType.SNAPSHOT: ("created", "reverted", "deleted"),
}
"""Each type's details, at libvirt's value (``VIR_DOMAIN_EVENT_STOPPED_SAVED`` is 4)."""


@dataclass(frozen=True)
class Event:
    """One thing that happened to domain ``domain``."""

    domain: str
    type: EventType
    detail: str
    """A word of `DETAILS` for the type (``destroyed``)."""
    time: float
    """When, in seconds since the epoch."""
    snapshot: str | None = None

    @property
    def detail_code(self) -> int:
        """libvirt's number for the detail (``VIR_DOMAIN_EVENT_STOPPED_DESTROYED``)."""
        return DETAILS[self.type].index(self.detail)

    def __str__(self) -> str:
        about = f" '{self.snapshot}'" if self.snapshot else ""
        return f"{self.domain}: {self.type} {self.detail}{about}"


__all__ = ["DETAILS", "Event", "EventType"]
