"""The Driver: the set of domains in one state dir, like a libvirt connection.

There is no daemon: a Driver is cheap to open, and any number of processes
may open the same state dir; per-domain locks keep their operations apart.
"""
from __future__ import annotations

import logging
import os
import subprocess
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import replace
from functools import partial
from pathlib import Path
from types import TracebackType
from typing import AsyncIterator

import anyio

from . import cloudinit, emulator, network, qmp, runas
from .caps import accel, firmware, qemucaps
from .cloudinit import CloudInit
from .domain import Domain
from .durable import locked, next_counter
from .errors import (
    ConfigUnsupportedError,
    InvalidArgError,
    NoDomainError,
    OperationFailedError,
    OperationInvalidError,
    QDriverError,
    XMLError,
)
from .events import log as events_log
from .events.kinds import EventType
from .events.stream import EventStream
from .job import Job, storable_definition, write_definition
from .launch import cmdline
from .launch import start as launch
from .memory import memfile
from .network import Network
from .ops import fork_exec, group, revert_exec
from .ops.create_plan import CreateFlags
from .ops.fork_plan import ForkPlan
from .ops.group import Taken
from .ops.revert_plan import RevertFlags
from .paths import DomainPaths, default_state_dir, make_private_dir, nvram_path, socket_root
from .progress import ProgressFn
from .runas import QemuUser
from .xml import abi, layout
from .xml.domain import DomainDef
from .xml.snapshot import SnapshotDef

log = logging.getLogger(__name__)


def pin_machine(definition: DomainDef, user: QemuUser | None = None) -> DomainDef:
    """The definition on the versioned machine type its alias stands for today, as
    libvirt stores it (``q35`` -> ``pc-q35-7.2``): a later QEMU's ``q35`` is another
    machine, on which this guest's memory files and internal snapshots would not load.
    Without an emulator to ask, the alias stays (start names the missing QEMU); an
    emulator qdriver will not run is refused (`emulator.EmulatorRefused`)."""
    try:
        program = cmdline.emulator_for(definition)
        types = qemucaps.machine_types(program, user)
    except emulator.EmulatorRefused as e:
        if definition.emulator is not None and os.path.lexists(definition.emulator):
            raise
        log.warning("machine type '%s' kept as given: %s", definition.machine, e)
        return definition
    except (QDriverError, OSError, subprocess.SubprocessError) as e:
        log.warning("machine type '%s' kept as given: %s", definition.machine, e)
        return definition
    machine = types.get(definition.machine)
    if machine is None:
        raise ConfigUnsupportedError(f"Emulator '{program}' does not support machine type "
                                     f"'{definition.machine}'")
    return definition.with_machine(machine) if machine != definition.machine else definition


def fill_firmware(definition: DomainDef, state_dir: Path) -> DomainDef:
    """UEFI settled as libvirt settles it: ``<os firmware='efi'>`` resolved to a
    firmware (`caps.firmware.select`), and a variable store of the domain's own
    (``STATE/nvram/NAME_VARS.fd``, made from the template at the first start).

    :raise ConfigUnsupportedError: UEFI on a machine without ACPI.
    :raise OperationFailedError: no firmware has the features asked for.
    """
    loader = definition.loader
    if loader is None:
        return definition
    firmware.check_machine(definition.machine, definition.acpi)
    code, secure, template = loader.path, loader.secure, definition.nvram_template
    if code is None:
        chosen = firmware.select(definition.arch, definition.machine,
                                 definition.firmware_features)
        code, secure, template = chosen.executable, chosen.secure, \
            template or chosen.nvram_template
    nvram = definition.nvram or str(nvram_path(state_dir, definition.name))
    if (code, nvram, template) == (loader.path, definition.nvram, definition.nvram_template):
        return definition
    return definition.with_firmware(code, secure, nvram, template or firmware.template_for(code))


def checked_definition(xml: str | bytes) -> DomainDef:
    """Parse a domain XML for ``define``; `ConfigUnsupportedError` names the first
    thing in it qdriver cannot honour, so nothing is stored that cannot start."""
    definition = DomainDef.parse(xml)
    problems = definition.unsupported + layout.machine_problems(definition)
    if any(fs.driver == "virtiofs" for fs in definition.filesystems) and \
            not definition.memory_backing.shared:
        raise ConfigUnsupportedError("'virtiofs' requires shared memory")
    if problems:
        raise ConfigUnsupportedError(
            f"qdriver cannot honour {problems[0]} in domain '{definition.name}'")
    return definition


class Driver:
    """Entry point of the API: ``async with Driver(state_dir) as drv: ...``."""

    def __init__(self, state_dir: str | Path | None = None, lock_timeout: float = 30.0,
                 qemu_user: str | None = None, allow_host_secrets: bool = False,
                 standby: bool = True) -> None:
        """``qemu_user``: the account QEMU drops to (default ``$QDRIVER_QEMU_USER``,
        else QEMU runs as this process); ``allow_host_secrets``: see `qdriver.runas`;
        ``standby``: after a template revert, keep the next one's QEMU started ahead
        (`qdriver.launch.standby`: one more QEMU per domain, idle, for reverts in
        milliseconds)."""
        self.state_dir = Path(state_dir) if state_dir else default_state_dir()
        self.lock_timeout = lock_timeout
        self.policy = runas.policy(qemu_user, allow_host_secrets, standby)
        make_private_dir(self.state_dir / "domains")

    async def __aenter__(self) -> Driver:
        return self

    async def __aexit__(self, et: type[BaseException] | None, e: BaseException | None,
                        tb: TracebackType | None) -> None:
        """Close the monitor connections this process kept to the domains' QEMUs."""
        await qmp.kept.release_under(socket_root(self.state_dir))

    # -- domains ------------------------------------------------------------

    def _load(self, name: str) -> Domain | None:
        path = self.state_dir / "domains" / name / "domain.xml"
        try:
            text = path.read_bytes()
        except (FileNotFoundError, NotADirectoryError):
            return None
        definition = DomainDef.parse(text)
        return Domain(self, definition.name, definition.uuid)

    def list_domains(self) -> list[Domain]:
        """Every defined domain, by name."""
        doms = []
        for entry in sorted((self.state_dir / "domains").iterdir()):
            try:
                dom = self._load(entry.name)
            except XMLError:
                continue  # a damaged definition must not hide the others
            if dom is not None:
                doms.append(dom)
        return doms

    def lookup(self, name: str) -> Domain:
        """The domain named ``name``; `NoDomainError` if there is none."""
        if name and "/" not in name and not name.startswith("."):
            dom = self._load(name)
            if dom is not None:
                return dom
        raise NoDomainError(f"no domain with matching name '{name}'")

    def lookup_by_uuid(self, uuid: str) -> Domain:
        """The domain with that uuid."""
        for dom in self.list_domains():
            if dom.uuid == uuid.lower():
                return dom
        raise NoDomainError(f"no domain with matching uuid '{uuid}'")

    async def define_xml(self, xml: str | bytes, cloud_init: CloudInit | None = None
                         ) -> Domain:
        """Define (or redefine, same name and uuid) a persistent domain.

        As libvirt does, the stored definition gets the implicit devices and an
        address on every device (`layout.assign`): they are the guest's ABI, fixed
        from now on, so memory files and internal snapshots keep loading.
        ``cloud_init``: a NoCloud seed made for the domain, kept in its directory and
        attached as a read-only cdrom (`qdriver.cloudinit`)."""
        definition = checked_definition(xml)
        seed = DomainPaths.of(self.state_dir, definition.name).dir / cloudinit.SEED_NAME
        if cloud_init is not None:
            definition = definition.with_seed_cdrom(str(seed))
        definition = fill_firmware(await anyio.to_thread.run_sync(
            pin_machine, layout.assign(definition), self.policy.qemu_user), self.state_dir)
        files = cloud_init.files(definition.uuid, definition.name) if cloud_init else None
        storable_definition(definition)  # before anything is made for it
        async with locked(self.state_dir / "define.lock", self.lock_timeout, "define"):
            for other in self.list_domains():
                if other.name == definition.name and other.uuid != definition.uuid:
                    raise OperationFailedError(f"domain '{other.name}' already exists with "
                                               f"uuid {other.uuid}")
                if other.uuid == definition.uuid and other.name != definition.name:
                    raise OperationFailedError(f"domain '{other.name}' is already defined "
                                               f"with uuid {other.uuid}")
            try:
                existing = self._load(definition.name)
            except QDriverError:
                existing = None  # an unreadable definition is simply replaced
            if existing is not None:
                # a redefinition waits for the operation in progress on the domain, and
                # finishes a dead one first: its rollback must not undo this definition
                async with existing.job() as job:
                    if files is not None:
                        cloudinit.write_seed(seed, files)
                    job.save_persistent(definition)
                    job.emit(EventType.DEFINED, "updated")
                return existing
            paths = DomainPaths.of(self.state_dir, definition.name)
            make_private_dir(paths.dir)
            async with locked(paths.lock, self.lock_timeout, f"domain '{definition.name}'"):
                try:
                    if files is not None:  # before the definition that names it
                        cloudinit.write_seed(seed, files)
                    write_definition(paths, definition)
                except BaseException:
                    seed.unlink(missing_ok=True)
                    raise
                events_log.append(self.state_dir, definition.name, EventType.DEFINED, "added")
            return Domain(self, definition.name, definition.uuid)

    async def restore(self, path: str | Path, running: bool = False, paused: bool = False,
                      progress: ProgressFn | None = None, xml: str | bytes | None = None
                      ) -> Domain:
        """``virsh restore``: start the domain a save file holds.

        A domain not defined here is defined from the file's XML first (libvirt
        makes it transient; qdriver has only persistent domains).  ``xml``
        (``virsh restore --xml``) runs the saved guest with another definition
        of the same hardware: other images behind its disks, for one.

        :raise ConfigUnsupportedError: ``xml`` describes other hardware.
        """
        header = memfile.check(str(path))
        saved = DomainDef.parse(header.domain_xml)
        if xml is not None:
            saved = await self.same_hardware(saved, xml)
        try:
            dom = self.lookup(saved.name)
        except NoDomainError:
            dom = await self.define_xml(saved.to_xml())
            try:
                await dom.restore_from(path, running, paused, progress, xml)
            except BaseException:
                with anyio.CancelScope(shield=True):  # defined for the restore: not kept
                    await self.undefine(dom)
                raise
            return dom
        await dom.restore_from(path, running, paused, progress, xml)  # checks the uuid
        return dom

    async def same_hardware(self, saved: DomainDef, xml: str | bytes) -> DomainDef:
        """``xml`` as define would store it, if it gives the saved guest the same
        hardware (`abi.differences`); `ConfigUnsupportedError` names what differs."""
        replacement = fill_firmware(await anyio.to_thread.run_sync(
            pin_machine, layout.assign(checked_definition(xml)), self.policy.qemu_user),
            self.state_dir)
        problems = abi.differences(saved, replacement)
        if problems:
            raise ConfigUnsupportedError(problems[0])
        if replacement.emulator != saved.emulator:
            raise ConfigUnsupportedError(
                f"Target domain emulator '{replacement.emulator or 'the default'}' does not "
                f"match source '{saved.emulator or 'the default'}'")
        return replacement

    async def undefine(self, dom: Domain, snapshots_metadata: bool = False,
                       managed_save: bool = False, nvram: bool = False,
                       keep_nvram: bool = False) -> None:
        """Remove a shut-off domain's definition and its files; its UEFI variable
        store only with ``nvram`` (``keep_nvram``: keep it; one of the two is needed
        when it has one, as libvirt asks)."""
        if nvram and keep_nvram:
            raise InvalidArgError("cannot both keep and delete nvram")
        async with dom.job() as job:
            store = job.inactive.nvram if job.inactive.loader is not None else None
            if store and os.path.lexists(store) and not (nvram or keep_nvram):
                raise OperationInvalidError("cannot undefine domain with nvram")
            if dom.has_managed_save() and not managed_save:
                raise OperationInvalidError(
                    "Refusing to undefine while domain managed save image exists")
            if job.record is not None:
                raise OperationInvalidError("cannot undefine a running domain; destroy it first")
            snaps = sorted(dom.paths.snapshots.glob("*.xml")) if dom.paths.snapshots.exists() \
                else []
            if snaps and not snapshots_metadata:
                raise OperationInvalidError(
                    f"cannot delete inactive domain with {len(snaps)} snapshots")
            dom.paths.remove_files()
            if store and nvram:
                Path(store).unlink(missing_ok=True)
            job.emit(EventType.UNDEFINED, "removed")
        dom.paths.remove_dir()

    # -- networks -----------------------------------------------------------

    def define_network(self, xml: str | bytes) -> Network:
        """``virNetworkDefineXML``: a network, not yet started."""
        return network.define(self.state_dir, xml, self.policy)

    def lookup_network(self, name: str) -> Network:
        """:raise NoNetworkError: no network of that name."""
        net = Network(self.state_dir, name, self.policy)
        net.definition  # noqa: B018 - raises for a network that is not defined
        return net

    def list_networks(self) -> list[Network]:
        return [Network(self.state_dir, n, self.policy)
                for n in network.list_names(self.state_dir)]

    async def fork(self, dom: Domain, snapshot: str, names: list[str],
                   progress: ProgressFn | None = None, paused: bool = False) -> list[Domain]:
        """New running domains ``names`` from an external memory snapshot of ``dom``
        (`ops.fork_plan`, `ops.fork_exec`): from a template in milliseconds, from a
        memory file by loading it.  All of them, or (on a failure) none.  ``paused``:
        loaded, their vCPUs not yet started (a fork made ahead, resumed when needed).

        :raise OperationInvalidError: the snapshot has no external memory, or a
            name is taken.
        """
        async with dom.job() as job:
            the_plan = fork_exec.plan(job, snapshot, names,
                                      {d.name for d in self.list_domains()})
            return await fork_exec.fork(job, the_plan, self.define_xml,
                                        partial(self._start_fork, the_plan, progress, paused))

    async def snapshot_group(self, name: str, domains: list[Domain], xml: str | None = None,
                             disk_only: bool = False) -> list[Taken]:
        """Snapshot ``name`` of every domain at one instant (`ops.group`): all running
        guests pause, each snapshot is taken (``xml``: the snapshot XML for each, its
        name replaced; default: libvirt's default snapshot of each), all resume.

        :raise OperationAbortedError: another domain's snapshot failed (no domain
            keeps one); or that domain's own error.
        """
        snap = SnapshotDef.parse(xml) if xml else SnapshotDef()
        text = replace(snap, name=name).format()
        async with self._jobs(domains) as jobs:
            return await group.snapshot(jobs, text, CreateFlags(disk_only=disk_only))

    async def revert_group(self, name: str, domains: list[Domain], running: bool = False,
                           paused: bool = False) -> None:
        """Revert every domain to its snapshot ``name``; they resume together."""
        async with self._jobs(domains) as jobs:
            await group.revert(jobs, name, running, paused)

    @asynccontextmanager
    async def _jobs(self, domains: list[Domain]) -> AsyncIterator[list[Job]]:
        """A job of each domain, opened in name order (two groups over the same
        domains then wait for each other, never for each other's other lock)."""
        names = [d.name for d in domains]
        if len(set(names)) != len(names) or not names:
            raise InvalidArgError(f"a group needs distinct domains, not {names}")
        async with AsyncExitStack() as stack:
            by_name = {}
            for dom in sorted(domains, key=lambda d: d.name):
                by_name[dom.name] = await stack.enter_async_context(dom.job())
            yield [by_name[n] for n in names]

    async def _start_fork(self, the_plan: ForkPlan, progress: ProgressFn | None,
                          paused: bool, new: Domain) -> None:
        """Start a defined fork, like a restore of the snapshot's memory."""
        async with new.job() as job:
            await revert_exec.restore(job, the_plan.memory_file, job.definition.to_xml(),
                                      True, RevertFlags(running=not paused, paused=paused),
                                      progress, template_ram=the_plan.template_ram)

    def native_argv(self, domain: str) -> list[str]:
        """The QEMU command line ``domain`` (a defined domain's name, or a domain XML
        file) starts with here (``virsh domxml-to-native qemu-argv``)."""
        path = Path(domain)
        if path.is_file():
            definition = fill_firmware(pin_machine(layout.assign(checked_definition(
                path.read_bytes())), self.policy.qemu_user), self.state_dir)
        else:
            definition = self.lookup(domain).inactive_definition
        paths = DomainPaths.of(self.state_dir, definition.name)
        return launch.native_argv(definition, paths, self.policy)[0]

    def events(self) -> EventStream:
        """The lifecycle events of every domain here from now on, whichever process or
        guest causes them: ``async for event in drv.events()`` (`qdriver.events`).
        While it is open this process also records its running guests' own events."""
        return EventStream(self.state_dir)

    def next_id(self) -> int:
        """A fresh libvirt-style domain id."""
        return next_counter(self.state_dir / "next-id")

    # -- host ---------------------------------------------------------------

    @staticmethod
    def accelerators() -> list[accel.AccelStatus]:
        """Which of KVM and TCG this host can use, and why not."""
        return [accel.probe("kvm"), accel.probe("qemu")]
