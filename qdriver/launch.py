"""Start a domain's QEMU from the definition an operation holds (the lock is held).

Shared by ``start`` and by operations that replace the QEMU (revert, restore):
check the accelerator and the files the definition names, build the command
line, launch.
"""
from __future__ import annotations

from contextlib import AsyncExitStack
from pathlib import Path
from typing import Callable

from . import accel, cmdline, qmp
from .errors import ConfigUnsupportedError, SystemError_
from .opcontext import OpContext
from .xml.domain import DomainDef


async def start_qemu(ctx: OpContext, next_id: Callable[[], int], paused: bool,
                     incoming: bool = False, keep: AsyncExitStack | None = None
                     ) -> qmp.Monitor | None:
    """Launch QEMU for ``ctx.definition``; the run record is set on ``ctx``.

    With ``incoming`` QEMU waits for an incoming migration (it stays paused).
    With ``keep`` the launch's monitor stays open in that stack and is returned.
    """
    status = accel.probe(ctx.definition.type)
    if not status.usable:
        raise ConfigUnsupportedError(
            f"Domain requires KVM, but it is not usable here: {status.reason}")
    check_files(ctx.definition)
    argv = cmdline.build(ctx.definition, ctx.paths, status.name, incoming)
    ctx.record, mon = await ctx.runtime.launch(argv, status.name, next_id(),
                                               paused or incoming, keep)
    return mon


def check_files(definition: DomainDef) -> None:
    """Refuse with libvirt's words if an image, kernel or initrd is missing."""
    wanted: list[tuple[str, str | None]] = [
        ("storage file", disk.source) for disk in definition.disks if disk.source]
    wanted += [("kernel", definition.kernel), ("initrd", definition.initrd)]
    for what, path in wanted:
        if path and not Path(path).exists():
            raise SystemError_(f"Cannot access {what} '{path}': No such file or directory")


__all__ = ["start_qemu", "check_files"]
