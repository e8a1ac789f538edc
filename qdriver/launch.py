"""Start a domain's QEMU from the definition an operation holds (the lock is held).

Shared by ``start`` and by operations that replace the QEMU (revert, restore):
check the accelerator and the files the definition names, build the command
line, launch.
"""
from __future__ import annotations

from contextlib import AsyncExitStack
from pathlib import Path
from typing import Callable

from . import accel, cmdline, qemuimg, qmp, runas
from .errors import ConfigUnsupportedError, InvalidArgError, SystemError_
from .opcontext import OpContext, storable_definition
from .paths import DomainPaths
from .runas import LaunchPolicy
from .xml.domain import DomainDef


async def start_qemu(ctx: OpContext, next_id: Callable[[], int], paused: bool,
                     incoming: bool = False, keep: AsyncExitStack | None = None
                     ) -> qmp.Monitor | None:
    """Launch QEMU for ``ctx.definition``; the run record is set on ``ctx``.

    With ``incoming`` QEMU waits for an incoming migration (it stays paused).
    With ``keep`` the launch's monitor stays open in that stack and is returned.
    """
    check_files(ctx.definition, ctx.policy)
    argv, accelerator = native_argv(ctx.definition, ctx.paths, ctx.policy, incoming)
    persistent = ctx.inactive
    ctx.record, mon = await ctx.runtime.launch(argv, accelerator, next_id(),
                                               paused or incoming, keep,
                                               storable_definition(ctx.definition))
    ctx.persistent = persistent
    return mon


def native_argv(definition: DomainDef, paths: DomainPaths, policy: LaunchPolicy,
                incoming: bool = False) -> tuple[list[str], str]:
    """The QEMU command line a start would run (``domxml-to-native``), and the
    accelerator it uses; `ConfigUnsupportedError` if KVM is asked and unusable."""
    status = accel.probe(definition.type)
    if not status.usable:
        raise ConfigUnsupportedError(
            f"Domain requires KVM, but it is not usable here: {status.reason}")
    user = policy.qemu_user
    run_as = runas.runas_option(cmdline.emulator_for(definition), user) if user else None
    return cmdline.build(definition, paths, status.name, incoming, run_as), status.name


def check_files(definition: DomainDef, policy: LaunchPolicy = LaunchPolicy()) -> None:
    """Refuse with libvirt's words if an image, kernel or initrd is missing; refuse a
    host secret unless allowed, and a file the QEMU user could not open itself."""
    wanted: list[tuple[str, str | None, bool]] = [
        (f"disk '{disk.target}'", disk.source, not disk.readonly)
        for disk in definition.disks if disk.source]
    wanted += [("kernel", definition.kernel, False), ("initrd", definition.initrd, False)]
    for what, path, write in wanted:
        if not path:
            continue
        if not Path(path).exists():
            noun = "storage file" if what.startswith("disk") else what
            raise SystemError_(f"Cannot access {noun} '{path}': No such file or directory")
        for image, rw in [(path, write), *((b, False) for b in _backing_chain(path))]:
            _check_one(what, image, rw, policy)


def _check_one(what: str, path: str, write: bool, policy: LaunchPolicy) -> None:
    secret = runas.secret_problem(path)
    if secret and not policy.allow_host_secrets:
        raise InvalidArgError(f"refusing {what}: {secret}; allow host secrets explicitly "
                              "to use it")
    user = policy.qemu_user
    problem = runas.access_problem(user, path, write) if user else None
    if problem:
        raise SystemError_(f"cannot give {what} to QEMU: {problem} (QEMU runs as "
                           f"'{user.name if user else ''}': hand the file over, or choose one "
                           "that user can open)")


def _backing_chain(image: str) -> list[str]:
    """The backing files below ``image`` (read from qcow2 headers)."""
    chain: list[str] = []
    current: str | None = image
    while current is not None and len(chain) < 256:
        try:
            current = qemuimg.header.read(current).backing
        except OSError:
            break
        if current is not None:
            chain.append(current)
    return chain


__all__ = ["start_qemu", "check_files", "native_argv"]
