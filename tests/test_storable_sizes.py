"""What is stored can be read back: sizes are checked on the stored form, before any change."""
from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

import qdriver
from qdriver.driver import pin_machine
from qdriver.errors import XMLError
from qdriver.xml import layout
from qdriver.xml.domain import DomainDef
from qdriver.xml.safe import MAX_XML_BYTES

from .helpers import disk_source, run_cli

DOMAIN = """<domain type='qemu'><name>{name}</name><memory unit='MiB'>64</memory>
<description>{description}</description>
<devices><disk type='file' device='disk'><driver type='qcow2'/><source file='{disk}'/>
<target dev='vda' bus='virtio'/></disk></devices></domain>"""


def domain_xml(tmp_path: Path, description: str, name: str = "big") -> str:
    disk = tmp_path / "disk.qcow2"
    if not disk.exists():
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(disk), "1M"], check=True)
    return DOMAIN.format(name=name, description=description, disk=disk)


def stored_size(xml: str) -> int:
    """The size define stores: with libvirt's layout and the machine type pinned."""
    return len(pin_machine(layout.assign(DomainDef.parse(xml))).to_xml().encode())


def test_a_definition_that_grows_when_stored_is_refused(state_dir: Path,
                                                        tmp_path: Path) -> None:
    # 1.1 MiB of '>' is fine in the file given, and 4.4 MiB once stored as '&gt;'
    path = tmp_path / "grows.xml"
    path.write_text(domain_xml(tmp_path, ">" * (1100 << 10)))
    assert path.stat().st_size < MAX_XML_BYTES < stored_size(path.read_text())
    result = run_cli(state_dir, "define", str(path), check=False)
    assert result.returncode == 1
    assert "would be stored as" in result.stderr.decode()
    assert run_cli(state_dir, "list", "--all", "--name").stdout.split() == []
    assert not (state_dir / "domains" / "big").exists()


async def test_the_limit_accepts_exactly_what_reads_back(driver: qdriver.Driver,
                                                         tmp_path: Path) -> None:
    base = stored_size(domain_xml(tmp_path, "a")) - 1
    fits = domain_xml(tmp_path, "a" * (MAX_XML_BYTES - base))
    assert stored_size(fits) == MAX_XML_BYTES
    dom = await driver.define_xml(fits)
    assert qdriver.Driver(driver.state_dir).lookup("big").definition.name == "big"
    assert len(dom.xml_desc().encode()) == MAX_XML_BYTES
    with pytest.raises(XMLError, match="would be stored as 4194305 bytes"):
        await driver.define_xml(domain_xml(tmp_path, "a" * (MAX_XML_BYTES - base + 1)))
    assert len(dom.xml_desc().encode()) == MAX_XML_BYTES  # the stored one is unchanged


async def test_snapshot_metadata_too_large_is_refused_before_anything(
        driver: qdriver.Driver, tmp_path: Path) -> None:
    dom = await driver.define_xml(domain_xml(tmp_path, "d" * (3 << 20)))  # a 3 MiB domain
    disk = disk_source(dom)
    xml = (f"<domainsnapshot><name>s1</name><description>{'x' * (1200 << 10)}"
           "</description></domainsnapshot>")
    with pytest.raises(XMLError, match="metadata of snapshot 's1' would be stored as"):
        await dom.snapshot_create_xml(xml)
    assert dom.list_snapshots() == [] and not dom.has_current_snapshot()
    assert list(dom.paths.snapshots.glob("*")) == [] if dom.paths.snapshots.exists() else True
    listed = subprocess.run(["qemu-img", "snapshot", "-l", disk], capture_output=True,
                            text=True, check=True).stdout
    assert "s1" not in listed, "the internal snapshot was taken anyway"
    # a smaller description fits, and reads back
    await dom.snapshot_create_xml("<domainsnapshot><name>s2</name><description>"
                                  f"{'x' * (512 << 10)}</description></domainsnapshot>")
    fresh = qdriver.Driver(driver.state_dir).lookup("big")
    assert fresh.current_snapshot().name == "s2" and fresh.snapshot_load_errors() == []
