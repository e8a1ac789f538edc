"""A domain's serial console: a terminal attached (``virsh console``), a link
held open, and a view for programs (read what came since, type, wait for a
pattern).

A terminal's bytes are relayed both ways between stdin/stdout and the
console's pty or UNIX socket.  Ctrl-] (0x1d) detaches, as in virsh; so does
end of input.
"""
from __future__ import annotations

import os
import re
import select
import socket
import sys
import termios
import threading
import time
import tty
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

import anyio

from .errors import OperationInvalidError
from .launch.runtime import RunRecord
from .paths import DomainPaths
from .xml.domain import DomainDef

ESCAPE = b"\x1d"


def console_path(definition: DomainDef, record: RunRecord | None,
                 paths: DomainPaths) -> Path | str:
    """The pty or UNIX socket of a domain's first serial port."""
    if record is None:
        raise OperationInvalidError("domain is not running")
    if not definition.serials:
        raise OperationInvalidError(f"domain '{definition.name}' has no console device")
    serial = definition.serials[0]
    if serial.type == "pty" and record.console_pty:
        return record.console_pty
    if serial.type == "unix":
        return Path(serial.path) if serial.path else paths.console
    raise OperationInvalidError(f"character device serial0 of type '{serial.type}' "
                                "cannot be attached to")


@contextmanager
def _raw_terminal(fd: int) -> Iterator[None]:
    if not os.isatty(fd):
        yield
        return
    saved = termios.tcgetattr(fd)
    tty.setraw(fd)
    try:
        yield
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


def _open(target: Path | str) -> tuple[int, socket.socket | None]:
    path = str(target)
    if os.path.exists(path) and Path(path).is_socket():
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.connect(path)
        sock.setblocking(False)
        return sock.fileno(), sock
    return os.open(path, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK), None


async def _pump(src: int, dst: int, stop_on_escape: bool, done: anyio.Event) -> None:
    while not done.is_set():
        await anyio.wait_readable(src)
        try:
            data = os.read(src, 4096)
        except BlockingIOError:
            continue
        except OSError:
            data = b""
        if stop_on_escape and ESCAPE in data:
            data = data[:data.index(ESCAPE)]
            if data:
                os.write(dst, data)
            done.set()
            return
        if not data:
            done.set()
            return
        try:
            os.write(dst, data)
        except OSError:  # the reader went away (a closed pipe, a dead socket)
            done.set()
            return


async def attach(target: Path | str, stdin: int | None = None, stdout: int | None = None) -> None:
    """Relay between the terminal and ``target`` until Ctrl-] or end of input."""
    fd_in = sys.stdin.fileno() if stdin is None else stdin
    fd_out = sys.stdout.fileno() if stdout is None else stdout
    fd, sock = _open(target)
    done = anyio.Event()
    try:
        with _raw_terminal(fd_in):
            async with anyio.create_task_group() as tg:
                tg.start_soon(_pump, fd_in, fd, True, done)
                tg.start_soon(_pump, fd, fd_out, False, done)
                await done.wait()
                tg.cancel_scope.cancel()
    finally:
        if sock is not None:
            sock.close()
        else:
            os.close(fd)


class SerialLink:
    """Hold a serial console open so that what is written to it reaches the guest.

    QEMU's pty backend reads from its end only while someone holds the other
    end open (it looks about once a second), and a pty nobody reads fills up
    and stalls the guest's output.  A link therefore stays open and drains
    the guest's output in a thread; the console log keeps that text anyway.
    """

    def __init__(self, target: Path | str) -> None:
        self.target = str(target)
        self._fd, self._sock = _open(target)
        self._stop = threading.Event()
        self._wake_r, self._wake_w = os.pipe()  # `close` ends the drain's wait at once
        self._thread = threading.Thread(target=self._drain, name=f"serial {target}",
                                        daemon=True)
        self._thread.start()

    def _drain(self) -> None:
        while not self._stop.is_set():
            ready, _, _ = select.select([self._fd, self._wake_r], [], [])
            if self._fd in ready:
                try:
                    if not os.read(self._fd, 65536):
                        return
                except BlockingIOError:
                    continue
                except OSError:
                    return

    def write(self, data: bytes, timeout: float = 10.0) -> None:
        """Send ``data`` to the guest's serial port."""
        view = memoryview(data)
        while view:
            _, ready, _ = select.select([], [self._fd], [], timeout)
            if not ready:
                raise TimeoutError(f"serial console {self.target} takes no input")
            try:
                view = view[os.write(self._fd, view):]
            except BlockingIOError:
                continue

    def close(self) -> None:
        """Stop draining and let go of the console."""
        self._stop.set()
        os.write(self._wake_w, b"x")
        self._thread.join()
        os.close(self._wake_r)
        os.close(self._wake_w)
        if self._sock is not None:
            self._sock.close()
        else:
            os.close(self._fd)


class ConsoleView:
    """A serial console from one point on: what came since, typing, waiting."""

    def __init__(self, read: Callable[[int], str], write: Callable[[bytes], None],
                 name: str, offset: int) -> None:
        """``read(offset)``: the console's text from that byte; ``write``: type bytes."""
        self._read = read
        self._write = write
        self._name = name
        self._offset = offset

    def text(self) -> str:
        """Everything the guest printed since this view began."""
        return self._read(self._offset)

    def write(self, data: str | bytes) -> None:
        """Type ``data`` on the console (add the newline a command needs)."""
        self._write(data.encode() if isinstance(data, str) else data)

    def wait(self, pattern: str | re.Pattern[str], timeout: float = 30.0) -> re.Match[str]:
        """Block until ``pattern`` matches the text since this view began; return the
        match.  :raise TimeoutError: not within ``timeout`` (with the last lines)."""
        deadline = time.monotonic() + timeout
        while (match := self._search(pattern, deadline, timeout)) is None:
            time.sleep(0.02)
        return match

    async def wait_async(self, pattern: str | re.Pattern[str],
                         timeout: float = 30.0) -> re.Match[str]:
        """`wait` for async code: yields to the event loop while waiting."""
        deadline = time.monotonic() + timeout
        while (match := self._search(pattern, deadline, timeout)) is None:
            await anyio.sleep(0.02)
        return match

    def _search(self, pattern: str | re.Pattern[str], deadline: float,
                timeout: float) -> re.Match[str] | None:
        """The match now; None to wait on; `TimeoutError` once ``deadline`` passed."""
        regex = pattern if isinstance(pattern, re.Pattern) else re.compile(pattern, re.M)
        match = regex.search(self.text())
        if match is None and time.monotonic() >= deadline:
            shown = regex.pattern
            last = "\n".join(self.text().splitlines()[-10:])
            raise TimeoutError(f"/{shown}/ not on the console of '{self._name}' within "
                               f"{timeout:g} s; its last lines:\n{last}")
        return match


def read_from(path: Path, offset: int) -> str:
    """A console log's text from byte ``offset`` (empty before it exists)."""
    try:
        with path.open("rb") as f:
            f.seek(offset)
            return f.read().decode(errors="replace")
    except FileNotFoundError:
        return ""


class DomainConsole(ConsoleView):
    """A domain's serial console for a program (`Domain.console`): it holds the console
    open once it has typed (QEMU reads a pty only while its other end is open);
    ``close`` (or the ``with`` block's end) lets go."""

    def __init__(self, log: Path, target: Callable[[], Path | str], name: str,
                 offset: int) -> None:
        self._target = target
        self._link: SerialLink | None = None
        super().__init__(lambda since: read_from(log, since), self._send, name, offset)

    def _send(self, data: bytes) -> None:
        if self._link is None:
            self._link = SerialLink(self._target())
        self._link.write(data)

    def close(self) -> None:
        if self._link is not None:
            self._link.close()
            self._link = None

    def __enter__(self) -> DomainConsole:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
