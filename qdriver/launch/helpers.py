"""Helper processes a QEMU needs (``passt`` for a ``<backend type='passt'/>``
interface): started before QEMU, supervised as QEMU is, gone with it.

Each helper runs under the same supervisor as QEMU (`qdriver.process.spawn`),
in a session of its own, with an exit file ``helper-NAME.exit`` in the
domain's directory: whoever stops the domain (or recovers from a process
that died while starting it) kills what is left of every helper through
that file (`stop`).  passt is started with ``--one-off``, so it also ends
when QEMU lets go of its socket.  A helper never runs as root: it starts as
the QEMU user, or (qdriver running as root without one) as ``nobody``, and
makes its socket in a directory of its own that only that user may enter,
under the system's temporary directory (the domain's socket directory is
closed to it), with a random name recorded in the domain's directory
(``helper-NAME.dir``) before it is made.
"""
from __future__ import annotations

import os
import secrets
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import anyio

from .. import process
from ..emulator import drop_prefix
from ..paths import DomainPaths
from ..runas import QemuUser
from ..xml.domain import FilesystemDef, InterfaceDef

START_TIMEOUT = 10.0
"""How long a helper may take to make its socket."""
UNPRIVILEGED = "nobody"
"""Who a helper runs as when qdriver runs as root and no QEMU user is set."""


@dataclass(frozen=True)
class Helper:
    """One helper process: what runs, and the socket QEMU connects to."""

    name: str
    argv: list[str]
    socket: Path
    user: QemuUser | None = field(default=None, compare=False)
    """Who it runs as (None: qdriver's own user, which is then not root)."""


def helper_user(qemu_user: QemuUser | None) -> QemuUser | None:
    """The QEMU user; as root without one, ``nobody``; else qdriver's own user."""
    if qemu_user is not None or os.geteuid() != 0:
        return qemu_user
    return QemuUser.resolve(UNPRIVILEGED)


def socket_path(name: str) -> Path:
    """Where a new helper's socket goes: a directory with a random name, made when the
    helper starts."""
    return Path(tempfile.gettempdir()) / f"qdriver-{name}-{secrets.token_hex(8)}" / "sock"


def passt(program: str, index: int, iface: InterfaceDef, user: QemuUser | None) -> Helper:
    """passt for interface ``index``: one-off, in the foreground, its port forwards."""
    sock = socket_path(f"passt{index}")
    argv = [program, "--foreground", "--quiet", "--one-off", "--socket", str(sock)]
    for pf in iface.forwards:
        argv += ["--tcp-ports" if pf.proto == "tcp" else "--udp-ports",
                 f"{pf.address}/{pf.host_port}:{pf.guest_port}"]
    return Helper(f"passt{index}", argv, sock, user)


VIRTIOFSD_DIRS = ":/usr/libexec:/usr/lib/qemu"
"""Where ``virtiofsd`` is when it is not on ``PATH``: Debian's virtiofsd package, and
QEMU's own (``qemu-system-common`` up to QEMU 7.2)."""


def virtiofsd(program: str, index: int, fs: FilesystemDef) -> Helper:
    """virtiofsd serving ``fs`` to QEMU.  It runs as root, as libvirt runs it: it serves
    each file as its owner; its own sandbox (a mount, PID and network namespace with
    the folder as its root, capabilities dropped) is what confines it."""
    sock = socket_path(f"virtiofs{index}")
    argv = [program, f"--socket-path={sock}", "-o", f"source={fs.source}",
            "-o", "cache=auto", "-o", "sandbox=namespace"]
    return Helper(f"virtiofs{index}", argv, sock, None)


def exit_file(paths: DomainPaths, name: str) -> Path:
    return paths.dir / f"helper-{name}.exit"


async def start(helpers: list[Helper], paths: DomainPaths) -> None:
    """Start every helper (as its user) and wait for its socket.

    :raise OperationFailedError: a helper exited first (its log's tail says why),
        or made no socket in time; every helper is stopped.
    """
    try:
        for helper in helpers:
            _socket_dir(helper, paths)
            log = paths.dir / f"{helper.name}.log"
            since = process.log_size(log)
            process.spawn([*drop_prefix(helper.user), *helper.argv],
                          exit_file(paths, helper.name), log)
            await process.wait_ready(helper.socket.exists, exit_file(paths, helper.name),
                                     log, since, START_TIMEOUT, helper.name)
    except BaseException:
        with anyio.CancelScope(shield=True):
            await stop(paths)
        raise


def _socket_dir(helper: Helper, paths: DomainPaths) -> None:
    """The helper's socket directory, its user's alone: recorded, then made (a name
    taken already is an error, never reused)."""
    directory = helper.socket.parent
    record = paths.dir / f"helper-{helper.name}.dir"
    record.write_text(str(directory))
    directory.mkdir(mode=0o700)
    if helper.user is not None and os.geteuid() == 0:
        os.chown(directory, helper.user.uid, helper.user.gid)


async def stop(paths: DomainPaths) -> None:
    """Kill every helper of the domain still running, and remove their files.  A
    helper's record is written before it starts: with none, nothing is looked for
    (the look goes through every process)."""
    if not paths.dir.is_dir() or not any(paths.dir.glob("helper-*.dir")):
        return
    await process.kill_spawned(paths.dir / "helper-", prefix=True)
    for exitfile in paths.dir.glob("helper-*.exit"):
        exitfile.unlink(missing_ok=True)
    for record in paths.dir.glob("helper-*.dir"):
        directory = Path(record.read_text().strip())
        if directory.parent == Path(tempfile.gettempdir()) and \
                directory.name.startswith("qdriver-"):  # only what `start` made
            shutil.rmtree(directory, ignore_errors=True)
        record.unlink(missing_ok=True)


__all__ = ["Helper", "helper_user", "passt", "virtiofsd", "start", "stop", "START_TIMEOUT"]
