"""A template's RAM file: moved or copied out of a guest's shared RAM file.

A template snapshot keeps the guest's RAM as a file of its own, which clones
map copy-on-write.  Moving the guest's RAM file there costs nothing on one
file system; elsewhere it is copied extent by extent, holes staying holes (a
guest's RAM file is mostly pages it never touched).
"""
from __future__ import annotations

import errno
import os
from pathlib import Path

from ..errors import OperationFailedError


def move_ram(source: Path, target: str) -> None:
    """Move the RAM file ``source`` to ``target`` (which must not exist): a rename,
    or a sparse copy and removal across file systems.

    :raise OperationFailedError: ``target`` exists, or ``source`` is gone.
    """
    if os.path.lexists(target):
        raise OperationFailedError(f"template RAM file '{target}' already exists")
    try:
        os.rename(source, target)
        return
    except FileNotFoundError as e:
        raise OperationFailedError(f"the guest's RAM file '{source}' is gone") from e
    except OSError as e:
        if e.errno != errno.EXDEV:
            raise
    fd = os.open(target, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        sparse_copy(source, fd)
        os.fsync(fd)
    finally:
        os.close(fd)
    source.unlink()


def sparse_copy(source: Path, target_fd: int) -> None:
    """Copy ``source`` into ``target_fd`` (an empty file) extent by extent, leaving
    its holes holes: a guest's RAM file is mostly pages it never touched."""
    src = os.open(source, os.O_RDONLY | os.O_NOFOLLOW)
    try:
        size = os.fstat(src).st_size
        offset = 0
        while offset < size:
            try:
                start = os.lseek(src, offset, os.SEEK_DATA)
            except OSError:  # ENXIO: only a hole is left
                break
            end = os.lseek(src, start, os.SEEK_HOLE)
            while start < end:
                start += os.copy_file_range(src, target_fd, end - start, start, start) or \
                    _short_copy(source)
            offset = end
        os.ftruncate(target_fd, size)
    finally:
        os.close(src)


def _short_copy(source: Path) -> int:
    raise OperationFailedError(f"'{source}' ended while it was being copied")



__all__ = ["move_ram", "sparse_copy"]
