"""libvirt's device layout: qdriver places devices where Debian's libvirt does.

libvirt is the oracle: the same XML is defined in both, and each device's
address, model and root-port numbering must come out the same.
"""
from __future__ import annotations

import functools
import json
import shlex
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import anyio
import pytest

import qdriver
import qdriver.blocking
from qdriver.caps import qemucaps
from qdriver.driver import pin_machine
from qdriver.errors import ConfigUnsupportedError, XMLError
from qdriver.launch import cmdline
from qdriver.memory.header import read_header
from qdriver.paths import DomainPaths
from qdriver.xml import layout as qlayout
from qdriver.xml.address import PciAddress
from qdriver.xml.domain import DomainDef

from .helpers import GuestImage, disk_counter, domain_xml, run_cli
from .helpers.libvirt_oracle import (
    LIBVIRT_QEMU,
    Libvirt,
    LibvirtError,
    device_places,
    layout,
    needs_libvirt,
    pci_tree,
)

pytestmark = pytest.mark.system_qemu  # every domain here names libvirt's QEMU


def disk(target: str, bus: str = "virtio", device: str = "disk") -> str:
    return (f"<disk type='file' device='{device}'><driver name='qemu' type='qcow2'/>"
            f"<source file='/nonexistent/{target}.qcow2'/><target dev='{target}' bus='{bus}'/>"
            "</disk>")


NET = "<interface type='user'><model type='{}'/></interface>"
AGENT = "<channel type='unix'><target type='virtio' name='org.qemu.guest_agent.0'/></channel>"
RNG = "<rng model='virtio'><backend model='random'>/dev/urandom</backend></rng>"
NO_BALLOON, NO_USB = "<memballoon model='none'/>", "<controller type='usb' model='none'/>"


def pci(model: str, index: int, inner: str = "") -> str:
    return f"<controller type='pci' index='{index}' model='{model}'>{inner}</controller>"


def at(bus: int, slot: int = 0) -> str:
    return f"<address type='pci' domain='0x0000' bus='{bus:#x}' slot='{slot:#x}' function='0x0'/>"


TIMERS = ("<clock offset='utc'><timer name='rtc' tickpolicy='catchup' track='guest'/>"
          "<timer name='pit' tickpolicy='delay'/><timer name='hpet' present='no'/>"
          "<timer name='kvmclock' present='no'/></clock>")
CPU = ("<cpu mode='custom' match='exact' check='none'><model fallback='allow'>qemu64</model>"
       "<feature policy='require' name='sse4.2'/><feature policy='disable' name='svm'/>"
       "<feature policy='optional' name='popcnt'/></cpu>")
SWITCH = (pci("pcie-root-port", 1) + pci("pcie-switch-upstream-port", 2)
          + pci("pcie-switch-downstream-port", 3) + pci("pcie-switch-downstream-port", 4))
DEVICES: dict[str, tuple[str, str, str]] = {
    "q35-typical": ("q35", disk("vda") + NET.format("virtio") + "<serial type='pty'/>" + AGENT
                    + RNG, ""),
    "q35-many-disks": ("q35", "".join(disk(f"vd{c}") for c in "abcdefghij") + NO_BALLOON, ""),
    "q35-conventional-pci": ("q35", disk("vda") + "<interface type='user'/>"
                             + NET.format("e1000") + disk("sdc", "scsi", "cdrom")
                             + disk("sdb", "sata", "cdrom") + "<graphics type='vnc'/>", ""),
    "q35-video-usb-scsi": ("q35", disk("vda") + disk("vdb") + "<video><model type='vga'/>"
                           "</video><input type='tablet' bus='usb'/><controller type='scsi' "
                           "model='virtio-scsi'/>" + disk("sda", "scsi") + NO_BALLOON, ""),
    "q35-no-usb-virtio-video": ("q35", disk("vda") + NET.format("e1000e")
                                + "<video><model type='virtio'/></video>" + NO_USB, ""),
    "pc-typical": ("pc", disk("vda") + NET.format("virtio") + AGENT + RNG
                   + disk("hdc", "ide", "cdrom"), ""),
    "pc-sata-video": ("pc", disk("vda") + disk("sda", "sata") + "<video><model type='vga'/>"
                      "</video>" + NET.format("rtl8139"), ""),
    # no machine: libvirt's default is pc (i440fx), not q35
    "no-machine": ("", disk("vda") + NET.format("virtio") + "<serial type='pty'/>", ""),
    # a USB controller without a model: piix3-uhci, on q35 behind a pcie-to-pci-bridge
    "q35-usb-no-model": ("q35", "<controller type='usb'/>", ""),
    "pc-usb-no-model": ("pc", "<controller type='usb'/><video><model type='virtio'/></video>",
                        ""),
    # libvirt's spare root port: only where it added root ports for devices
    "q35-no-endpoints": ("q35", NO_USB + NO_BALLOON, ""),
    "q35-endpoint-on-pcie0": ("q35", NO_USB + "<memballoon model='virtio'>" + at(0, 5)
                              + "</memballoon>", ""),
    "q35-own-root-port": ("q35", NO_USB + pci("pcie-root-port", 1), ""),
    "q35-own-root-port-full": ("q35", NO_USB + pci("pcie-root-port", 1) + RNG, ""),
    "q35-only-conventional": ("q35", NO_USB + NO_BALLOON + "<interface type='user'/>", ""),
    "q35-usb-only": ("q35", NO_BALLOON, ""),
    "q35-console-only": ("q35", "<console type='pty'/>" + NO_BALLOON, ""),
    "q35-serial-console": ("q35", "<serial type='pty'/><console type='pty'/>", ""),
    "q35-timers-cpu": ("q35", NO_BALLOON, TIMERS + CPU),
    "pc-timers": ("pc", NO_BALLOON, "<clock offset='utc'><timer name='rtc' track='wall'/>"
                  "<timer name='pit' tickpolicy='discard'/><timer name='hpet' present='yes'/>"
                  "<timer name='kvmclock' present='yes'/></clock>"),
    "q35-qxl": ("q35", "<graphics type='vnc'/><video><model type='qxl'/></video>", ""),
    "pc-qxl": ("pc", "<graphics type='vnc'/><video><model type='qxl' ram='65536' vram='32768' "
               "vgamem='16384' heads='1'/></video>", ""),
    "q35-switch": ("q35", NO_USB + NO_BALLOON + SWITCH
                   + disk("vda").replace("</disk>", at(3) + "</disk>") + disk("vdb"), ""),
    "q35-ioh3420": ("q35", NO_USB + pci("pcie-root-port", 1, "<model name='ioh3420'/>") + RNG,
                    ""),
    "q35-hotplug-off": ("q35", NO_USB + pci("pcie-root-port", 1, "<target hotplug='off'/>"),
                        ""),
    "q35-scsi-auto": ("q35", "<controller type='scsi' model='auto'/>" + disk("sda", "scsi"), ""),
    "pc-scsi-no-model": ("pc", "<controller type='scsi'/>" + disk("sda", "scsi"), ""),
    "pc-bus-index": ("pc", disk("vda").replace("</disk>", at(2, 3) + "</disk>"), ""),
    "pc-bus-index-order": ("pc", NET.format("virtio") + disk("vda").replace(
        "</disk>", at(1, 3) + "</disk>"), ""),
    "q35-bus-index": ("q35", disk("vda").replace("</disk>", at(3) + "</disk>"), ""),
    "pc-bridges": ("pc", NET.format("virtio") + pci("pci-bridge", 1) + pci(
        "pci-bridge", 2, "<target chassisNr='5'/>") + "<filesystem type='mount' accessmode="
        "'passthrough'><source dir='/tmp'/><target dir='t'/></filesystem>", ""),
    "q35-block": ("q35", "<disk type='block' device='disk'><driver name='qemu' type='raw'/>"
                  "<source dev='/dev/qd-nonexistent'/><target dev='vda' bus='virtio'/></disk>"
                  "<disk type='block' device='cdrom'><driver name='qemu' type='raw'/>"
                  "<source dev='/dev/sr0'/><target dev='sda' bus='sata'/><readonly/></disk>",
                  ""),
    "pc-host-cdrom": ("pc", "<disk type='block' device='cdrom'><source dev='/dev/sr0'/>"
                      "<target dev='hdc' bus='ide'/></disk><disk type='file' device='cdrom'>"
                      "<target dev='hdd' bus='ide'/></disk>", ""),
    # more devices than pci.0 has slots: libvirt's pci-bridge, in the slot it held back
    "pc-29-disks": ("pc", "".join(disk(f"vd{c}") for c in "abcdefghijklmnopqrstuvwxyz")
                    + disk("vdaa") + disk("vdab") + disk("vdac"), ""),
    "pc-34-disks-nic": ("pc", "".join(disk(f"vd{c}") for c in "abcdefghijklmnopqrstuvwxyz")
                        + "".join(disk(f"vda{c}") for c in "abcdefgh")
                        + "<interface type='user'/>", ""),
    # a conventional device brings a root port and a bridge of its own (libvirt's first
    # pass), which the second pass puts on the first free port
    "q35-free-port-conventional": ("q35", pci("pcie-root-port", 1) + "<interface type='user'/>"
                                   + disk("vda"), ""),
    "q35-switch-conventional": ("q35", pci("pcie-root-port", 1)
                                + pci("pcie-switch-upstream-port", 2)
                                + pci("pcie-switch-downstream-port", 3)
                                + "<interface type='user'/><controller type='usb'/>"
                                + disk("vda"), ""),
    "q35-everything": ("q35", SWITCH
                       + pci("pcie-root-port", 5, "<model name='ioh3420'/><target "
                             "hotplug='off'/>") + disk("vda").replace("</disk>", at(3)
                                                                      + "</disk>")
                       + "<controller type='scsi' model='auto'/><controller type='usb'/>"
                       + disk("sdb", "scsi", "cdrom") + NET.format("virtio")
                       + RNG.replace("</rng>", at(7) + "</rng>")
                       + "<graphics type='vnc'/><video><model type='qxl'/></video>",
                       TIMERS + CPU),
}
"""Domain XMLs as libvirt users write them: (machine, devices, elements before
``<devices>``).  libvirt 9.0 (Debian 12) adds no implicit iTCO watchdog on q35 (newer
versions do): qdriver follows the version it is tested against."""


def domain(name: str, machine: str, devices: str, extra: str = "") -> str:
    """A domain on the QEMU libvirt runs, so that machine aliases resolve alike."""
    machine_attr = f" machine='{machine}'" if machine else ""
    return (f"<domain type='qemu'><name>{name}</name><memory unit='MiB'>128</memory>"
            f"<os><type arch='x86_64'{machine_attr}>hvm</type></os>{extra}"
            f"<devices><emulator>{LIBVIRT_QEMU}</emulator>{devices}</devices></domain>")


@dataclass(frozen=True)
class Reference:
    """What libvirt makes of a domain XML: its stored layout and where
    ``domxml-to-native`` puts each device."""

    layout: dict[tuple[str, ...], dict[str, str]]
    places: list[str]


@pytest.fixture(scope="module")
def libvirt_layouts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Reference]:
    """What libvirt makes of each XML of `DEVICES`, defined in one embedded libvirt."""
    lv = Libvirt(tmp_path_factory.mktemp("libvirt"))
    try:
        return {case: Reference(layout(lv.define(domain(case, *xml))), device_places(
                    shlex.split(lv.call("to_native", domain(case, *xml)))))
                for case, xml in DEVICES.items()}
    finally:
        lv.cleanup()


@needs_libvirt
@pytest.mark.parametrize("case", sorted(DEVICES))
async def test_define_places_devices_where_libvirt_does(
        case: str, libvirt_layouts: dict[str, Reference], driver: qdriver.Driver) -> None:
    """The stored devices, models, controllers and addresses are libvirt's; and
    ``domxml-to-native`` puts each device on libvirt's bus, at libvirt's address (a
    root port with libvirt's chassis and port)."""
    dom = await driver.define_xml(domain(case, *DEVICES[case]))
    ours = layout(dom.xml_desc(inactive=True))
    assert ours == libvirt_layouts[case].layout
    assert device_places(driver.native_argv(case)) == libvirt_layouts[case].places
    again = await driver.define_xml(dom.xml_desc(inactive=True))  # stored: never moves
    assert again.xml_desc(inactive=True) == dom.xml_desc(inactive=True)



def test_assignment_is_idempotent_and_keeps_given_addresses() -> None:
    d = qlayout.assign(DomainDef.parse(domain("x", "q35", DEVICES["q35-typical"][1])))
    assert qlayout.assign(d).to_xml() == d.to_xml()
    moved = d.to_xml().replace("bus='0x04' slot='0x00'", "bus='0x07' slot='0x00'")
    assert layout(qlayout.assign(DomainDef.parse(moved)).to_xml())[("disk", "vda")][
        "address.bus"] == "7"  # vda on the spare port, as the user says


def test_every_device_is_placed_on_the_command_line(tmp_path: Path) -> None:
    xml = domain("x", "q35", DEVICES["q35-conventional-pci"][1])
    d = qlayout.assign(DomainDef.parse(xml))
    argv = cmdline.build(d, DomainPaths.of(tmp_path, "x"), "tcg")
    devices = [argv[i + 1] for i, a in enumerate(argv) if a == "-device"]
    assert "pcie-root-port,port=0x10,chassis=1,id=pci.1,bus=pcie.0,addr=0x2," \
           "multifunction=on" in devices
    assert "pcie-pci-bridge,id=pci.2,bus=pci.1,addr=0x0" in devices
    assert "cirrus-vga,id=video0,bus=pcie.0,addr=0x1" in devices
    assert "lsi,id=scsi0,bus=pci.2,addr=0x3" in devices
    assert "scsi-cd,bus=scsi0.0,scsi-id=2,drive=fmt-sdc,id=sdc" in devices  # LSI: no LUNs
    assert "ide-cd,bus=ide.1,drive=fmt-sdb,id=sdb" in devices
    assert any(x.startswith("rtl8139,netdev=hostnet0,") and x.endswith(",bus=pci.2,addr=0x1")
               for x in devices)
    unplaced = [x for x in devices if x.startswith(("virtio", "qemu-xhci", "e1000", "lsi"))
                and ",bus=" not in x]
    assert unplaced == []


REFUSED = [
    # (what goes before <devices>, the devices, what the refusal names)
    ("", "<controller type='usb' model='ehci'/>", "<controller type='usb' model='ehci'>"),
    ("", "<input type='tablet' bus='virtio'/>", "<input type='tablet' bus='virtio'>"),
    ("", disk("hda", "ide"), "<target bus='ide'> (hda) on machine 'q35'"),
    ("", "<memballoon model='xen'/>", "<memballoon model='xen'>"),
    ("", "<video/><video><model type='vga'/></video>", "a second <video>"),
    ("", "<video><model type='bochs'/></video>", "<video><model type='bochs'>"),
    ("", "<serial type='pty'><target type='pci-serial'/></serial>",
     "<serial><target type='pci-serial'>"),
    ("", "<console type='pty'><target type='virtio'/></console>",
     "<console><target type='virtio'>"),
    ("", "<graphics type='spice'/>", "<graphics type='spice'>"),
    ("", "<interface type='user'><model type='ne2k_pci'/></interface>",
     "<interface><model type='ne2k_pci'>"),
    ("<cpu mode='host-passthrough'/>", "", "<cpu mode='host-passthrough'> in a domain of "
     "type 'qemu'"),
    ("", "<sound model='ich9'/>", "<devices><sound>"),
    ("", "<hostdev mode='subsystem' type='usb'/>", "<devices><hostdev>"),
    ("", "<watchdog model='itco' action='reset'/>", "<devices><watchdog>"),
    ("", "<disk type='network' device='disk'><source protocol='nbd' name='x'/>"
     "<target dev='vdb'/></disk>", "<disk type='network' device='disk'> (vdb)"),
    ("", "<disk type='block' device='lun'><source dev='/dev/sr0'/><target dev='sdb' "
     "bus='scsi'/></disk>", "<disk type='block' device='lun'> (sdb)"),
    ("", pci("dmi-to-pci-bridge", 1), "<controller type='pci' model='dmi-to-pci-bridge'>"),
    ("", pci("pcie-expander-bus", 1), "<controller type='pci' model='pcie-expander-bus'>"),
    ("", pci("pcie-root-port", 1, "<model name='pcie-pci-bridge'/>"),
     "<controller type='pci' model='pcie-root-port'><model name='pcie-pci-bridge'>"),
    ("<clock offset='utc'><timer name='tsc' frequency='1000'/></clock>", "",
     "<clock><timer name='tsc'>"),
    ("<clock offset='utc'><timer name='rtc' tickpolicy='merge'/></clock>", "",
     "<clock><timer name='rtc' tickpolicy='merge'>"),
    ("<clock offset='utc'><timer name='pit' tickpolicy='catchup'/></clock>", "",
     "<clock><timer name='pit' tickpolicy='catchup'>"),
    ("<clock offset='utc'><timer name='hpet' present='no' tickpolicy='delay'/></clock>", "",
     "<clock><timer name='hpet' tickpolicy='delay'>"),
    ("<clock offset='localtime'/>", "", "<clock offset='localtime'>"),
    ("<cpu mode='custom'><model>qemu64</model><topology sockets='1' cores='2' threads='1'/>"
     "</cpu>", "", "<cpu><topology>"),
    ("<cpu mode='custom' match='minimum'><model>qemu64</model></cpu>", "",
     "<cpu match='minimum'>"),
    ("<cpu mode='custom'><model vendor_id='GenuineIntel'>qemu64</model></cpu>", "",
     "<cpu><model vendor_id>"),
    ("<cpu mode='custom'><model>qemu64</model><numa><cell id='0' cpus='0' memory='131072'/>"
     "</numa></cpu>", "", "<cpu><numa>"),
]
"""What stays refused, by name, at define: nothing of it is stored."""


@pytest.mark.parametrize("extra, devices, message", REFUSED)
def test_what_cannot_be_honoured_is_refused_at_define(tmp_path: Path, extra: str,
                                                      devices: str, message: str) -> None:
    driver = qdriver.blocking.Driver(tmp_path / "state")
    try:
        with pytest.raises(ConfigUnsupportedError) as err:
            driver.define_xml(domain("x", "q35", devices, extra))
        assert f"qdriver cannot honour {message} in domain 'x'" in str(err.value)
        assert driver.list_domains() == []
    finally:
        driver.close()


@pytest.mark.parametrize("machine", ["pc", ""])
def test_pci_express_controllers_need_q35(tmp_path: Path, machine: str) -> None:
    d = DomainDef.parse(domain("x", machine, pci("pcie-root-port", 1)))
    assert d.unsupported == [f"<controller type='pci' model='pcie-root-port'> on machine "
                             f"'{machine or 'pc'}'"]


@needs_libvirt
@pytest.mark.parametrize("devices", [
    disk("vda").replace("</disk>", at(3, 4) + "</disk>"),  # a root port's bus has slot 0 only
    pci("pcie-root-port", 0),
    pci("pcie-switch-upstream-port", 0),
    "<memballoon model='virtio'>" + at(0, 5) + "</memballoon><rng model='virtio'><backend "
    "model='random'>/dev/urandom</backend>" + at(0, 5) + "</rng>",
])
def test_bad_pci_layouts_fail_with_libvirts_words(libvirt: Libvirt, devices: str) -> None:
    with pytest.raises(LibvirtError) as theirs:
        libvirt.define(domain("bad", "q35", devices))
    with pytest.raises(XMLError) as ours:
        pin_machine(qlayout.assign(DomainDef.parse(domain("bad", "q35", devices))))
    assert str(ours.value) == str(theirs.value)


def test_no_switch_goes_below_itself() -> None:
    """libvirt 9.0 may put a switch's upstream port on one of the switch's own
    downstream ports, a loop QEMU cannot build; qdriver gives it a root port."""
    xml = domain("x", "q35", NO_USB + NO_BALLOON + pci("pcie-switch-upstream-port", 1)
                 + pci("pcie-switch-downstream-port", 2) + pci("pcie-switch-downstream-port", 3)
                 + disk("vda"))
    d = qlayout.assign(DomainDef.parse(xml))
    parent = {c.index: c.address.bus for c in d.controllers
              if c.type == "pci" and isinstance(c.address, PciAddress)}
    assert d.controller("pci", parent[1]) is not None
    assert d.controller("pci", parent[1]).model == "pcie-root-port"  # type: ignore[union-attr]
    assert parent[2] == parent[3] == 1


# -- the same guest under libvirt and under qdriver ---------------------------------------

def guest_xml(image: GuestImage, name: str, disk_path: Path, console: Path) -> str:
    """The test guest as a libvirt user would write it: no addresses, a virtio NIC,
    the agent channel, a USB tablet, an rng; the serial console to a file; on the
    QEMU libvirt can run, so that its memory can move between the two."""
    extra = (f"<emulator>{LIBVIRT_QEMU}</emulator>" + NET.format("virtio") + AGENT + RNG
             + "<input type='tablet' bus='usb'/>")
    xml = domain_xml(image, name, disk_path, extra_devices=extra)
    return xml.replace("<serial type='pty'/>", f"<serial type='file'><source path='{console}'/>"
                       "</serial>").replace("<memballoon model='none'/>", "")


def counters(text: str) -> list[int]:
    """The COUNTER values of the whole lines in console text (the last line may be
    only half written)."""
    return [int(ln[8:]) for ln in text.split("\n")[:-1]
            if ln.startswith("COUNTER ") and ln[8:].strip().isdigit()]


async def counter_after(console: Path, offset: int, timeout: float = 90) -> int:
    """The third COUNTER the guest prints to ``console`` past ``offset``: the guest
    is seen counting on."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        values = counters(console.read_text(errors="replace")[offset:]
                          if console.exists() else "")
        if len(values) >= 3:
            return values[2]
        await anyio.sleep(0.1)
    raise AssertionError(f"the guest does not count on {console} within {timeout} s")


@pytest.fixture
def libvirt() -> Iterator[Libvirt]:
    """An embedded libvirt under a short path (its sockets' paths must fit 107 bytes)."""
    lv = Libvirt(Path(tempfile.mkdtemp(prefix="qdlv-")))
    yield lv
    lv.cleanup()
    shutil.rmtree(lv.root)


@dataclass
class MovingGuest:
    """The test guest on a private disk, its console in a file both sides write."""

    name: str
    disk: Path
    console: Path
    xml: str


@pytest.fixture
def moving_guest(guest_image: GuestImage, tmp_path: Path) -> Callable[[str], MovingGuest]:
    def make(name: str) -> MovingGuest:
        disk_path, console = tmp_path / f"{name}.qcow2", tmp_path / f"{name}.console"
        shutil.copyfile(guest_image.disk, disk_path)
        return MovingGuest(name, disk_path, console,
                           guest_xml(guest_image, name, disk_path, console))
    return make


async def booted_in_libvirt(libvirt: Libvirt, guest: MovingGuest) -> str:
    """Define and boot ``guest`` in libvirt; libvirt's ``dumpxml --inactive``."""
    dumped = libvirt.define(guest.xml)
    libvirt.call("start", guest.name)
    await counter_after(guest.console, 0)
    return dumped


async def booted_in_qdriver(driver: qdriver.Driver, guest: MovingGuest) -> qdriver.Domain:
    dom = await driver.define_xml(guest.xml)
    await dom.start()
    await counter_after(guest.console, 0)
    return dom


@needs_libvirt
async def test_libvirt_domain_runs_under_qdriver_with_the_same_pci_layout(
        libvirt: Libvirt, driver: qdriver.Driver,
        moving_guest: Callable[[str], MovingGuest]) -> None:
    guest = moving_guest("lvguest")
    dumped = await booted_in_libvirt(libvirt, guest)
    theirs = pci_tree(libvirt.monitor("lvguest", "query-pci")[0]["devices"])
    libvirt.call("destroy", "lvguest")

    dom = await driver.define_xml(dumped)  # libvirt's dumpxml, unchanged
    assert layout(dom.xml_desc(inactive=True)) == layout(dumped)
    await dom.start()
    await counter_after(guest.console, guest.console.stat().st_size)
    async with dom.monitor() as mon:
        ours = pci_tree((await mon.execute("query-pci"))[0]["devices"])
    await dom.destroy()
    assert ours == theirs
    assert len(ours) > 12  # root ports, their devices, the chipset: a real comparison


# -- memory moves both ways ---------------------------------------------------------------

def console_since(console: Path, size_before: int) -> str:
    """What the console got since it was ``size_before`` long (a QEMU that opened
    the file anew may have truncated it)."""
    text = console.read_text(errors="replace")
    return text if len(text) < size_before else text[size_before:]


async def assert_goes_on(console: Path, size_before: int, at: int) -> None:
    """The guest counts on from ``at``, without booting again."""
    deadline = time.monotonic() + 90
    while True:
        new = console_since(console, size_before)
        values = counters(new)
        if len(values) >= 3:
            break
        assert time.monotonic() < deadline, f"the guest does not go on: {new[-300:]!r}"
        await anyio.sleep(0.1)
    assert "GUEST-READY" not in new, "the guest booted again instead of going on"
    assert at - 3 <= values[0] <= at + 10, (values, at)


def last_value(console: Path) -> int:
    return counters(console.read_text(errors="replace"))[-1]


@needs_libvirt
async def test_qdriver_save_restores_in_libvirt(libvirt: Libvirt, driver: qdriver.Driver,
                                                moving_guest: Callable[[str], MovingGuest],
                                                tmp_path: Path) -> None:
    guest = moving_guest("qdguest")
    dom = await booted_in_qdriver(driver, guest)
    save = tmp_path / "qd.save"
    await dom.save(save)
    at, size = last_value(guest.console), guest.console.stat().st_size
    assert "<model fallback='forbid'>qemu64</model>" in read_header(save).cookie
    libvirt.call("restore", str(save))
    await assert_goes_on(guest.console, size, at)
    assert libvirt.call("state", "qdguest") == 1  # VIR_DOMAIN_RUNNING
    libvirt.call("destroy", "qdguest")


@needs_libvirt
async def test_qdriver_external_snapshot_memory_restores_in_libvirt(
        libvirt: Libvirt, driver: qdriver.Driver,
        moving_guest: Callable[[str], MovingGuest], tmp_path: Path) -> None:
    guest = moving_guest("qdguest")
    dom = await booted_in_qdriver(driver, guest)
    memory = tmp_path / "s1.mem"
    await dom.snapshot_create_xml(
        f"<domainsnapshot><name>s1</name><memory snapshot='external' file='{memory}'/>"
        f"<disks><disk name='vda' snapshot='external'><source file='{tmp_path}/s1.qcow2'/>"
        "</disk></disks></domainsnapshot>")
    at = disk_counter(guest.disk)  # the disk the snapshot froze, which the file's XML names
    await dom.destroy()
    size = guest.console.stat().st_size
    libvirt.call("restore", str(memory))
    await assert_goes_on(guest.console, size, at)
    libvirt.call("destroy", "qdguest")


@needs_libvirt
async def test_libvirt_save_restores_in_qdriver(libvirt: Libvirt, driver: qdriver.Driver,
                                                moving_guest: Callable[[str], MovingGuest],
                                                state_dir: Path,
                                                tmp_path: Path) -> None:
    guest = moving_guest("lvguest")
    await booted_in_libvirt(libvirt, guest)
    save = tmp_path / "lv.save"
    libvirt.call("save", "lvguest", str(save))
    at, size = last_value(guest.console), guest.console.stat().st_size
    await anyio.to_thread.run_sync(lambda: run_cli(state_dir, "restore", str(save)))
    dom = driver.lookup("lvguest")
    assert dom.state == qdriver.DomainState.RUNNING
    await assert_goes_on(guest.console, size, at)
    await dom.destroy()


@needs_libvirt
async def test_libvirt_internal_snapshot_reverts_in_qdriver(
        libvirt: Libvirt, driver: qdriver.Driver,
        moving_guest: Callable[[str], MovingGuest], state_dir: Path,
        tmp_path: Path) -> None:
    guest = moving_guest("lvguest")
    (tmp_path / "dom.xml").write_text(await booted_in_libvirt(libvirt, guest))
    libvirt.call("snapshot_create", "lvguest", "<domainsnapshot><name>lv1</name>"
                 "</domainsnapshot>")
    (tmp_path / "lv1.xml").write_text(libvirt.call("snapshot_xml", "lvguest", "lv1"))
    libvirt.call("destroy", "lvguest")
    at = disk_counter(guest.disk, "lv1")

    size = guest.console.stat().st_size
    for args in (("define", str(tmp_path / "dom.xml")),
                 ("snapshot-create", "lvguest", str(tmp_path / "lv1.xml"), "--redefine"),
                 ("snapshot-revert", "lvguest", "lv1")):
        await anyio.to_thread.run_sync(functools.partial(run_cli, state_dir, *args))
    dom = driver.lookup("lvguest")
    assert dom.state == qdriver.DomainState.RUNNING
    await assert_goes_on(guest.console, size, at)
    await dom.destroy()


def test_machine_alias_is_pinned_to_the_versioned_type() -> None:
    pinned = pin_machine(DomainDef.parse(domain("x", "q35", "")))
    assert pinned.machine == qemucaps.machine_aliases(LIBVIRT_QEMU)["q35"]
    assert pinned.machine.startswith("pc-q35-") and pinned.q35
    assert pin_machine(pinned).machine == pinned.machine
    nowhere = DomainDef.parse(domain("x", "q35", "").replace(LIBVIRT_QEMU, "/nonexistent/qemu"))
    assert pin_machine(nowhere).machine == "q35"  # kept; start names the missing QEMU


async def test_a_later_process_builds_the_same_device_tree(driver: qdriver.Driver,
                                                           state_dir: Path) -> None:
    xml = domain("later", "q35", DEVICES["q35-conventional-pci"][1])
    dom = await driver.define_xml(xml)
    stored = dom.xml_desc(inactive=True)
    here = driver.native_argv("later")
    there = run_cli(state_dir, "domxml-to-native", "later").stdout.decode()
    assert shlex.split(there) == here
    assert [a for a in here if a.startswith(("virtio-blk", "rtl8139", "lsi", "qemu-xhci"))
            and ",bus=" not in a] == []
    assert run_cli(state_dir, "dumpxml", "--inactive", "later").stdout.decode().strip() == \
        stored.strip()


@needs_libvirt
@pytest.mark.parametrize("extra", [
    TIMERS + CPU,
    "<clock offset='utc'><timer name='rtc' track='wall'/><timer name='pit' "
    "tickpolicy='discard'/><timer name='kvmclock' present='yes'/></clock>",
    "<cpu mode='custom' match='exact' check='none'><model fallback='forbid'>Nehalem</model>"
    "<feature policy='forbid' name='vmx'/></cpu><clock offset='utc'><timer name='rtc' "
    "track='realtime' tickpolicy='delay'/></clock>",
])
def test_timers_and_cpu_features_reach_qemu_as_libvirt_passes_them(
        libvirt: Libvirt, tmp_path: Path, extra: str) -> None:
    """``-cpu`` with its features and kvmclock, ``-rtc``, the PIT's policy: libvirt's
    words; an HPET turned off is ``-machine hpet=off`` (libvirt 9.0 passes the
    ``-no-hpet`` QEMU 9 dropped)."""
    xml = domain("t", "q35", NO_BALLOON, extra)
    theirs = shlex.split(libvirt.call("to_native", xml))
    ours = cmdline.build(pin_machine(qlayout.assign(DomainDef.parse(xml))),
                         DomainPaths.of(tmp_path, "t"), "tcg")

    def clock(argv: list[str]) -> list[str]:
        return [f"{a} {v}" for a, v in zip(argv, argv[1:]) if a in ("-cpu", "-rtc", "-global")]
    assert clock(ours) == clock(theirs)
    hpet = "hpet=off" in ours[ours.index("-machine") + 1].split(",")
    assert hpet == ("-no-hpet" in theirs)


@needs_libvirt
@pytest.mark.parametrize("machine", ["q35", "pc"])
def test_power_states_and_vmport_reach_qemu_as_libvirt_passes_them(
        libvirt: Libvirt, tmp_path: Path, machine: str) -> None:
    xml = domain("pm", machine, "").replace("</os>", "</os><features><acpi/><vmport state='off'/>"
                                            "</features><pm><suspend-to-mem enabled='no'/>"
                                            "<suspend-to-disk enabled='yes'/></pm>")
    theirs = shlex.split(libvirt.call("to_native", xml))
    ours = cmdline.build(pin_machine(qlayout.assign(DomainDef.parse(xml))),
                                 DomainPaths.of(tmp_path, "pm"), "tcg")

    def settings(argv: list[str]) -> tuple[list[str], list[str]]:
        machine_opts = [o for a, o in zip(argv, argv[1:]) if a == "-machine"][0].split(",")
        return ([o for o in machine_opts if o.startswith("vmport")],
                sorted(o for a, o in zip(argv, argv[1:]) if a == "-global"))
    assert settings(ours) == settings(theirs)
    assert settings(ours)[1] and settings(ours)[0] == ["vmport=off"]


@needs_libvirt
def test_xhci_ports_reach_qemu_as_libvirt_passes_them(libvirt: Libvirt, guest_image: GuestImage,
                                                      tmp_path: Path) -> None:
    """``ports='15'`` on a qemu-xhci: USB 2 and 3 ports alike (``p2``, ``p3``)."""
    xml = domain_xml(guest_image, "usb", None, extra_devices=(
        "<controller type='usb' model='qemu-xhci' ports='15'/>")).replace(
        "<devices>", "<devices><emulator>/usr/bin/qemu-system-x86_64</emulator>")
    theirs = shlex.split(libvirt.call("to_native", xml))
    xhci = next(a for a in theirs if '"qemu-xhci"' in a)
    driver = qdriver.blocking.Driver(tmp_path / "state")
    try:
        driver.define_xml(xml)
        ours = next(a for a in driver.native_argv("usb") if a.startswith("qemu-xhci"))
    finally:
        driver.close()
    assert ",p2=15,p3=15," in ours and '"p2":15,"p3":15' in xhci
    assert ours.split(",bus=")[1] == "{bus},addr={addr}".format(**json.loads(xhci))



@needs_libvirt
def test_a_display_gets_libvirts_silent_audio_backend(libvirt: Libvirt, guest_image: GuestImage,
                                                      tmp_path: Path) -> None:
    """With VNC libvirt 9.0 still adds ``<audio type='none'>``, and links VNC to it."""
    xml = domain_xml(guest_image, "vnc", None, extra_devices="<graphics type='vnc'/>").replace(
        "<devices>", "<devices><emulator>/usr/bin/qemu-system-x86_64</emulator>")
    theirs = libvirt.define(xml)
    native = shlex.split(libvirt.call("to_native", xml))
    driver = qdriver.blocking.Driver(tmp_path / "state")
    try:
        ours = driver.define_xml(xml).xml_desc(inactive=True)
        argv = driver.native_argv("vnc")
    finally:
        driver.close()
    assert "<audio id='1' type='none'/>" in theirs and "<audio id='1' type='none'/>" in ours
    assert native[native.index("-vnc") + 1].endswith(",audiodev=audio1")
    assert argv[argv.index("-vnc") + 1].endswith(",audiodev=audio1")
    assert native[native.index("-audiodev") + 1].strip("'") == \
        argv[argv.index("-audiodev") + 1].replace(" ", "")
