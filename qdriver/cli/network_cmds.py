"""Network commands: net-define, net-start, net-destroy, net-list, net-dhcp-leases, ..."""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from ..driver import Driver
from .registry import command, format_table, list_options, listed, method_commands, out


def network_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("network", help="network name")


@command("net-define", "define a persistent network from an XML file",
         lambda p: p.add_argument("file", help="network XML file"))
async def cmd_net_define(drv: Driver, a: argparse.Namespace) -> int:
    net = drv.define_network(Path(a.file).read_bytes())
    out(f"Network {net.name} defined from {a.file}")
    return 0


NET_ACTIONS = {
    "net-start": ("start a network: its switch, DHCP server and NAT", "start", "started"),
    "net-destroy": ("stop a network's processes", "destroy", "destroyed"),
    "net-undefine": ("remove a stopped network's definition", "undefine", "has been undefined"),
}
"""The commands that call one method of a network: help, method, virsh's word."""
method_commands(NET_ACTIONS, lambda drv, a: drv.lookup_network(a.network),
                "Network {a.network} {done}", network_arg)


@command("net-list", "list networks", list_options("networks"))
async def cmd_net_list(drv: Driver, a: argparse.Namespace) -> int:
    rows = [[net.name, "active" if net.is_active else "inactive", "no", "yes"]
            for net in drv.list_networks()]
    rows = [row for row in rows if listed(row[1] == "active", a)]
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
