"""The ``qdriver`` command: virsh's commands and output, no daemon.

Each command is an async function registered in `COMMANDS` with its
argument setup; errors print as ``error: <libvirt-style message>`` and exit 1.
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Awaitable, Callable

import anyio

from . import accel as accel_mod
from .console import attach
from .domain import Domain, DomainState
from .driver import Driver
from .errors import QDriverError
from .xml.caps import domcapabilities

Handler = Callable[[Driver, argparse.Namespace], Awaitable[int]]


@dataclass(frozen=True)
class Command:
    """One CLI command: its handler, help and argument setup."""

    handler: Handler
    help: str
    setup: Callable[[argparse.ArgumentParser], None]


COMMANDS: dict[str, Command] = {}


def command(name: str, help: str,
            setup: Callable[[argparse.ArgumentParser], None] = lambda p: None
            ) -> Callable[[Handler], Handler]:
    """Register a CLI command."""
    def register(fn: Handler) -> Handler:
        COMMANDS[name] = Command(fn, help, setup)
        return fn
    return register


def _domain_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("domain", help="domain name")


def out(text: str = "") -> None:
    print(text, flush=True)


# -- domain lifecycle ---------------------------------------------------------

@command("define", "define a persistent domain from an XML file",
         lambda p: p.add_argument("file", help="domain XML file"))
async def cmd_define(drv: Driver, a: argparse.Namespace) -> int:
    dom = await drv.define_xml(Path(a.file).read_bytes())
    out(f"Domain '{dom.name}' defined from {a.file}")
    return 0


def _setup_undefine(p: argparse.ArgumentParser) -> None:
    _domain_arg(p)
    p.add_argument("--snapshots-metadata", action="store_true",
                   help="also remove the domain's snapshot metadata")


@command("undefine", "undefine a domain", _setup_undefine)
async def cmd_undefine(drv: Driver, a: argparse.Namespace) -> int:
    dom = drv.lookup(a.domain)
    await drv.undefine(dom, snapshots_metadata=a.snapshots_metadata)
    out(f"Domain '{dom.name}' has been undefined")
    return 0


def _setup_start(p: argparse.ArgumentParser) -> None:
    _domain_arg(p)
    p.add_argument("--paused", action="store_true", help="leave the guest paused")
    p.add_argument("--console", action="store_true", help="attach to the console after start")


@command("start", "start a (previously defined) inactive domain", _setup_start)
async def cmd_start(drv: Driver, a: argparse.Namespace) -> int:
    dom = drv.lookup(a.domain)
    await dom.start(paused=a.paused)
    out(f"Domain '{dom.name}' started")
    if a.console:
        await _console(dom)
    return 0


@command("suspend", "suspend a domain", _domain_arg)
async def cmd_suspend(drv: Driver, a: argparse.Namespace) -> int:
    await drv.lookup(a.domain).suspend()
    out(f"Domain '{a.domain}' suspended")
    return 0


@command("resume", "resume a domain", _domain_arg)
async def cmd_resume(drv: Driver, a: argparse.Namespace) -> int:
    await drv.lookup(a.domain).resume()
    out(f"Domain '{a.domain}' resumed")
    return 0


def _setup_shutdown(p: argparse.ArgumentParser) -> None:
    _domain_arg(p)
    p.add_argument("--timeout", type=float, default=60.0,
                   help="seconds to wait for the guest before destroying it (default 60)")
    p.add_argument("--no-escalate", action="store_true",
                   help="fail instead of destroying a guest that ignores the request")


@command("shutdown", "gracefully shut down a domain (ACPI), escalating on timeout",
         _setup_shutdown)
async def cmd_shutdown(drv: Driver, a: argparse.Namespace) -> int:
    dom = drv.lookup(a.domain)
    out(f"Domain '{dom.name}' is being shutdown")
    if not await dom.shutdown(timeout=a.timeout, escalate=not a.no_escalate):
        out(f"Domain '{dom.name}' ignored the ACPI power button for {a.timeout:g} s "
            "and was destroyed")
    return 0


@command("destroy", "destroy (stop) a domain", _domain_arg)
async def cmd_destroy(drv: Driver, a: argparse.Namespace) -> int:
    await drv.lookup(a.domain).destroy()
    out(f"Domain '{a.domain}' destroyed")
    return 0


# -- inspection ---------------------------------------------------------------

def _setup_list(p: argparse.ArgumentParser) -> None:
    p.add_argument("--all", action="store_true", help="list inactive domains too")
    p.add_argument("--inactive", action="store_true", help="list inactive domains only")
    p.add_argument("--name", action="store_true", help="list domain names only")


@command("list", "list domains", _setup_list)
async def cmd_list(drv: Driver, a: argparse.Namespace) -> int:
    rows = []
    for dom in drv.list_domains():
        active = dom.is_active
        if (active and a.inactive) or (not active and not (a.all or a.inactive)):
            continue
        state = (await dom.get_state())[0] if active else DomainState.SHUTOFF
        rows.append((str(dom.id) if active else "-", dom.name, state.label))
    if a.name:
        for _, name, _ in rows:
            out(name)
        return 0
    out(format_table(["Id", "Name", "State"], rows))
    return 0


def format_table(header: list[str], rows: list[tuple[str, ...]]) -> str:
    """virsh's table layout: padded columns, a dashed rule under the header."""
    widths = [max([len(h)] + [len(r[i]) for r in rows]) for i, h in enumerate(header)]

    def line(cells: tuple[str, ...] | list[str]) -> str:
        return (" " + "   ".join(c.ljust(w) for c, w in zip(cells, widths))).rstrip()
    rule = "-" * (sum(widths) + 3 * (len(widths) - 1) + 2)
    return "\n".join([line(header), rule] + [line(r) for r in rows]) + "\n"


def _setup_domstate(p: argparse.ArgumentParser) -> None:
    _domain_arg(p)
    p.add_argument("--reason", action="store_true", help="also print the reason")


@command("domstate", "domain state", _setup_domstate)
async def cmd_domstate(drv: Driver, a: argparse.Namespace) -> int:
    state, reason = await drv.lookup(a.domain).get_state()
    out(f"{state.label} ({reason})" if a.reason else state.label)
    return 0


@command("dominfo", "domain information", _domain_arg)
async def cmd_dominfo(drv: Driver, a: argparse.Namespace) -> int:
    dom = drv.lookup(a.domain)
    d = dom.definition
    state, _ = await dom.get_state()
    rows = [("Id", str(dom.id) if dom.id else "-"), ("Name", dom.name), ("UUID", dom.uuid),
            ("OS Type", "hvm"), ("State", state.label), ("CPU(s)", str(d.vcpus)),
            ("Max memory", f"{d.memory_kib} KiB"), ("Used memory", f"{d.memory_kib} KiB"),
            ("Persistent", "yes"), ("Autostart", "disable")]
    for key, value in rows:
        out(f"{key + ':':<16}{value}")
    out()
    return 0


def _setup_dumpxml(p: argparse.ArgumentParser) -> None:
    _domain_arg(p)
    p.add_argument("--inactive", action="store_true", help="show the persistent definition")


@command("dumpxml", "domain information in XML", _setup_dumpxml)
async def cmd_dumpxml(drv: Driver, a: argparse.Namespace) -> int:
    sys.stdout.write(drv.lookup(a.domain).xml_desc(inactive=a.inactive))
    return 0


@command("console", "connect to the guest console (Ctrl-] detaches)", _domain_arg)
async def cmd_console(drv: Driver, a: argparse.Namespace) -> int:
    await _console(drv.lookup(a.domain))
    return 0


async def _console(dom: Domain) -> None:
    target = dom.console_path()
    out(f"Connected to domain '{dom.name}'")
    out("Escape character is ^] (Ctrl + ])")
    await attach(target)
    out()


def _setup_domcaps(p: argparse.ArgumentParser) -> None:
    p.add_argument("--virttype", choices=["kvm", "qemu"], help="domain type to describe")
    p.add_argument("--arch", default="x86_64")


@command("domcapabilities", "what this host can run (and whether KVM is usable)",
         _setup_domcaps)
async def cmd_domcapabilities(drv: Driver, a: argparse.Namespace) -> int:
    kvm = accel_mod.probe("kvm")
    virttype = a.virttype or ("kvm" if kvm.usable else "qemu")
    path = shutil.which(f"qemu-system-{a.arch}") or f"qemu-system-{a.arch}"
    sys.stdout.write(domcapabilities(path, virttype, a.arch, Driver.accelerators()))
    return 0


# -- entry point --------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every registered command."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--state-dir", default=argparse.SUPPRESS,
                        help="state directory (env QDRIVER_STATE_DIR; "
                             "default ~/.local/share/qdriver)")
    parser = argparse.ArgumentParser(prog="qdriver", parents=[common],
                                     description="virsh-compatible QEMU driver, no daemon")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, cmd in COMMANDS.items():
        p = sub.add_parser(name, help=cmd.help, parents=[common])
        cmd.setup(p)
    return parser


async def run(argv: list[str]) -> int:
    """Parse ``argv`` and run the command; return the exit status."""
    args = build_parser().parse_args(argv)
    state_dir = getattr(args, "state_dir", None) or os.environ.get("QDRIVER_STATE_DIR")
    try:
        async with Driver(state_dir) as drv:
            return await COMMANDS[args.command].handler(drv, args)
    except QDriverError as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        return 1
    except OSError as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        return 1


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point."""
    sys.exit(anyio.run(run, sys.argv[1:] if argv is None else argv))


if __name__ == "__main__":
    main()
