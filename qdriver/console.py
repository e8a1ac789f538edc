"""Attach a terminal to a domain's serial console (``virsh console``).

Bytes are relayed both ways between stdin/stdout and the console's pty or
UNIX socket.  Ctrl-] (0x1d) detaches, as in virsh; so does end of input.
"""
from __future__ import annotations

import os
import socket
import sys
import termios
import tty
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import anyio

ESCAPE = b"\x1d"


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
        await anyio.wait_readable(src)  # type: ignore[arg-type]
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
