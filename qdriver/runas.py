"""Who QEMU runs as, and which files it may be given.

When qdriver runs as root, QEMU runs as root unless a QEMU user is set
(``Driver(qemu_user=)``, ``--qemu-user``, ``$QDRIVER_QEMU_USER``), as
libvirt's root daemon runs QEMU as ``libvirt-qemu``.  With a user, QEMU
opens what the command line names as root, then drops to that user before
the guest runs (``-runas`` / ``-run-with user=``); so every image, kernel and
initrd must be one that user could open itself (`access_problem`), or root
would hand the guest a file its user may not read.  Images qdriver makes
(overlays) are handed over to the user.

Whoever QEMU runs as, a disk, kernel or initrd that resolves to a well-known
host secret (``/etc/shadow``, SSH host keys, ``/dev/mem``, ...) is refused
unless explicitly allowed (`secret_problem`).
"""
from __future__ import annotations

import fnmatch
import glob
import grp
import os
import pwd
import stat
from dataclasses import dataclass
from pathlib import Path

from .errors import InvalidArgError

ENV_QEMU_USER = "QDRIVER_QEMU_USER"

HOST_SECRETS = (
    "/etc/shadow", "/etc/shadow-", "/etc/gshadow", "/etc/gshadow-", "/etc/sudoers",
    "/etc/sudoers.d/*", "/etc/ssh/ssh_host_*_key", "/etc/ssl/private/*",
    "/root/.ssh/*", "/root/.gnupg/*", "/home/*/.ssh/*", "/home/*/.gnupg/*",
    "/dev/mem", "/dev/kmem", "/dev/port",
    "/proc/kcore", "/proc/*/mem", "/proc/*/environ", "/sys/firmware/*",
    "/etc/libvirt/*", "/var/lib/libvirt/*/*.key",
)
"""Files no guest disk should be made of (matched after resolving links)."""


@dataclass(frozen=True)
class QemuUser:
    """The unprivileged account QEMU drops to."""

    name: str
    uid: int
    gid: int
    groups: frozenset[int]

    @classmethod
    def resolve(cls, name: str) -> QemuUser:
        """Look the account up; `InvalidArgError` names an unknown one."""
        try:
            entry = pwd.getpwnam(name)
        except KeyError:
            raise InvalidArgError(f"QEMU user '{name}' does not exist") from None
        groups = {entry.pw_gid} | {g.gr_gid for g in grp.getgrall() if name in g.gr_mem}
        return cls(name, entry.pw_uid, entry.pw_gid, frozenset(groups))

    def may(self, st: os.stat_result, bits: int) -> bool:
        """Whether this user has ``bits`` (r=4, w=2, x=1) on a file with ``st``."""
        if self.uid == 0:
            return True
        mode = stat.S_IMODE(st.st_mode)
        if st.st_uid == self.uid:
            shift = 6
        elif st.st_gid in self.groups:
            shift = 3
        else:
            shift = 0
        return (mode >> shift) & bits == bits


@dataclass(frozen=True)
class LaunchPolicy:
    """How domains of one driver are launched."""

    qemu_user: QemuUser | None = None
    allow_host_secrets: bool = False
    standby: bool = True
    """After a template revert, start the next revert's QEMU ahead (a standby)."""


def policy(qemu_user: str | None, allow_host_secrets: bool = False,
           standby: bool = True) -> LaunchPolicy:
    """The policy for a user name (None: ``$QDRIVER_QEMU_USER``, else QEMU runs as us)."""
    name = qemu_user if qemu_user is not None else os.environ.get(ENV_QEMU_USER) or None
    return LaunchPolicy(QemuUser.resolve(name) if name else None, allow_host_secrets, standby)


def access_problem(user: QemuUser, path: str, write: bool) -> str | None:
    """Why ``user`` could not open ``path`` (read, and write if asked), or None."""
    real = Path(os.path.realpath(path))
    for directory in reversed(real.parents):
        if not user.may(os.stat(directory), 1):
            return f"user '{user.name}' cannot enter directory '{directory}'"
    try:
        st = os.stat(real)
    except OSError as e:
        return f"cannot access '{path}': {e.strerror}"
    wanted, verb = (6, "read and write") if write else (4, "read")
    if not user.may(st, wanted):
        return f"user '{user.name}' cannot {verb} '{path}'"
    return None


def secret_problem(path: str, secrets: dict[tuple[int, int], str] | None = None
                   ) -> str | None:
    """The host secret ``path`` is, if it is one: by name once links are resolved,
    or by device and inode (a hard link to ``/etc/shadow`` has another name).
    ``secrets``: `secret_files()` found once for several paths."""
    real = os.path.realpath(path)
    for pattern in HOST_SECRETS:
        if fnmatch.fnmatch(real, pattern):
            return f"'{path}' resolves to '{real}', a host secret ({pattern})"
    try:
        st = os.stat(path)
    except OSError:
        return None
    secret = (secrets if secrets is not None else secret_files()).get((st.st_dev, st.st_ino))
    if secret is not None:
        return f"'{path}' is the same file as '{secret}', a host secret"
    return None


def secret_files() -> dict[tuple[int, int], str]:
    """(device, inode) of every host secret file that exists now (the pseudo-file
    systems, where no hard link can be made, are left out)."""
    found: dict[tuple[int, int], str] = {}
    for pattern in HOST_SECRETS:
        if pattern.startswith(("/proc/", "/sys/", "/dev/")):
            continue
        for name in glob.glob(pattern):
            try:
                st = os.stat(name)
            except OSError:
                continue
            if stat.S_ISREG(st.st_mode):
                found.setdefault((st.st_dev, st.st_ino), name)
    return found


def hand_over(user: QemuUser | None, path: str | os.PathLike[str]) -> None:
    """Give an image qdriver made to the QEMU user (no user: nothing to do)."""
    if user is not None and os.geteuid() == 0:
        os.chown(path, user.uid, user.gid)


__all__ = ["QemuUser", "LaunchPolicy", "policy", "access_problem", "secret_problem", "secret_files",
           "hand_over", "HOST_SECRETS", "ENV_QEMU_USER"]
