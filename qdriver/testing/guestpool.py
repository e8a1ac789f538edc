"""Booted guests for tests: boot once, snapshot when ready, revert before each test.

The engine of the pytest plugin, usable without pytest.  A `GuestPool` owns
one private state directory.  `GuestPool.guest` boots a domain from a libvirt
domain XML the first time a `GuestSpec` is asked for: its writable disks
become qcow2 overlays in the pool's directory (the XML's images are only
read), it waits until the guest is ready (a regex on the serial console, or
the guest agent answering), runs an optional ``prepare`` step, and takes an
snapshot there.  A guest whose XML asks nothing of its RAM's backing gets
its RAM in a shared file and a template snapshot.  A pool with ``forks``
(the plugin's, but with keep-failed) then shuts the booted guest off and hands
each test a fork of the template, made paused while the test before ran
(`prepare_next`): the reset only resumes it.  Otherwise `GuestPool.reset`
reverts the booted guest to the template: a clone that maps the template's
RAM copy-on-write, its QEMU started and loaded while the test before ran, so
that the reset only swaps QEMUs.  Either way the time does not grow with the
guest's RAM.  Other guests get an internal snapshot, which a reset loads
inside the same QEMU.

Pools of several processes (pytest-xdist workers) can share one boot: given a
shared directory (`open_shared`, made by the process that outlives them), the
first pool to ask for a spec boots it there, under a lock, and takes its
template snapshot; every pool then forks a guest of its own from that
template (`Domain.fork`), and a reset replaces the fork with a new one, as
fast as a template revert.  The shared directory goes with its owner
(`close_shared`).

A pool writes its owner (pid and process start time) into its directory; a
later pool under the same base finds directories whose owner died (a killed
test run) and stops their QEMUs and removes them (`reap_stale`).
"""
from __future__ import annotations

import hashlib
import inspect
import json
import logging
import os
import re
import shutil
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Awaitable, Callable

import anyio

from .. import agent, process, qemuimg, runas
from ..console import ConsoleView, SerialLink, read_from
from ..domain import Domain
from ..driver import Driver
from ..durable import locked
from ..errors import NoDomainError, QDriverError
from ..paths import make_private_dirs, socket_root
from ..runstatus import DomainState
from ..xml.domain import DomainDef, MemoryBacking
from ..xml.snapshot import SnapshotDef, SnapshotDisk

READY_SNAPSHOT = "qdriver-ready"
READY_TEXT = "the state every test starts from"
OWNER_FILE = "owner.json"
KEPT_FILE = "kept"
"""Marks a pool directory kept for a failed test: `reap_stale` leaves it."""
BOOTS_FILE = "boots"
"""A shared directory's list of the guests booted in it, a line each."""

log = logging.getLogger("qdriver")

Prepare = Callable[["Guest"], Awaitable[None] | None]


class GuestSetupError(Exception):
    """A guest could not be booted or made ready; the message says why."""


@dataclass(frozen=True)
class GuestSpec:
    """What a test asks for: a domain XML, when it is ready, and where it starts."""

    xml: Path
    ready: str | None = None
    """A regex searched in the serial console's text; None: the guest agent answers."""
    prepare: Prepare | None = None
    """Run once after ready, before the snapshot every test starts from."""
    boot_timeout: float = 120.0


@dataclass
class Guest:
    """One booted domain and the snapshot its tests start from."""

    spec: GuestSpec
    domain: Domain
    overlays: list[Path]
    link: SerialLink | None = None
    linked_pid: int | None = None
    snapshot: str = READY_SNAPSHOT
    kept: list[str] = field(default_factory=list)
    template: bool = False
    """The ready snapshot is a template (each reset starts a clone)."""
    serial_file: Path | None = None
    """A ``<serial type='file'>``'s file: the console's text is there, and it takes no input."""
    seed: Domain | None = None
    """The shared booted domain this guest is a fork of (its reset forks it again)."""
    fresh: bool = False
    """A fork that no test used yet: its reset has nothing to do."""
    next: Domain | None = None
    """A fork made ahead, paused, that the next reset resumes in this one's place."""
    retired: Domain | None = None
    """The fork a reset replaced, to discard (`GuestPool.prepare_next`)."""

    @property
    def console_log(self) -> Path:
        return self.serial_file or self.domain.paths.console_log

    def console_offset(self) -> int:
        """Where the console log ends now (text after it is new)."""
        try:
            return self.console_log.stat().st_size
        except FileNotFoundError:
            return 0

    def console_text(self, since: int = 0) -> str:
        """The serial console's text from byte offset ``since``."""
        return read_from(self.console_log, since)

    def write_console(self, data: str | bytes) -> None:
        """Type ``data`` on the guest's serial console."""
        if self.link is None:
            kind = "writes to a file and takes no input" if self.serial_file else "is missing"
            raise GuestSetupError(f"domain '{self.domain.name}': its serial console {kind}")
        self.link.write(data.encode() if isinstance(data, str) else data)

    def console(self) -> Console:
        """The console from now on (a `prepare` step waits on it)."""
        return Console(self, self.console_offset())


class Console(ConsoleView):
    """A guest's serial console from one point on (a test's start): read, write, wait."""

    def __init__(self, guest: Guest, offset: int) -> None:
        super().__init__(guest.console_text, guest.write_console, guest.domain.name, offset)


class GuestPool:
    """The booted guests of one test process, in a private state directory."""

    def __init__(self, base: Path, label: str, shared: Path | None = None,
                 forks: bool = False) -> None:
        self.base = base
        self.label = _safe(label)
        self.dir = base / f"{self.label}-{os.getpid()}"
        self.shared = shared
        """A directory (`open_shared`) whose booted guests this pool forks from."""
        self.forks = forks or shared is not None
        """Guests are forks of a boot (in ``shared``, else in the pool's directory),
        and a reset resumes one made ahead; else a reset reverts the booted guest."""
        self.driver: Driver | None = None
        self.shared_driver: Driver | None = None
        self.guests: dict[GuestSpec, Guest] = {}
        self.failures: dict[GuestSpec, str] = {}
        self._count = 0

    async def open(self) -> list[Path]:
        """Create the pool's directory; reap dead pools' directories (returned)."""
        make_private_dirs(self.base, self.base, "test guests")
        reaped = await reap_stale(self.base)
        make_private_dirs(self.dir, self.base, "test guests")
        (self.dir / OWNER_FILE).write_text(json.dumps(_owner(os.getpid())))
        self.driver = Driver(self.dir, standby=False)  # made by `prepare_next` instead
        if self.shared is not None:
            self.shared_driver = Driver(self.shared)
        return reaped

    async def guest(self, spec: GuestSpec) -> Guest:
        """The booted guest for ``spec`` (booting it the first time)."""
        if spec in self.failures:  # not tried again: each test would wait as long
            raise GuestSetupError(f"{self.failures[spec]} (an earlier test's attempt; "
                                  "not tried again)")
        if spec not in self.guests:
            try:
                self.guests[spec] = await self._make(spec)
            except GuestSetupError as e:
                self.failures[spec] = str(e)
                raise
        return self.guests[spec]

    async def reset(self, guest: Guest) -> None:
        """Put the guest back to its starting snapshot, running (a fork: a new fork)."""
        if guest.seed is not None:
            if guest.next is not None and not guest.fresh:
                await self._switch(guest)
            elif not guest.fresh:
                await self._refork(guest)
            guest.fresh = False
            return
        try:
            await guest.domain.revert_to_snapshot(guest.snapshot, running=True)
        except QDriverError as e:
            raise GuestSetupError(f"cannot revert '{guest.domain.name}' to its snapshot "
                                  f"'{guest.snapshot}': {e}") from e
        await _relink(guest)

    async def prepare_next(self, guest: Guest) -> None:
        """Have the next reset's QEMU started and loaded ahead, while the test runs
        (`Domain.prepare_standby`): the reset then only swaps QEMUs.  A failure
        costs the next reset its head start, nothing else."""
        try:
            if guest.seed is not None:
                await self._fork_ahead(guest)
            elif guest.template:
                await guest.domain.prepare_standby(guest.snapshot)
        except QDriverError as e:
            log.warning("qdriver: nothing started ahead for the next reset of '%s': %s",
                        guest.domain.name, e)

    async def _fork_ahead(self, guest: Guest) -> None:
        """Discard the fork the last reset replaced; make the next one, paused."""
        assert guest.seed is not None
        if guest.retired is not None:
            await _discard(self._seeds, guest.retired, _fork_overlays(guest.retired))
            guest.retired = None
        if guest.next is None:
            self._count += 1
            name = _safe(f"{_read_definition(guest.spec).name}-{self.label}-{self._count}")
            (guest.next,) = await guest.seed.fork(READY_SNAPSHOT, name, paused=True)

    async def _switch(self, guest: Guest) -> None:
        """The fork made ahead takes the used one's place, running: a reset that
        resumes vCPUs (the used one goes at the next `prepare_next`)."""
        assert guest.next is not None
        _unlink(guest)
        guest.retired, guest.domain, guest.next = guest.domain, guest.next, None
        guest.overlays = _fork_overlays(guest.domain)
        try:
            await guest.domain.resume()
        except QDriverError as e:
            raise GuestSetupError(f"cannot resume '{guest.domain.name}', forked ahead "
                                  f"from '{guest.seed.name if guest.seed else ''}': {e}") from e
        await _relink(guest)

    async def keep(self, guest: Guest, test: str) -> str:
        """Snapshot the guest as it is now under a name from ``test``; kept after close."""
        base = _safe(f"failed-{test}")[:90]
        name, n = base, 1
        while name in guest.domain.snapshot_tree().snaps:
            n += 1
            name = f"{base}-{n}"
        snap = SnapshotDef(name=name, description=f"state when {test} failed")
        if guest.template:  # external: revertible whatever overlay the next reset adds
            snap = self._external(snap, guest.domain.name, guest.domain.definition, name)
        await guest.domain.snapshot_create_xml(snap.format())
        guest.kept.append(name)
        return name

    async def close(self) -> list[tuple[str, str]]:
        """Stop every guest and remove everything, but what `keep` kept: its
        domain (shut off, with its overlays and snapshots) and the directory.
        Returns the kept ``(domain, snapshot)`` pairs."""
        kept = [(g.domain.name, s) for g in self.guests.values() for s in g.kept]
        for guest in list(self.guests.values()):
            _unlink(guest)
            driver = self.shared_driver or self.driver
            if driver is not None:
                for extra in (guest.next, guest.retired):
                    if extra is not None:
                        await _discard(driver, extra, _fork_overlays(extra))
            if not guest.kept and driver is not None:
                await _discard(driver, guest.domain, guest.overlays)
        await _stop_all(self.dir)
        self.guests.clear()
        if kept:
            (self.dir / KEPT_FILE).write_text("".join(f"{d} {s}\n" for d, s in kept))
        else:
            _remove_dir(self.dir)
        return kept

    # -- booting ----------------------------------------------------------------

    async def _make(self, spec: GuestSpec) -> Guest:
        """A guest of this pool's own: booted here, or forked from the shared boot."""
        assert self.driver is not None, "GuestPool.open() first"
        definition = _read_definition(spec)
        if self.forks and _shareable(definition):
            return await self._fork_seed(spec, self._seeds)
        shared = self.shared_driver
        if shared is None:
            return await self._boot(spec, self.driver, self.dir)
        self._count += 1  # booted for this pool alone, beside the others' in the shared dir
        return await self._boot(spec, shared, shared.state_dir,
                                _safe(f"{definition.name}-{self.label}-{self._count}"))

    @property
    def _seeds(self) -> Driver:
        """The driver of the booted guests forks are made from."""
        driver = self.shared_driver or self.driver
        assert driver is not None, "GuestPool.open() first"
        return driver

    async def _fork_seed(self, spec: GuestSpec, shared: Driver) -> Guest:
        """A fork of the spec's guest booted in the shared directory (booted now, under
        its lock, by the first pool that asks; then shut off: forks map its template)."""
        definition = _read_definition(spec)
        seed_name = _safe(f"{definition.name}-seed-{_spec_key(spec)}")
        async with locked(shared.state_dir / f"{seed_name}.lock", spec.boot_timeout + 60,
                          f"the shared guest '{seed_name}'"):
            try:
                seed = shared.lookup(seed_name)
                ready = READY_SNAPSHOT in seed.snapshot_tree().snaps
            except NoDomainError:
                ready = False
            if not ready:
                booted = await self._boot(spec, shared, shared.state_dir, seed_name)
                seed = booted.domain
                _unlink(booted)
                await seed.destroy()
                with (shared.state_dir / BOOTS_FILE).open("a") as f:
                    f.write(f"{seed_name}\n")
        self._count += 1
        guest = Guest(spec, seed, [], template=True, seed=seed)
        await self._refork(guest, _safe(f"{definition.name}-{self.label}-{self._count}"))
        return guest

    async def _refork(self, guest: Guest, name: str | None = None) -> None:
        """Replace the guest's fork (if any) with a new one of its seed's template."""
        assert guest.seed is not None
        if name is None:
            name = guest.domain.name
            _unlink(guest)
            await _discard(self._seeds, guest.domain, guest.overlays)
        try:
            (dom,) = await guest.seed.fork(READY_SNAPSHOT, name)
        except QDriverError as e:
            raise GuestSetupError(f"cannot fork '{name}' from the booted guest "
                                  f"'{guest.seed.name}': {e}") from e
        guest.domain, guest.fresh, guest.overlays = dom, True, _fork_overlays(dom)
        await _relink(guest)

    async def _boot(self, spec: GuestSpec, driver: Driver, directory: Path,
                    name: str | None = None) -> Guest:
        definition = _read_definition(spec)
        template = definition.memory_backing == MemoryBacking()
        if template:  # each reset starts a QEMU: a console file keeps what came before
            definition = definition.with_shared_file_ram().with_appending_file_consoles()
        if spec.ready is None and not any(c.target_name == agent.CHANNEL
                                          for c in definition.channels):
            raise GuestSetupError(
                f"{spec.xml}: cannot tell when the guest is ready: give a console regex "
                "(--qdriver-ready) or an org.qemu.guest_agent.0 channel")
        if name is None:
            self._count += 1
            name = _safe(f"{definition.name}-{self._count}")
        overlays: list[Path] = []
        guest: Guest | None = None
        try:
            sources = {}
            for disk in definition.disks:
                if disk.source and not disk.readonly:
                    overlay = directory / f"{name}-{disk.target}.qcow2"
                    overlays.append(overlay)
                    await qemuimg.create(overlay, backing=os.path.abspath(disk.source),
                                         backing_fmt=disk.format)
                    runas.hand_over(driver.policy.qemu_user, overlay)
                    sources[disk.target] = (str(overlay), "qcow2")
            dom = await driver.define_xml(
                definition.with_disk_sources(sources).renamed(name).to_xml())
            first = definition.serials[0] if definition.serials else None
            guest = Guest(spec, dom, overlays, template=template,
                          serial_file=Path(first.path) if first and first.type == "file"
                          and first.path else None)
            await dom.start()
            await _relink(guest)
            await _wait_ready(guest)
            if spec.prepare is not None:
                await _call_prepare(guest)
            if template:
                await dom.snapshot_create_xml(
                    self._external(SnapshotDef(name=READY_SNAPSHOT, description=READY_TEXT),
                                   name, definition, "ready", directory).format(),
                    template=True)
            else:
                await dom.snapshot_create_xml(
                    SnapshotDef(name=READY_SNAPSHOT, description=READY_TEXT).format())
            return guest
        except BaseException as e:
            with anyio.CancelScope(shield=True):
                if guest is not None:
                    _unlink(guest)
                    await _discard(driver, guest.domain, overlays)
                for path in overlays:
                    path.unlink(missing_ok=True)
            if isinstance(e, QDriverError):
                raise GuestSetupError(f"{spec.xml}: {e}") from e
            if isinstance(e, OSError) and not isinstance(e, GuestSetupError):
                raise GuestSetupError(f"{spec.xml}: {e}") from e
            raise


    def _external(self, snap: SnapshotDef, domain: str, definition: DomainDef,
                  tag: str, directory: Path | None = None) -> SnapshotDef:
        """``snap`` with its memory and its writable disks' overlays in ``directory``
        (the pool's)."""
        where = directory or self.dir
        disks = [SnapshotDisk(d.target, "no") if d.readonly or not d.source else
                 SnapshotDisk(d.target, "external", "file",
                              f"{where}/{domain}-{d.target}.{tag}.qcow2", "qcow2")
                 for d in definition.disks]
        return replace(snap, memory="external", memory_file=f"{where}/{domain}.{tag}.mem",
                       disks=disks)


def _shareable(definition: DomainDef) -> bool:
    """Whether forks of a boot of ``definition`` can run side by side: its RAM can be a
    template, no file console (forks would write one file), no host port forwarded
    (forks would ask for one port)."""
    return definition.memory_backing == MemoryBacking() and \
        not any(s.type == "file" for s in definition.serials) and \
        not any(i.forwards for i in definition.interfaces)


def _spec_key(spec: GuestSpec) -> str:
    """What tells specs apart across processes (a ``prepare`` by its name)."""
    prepare = spec.prepare
    named = f"{prepare.__module__}.{prepare.__qualname__}" if prepare is not None else ""
    key = "\0".join((str(spec.xml), spec.ready or "", named))
    return hashlib.sha256(key.encode()).hexdigest()[:10]


def _read_definition(spec: GuestSpec) -> DomainDef:
    try:
        text = spec.xml.read_bytes()
    except OSError as e:
        raise GuestSetupError(f"cannot read the domain XML {spec.xml}: {e.strerror}") from e
    try:
        return DomainDef.parse(text)
    except QDriverError as e:
        raise GuestSetupError(f"{spec.xml}: {e}") from e


async def _wait_ready(guest: Guest) -> None:
    spec, dom = guest.spec, guest.domain
    pattern = re.compile(spec.ready) if spec.ready is not None else None
    agent_path = agent.socket_path(dom.definition, dom.paths)
    deadline = time.monotonic() + spec.boot_timeout
    polls = 0
    while time.monotonic() < deadline:
        polls += 1
        if pattern is not None and pattern.search(guest.console_text()):
            return
        if pattern is None and agent_path is not None:
            try:
                await agent.ping(agent_path, timeout=1.0)
                return
            except QDriverError:
                pass
        if polls % 10 == 0 and (await dom.get_state())[0] == DomainState.SHUTOFF:
            raise GuestSetupError(f"QEMU of '{dom.name}' exited before the guest was ready"
                                  f"{_tail('its log', dom.paths.qemu_log)}"
                                  f"{_tail('console', guest.console_log)}")
        await anyio.sleep(0.05)
    what = f"no match for /{spec.ready}/ on the serial console" if pattern is not None \
        else "the guest agent did not answer"
    raise GuestSetupError(f"guest '{dom.name}' not ready within {spec.boot_timeout:g} s: "
                          f"{what}{_tail('console', guest.console_log)}")


async def _call_prepare(guest: Guest) -> None:
    assert guest.spec.prepare is not None
    result = guest.spec.prepare(guest)
    if inspect.isawaitable(result):
        await result


async def _relink(guest: Guest) -> None:
    """Hold the current serial console open (QEMU gives a new pty when it restarts)."""
    record = guest.domain.runtime.peek()
    pid = record.pid if record is not None else None
    if guest.link is not None and pid == guest.linked_pid:
        return
    _unlink(guest)
    if pid is not None and guest.domain.definition.serials and guest.serial_file is None:
        guest.link = SerialLink(guest.domain.console_path())
        guest.linked_pid = pid


def _unlink(guest: Guest) -> None:
    if guest.link is not None:
        guest.link.close()
    guest.link = guest.linked_pid = None


def _fork_overlays(dom: Domain) -> list[Path]:
    """A fork's own images (its overlays on the template snapshot's)."""
    return [Path(d.source) for d in dom.definition.disks if d.source and not d.readonly]


async def _discard(driver: Driver, dom: Domain, overlays: list[Path]) -> None:
    """Stop and undefine a domain, then remove its overlays."""
    try:
        if dom.is_active:
            await dom.destroy()
        await driver.undefine(dom, snapshots_metadata=True)
    except QDriverError:
        pass  # `_stop_all` and the directory's removal finish the job
    for path in overlays:
        path.unlink(missing_ok=True)


# -- a directory shared by several pools --------------------------------------------


def open_shared(base: Path) -> Path:
    """A directory under ``base`` that pools of other processes boot in and fork from,
    owned by this process (which must outlive them, and `close_shared` it)."""
    make_private_dirs(base, base, "test guests")
    shared = base / f"shared-{os.getpid()}"
    make_private_dirs(shared, base, "test guests")
    (shared / OWNER_FILE).write_text(json.dumps(_owner(os.getpid())))
    return shared


def shared_boots(shared: Path) -> int:
    """How many guests were booted in a shared directory."""
    try:
        return len((shared / BOOTS_FILE).read_text().splitlines())
    except OSError:
        return 0


async def close_shared(shared: Path) -> None:
    """Stop every QEMU of a shared directory and remove it."""
    await _stop_all(shared)
    _remove_dir(shared)


# -- dead pools -----------------------------------------------------------------------


async def reap_stale(base: Path) -> list[Path]:
    """Stop the QEMUs of pools under ``base`` whose process died and remove their
    directories (not those kept for failed tests); return the directories reaped."""
    reaped = []
    for pool_dir in sorted(p for p in base.iterdir() if p.is_dir()):
        owner = _read_owner(pool_dir)
        if owner is None or _alive(owner) or (pool_dir / KEPT_FILE).exists():
            continue
        await _stop_all(pool_dir)
        _remove_dir(pool_dir)
        reaped.append(pool_dir)
    return reaped


async def _stop_all(pool_dir: Path) -> None:
    """Stop every QEMU of a pool directory: by its domains, then by its processes."""
    driver = Driver(pool_dir)
    try:
        domains = driver.list_domains()
    except (QDriverError, OSError):
        domains = []
    for dom in domains:
        try:
            if dom.is_active:
                await dom.destroy()
        except (QDriverError, OSError):
            pass
    for pid in qemu_pids(pool_dir):
        try:
            os.kill(pid, 9)
        except ProcessLookupError:
            pass
    shutil.rmtree(socket_root(pool_dir), ignore_errors=True)


def qemu_pids(directory: Path) -> list[int]:
    """Live QEMU processes whose command line names ``directory``."""
    marker = f"{directory}/".encode()  # not another directory that begins the same
    return [pid for pid, cmdline in process.processes()
            if b"qemu-system" in cmdline.split(b"\0", 1)[0] and marker in cmdline
            and process.start_time(pid) is not None]  # not its supervisor (a shell)


def _remove_dir(directory: Path) -> None:
    shutil.rmtree(directory, ignore_errors=True)
    shutil.rmtree(socket_root(directory), ignore_errors=True)


def _owner(pid: int) -> dict[str, int]:
    return {"pid": pid, "start": _start_time(pid)}


def _start_time(pid: int) -> int:
    """A process's start time in clock ticks since boot (pids are reused; this is not)."""
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return -1


def _read_owner(pool_dir: Path) -> dict[str, int] | None:
    try:
        data = json.loads((pool_dir / OWNER_FILE).read_text())
        return {"pid": int(data["pid"]), "start": int(data["start"])}
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _alive(owner: dict[str, int]) -> bool:
    return _start_time(owner["pid"]) == owner["start"]


# -- small helpers ----------------------------------------------------------------


def _safe(text: str) -> str:
    """A name made of letters, digits, ``.``, ``_`` and ``-`` only."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_.") or "guest"


def _tail(what: str, path: Path, lines: int = 15) -> str:
    try:
        text = path.read_text(errors="replace").strip().splitlines()[-lines:]
    except OSError:
        return ""
    return f"\n--- {what} ({path}), last lines:\n" + "\n".join(text) if text else ""


__all__ = ["Console", "Guest", "GuestPool", "GuestSetupError", "GuestSpec", "READY_SNAPSHOT",
           "reap_stale", "qemu_pids", "open_shared", "shared_boots", "close_shared"]
