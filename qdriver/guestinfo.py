"""What a running guest says of itself (libvirt's ``virDomainInterfaceAddresses``).

Read without the domain lock, like the other state queries: asking the guest
agent changes nothing.
"""
from __future__ import annotations

import enum
import json
from pathlib import Path
from typing import Any

from . import agent
from .agent import Address, Interface
from .console import DomainConsole
from .errors import ArgumentUnsupportedError, InvalidArgError, OperationInvalidError
from .events.stream import EventStream
from .launch.netprocs import NetworkPaths, leases
from .launch.runtime import Runtime
from .paths import DomainPaths
from .xml.domain import DomainDef
from .xml.network import NetworkDef


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

    def console_path(self) -> Path | str:
        raise NotImplementedError  # pragma: no cover - `Domain.console_path` is the one used

    def events(self) -> EventStream:
        """This domain's lifecycle events from now on (`Driver.events`)."""
        return EventStream(self.paths.state_dir, self.name)

    def console(self, from_start: bool = False) -> DomainConsole:
        """The serial console as a program uses it: the text from now on (``from_start``:
        the whole console log), typing, waiting for a pattern; close it when done.
        Typing needs the domain running; reading does not."""
        log = self.paths.console_log
        offset = 0 if from_start or not log.exists() else log.stat().st_size
        return DomainConsole(log, self.console_path, self.name, offset)

    async def interface_addresses(self, source: str = "lease") -> list[Interface]:
        """The guest's interfaces and addresses (``virsh domifaddr``).

        ``lease``: the addresses the DHCP servers of the qdriver networks the
        interfaces join gave their MACs (``netN``: the domain's Nth interface; none
        for an interface on no network, as libvirt answers); ``agent``: what the
        guest agent reports; ``arp`` is not offered (the guests' links are no host
        interface).

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
            return self._leased()
        if src is AddressSource.ARP:
            raise ArgumentUnsupportedError("interface addresses from the host's ARP table are "
                                           "not offered: the guests' links are no host "
                                           "interface")
        path = agent.socket_path(self.definition, self.paths)
        if path is None:
            raise ArgumentUnsupportedError("QEMU guest agent is not configured")
        return await agent.interfaces(path)


    async def agent_command(self, command: str | dict[str, Any],
                            timeout: float = 10.0) -> object:
        """``virsh qemu-agent-command``: run one guest-agent command, given as its JSON
        (``{"execute": NAME, "arguments": {...}}``); its ``return`` value.

        :raise InvalidArgError: not such a command.
        :raise OperationInvalidError: the domain is not running.
        :raise ArgumentUnsupportedError: no guest agent channel.
        """
        msg = _agent_message(command)
        if self.runtime.peek() is None:
            raise OperationInvalidError("domain is not running")
        path = agent.socket_path(self.definition, self.paths)
        if path is None:
            raise ArgumentUnsupportedError("QEMU guest agent is not configured")
        return await agent.execute(path, msg["execute"], timeout, msg.get("arguments"))

    def _leased(self) -> list[Interface]:
        found = []
        for i, iface in enumerate(self.definition.interfaces):
            if iface.type != "network" or not iface.network or not iface.mac:
                continue
            paths = NetworkPaths.of(self.paths.state_dir, iface.network)
            prefix = NetworkDef.parse(paths.definition.read_bytes()).subnet.prefixlen \
                if paths.definition.exists() else 0
            addrs = tuple(Address("ipv4", ip, prefix) for _, mac, ip, _ in leases(paths)
                          if mac == iface.mac.lower())
            if addrs:
                found.append(Interface(f"net{i}", iface.mac, addrs))
        return found


def _agent_message(command: str | dict[str, Any]) -> dict[str, Any]:
    """A guest-agent command as parsed JSON, checked for its shape."""
    try:
        msg = json.loads(command) if isinstance(command, str) else command
    except ValueError as e:
        raise InvalidArgError(f"guest agent command is not JSON: {e}") from e
    if not isinstance(msg, dict) or not isinstance(msg.get("execute"), str) \
            or not isinstance(msg.get("arguments", {}), dict) \
            or set(msg) - {"execute", "arguments"}:
        raise InvalidArgError("a guest agent command is {\"execute\": NAME, "
                              "\"arguments\": {...}}")
    return msg


__all__ = ["AddressSource", "GuestInfo"]
