"""Network commands: net-define, net-start, net-destroy, net-list, net-dhcp-leases, ..."""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from ..driver import Driver
from .registry import command, format_table, out


def network_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("network", help="network name")


@command("net-define", "define a persistent network from an XML file",
         lambda p: p.add_argument("file", help="network XML file"))
async def cmd_net_define(drv: Driver, a: argparse.Namespace) -> int:
    net = drv.define_network(Path(a.file).read_bytes())
    out(f"Network {net.name} defined from {a.file}")
    return 0


@command("net-start", "start a network: its switch, DHCP server and NAT", network_arg)
async def cmd_net_start(drv: Driver, a: argparse.Namespace) -> int:
    await drv.lookup_network(a.network).start()
    out(f"Network {a.network} started")
    return 0


@command("net-destroy", "stop a network's processes", network_arg)
async def cmd_net_destroy(drv: Driver, a: argparse.Namespace) -> int:
    await drv.lookup_network(a.network).destroy()
    out(f"Network {a.network} destroyed")
    return 0


@command("net-undefine", "remove a stopped network's definition", network_arg)
async def cmd_net_undefine(drv: Driver, a: argparse.Namespace) -> int:
    await drv.lookup_network(a.network).undefine()
    out(f"Network {a.network} has been undefined")
    return 0


def _setup_net_list(p: argparse.ArgumentParser) -> None:
    p.add_argument("--all", action="store_true", help="list inactive networks too")
    p.add_argument("--inactive", action="store_true", help="list inactive networks only")
    p.add_argument("--name", action="store_true", help="list network names only")


@command("net-list", "list networks", _setup_net_list)
async def cmd_net_list(drv: Driver, a: argparse.Namespace) -> int:
    rows = []
    for net in drv.list_networks():
        active = net.is_active
        if (active and a.inactive) or (not active and not (a.all or a.inactive)):
            continue
        rows.append([net.name, "active" if active else "inactive", "no", "yes"])
    if a.name:
        for row in rows:
            out(row[0])
        return 0
    sys.stdout.write(format_table(["Name", "State", "Autostart", "Persistent"], rows))
    return 0


@command("net-dumpxml", "network information in XML", network_arg)
async def cmd_net_dumpxml(drv: Driver, a: argparse.Namespace) -> int:
    sys.stdout.write(drv.lookup_network(a.network).xml_desc())
    return 0


@command("net-dhcp-leases", "the addresses a network's DHCP server gave", network_arg)
async def cmd_net_dhcp_leases(drv: Driver, a: argparse.Namespace) -> int:
    rows = [[time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(lease.expiry)), lease.mac,
             "ipv4", f"{lease.ip}/{lease.prefix}", lease.hostname, "-"]
            for lease in drv.lookup_network(a.network).leases()]
    sys.stdout.write(format_table(["Expiry Time", "MAC address", "Protocol", "IP address",
                                   "Hostname", "Client ID or DUID"], rows))
    return 0
