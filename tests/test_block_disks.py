"""Disks on host block devices (``<disk type='block'>``): what reaches QEMU, what
is checked before it starts, and the snapshots qdriver refuses for them."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

import qdriver
from qdriver.errors import ConfigUnsupportedError, InvalidArgError
from qdriver.launch import cmdline
from qdriver.ops.create_plan import plan_snapshot
from qdriver.paths import DomainPaths
from qdriver.xml import layout
from qdriver.xml.domain import DomainDef


def domain(disks: str) -> str:
    return ("<domain type='qemu'><name>blk</name><memory unit='MiB'>128</memory>"
            "<os><type arch='x86_64' machine='q35'>hvm</type></os>"
            f"<devices>{disks}<memballoon model='none'/></devices></domain>")


BLOCK_DISK = ("<disk type='block' device='disk'><driver name='qemu' type='qcow2'/>"
              "<source dev='{}'/><target dev='vda' bus='virtio'/></disk>")
HOST_CDROM = ("<disk type='block' device='cdrom'><source dev='/dev/sr0'/>"
              "<target dev='sda' bus='sata'/></disk>")


@pytest.mark.no_qemu
def test_a_block_disk_opens_as_a_host_device_and_a_cdrom_drive_as_host_cdrom(
        tmp_path: Path) -> None:
    d = layout.assign(DomainDef.parse(domain(BLOCK_DISK.format("/dev/vg/guest") + HOST_CDROM)))
    argv = cmdline.build(d, DomainPaths.of(tmp_path, "blk"), "tcg", emulator="/bin/false")
    nodes = [json.loads(a) for a in argv if a.startswith("{") and '"filename"' in a]
    assert [(n["driver"], n["filename"], n["read-only"]) for n in nodes] == [
        ("host_device", "/dev/vg/guest", False), ("host_cdrom", "/dev/sr0", True)]
    assert d.disk("vda") is not None and d.disk("vda").type == "block"  # type: ignore[union-attr]


@pytest.mark.no_qemu
def test_a_block_disk_names_its_device() -> None:
    with pytest.raises(qdriver.XMLError, match="disk 'vda' has no source dev"):
        DomainDef.parse(domain("<disk type='block' device='disk'><target dev='vda'/></disk>"))


async def test_a_block_disk_must_be_a_block_device(driver: qdriver.Driver,
                                                   tmp_path: Path) -> None:
    plain = tmp_path / "plain.qcow2"
    plain.write_bytes(b"")
    dom = await driver.define_xml(domain(BLOCK_DISK.format(plain)))
    with pytest.raises(InvalidArgError, match=f"disk 'vda': '{plain}' is not a block device"):
        await dom.start()
    assert not dom.is_active


@pytest.mark.no_qemu
@pytest.mark.parametrize("kind", ["internal", "external"])
def test_snapshots_of_a_block_disk_are_refused(kind: str) -> None:
    d = layout.assign(DomainDef.parse(domain(BLOCK_DISK.format("/dev/vg/guest"))))
    xml = (f"<domainsnapshot><name>s</name><disks><disk name='vda' snapshot='{kind}'/>"
           "</disks></domainsnapshot>")
    with pytest.raises(ConfigUnsupportedError, match=f"{kind} snapshot of disk vda on block "
                       "device '/dev/vg/guest' is not supported: give it snapshot='no'"):
        plan_snapshot(d, "shutoff", xml)
    skipped = xml.replace(f"snapshot='{kind}'", "snapshot='no'").replace(
        "<name>s</name>", "<name>s</name><memory snapshot='no'/>")
    with pytest.raises(ConfigUnsupportedError, match="nothing selected for snapshot"):
        plan_snapshot(d, "shutoff", skipped)  # the block disk left out: libvirt's refusal
