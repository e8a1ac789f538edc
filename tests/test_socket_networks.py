"""Guests that talk to each other over QEMU sockets: ``<interface type='server'|
'client'|'udp'|'mcast'>`` as libvirt writes them; and a guest's way out
through passt (``<interface type='user'><backend type='passt'/>``).

Rows for the parser and the command line (pure), then real guests: a server
and a client, a udp pair, and a multicast group (in a network namespace of
the test's own, whose loopback carries multicast), each guest pinging the
other by address.
"""
from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest

import qdriver
from qdriver.errors import ConfigUnsupportedError, XMLError
from qdriver.launch import cmdline
from qdriver.paths import DomainPaths
from qdriver.xml.domain import DomainDef, Endpoint

from .helpers import GuestImage, run_cli, wait_console
from .helpers.guest import domain_xml
from .helpers.netns import multicast_namespace

BASE = """<domain type='qemu'><name>n</name><memory unit='MiB'>128</memory>
  <os><type arch='x86_64' machine='q35'>hvm</type><kernel>/k</kernel></os>
  <devices>{iface}</devices></domain>"""


def parse(iface: str) -> DomainDef:
    return DomainDef.parse(BASE.format(iface=iface))


@pytest.mark.no_qemu
@pytest.mark.parametrize("iface, netdev", [
    ("<interface type='server'><source address='127.0.0.1' port='5558'/></interface>",
     "socket,id=hostnet0,listen=127.0.0.1:5558"),
    ("<interface type='server'><source port='5558'/></interface>",
     "socket,id=hostnet0,listen=127.0.0.1:5558"),  # loopback unless an address is given
    ("<interface type='client'><source address='127.0.0.1' port='5558'/></interface>",
     "socket,id=hostnet0,connect=127.0.0.1:5558"),
    ("<interface type='mcast'><source address='230.0.0.1' port='5558'/></interface>",
     "socket,id=hostnet0,mcast=230.0.0.1:5558"),
    ("<interface type='udp'><source address='127.0.0.1' port='11112'>"
     "<local address='127.0.0.1' port='11111'/></source></interface>",
     "socket,id=hostnet0,udp=127.0.0.1:11112,localaddr=127.0.0.1:11111"),
    ("<interface type='user'/>", "user,id=hostnet0"),
    ("<interface type='user'><backend type='passt'/></interface>",
     "stream,id=hostnet0,server=off,addr.type=unix,addr.path=/run/h/sock"),
])
def test_socket_interfaces_are_qemu_socket_netdevs(tmp_path: Path, iface: str,
                                                   netdev: str) -> None:
    d = parse(iface)
    argv = cmdline.build(d, DomainPaths.of(tmp_path, "n"), "tcg",
                         helper_sockets={0: Path("/run/h/sock")})
    netdevs = [argv[i + 1] for i, a in enumerate(argv) if a == "-netdev"]
    assert netdevs == [netdev]
    assert any(a.startswith("rtl8139,netdev=hostnet0,") for a in argv)


@pytest.mark.no_qemu
def test_a_socket_interface_keeps_its_endpoints() -> None:
    (iface,) = parse("<interface type='udp'><source address='127.0.0.1' port='2'><local "
                     "address='127.0.0.1' port='1'/></source></interface>").interfaces
    assert (iface.type, iface.source, iface.local) == (
        "udp", Endpoint("127.0.0.1", 2), Endpoint("127.0.0.1", 1))


@pytest.mark.no_qemu
@pytest.mark.parametrize("iface, error, message", [
    ("<interface type='client'/>", XMLError, "needs <source address= port=>"),
    ("<interface type='client'><source port='1'/></interface>", XMLError,
     "<interface type='client'><source> needs an address"),
    ("<interface type='mcast'><source address='10.0.0.1' port='1'/></interface>", XMLError,
     "'10.0.0.1' is not a multicast address"),
    ("<interface type='client'><source address='::1' port='1'/></interface>",
     ConfigUnsupportedError, "IPv4 addresses only, not '::1'"),
    ("<interface type='client'><source address='x' port='1'/></interface>", XMLError,
     "invalid address 'x'"),
    ("<interface type='client'><source address='127.0.0.1' port='0'/></interface>", XMLError,
     "port"),
    ("<interface type='udp'><source address='127.0.0.1' port='1'/></interface>", XMLError,
     "needs <source><local address= port=>"),
    ("<interface type='network'/>", XMLError, "needs <source network=...>"),
    ("<interface type='network'><source network='../../etc'/></interface>", XMLError,
     "network name '../../etc' is not a valid name"),
])
def test_bad_socket_interfaces_are_named(iface: str, error: type[Exception],
                                         message: str) -> None:
    with pytest.raises(error, match=message):
        parse(iface)


UNRUN_TYPES = ("bridge", "direct", "ethernet", "hostdev", "vhostuser", "vdpa", "null", "vds")
"""libvirt's interface types (its domain schema) qdriver does not run (yet)."""


@pytest.mark.no_qemu
@pytest.mark.parametrize("iface, named", [
    *((f"<interface type='{t}'><source/></interface>", f"<interface type='{t}'>")
      for t in UNRUN_TYPES),
    ("<interface type='user'><backend type='vhost'/></interface>",
     "<interface type='user'><backend type='vhost'>"),
    ("<interface type='client'><source address='127.0.0.1' port='1'/><backend type='passt'/>"
     "</interface>", "<interface type='client'><backend type='passt'>"),
    ("<interface type='server'><source port='1'/><portForward proto='tcp'><range "
     "start='2222' to='22'/></portForward></interface>",
     "<interface type='server'><portForward>"),
    ("<interface type='network'><source network='lab'/><backend type='passt'/></interface>",
     "<interface type='network'><backend type='passt'>"),
])
async def test_interfaces_qdriver_cannot_run_are_refused_at_define(
        driver: qdriver.Driver, iface: str, named: str) -> None:
    with pytest.raises(ConfigUnsupportedError, match=named):
        await driver.define_xml(BASE.format(iface=iface))
    assert driver.list_domains() == []


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def pinging_pair(driver: qdriver.Driver, image: GuestImage, a_iface: str,
                       b_iface: str, netns: str | None = None) -> None:
    """Two guests on the given interfaces, 10.9.0.1 and .2, each pinging the other
    (started by the CLI inside ``netns`` if given)."""
    doms = []
    for name, me, peer, iface in (("a", 1, 2, a_iface), ("b", 2, 1, b_iface)):
        xml = domain_xml(image, name, None, cmdline=f"qd.disk=none qd.quiet=1 "
                         f"qd.ip=10.9.0.{me}/24 qd.ping=10.9.0.{peer}",
                         extra_devices=iface.replace("</interface>",
                                                     "<model type='virtio'/></interface>"))
        doms.append(await driver.define_xml(xml))
    for dom in doms:  # a server before its client
        if netns is None:
            await dom.start()
            continue
        subprocess.run(["ip", "netns", "exec", netns, sys.executable, "-m", "qdriver",
                        "--state-dir", str(driver.state_dir), "start", dom.name],
                       check=True, capture_output=True, timeout=120)
    async with anyio.create_task_group() as tg:
        for dom, peer in zip(doms, (2, 1)):
            tg.start_soon(wait_console, dom, f"GUEST-PING-OK 10.9.0.{peer}", 120)


async def test_a_server_and_a_client_ping_each_other(driver: qdriver.Driver,
                                                     guest_image: GuestImage) -> None:
    port = free_port()
    await pinging_pair(
        driver, guest_image,
        f"<interface type='server'><source address='127.0.0.1' port='{port}'/></interface>",
        f"<interface type='client'><source address='127.0.0.1' port='{port}'/></interface>")


async def test_a_udp_pair_pings_each_other(driver: qdriver.Driver,
                                           guest_image: GuestImage) -> None:
    pa, pb = free_port(), free_port()

    def udp(me: int, peer: int) -> str:
        return (f"<interface type='udp'><source address='127.0.0.1' port='{peer}'>"
                f"<local address='127.0.0.1' port='{me}'/></source></interface>")
    await pinging_pair(driver, guest_image, udp(pa, pb), udp(pb, pa))


@pytest.fixture
def multicast_netns() -> Iterator[str]:
    """A network namespace whose loopback is up and carries multicast."""
    with multicast_namespace("qdt-mcast") as name:
        yield name


async def test_a_multicast_group_carries_traffic_between_guests(
        driver: qdriver.Driver, guest_image: GuestImage, multicast_netns: str) -> None:
    group = f"<interface type='mcast'><source address='230.0.0.1' port='{free_port()}'/>" \
            "</interface>"
    try:
        await pinging_pair(driver, guest_image, group, group, netns=multicast_netns)
    finally:
        for dom in driver.list_domains():
            if dom.is_active:
                await dom.destroy()


def passt_helpers() -> list[int]:
    out = subprocess.run(["pgrep", "-f", "passt.*--one-off"], capture_output=True, text=True)
    return [int(p) for p in out.stdout.split()]


@pytest.mark.skipif(shutil.which("passt") is None, reason="needs Debian's passt")
async def test_passt_gives_a_guest_a_way_out_and_goes_with_its_qemu(
        driver: qdriver.Driver, guest_image: GuestImage) -> None:
    """The guest gets an address from passt's DHCP and reaches a TCP port on the host
    through its gateway; passt runs while QEMU does, and no passt is left after."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    server.setblocking(False)
    port = server.getsockname()[1]
    before = set(passt_helpers())
    xml = domain_xml(guest_image, "out", None,
                     cmdline=f"qd.disk=none qd.quiet=1 qd.dhcp=1 qd.hello={port}",
                     extra_devices="<interface type='user'><backend type='passt'/>"
                                   "<model type='virtio'/></interface>")
    dom = await driver.define_xml(xml)
    try:
        await dom.start()
        assert set(passt_helpers()) - before, "no passt runs beside the guest's QEMU"
        await wait_console(dom, "GUEST-IP", 120)
        received = b""
        with anyio.fail_after(60):
            while b"GUEST-HELLO" not in received:
                try:
                    conn, _ = server.accept()
                except BlockingIOError:
                    await anyio.sleep(0.05)
                    continue
                with conn:
                    conn.settimeout(5)
                    received += conn.recv(100)
        await wait_console(dom, "GUEST-HELLO-SENT")
    finally:
        server.close()
        if dom.is_active:
            await dom.destroy()
    assert set(passt_helpers()) - before == set(), "passt outlived the guest's QEMU"


@pytest.mark.skipif(shutil.which("passt") is None, reason="needs Debian's passt")
async def test_a_start_killed_after_passt_began_leaves_no_passt(
        driver: qdriver.Driver, guest_image: GuestImage) -> None:
    """qdriver killed (SIGKILL) right after spawning QEMU: the next command stops that
    QEMU and the passt started before it, and removes passt's socket directory."""
    from qdriver.testing.faults import ENV
    before = set(passt_helpers())
    xml = domain_xml(guest_image, "killed", None, cmdline="qd.disk=none qd.quiet=1",
                     extra_devices="<interface type='user'><backend type='passt'/>"
                                   "<model type='virtio'/></interface>")
    dom = await driver.define_xml(xml)
    killed = subprocess.run([sys.executable, "-m", "qdriver", "--state-dir",
                             str(driver.state_dir), "start", "killed"],
                            env={**os.environ, ENV: "launch:spawned"}, capture_output=True,
                            timeout=120)
    assert killed.returncode == -9, killed.stderr
    assert set(passt_helpers()) - before, "passt was not started before QEMU"
    await dom.recover()
    assert not dom.is_active
    assert set(passt_helpers()) - before == set(), "passt outlived the killed start"
    assert list(dom.paths.dir.glob("helper-*")) == []


AGENT = ("<channel type='unix'><target type='virtio' name='org.qemu.guest_agent.0'/>"
         "</channel>")


async def test_domifaddr_asks_the_guest_agent(driver: qdriver.Driver, guest_image: GuestImage,
                                              tmp_path: Path, state_dir: Path) -> None:
    """``domifaddr --source agent`` lists what the guest says of its interfaces; the
    default source, the leases of qdriver networks, has none for a socket or user
    interface (as libvirt answers for interfaces on no network)."""
    disk = tmp_path / "ifa.qcow2"
    shutil.copyfile(guest_image.disk, disk)
    dom = await driver.define_xml(domain_xml(
        guest_image, "ifa", disk, cmdline="qd.quiet=1 qd.ip=10.9.0.7/24",
        extra_devices="<interface type='user'><model type='virtio'/></interface>" + AGENT))
    await dom.start()
    await wait_console(dom, "GUEST-IP 10.9.0.7", 120)
    mac = dom.definition.interfaces[0].mac
    ifaces = {i.name: i for i in await dom.interface_addresses("agent")}
    assert ifaces["eth0"].hwaddr == mac
    assert [(a.type, a.addr, a.prefix) for a in ifaces["eth0"].addrs] == [("ipv4", "10.9.0.7",
                                                                          24)]
    table = run_cli(state_dir, "domifaddr", "ifa", "--source", "agent").stdout.decode()
    assert f" eth0   {mac}   ipv4       10.9.0.7/24" in table, table
    assert run_cli(state_dir, "domifaddr", "ifa").stdout.decode().count("\n") == 2  # header
    with pytest.raises(qdriver.ArgumentUnsupportedError, match="ARP table"):
        await dom.interface_addresses("arp")
    said = run_cli(state_dir, "qemu-agent-command", "ifa",
                   '{"execute": "guest-network-get-interfaces"}').stdout
    assert any(i.get("name") == "eth0" for i in json.loads(said)["return"]), said
    with pytest.raises(qdriver.OperationFailedError, match="'guest-halt' failed"):
        await dom.agent_command({"execute": "guest-halt"})  # not one the test agent knows
    for bad in ("not json", '{"run": "guest-ping"}', '{"execute": "x", "arguments": 1}'):
        with pytest.raises(qdriver.InvalidArgError, match="guest agent command"):
            await dom.agent_command(bad)
