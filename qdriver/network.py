"""Networks, like libvirt's virNetwork, run without a daemon or root.

A `Network` is a handle by name; its definition is ``networks/NAME/network.xml``
in the state dir, and a started network is a set of supervised processes
(`qdriver.launch.netprocs`) that later commands find through its run record.
Each change holds the network's lock.  Guests join with
``<interface type='network'><source network='NAME'/>``.
"""
from __future__ import annotations

from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import AsyncIterator

from .durable import atomic_write, locked
from .errors import NoNetworkError, OperationInvalidError
from .launch import netprocs
from .launch.netprocs import NetworkPaths
from .runas import LaunchPolicy
from .xml.network import NetworkDef

LOCK_WAIT = 30.0


@dataclass(frozen=True)
class Lease:
    """One DHCP lease (``virsh net-dhcp-leases``)."""

    expiry: int
    mac: str
    ip: str
    prefix: int
    hostname: str


class Network:
    """One defined network (``virNetwork``)."""

    def __init__(self, state_dir: Path, name: str, policy: LaunchPolicy) -> None:
        self.name = name
        self.paths = NetworkPaths.of(state_dir, name)
        self.policy = policy

    def __repr__(self) -> str:
        return f"<Network {self.name!r} {'active' if self.is_active else 'inactive'}>"

    @property
    def definition(self) -> NetworkDef:
        """:raise NoNetworkError: it is not defined (any more)."""
        try:
            return NetworkDef.parse(self.paths.definition.read_bytes())
        except (FileNotFoundError, NotADirectoryError):
            raise NoNetworkError(f"no network with matching name '{self.name}'") from None

    @property
    def uuid(self) -> str:
        return self.definition.uuid

    @property
    def is_active(self) -> bool:
        return netprocs.running(self.paths) is not None

    def xml_desc(self) -> str:
        return self.definition.to_xml()

    async def start(self) -> None:
        """Start its processes (``net-start``)."""
        async with self._locked() as net:
            if netprocs.running(self.paths) is not None:
                raise OperationInvalidError("network is already active")
            await netprocs.stop(self.paths)  # what a dead process or crash left
            await netprocs.start(net, self.paths, self.policy.qemu_user)

    async def destroy(self) -> None:
        """Stop its processes (``net-destroy``); guests on it lose their link."""
        async with self._locked():
            active = netprocs.running(self.paths) is not None
            await netprocs.stop(self.paths)  # what a dead process left goes too
            if not active:
                raise OperationInvalidError(f"network '{self.name}' is not active")

    async def undefine(self) -> None:
        """Remove a stopped network's definition (``net-undefine``)."""
        async with self._locked():
            if netprocs.running(self.paths) is not None:
                raise OperationInvalidError(f"cannot undefine active network '{self.name}'; "
                                            "destroy it first")
            await netprocs.stop(self.paths)
            for path in sorted(self.paths.dir.iterdir()):
                if path != self.paths.lock:
                    path.unlink()
        self.paths.lock.unlink(missing_ok=True)
        self.paths.dir.rmdir()

    def leases(self) -> list[Lease]:
        """The DHCP leases its server has given (``net-dhcp-leases``)."""
        prefix = self.definition.subnet.prefixlen
        if netprocs.running(self.paths) is None:
            return []
        return [Lease(exp, mac, ip, prefix, host)
                for exp, mac, ip, host in netprocs.leases(self.paths)]

    @asynccontextmanager
    async def _locked(self) -> AsyncIterator[NetworkDef]:
        """Hold the network's lock; the definition, read once under it.

        :raise NoNetworkError: the network is not defined (any more).
        """
        try:
            async with locked(self.paths.lock, LOCK_WAIT, f"network '{self.name}'",
                              create_dir=False):
                yield self.definition
        except (FileNotFoundError, NotADirectoryError):
            if self.paths.definition.exists():
                raise
            raise NoNetworkError(f"no network with matching name '{self.name}'") from None


def define(state_dir: Path, xml: str | bytes, policy: LaunchPolicy) -> Network:
    """Define (or redefine, same name and uuid) a network from its XML.

    :raise OperationInvalidError: another network has that name or that uuid.
    """
    net = NetworkDef.parse(xml)
    for other in list_names(state_dir):
        theirs = Network(state_dir, other, policy).definition
        if other == net.name and not net.uuid_given:
            net.uuid = theirs.uuid  # a redefinition keeps the network's uuid
        elif other == net.name and theirs.uuid != net.uuid:
            raise OperationInvalidError(f"network '{net.name}' is already defined with "
                                        f"uuid {theirs.uuid}")
        elif other != net.name and theirs.uuid == net.uuid:
            raise OperationInvalidError(f"network '{other}' already has uuid {net.uuid}")
    paths = NetworkPaths.of(state_dir, net.name)
    paths.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    atomic_write(paths.definition, net.to_xml())
    return Network(state_dir, net.name, policy)


def list_names(state_dir: Path) -> list[str]:
    """Every defined network's name, sorted."""
    root = state_dir / "networks"
    return sorted(d.name for d in root.iterdir() if (d / "network.xml").exists()) \
        if root.is_dir() else []


__all__ = ["Network", "Lease", "define", "list_names"]
