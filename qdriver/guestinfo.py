"""What a running guest says of itself (libvirt's ``virDomainInterfaceAddresses``).

Read without the domain lock, like the other state queries: asking the guest
agent changes nothing.
"""
from __future__ import annotations

import enum

from . import agent
from .agent import Interface
from .errors import ArgumentUnsupportedError, OperationInvalidError
from .launch.runtime import Runtime
from .paths import DomainPaths
from .xml.domain import DomainDef


class AddressSource(enum.StrEnum):
    """Where interface addresses come from (``domifaddr --source``)."""

    LEASE = "lease"
    """The DHCP leases of the networks the domain's interfaces join (libvirt's default)."""
    AGENT = "agent"
    """The guest agent (``guest-network-get-interfaces``)."""
    ARP = "arp"
    """The host's ARP table."""


class GuestInfo:
    """A domain's questions to its running guest."""

    name: str
    paths: DomainPaths
    runtime: Runtime

    @property
    def definition(self) -> DomainDef:
        """What QEMU runs (the domain's own property overrides this one)."""
        raise NotImplementedError  # pragma: no cover - `Domain.definition` is the one used

    async def interface_addresses(self, source: str = "lease") -> list[Interface]:
        """The guest's interfaces and addresses (``virsh domifaddr``).

        ``lease``: none yet, as libvirt answers for interfaces on no network
        (qdriver runs no networks of its own yet); ``agent``: what the guest agent
        reports; ``arp`` is not offered (the guests' sockets are no host interface).

        :raise OperationInvalidError: the domain is not running.
        :raise ArgumentUnsupportedError: no guest agent channel, or an unknown source.
        """
        try:
            src = AddressSource(source)
        except ValueError:
            raise ArgumentUnsupportedError(f"unknown interface address source '{source}'") \
                from None
        if self.runtime.peek() is None:
            raise OperationInvalidError("domain is not running")
        if src is AddressSource.LEASE:
            return []
        if src is AddressSource.ARP:
            raise ArgumentUnsupportedError("interface addresses from the host's ARP table are "
                                           "not offered: the guests' links are no host "
                                           "interface")
        path = agent.socket_path(self.definition, self.paths)
        if path is None:
            raise ArgumentUnsupportedError("QEMU guest agent is not configured")
        return await agent.interfaces(path)


__all__ = ["AddressSource", "GuestInfo"]
