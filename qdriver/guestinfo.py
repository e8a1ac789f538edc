"""What a running guest says of itself (libvirt's ``virDomainInterfaceAddresses``).

Read without the domain lock, like the other state queries: asking the guest
agent changes nothing.
"""
from __future__ import annotations

import enum
import json
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any, Callable

from . import agent
from .agent import Address, Interface
from .console import DomainConsole
from .errors import (
    ArgumentUnsupportedError,
    InvalidArgError,
    OperationFailedError,
    OperationInvalidError,
)
from .events.stream import EventStream
from .job import Job
from .launch.netprocs import NetworkPaths, leases
from .launch.runtime import Runtime
from .ops import lifecycle
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

    def job(self, lock_timeout: float | None = None) -> AbstractAsyncContextManager[Job]:
        raise NotImplementedError  # pragma: no cover - `Domain.job` is the one used

    async def reboot(self, mode: str = "acpi", timeout: float = 60.0) -> None:
        """``virsh reboot``: ask the guest to restart, by its power button (``acpi``,
        which waits until it has powered off and runs it again) or by its agent
        (``agent``, which returns once the agent has the request).

        :raise ShutdownTimeoutError: the guest ignored the button for ``timeout`` s.
        :raise ArgumentUnsupportedError: an unknown mode, or no guest agent.
        """
        async with self.job() as job:
            await lifecycle.reboot(job, mode, timeout)

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
        return await agent.interfaces(agent.require_socket(self.definition, self.paths))


    async def agent_command(self, command: str | dict[str, Any],
                            timeout: float = 10.0) -> object:
        """``virsh qemu-agent-command``: run one guest-agent command, given as its JSON
        (``{"execute": NAME, "arguments": {...}}``); its ``return`` value.

        :raise InvalidArgError: not such a command.
        :raise OperationInvalidError: the domain is not running.
        :raise ArgumentUnsupportedError: no guest agent channel.
        """
        msg = _agent_message(command)
        return await agent.execute(self._agent(), msg["execute"], timeout,
                                   msg.get("arguments"))

    async def guest_info(self, types: tuple[str, ...] = ()) -> dict[str, str | int]:
        """``virsh guestinfo``: what the guest agent tells of the guest, under
        libvirt's keys (``hostname``, ``os.name``, ``timezone.offset``, ...).
        ``types``: the groups asked for (`GUEST_INFO`; default all, each one the
        agent cannot answer left out, as libvirt does).

        :raise OperationInvalidError: the domain is not running.
        :raise ArgumentUnsupportedError: no guest agent, or an unknown group.
        """
        unknown = set(types) - set(GUEST_INFO)
        if unknown:
            raise ArgumentUnsupportedError(f"unknown guest info type '{sorted(unknown)[0]}'")
        info: dict[str, str | int] = {}
        async with agent.session(self._agent()) as call:
            for group in types or tuple(GUEST_INFO):
                command, read = GUEST_INFO[group]
                try:
                    reply = await call(command, None)
                except OperationFailedError:
                    if types:
                        raise
                    continue  # the agent has not that command
                info.update(read(reply if isinstance(reply, (dict, list)) else {}))
        return info

    def _agent(self) -> Path:
        """The running guest's agent channel.

        :raise OperationInvalidError: the domain is not running.
        :raise ArgumentUnsupportedError: it has no agent channel.
        """
        if self.runtime.peek() is None:
            raise OperationInvalidError("domain is not running")
        return agent.require_socket(self.definition, self.paths)

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


def _os(reply: Any) -> dict[str, str | int]:
    return {f"os.{k}": str(reply[k]) for k in OS_KEYS if k in reply}


def _users(reply: Any) -> dict[str, str | int]:
    users: dict[str, str | int] = {"user.count": len(reply)}
    for i, user in enumerate(reply):
        users[f"user.{i}.name"] = str(user.get("user", ""))
        users[f"user.{i}.login-time"] = int(float(user.get("login-time", 0)) * 1000)
    return users


OS_KEYS = ("id", "name", "pretty-name", "version", "version-id", "kernel-release",
           "kernel-version", "machine", "variant", "variant-id")
GUEST_INFO: dict[str, tuple[str, Callable[[Any], dict[str, str | int]]]] = {
    "users": ("guest-get-users", _users),
    "os": ("guest-get-osinfo", _os),
    "timezone": ("guest-get-timezone", lambda r: {
        "timezone.name": str(r.get("zone", "")), "timezone.offset": int(r.get("offset", 0))}),
    "hostname": ("guest-get-host-name", lambda r: {"hostname": str(r.get("host-name", ""))}),
}
"""``guestinfo``'s groups: the agent command each asks, and how its answer reads as
libvirt's keys."""


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
