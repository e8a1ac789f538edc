"""The commands about a guest's life as it goes on: reboot, guestinfo, event."""
from __future__ import annotations

import argparse

import anyio

from ..driver import Driver
from ..events.kinds import Event, EventType
from ..guestinfo import GUEST_INFO
from ..ops.lifecycle import REBOOT_MODES
from .registry import command, domain_arg, out


def _setup_reboot(p: argparse.ArgumentParser) -> None:
    domain_arg(p)
    p.add_argument("--mode", default="acpi", choices=REBOOT_MODES,
                   help="the power button (default) or the guest agent")
    p.add_argument("--timeout", type=float, default=60.0,
                   help="seconds the guest has to power off (acpi; default 60)")


@command("reboot", "reboot a domain (the guest restarts in the same QEMU)", _setup_reboot)
async def cmd_reboot(drv: Driver, a: argparse.Namespace) -> int:
    await drv.lookup(a.domain).reboot(a.mode, a.timeout)
    out(f"Domain '{a.domain}' is being rebooted")
    return 0


def _setup_guestinfo(p: argparse.ArgumentParser) -> None:
    domain_arg(p)
    for group in GUEST_INFO:
        p.add_argument(f"--{group[:-1] if group == 'users' else group}", dest=group,
                       action="store_true", help=f"report the guest's {group}")


@command("guestinfo", "what the guest agent tells of the guest", _setup_guestinfo)
async def cmd_guestinfo(drv: Driver, a: argparse.Namespace) -> int:
    types = tuple(g for g in GUEST_INFO if getattr(a, g))
    info = await drv.lookup(a.domain).guest_info(types)
    for key, value in info.items():
        out(f"{key:<20}: {value}")
    return 0


def _setup_event(p: argparse.ArgumentParser) -> None:
    p.add_argument("domain", nargs="?", help="only this domain's events")
    p.add_argument("--loop", action="store_true", help="go on until interrupted")
    p.add_argument("--count", type=int, help="stop after this many events")
    p.add_argument("--timeout", type=float, help="stop after this many seconds")
    p.add_argument("--timestamp", action="store_true", help="print each event's time")


def event_line(event: Event) -> str:
    """How ``virsh event`` prints an event."""
    detail = event.detail.replace("_", " ").capitalize()
    if event.type is EventType.REBOOT:
        return f"event 'reboot' for domain '{event.domain}'"
    if event.type is EventType.SNAPSHOT:
        return f"event 'snapshot' for domain '{event.domain}': {detail} '{event.snapshot}'"
    return f"event 'lifecycle' for domain '{event.domain}': {str(event.type).capitalize()} " \
           f"{detail}"


@command("event", "print the domains' lifecycle events as they happen", _setup_event)
async def cmd_event(drv: Driver, a: argparse.Namespace) -> int:
    limit = a.count or (None if a.loop else 1)
    seen = 0
    stream = drv.lookup(a.domain).events() if a.domain else drv.events()
    async with stream:
        with anyio.move_on_after(a.timeout if a.timeout else float("inf")):
            async for event in stream:
                stamp = f"{event.time:.3f}: " if a.timestamp else ""
                out(stamp + event_line(event))
                seen += 1
                if limit is not None and seen >= limit:
                    break
    out(f"events received: {seen}")
    return 0
