"""libvirt's network XML, the part qdriver runs: a name, one IPv4 subnet with
DHCP (ranges, fixed hosts) and optionally ``<forward mode='nat'/>``.

A started network is a switch the guests join, a DHCP server on it at the
``<ip address>``, and with NAT a user-mode router at the subnet's ``.2``
(`qdriver.launch.netprocs`).  Everything else libvirt's network XML can say
needs root or a bridge of the host and is refused by name.
"""
from __future__ import annotations

import ipaddress
import re
import uuid as uuidlib
from dataclasses import dataclass, field

from ..errors import ConfigUnsupportedError, XMLError
from . import safe
from .domain import MAC_RE
from .domain import NETWORK_NAME_RE as NAME_RE

HOSTNAME_RE = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?$")
"""A DHCP host's name: one DNS label (it reaches dnsmasq's comma-separated options)."""
FORWARD_MODES = ("nat",)
TOP_LEVEL = {"name", "uuid", "forward", "ip", "title", "description"}
NAT_GATEWAY = 2
"""The user-mode router's host number in the subnet (slirp's own address)."""
NAT_DNS = 3
"""slirp's DNS forwarder's host number."""


@dataclass(frozen=True)
class DhcpHost:
    """``<host mac= ip= name=>``: a fixed address for one MAC."""

    mac: str
    ip: ipaddress.IPv4Address
    name: str | None = None


@dataclass
class NetworkDef:
    """One network as qdriver runs it."""

    name: str
    uuid: str
    address: ipaddress.IPv4Interface
    """``<ip address= netmask|prefix>``: the DHCP server's address and the subnet."""
    forward: str | None = None
    """``nat`` (a way out through the host), or None (an isolated network)."""
    ranges: list[tuple[ipaddress.IPv4Address, ipaddress.IPv4Address]] = \
        field(default_factory=list)
    hosts: list[DhcpHost] = field(default_factory=list)
    uuid_given: bool = field(default=True, compare=False)
    """The XML named the uuid (else one was made, and a redefinition keeps the old)."""

    @property
    def subnet(self) -> ipaddress.IPv4Network:
        return self.address.network

    @property
    def gateway(self) -> ipaddress.IPv4Address | None:
        """The router guests get by DHCP: the NAT's address, if the network has one."""
        return self.subnet.network_address + NAT_GATEWAY if self.forward else None

    @property
    def dns(self) -> ipaddress.IPv4Address | None:
        return self.subnet.network_address + NAT_DNS if self.forward else None

    @classmethod
    def parse(cls, text: str | bytes) -> NetworkDef:
        """:raise XMLError: malformed; :raise ConfigUnsupportedError: what qdriver
        cannot run (named)."""
        root = safe.parse(text, "network XML")
        if root.tag != "network":
            raise XMLError(f"expected <network>, got <{root.tag}>")
        for el in safe.children(root):
            if el.tag not in TOP_LEVEL:
                raise ConfigUnsupportedError(f"qdriver networks cannot honour <{el.tag}> "
                                             "(they need no bridge, and run without root)")
        name = (root.findtext("name") or "").strip()
        if not NAME_RE.match(name):
            raise XMLError(f"network name '{name}' is not a valid name")
        given = (root.findtext("uuid") or "").strip()
        try:
            uuid = str(uuidlib.UUID(given)) if given else str(uuidlib.uuid4())
        except ValueError as e:
            raise XMLError(f"malformed uuid element '{given}'") from e
        net = cls(name, uuid, _address(root), _forward(root), uuid_given=bool(given))
        _dhcp(root, net)
        _check(net)
        return net

    def to_xml(self) -> str:
        root = safe.new("network")
        safe.sub(root, "name", text=self.name)
        safe.sub(root, "uuid", text=self.uuid)
        if self.forward:
            safe.sub(root, "forward", {"mode": self.forward})
        ip = safe.sub(root, "ip", {"address": str(self.address.ip),
                                   "netmask": str(self.address.netmask)})
        if self.ranges or self.hosts:
            dhcp = safe.sub(ip, "dhcp")
            for start, end in self.ranges:
                safe.sub(dhcp, "range", {"start": str(start), "end": str(end)})
            for host in self.hosts:
                attrs = {"mac": host.mac, "ip": str(host.ip)}
                if host.name:
                    attrs["name"] = host.name
                safe.sub(dhcp, "host", attrs)
        return safe.tostring(root)


def _address(root: safe.Element) -> ipaddress.IPv4Interface:
    ips = root.findall("ip")
    if len(ips) != 1:
        raise ConfigUnsupportedError("a qdriver network needs exactly one <ip>, IPv4")
    ip = ips[0]
    if ip.get("family", "ipv4") != "ipv4":
        raise ConfigUnsupportedError("qdriver networks run IPv4 only")
    for el in safe.children(ip):
        if el.tag != "dhcp":
            raise ConfigUnsupportedError(f"qdriver networks cannot honour <ip><{el.tag}>")
    mask = ip.get("prefix") or ip.get("netmask")
    try:
        address = ipaddress.IPv4Interface(f"{ip.get('address')}/{mask}")
    except ValueError as e:
        raise XMLError(f"invalid <ip address='{ip.get('address')}'> with netmask or "
                       f"prefix '{mask}'") from e
    if address.network.prefixlen > 29:
        raise ConfigUnsupportedError(f"network {address.network} is too small: a qdriver "
                                     "network needs at least a /29")
    return address


def _forward(root: safe.Element) -> str | None:
    el = root.find("forward")
    if el is None:
        return None
    mode = el.get("mode", "nat")
    if mode not in FORWARD_MODES or len(el):
        raise ConfigUnsupportedError(f"qdriver networks cannot honour <forward mode='{mode}'"
                                     f"{'>...' if len(el) else '/>'}: only mode 'nat'")
    return mode


def _dhcp(root: safe.Element, net: NetworkDef) -> None:
    dhcp = root.find("ip/dhcp")
    if dhcp is None:
        return
    for el in safe.children(dhcp):
        if el.tag == "range":
            net.ranges.append((_in(net, el.get("start"), "<range start>"),
                               _in(net, el.get("end"), "<range end>")))
        elif el.tag == "host":
            mac = (el.get("mac") or "").lower()
            if not MAC_RE.match(mac):
                raise XMLError(f"unable to parse mac address '{el.get('mac')}'")
            name = el.get("name")
            if name is not None and not HOSTNAME_RE.match(name):
                raise XMLError(f"invalid DHCP host name '{name}': one DNS label, letters, "
                               "digits and hyphens")
            net.hosts.append(DhcpHost(mac, _in(net, el.get("ip"), "<host ip>"), name))
        else:
            raise ConfigUnsupportedError(f"qdriver networks cannot honour <dhcp><{el.tag}>")


def _in(net: NetworkDef, value: str | None, what: str) -> ipaddress.IPv4Address:
    try:
        addr = ipaddress.IPv4Address(value or "")
    except ValueError as e:
        raise XMLError(f"invalid {what} '{value}'") from e
    if addr not in net.subnet or addr in (net.subnet.network_address,
                                          net.subnet.broadcast_address):
        raise XMLError(f"{what} '{addr}' is not a host address of network {net.subnet}")
    return addr


def _check(net: NetworkDef) -> None:
    """No DHCP address may be the server's own, or the NAT's router or DNS."""
    taken = {net.address.ip: "the network's own address"}
    if net.gateway is not None and net.dns is not None:
        taken |= {net.gateway: "the NAT's router", net.dns: "the NAT's DNS"}
    for start, end in net.ranges:
        if start > end:
            raise XMLError(f"DHCP range {start} - {end} is reversed")
        for addr, what in taken.items():
            if start <= addr <= end:
                raise XMLError(f"DHCP range {start} - {end} includes {addr}, {what}")
    for host in net.hosts:
        if host.ip in taken:
            raise XMLError(f"DHCP host {host.mac} has {host.ip}, {taken[host.ip]}")


__all__ = ["NetworkDef", "DhcpHost", "NAT_GATEWAY"]
