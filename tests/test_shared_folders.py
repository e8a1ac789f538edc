"""Host folders in the guest: virtiofs (a supervised virtiofsd) and 9p (inside QEMU)."""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

import qdriver
from tests.helpers.guest import GuestImage, domain_xml
from tests.helpers.libvirt_oracle import Libvirt, device_addresses, needs_libvirt

SHARED_RAM = "<memoryBacking><source type='memfd'/><access mode='shared'/></memoryBacking>"


def _folders(host: Path) -> str:
    return (f"<filesystem type='mount' accessmode='passthrough'><driver type='virtiofs'/>"
            f"<source dir='{host}'/><target dir='hostshare'/></filesystem>"
            f"<filesystem type='mount' accessmode='mapped'><source dir='{host}'/>"
            f"<target dir='ninep'/><readonly/></filesystem>")


@needs_libvirt
@pytest.mark.system_qemu
async def test_folders_get_libvirts_devices_and_addresses(
        driver: qdriver.Driver, guest_image: GuestImage, tmp_path: Path) -> None:
    xml = domain_xml(guest_image, "fs", None, memory_backing=SHARED_RAM,
                     extra_devices=_folders(tmp_path) + "<interface type='user'>"
                     "<model type='virtio'/></interface>").replace(
        "<devices>", "<devices><emulator>/usr/bin/qemu-system-x86_64</emulator>")
    lv = Libvirt(Path(tempfile.mkdtemp(prefix="qdfs-", dir="/tmp")))
    try:
        theirs = lv.call("to_native", xml).split()
    finally:
        lv.cleanup()
    await driver.define_xml(xml)
    ours = driver.native_argv("fs")
    assert sorted(device_addresses(ours)) == sorted(device_addresses(theirs))  # any order
    assert "vhost-user-fs-pci@pci.1/0x0:hostshare" in device_addresses(ours)
    assert "virtio-9p-pci@pci.2/0x0:ninep" in device_addresses(ours)


@pytest.mark.skipif(os.geteuid() != 0, reason="virtiofsd runs as root, as libvirt runs it")
async def test_a_virtiofs_folder_carries_files_both_ways(
        driver: qdriver.Driver, guest_image: GuestImage, tmp_path: Path) -> None:
    host = tmp_path / "share"
    host.mkdir()
    (host / "hello").write_text("from-host\n")
    disk = tmp_path / "fs.qcow2"
    shutil.copyfile(guest_image.disk, disk)
    dom = await driver.define_xml(domain_xml(
        guest_image, "vfs", disk, cmdline="qd.shell=1 qd.quiet=1", memory_backing=SHARED_RAM,
        extra_devices="<filesystem type='mount' accessmode='passthrough'><driver "
        f"type='virtiofs'/><source dir='{host}'/><target dir='hostshare'/></filesystem>"))
    console = dom.console()
    await dom.start()
    await console.wait_async("GUEST-READY", 60)
    console.write("mkdir -p /share && mount -t virtiofs hostshare /share && "
                  "cat /share/hello && echo from-guest > /share/back && sync && echo WROTE\n")
    await console.wait_async("from-host\r?\n.*WROTE", 30)
    assert (host / "back").read_text() == "from-guest\n"
    with pytest.raises(qdriver.OperationUnsupportedError,
                       match="shares host folder 'hostshare' \\(virtiofs"):
        await dom.snapshot_create_xml("<domainsnapshot><name>m</name></domainsnapshot>")
    with pytest.raises(qdriver.OperationUnsupportedError, match="shares host folder"):
        await dom.save(tmp_path / "vfs.save")
    snap = await dom.snapshot_create_xml("<domainsnapshot><name>d</name></domainsnapshot>",
                                         disk_only=True)  # the disks alone: taken
    assert snap.name == "d" and dom.state == qdriver.DomainState.RUNNING
    virtiofsd = [p for p in dom.paths.dir.glob("helper-virtiofs0.*")]
    assert virtiofsd, "virtiofsd is not one of the domain's helpers"
    await dom.destroy()
    assert not list(dom.paths.dir.glob("helper-*")), "virtiofsd outlived its QEMU"


async def test_virtiofs_without_shared_memory_is_refused(driver: qdriver.Driver,
                                                         guest_image: GuestImage,
                                                         tmp_path: Path) -> None:
    xml = domain_xml(guest_image, "nomem", None, extra_devices=_folders(tmp_path))
    with pytest.raises(qdriver.ConfigUnsupportedError, match="'virtiofs' requires shared "
                       "memory"):
        await driver.define_xml(xml)
    assert driver.list_domains() == []


async def test_a_folder_that_is_not_there_or_cannot_be_passed_is_refused(
        driver: qdriver.Driver, guest_image: GuestImage, tmp_path: Path) -> None:
    missing = tmp_path / "gone"
    dom = await driver.define_xml(domain_xml(
        guest_image, "nofolder", None, extra_devices=f"<filesystem type='mount'><source "
        f"dir='{missing}'/><target dir='t'/></filesystem>"))
    with pytest.raises(qdriver.SystemError_, match=f"filesystem 't' source '{missing}'"):
        await dom.start()
    assert not dom.is_active
    comma = tmp_path / "a,b"
    comma.mkdir()
    with pytest.raises(qdriver.ConfigUnsupportedError, match="with a comma for virtiofs"):
        await driver.define_xml(domain_xml(
            guest_image, "comma", None, memory_backing=SHARED_RAM, extra_devices=(
                "<filesystem type='mount'><driver type='virtiofs'/>"
                f"<source dir='{comma}'/><target dir='t'/></filesystem>")))
