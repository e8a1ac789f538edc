"""The QEMU program a domain runs: checked before anything runs it.

``<emulator>`` names a program, and qdriver runs it: to list machine types at
``define``, to learn its options, and as the guest's QEMU.  Whoever can write
that file, or the directory it is in, chooses what runs, so an emulator is
run only if it is a regular file owned by root or by this user, that nobody
else may change (nor any directory above it), and that answers ``-version``
as QEMU.  When qdriver runs as root with a QEMU user set, every run, the
probes included, drops to that user before the program starts.  A QEMU from
a private prefix (``dpkg -x``) loads its modules from that prefix.
"""
from __future__ import annotations

import functools
import glob
import os
import re
import shutil
import stat
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from .errors import SystemError_
from .runas import QemuUser

VERSION_LINE = re.compile(r"^QEMU emulator version (\d+\.\d+)", re.M)
PROBE_TIMEOUT = 30.0
SETPRIV = "/usr/bin/setpriv"
"""util-linux's setpriv: sets the ids, then execs the program (no shell in between)."""


class EmulatorRefused(SystemError_):
    """The emulator is not one qdriver will run (its file, or what it answers)."""


@dataclass(frozen=True)
class Emulator:
    """A checked emulator: the program to run and what it needs to run."""

    path: str
    version: str
    env: dict[str, str] = field(default_factory=dict, hash=False, compare=False)
    """Extra environment: a prefix's module directory (follows from ``path``)."""


def check(path: str, user: QemuUser | None = None) -> Emulator:
    """Check ``path`` as a program qdriver may run; `EmulatorRefused` says why not."""
    real = os.path.realpath(path)
    try:
        st = os.stat(real)
    except OSError as e:
        raise EmulatorRefused(f"Cannot find QEMU binary {path}: {e.strerror}") from e
    problem = _file_problem(real, st)
    if problem:
        raise EmulatorRefused(f"refusing emulator '{path}': {problem}")
    return _answers(real, st.st_dev, st.st_ino, st.st_mtime_ns, st.st_size, user)


def check_program(name: str, also: str = "") -> str:
    """A helper program qdriver starts beside QEMU (``passt``), found on ``PATH`` (or
    in ``/usr/sbin``, where ``dnsmasq`` is, not on a user's ``PATH``) and
    checked as an emulator's file is (owner, nobody else may change it); its path.

    :raise EmulatorRefused: it is missing, or not a file qdriver will run.
    """
    found = shutil.which(name, path=f"{os.environ.get('PATH', '')}:/usr/sbin:/sbin{also}")
    if found is None:
        raise EmulatorRefused(f"cannot find '{name}' (install Debian's {name} package)")
    real = os.path.realpath(found)
    problem = _file_problem(real, os.stat(real))
    if problem:
        raise EmulatorRefused(f"refusing to run '{found}': {problem}")
    return real


def _file_problem(real: str, st: os.stat_result) -> str | None:
    trusted = {0, os.geteuid()}
    if not stat.S_ISREG(st.st_mode) or not st.st_mode & 0o111:
        return f"'{real}' is not an executable regular file"
    if st.st_uid not in trusted:
        return f"'{real}' is owned by uid {st.st_uid}, not by root or this user"
    if st.st_mode & 0o022:
        return f"'{real}' may be changed by other users (mode {stat.S_IMODE(st.st_mode):04o})"
    for directory in Path(real).parents:
        d = os.stat(directory)
        if d.st_uid not in trusted or (d.st_mode & 0o022 and not d.st_mode & stat.S_ISVTX):
            return f"directory '{directory}' may be changed by other users"
    return None


@functools.lru_cache(maxsize=16)
def _answers(real: str, dev: int, ino: int, mtime: int, size: int,
             user: QemuUser | None) -> Emulator:
    """Ask the file once per version of it (and user) whether it is QEMU."""
    env = module_env(real)
    out = _run(real, ["-version"], user, env)
    found = VERSION_LINE.search(out.stdout)
    if out.returncode != 0 or found is None:
        raise EmulatorRefused(f"refusing emulator '{real}': it does not answer as QEMU "
                              f"({(out.stdout or out.stderr).strip()[:200]!r})")
    return Emulator(real, found.group(1), env)


def run(emulator: Emulator, args: Sequence[str], user: QemuUser | None = None
        ) -> subprocess.CompletedProcess[str]:
    """Run a checked emulator (a probe: ``-help``, ``-machine help``), as the QEMU
    user when one is set and qdriver runs as root."""
    return _run(emulator.path, args, user, emulator.env)


def _run(path: str, args: Sequence[str], user: QemuUser | None, env: dict[str, str]
         ) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run([*drop_prefix(user), path, *args], capture_output=True,
                              text=True, timeout=PROBE_TIMEOUT, stdin=subprocess.DEVNULL,
                              env={**os.environ, **env})
    except (OSError, subprocess.SubprocessError) as e:
        raise EmulatorRefused(f"cannot run emulator '{path}': {e}") from e


def drop_prefix(user: QemuUser | None) -> list[str]:
    """What goes before a program's argv so that it starts as ``user`` (nothing when
    no user is set or qdriver is not root): the ids change before the exec."""
    if user is None or os.geteuid() != 0:
        return []
    if not os.access(SETPRIV, os.X_OK):
        raise SystemError_(f"{SETPRIV} (util-linux) is needed to run QEMU as "
                           f"'{user.name}'")
    return [SETPRIV, f"--reuid={user.uid}", f"--regid={user.gid}", "--init-groups", "--"]


def module_env(real: str) -> dict[str, str]:
    """``QEMU_MODULE_DIR`` for a QEMU unpacked under a prefix (``PREFIX/usr/bin``):
    without it, it would try the system QEMU's modules, which it refuses."""
    binary = Path(real)
    if binary.parent.name != "bin" or binary.parent.parent.name != "usr":
        return {}
    prefix = binary.parent.parent.parent
    if prefix == Path("/"):
        return {}
    found = sorted(glob.glob(str(prefix / "usr" / "lib" / "*" / "qemu")))
    return {"QEMU_MODULE_DIR": found[0]} if found else {}


__all__ = ["Emulator", "EmulatorRefused", "check", "check_program", "run", "drop_prefix",
           "module_env"]
