"""What a QEMU can do, asked from QEMU itself: decide by capability, not by version.

`probe` asks a running QEMU three cheap questions (``query-version``,
``query-commands``, ``query-migrate-capabilities``); the answer is stored in
the run record the first time an operation needs it, since a QEMU's
abilities do not change while it runs.  `probe_schema` adds what only
``query-qmp-schema`` tells (the ``file:`` migration transport); it costs
about 0.1 s, so only ``domcapabilities`` and the benchmarks ask it, from a
throwaway ``-machine none`` QEMU (`probe_binary`).
"""
from __future__ import annotations

import asyncio
import functools
import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Mapping

from .. import qmp
from ..emulator import Emulator
from ..emulator import check as checked_emulator
from ..emulator import run as run_emulator
from ..errors import OperationFailedError
from ..runas import QemuUser

QEMU_BINARY = "qemu-system-x86_64"


@dataclass(frozen=True)
class QemuCaps:
    """The snapshot-relevant abilities of one QEMU."""

    version: str = ""
    snapshot_save: bool = False
    """QMP ``snapshot-save``/``-load``/``-delete`` jobs (QEMU 6.0+); else HMP savevm."""
    background_snapshot: bool = False
    """The ``background-snapshot`` migration capability exists (the host kernel may
    still lack userfaultfd write-protect: trying it on tells)."""
    mapped_ram: bool = False
    """The ``mapped-ram`` migration capability (a fixed-offset file layout, QEMU 9.0+)."""
    multifd: bool = False
    file_transport: bool | None = None
    """The ``file:`` migration URI with ``offset=`` (QEMU 8.2+); None if not asked."""

    @property
    def background_keeps_run_state(self) -> bool:
        """After a background snapshot, QEMU puts the vCPUs back in the state they had.

        QEMU 9.0 changed the end of a background snapshot from "start the
        vCPUs" to "restore the old run state"; the same release brought the
        ``mapped-ram`` capability, so its presence tells which behaviour this
        QEMU has without running a migration to find out.
        """
        return self.background_snapshot and self.mapped_ram

    def to_record(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_record(cls, data: Mapping[str, Any]) -> QemuCaps:
        names = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in data.items() if k in names})


async def probe(mon: qmp.Monitor) -> QemuCaps:
    """The cheap probe of a running QEMU."""
    ver = (await mon.execute("query-version"))["qemu"]
    commands = {c["name"] for c in await mon.execute("query-commands")}
    migrate = {c["capability"] for c in await mon.execute("query-migrate-capabilities")}
    return QemuCaps(version=f"{ver['major']}.{ver['minor']}.{ver['micro']}",
                    snapshot_save="snapshot-save" in commands,
                    background_snapshot="background-snapshot" in migrate,
                    mapped_ram="mapped-ram" in migrate, multifd="multifd" in migrate)


async def probe_schema(mon: qmp.Monitor) -> QemuCaps:
    """The cheap probe plus what only the QAPI schema tells."""
    caps = await probe(mon)
    schema = await mon.execute("query-qmp-schema", timeout=30)
    return QemuCaps(**{**asdict(caps), "file_transport": has_file_transport(schema)})


def has_file_transport(schema: list[dict[str, Any]]) -> bool:
    """Whether ``migrate`` takes a ``file`` transport (MigrationAddressType)."""
    return any(e.get("meta-type") == "enum" and {"exec", "file", "socket"} <= set(
        e.get("values", ())) for e in schema)


def binary() -> str:
    """The QEMU system emulator on PATH."""
    path = shutil.which(QEMU_BINARY)
    if path is None:
        raise OperationFailedError(f"{QEMU_BINARY} is not installed (package qemu-system-x86)")
    return path


async def probe_binary(timeout: float = 10.0) -> QemuCaps:
    """Start the QEMU on PATH (once checked) with no machine, probe it fully, and stop it."""
    program = checked_emulator(binary())
    with tempfile.TemporaryDirectory(prefix="qdriver-probe-") as tmp:
        sock = Path(tmp) / "qmp.sock"
        proc = subprocess.Popen(
            [program.path, "-machine", "none", "-nodefaults", "-display", "none", "-S",
             "-qmp", f"unix:{sock},server=on,wait=off"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            env={**os.environ, **program.env})
        try:
            loop = asyncio.get_running_loop()
            deadline = loop.time() + timeout
            while not sock.exists():
                if proc.poll() is not None or loop.time() > deadline:
                    err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
                    raise OperationFailedError(f"cannot probe {binary()}: {err.strip()}")
                await asyncio.sleep(0.005)
            mon = await qmp.connect_new(sock, lambda: proc.poll() is None, timeout)
            try:
                return await probe_schema(mon)
            finally:
                await qmp.close(mon)
        finally:
            proc.kill()
            proc.wait()
            if proc.stderr:
                proc.stderr.close()
            if sock.exists():
                os.unlink(sock)


MACHINE_LINE = re.compile(r"^(\S+)\s+.*?(?:\(alias of (\S+)\))?\s*$", re.M)


def machine_types(emulator: str, user: QemuUser | None = None) -> dict[str, str]:
    """Every machine type an emulator has, each with the type it stands for (an
    alias: ``q35`` -> ``pc-q35-7.2``; a type: itself), from its ``-machine help``
    once it is checked (`qdriver.emulator`, run as ``user``); remembered per
    binary and modification time."""
    program = checked_emulator(emulator, user)
    st = os.stat(program.path)
    return _machine_types(program, st.st_mtime_ns, st.st_ino, user)


def machine_aliases(emulator: str, user: QemuUser | None = None) -> dict[str, str]:
    """``{alias: machine type}`` of an emulator (`machine_types`' aliases)."""
    return {name: real for name, real in machine_types(emulator, user).items() if name != real}


@functools.lru_cache(maxsize=8)
def _machine_types(program: Emulator, mtime: int, inode: int,
                   user: QemuUser | None) -> dict[str, str]:
    out = run_emulator(program, ["-machine", "help"], user)
    if out.returncode != 0:
        raise OperationFailedError(f"cannot list the machine types of {program.path}: "
                                   f"{out.stderr.strip()}")
    body = out.stdout.split("\n", 1)[1] if out.stdout.startswith("Supported") else out.stdout
    return {name: alias or name for name, alias in MACHINE_LINE.findall(body)}


def ram_file_opens_read_only(emulator: str, user: QemuUser | None = None) -> bool:
    """Whether the emulator's ``memory-backend-file`` has the ``rom`` property (QEMU
    8.2+): then ``readonly=on,rom=off`` maps a file privately and writably while
    opening it read-only.  From ``-object memory-backend-file,help``, remembered
    per binary and modification time."""
    program = checked_emulator(emulator, user)
    st = os.stat(program.path)
    return _file_backend_has_rom(program, st.st_mtime_ns, st.st_ino, user)


@functools.lru_cache(maxsize=8)
def _file_backend_has_rom(program: Emulator, mtime: int, inode: int,
                          user: QemuUser | None) -> bool:
    out = run_emulator(program, ["-object", "memory-backend-file,help"], user)
    return re.search(r"^\s*rom=", out.stdout, re.M) is not None


__all__ = ["QemuCaps", "probe", "ram_file_opens_read_only", "probe_schema", "probe_binary",
           "has_file_transport", "binary",
           "machine_aliases", "machine_types"]
