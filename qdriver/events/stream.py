"""Listening: the events of a state dir (or one domain) as an async iterator.

A stream reads the event log from the moment it is made, and while it is
open it records the events of every running QEMU of the state dir whose
event monitor is free (`recorder`).  No daemon: the listening processes are
the ones that record.
"""
from __future__ import annotations

import asyncio
from pathlib import Path
from types import TracebackType

from ..durable import read_record
from ..errors import FormatError
from ..launch.runtime import RunRecord
from . import recorder
from .kinds import Event
from .log import Tail

POLL = 0.05
"""How often the log is read and the running QEMUs looked for, in seconds."""


class EventStream:
    """``async for event in stream``; ``close`` (or ``async with``) ends it."""

    def __init__(self, state_dir: Path, domain: str | None = None) -> None:
        self.state_dir = state_dir
        self.domain = domain
        """Only this domain's events (None: every domain's)."""
        self._tail = Tail(state_dir)
        self._ready: list[Event] = []
        self._recorders: dict[tuple[str, int], asyncio.Task[None]] = {}
        self._closed = False

    def _scan(self) -> None:
        """Start recording each running QEMU not yet recorded by this stream."""
        domains = self.state_dir / "domains"
        names = [self.domain] if self.domain else \
            [p.name for p in domains.iterdir()] if domains.is_dir() else []
        for name in names:
            try:
                rec = read_record(domains / name / "run.json", RunRecord)
            except FormatError:
                continue
            key = (name, rec.pid) if rec else None
            if key is not None and key not in self._recorders:
                self._recorders[key] = asyncio.ensure_future(
                    recorder.record(self.state_dir, name, key[1]))
        for key, task in list(self._recorders.items()):
            if task.done():  # its QEMU is gone, or was not up yet: the next scan sees
                del self._recorders[key]

    def __aiter__(self) -> EventStream:
        return self

    async def __anext__(self) -> Event:
        while not self._ready:
            if self._closed:
                raise StopAsyncIteration
            self._scan()
            self._ready = [e for e in self._tail.read()
                           if self.domain is None or e.domain == self.domain]
            if not self._ready:
                await asyncio.sleep(POLL)
        return self._ready.pop(0)

    async def aclose(self) -> None:
        """Stop listening (and recording)."""
        self._closed = True
        for task in self._recorders.values():
            task.cancel()
        await asyncio.gather(*self._recorders.values(), return_exceptions=True)
        self._recorders.clear()
        self._tail.close()

    async def __aenter__(self) -> EventStream:
        return self

    async def __aexit__(self, et: type[BaseException] | None, e: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.aclose()


__all__ = ["EventStream", "POLL"]
