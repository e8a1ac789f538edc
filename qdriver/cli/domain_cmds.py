"""Domain commands: define, start, list, domstate, console, ..."""
from __future__ import annotations

import argparse
import json
import shlex
import shutil
import sys
from pathlib import Path

from ..caps import accel as accel_mod
from ..caps import qemucaps
from ..cloudinit import CloudInit
from ..console import attach
from ..domain import Domain, DomainState
from ..driver import Driver
from ..errors import OperationFailedError, OperationInvalidError
from ..memory import memfile
from ..memory.header import rewrite_xml
from ..xml.caps import domcapabilities
from ..xml.domain import DomainDef
from .registry import (
    ProgressPrinter,
    command,
    domain_arg,
    domain_with,
    format_fields,
    format_table,
    list_options,
    listed,
    method_commands,
    out,
)

# -- domain lifecycle ---------------------------------------------------------

def _setup_define(p: argparse.ArgumentParser) -> None:
    p.add_argument("file", help="domain XML file")
    p.add_argument("--cloud-init", metavar="OPTIONS",
                   help="attach a NoCloud seed: user-data=FILE[,meta-data=FILE]"
                        "[,network-config=FILE], or ssh-key=FILE (as virt-install)")


@command("define", "define a persistent domain from an XML file", _setup_define)
async def cmd_define(drv: Driver, a: argparse.Namespace) -> int:
    seed = CloudInit.parse(a.cloud_init) if a.cloud_init else None
    dom = await drv.define_xml(Path(a.file).read_bytes(), cloud_init=seed)
    out(f"Domain '{dom.name}' defined from {a.file}")
    return 0


@command("undefine", "undefine a domain",
         domain_with(snapshots_metadata="also remove the domain's snapshot metadata",
                     managed_save="also remove the managed save image",
                     nvram="also remove the UEFI variable store",
                     keep_nvram="keep the UEFI variable store"))
async def cmd_undefine(drv: Driver, a: argparse.Namespace) -> int:
    dom = drv.lookup(a.domain)
    await drv.undefine(dom, snapshots_metadata=a.snapshots_metadata,
                       managed_save=a.managed_save, nvram=a.nvram, keep_nvram=a.keep_nvram)
    out(f"Domain '{dom.name}' has been undefined")
    return 0


@command("start", "start a (previously defined) inactive domain",
         domain_with(paused="leave the guest paused",
                     console="attach to the console after start",
                     force_boot="boot, discarding a managed save image"))
async def cmd_start(drv: Driver, a: argparse.Namespace) -> int:
    dom = drv.lookup(a.domain)
    await dom.start(paused=a.paused, force_boot=a.force_boot,
                    progress=ProgressPrinter(f"domain {a.domain}"))
    out(f"Domain '{dom.name}' started")
    if a.console:
        await _console(dom)
    return 0


# command: (help, Domain method, what virsh prints after "Domain 'x'")
SIMPLE = {
    "suspend": ("suspend a domain", "suspend", "suspended"),
    "reset": ("reset a domain (its reset button)", "reset", "was reset"),
    "resume": ("resume a domain", "resume", "resumed"),
    "destroy": ("destroy (stop) a domain", "destroy", "destroyed"),
}


method_commands(SIMPLE, lambda drv, a: drv.lookup(a.domain), "Domain '{a.domain}' {done}",
                domain_arg)


def _setup_shutdown(p: argparse.ArgumentParser) -> None:
    domain_arg(p)
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


# -- inspection ---------------------------------------------------------------

@command("list", "list domains", list_options("domains"))
async def cmd_list(drv: Driver, a: argparse.Namespace) -> int:
    rows = []
    for dom in drv.list_domains():
        active = dom.is_active
        if not listed(active, a):
            continue
        state = (await dom.get_state())[0] if active else DomainState.SHUTOFF
        rows.append((str(dom.id) if active else "-", dom.name, state.label))
    if a.name:
        for _, name, _ in rows:
            out(name)
        return 0
    out(format_table(["Id", "Name", "State"], rows))
    return 0


@command("domstate", "domain state", domain_with(reason="also print the reason"))
async def cmd_domstate(drv: Driver, a: argparse.Namespace) -> int:
    dom = drv.lookup(a.domain)
    state, reason = await dom.get_state()
    interrupted = dom.interrupted_operation()
    if interrupted and a.reason:
        reason += f", interrupted {interrupted}: the next command recovers it"
    out(f"{state.label} ({reason})" if a.reason else state.label)
    return 0


@command("recover", "finish or roll back an operation whose process died", domain_arg)
async def cmd_recover(drv: Driver, a: argparse.Namespace) -> int:
    report = await drv.lookup(a.domain).recover()
    out(str(report) if report else f"Domain '{a.domain}' has no interrupted operation")
    return 0


@command("dominfo", "domain information", domain_arg)
async def cmd_dominfo(drv: Driver, a: argparse.Namespace) -> int:
    dom = drv.lookup(a.domain)
    d = dom.definition
    state, _ = await dom.get_state()
    rows = [("Id", str(dom.id) if dom.id else "-"), ("Name", dom.name), ("UUID", dom.uuid),
            ("OS Type", "hvm"), ("State", state.label), ("CPU(s)", str(d.vcpus)),
            ("Max memory", f"{d.memory_kib} KiB"), ("Used memory", f"{d.memory_kib} KiB"),
            ("Persistent", "yes"), ("Autostart", "disable"),
            ("Managed save", "yes" if dom.has_managed_save() else "no")]
    interrupted = dom.interrupted_operation()
    if interrupted:
        rows.append(("Interrupted", f"{interrupted}; the next command recovers it"))
    out(format_fields(rows))
    return 0


def _setup_domifaddr(p: argparse.ArgumentParser) -> None:
    domain_arg(p)
    p.add_argument("--source", default="lease", choices=["lease", "agent", "arp"],
                   help="where the addresses come from (default: the networks' leases)")


@command("domifaddr", "the guest's network interfaces and their addresses", _setup_domifaddr)
async def cmd_domifaddr(drv: Driver, a: argparse.Namespace) -> int:
    rows = []
    for iface in await drv.lookup(a.domain).interface_addresses(a.source):
        rows += [[iface.name, iface.hwaddr or "-", addr.type, f"{addr.addr}/{addr.prefix}"]
                 for addr in iface.addrs] or [[iface.name, iface.hwaddr or "-", "N/A", "N/A"]]
    sys.stdout.write(format_table(["Name", "MAC address", "Protocol", "Address"], rows))
    return 0


def _setup_agent_command(p: argparse.ArgumentParser) -> None:
    domain_arg(p)
    p.add_argument("cmd", help='the command, JSON: {"execute": "guest-ping"}')
    p.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for it")


@command("qemu-agent-command", "run a guest-agent command", _setup_agent_command)
async def cmd_qemu_agent_command(drv: Driver, a: argparse.Namespace) -> int:
    result = await drv.lookup(a.domain).agent_command(a.cmd, a.timeout)
    out(json.dumps({"return": result}))
    return 0


@command("dumpxml", "domain information in XML",
         domain_with(inactive="show the persistent definition"))
async def cmd_dumpxml(drv: Driver, a: argparse.Namespace) -> int:
    sys.stdout.write(drv.lookup(a.domain).xml_desc(inactive=a.inactive))
    return 0


def _setup_native(p: argparse.ArgumentParser) -> None:
    p.add_argument("--format", default="qemu-argv", choices=["qemu-argv"],
                   help="the native format (QEMU's command line)")
    p.add_argument("domain", help="a domain name, or a domain XML file")


@command("domxml-to-native", "the QEMU command line a domain starts with", _setup_native)
async def cmd_domxml_to_native(drv: Driver, a: argparse.Namespace) -> int:
    out(shlex.join(drv.native_argv(a.domain)))
    return 0


@command("console", "connect to the guest console (Ctrl-] detaches)", domain_arg)
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
    qemu = await qemucaps.probe_binary() if a.arch == "x86_64" and shutil.which(path) else None
    sys.stdout.write(domcapabilities(path, virttype, a.arch, Driver.accelerators(), qemu))
    return 0


# -- save and restore -----------------------------------------------------------

def _save_state_flags(p: argparse.ArgumentParser) -> None:
    state = p.add_mutually_exclusive_group()
    state.add_argument("--running", action="store_true", help="restore to running")
    state.add_argument("--paused", action="store_true", help="restore to paused")
    p.add_argument("--verbose", action="store_true",
                   help="show progress (virsh's flag; qdriver always shows it)")


def _setup_save(p: argparse.ArgumentParser) -> None:
    domain_arg(p)
    p.add_argument("file", help="where to write the guest's memory")
    _save_state_flags(p)


@command("save", "save a domain's memory to a file and stop it", _setup_save)
async def cmd_save(drv: Driver, a: argparse.Namespace) -> int:
    await drv.lookup(a.domain).save(a.file, a.running, a.paused,
                                    ProgressPrinter(f"domain {a.domain}"))
    out(f"\nDomain '{a.domain}' saved to {a.file}")
    return 0


def _setup_restore(p: argparse.ArgumentParser) -> None:
    p.add_argument("file", help="a file written by save")
    p.add_argument("--xml", help="a domain XML file of the same hardware to restore with "
                                 "(other disk images, for one)")
    _save_state_flags(p)


@command("restore", "restore a domain from a saved state file", _setup_restore)
async def cmd_restore(drv: Driver, a: argparse.Namespace) -> int:
    xml = Path(a.xml).read_bytes() if a.xml else None
    await drv.restore(a.file, a.running, a.paused, ProgressPrinter("restore"), xml)
    out(f"Domain restored from {a.file}")
    return 0


def _setup_managedsave(p: argparse.ArgumentParser) -> None:
    domain_arg(p)
    _save_state_flags(p)


@command("managedsave", "save a domain so that the next start resumes it", _setup_managedsave)
async def cmd_managedsave(drv: Driver, a: argparse.Namespace) -> int:
    await drv.lookup(a.domain).managed_save(a.running, a.paused,
                                            ProgressPrinter(f"domain {a.domain}"))
    out(f"\nDomain '{a.domain}' state saved by libvirt")
    return 0


@command("managedsave-remove", "remove a domain's managed save image", domain_arg)
async def cmd_managedsave_remove(drv: Driver, a: argparse.Namespace) -> int:
    dom = drv.lookup(a.domain)
    if not dom.has_managed_save():
        out(f"Domain '{a.domain}' has no manage save image; removal skipped")
        return 0
    await dom.managed_save_remove()
    out(f"Removed managedsave image for domain '{a.domain}'")
    return 0


@command("save-image-dumpxml", "the domain XML a save file holds",
         lambda p: p.add_argument("file"))
async def cmd_save_image_dumpxml(drv: Driver, a: argparse.Namespace) -> int:
    sys.stdout.write(memfile.check(a.file).domain_xml)
    return 0


def _setup_save_image_define(p: argparse.ArgumentParser) -> None:
    p.add_argument("file")
    p.add_argument("xml", help="the new domain XML")
    _save_state_flags(p)


@command("save-image-define", "replace the domain XML a save file holds",
         _setup_save_image_define)
async def cmd_save_image_define(drv: Driver, a: argparse.Namespace) -> int:
    header = memfile.check(a.file)
    old, new = DomainDef.parse(header.domain_xml), DomainDef.parse(Path(a.xml).read_bytes())
    if (new.name, new.uuid) != (old.name, old.uuid):
        raise OperationInvalidError(f"the new XML is for domain '{new.name}' ({new.uuid}), "
                                    f"the save file holds '{old.name}' ({old.uuid})")
    running = True if a.running else False if a.paused else None
    try:
        rewrite_xml(a.file, new.to_xml(), running)
    except ValueError as e:
        raise OperationFailedError(f"cannot update save image '{a.file}': {e}") from e
    out(f"State file {a.file} updated.")
    return 0
