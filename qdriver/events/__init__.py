"""Lifecycle events: what happened to a domain, whichever process or guest caused it.

Every event is one line of the state dir's event log (`log`): operations append
theirs as they act, under the domain lock; what a guest does (power off, panic,
reset, sleep) reaches the log through whichever listening process holds the
QEMU's event monitor (`recorder`).  Listeners read the log (`stream`), so all of
them see one order, and no event twice.
"""
from .kinds import DETAILS, Event, EventType

__all__ = ["DETAILS", "Event", "EventType"]
