"""The destination's side of a migration (``qdriver migrate-receive``, run by the
source through ssh or as a local process).

Asked to ``prepare``, it checks and defines the incoming domain, creates the
images the source copies into (empty, or on the same backing image for an
incremental copy), starts QEMU with ``-incoming defer`` and the same device
layout, exports the images over NBD and waits for the migration stream: on a
TCP port of its address, or (``tunnelled``) on UNIX sockets in the domain's
private socket directory, which the source reaches through ssh.  Asked
to ``finish``, it waits for QEMU to have the whole state, ends the exports and
resumes the guest.  Anything else (the channel closing, a failure) takes back
everything it made: the QEMU, the definition, the images.  While the domain is
in flight a marker under the state directory names what it made, so that a
later command finds and discards what a killed receiver left (`discard_stale`).
"""
from __future__ import annotations

import contextlib
import json
import os
import socket
import time
from pathlib import Path
from typing import Any

import anyio

from .. import process
from ..driver import Driver
from ..durable import atomic_write
from ..errors import (
    ConfigUnsupportedError,
    NoDomainError,
    OperationAbortedError,
    OperationFailedError,
    OperationInvalidError,
)
from ..events import EventType
from ..launch.cmdline import format_node
from ..paths import DomainPaths
from ..qemuimg import image as qemuimg
from ..xml.domain import DomainDef
from .channel import Channel
from .tls import CREDS as TLS_CREDS
from .tls import PSK_DIR, cert_dir, psk_creds, remove_psk, write_psk
from .tls import check as check_certs
from .tls import creds as tls_creds

FINISH_WAIT = 60.0
"""How long the destination waits for QEMU to have the whole state once the source
says the stream is complete."""
MARKERS = "incoming"
"""The state directory's folder of in-flight migrations."""


def free_port(host: str) -> int:
    """A TCP port free on ``host`` now (QEMU binds it a moment later)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


class Incoming:
    """One incoming domain: what was made for it, and the job that holds it."""

    def __init__(self, driver: Driver) -> None:
        self.driver = driver
        self.images: list[str] = []
        self.name: str | None = None
        self.uuid: str | None = None
        self.stack = contextlib.AsyncExitStack()
        self.job: Any = None
        self.exports: list[str] = []
        self.keys: Path | None = None
        """The directory of this migration's key file, while it exists."""

    @property
    def marker(self) -> Path:
        return self.driver.state_dir / MARKERS / f"{self.name}.json"

    def _mark(self) -> None:
        """Name what exists so far, before each new thing is made."""
        self.marker.parent.mkdir(mode=0o700, exist_ok=True)
        me = os.getpid()
        atomic_write(self.marker, json.dumps({
            "version": 1, "pid": me, "start_time": process.start_time(me),
            "domain": self.name, "uuid": self.uuid, "images": self.images}))

    async def prepare(self, request: dict[str, Any]) -> dict[str, Any]:
        """Define the domain, make its images, start its QEMU waiting for the stream."""
        definition = DomainDef.parse(str(request["xml"]))
        if request.get("dest_xml"):
            definition = await self.driver.same_hardware(definition, str(request["dest_xml"]))
        self._check(definition)
        self.name, self.uuid = definition.name, definition.uuid
        self._mark()
        for target, spec in dict(request.get("copy") or {}).items():
            await self._make_image(definition, str(target), spec)
        dom = await self.driver.define_xml(definition.to_xml())
        self.job = await self.stack.enter_async_context(dom.job())
        tls_dir = cert_dir(request.get("tls_dir")) if request.get("tls") else None
        if tls_dir is not None:
            check_certs(tls_dir, "server")
        mon = await self.job.launch(paused=True, incoming=True)
        address = str(request["address"])
        secured = tls_dir is not None or bool(request.get("psk"))
        if tls_dir is not None:
            await mon.execute("object-add", tls_creds(tls_dir, "server"))
        elif request.get("psk"):  # the key of this migration, for its two QEMUs only
            self.keys = self.job.paths.sockets / PSK_DIR
            write_psk(self.keys, str(request["psk"]), self.job.policy.qemu_user)
            await mon.execute("object-add", psk_creds(self.keys, "server"))
        if secured:
            await mon.execute("migrate-set-parameters", {"tls-creds": TLS_CREDS})
        parallel = int(request.get("parallel") or 0)
        if parallel:
            await mon.execute("migrate-set-capabilities", {"capabilities": [
                {"capability": "multifd", "state": True}]})
            await mon.execute("migrate-set-parameters", {"multifd-channels": parallel})
        result: dict[str, Any] = {}
        tunnelled = bool(request.get("tunnelled"))
        if request.get("copy"):
            server: dict[str, Any] = {"type": "unix", "path": str(
                self.job.paths.sockets / "nbd-in.sock")} if tunnelled else {
                "type": "inet", "host": address, "port": str(free_port(address))}
            await mon.execute("nbd-server-start", {"addr": {"type": server["type"], "data": {
                k: v for k, v in server.items() if k != "type"}}} | (
                    {"tls-creds": TLS_CREDS} if secured else {}))
            for target in request["copy"]:
                await mon.execute("block-export-add", {
                    "type": "nbd", "id": f"mig-{target}", "node-name": format_node(target),
                    "writable": True, "name": target})
                self.exports.append(f"mig-{target}")
            result["nbd"] = server
        result["uri"] = f"unix:{self.job.paths.sockets / 'migrate-in.sock'}" if tunnelled \
            else f"tcp:{address}:{free_port(address)}"
        await mon.execute("migrate-incoming", {"uri": result["uri"]})
        return result

    def _check(self, definition: DomainDef) -> None:
        if definition.loader is not None:
            raise ConfigUnsupportedError("migrating a UEFI guest (its variable store) is not "
                                         "supported yet")
        try:
            self.driver.lookup(definition.name)
        except NoDomainError:
            return
        raise OperationInvalidError(f"domain '{definition.name}' already exists on the "
                                    "destination")

    async def _make_image(self, definition: DomainDef, target: str,
                          spec: dict[str, Any]) -> None:
        disk = definition.disk(target)
        if disk is None or not disk.source:
            raise OperationFailedError(f"the incoming domain has no disk '{target}' to copy")
        if os.path.lexists(disk.source):
            raise OperationInvalidError(f"disk '{target}': '{disk.source}' already exists on the "
                                        "destination (give another path with --xml)")
        self.images.append(disk.source)
        self._mark()
        backing = spec.get("backing")
        await qemuimg.create(disk.source, disk.format, int(spec["size"]),
                             backing=backing[0] if backing else None,
                             backing_fmt=backing[1] if backing else None)

    async def finish(self, running: bool) -> dict[str, Any]:
        """QEMU has the whole state: end the exports, resume the guest."""
        mon = await self.job.monitor()
        deadline = time.monotonic() + FINISH_WAIT
        while True:
            status = (await mon.execute("query-migrate")).get("status")
            if status == "completed":
                break
            if status in ("failed", "cancelled") or time.monotonic() > deadline:
                raise OperationFailedError(f"the incoming migration ended '{status}'")
            await anyio.sleep(0.01)
        for export in self.exports:
            await mon.execute("block-export-del", {"id": export})
        if self.exports:
            await mon.execute("nbd-server-stop")
        self.job.emit(EventType.STARTED, "migrated")
        await self.job.vcpus(running, "migrated", "migrated")  # paused: stays so, says why
        await self.stack.aclose()
        if self.keys is not None:
            remove_psk(self.keys)
        self.marker.unlink(missing_ok=True)
        return {"images": self.images}

    async def discard(self) -> None:
        """Take back what was made: the QEMU, the definition, the images."""
        with anyio.CancelScope(shield=True):
            try:
                if self.job is not None and self.job.record is not None:
                    await self.job.stop("failed")
            finally:
                await self.stack.aclose()
            await _forget(self.driver, self.name, self.uuid, self.images)
            if self.keys is not None:
                remove_psk(self.keys)
            if self.name is not None:
                self.marker.unlink(missing_ok=True)


async def _forget(driver: Driver, name: str | None, uuid: str | None,
                  images: list[str]) -> None:
    """Undefine the incoming domain (if it is still the one this migration made) and
    remove the images made for it."""
    if name is not None:
        remove_psk(DomainPaths.of(driver.state_dir, name).sockets / PSK_DIR)
        try:
            dom = driver.lookup(name)
        except NoDomainError:
            dom = None
        if dom is not None and dom.uuid == uuid:
            if dom.is_active:
                await dom.destroy()
            await driver.undefine(dom, snapshots_metadata=True)
    for path in images:
        Path(path).unlink(missing_ok=True)


async def discard_stale(driver: Driver) -> list[str]:
    """Discard what receivers that died left behind (their markers name it); the
    domains so discarded.  Every CLI command does this first, so the next command
    on the destination cleans up after a killed receiver."""
    found: list[str] = []
    if not (driver.state_dir / MARKERS).is_dir():
        return found
    for marker in sorted((driver.state_dir / MARKERS).glob("*.json")):
        try:
            data = json.loads(marker.read_text())
            owner = process.ProcessId(int(data["pid"]), int(data["start_time"]))
        except (OSError, ValueError, KeyError, TypeError):
            continue
        if process.is_running(owner):
            continue
        await _forget(driver, data.get("domain"), data.get("uuid"), list(data.get("images", [])))
        marker.unlink(missing_ok=True)
        found.append(str(data.get("domain")))
    return found


async def receive(driver: Driver, channel: Channel) -> int:
    """Serve one incoming migration over ``channel``; 0 once the guest runs here."""
    await discard_stale(driver)
    request = await channel.receive()
    if request is None or request.get("op") != "prepare":
        return 1
    incoming = Incoming(driver)
    try:
        await channel.reply(await incoming.prepare(request))
        message = await channel.receive()
        if message is None or message.get("op") != "finish":
            raise OperationAbortedError("the source ended the migration")
        await channel.reply(await incoming.finish(bool(message.get("running"))))
        return 0
    except BaseException as e:
        await incoming.discard()
        if not isinstance(e, OperationAbortedError):
            with contextlib.suppress(Exception):
                await channel.fail(e)
        if isinstance(e, Exception):
            return 1
        raise


__all__ = ["Incoming", "discard_stale", "free_port", "receive"]
