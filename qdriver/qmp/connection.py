"""A QMP connection to one QEMU with timeouts on everything.

QEMU's monitor socket serves one client at a time, so qdriver connects for
an operation and disconnects after it (see `open_monitor`), or keeps one
connection on a socket of its own while no other process needs it (`kept`).  Every wait has a
timeout, and a monitor that closes under us becomes `MonitorClosedError`
instead of a hang.
"""
from __future__ import annotations

import asyncio
import logging
import os
import socket
import stat
import time
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, AsyncIterator, Callable, ContextManager, Mapping

import anyio
from qemu.qmp import (
    ConnectError,
    EventListener,
    ExecInterruptedError,
    ExecuteError,
    Message,
    QMPClient,
    Runstate,
)
from qemu.qmp.error import QMPError
from qemu.qmp.protocol import StateError

from .errors import CommandError, MonitorClosedError, MonitorConnectError, MonitorTimeoutError

DEFAULT_TIMEOUT = 30.0


class _Client(QMPClient):
    """qemu.qmp's client, logging each message only when debug logging is on.

    qemu.qmp's message hooks format every message as JSON whether or not the log
    record is kept; for the block-node listings snapshot operations read, that
    costs more than the socket I/O (about 9 ms of a 50 ms snapshot delete)."""

    def _cb_outbound(self, msg: Message) -> Message:
        if self.logger.isEnabledFor(logging.DEBUG):
            self.logger.debug("--> %s", msg)
        return msg

    def _cb_inbound(self, msg: Message) -> Message:
        if self.logger.isEnabledFor(logging.DEBUG):
            self.logger.debug("<-- %s", msg)
        return msg


class Monitor:
    """An open QMP session: execute commands, pass fds, listen for events."""

    def __init__(self, client: QMPClient, path: Path, sock: socket.socket | None = None) -> None:
        self.client = client
        self.path = path
        self.sock = sock
        self.loop = asyncio.get_running_loop()
        """The event loop the connection belongs to (qemu.qmp's tasks run there)."""

    @property
    def connected(self) -> bool:
        """Whether commands can still be sent (QEMU has not closed the monitor)."""
        return self.client.runstate == Runstate.RUNNING

    def abandon(self) -> None:
        """Close the socket of a connection whose event loop is gone (nothing of
        qemu.qmp can run any more); QEMU sees the client leave."""
        if self.sock is not None:
            self.sock.close()

    async def execute(self, command: str, arguments: Mapping[str, object] | None = None,
                      timeout: float = DEFAULT_TIMEOUT) -> Any:
        """Run one command and return its result (decoded JSON); errors become `CommandError`."""
        try:
            with anyio.fail_after(timeout):
                return await self.client.execute(command, arguments)
        except ExecuteError as e:
            raise CommandError(command, e.error_class, e.error.error.desc) from e
        except TimeoutError as e:
            raise MonitorTimeoutError(f"QEMU did not answer '{command}' "
                                      f"within {timeout:g} s") from e
        except (ExecInterruptedError, StateError, EOFError, ConnectionError) as e:
            raise MonitorClosedError(f"QEMU closed the monitor during '{command}': "
                                     f"{e or type(e).__name__}") from e

    async def hmp(self, command_line: str, timeout: float = DEFAULT_TIMEOUT) -> str:
        """Run a human-monitor command and return its text output."""
        out = await self.execute("human-monitor-command", {"command-line": command_line},
                                 timeout)
        return str(out)

    async def send_fd(self, fd: int, name: str) -> None:
        """Pass ``fd`` to QEMU under ``name`` (SCM_RIGHTS + ``getfd``)."""
        self.client.send_fd_scm(fd)
        await self.execute("getfd", {"fdname": name})

    def listener(self, *names: str) -> ContextManager[EventListener]:
        """``with mon.listener("STOP", "RESUME") as events:``, events queued meanwhile."""
        return self.client.listener(names)


def _check_private_parent(path: Path) -> None:
    """A socket in a directory others can write to may be a fake QEMU's (a
    symlinked directory is checked as its link, and refused).  The directory is
    this user's, or one this user made and handed to QEMU's user: then the
    directory above is this user's, so no one else can have put it there."""
    try:
        st = os.lstat(path.parent)
        above = os.lstat(path.parent.parent)
    except OSError as e:
        raise MonitorConnectError(f"cannot connect to QEMU monitor '{path}': {e}") from e
    mine = st.st_uid == os.geteuid() or (
        stat.S_ISDIR(above.st_mode) and above.st_uid == os.geteuid()
        and not above.st_mode & 0o022)
    if not stat.S_ISDIR(st.st_mode) or not mine or st.st_mode & 0o022:
        raise MonitorConnectError(f"refusing QEMU monitor '{path}': its directory is not "
                                  "this user's, or others may write to it")


def _nothing(event: Message) -> bool:
    return False


async def connect(path: Path, timeout: float = 5.0) -> Monitor:
    """Connect to a QMP socket and negotiate capabilities, within ``timeout``.

    The socket's directory must be private to this user (see `_check_private_parent`).
    The socket is made here, so that `Monitor.abandon` can close it from any
    event loop.
    """
    _check_private_parent(path)
    client = _Client(os.path.basename(str(path)))
    client.events.event_filter = _nothing  # qemu.qmp's catch-all queue: nobody reads it
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.setblocking(False)
    try:
        with anyio.fail_after(timeout):
            await asyncio.get_running_loop().sock_connect(sock, str(path))
            await client.connect(sock)
    except TimeoutError as e:
        await _quiet_disconnect(client)
        sock.close()
        raise MonitorConnectError(f"QEMU monitor '{path}' did not answer "
                                  f"within {timeout:g} s") from e
    except (ConnectError, QMPError, OSError) as e:
        await _quiet_disconnect(client)
        sock.close()
        raise MonitorConnectError(f"cannot connect to QEMU monitor '{path}': {e}") from e
    return Monitor(client, path, sock)


CONNECT_RETRY = 2.0
"""Seconds a just-started QEMU's refused connections are retried."""


async def connect_new(path: Path, alive: Callable[[], bool], timeout: float = 5.0,
                      retry: float = CONNECT_RETRY) -> Monitor:
    """`connect` to a QEMU that just made its socket.  Between its bind() and its
    listen() a connect is refused: that is retried while ``alive()`` says QEMU
    still runs, for at most ``retry`` seconds.

    :raise MonitorConnectError: refused for longer, QEMU gone, or another failure.
    """
    deadline = time.monotonic() + retry
    while True:
        try:
            return await connect(path, timeout)
        except MonitorConnectError as e:
            refused = isinstance(e.__cause__, ConnectionRefusedError) or \
                "Connection refused" in str(e)
            if not refused or time.monotonic() > deadline or not alive():
                raise
        await anyio.sleep(0.005)


async def _quiet_disconnect(client: QMPClient) -> None:
    try:
        await client.disconnect()
    except (QMPError, EOFError, OSError):
        pass  # QEMU went away first; the connection is closed either way


async def close(monitor: Monitor) -> None:
    """Disconnect, ignoring a QEMU that already went away."""
    await _quiet_disconnect(monitor.client)


@asynccontextmanager
async def open_monitor(path: Path, timeout: float = 5.0) -> AsyncIterator[Monitor]:
    """``async with open_monitor(sock) as mon:`` for one operation."""
    mon = await connect(path, timeout)
    try:
        yield mon
    finally:
        with anyio.CancelScope(shield=True):
            await close(mon)
