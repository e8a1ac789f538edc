"""Start QEMU detached and supervise it without a daemon.

QEMU runs under a tiny ``/bin/sh`` supervisor in its own session: the
supervisor is QEMU's parent, reaps it and writes its exit status to a file.
The Python process that started it can exit; a later one finds QEMU by the
pid in the runtime record, checks that the pid is still that QEMU (process
start time and the monitor path on its command line), and learns how it
ended from the exit file: 0 for a guest power-off or a requested stop,
anything else (137 for ``kill -9``) for a crash.
"""
from __future__ import annotations

import os
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import anyio

from .errors import InternalError, OperationFailedError, OperationTimeoutError

# $1 exit file, $2 log file, $3 console log to hand over as fd 3 (or empty), then
# QEMU's argv.  Arguments are passed as positional parameters, never interpolated
# into the script.
SUPERVISOR = ('exitfile=$1; log=$2; console=$3; shift 3; '
              '( if [ -n "$console" ]; then exec 3>>"$console"; fi; '
              '"$@" </dev/null >>"$log" 2>&1; status=$?; exec 3>&-; '
              'echo $status >"$exitfile" ) &')
# The status goes in with one write(2) of a few bytes, by the shell itself (a
# rename would cost an ``mv`` process at every exit, a millisecond): a reader
# finds no file, an empty one (not exited yet, as far as it can tell) or the
# whole number.


@dataclass(frozen=True)
class ProcessId:
    """A pid plus its start time, so a recycled pid is not mistaken for QEMU."""

    pid: int
    start_time: int


def start_time(pid: int) -> int | None:
    """The process's start time in clock ticks; None if gone or a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2:].split()
    if fields[0] in ("Z", "X"):
        return None
    return int(fields[19])


def parent(pid: int) -> ProcessId | None:
    """The parent of ``pid`` (for QEMU: its supervisor), with its start time."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        ppid = int(stat[stat.rindex(")") + 2:].split()[1])
    except (OSError, ValueError, IndexError):
        return None
    st = start_time(ppid)
    return ProcessId(ppid, st) if st is not None else None


def is_running(proc: ProcessId) -> bool:
    """Whether ``proc`` is still the same live process."""
    return start_time(proc.pid) == proc.start_time


def is_alive(proc: ProcessId, marker: str) -> bool:
    """Whether ``proc`` still runs and its command line mentions ``marker``."""
    if start_time(proc.pid) != proc.start_time:
        return False
    try:
        cmdline = Path(f"/proc/{proc.pid}/cmdline").read_bytes()
    except OSError:
        return False
    return marker.encode() in cmdline


def spawn(argv: list[str], exitfile: Path, logfile: Path, env: dict[str, str] | None = None,
          console: Path | None = None) -> None:
    """Launch ``argv`` under the supervisor, detached from this process; with
    ``console`` the supervisor opens that file and hands it to ``argv`` as fd 3."""
    for stale in (exitfile, exitfile.with_name(exitfile.name + ".tmp")):
        stale.unlink(missing_ok=True)
    subprocess.run(["/bin/sh", "-c", SUPERVISOR, "qdriver-supervise", str(exitfile),
                    str(logfile), str(console or ""), *argv], stdin=subprocess.DEVNULL,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                   start_new_session=True, check=True,
                   env={**os.environ, **env} if env else None)


def processes() -> Iterator[tuple[int, bytes]]:
    """Every process's pid and raw command line (one that vanishes is skipped)."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            yield int(entry.name), (entry / "cmdline").read_bytes()
        except OSError:
            continue


def supervisors_of(exitfile: Path, prefix: bool = False) -> list[ProcessId]:
    """Live supervisors that will write ``exitfile`` (their QEMU's, or one's that
    just exited): a new QEMU's supervisor must not share the file with them.
    With ``prefix``, those of every exit file whose path begins so."""
    marker = b"\0qdriver-supervise\0" + bytes(exitfile) + (b"" if prefix else b"\0")
    found = []
    for pid, cmdline in processes():
        st = start_time(pid) if marker in cmdline else None
        if st is not None:
            found.append(ProcessId(pid, st))
    return found


async def wait_supervisors_gone(exitfile: Path, timeout: float) -> None:
    """Wait until no earlier supervisor can still write ``exitfile`` (one whose QEMU
    was just killed records the exit a moment later, and would make the next QEMU
    look dead at once).

    :raise OperationTimeoutError: one still runs after ``timeout`` (its QEMU lives).
    """
    for sup in supervisors_of(exitfile):
        if not await wait_exit(sup, timeout):
            raise OperationTimeoutError(
                f"a QEMU supervisor (process {sup.pid}) of this domain still runs")


async def kill_spawned(exitfile: Path, timeout: float = 10.0, prefix: bool = False) -> None:
    """SIGKILL every supervisor that writes ``exitfile`` with its QEMU (one session
    each), and wait until the supervisors are gone: a QEMU spawned moments ago, that
    wrote no pidfile yet, is found through its supervisor.  With ``prefix``, every
    supervisor whose exit file's path begins so."""
    for sup in supervisors_of(exitfile, prefix):
        try:
            group = os.getpgid(sup.pid)  # spawned in a session (and group) of its own
            if start_time(sup.pid) == sup.start_time and group not in (0, os.getpgrp()):
                os.killpg(group, signal.SIGKILL)
        except ProcessLookupError:
            continue
        await wait_exit(sup, timeout)


def exit_status(exitfile: Path) -> int | None:
    """QEMU's exit status as the supervisor recorded it, if it has exited."""
    try:
        return int(exitfile.read_text().strip())
    except (OSError, ValueError):
        return None


async def wait_for_start(pidfile: Path, socket: Path, exitfile: Path, logfile: Path,
                         timeout: float, log_since: int = 0) -> ProcessId:
    """Wait until QEMU wrote its pidfile and made its monitor socket.

    Raises with the tail of QEMU's log if it exited instead.
    """
    deadline = time.monotonic() + timeout
    while True:
        if exit_status(exitfile) is not None:
            raise InternalError(f"process exited while connecting to monitor: "
                                f"{log_tail(logfile, since=log_since)}")
        try:
            pid = int(pidfile.read_text().strip())
            st = start_time(pid)
            if st is not None and socket.exists():
                return ProcessId(pid, st)
        except (OSError, ValueError):
            pass
        if time.monotonic() > deadline:
            raise OperationTimeoutError(f"QEMU did not start within {timeout:g} s")
        await anyio.sleep(0.001)  # QEMU needs 30-100 ms; do not overshoot it


async def wait_ready(ready: Callable[[], bool], exitfile: Path, logfile: Path, since: int,
                     timeout: float, what: str) -> None:
    """Wait until ``ready()`` says a spawned helper is ready.

    :raise OperationFailedError: it exited first (its log's tail says why), or was
        not ready within ``timeout`` seconds.
    """
    deadline = time.monotonic() + timeout
    while not ready():
        if exit_status(exitfile) is not None:
            raise OperationFailedError(f"{what} exited: {log_tail(logfile, since=since)}")
        if time.monotonic() > deadline:
            raise OperationFailedError(f"{what} was not ready within {timeout:g} s")
        await anyio.sleep(0.005)


def log_tail(logfile: Path, lines: int = 5, since: int = 0) -> str:
    """The last lines a log got after byte offset ``since``, for error messages
    (the log is appended to: earlier starts' lines are not this start's reason)."""
    try:
        with logfile.open("rb") as f:
            f.seek(since)
            text = f.read().decode(errors="replace").strip().splitlines()
    except OSError:
        return "(no log)"
    return " | ".join(text[-lines:]) or "(empty log)"


def log_size(logfile: Path) -> int:
    """Where a log ends now: `log_tail`'s ``since`` for what comes next."""
    try:
        return logfile.stat().st_size
    except OSError:
        return 0


async def wait_exit(proc: ProcessId, timeout: float) -> bool:
    """Wait until ``proc`` is gone; True if it went within ``timeout``."""
    try:
        pidfd = os.pidfd_open(proc.pid)
    except ProcessLookupError:
        return True
    except OSError:
        pidfd = -1
    try:
        with anyio.move_on_after(timeout):
            while start_time(proc.pid) == proc.start_time:
                if pidfd >= 0:
                    with anyio.move_on_after(0.05):
                        await anyio.wait_readable(pidfd)
                else:
                    await anyio.sleep(0.005)
            return True
        return False
    finally:
        if pidfd >= 0:
            os.close(pidfd)


def signal_process(proc: ProcessId, sig: signal.Signals) -> None:
    """Send ``sig`` if ``proc`` is still the same process."""
    if start_time(proc.pid) == proc.start_time:
        try:
            os.kill(proc.pid, sig)
        except ProcessLookupError:
            pass


async def terminate(proc: ProcessId, grace: float = 3.0) -> None:
    """SIGTERM, then SIGKILL after ``grace`` seconds; return once it is gone."""
    signal_process(proc, signal.SIGTERM)
    if not await wait_exit(proc, grace):
        signal_process(proc, signal.SIGKILL)
        await wait_exit(proc, 10.0)
