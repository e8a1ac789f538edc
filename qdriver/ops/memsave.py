"""Writing a guest's memory to a new file, shared by a snapshot and a save.

The file is made new (``O_EXCL``: never someone else's file, nor a symbolic
link) after its removal is recorded as an undo, filled by a migration, kept
open until the guest runs again, then flushed and marked complete: only a
complete file is ever restored.
"""
from __future__ import annotations

import os
import time
from pathlib import Path

import anyio

from .. import process, qmp
from ..durable import fsync_path
from ..errors import InvalidArgError, OperationFailedError
from ..job import Job
from ..memory import memfile
from ..memory.header import mark_complete
from ..paths import owner_dir
from ..progress import ProgressFn, ProgressMeter
from ..xml.domain import DomainDef
from . import actions
from .transaction import Transaction


class MemoryFile:
    """One memory file being written for an operation."""

    def __init__(self, txn: Transaction, path: str, template_ram: str | None = None) -> None:
        self.txn = txn
        self.path = path
        self.template_ram = template_ram
        """A template's RAM file: the stream then leaves the shared RAM out."""
        self.fd: int | None = None
        self.ram_flushed = False
        self.flush_seconds = 0.0

    async def write(self, mon: qmp.Monitor, definition: DomainDef, was_running: bool,
                    background: bool, resume: bool, progress: ProgressFn | None) -> None:
        """Create the file and migrate the guest's memory into it; ``was_running`` is
        the state a restore goes back to."""
        check_target(Path(self.path))
        undo = self.txn.on_undo(actions.remove_file(self.path, "memory file"))
        try:
            self.fd = memfile.create(self.path, definition.to_xml(),
                                     definition.save_cookie(), was_running)
        except FileExistsError:
            self.txn.discard(undo)  # made by someone else since the check: not ours
            raise OperationFailedError(f"memory snapshot file '{self.path}' already exists") \
                from None
        self.txn.on_undo(actions.cancel_migration())
        await memfile.save(mon, self.fd, background, ProgressMeter("memory", progress),
                           resume=resume, ignore_shared=self.template_ram is not None)

    async def complete(self, template_ram: bool = True) -> None:
        """Flush the file and mark it complete (hundreds of MiB take a while, so this
        runs once the guest runs again, before metadata names the file); a
        template's RAM file is flushed too unless ``template_ram`` is False (it is
        then flushed at the next call, after a clone runs)."""
        started = time.monotonic()
        if template_ram and self.template_ram and not self.ram_flushed \
                and os.path.exists(self.template_ram):
            await anyio.to_thread.run_sync(fsync_path, self.template_ram)
            self.ram_flushed = True
        if self.fd is not None:
            await anyio.to_thread.run_sync(mark_complete, self.fd)
            self.close()
        self.flush_seconds += time.monotonic() - started

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


async def load_memory(job: Job, path: str, progress: ProgressFn | None,
                      template_ram: str | None = None) -> None:
    """Load a memory file into the job's QEMU, started with ``-incoming defer``
    (``template_ram``: the file is a template's, whose RAM QEMU maps from there).

    :raise OperationFailedError: QEMU exited while loading, with its last words.
    """
    try:
        await memfile.load(await job.monitor(), path, ProgressMeter("load", progress),
                           ignore_shared=template_ram is not None)
    except qmp.MonitorClosedError as e:
        said = process.log_tail(job.paths.qemu_log, 2)
        if template_ram is None and "x-ignore-shared is off" in said:
            raise OperationFailedError(
                f"memory file '{path}' is a memory template's: it holds the devices' "
                "state only, its RAM is in a file of its own; revert to its snapshot "
                "or fork it") from e
        raise OperationFailedError(
            f"QEMU exited while loading memory file '{path}': {said}") from e


def check_target(path: Path) -> None:
    """A memory file is made new: refuse a path where anything is, a symbolic link
    (even a dangling one) included, since an undo would then remove the user's."""
    if os.path.lexists(path):
        what = "a symbolic link" if path.is_symlink() else "a file"
        raise OperationFailedError(f"memory snapshot file '{path}' already exists ({what}): "
                                   "choose a path where nothing is")


def check_place(path: Path, state_dir: Path, managed_save: Path) -> None:
    """Refuse a memory file inside qdriver's own directories (but the managed save)
    or in a directory that does not exist, before any side effect."""
    if path != managed_save:
        check_not_owned(path, "memory file", state_dir)
    check_target(path)
    if not path.parent.is_dir():
        raise OperationFailedError(f"directory '{path.parent}' for the memory "
                                   "snapshot does not exist")


def check_not_owned(path: str | Path, what: str, state_dir: Path) -> None:
    """qdriver's own directories are no target: a file there could replace
    metadata, and ``destroy`` removes what it finds in the runtime dir."""
    owned = owner_dir(path, state_dir)
    if owned is not None:
        raise InvalidArgError(f"{what} '{path}' is inside qdriver's own directory "
                              f"'{owned}': choose a path outside it")


__all__ = ["MemoryFile", "check_target", "check_place", "check_not_owned"]
