"""qdriver networks: libvirt's network XML run as user processes (a vde2 switch,
dnsmasq, slirpvde).  Three real guests, started by an unprivileged user, get
their addresses by DHCP, ping each other and reach the host through the NAT;
net-destroy leaves no process."""
from __future__ import annotations

import ipaddress
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import qdriver
from qdriver import process
from qdriver.console import SerialLink
from qdriver.errors import ConfigUnsupportedError, XMLError
from qdriver.paths import socket_root
from qdriver.testing import faults
from qdriver.xml.network import NetworkDef

from .helpers import GuestImage, qemu_pids
from .helpers.guest import domain_xml

LAB = """<network><name>lab</name><forward mode='nat'/>
  <ip address='192.168.120.1' netmask='255.255.255.0'><dhcp>
    <range start='192.168.120.100' end='192.168.120.199'/>
    <host mac='52:54:00:12:00:0a' ip='192.168.120.10'/>
    <host mac='52:54:00:12:00:0b' ip='192.168.120.11' name='g1'/>
  </dhcp></ip></network>"""
MACS = ("52:54:00:12:00:0a", "52:54:00:12:00:0b", "52:54:00:12:00:0c")
NOBODY = 65534


@pytest.mark.no_qemu
def test_a_network_parses_and_prints_as_libvirt_writes_it() -> None:
    net = NetworkDef.parse(LAB)
    assert (net.name, net.forward, str(net.address)) == ("lab", "nat", "192.168.120.1/24")
    assert (str(net.gateway), str(net.dns)) == ("192.168.120.2", "192.168.120.3")
    assert [str(h.ip) for h in net.hosts] == ["192.168.120.10", "192.168.120.11"]
    again = NetworkDef.parse(net.to_xml())
    assert again == net
    isolated = NetworkDef.parse("<network><name>iso</name><ip address='10.9.0.1' "
                                "prefix='24'><dhcp><range start='10.9.0.2' end='10.9.0.9'/>"
                                "</dhcp></ip></network>")
    assert isolated.forward is None and isolated.gateway is None
    assert isolated.ranges == [(ipaddress.IPv4Address("10.9.0.2"),
                                ipaddress.IPv4Address("10.9.0.9"))]


def lab(ip: str = "<ip address='192.168.120.1' prefix='24'/>", extra: str = "") -> str:
    return f"<network><name>lab</name>{extra}{ip}</network>"


@pytest.mark.no_qemu
@pytest.mark.parametrize("xml, error, message", [
    (lab(extra="<bridge name='virbr1'/>"), ConfigUnsupportedError, "<bridge>"),
    (lab(extra="<forward mode='route'/>"), ConfigUnsupportedError, "mode='route'"),
    (lab(extra="<forward mode='nat'><nat><port start='1' end='2'/></nat></forward>"),
     ConfigUnsupportedError, "mode='nat'>"),
    (lab(extra="<dns><host ip='1.2.3.4'/></dns>"), ConfigUnsupportedError, "<dns>"),
    (lab(""), ConfigUnsupportedError, "exactly one <ip>"),
    (lab("<ip family='ipv6' address='fd00::1' prefix='64'/>"), ConfigUnsupportedError,
     "IPv4 only"),
    (lab("<ip address='192.168.120.1' prefix='30'/>"), ConfigUnsupportedError, "too small"),
    (lab("<ip address='192.168.120.1' prefix='24'><tftp root='/'/></ip>"),
     ConfigUnsupportedError, "<ip><tftp>"),
    (lab("<ip address='192.168.120.1' prefix='24'><dhcp><bootp file='x'/></dhcp></ip>"),
     ConfigUnsupportedError, "<dhcp><bootp>"),
    (lab("<ip address='192.168.120.1' prefix='33'/>"), XMLError, "invalid <ip"),
    (lab("<ip address='192.168.120.1' prefix='24'><dhcp><range start='10.0.0.2' "
         "end='10.0.0.9'/></dhcp></ip>"), XMLError, "not a host address"),
    (lab("<ip address='192.168.120.1' prefix='24'><dhcp><range start='192.168.120.9' "
         "end='192.168.120.2'/></dhcp></ip>"), XMLError, "reversed"),
    (lab("<ip address='192.168.120.1' prefix='24'><dhcp><range start='192.168.120.1' "
         "end='192.168.120.9'/></dhcp></ip>"), XMLError, "the network's own address"),
    (lab("<ip address='192.168.120.1' prefix='24'><dhcp><range start='192.168.120.2' "
         "end='192.168.120.9'/></dhcp></ip>", "<forward mode='nat'/>"), XMLError,
     "the NAT's router"),
    (lab("<ip address='192.168.120.1' prefix='24'><dhcp><host mac='52:54:00:00:00:01' "
         "ip='192.168.120.3'/></dhcp></ip>", "<forward/>"), XMLError, "the NAT's DNS"),
    (lab("<ip address='192.168.120.1' prefix='24'><dhcp><host mac='nope' "
         "ip='192.168.120.9'/></dhcp></ip>"), XMLError, "mac address 'nope'"),
    (lab("<ip address='192.168.120.1' prefix='24'><dhcp><host mac='52:54:00:00:00:01' "
         "ip='192.168.120.9' name='x,set:evil'/></dhcp></ip>"), XMLError,
     "invalid DHCP host name 'x,set:evil'"),
    ("<network><name>a/b</name><ip address='192.168.120.1' prefix='24'/></network>",
     XMLError, "not a valid name"),
    ("<network><name>n</name><uuid>nope</uuid><ip address='192.168.120.1' prefix='24'/>"
     "</network>", XMLError, "malformed uuid element 'nope'"),
])
def test_what_a_network_cannot_be_is_refused_by_name(xml: str, error: type[Exception],
                                                      message: str) -> None:
    with pytest.raises(error, match=re.escape(message)):
        NetworkDef.parse(xml)


class Nobody:
    """qdriver's CLI run by an unprivileged user, on a state dir of its own."""

    def __init__(self, work: Path) -> None:
        self.work = work
        self.state = work / "state"
        self.links: dict[str, SerialLink] = {}

    def run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        env = {k: v for k, v in os.environ.items() if k != "XDG_RUNTIME_DIR"}
        env["HOME"] = str(self.work)
        r = subprocess.run(["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}",
                            "--clear-groups", "--", sys.executable, "-m", "qdriver",
                            "--state-dir", str(self.state), *args],
                           capture_output=True, text=True, env=env, timeout=120)
        assert r.returncode == 0 or not check, (args, r.stdout, r.stderr)
        return r

    def console_log(self, dom: str) -> str:
        try:
            return (self.state / "domains" / dom / "console.log").read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def wait_console(self, dom: str, pattern: str, timeout: float = 90) -> re.Match[str]:
        deadline = time.monotonic() + timeout
        while not (found := re.search(pattern, self.console_log(dom))):
            assert time.monotonic() < deadline, (dom, pattern, self.console_log(dom)[-800:])
            time.sleep(0.1)
        return found

    def type(self, dom: str, line: str) -> None:
        """Write to the guest's serial console (held open: QEMU reads a pty only
        while its other end is open)."""
        if dom not in self.links:
            run = json.loads((self.state / "domains" / dom / "run.json").read_text())
            self.links[dom] = SerialLink(run["console_pty"])
        self.links[dom].write(line.encode())

    def close(self) -> None:
        for link in self.links.values():
            link.close()
        self.links.clear()


@pytest.fixture
def nobody() -> Iterator[Nobody]:
    work = Path(tempfile.mkdtemp(prefix="qdriver-net-", dir="/tmp"))
    os.chown(work, NOBODY, NOBODY)
    user = Nobody(work)
    try:
        yield user
    finally:
        user.close()
        for dom in ("g0", "g1", "g2"):
            user.run("destroy", dom, check=False)
        user.run("net-destroy", "lab", check=False)
        for pid in qemu_pids(user.state):
            os.kill(pid, 9)
        shutil.rmtree(work, ignore_errors=True)
        shutil.rmtree(f"/tmp/qdriver-{NOBODY}", ignore_errors=True)


def network_processes(marker: str) -> list[int]:
    """Live processes naming ``marker``, but QEMUs (their guests') and supervisors."""
    return [pid for pid, cmdline in process.processes()
            if marker.encode() in cmdline and process.start_time(pid) is not None
            and b"qemu-system" not in cmdline.split(b"\0", 1)[0]
            and not cmdline.startswith(b"/bin/sh\0-c\0exitfile")]


def test_three_guests_on_one_network_started_by_an_unprivileged_user(
        nobody: Nobody, guest_image: GuestImage) -> None:
    (nobody.work / "lab.xml").write_text(LAB)
    os.chown(nobody.work / "lab.xml", NOBODY, NOBODY)
    assert "Network lab defined" in nobody.run("net-define", str(nobody.work / "lab.xml")).stdout
    assert "inactive" in nobody.run("net-list", "--all").stdout
    nobody.run("net-start", "lab")
    assert re.search(r"lab\s+active", nobody.run("net-list").stdout)

    host = socket.socket()
    host.bind(("127.0.0.1", 0))
    host.listen()
    port = host.getsockname()[1]
    heard: list[bytes] = []
    threading.Thread(target=lambda: heard.append(host.accept()[0].recv(64)), daemon=True).start()
    for i, mac in enumerate(MACS):
        disk = nobody.work / f"g{i}.qcow2"
        shutil.copyfile(guest_image.disk, disk)
        os.chown(disk, NOBODY, NOBODY)
        nic = (f"<interface type='network'><source network='lab'/><mac address='{mac}'/>"
               "<model type='virtio'/></interface>")
        cmdline = "qd.dhcp=1 qd.shell=1" + (f" qd.hello={port}" if i == 0 else "")
        xml = nobody.work / f"g{i}.xml"
        xml.write_text(domain_xml(guest_image, f"g{i}", disk, cmdline=cmdline,
                                  extra_devices=nic))
        os.chown(xml, NOBODY, NOBODY)
        nobody.run("define", str(xml))
        nobody.run("start", f"g{i}")

    addresses = [nobody.wait_console(f"g{i}", r"GUEST-IP (\S+)").group(1) for i in range(3)]
    assert addresses[:2] == ["192.168.120.10", "192.168.120.11"]  # the fixed hosts
    assert ipaddress.IPv4Address("192.168.120.100") <= ipaddress.IPv4Address(addresses[2]) \
        <= ipaddress.IPv4Address("192.168.120.199")  # from the range
    leases = nobody.run("net-dhcp-leases", "lab").stdout
    for i, (mac, addr) in enumerate(zip(MACS, addresses)):
        assert f"{addr}/24" in nobody.run("domifaddr", f"g{i}").stdout
        assert re.search(rf"{mac}\s+ipv4\s+{re.escape(addr)}/24", leases), leases

    for i in range(3):  # each pings the other two
        for j, addr in enumerate(addresses):
            if i != j:
                nobody.type(f"g{i}", f"ping -c 1 -W 3 {addr} && echo PING-OK-$((10*{j}+1))\n")
                nobody.wait_console(f"g{i}", rf"PING-OK-{10 * j + 1}\b", timeout=30)
    nobody.wait_console("g0", r"GUEST-HELLO-SENT 192\.168\.120\.2")  # through the NAT
    assert heard == [b"GUEST-HELLO\n"]

    runtime = json.loads((nobody.state / "networks" / "lab" / "run.json").read_text())
    assert set(runtime["procs"]) == {"switch", "dhcp", "nat"}
    switch = next(Path(f"/tmp/qdriver-{NOBODY}").glob("*/net-*"))  # named by every one
    users = {os.stat(f"/proc/{pid}").st_uid for pid in network_processes(str(switch))}
    assert users == {NOBODY}, "a network process runs as another user"
    nobody.run("net-destroy", "lab")  # while the guests run
    assert network_processes(str(switch)) == [], "a process of the network survived"
    assert "inactive" in nobody.run("net-list", "--all").stdout
    assert "not active" in nobody.run("net-destroy", "lab", check=False).stderr
    nobody.run("destroy", "g0")
    refused = nobody.run("start", "g0", check=False)  # its network is down
    assert refused.returncode != 0 and "network 'lab' is not active" in refused.stderr
    for i in range(1, 3):
        nobody.run("destroy", f"g{i}")
    assert qemu_pids(nobody.state) == []
    nobody.run("net-undefine", "lab")
    assert nobody.run("net-list", "--all", "--name").stdout.strip() == ""


@pytest.mark.no_qemu
def test_a_network_start_killed_half_way_is_not_active_and_leaves_nothing(
        tmp_path: Path) -> None:
    """Killed once its switch runs: the network is not active, the next start
    starts it whole, and destroy leaves no process."""
    state = tmp_path / "state"
    (tmp_path / "lab.xml").write_text(LAB)

    def cli(*args: str, fault: str | None = None) -> subprocess.CompletedProcess[str]:
        env = {k: v for k, v in os.environ.items() if k != faults.ENV}
        if fault:
            env[faults.ENV] = fault
        return subprocess.run([sys.executable, "-m", "qdriver", "--state-dir", str(state),
                               *args], capture_output=True, text=True, env=env, timeout=60)
    assert cli("net-define", str(tmp_path / "lab.xml")).returncode == 0
    try:
        assert cli("net-start", "lab", fault="net-start:switch").returncode == -9
        switch = str(next(socket_root(state).glob("net-*")))
        assert network_processes(switch), "the switch it started"
        assert re.search(r"lab\s+inactive", cli("net-list", "--all").stdout)
        started = cli("net-start", "lab")
        assert started.returncode == 0, started.stderr
        assert re.search(r"lab\s+active", cli("net-list").stdout)
    finally:
        cli("net-destroy", "lab")
    assert network_processes(switch) == []


@pytest.mark.no_qemu
async def test_defining_networks_keeps_names_and_uuids_apart(tmp_path: Path) -> None:
    drv = qdriver.Driver(tmp_path / "state")
    net = drv.define_network(LAB)
    uuid = net.uuid
    assert drv.define_network(LAB.replace("<forward mode='nat'/>", "")).uuid == uuid
    assert drv.lookup_network("lab").definition.forward is None  # redefined, same uuid
    with pytest.raises(qdriver.OperationInvalidError, match="'lab' already has uuid"):
        drv.define_network(LAB.replace("<name>lab</name>",
                                       f"<name>other</name><uuid>{uuid}</uuid>"))
    with pytest.raises(qdriver.OperationInvalidError, match="already defined with uuid"):
        drv.define_network(LAB.replace("<name>lab</name>", "<name>lab</name><uuid>"
                                       "11111111-2222-3333-4444-555555555555</uuid>"))
    assert [n.name for n in drv.list_networks()] == ["lab"]
    with pytest.raises(qdriver.NoNetworkError, match="no network with matching name 'x'"):
        drv.lookup_network("x")
    with pytest.raises(qdriver.OperationInvalidError, match="network 'lab' is not active"):
        await net.destroy()
    assert net.leases() == [] and not net.is_active
    await net.undefine()
    assert drv.list_networks() == [] and not (tmp_path / "state" / "networks" / "lab").exists()
    with pytest.raises(qdriver.NoNetworkError):
        await net.start()
