"""Domain XML that libvirt users write runs under qdriver, on every QEMU qdriver
supports, with the PCI layout libvirt's QEMU shows for the same XML.

Two guests carry what qdriver once refused: timers, CPU features, qxl with VNC,
a PCIe switch, an ioh3420 root port closed to hotplug, a SCSI controller of model
``auto``, devices on PCI buses no controller names, a USB controller without a
model, a disk on a host block device and a host cdrom drive (loop devices here).
libvirt boots each (its QEMU: the system one) and reports ``query-pci``; qdriver
boots the same XML on the QEMU on PATH (7.2, or 10 in the suite's second half).
"""
from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Iterator

import anyio
import pytest

import qdriver

from .helpers import GuestImage
from .helpers.libvirt_oracle import LIBVIRT_QEMU, Libvirt, needs_libvirt, pci_tree


@pytest.fixture
def loop_devices(tmp_path: Path) -> Iterator[list[str]]:
    """Loop devices made by the test (``losetup``), detached when it ends."""
    made: list[str] = []
    yield made
    for dev in made:
        subprocess.run(["losetup", "-d", dev], check=False)


def attach(made: list[str], image: Path) -> str:
    dev = subprocess.run(["losetup", "--find", "--show", str(image)], check=True,
                         capture_output=True, text=True).stdout.strip()
    made.append(dev)
    return dev


def at(bus: int, slot: int = 0) -> str:
    return f"<address type='pci' domain='0x0000' bus='{bus:#x}' slot='{slot:#x}' function='0x0'/>"


def guest(image: GuestImage, machine: str, cpu_clock: str, vda: str, devices: str,
          console: Path, emulator: str) -> str:
    """The test guest with ``devices`` and its serial console to ``console``."""
    machine_attr = f" machine='{machine}'" if machine else ""
    return f"""<domain type='qemu'>
  <name>rich</name>
  <memory unit='MiB'>256</memory>
  <vcpu>1</vcpu>
  <os>
    <type arch='x86_64'{machine_attr}>hvm</type>
    <kernel>{image.kernel}</kernel>
    <initrd>{image.initrd}</initrd>
    <cmdline>console=ttyS0 quiet panic=-1</cmdline>
  </os>
  <features><acpi/></features>{cpu_clock}
  <on_poweroff>destroy</on_poweroff>
  <devices>{emulator}{vda}{devices}
    <serial type='file'><source path='{console}'/></serial>
  </devices>
</domain>
"""


def q35_guest(image: GuestImage, disk: str, cdrom: str, console: Path, emulator: str) -> str:
    cpu_clock = (
        "<cpu mode='custom' match='exact' check='none'><model fallback='allow'>qemu64</model>"
        "<feature policy='require' name='ssse3'/><feature policy='require' name='sse4.1'/>"
        "<feature policy='force' name='sse4.2'/><feature policy='disable' name='svm'/>"
        "</cpu><clock offset='utc'><timer name='rtc' tickpolicy='catchup' track='guest'/>"
        "<timer name='pit' tickpolicy='delay'/><timer name='hpet' present='no'/>"
        "<timer name='kvmclock' present='no'/></clock>")
    vda = (f"<disk type='block' device='disk'><driver name='qemu' type='qcow2'/>"
           f"<source dev='{disk}'/><target dev='vda' bus='virtio'/>{at(3)}</disk>")
    devices = (
        f"<disk type='block' device='cdrom'><driver name='qemu' type='raw'/>"
        f"<source dev='{cdrom}'/><target dev='sda' bus='sata'/><readonly/></disk>"
        "<disk type='file' device='cdrom'><target dev='sdb' bus='scsi'/></disk>"
        "<controller type='scsi' model='auto'/><controller type='usb'/>"
        "<controller type='pci' index='1' model='pcie-root-port'/>"
        "<controller type='pci' index='2' model='pcie-switch-upstream-port'/>"
        "<controller type='pci' index='3' model='pcie-switch-downstream-port'/>"
        "<controller type='pci' index='4' model='pcie-switch-downstream-port'/>"
        "<controller type='pci' index='5' model='pcie-root-port'><model name='ioh3420'/>"
        "<target hotplug='off'/></controller>"
        "<interface type='user'><model type='virtio'/></interface>"
        f"<rng model='virtio'><backend model='random'>/dev/urandom</backend>{at(7)}</rng>"
        "<graphics type='vnc'/><video><model type='qxl'/></video>")
    return guest(image, "q35", cpu_clock, vda, devices, console, emulator)


def pc_guest(image: GuestImage, disk: str, cdrom: str, console: Path, emulator: str) -> str:
    """No machine type (libvirt's default: pc), bridges for a bus index, a host cdrom."""
    cpu_clock = ("<clock offset='utc'><timer name='rtc' track='wall'/>"
                 "<timer name='pit' tickpolicy='discard'/></clock>")
    vda = (f"<disk type='file' device='disk'><driver name='qemu' type='qcow2'/>"
           f"<source file='{disk}'/><target dev='vda' bus='virtio'/></disk>")
    devices = (
        f"<disk type='block' device='cdrom'><source dev='{cdrom}'/>"
        "<target dev='hdc' bus='ide'/></disk><controller type='usb'/>"
        "<controller type='scsi'/><disk type='file' device='cdrom'>"
        "<target dev='sda' bus='scsi'/></disk>"
        f"<rng model='virtio'><backend model='random'>/dev/urandom</backend>{at(2, 3)}</rng>"
        "<graphics type='vnc'/><video><model type='qxl' vram='32768'/></video>")
    return guest(image, "", cpu_clock, vda, devices, console, emulator)


async def counting(console: Path, offset: int = 0, timeout: float = 120) -> None:
    """Wait until the guest prints its third COUNTER past ``offset``: it booted."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = console.read_text(errors="replace")[offset:] if console.exists() else ""
        if text.count("\nCOUNTER ") >= 3:
            return
        await anyio.sleep(0.1)
    raise AssertionError(f"the guest does not boot and count on {console} within {timeout} s")


@needs_libvirt
@pytest.mark.parametrize("build", [q35_guest, pc_guest], ids=["q35", "pc"])
async def test_libvirt_xml_boots_with_libvirts_pci_layout(
        build: object, guest_image: GuestImage, driver: qdriver.Driver, tmp_path: Path,
        loop_devices: list[str]) -> None:
    assert callable(build)
    disk_file, cdrom_file = tmp_path / "vda.qcow2", tmp_path / "cdrom.img"
    shutil.copyfile(guest_image.disk, disk_file)
    cdrom_file.write_bytes(bytes(1 << 20))
    if build is q35_guest:  # qcow2 on a block device: room to allocate clusters in
        os.truncate(disk_file, 128 << 20)
    disk = attach(loop_devices, disk_file) if build is q35_guest else str(disk_file)
    cdrom = attach(loop_devices, cdrom_file)
    console = tmp_path / "console.log"
    lv = Libvirt(Path(tempfile.mkdtemp(prefix="qdlv-")))  # its sockets' paths must be short
    try:
        lv.define(build(guest_image, disk, cdrom, console,
                        f"<emulator>{LIBVIRT_QEMU}</emulator>"))
        lv.call("start", "rich")
        await counting(console)
        theirs = pci_tree(lv.monitor("rich", "query-pci")[0]["devices"])
        lv.call("destroy", "rich")
    finally:
        lv.cleanup()
        shutil.rmtree(lv.root)

    dom = await driver.define_xml(build(guest_image, disk, cdrom, console, ""))
    size = console.stat().st_size
    await dom.start()
    try:
        await counting(console, size if console.stat().st_size >= size else 0)
        async with dom.monitor() as mon:
            ours = pci_tree((await mon.execute("query-pci"))[0]["devices"])
            cpu = (await mon.execute("query-cpus-fast"))[0]["qom-path"]
            features = {f: await mon.execute("qom-get", {"path": cpu, "property": f})
                        for f in ("sse4.2", "svm")}
    finally:
        await dom.destroy()
    assert ours == theirs
    assert len(ours) > 10
    if build is q35_guest:  # the vCPU has the features the XML turns on, not those it turns off
        assert features == {"sse4.2": True, "svm": False}
