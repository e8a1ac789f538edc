"""What starting a domain's QEMU runs: the accelerator and every file the
definition names are checked, then the command line is built.

`Job.launch` runs it (for ``start`` and for the operations that replace the
QEMU: revert, restore); ``domxml-to-native`` only prints it.
"""
from __future__ import annotations

import os
import stat
from pathlib import Path

from .. import emulator, runas
from ..caps import accel, qemucaps
from ..durable import copy_file
from ..errors import (
    ConfigUnsupportedError,
    InvalidArgError,
    OperationFailedError,
    SystemError_,
)
from ..memory import template
from ..paths import DomainPaths, make_private_dir
from ..qemuimg.chain import Layer, backing_layers
from ..runas import LaunchPolicy
from ..xml.domain import DomainDef
from . import cmdline, helpers, netprocs
from .runtime import QemuCommand


def qemu_command(definition: DomainDef, paths: DomainPaths, policy: LaunchPolicy,
                 incoming: bool = False, launching: bool = True,
                 ram_template: str | None = None) -> QemuCommand:
    """What a start runs, once the emulator and every file it opens are checked
    (`check_files`); `ConfigUnsupportedError` if KVM is asked and unusable.  Not
    ``launching`` (``domxml-to-native``), images that are missing are left out of
    the chains instead of refused.  ``ram_template``: a clone's RAM file (checked
    and sealed here: `memory.template.seal`; QEMU 8.2+ opens it read-only)."""
    if launching:
        prepare_nvram(definition, policy)
    chains = check_files(definition, policy) if launching else readable_chains(definition)
    status = accel.probe(definition.type)
    if not status.usable:
        raise ConfigUnsupportedError(
            f"Domain requires KVM, but it is not usable here: {status.reason}")
    user = policy.qemu_user
    program = emulator.check(cmdline.emulator_for(definition), user)
    drop = emulator.drop_prefix(user)
    read_only_ram = False
    if ram_template is not None:
        read_only_ram = qemucaps.ram_file_opens_read_only(program.path, user)
        template.seal(ram_template, definition.memory_kib * 1024, user, read_only_ram)
        _check_one("template RAM", ram_template, not read_only_ram, policy, {})
    needed = _helpers(definition, user, launching)
    sockets = {i: h.socket for i, h in needed.items()} | _switches(definition, paths,
                                                                    launching)
    folders = _folders(definition, user, launching)
    argv = cmdline.build(definition, paths, status.name, incoming, log_fd=bool(drop),
                         chains=chains, emulator=program.path, ram_template=ram_template,
                         read_only_ram=read_only_ram, helper_sockets=sockets,
                         fs_sockets={i: h.socket for i, h in folders.items()})
    st = os.stat(program.path)
    return QemuCommand(argv, status.name, program.env, drop, user if drop else None,
                       ram_template, f"{program.path}:{st.st_dev}:{st.st_ino}:{st.st_mtime_ns}",
                       [*needed.values(), *folders.values()] if launching else [])


def _helpers(definition: DomainDef, qemu_user: runas.QemuUser | None,
             launching: bool) -> dict[int, helpers.Helper]:
    """The helper processes the definition's interfaces need (passt), by interface."""
    wanted = [(i, iface) for i, iface in enumerate(definition.interfaces)
              if iface.backend == "passt"]
    if not wanted:
        return {}
    program = emulator.check_program("passt") if launching else "passt"
    user = helpers.helper_user(qemu_user)
    return {i: helpers.passt(program, i, iface, user) for i, iface in wanted}


def _folders(definition: DomainDef, qemu_user: runas.QemuUser | None,
             launching: bool) -> dict[int, helpers.Helper]:
    """The virtiofsd of each virtiofs folder, by filesystem.

    :raise ConfigUnsupportedError: qdriver does not run as root (virtiofsd serves
        files as their owners), or QEMU runs as a user of its own.
    """
    wanted = [(i, fs) for i, fs in enumerate(definition.filesystems) if fs.driver == "virtiofs"]
    if not wanted:
        return {}
    if launching and (os.geteuid() != 0 or qemu_user is not None):
        raise ConfigUnsupportedError(
            "a virtiofs folder needs qdriver running as root, and QEMU as root too: "
            "virtiofsd serves each file as its owner (use <driver type='path'/>, 9p)")
    program = emulator.check_program("virtiofsd", helpers.VIRTIOFSD_DIRS) if launching \
        else "virtiofsd"
    return {i: helpers.virtiofsd(program, i, fs) for i, fs in wanted}


def _switches(definition: DomainDef, paths: DomainPaths, launching: bool
              ) -> dict[int, Path]:
    """The switch of each ``network`` interface's qdriver network, by interface;
    `OperationInvalidError` if a network is not started (only when launching)."""
    found: dict[int, Path] = {}
    for i, iface in enumerate(definition.interfaces):
        if iface.type == "network" and iface.network:
            found[i] = netprocs.switch_socket(paths.state_dir, iface.network) if launching \
                else netprocs.NetworkPaths.of(paths.state_dir, iface.network).switch
    return found


def native_argv(definition: DomainDef, paths: DomainPaths, policy: LaunchPolicy,
                incoming: bool = False) -> tuple[list[str], str]:
    """The QEMU command line a start would run (``domxml-to-native``), and its
    accelerator; its images need not exist yet."""
    command = qemu_command(definition, paths, policy, incoming, launching=False)
    return command.argv, command.accel


def readable_chains(definition: DomainDef) -> dict[str, tuple[Layer, ...]]:
    """The backing layers of the disks whose images can be read now."""
    chains: dict[str, tuple[Layer, ...]] = {}
    for disk in definition.disks:
        if disk.source and Path(disk.source).exists():
            try:
                chains[disk.target] = backing_layers(disk.source, disk.format,
                                                     f"disk '{disk.target}'")
            except OSError:
                continue
    return chains


def check_files(definition: DomainDef, policy: LaunchPolicy = LaunchPolicy()
                ) -> dict[str, tuple[Layer, ...]]:
    """Check every file QEMU will open and return each disk's backing layers.

    Refuse with libvirt's words if an image, kernel or initrd is missing; refuse a
    backing name that is not a plain file, a host secret (by path or by inode)
    unless allowed, and a file the QEMU user could not open itself."""
    chains: dict[str, tuple[Layer, ...]] = {}
    wanted: list[tuple[str, str | None, bool]] = [
        ("kernel", definition.kernel, False), ("initrd", definition.initrd, False)]
    if definition.loader is not None:
        wanted += [("UEFI firmware", definition.loader.path, False),
                   ("UEFI variable store", definition.nvram, True)]
    for disk in definition.disks:
        if not disk.source:
            continue
        what = f"disk '{disk.target}'"
        _check_exists(what, disk.source)
        if disk.type == "block" and not stat.S_ISBLK(os.stat(disk.source).st_mode):
            raise InvalidArgError(f"{what}: '{disk.source}' is not a block device")
        try:
            chains[disk.target] = backing_layers(disk.source, disk.format, what)
        except OSError as e:
            raise SystemError_(f"Cannot access storage file '{disk.source}': "
                               f"{e.strerror}") from e
        wanted.append((what, disk.source, not disk.readonly))
        wanted += [(what, layer.path, False) for layer in chains[disk.target]]
    for fs in definition.filesystems:  # a folder QEMU (9p) or virtiofsd serves
        if not Path(fs.source).is_dir():
            raise SystemError_(f"Cannot access filesystem '{fs.target}' source '{fs.source}': "
                               "No such directory")
    secrets = runas.secret_files() if not policy.allow_host_secrets else {}
    for what, path, write in wanted:
        if path:
            _check_exists(what, path)
            _check_one(what, path, write, policy, secrets)
    return chains


def prepare_nvram(definition: DomainDef, policy: LaunchPolicy) -> None:
    """Make the domain's UEFI variable store from its template, if it has none yet
    (libvirt's first start): private, and the QEMU user's, who writes it.

    :raise OperationFailedError: no template to make it from.
    """
    if definition.loader is None or definition.nvram is None or \
            os.path.lexists(definition.nvram):
        return
    template = definition.nvram_template
    if template is None:
        raise OperationFailedError(f"unable to find any master var store for loader: "
                                   f"{definition.loader.path}")
    _check_exists("UEFI variable store template", template)
    make_private_dir(Path(definition.nvram).parent)
    user = policy.qemu_user
    copy_file(template, definition.nvram, (user.uid, user.gid) if user else None)


def _check_exists(what: str, path: str) -> None:
    if not Path(path).exists():
        noun = "storage file" if what.startswith("disk") else what
        raise SystemError_(f"Cannot access {noun} '{path}': No such file or directory")


def _check_one(what: str, path: str, write: bool, policy: LaunchPolicy,
               secrets: dict[tuple[int, int], str]) -> None:
    secret = runas.secret_problem(path, secrets) if not policy.allow_host_secrets else None
    if secret and not policy.allow_host_secrets:
        raise InvalidArgError(f"refusing {what}: {secret}; allow host secrets explicitly "
                              "to use it")
    user = policy.qemu_user
    problem = runas.access_problem(user, path, write) if user else None
    if problem:
        raise SystemError_(f"cannot give {what} to QEMU: {problem} (QEMU runs as "
                           f"'{user.name if user else ''}': hand the file over, or choose one "
                           "that user can open)")


__all__ = ["check_files", "native_argv", "qemu_command", "QemuCommand"]
