"""Nothing injected: hostile XML values reach QEMU as data, never as options."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

import qdriver
from qdriver.errors import XMLError
from qdriver.launch import cmdline
from qdriver.paths import DomainPaths
from qdriver.xml.domain import DomainDef

from .helpers import GuestImage, domain_xml

HOSTILE = "/x/a,logfile=/x/INJECTED,'\"\n-b=c,,d"
"""Comma (single and doubled), ``=``, quotes, a newline and a leading ``-`` option."""
XML_HOSTILE = (HOSTILE.replace("&", "&amp;").replace("'", "&apos;").replace('"', "&quot;")
               .replace("\n", "&#10;"))
NAME = "n,debug-threads=off,x='\"-y"


@pytest.fixture
def state_dir(tmp_path: Path) -> Path:
    """This module's drivers live under a path with a comma and an ``=``."""
    return tmp_path / "st,ate=x"


def qemu_opts(text: str) -> list[tuple[str, str | None]]:
    """Split a QEMU option string the way QEMU does (``,,`` is a literal comma)."""
    parts, cur, i = [], "", 0
    while i < len(text):
        if text[i] == "," and text[i + 1:i + 2] == ",":
            cur, i = cur + ",", i + 2
        elif text[i] == ",":
            parts.append(cur)
            cur, i = "", i + 1
        else:
            cur, i = cur + text[i], i + 1
    parts.append(cur)
    return [(p.split("=", 1)[0], p.split("=", 1)[1]) if "=" in p else (p, None)
            for p in parts]


def hostile_xml() -> str:
    h = XML_HOSTILE
    return f"""<domain type='qemu'>
  <name>{NAME.replace("'", "&apos;").replace('"', "&quot;")}</name>
  <memory unit='MiB'>64</memory>
  <os><type arch='x86_64' machine='q35'>hvm</type><kernel>{h}k</kernel>
      <initrd>{h}i</initrd><cmdline>{h}c</cmdline></os>
  <devices>
    <disk type='file' device='disk'><driver type='qcow2'/><source file='{h}d'/>
      <target dev='vda' bus='virtio'/></disk>
    <disk type='file' device='disk'><driver type='raw'/><source file='{h}s'/>
      <target dev='sda' bus='sata'/></disk>
    <serial type='file'><source path='{h}ser'/></serial>
    <serial type='unix'><source mode='bind' path='{h}sock'/></serial>
    <channel type='unix'><source mode='bind' path='{h}chan'/>
      <target type='virtio' name='{h}name'/></channel>
    <interface type='user'><mac address='52:54:00:12:34:56'/>
      <portForward proto='tcp' address='127.0.0.1'><range start='2222' to='22'/>
      </portForward></interface>
    <graphics type='vnc' port='5901' listen='127.0.0.1'/>
  </devices>
</domain>"""


@pytest.mark.no_qemu
def test_every_xml_value_stays_one_value(tmp_path: Path) -> None:
    # the state dir itself carries a comma: sockets and logs are escaped too
    paths = DomainPaths.of(tmp_path / "st,ate=x", NAME)
    argv = cmdline.build(DomainDef.parse(hostile_xml()), paths, "tcg")
    h = HOSTILE

    def values(flag: str) -> list[dict[str, str | None]]:
        return [dict(qemu_opts(argv[i + 1])) for i, a in enumerate(argv) if a == flag]

    assert argv[argv.index("-kernel") + 1] == h + "k"  # whole arguments, not option strings
    assert argv[argv.index("-initrd") + 1] == h + "i"
    assert argv[argv.index("-append") + 1] == h + "c"
    assert values("-name") == [{"guest": NAME, "debug-threads": "on"}]
    chardevs = {c["id"]: c for c in values("-chardev")}
    assert chardevs["charserial0"] == {"file": None, "id": "charserial0", "path": h + "ser"}
    assert chardevs["charserial1"] == {"socket": None, "id": "charserial1", "path": h + "sock",
                                       "server": "on", "wait": "off"}
    assert chardevs["charchannel0"]["path"] == h + "chan"
    assert set(chardevs["charchannel0"]) == {"socket", "id", "path", "server", "wait"}
    assert chardevs["qmp"]["path"] == str(paths.qmp)
    port = next(d for d in values("-device") if "virtserialport" in d)
    assert port["name"] == h + "name"
    blockdevs = [json.loads(v) for v in (argv[i + 1] for i, a in enumerate(argv)
                                          if a == "-blockdev")]
    assert {b["filename"] for b in blockdevs if b["driver"] == "file"} == {h + "d", h + "s"}
    assert values("-netdev") == [{"user": None, "id": "hostnet0",
                                  "hostfwd": "tcp:127.0.0.1:2222-:22"}]


@pytest.mark.parametrize("fragment, element, value", [
    ("<vcpu>two</vcpu>", "<vcpu>", "two"),
    ("<os><type machine='q35,accel=kvm'>hvm</type></os>", "machine type", "q35,accel=kvm"),
    ("<os><type arch='../../tmp/x'>hvm</type></os>", "architecture", "../../tmp/x"),
    ("<cpu mode='custom'><model>max,pmu=on</model></cpu>", "CPU model", "max,pmu=on"),
    ("<devices><interface type='user'><mac address='52:54:00:00:00:01,x=y'/></interface>"
     "</devices>", "mac address", "52:54:00:00:00:01,x=y"),
    ("<devices><interface type='user'><portForward proto='tcp,x'><range start='1'/>"
     "</portForward></interface></devices>", "proto", "tcp,x"),
    ("<devices><interface type='user'><portForward proto='tcp' address='1.2.3.4,x'>"
     "<range start='1'/></portForward></interface></devices>", "address", "1.2.3.4,x"),
    ("<devices><interface type='user'><portForward proto='tcp'><range start='22a'/>"
     "</portForward></interface></devices>", "range start", "22a"),
    ("<devices><graphics type='vnc' port='59x1'/></devices>", "graphics port", "59x1"),
    ("<devices><disk type='file'><source file='/d'/><target dev='vda,x=y'/></disk>"
     "</devices>", "disk name", "vda,x=y"),
])
@pytest.mark.no_qemu
def test_structured_values_are_checked(fragment: str, element: str, value: str) -> None:
    xml = f"<domain type='qemu'><name>v</name><memory>65536</memory>{fragment}</domain>"
    with pytest.raises(XMLError) as err:
        DomainDef.parse(xml)
    assert value in str(err.value) and element in str(err.value)


async def test_serial_path_cannot_add_a_logfile(
        driver: qdriver.Driver, guest_image: GuestImage, tmp_path: Path) -> None:
    """The reported injection, end to end on a real QEMU."""
    target = tmp_path / "ser,logfile=INJECTED"
    xml = domain_xml(guest_image, "inj", None, serial="file").replace(
        "<serial type='file'/>", f"<serial type='file'><source path='{target}'/></serial>")
    dom = await driver.define_xml(xml)
    await dom.start(paused=True)
    try:
        assert target.exists()
        assert not (tmp_path / "INJECTED").exists()
        assert not Path("INJECTED").exists()
    finally:
        await dom.destroy()


async def test_state_dir_and_name_with_commas_run(driver: qdriver.Driver,
                                                  guest_image: GuestImage) -> None:
    assert "," in str(driver.state_dir)
    dom = await driver.define_xml(domain_xml(guest_image, "c,omma=x", None))
    await dom.start(paused=True)
    try:
        assert dom.state is qdriver.DomainState.PAUSED
        assert dom.paths.pidfile.exists() and dom.paths.console_log.exists()
    finally:
        await dom.destroy()
