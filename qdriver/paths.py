"""Where qdriver keeps things.

The state dir holds definitions, snapshot metadata, runtime records and logs;
it defaults to ``$XDG_DATA_HOME/qdriver`` (``~/.local/share/qdriver``).
UNIX socket paths are limited to 108 bytes, so sockets live in a short
per-state-dir directory under ``$XDG_RUNTIME_DIR/qdriver`` (or ``/tmp``).
"""
from __future__ import annotations

import hashlib
import os
import stat
from dataclasses import dataclass
from pathlib import Path

from .errors import SystemError_
from .runas import QemuUser

ENV_STATE_DIR = "QDRIVER_STATE_DIR"
SOCKET_PATH_MAX = 107


def default_state_dir() -> Path:
    """``$QDRIVER_STATE_DIR`` or the XDG data directory."""
    if os.environ.get(ENV_STATE_DIR):
        return Path(os.environ[ENV_STATE_DIR])
    data = os.environ.get("XDG_DATA_HOME") or os.path.expanduser("~/.local/share")
    return Path(data) / "qdriver"


def runtime_base() -> Path:
    """The per-user directory that holds every state dir's socket directory.

    ``$XDG_RUNTIME_DIR`` is used only if it is a directory of this user that no
    one else may write to (as the login manager makes it); otherwise someone
    could rename our directory in it and put theirs in its place, so qdriver
    uses ``/tmp/qdriver-UID`` (in sticky ``/tmp``, checked like any other)."""
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime and _is_own_unshared_dir(runtime):
        return Path(runtime) / "qdriver"
    return Path(f"/tmp/qdriver-{os.getuid()}")


def _is_own_unshared_dir(path: str) -> bool:
    try:
        st = os.stat(path)
    except OSError:
        return False
    return stat.S_ISDIR(st.st_mode) and st.st_uid == os.geteuid() and not st.st_mode & 0o022


def nvram_path(state_dir: Path, name: str) -> Path:
    """A domain's own UEFI variable store (libvirt's ``NAME_VARS.fd``): beside the
    domains, so that ``undefine --keep-nvram`` can keep it."""
    return state_dir / "nvram" / f"{name}_VARS.fd"


def socket_root(state_dir: Path) -> Path:
    """A short directory for this state dir's sockets."""
    return runtime_base() / name_tag(str(state_dir.resolve()))


SOCKETS = "QEMU's sockets"


def name_tag(name: str) -> str:
    """A short, fixed-length stand-in for a domain's or network's name in socket paths
    (which the 108-byte limit keeps short)."""
    return hashlib.sha256(name.encode()).hexdigest()[:10]


MKDIR_ATTEMPTS = 5
"""A process that cleans up removes the shared socket base once it is empty; another
process creating its directories meanwhile starts over this many times."""


def make_private_dirs(path: Path, root: Path | None = None, what: str = SOCKETS,
                      user: QemuUser | None = None) -> None:
    """Create ``path`` and the directories between it and ``root`` (default
    `runtime_base`), each checked to be private: a real directory (no
    symlink), owned by this user, with no access for group or others.

    ``/tmp/qdriver-UID`` may have been made by someone else before us, or be
    a symlink to their directory; sockets created there could be renamed and
    replaced by fake ones.  Such a directory is refused, never used.

    With ``user`` (QEMU starts as that user and makes its sockets itself) ``path``
    is handed to that user, and the directories above may be entered, not
    listed, by others (mode 0711, accepted above ``path`` in any case); nobody
    else can write anywhere on the way.
    """
    base = runtime_base() if root is None else root
    chain = [base, *[base / Path(*path.relative_to(base).parts[:i + 1])
                     for i in range(len(path.relative_to(base).parts))]]
    for attempt in range(MKDIR_ATTEMPTS):
        try:
            _make_chain(chain, what, user)
            break
        except FileNotFoundError:  # another process removed an empty parent meanwhile
            if attempt == MKDIR_ATTEMPTS - 1:
                raise SystemError_(f"cannot create directory '{path}' for {what}: its "
                                   "parent keeps disappearing") from None
    if user is not None:
        _check_reachable(path, user)


def _make_chain(chain: list[Path], what: str, user: QemuUser | None) -> None:
    """Create and check each directory of ``chain``, top down.

    :raise FileNotFoundError: a parent vanished between two steps.
    """
    for directory in chain:
        try:
            os.mkdir(directory, 0o700)
        except FileExistsError:
            pass
        except FileNotFoundError:
            raise
        except OSError as e:
            raise SystemError_(f"cannot create directory '{directory}' for {what}: "
                               f"{e.strerror}") from e
        last = directory == chain[-1]
        if user is not None:
            _share(directory, user if last else None)
        _check_private(directory, what, user.uid if user is not None and last else None,
                       traversable=not last)


def _share(directory: Path, owner: QemuUser | None) -> None:
    """Hand the last directory to QEMU's user; let it enter the ones above."""
    st = os.lstat(directory)
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid():
        return  # refused by the check that follows
    if owner is not None:
        os.chown(directory, owner.uid, owner.gid)
    elif stat.S_IMODE(st.st_mode) == 0o700:
        os.chmod(directory, 0o711)


def _check_reachable(path: Path, user: QemuUser) -> None:
    for directory in reversed(path.parents):
        if not user.may(os.stat(directory), 1):
            raise SystemError_(f"QEMU user '{user.name}' cannot enter directory "
                               f"'{directory}' to reach its sockets (unset XDG_RUNTIME_DIR "
                               "to use /tmp/qdriver-UID)")


def make_private_dir(directory: Path) -> None:
    """Create ``directory`` (and its parents) readable by this user alone, and
    make an existing one so: definitions, logs and console output are private."""
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    if stat.S_IMODE(directory.stat().st_mode) != 0o700:
        os.chmod(directory, 0o700)


def open_private_log(path: Path) -> None:
    """Create a log file only this user may read (an existing one is made so):
    a guest's console and QEMU's messages are nobody else's business."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW, 0o600)
    try:
        if stat.S_IMODE(os.fstat(fd).st_mode) != 0o600:
            os.fchmod(fd, 0o600)
    finally:
        os.close(fd)


def _check_private(directory: Path, what: str, owner: int | None = None,
                   traversable: bool = False) -> None:
    st = os.lstat(directory)
    uid = os.geteuid() if owner is None else owner
    shared = 0o066 if traversable else 0o077
    problem = ("is a symbolic link" if stat.S_ISLNK(st.st_mode) else
               "is not a directory" if not stat.S_ISDIR(st.st_mode) else
               f"is owned by uid {st.st_uid}, not {uid}" if st.st_uid != uid
               else f"has mode {stat.S_IMODE(st.st_mode):04o}, open to other users"
               if st.st_mode & shared else None)
    if problem:
        hint = "remove it, or set XDG_RUNTIME_DIR" if what == SOCKETS else "remove it"
        raise SystemError_(f"directory '{directory}' {problem}: refusing to put "
                           f"{what} there ({hint})")


def owner_dir(path: str | Path, state_dir: Path) -> Path | None:
    """The directory of qdriver's own files that ``path`` lies in, if any: the state
    dir's ``domains`` (definitions, metadata, logs) or the runtime base (sockets).
    Symbolic links are resolved: a link into them is inside too."""
    real = Path(os.path.realpath(path))
    for owned in (state_dir / "domains", runtime_base()):
        root = Path(os.path.realpath(owned))
        if real == root or root in real.parents:
            return owned
    return None


@dataclass(frozen=True)
class DomainPaths:
    """Every file of one domain."""

    dir: Path
    sockets: Path
    slot: str = ""
    """A standby QEMU's slot (`in_slot`); empty for the domain's own files."""

    @classmethod
    def of(cls, state_dir: Path, name: str) -> DomainPaths:
        return cls(state_dir / "domains" / name, socket_root(state_dir) / name_tag(name))

    @property
    def state_dir(self) -> Path:
        """The state dir the domain belongs to."""
        return self.dir.parent.parent

    @property
    def definition(self) -> Path:
        return self.dir / "domain.xml"

    @property
    def live_definition(self) -> Path:
        """The definition the running QEMU was started with, kept in step with what
        QEMU runs (libvirt's live XML); it exists only while QEMU runs."""
        return self.dir / "live.xml"

    @property
    def runtime(self) -> Path:
        return self.dir / "run.json"

    @property
    def status(self) -> Path:
        return self.dir / "status.json"

    @property
    def journal(self) -> Path:
        """The journal of the operation in progress (see `qdriver.journal`)."""
        return self.dir / "journal.json"

    @property
    def lock(self) -> Path:
        return self.dir / "lock"

    @property
    def qemu_log(self) -> Path:
        return self.dir / "qemu.log"

    @property
    def console_log(self) -> Path:
        return self.dir / "console.log"

    @property
    def destroy_marker(self) -> Path:
        """Made by ``destroy`` before it kills QEMU: whoever reaps it says "destroyed"."""
        return self.dir / "destroy-requested"

    @property
    def pidfile(self) -> Path:
        """Written by QEMU itself: with the sockets, where QEMU's user may write."""
        return self.sockets / "qemu.pid"

    @property
    def exitfile(self) -> Path:
        return self.dir / (f"qemu.exit.{self.slot}" if self.slot else "qemu.exit")

    def in_slot(self, slot: str) -> DomainPaths:
        """The files of a QEMU started ahead in ``slot`` (a standby): its sockets in a
        directory beside the domain's, which becomes the domain's when the standby
        takes over (a listening socket keeps working when its directory is renamed),
        and an exit file of its own, which its supervisor writes by that name."""
        return DomainPaths(self.dir, self.sockets.with_name(f"{self.sockets.name}.{slot}"),
                           slot)

    @property
    def standby(self) -> Path:
        """The record of the domain's standby QEMU (`qdriver.launch.standby`)."""
        return self.dir / "standby.json"

    @property
    def managed_save(self) -> Path:
        """The domain's managed save image (``virsh managedsave``)."""
        return self.dir / "managed.save"

    @property
    def snapshots(self) -> Path:
        return self.dir / "snapshots"

    def nvram_copy(self, snapshot: str) -> Path:
        """A snapshot's copy of the domain's UEFI variable store, beside its metadata."""
        return self.snapshots / f"{snapshot}.nvram"

    @property
    def qmp(self) -> Path:
        return self.sockets / "qmp.sock"

    @property
    def qmp_query(self) -> Path:
        return self.sockets / "query.sock"

    @property
    def qmp_keep(self) -> Path:
        """The monitor one process at a time keeps open between its jobs (`qmp.kept`)."""
        return self.sockets / "keep.sock"

    @property
    def events(self) -> Path:
        """The monitor a listening process records the guest's events from
        (`qdriver.events.recorder`)."""
        return self.sockets / "events.sock"

    @property
    def keep_lease(self) -> Path:
        """flocked by the process that keeps ``qmp_keep`` open."""
        return self.sockets / "keep.lease"

    @property
    def console(self) -> Path:
        return self.sockets / "console.sock"

    @property
    def ram_file(self) -> Path:
        """The guest's RAM with ``<memoryBacking><source type='file'/>``: beside
        the sockets, where QEMU's user may create it, and gone with the QEMU."""
        return self.sockets / "pc.ram"

    def channel(self, index: int) -> Path:
        return self.sockets / f"channel{index}.sock"

    def remove_files(self) -> None:
        """Remove every file of the domain but its lock (the caller holds it)."""
        for path in sorted(self.dir.rglob("*"), reverse=True):
            if path != self.lock:
                path.rmdir() if path.is_dir() else path.unlink()

    def remove_dir(self) -> None:
        """Remove the lock and the emptied directory (`remove_files`), once the lock
        is let go: taking it again must not bring the directory back."""
        self.lock.unlink(missing_ok=True)
        self.dir.rmdir()
