"""libvirt's device layout: qdriver places devices where Debian's libvirt does.

libvirt is the oracle: the same XML is defined in both, and each device's
address, model and root-port numbering must come out the same.
"""
from __future__ import annotations

from pathlib import Path

import pytest

import qdriver
from qdriver.errors import ConfigUnsupportedError
from qdriver.paths import DomainPaths
from qdriver.xml import layout as qlayout
from qdriver.xml.domain import DomainDef

from .libvirt_oracle import Libvirt, layout, needs_libvirt


def disk(target: str, bus: str = "virtio", device: str = "disk") -> str:
    return (f"<disk type='file' device='{device}'><driver name='qemu' type='qcow2'/>"
            f"<source file='/nonexistent/{target}.qcow2'/><target dev='{target}' bus='{bus}'/>"
            "</disk>")


NET = "<interface type='user'><model type='{}'/></interface>"
AGENT = "<channel type='unix'><target type='virtio' name='org.qemu.guest_agent.0'/></channel>"
RNG = "<rng model='virtio'><backend model='random'>/dev/urandom</backend></rng>"
DEVICES = {
    "q35-typical": ("q35", disk("vda") + NET.format("virtio") + "<serial type='pty'/>" + AGENT
                    + RNG),
    "q35-many-disks": ("q35", "".join(disk(f"vd{c}") for c in "abcdefghij")
                       + "<memballoon model='none'/>"),
    "q35-conventional-pci": ("q35", disk("vda") + "<interface type='user'/>"
                             + NET.format("e1000") + disk("sdc", "scsi", "cdrom")
                             + disk("sdb", "sata", "cdrom") + "<graphics type='vnc'/>"),
    "q35-video-usb-scsi": ("q35", disk("vda") + disk("vdb") + "<video><model type='vga'/>"
                           "</video><input type='tablet' bus='usb'/><controller type='scsi' "
                           "model='virtio-scsi'/>" + disk("sda", "scsi")
                           + "<memballoon model='none'/>"),
    "q35-no-usb-virtio-video": ("q35", disk("vda") + NET.format("e1000e")
                                + "<video><model type='virtio'/></video>"
                                "<controller type='usb' model='none'/>"),
    "pc-typical": ("pc", disk("vda") + NET.format("virtio") + AGENT + RNG
                   + disk("hdc", "ide", "cdrom")),
    "pc-sata-video": ("pc", disk("vda") + disk("sda", "sata") + "<video><model type='vga'/>"
                      "</video>" + NET.format("rtl8139")),
}


def domain(name: str, machine: str, devices: str) -> str:
    return (f"<domain type='qemu'><name>{name}</name><memory unit='MiB'>128</memory>"
            f"<os><type arch='x86_64' machine='{machine}'>hvm</type></os>"
            f"<devices>{devices}</devices></domain>")


@pytest.fixture(scope="module")
def libvirt_layouts(tmp_path_factory: pytest.TempPathFactory
                    ) -> dict[str, dict[tuple[str, ...], dict[str, str]]]:
    """What libvirt makes of each XML of `DEVICES`, defined in one embedded libvirt."""
    lv = Libvirt(tmp_path_factory.mktemp("libvirt"))
    try:
        return {case: layout(lv.define(domain(case, machine, devs)))
                for case, (machine, devs) in DEVICES.items()}
    finally:
        lv.cleanup()


@needs_libvirt
@pytest.mark.parametrize("case", sorted(DEVICES))
async def test_define_places_devices_where_libvirt_does(case: str, libvirt_layouts,
                                                       driver: qdriver.Driver) -> None:
    machine, devices = DEVICES[case]
    dom = await driver.define_xml(domain(case, machine, devices))
    ours = layout(dom.xml_desc(inactive=True))
    assert ours == libvirt_layouts[case]
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
    argv = qdriver.cmdline.build(d, DomainPaths.of(tmp_path, "x"), "tcg")
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


@pytest.mark.parametrize("devices, message", [
    ("<controller type='usb' model='ehci'/>", "<controller type='usb' model='ehci'>"),
    ("<video><model type='qxl'/></video>", "<video><model type='qxl'>"),
    ("<input type='tablet' bus='virtio'/>", "<input type='tablet' bus='virtio'>"),
    (disk("hda", "ide"), "<target bus='ide'> (hda) on machine 'q35'"),
    ("<memballoon model='xen'/>", "<memballoon model='xen'>"),
])
def test_what_cannot_be_honoured_is_refused_by_name(tmp_path: Path, devices: str,
                                                    message: str) -> None:
    d = DomainDef.parse(domain("x", "q35", devices))
    with pytest.raises(ConfigUnsupportedError, match=message.replace("(", r"\(")
                       .replace(")", r"\)")):
        qdriver.cmdline.build(d, DomainPaths.of(tmp_path, "x"), "tcg")


def test_a_device_on_a_missing_bus_is_an_error(tmp_path: Path) -> None:
    xml = domain("x", "q35", disk("vda").replace(
        "</disk>", "<address type='pci' domain='0x0000' bus='0x09' slot='0x00' "
        "function='0x0'/></disk>"))
    d = qlayout.assign(DomainDef.parse(xml))
    # the given address is kept: no controller 9 is invented for it
    with pytest.raises(ConfigUnsupportedError, match="no PCI controller with index 9"):
        qdriver.cmdline.build(d, DomainPaths.of(tmp_path, "x"), "tcg")
