"""A template's RAM file: moved or copied out of a guest's shared RAM file.

A template snapshot keeps the guest's RAM as a file of its own, which clones
map copy-on-write.  Moving the guest's RAM file there costs nothing on one
file system; elsewhere it is copied extent by extent, holes staying holes (a
guest's RAM file is mostly pages it never touched).
"""
from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

from ..errors import InvalidArgError, OperationFailedError
from ..runas import QemuUser, secret_files


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


def seal(path: str, size: int, user: QemuUser | None, qemu_reads_only: bool) -> None:
    """Make the template RAM file ``path`` one that QEMU maps and nobody rewrites.

    The file is opened without following a link and checked through that
    descriptor (a regular file of ``size`` bytes, not a host secret by inode);
    then it is this process's user's, readable by QEMU's group when QEMU runs
    as another user, and writable by nobody where QEMU can open it read-only
    (``qemu_reads_only``: its ``rom`` property, QEMU 8.2+; an older QEMU opens
    even a private mapping's file for writing, so it keeps write access then).
    After a template snapshot by a QEMU running as another user, that user
    created the file: sealing hands it back.

    :raise OperationFailedError: it is no such file.
    :raise InvalidArgError: it is a host secret.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as e:
        raise OperationFailedError(f"template RAM file '{path}': {e.strerror}") from e
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_size != size:
            raise OperationFailedError(f"template RAM file '{path}' is not a regular file "
                                       f"of {size} bytes (the guest's RAM)")
        secret = secret_files().get((st.st_dev, st.st_ino))
        if secret is not None:
            raise InvalidArgError(f"refusing template RAM file '{path}': it is the same "
                                  f"file as '{secret}', a host secret")
        other = user is not None and os.geteuid() == 0 and user.uid != 0
        mode = (0o440 if other else 0o400) if qemu_reads_only else (0o660 if other else 0o600)
        if other:
            assert user is not None
            os.fchown(fd, os.geteuid(), user.gid)
        if stat.S_IMODE(st.st_mode) != mode:
            os.fchmod(fd, mode)
    finally:
        os.close(fd)


__all__ = ["move_ram", "sparse_copy", "seal"]
