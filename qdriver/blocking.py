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
from contextlib import ExitStack
from pathlib import Path
from types import TracebackType
from typing import Any

import anyio.from_thread

from . import driver as _driver
from .domain import Domain as _Domain
from .network import Network as _Network
from .snapshots.handle import Snapshot as _Snapshot


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


HANDLES: dict[type, type[_Handle]] = {_Domain: Domain, _Snapshot: Snapshot, _Network: Network}
"""Each async handle class, and its blocking one."""


def _convert(portal: anyio.from_thread.BlockingPortal, value: Any) -> Any:
    """A result as the blocking API returns it: handles wrapped, lists of them too."""
    for cls, blocking in HANDLES.items():
        if isinstance(value, cls):
            return blocking(portal, value)
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

    def close(self) -> None:
        """Let go of the monitors kept open, and stop the driver's loop thread."""
        if self._stack is None:
            return
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


__all__ = ["Driver", "Domain", "Snapshot", "Network"]
