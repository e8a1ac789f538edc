"""The whole API without async: for scripts, Flask, Django, Celery tasks.

``with qdriver.blocking.Driver(state_dir) as drv: dom = drv.define_xml(xml);
dom.start()``.  Every name, argument, return value and error is the async
API's (`qdriver.Driver`, `qdriver.Domain`, `qdriver.Snapshot`,
`qdriver.Network`); a coroutine method becomes a method that returns its
result, and the handles it returns are blocking handles too.  The calls run
on an event loop of the driver's own, in a thread it starts (anyio's
blocking portal), so any number of threads may call one driver at once; the
driver's ``close`` (or the ``with`` block's end) stops that thread.
"""
from __future__ import annotations

import functools
import inspect
import itertools
import logging
import threading
from contextlib import AbstractAsyncContextManager, ExitStack
from pathlib import Path
from types import TracebackType
from typing import Any, Callable

import anyio.from_thread

from . import driver as _driver
from .domain import Domain as _Domain
from .events.kinds import Event
from .events.stream import EventStream
from .network import Network as _Network
from .snapshots.handle import Snapshot as _Snapshot

log = logging.getLogger("qdriver")


class _Handle:
    """A blocking view of one async handle: attributes read through, coroutine
    methods run on the driver's loop."""

    def __init__(self, portal: anyio.from_thread.BlockingPortal, target: Any) -> None:
        self._portal = portal
        self._target = target

    def __getattr__(self, name: str) -> Any:
        return _wrap(self._portal, getattr(self._target, name))

    def __repr__(self) -> str:
        return repr(self._target)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Handle) and other._target == self._target

    def __hash__(self) -> int:
        return hash(self._target)

    @property
    def aio(self) -> Any:
        """The async handle this one wraps (for code on the driver's own loop)."""
        return self._target


class Domain(_Handle):
    """A blocking `qdriver.Domain`."""


class Snapshot(_Handle):
    """A blocking `qdriver.Snapshot`."""


class Network(_Handle):
    """A blocking `qdriver.Network`."""


class _Context:
    """A blocking form of an async context manager (``with dom.monitor() as mon``):
    what it yields is a blocking handle of it."""

    def __init__(self, portal: anyio.from_thread.BlockingPortal,
                 manager: AbstractAsyncContextManager[Any]) -> None:
        self._inner = portal.wrap_async_context_manager(manager)
        self._portal = portal

    def __enter__(self) -> Any:
        value = self._inner.__enter__()
        return _convert(self._portal, value) if type(value) in HANDLES \
            else _Handle(self._portal, value)

    def __exit__(self, et: type[BaseException] | None, e: BaseException | None,
                 tb: TracebackType | None) -> bool | None:
        return self._inner.__exit__(et, e, tb)


class EventIterator:
    """A blocking `qdriver.EventStream`: ``for event in drv.events()``, or `get` with a
    timeout; `close` (or ``with``) stops listening."""

    def __init__(self, portal: anyio.from_thread.BlockingPortal, stream: EventStream) -> None:
        self._portal = portal
        self._stream = stream

    def __iter__(self) -> EventIterator:
        return self

    def __next__(self) -> Event:
        try:
            return self._portal.call(self._stream.__anext__)
        except StopAsyncIteration:
            raise StopIteration from None

    def get(self, timeout: float | None = None) -> Event | None:
        """The next event, or None if none comes within ``timeout`` seconds (or the
        iterator was closed)."""
        async def one() -> Event | None:
            with anyio.move_on_after(timeout):
                try:
                    return await self._stream.__anext__()
                except StopAsyncIteration:
                    return None
            return None
        return self._portal.call(one)

    def close(self) -> None:
        self._portal.call(self._stream.aclose)

    def __enter__(self) -> EventIterator:
        return self

    def __exit__(self, et: type[BaseException] | None, e: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


HANDLES: dict[type, type[_Handle]] = {_Domain: Domain, _Snapshot: Snapshot, _Network: Network}
"""Each async handle class, and its blocking one."""


def _convert(portal: anyio.from_thread.BlockingPortal, value: Any) -> Any:
    """A result as the blocking API returns it: handles wrapped, lists of them too."""
    for cls, blocking in HANDLES.items():
        if isinstance(value, cls):
            return blocking(portal, value)
    if isinstance(value, EventStream):
        return EventIterator(portal, value)
    if isinstance(value, AbstractAsyncContextManager):
        return _Context(portal, value)
    if isinstance(value, list):
        return [_convert(portal, v) for v in value]
    if isinstance(value, tuple):
        return tuple(_convert(portal, v) for v in value)
    return value


def _unwrap(value: Any) -> Any:
    return value._target if isinstance(value, _Handle) else value


def _wrap(portal: anyio.from_thread.BlockingPortal, value: Any) -> Any:
    """An attribute as the blocking API shows it."""
    if inspect.iscoroutinefunction(value):
        @functools.wraps(value)
        def call(*args: Any, **kwargs: Any) -> Any:
            args = tuple(_unwrap(a) for a in args)
            bound = functools.partial(value, *args, **{k: _unwrap(v) for k, v in kwargs.items()})
            return _convert(portal, portal.call(bound))
        return call
    if inspect.ismethod(value) or inspect.isfunction(value):
        @functools.wraps(value)
        def plain(*args: Any, **kwargs: Any) -> Any:
            return _convert(portal, value(*(_unwrap(a) for a in args),
                                          **{k: _unwrap(v) for k, v in kwargs.items()}))
        return plain
    return _convert(portal, value)


class Driver(_Handle):
    """A blocking `qdriver.Driver`: the same arguments; close it, or use ``with``."""

    def __init__(self, state_dir: str | Path | None = None, **options: Any) -> None:
        self._stack = ExitStack()
        portal = self._stack.enter_context(anyio.from_thread.start_blocking_portal())
        try:
            target = _driver.Driver(state_dir, **options)
        except BaseException:
            self._stack.close()
            raise
        super().__init__(portal, target)
        self._callbacks: dict[int, tuple[EventIterator, threading.Thread]] = {}
        self._next_callback = itertools.count(1)

    def register_event_callback(self, callback: Callable[[Event], object],
                                domain: str | None = None) -> int:
        """Call ``callback(event)`` for each event from now on (of ``domain`` only, if
        given), in a thread of its own, in order; the id `deregister_event_callback`
        takes."""
        stream = self._portal.call(lambda: EventStream(self._target.state_dir, domain))
        events = EventIterator(self._portal, stream)

        def deliver() -> None:
            for event in events:
                try:
                    callback(event)
                except Exception:  # a callback's failure must not end the others' events
                    log.exception("event callback %r failed on %s", callback, event)
        thread = threading.Thread(target=deliver, name="qdriver-events", daemon=True)
        key = next(self._next_callback)
        self._callbacks[key] = (events, thread)
        thread.start()
        return key

    def deregister_event_callback(self, key: int) -> None:
        """Stop a callback (the event it is handling, if any, is its last)."""
        events, thread = self._callbacks.pop(key)
        events.close()
        if thread is not threading.current_thread():
            thread.join()

    def close(self) -> None:
        """Stop the event callbacks, let go of the monitors kept open, and stop the
        driver's loop thread."""
        if self._stack is None:
            return
        for key in list(self._callbacks):
            self.deregister_event_callback(key)
        try:
            self._portal.call(self._target.__aexit__, None, None, None)
        finally:
            self._stack.close()
            self._stack = None  # type: ignore[assignment]

    def __enter__(self) -> Driver:
        return self

    def __exit__(self, et: type[BaseException] | None, e: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


__all__ = ["Driver", "Domain", "Snapshot", "Network", "EventIterator"]
