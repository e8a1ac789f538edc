"""The processes of a started network, supervised like QEMU: no daemon, no root.

A network is three packaged programs, each under qdriver's supervisor
(`qdriver.process.spawn`) with an exit file ``proc-NAME.exit`` in the
network's directory, found again by later commands:

- ``switch``: Debian vde2's ``vde_switch``, the segment every guest joins
  (QEMU's ``-netdev vde``);
- ``dhcp``: ``dnsmasq`` (Debian's dnsmasq-base, libvirt's DHCP server too) on a
  tap device joined to the switch by vde2's ``vde_plug2tap``, both in a user
  and network namespace of their own (``unshare -Urn``): it serves the ``<ip>``
  address, the ranges and fixed hosts, and writes the leases that
  ``net-dhcp-leases`` and ``domifaddr`` read;
- ``nat`` (``<forward mode='nat'/>``): vde2's ``slirpvde``, a user-mode router
  at the subnet's ``.2`` (DNS at ``.3``) whose traffic leaves as the host's own
  connections; the host itself is that ``.2`` to the guests.

Every program runs as the QEMU user, or (qdriver as root without one) as
``nobody``; the runtime directory (the switch's, the leases) is that user's.
The tap device needs ``/dev/net/tun`` open to all, as Debian's udev leaves it.
"""
from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import anyio

from .. import emulator, process
from ..durable import read_record, write_record
from ..errors import NoNetworkError, OperationFailedError, OperationInvalidError
from ..paths import make_private_dirs, name_tag, socket_root
from ..runas import QemuUser
from ..testing import faults
from ..xml.network import NetworkDef
from .helpers import helper_user

START_TIMEOUT = 10.0
TUN = "/dev/net/tun"
DHCP_SCRIPT = (
    'plug=$1; ip=$2; sw=$3; addr=$4; shift 4; '
    '"$plug" -s "$sw" tap0 & '
    'i=0; until "$ip" link show tap0 >/dev/null 2>&1; do i=$((i+1)); '
    '[ $i -gt 500 ] && { echo "no tap device"; exit 1; }; sleep 0.01; done; '
    '"$ip" addr add "$addr" dev tap0 && "$ip" link set tap0 up && "$ip" link set lo up && '
    'exec "$@"')
"""Inside the namespace: the tap joined to the switch, its address, then dnsmasq.
Programs (checked) and values are positional parameters, never interpolated."""
SWITCH_SCRIPT = 'tail -f /dev/null | "$@"'
"""vde_switch ends at the end of its standard input: give it one that never ends."""


@dataclass(frozen=True)
class NetworkPaths:
    """Every file of one network."""

    dir: Path
    runtime: Path
    """The running network's directory (the switch's, the leases), its user's."""

    @classmethod
    def of(cls, state_dir: Path, name: str) -> NetworkPaths:
        return cls(state_dir / "networks" / name, socket_root(state_dir) / f"net-{name_tag(name)}")

    @property
    def definition(self) -> Path:
        return self.dir / "network.xml"

    @property
    def lock(self) -> Path:
        return self.dir / "lock"

    @property
    def record(self) -> Path:
        return self.dir / "run.json"

    @property
    def switch(self) -> Path:
        """vde_switch's control directory: what QEMU's ``-netdev vde,sock=`` names."""
        return self.runtime / "switch"

    @property
    def leases(self) -> Path:
        return self.runtime / "leases"

    def exit_file(self, proc: str) -> Path:
        return self.dir / f"proc-{proc}.exit"

    def log(self, proc: str) -> Path:
        return self.dir / f"{proc}.log"


@dataclass
class NetworkRun:
    """A started network's processes, by name (their supervisors' pid, start time)."""

    FORMAT: ClassVar[int] = 1
    UNVERSIONED_TOO: ClassVar[bool] = False
    procs: dict[str, list[int]]
    complete: bool = False
    """Every process started: a start killed half-way leaves a network that is not
    active (the next start or destroy stops what it left)."""


def running(paths: NetworkPaths) -> NetworkRun | None:
    """The run record, if every process of it still runs."""
    rec = read_record(paths.record, NetworkRun)
    if rec is None:
        return None
    alive = all(process.is_running(process.ProcessId(*sup)) and
                process.exit_status(paths.exit_file(name)) is None
                for name, sup in rec.procs.items())
    return rec if alive and rec.complete else None


def switch_socket(state_dir: Path, name: str) -> Path:
    """The switch a guest's ``<interface type='network'>`` joins.

    :raise OperationInvalidError: the network is not started (libvirt's words).
    """
    paths = NetworkPaths.of(state_dir, name)
    if not paths.definition.exists():
        raise NoNetworkError(f"no network with matching name '{name}'")
    if running(paths) is None:
        raise OperationInvalidError(f"network '{name}' is not active")
    return paths.switch


def commands(net: NetworkDef, paths: NetworkPaths) -> dict[str, list[str]]:
    """Each process's argv (programs checked), in start order."""
    switch = emulator.check_program("vde_switch")
    cmds = {"switch": ["/bin/sh", "-c", SWITCH_SCRIPT, "sh", switch, "--sock",
                       str(paths.switch)]}
    dhcp = [emulator.check_program("dnsmasq"), "--no-daemon", "--conf-file=/dev/null",
            "--port=0", "--pid-file=", "--interface=tap0",
            "--bind-interfaces", "--dhcp-authoritative", "--log-facility=-",
            f"--dhcp-leasefile={paths.leases}"]
    mask = str(net.address.netmask)
    dhcp += [f"--dhcp-range={start},{end},{mask},1h" for start, end in net.ranges]
    if net.hosts and not net.ranges:  # fixed hosts only: the subnet, no pool
        dhcp += [f"--dhcp-range={net.subnet.network_address},static,{mask},1h"]
    dhcp += [f"--dhcp-host={h.mac},{h.ip}{',' + h.name if h.name else ''}" for h in net.hosts]
    if net.gateway is not None and net.dns is not None:
        dhcp += [f"--dhcp-option=option:router,{net.gateway}",
                 f"--dhcp-option=option:dns-server,{net.dns}"]
    else:
        dhcp += ["--dhcp-option=option:router"]  # isolated: no way out
    cmds["dhcp"] = [emulator.check_program("unshare"), "-Urn", "/bin/sh", "-c", DHCP_SCRIPT,
                    "sh", emulator.check_program("vde_plug2tap"),
                    emulator.check_program("ip"), str(paths.switch), str(net.address), *dhcp]
    if net.forward:
        cmds["nat"] = [emulator.check_program("slirpvde"), "-s", str(paths.switch),
                       "-n", str(net.subnet)]
    return cmds


def ready_check(paths: NetworkPaths, proc: str, since: int = 0) -> bool:
    """Whether a just started process is ready for the next (and for guests);
    ``since``: where its log began for this start."""
    if proc == "switch":
        return (paths.switch / "ctl").exists()
    if proc == "dhcp":
        return paths.leases.exists()
    return b"virtual_host" in _read(paths.log(proc))[since:]


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError:
        return b""


async def start(net: NetworkDef, paths: NetworkPaths, qemu_user: QemuUser | None) -> None:
    """Start the network's processes, each once the one before is ready; on any
    failure, stop what was started.

    :raise OperationFailedError: a process exited or was not ready in time (its
        log's tail says why), or the tap device cannot be made here.
    """
    if not os.access(TUN, os.R_OK | os.W_OK) or os.stat(TUN).st_mode & 0o006 != 0o006:
        raise OperationFailedError(f"{TUN} is not open to every user (Debian's udev makes "
                                   "it 0666): a network's DHCP server needs a tap device")
    user = helper_user(qemu_user)
    cmds = commands(net, paths)
    write_record(paths.record, NetworkRun({}))  # before anything runs: `stop` finds it all
    try:
        make_private_dirs(paths.runtime, user=user, what="the network's sockets")
        procs: dict[str, list[int]] = {}
        for name, argv in cmds.items():
            procs[name] = await _start_one(paths, name, [*emulator.drop_prefix(user), *argv])
            write_record(paths.record, NetworkRun(procs))
            faults.point(f"net-start:{name}")
        write_record(paths.record, NetworkRun(procs, complete=True))
    except BaseException:
        with anyio.CancelScope(shield=True):
            await stop(paths)
        raise


async def _start_one(paths: NetworkPaths, name: str, argv: list[str]) -> list[int]:
    log = paths.log(name)
    since = process.log_size(log)
    process.spawn(argv, paths.exit_file(name), log)
    await process.wait_ready(lambda: ready_check(paths, name, since), paths.exit_file(name), log,
                             since, START_TIMEOUT, f"the network's {name} process")
    found = process.supervisors_of(paths.exit_file(name))
    if not found:
        raise OperationFailedError(f"the network's {name} process exited at once")
    return [found[0].pid, found[0].start_time]


async def stop(paths: NetworkPaths) -> None:
    """Kill every process of the network (started or starting) and remove its files."""
    await process.kill_spawned(paths.dir / "proc-", prefix=True)
    for exitfile in paths.dir.glob("proc-*.exit"):
        exitfile.unlink(missing_ok=True)
    shutil.rmtree(paths.runtime, ignore_errors=True)
    paths.record.unlink(missing_ok=True)
    try:
        paths.runtime.parent.rmdir()  # the state dir's socket directory, if now empty
    except OSError:
        pass


def leases(paths: NetworkPaths) -> list[tuple[int, str, str, str]]:
    """dnsmasq's leases: (expiry, MAC, IPv4 address, hostname or '-')."""
    found = []
    for line in _read(paths.leases).decode(errors="replace").splitlines():
        parts = line.split()
        if len(parts) >= 4 and parts[0].isdigit():
            found.append((int(parts[0]), parts[1].lower(), parts[2], parts[3]))
    return found


__all__ = ["NetworkPaths", "NetworkRun", "running", "switch_socket", "commands", "start",
           "stop", "leases"]
