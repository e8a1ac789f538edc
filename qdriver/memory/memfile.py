"""Migration to a memory file: the guest's RAM and device state in libvirt's save layout.

The file starts with libvirt's save-image header (``saveimage``), marked
partial until the stream is complete; QEMU writes the migration stream
after it through a passed file descriptor.  `save` drives one migration
and waits for it with progress; it leaves the guest's run state to the
caller (the plan says whether the guest resumes).
"""
from __future__ import annotations

import os
import stat
import time
from typing import Any, Awaitable, Callable, Mapping

import anyio
from qemu.qmp import EventListener

from .. import qmp, runstatus
from ..errors import OperationFailedError, OperationTimeoutError, QDriverError
from ..progress import ProgressMeter
from ..testing import faults
from .header import SaveHeader, read_header, write_header

MAX_BANDWIDTH = 9223372036853727232  # what libvirt sets for local saves
IGNORE_SHARED = "x-ignore-shared"
"""The migration capability that leaves RAM in shared named files out of the stream."""
FD_NAME = "qdriver-migrate"
MIGRATION_STALL = 120.0
"""A migration whose status and bytes sent do not move for this long is given up."""
MIGRATION_TIMEOUT = 3600.0
"""No memory save or load takes longer than this, moving or not."""


def create(path: str, domain_xml: str, cookie: str, running: bool) -> int:
    """Create the memory file (it must not exist) with a partial header; return its fd.

    If the header cannot be written the new file is removed again.
    """
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        write_header(fd, domain_xml, cookie, running)
    except BaseException:
        os.close(fd)
        os.unlink(path)
        raise
    return fd


async def save(mon: qmp.Monitor, fd: int, background: bool, meter: ProgressMeter,
               resume: bool = False, ignore_shared: bool = False) -> None:
    """Migrate the guest's state into ``fd`` (positioned after the header).

    With ``background`` and ``resume`` the guest runs again as soon as QEMU
    has saved the devices and write-protected RAM: QEMU 7.2 restarts the
    vCPUs itself there, newer QEMUs restore the state they found (paused,
    since the disks were switched first), so the vCPUs are started here
    once the RAM copy is under way, whichever QEMU this is.

    With ``ignore_shared`` RAM in a shared file is left out (``x-ignore-shared``):
    the stream holds the devices' state, and the file is the memory (a template).
    """
    await _set_capabilities(mon, background, ignore_shared)
    try:
        with mon.listener("MIGRATION") as events:
            await mon.send_fd(fd, FD_NAME)
            await mon.execute("migrate", {"uri": f"fd:{FD_NAME}"})
            await _wait(mon, events, _Saving(mon, meter, background and resume),
                        "saving the memory state")
        if background and resume:
            await runstatus.ensure_running(mon)
        elif not background:
            await _finalized(mon)
    finally:
        if background or ignore_shared:  # the next save of this QEMU starts from none
            await _set_capabilities(mon, False, False)


async def _finalized(mon: qmp.Monitor, timeout: float = 10.0) -> None:
    """Wait until QEMU has left ``finish-migrate``: it reports the migration
    completed a moment before its run state moves on, and refuses ``cont``
    ("Migration is not finalized yet") until then, which a loaded host shows."""
    deadline = time.monotonic() + timeout
    while (await mon.execute("query-status")).get("status") == "finish-migrate" and \
            time.monotonic() < deadline:
        await anyio.sleep(0.002)


async def _set_capabilities(mon: qmp.Monitor, background: bool, ignore_shared: bool) -> None:
    """Every capability a save depends on, set each time: a clone's QEMU loaded its
    template with ``x-ignore-shared`` on, and a stream made with it on is a
    template's, which only a clone can load."""
    await mon.execute("migrate-set-capabilities", {"capabilities": [
        {"capability": "events", "state": True},
        {"capability": "background-snapshot", "state": background},
        {"capability": IGNORE_SHARED, "state": ignore_shared}]})
    await mon.execute("migrate-set-parameters", {"max-bandwidth": MAX_BANDWIDTH})


Poll = Callable[[Mapping[str, Any]], Awaitable[None]]


async def _wait(mon: qmp.Monitor, events: EventListener, poll: Poll, what: str) -> None:
    """Poll ``query-migrate`` (woken by MIGRATION events) until the migration ends;
    ``poll`` sees each answer (progress, and whatever the caller does meanwhile)."""
    deadline = time.monotonic() + MIGRATION_TIMEOUT
    last: tuple[str, int] | None = None
    stalled_since = time.monotonic()
    while True:
        info = await mon.execute("query-migrate")
        status = str(info.get("status"))
        now = time.monotonic()
        seen = (status, int(info.get("ram", {}).get("transferred", 0)))
        if seen != last:
            last, stalled_since = seen, now
        if now - stalled_since > MIGRATION_STALL or now > deadline:
            raise OperationTimeoutError(
                f"{what} made no progress for {MIGRATION_STALL:g} s (status '{status}')"
                if now <= deadline else
                f"{what} did not finish within {MIGRATION_TIMEOUT:g} s (status '{status}')")
        if status not in ("completed", "failed", "cancelled", "none"):
            faults.point("memfile:migrating")  # setup or active: the file is being written
        await poll(info)
        if status == "completed":
            return
        if status in ("failed", "cancelled"):
            raise OperationFailedError(f"{what} failed: {info.get('error-desc', status)}")
        with anyio.move_on_after(0.1):
            await events.get()


class _Saving:
    """Reports RAM progress; with ``resume`` starts the vCPUs once, when the RAM copy
    is under way (the devices are saved and RAM write-protected by then)."""

    def __init__(self, mon: qmp.Monitor, meter: ProgressMeter, resume: bool) -> None:
        self.mon, self.meter, self.resume = mon, meter, resume

    async def __call__(self, info: Mapping[str, Any]) -> None:
        ram = info.get("ram", {})
        if ram:
            self.meter(int(ram.get("transferred", 0)), int(ram.get("total", 0)))
        if self.resume and info.get("status") == "active" and \
                int(ram.get("transferred", 0)) > 0:
            await runstatus.ensure_running(self.mon)
            self.resume = False


INCOMING_FD = "qdriver-incoming"


def check(path: str) -> SaveHeader:
    """The header of a memory file to load; refuses a missing, foreign or partial one,
    and anything but a regular file (a FIFO nobody writes to would block forever)."""
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):
            raise OperationFailedError(f"memory file '{path}' is not a regular file")
        header = read_header(path)
    except FileNotFoundError as e:
        raise OperationFailedError(f"memory file '{path}' does not exist") from e
    except (OSError, ValueError, UnicodeError) as e:
        raise OperationFailedError(f"'{path}' is not a readable memory file: {e}") from e
    if not header.complete:
        raise OperationFailedError(f"memory file '{path}' is incomplete (LibvirtQemudPart): "
                                   "the save that wrote it was interrupted")
    if os.path.getsize(path) <= header.stream_offset:
        raise OperationFailedError(f"memory file '{path}' holds no migration stream")
    return header


async def load(mon: qmp.Monitor, path: str, meter: ProgressMeter,
               ignore_shared: bool = False) -> None:
    """Feed a memory file to a QEMU started with ``-incoming defer``; wait until loaded
    (``ignore_shared``: a template's, whose RAM the QEMU maps from the template file)."""
    header = check(path)
    fd = os.open(path, os.O_RDONLY)
    try:
        os.lseek(fd, header.stream_offset, os.SEEK_SET)
        total = os.fstat(fd).st_size - header.stream_offset
        await mon.execute("migrate-set-capabilities", {"capabilities": [
            {"capability": "events", "state": True},
            *([{"capability": IGNORE_SHARED, "state": True}] if ignore_shared else [])]})
        async def loading(info: Mapping[str, Any]) -> None:
            # QEMU reads through the same open file: its offset is QEMU's progress
            meter(os.lseek(fd, 0, os.SEEK_CUR) - header.stream_offset, total)
        with mon.listener("MIGRATION") as events:
            await mon.send_fd(fd, INCOMING_FD)
            await mon.execute("migrate-incoming", {"uri": f"fd:{INCOMING_FD}"})
            await _wait(mon, events, loading, f"loading memory file '{path}'")
        if ignore_shared:  # an internal snapshot of the clone must not carry it
            await mon.execute("migrate-set-capabilities", {"capabilities": [
                {"capability": IGNORE_SHARED, "state": False}]})
    finally:
        os.close(fd)


async def background_snapshot_usable(mon: qmp.Monitor, try_it: bool) -> bool:
    """Whether the background-snapshot migration capability is usable.

    Trying it (on, then off) is the only way to learn whether the host kernel
    supports it; without ``try_it`` only its presence in QEMU is checked.
    """
    if not try_it:
        caps = await mon.execute("query-migrate-capabilities")
        return any(c["capability"] == "background-snapshot" for c in caps)
    try:
        for on in (True, False):
            await mon.execute("migrate-set-capabilities", {"capabilities": [
                {"capability": "background-snapshot", "state": on}]})
    except QDriverError:
        return False
    return True


__all__ = ["MAX_BANDWIDTH", "create", "save", "check", "load", "background_snapshot_usable"]
