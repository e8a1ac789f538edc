"""Durable, crash-safe state: atomic file writes and per-domain locks.

Files are written as write + fsync + rename (+ fsync of the directory), so a
crash leaves either the old or the new content, never a torn file.  A domain's
operations hold an exclusive ``fcntl.flock`` on its lock file; a second
process waits up to a timeout and then gets `DomainBusyError`.
"""
from __future__ import annotations

import dataclasses
import fcntl
import json
import os
import time
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, AsyncIterator, TypeVar

import anyio

from .errors import DomainBusyError, FormatError

T = TypeVar("T")


def atomic_write(path: Path, data: str | bytes, mode: int = 0o600,
                 sync_dir: bool = True, durable: bool = True,
                 owner: tuple[int, int] | None = None) -> None:
    """Replace ``path`` with ``data`` atomically and (unless ``durable=False``) durably.

    ``sync_dir=False`` leaves the directory fsync to the caller (`fsync_dir`),
    for several files written together.  ``durable=False`` is for state that
    only means something while a QEMU process lives (run records, journals):
    it must survive the death of the writing process, which the page cache
    guarantees, but not a host crash, which ends the QEMU too.  ``owner``: the uid
    and gid the file gets (before it takes the name).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    raw = data.encode() if isinstance(data, str) else data
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        try:
            view = memoryview(raw)
            while view:  # a short write (a disk filling up) must not end the file early
                view = view[os.write(fd, view):]
            if durable:
                os.fsync(fd)
        finally:
            os.close(fd)
        if owner is not None:
            os.chown(tmp, *owner)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)  # the old file, if any, is untouched
        raise
    if sync_dir and durable:
        fsync_dir(path.parent)


def copy_file(source: str | Path, target: str | Path, owner: tuple[int, int] | None = None
              ) -> None:
    """Replace ``target`` with a private copy of ``source`` (a small file: a UEFI
    variable store), as `atomic_write` writes (``owner``: uid and gid to give it)."""
    atomic_write(Path(target), Path(source).read_bytes(), owner=owner)


def overwrite_file(source: str | Path, target: str | Path) -> None:
    """Write ``source``'s bytes over ``target`` in place, durably: the same file, so
    that a process holding it open (QEMU, its flash) goes on with the new bytes."""
    data = Path(source).read_bytes()
    fd = os.open(target, os.O_WRONLY | os.O_NOFOLLOW)
    try:
        view = memoryview(data)
        offset = 0
        while offset < len(data):
            offset += os.pwrite(fd, view[offset:], offset)
        os.ftruncate(fd, len(data))
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_path(path: str | Path) -> None:
    """Flush a file's data to disk (one written through a mapping or by another process)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(directory: Path) -> None:
    """Make renames in ``directory`` durable."""
    dfd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def write_record(path: Path, record: object, durable: bool = True,
                 sync_dir: bool = True) -> None:
    """Store a dataclass as JSON with its class's format version (``FORMAT``),
    atomically (see `atomic_write` for ``durable`` and ``sync_dir``)."""
    raw = dataclasses.asdict(record)  # type: ignore[call-overload]
    raw["format"] = getattr(record, "FORMAT", 1)
    atomic_write(path, json.dumps(raw, indent=1), durable=durable, sync_dir=sync_dir)


def read_record(path: Path, cls: type[T]) -> T | None:
    """Load a dataclass stored by `write_record`; None if absent or unreadable.

    :raise FormatError: the file is of a format version this release does not read
        (a newer release wrote it): guessing at it could lose track of a QEMU.
    """
    try:
        raw: dict[str, Any] = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    # 0: written before records had a version (a class that never had one says so)
    readable: tuple[int, ...] = getattr(cls, "READABLE", None) or (
        (0, getattr(cls, "FORMAT", 1)) if getattr(cls, "UNVERSIONED_TOO", True)
        else (getattr(cls, "FORMAT", 1),))
    if not isinstance(raw, dict) or raw.get("format", 0) not in readable:
        got = raw.get("format") if isinstance(raw, dict) else None
        raise FormatError(f"'{path}' is of format {got!r}; this release "
                          f"reads formats {', '.join(map(str, readable))}")
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    return cls(**{k: v for k, v in raw.items() if k in names})


@asynccontextmanager
async def locked(path: Path, timeout: float, what: str,
                 create_dir: bool = True) -> AsyncIterator[None]:
    """Hold an exclusive flock on ``path``; `DomainBusyError` after ``timeout``.

    With ``create_dir=False`` a missing directory raises `FileNotFoundError`
    instead of being made (a domain's lock must not bring back its directory
    after an undefine).
    """
    if create_dir:
        path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        deadline = time.monotonic() + timeout
        delay = 0.002
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise DomainBusyError(f"cannot acquire state change lock: {what} is busy "
                                          f"with another operation (waited {timeout:g} s)"
                                          ) from None
                await anyio.sleep(delay)
                delay = min(delay * 2, 0.05)
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock


def held_elsewhere(path: Path) -> bool:
    """Whether another process holds the flock on ``path`` (a job holds its domain's
    lock) at this moment; taking it to see releases it at once."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def next_counter(path: Path) -> int:
    """Increment and return a counter stored in ``path`` (under flock)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        raw = os.read(fd, 32).strip()
        value = int(raw) + 1 if raw.isdigit() else 1
        os.lseek(fd, 0, os.SEEK_SET)
        os.ftruncate(fd, 0)
        os.write(fd, str(value).encode())
        return value
    finally:
        os.close(fd)
