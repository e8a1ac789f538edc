"""The pytest plugin: a booted guest, freshly reset, for every test that asks.

Loaded through the ``pytest11`` entry point (``-p no:qdriver`` turns it off).
``qdriver_domain`` boots the domain XML once per session and takes a template
snapshot when it is ready; each test gets a fork of that template, made while
the test before ran and resumed by the reset (`qdriver.testing.guestpool`).
With ``--qdriver-keep-failed`` (a failed test's guest is kept with a snapshot)
the booted guest itself is reverted to its snapshot before each test instead.
Under pytest-xdist the controller owns a shared directory: the first worker
to ask boots the guest there once, and every worker forks its own guests from
that boot's template; the controller stops and removes it all at the end.  The
plugin's own work runs on an event loop in a thread of its own, so that sync
tests and async (pytest-asyncio) tests get the same fixtures; a `qdriver.Domain`
holds no loop, so an async test may ``await`` its methods on its own loop.
"""
from __future__ import annotations

import concurrent.futures
import os
import signal
import tempfile
import threading
import time
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Awaitable, Callable, Generator, Iterator, TypeVar

import anyio
import anyio.from_thread
import pytest

from ..domain import Domain
from ..driver import Driver
from ..errors import QDriverError
from . import guestpool
from .guestpool import Console, Guest, GuestPool, GuestSetupError, GuestSpec

T = TypeVar("T")
SHARED_KEY = "qdriver_shared"
"""The xdist controller's shared directory, in each worker's ``workerinput``."""
CONSOLE_REPORT_LIMIT = 20000
"""The last characters of a failed test's console put into its report."""


@dataclass(frozen=True)
class _Option:
    name: str
    help: str
    flag: bool = False


OPTIONS = (
    _Option("domain-xml", "libvirt domain XML of the guest qdriver_domain boots"),
    _Option("ready", "regex on the serial console that means the guest is ready "
                     "(default: the guest agent answers)"),
    _Option("state-dir", "where the plugin's state directories go "
                         "(default: $TMPDIR/qdriver-pytest-UID)"),
    _Option("boot-timeout", "seconds a guest may take to become ready (default 120)"),
    _Option("keep-failed", "keep a snapshot of the guest of every failed test, named "
                           "after it, and its domain (shut off) for snapshot-revert",
            flag=True),
)


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("qdriver", "qdriver: a booted guest per test, reset by snapshot")
    for opt in OPTIONS:
        dest = "qdriver_" + opt.name.replace("-", "_")
        if opt.flag:
            group.addoption(f"--qdriver-{opt.name}", action="store_true", default=None,
                            dest=dest, help=opt.help)
            parser.addini(dest, opt.help, type="bool", default=False)
        else:
            group.addoption(f"--qdriver-{opt.name}", dest=dest, default=None, help=opt.help)
            parser.addini(dest, opt.help, default=None)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "qdriver(xml=None, ready=None, prepare=None): boot another domain XML "
        "for this test or module, or start from another state (prepare(guest) runs once "
        "after ready, before the snapshot the tests start from)")
    if _xdist_controller(config) and not _setting(config, "keep-failed"):
        config.stash[_SHARED] = guestpool.open_shared(_base(config))  # before the workers


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node: Any) -> None:
    """(xdist, in the controller) Tell a worker the shared directory."""
    shared = node.config.stash.get(_SHARED, None)
    if shared is not None:
        node.workerinput[SHARED_KEY] = str(shared)


def pytest_unconfigure(config: pytest.Config) -> None:
    """The controller stops and removes what its workers booted and forked."""
    shared = config.stash.get(_SHARED, None)
    if shared is not None:
        anyio.run(guestpool.close_shared, shared)


def _xdist_controller(config: pytest.Config) -> bool:
    """Whether this process hands tests to xdist workers (and outlives them)."""
    return not hasattr(config, "workerinput") and \
        bool(getattr(config.option, "numprocesses", None)) and \
        getattr(config.option, "dist", "no") != "no"


def _base(config: pytest.Config) -> Path:
    base = _setting(config, "state-dir")
    return (Path(base) if base else
            Path(tempfile.gettempdir()) / f"qdriver-pytest-{os.getuid()}").absolute()


def _setting(config: pytest.Config, name: str) -> Any:
    dest = "qdriver_" + name.replace("-", "_")
    value = config.getoption(dest)
    return value if value is not None else config.getini(dest)


@contextmanager
def _sigterm_interrupts() -> Iterator[None]:
    """SIGTERM (a cancelled CI job) ends the run as Ctrl-C does, so that teardown
    stops the guests instead of the process dying with them running."""
    if threading.current_thread() is not threading.main_thread() or \
            signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
        yield
        return

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")
    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


class PluginSession:
    """The plugin's per-process state: an event loop thread and a `GuestPool`."""

    def __init__(self, config: pytest.Config) -> None:
        self.config = config
        self.base = _base(config)
        worker = os.environ.get("PYTEST_XDIST_WORKER", "main")
        shared = getattr(config, "workerinput", {}).get(SHARED_KEY)
        self.keep_failed = bool(_setting(config, "keep-failed"))
        # a failed test's guest is kept with a snapshot: reverted guests, not forks
        self.pool = GuestPool(self.base, worker, Path(shared) if shared else None,
                              forks=not self.keep_failed)
        self._stack = ExitStack()
        self._stack.enter_context(_sigterm_interrupts())
        self._portal = self._stack.enter_context(anyio.from_thread.start_blocking_portal())
        self._inflight: set[concurrent.futures.Future[Any]] = set()
        self._ahead: dict[int, concurrent.futures.Future[Any]] = {}
        """Per guest: the next reset's QEMU being prepared while a test runs."""
        self.closed = False
        self.kept: list[tuple[str, str]] = []
        try:
            self.call(self.pool.open)
        except BaseException:
            self._stack.close()
            raise

    def call(self, fn: Callable[..., Awaitable[T]], *args: Any) -> T:
        """Run ``fn(*args)`` on the plugin's loop and wait for it (Ctrl-C cancels it)."""
        future = self._portal.start_task_soon(fn, *args)
        self._inflight.add(future)
        try:
            return future.result()
        finally:
            self._inflight.discard(future)

    def reset(self, guest: Guest) -> None:
        """Reset the guest (once what was started ahead for it is ready), then start
        the next reset's QEMU ahead, in the background, while the test runs."""
        ahead = self._ahead.pop(id(guest), None)
        if ahead is not None:
            concurrent.futures.wait([ahead])
            self._inflight.discard(ahead)
        self.call(self.pool.reset, guest)
        future = self._portal.start_task_soon(self.pool.prepare_next, guest)
        self._ahead[id(guest)] = future
        self._inflight.add(future)

    def spec(self, request: pytest.FixtureRequest) -> GuestSpec:
        """What this test asks for: options, then its ``qdriver`` markers, then an
        indirect parametrisation of ``qdriver_domain`` (a dict with the marker's keys)."""
        xml = _setting(self.config, "domain-xml")
        ready = _setting(self.config, "ready")
        prepare = None
        overrides: dict[str, Any] = {}
        for mark in reversed(list(request.node.iter_markers("qdriver"))):
            overrides.update(mark.kwargs)
        callspec = getattr(request.node, "callspec", None)
        for fixture in ("qdriver_domain", "qdriver_guest"):  # indirect parametrisation
            if callspec is not None and isinstance(callspec.params.get(fixture), dict):
                overrides.update(callspec.params[fixture])
        xml, ready = overrides.get("xml", xml), overrides.get("ready", ready)
        prepare = overrides.get("prepare", prepare)
        if not xml:
            pytest.fail("qdriver: no domain XML: give --qdriver-domain-xml=PATH, the "
                        "qdriver_domain_xml ini option or @pytest.mark.qdriver(xml=...)",
                        pytrace=False)
        timeout = float(_setting(self.config, "boot-timeout") or 120)
        path = Path(xml)
        if not path.is_absolute():
            path = Path(self.config.rootpath) / path
        return GuestSpec(path, ready, prepare, timeout)

    def close(self) -> None:
        """Cancel what is in flight, stop every guest, remove the pool (idempotent)."""
        if self.closed:
            return
        self.closed = True
        for future in list(self._inflight):
            future.cancel()
        concurrent.futures.wait(list(self._inflight), timeout=60)
        try:
            self.kept = self._portal.call(self.pool.close)
        finally:
            self._stack.close()


_SESSION = pytest.StashKey[PluginSession]()
_SHARED = pytest.StashKey[Path]()
_USE = pytest.StashKey["GuestUse"]()


@dataclass
class GuestUse:
    """A test's use of a guest: where its console text begins."""

    guest: Guest
    offset: int
    session: PluginSession
    started: float = field(default_factory=time.monotonic)

    def console_text(self) -> str:
        return self.guest.console_text(self.offset)


def _session(config: pytest.Config) -> PluginSession:
    session = config.stash.get(_SESSION, None)
    if session is not None and not session.closed:
        return session
    try:
        config.stash[_SESSION] = PluginSession(config)
    except QDriverError as e:
        problem = str(e)  # failed outside the handler: no chained exception in the report
    else:
        return config.stash[_SESSION]
    pytest.fail(f"qdriver: {problem}", pytrace=False)


@pytest.fixture(scope="session")
def qdriver_driver(pytestconfig: pytest.Config) -> Iterator[Driver]:
    """The `qdriver.Driver` of this session's guests: a private state directory, or
    under xdist the one the workers share."""
    session = _session(pytestconfig)
    driver = session.pool.shared_driver or session.pool.driver
    assert driver is not None
    yield driver
    session.close()


@pytest.fixture
def qdriver_guest(request: pytest.FixtureRequest, qdriver_driver: Driver) -> Guest:
    """The booted guest this test asked for, reverted to its starting snapshot."""
    session = _session(request.config)
    spec = session.spec(request)
    problem: str | None = None
    try:
        guest = session.call(session.pool.guest, spec)
        session.reset(guest)
    except GuestSetupError as e:
        problem = str(e)  # failed outside the handler: no chained exception in the report
    if problem is not None:
        pytest.fail(f"qdriver: {problem}", pytrace=False)
    request.node.stash[_USE] = GuestUse(guest, guest.console_offset(), session)
    return guest


@pytest.fixture
def qdriver_domain(qdriver_guest: Guest) -> Domain:
    """A running `qdriver.Domain` in the state it had when it became ready."""
    return qdriver_guest.domain


@pytest.fixture
def qdriver_console(request: pytest.FixtureRequest, qdriver_guest: Guest) -> Console:
    """The serial console of ``qdriver_domain``: text since the test began, write, wait."""
    use = request.node.stash[_USE]
    return Console(use.guest, use.offset)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]
                              ) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """Attach a failed test's console text; with keep-failed, snapshot its guest."""
    report = yield
    use = item.stash.get(_USE, None)
    if use is None or call.when != "call" or not report.failed:
        return report
    report.sections.append(("qdriver console", use.console_text()[-CONSOLE_REPORT_LIMIT:]))
    if use.session.keep_failed:
        try:
            name = use.session.call(use.session.pool.keep, use.guest, item.nodeid)
            report.sections.append(("qdriver kept", _revert_hint(use, name)))
        except Exception as e:  # the report must still be made
            report.sections.append(("qdriver kept", f"keeping a snapshot failed: {e}"))
    return report


def _revert_hint(use: GuestUse, snapshot: str) -> str:
    return (f"snapshot '{snapshot}' of domain '{use.guest.domain.name}' is kept; after the "
            f"run: qdriver --state-dir {use.session.pool.dir} snapshot-revert "
            f"{use.guest.domain.name} {snapshot} --running")


def pytest_sessionfinish(session: pytest.Session) -> None:
    """Stop every guest even when the run was interrupted (Ctrl-C)."""
    plugin = session.config.stash.get(_SESSION, None)
    if plugin is not None:
        plugin.close()


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    shared = config.stash.get(_SHARED, None)
    if shared is not None and (boots := guestpool.shared_boots(shared)):
        terminalreporter.write_line(
            f"qdriver: {boots} guest(s) booted for the xdist workers, each of which forked "
            "its own from the booted guest's template")
    plugin = config.stash.get(_SESSION, None)
    if plugin is not None and plugin.kept:
        terminalreporter.write_line(
            f"qdriver: kept {len(plugin.kept)} snapshot(s) of failed tests in "
            f"{plugin.pool.dir} (qdriver --state-dir {plugin.pool.dir} snapshot-list DOM)")
