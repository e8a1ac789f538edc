"""Guests with their RAM in a shared file, and template snapshots of them."""
from __future__ import annotations

import shutil
from pathlib import Path

import qdriver

from .guest import GuestImage, domain_xml, wait_console

SHARED_FILE_RAM = "<memoryBacking><source type='file'/><access mode='shared'/></memoryBacking>"
NIC = "<interface type='user'><model type='virtio'/></interface>"


async def counting_guest(driver: qdriver.Driver, image: GuestImage, tmp_path: Path,
                         name: str = "src", extra: str = "") -> qdriver.Domain:
    """The test guest, its RAM a shared file (it can be a template), counting."""
    disk = tmp_path / f"{name}.qcow2"
    shutil.copyfile(image.disk, disk)
    dom = await driver.define_xml(domain_xml(image, name, disk, extra_devices=NIC,
                                             memory_backing=SHARED_FILE_RAM + extra))
    await dom.start()
    await wait_console(dom, "COUNTER 2")
    return dom


def memory_snapshot(name: str, where: Path) -> str:
    """An external memory and disk snapshot's XML, its files in ``where``."""
    return (f"<domainsnapshot><name>{name}</name><memory snapshot='external' "
            f"file='{where}/{name}.mem'/><disks><disk name='vda' snapshot='external'><source "
            f"file='{where}/vda.{name}'/></disk></disks></domainsnapshot>")


async def generation_id(dom: qdriver.Domain) -> str:
    """The VM generation ID the guest's vmgenid device shows, as QEMU reports it."""
    async with dom.monitor() as mon:
        return str((await mon.execute("query-vm-generation-id"))["guid"]).lower()
