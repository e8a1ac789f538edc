"""A minimal qemu-guest-agent client: freeze and thaw guest filesystems, ask the
guest's network interfaces.

The agent speaks JSON lines over the virtio-serial channel's UNIX socket.
A ``guest-sync`` with a random id first drains stale replies; an agent that
does not answer within the timeout is `AgentUnresponsiveError`.  The sync has
a timeout of its own (libvirt's five seconds): an agent that does not answer
it never got the command, so the caller need not take the command back.
"""
from __future__ import annotations

import json
import random
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import AsyncIterator, Awaitable, Callable

import anyio

from .errors import AgentUnresponsiveError, ArgumentUnsupportedError, OperationFailedError
from .paths import DomainPaths
from .xml.domain import DomainDef

CHANNEL = "org.qemu.guest_agent.0"
"""The virtio-serial port name qemu-guest-agent listens on."""
NO_REPLY = frozenset({"guest-shutdown", "guest-suspend-disk", "guest-suspend-ram",
                      "guest-suspend-hybrid"})
"""Commands the agent carries out without answering (the guest goes away)."""
SYNC_TIMEOUT = 5.0
"""Seconds an agent has to answer ``guest-sync`` before a command (libvirt's wait)."""


class AgentNotReachedError(AgentUnresponsiveError):
    """The agent did not answer the sync: the command was never sent to it."""


def socket_path(definition: DomainDef, paths: DomainPaths) -> Path | None:
    """The host end of the domain's guest-agent channel, if it has one."""
    for i, chan in enumerate(definition.channels):
        if chan.target_name == CHANNEL:
            return Path(chan.path) if chan.path else paths.channel(i)
    return None


def require_socket(definition: DomainDef, paths: DomainPaths) -> Path:
    """The host end of the guest-agent channel.

    :raise ArgumentUnsupportedError: the domain has none.
    """
    path = socket_path(definition, paths)
    if path is None:
        raise ArgumentUnsupportedError("QEMU guest agent is not configured")
    return path


async def _call(stream: anyio.abc.ByteStream, buf: bytearray, command: str,
                arguments: dict[str, object] | None = None) -> object:
    msg: dict[str, object] = {"execute": command}
    if arguments:
        msg["arguments"] = arguments
    await stream.send(json.dumps(msg).encode() + b"\n")
    while True:
        while b"\n" not in buf:
            buf += await stream.receive()
        line, _, rest = bytes(buf).partition(b"\n")
        buf[:] = rest
        try:
            reply = json.loads(line)
        except ValueError:
            continue  # noise before the sync reply
        if "error" in reply:
            raise OperationFailedError(f"guest agent command '{command}' failed: "
                                       f"{reply['error'].get('desc', reply['error'])}")
        if "return" in reply:
            return reply["return"]


async def execute(path: Path, command: str | None, timeout: float = 10.0,
                  arguments: dict[str, object] | None = None) -> object:
    """Sync with the agent on ``path``, then run ``command`` with ``arguments`` (None:
    the sync is all).

    :raise AgentNotReachedError: no answer to the sync; ``command`` was not sent.
    :raise AgentUnresponsiveError: no answer to ``command`` within ``timeout``.
    """
    async with session(path, timeout) as call:
        return None if command is None else await call(command, arguments)


@asynccontextmanager
async def session(path: Path, timeout: float = 10.0
                  ) -> AsyncIterator[Callable[[str, dict[str, object] | None],
                                              Awaitable[object]]]:
    """One connection to the agent, synced once, for several commands: ``await
    call(command, arguments)`` returns each one's answer (within ``timeout``).

    :raise AgentNotReachedError: no answer to the sync.
    """
    try:
        stream = await anyio.connect_unix(str(path))
    except OSError as e:
        raise AgentNotReachedError(f"cannot reach the guest agent at {path}: {e}") from e
    async with stream:
        buf = bytearray()
        sync_id = random.randrange(1, 2**31)
        sync_timeout = min(timeout, SYNC_TIMEOUT)
        try:
            with anyio.fail_after(sync_timeout):
                while await _call(stream, buf, "guest-sync", {"id": sync_id}) != sync_id:
                    pass
        except TimeoutError as e:
            raise AgentNotReachedError(
                f"the guest agent did not answer within {sync_timeout:g} s") from e

        async def call(command: str, arguments: dict[str, object] | None = None) -> object:
            if command in NO_REPLY:
                await stream.send(json.dumps({"execute": command,
                                              "arguments": arguments or {}}).encode() + b"\n")
                return None
            try:
                with anyio.fail_after(timeout):
                    return await _call(stream, buf, command, arguments)
            except TimeoutError as e:
                raise AgentUnresponsiveError(
                    f"the guest agent did not answer '{command}' within {timeout:g} s") from e
        yield call


async def ping(path: Path, timeout: float = 1.0) -> None:
    """Return once the agent answers a ``guest-sync``; `AgentUnresponsiveError` if not."""
    await execute(path, None, timeout)


async def fsfreeze(path: Path, timeout: float = 10.0) -> int:
    """Freeze the guest's filesystems; returns how many were frozen."""
    return int(await execute(path, "guest-fsfreeze-freeze", timeout))  # type: ignore[call-overload,no-any-return]


async def fsthaw(path: Path, timeout: float = 10.0) -> int:
    """Thaw the guest's filesystems."""
    return int(await execute(path, "guest-fsfreeze-thaw", timeout))  # type: ignore[call-overload,no-any-return]


@dataclass(frozen=True)
class Address:
    """One address of a guest interface (libvirt's ``virDomainIPAddress``)."""

    type: str
    """``ipv4`` or ``ipv6``."""
    addr: str
    prefix: int


@dataclass(frozen=True)
class Interface:
    """A guest network interface and its addresses (``virDomainInterface``)."""

    name: str
    hwaddr: str | None
    addrs: tuple[Address, ...]


async def interfaces(path: Path, timeout: float = 10.0) -> list[Interface]:
    """The guest's interfaces as its agent reports them (``guest-network-get-interfaces``).

    :raise AgentUnresponsiveError: the agent did not answer.
    """
    reply = await execute(path, "guest-network-get-interfaces", timeout)
    return [Interface(str(i.get("name", "")), i.get("hardware-address"),
                      tuple(Address(str(a.get("ip-address-type", "")),
                                    str(a.get("ip-address", "")), int(a.get("prefix", 0)))
                            for a in i.get("ip-addresses", [])))
            for i in reply if isinstance(i, dict)] if isinstance(reply, list) else []

