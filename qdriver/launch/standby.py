"""A standby QEMU: started ahead, waiting for the domain's next template revert.

A template revert replaces the running QEMU with a new one that maps the
template's RAM and loads the devices' state; starting that QEMU is most of
the revert's time.  After such a revert the domain keeps one more QEMU
started in ``-incoming defer`` for the same snapshot, on overlays of its
own, in a slot of the domain's socket directory (`DomainPaths.in_slot`).
The next revert to that snapshot takes it over (`Runtime.take_over`)
instead of starting one.

The record (``standby.json``) is written before anything it names exists,
so a process killed while preparing leaves a record of everything to
remove; `discard` removes it all.  A standby serves only the revert whose
plan has the same ``basis`` (the snapshot's definition, its files by inode
and time); anything else discards it.  It lives no longer than the domain's
own QEMU: the reap of that QEMU discards it.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

from .. import process
from ..durable import read_record, write_record
from ..errors import FormatError
from ..paths import DomainPaths


@dataclass
class StandbyRecord:
    """What a later process needs to use or discard a standby QEMU."""

    FORMAT: ClassVar[int] = 1
    UNVERSIONED_TOO: ClassVar[bool] = False
    slot: str
    snapshot: str
    """The snapshot whose revert it is ready for."""
    basis: str
    """The fingerprint of that revert's plan when the standby was made."""
    overlays: dict[str, str] = field(default_factory=dict)
    """Its new overlays on the snapshot's images, by target (made after the record)."""
    definition: str = ""
    """The definition it runs: the snapshot's, on its overlays, with a genid of its own."""
    accel: str = ""
    ram_template: str | None = None
    emulator: str = ""
    spawned: bool = False
    """The QEMU was spawned (its supervisor writes the slot's exit file)."""
    loaded: bool = False
    """It has loaded the snapshot's memory file: the revert only has to run it."""


def read(paths: DomainPaths) -> StandbyRecord | None:
    """The domain's standby record, if any.

    :raise FormatError: a newer release wrote it.
    """
    return read_record(paths.standby, StandbyRecord)


def write(paths: DomainPaths, rec: StandbyRecord, durable: bool = True) -> None:
    """Store the record, durably unless asked: it must be on disk before what it
    names is made."""
    write_record(paths.standby, rec, durable=durable)


def alive(paths: DomainPaths, rec: StandbyRecord) -> bool:
    """Whether the standby QEMU was spawned and has not exited: its pidfile names
    it once it is up; until then its supervisor is found by its exit file."""
    own = paths.in_slot(rec.slot)
    if not rec.spawned or process.exit_status(own.exitfile) is not None:
        return False
    try:
        pid = int(own.pidfile.read_text())
    except (OSError, ValueError):
        return bool(process.supervisors_of(own.exitfile))
    start = process.start_time(pid)
    return start is not None and process.is_alive(process.ProcessId(pid, start), str(own.qmp))


async def discard(paths: DomainPaths) -> bool:
    """Kill the domain's standby QEMU, if any, and remove everything its record
    names, the record last; True if there was one.  A record of a newer release's
    format is left to it."""
    try:
        rec = read(paths)
    except FormatError:
        return False
    if rec is None:
        paths.standby.unlink(missing_ok=True)  # unreadable: nothing it names can be known
        return False
    await remove(paths, rec.slot, list(rec.overlays.values()))
    return True


async def remove(paths: DomainPaths, slot: str, overlays: list[str]) -> None:
    """Kill the standby of ``slot`` and remove its files and ``overlays``, then its
    record if the domain's record is still that standby's."""
    await kill(paths, slot)
    for overlay in overlays:
        Path(overlay).unlink(missing_ok=True)
    try:
        left = read(paths)
    except FormatError:
        return
    if left is not None and left.slot == slot:
        paths.standby.unlink(missing_ok=True)


async def kill(paths: DomainPaths, slot: str) -> None:
    """Kill a slot's QEMU (started or still starting) and remove its files."""
    own = paths.in_slot(slot)
    await process.kill_spawned(own.exitfile)
    remove_socket_dir(own.sockets)
    own.exitfile.unlink(missing_ok=True)


def remove_socket_dir(directory: Path) -> None:
    """Remove a slot's socket directory and what its QEMU left in it."""
    if directory.is_dir():
        for path in directory.iterdir():
            path.unlink(missing_ok=True)
        directory.rmdir()


__all__ = ["StandbyRecord", "read", "write", "alive", "discard", "remove", "kill",
           "remove_socket_dir"]
