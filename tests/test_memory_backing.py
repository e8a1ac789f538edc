"""``<memoryBacking>``: the guest RAM's source and mapping, as libvirt writes it.

Rows for the parser and the command line (pure), then real QEMUs: a guest
running on file-backed shared RAM (the mapping memory templates build on),
whose internal snapshot reverts, and a memfd backend seen through QMP.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

import qdriver
from qdriver.errors import ConfigUnsupportedError
from qdriver.launch import cmdline
from qdriver.ops.create_plan import CreateFlags, CreateStep, plan_snapshot
from qdriver.paths import DomainPaths
from qdriver.xml.domain import DomainDef, MemoryBacking
from qdriver.xml.snapshot import SnapshotDef

from .helpers import GuestImage, last_counter, wait_console
from .helpers.checks import assert_resumes_from
from .helpers.guest import console_offset, counters_after, domain_xml
from .helpers.images import sha256

BASE = """<domain type='qemu'><name>m</name><memory unit='MiB'>128</memory>
  {backing}<os><type arch='x86_64' machine='q35'>hvm</type><kernel>/k</kernel></os>
  <devices/></domain>"""


def parse(backing: str) -> DomainDef:
    return DomainDef.parse(BASE.format(backing=f"<memoryBacking>{backing}</memoryBacking>"))


@pytest.mark.no_qemu
@pytest.mark.parametrize("backing, expected", [
    ("", MemoryBacking()),
    ("<source type='file'/><access mode='shared'/>", MemoryBacking("file", shared=True)),
    ("<source type='memfd'/>", MemoryBacking("memfd")),
    ("<source type='anonymous'/><access mode='private'/>", MemoryBacking()),
    ("<nosharepages/><locked/>", MemoryBacking(merge=False, locked=True)),
    ("<source type='file'/><discard/>", MemoryBacking("file", discard=True)),
    ("<allocation mode='immediate' threads='2'/>",
     MemoryBacking(prealloc=True, prealloc_threads=2)),
])
def test_parsed(backing: str, expected: MemoryBacking) -> None:
    d = parse(backing)
    assert (d.memory_backing, d.unsupported) == (expected, [])


@pytest.mark.no_qemu
@pytest.mark.parametrize("backing, named", [
    ("<hugepages/>", "<memoryBacking><hugepages>"),
    ("<source type='shm'/>", "<memoryBacking><source type='shm'>"),
    ("<access mode='both'/>", "<memoryBacking><access mode='both'>"),
    ("<allocation mode='sometimes'/>", "<memoryBacking><allocation mode='sometimes'>"),
    ("<source type='memfd'/><discard/>",
     "<memoryBacking><discard/> with <source type='memfd'>"),
])
def test_refused_at_define_by_name(tmp_path: Path, backing: str, named: str) -> None:
    assert parse(backing).unsupported == [named]
    with pytest.raises(ConfigUnsupportedError, match=named.replace("/", ".")):
        qdriver.driver.checked_definition(BASE.format(
            backing=f"<memoryBacking>{backing}</memoryBacking>"))


def argv(tmp_path: Path, backing: str) -> list[str]:
    return cmdline.build(parse(backing), DomainPaths.of(tmp_path, "m"), "tcg")


def after(args: list[str], flag: str) -> list[str]:
    return [args[i + 1] for i, a in enumerate(args) if a == flag]


@pytest.mark.no_qemu
def test_command_line(tmp_path: Path) -> None:
    plain = argv(tmp_path, "")
    assert after(plain, "-object") == [] and "memory-backend" not in after(plain, "-machine")[0]
    shared = argv(tmp_path, "<source type='file'/><access mode='shared'/><nosharepages/>")
    backend = json.loads(after(shared, "-object")[0])
    assert backend == {"qom-type": "memory-backend-file", "id": "pc.ram",
                       "size": 128 << 20, "share": True, "merge": False,
                       "mem-path": str(DomainPaths.of(tmp_path, "m").ram_file)}
    assert "memory-backend=pc.ram" in after(shared, "-machine")[0].split(",")
    assert after(shared, "-m") == ["size=131072k"]
    memfd = json.loads(after(argv(tmp_path, "<source type='memfd'/>"), "-object")[0])
    assert (memfd["qom-type"], memfd["share"]) == ("memory-backend-memfd", False)
    merged = argv(tmp_path, "<nosharepages/><locked/>")
    assert after(merged, "-object") == [] and "mem-merge=off" in after(merged, "-machine")[0]
    assert after(merged, "-overcommit") == ["mem-lock=on"]


@pytest.mark.no_qemu
@pytest.mark.parametrize("read_only, extra", [
    (False, {}), (True, {"readonly": True, "rom": "off"})])
def test_a_clone_maps_its_template_privately(tmp_path: Path, read_only: bool,
                                             extra: dict[str, object]) -> None:
    d = parse("<source type='file'/><access mode='shared'/>")
    args = cmdline.build(d, DomainPaths.of(tmp_path, "m"), "tcg", ram_template="/t/s.mem.ram",
                         read_only_ram=read_only)
    assert json.loads(after(args, "-object")[0]) == {
        "qom-type": "memory-backend-file", "id": "pc.ram", "size": 128 << 20,
        "share": False, "mem-path": "/t/s.mem.ram", **extra}


def with_backing(xml: str, backing: str) -> str:
    return xml.replace("<vcpu>", f"<memoryBacking>{backing}</memoryBacking>\n  <vcpu>", 1)


async def test_a_guest_runs_and_reverts_on_shared_file_ram(
        driver: qdriver.Driver, guest_image: GuestImage, tmp_path: Path) -> None:
    disk = tmp_path / "fileram.qcow2"
    shutil.copyfile(guest_image.disk, disk)
    xml = with_backing(domain_xml(guest_image, "fileram", disk),
                       "<source type='file'/><access mode='shared'/>")
    dom = await driver.define_xml(xml)
    await dom.start()
    await wait_console(dom, "COUNTER 2")
    ram = dom.paths.ram_file
    assert ram.stat().st_size == 256 << 20
    async with dom.monitor() as mon:
        (memdev,) = await mon.execute("query-memdev")
    assert (memdev["id"], memdev["share"], memdev["size"]) == ("pc.ram", True, 256 << 20)
    offset = console_offset(dom)
    await dom.snapshot_create_xml("<domainsnapshot><name>s</name></domainsnapshot>")
    at_snapshot = (await counters_after(dom, offset, 1))[0]
    await wait_console(dom, f"COUNTER {at_snapshot + 8}")
    offset, before_revert = console_offset(dom), last_counter(dom)
    await dom.revert_to_snapshot("s")
    assert_resumes_from(await counters_after(dom, offset, 3), at_snapshot, before_revert)
    await dom.destroy()
    assert not os.path.exists(ram), "the RAM file outlived its QEMU"


async def test_a_memfd_backend_is_what_qemu_runs(
        driver: qdriver.Driver, guest_image: GuestImage) -> None:
    xml = with_backing(domain_xml(guest_image, "memfd", None),
                       "<source type='memfd'/><access mode='shared'/>")
    dom = await driver.define_xml(xml)
    await dom.start(paused=True)
    async with dom.monitor() as mon:
        (memdev,) = await mon.execute("query-memdev")
        objects = await mon.execute("qom-list", {"path": "/objects"})
    assert (memdev["id"], memdev["share"]) == ("pc.ram", True)
    assert {"name": "pc.ram", "type": "child<memory-backend-memfd>"} in objects
    await dom.destroy()


def template_xml(name: str, memory: Path) -> str:
    return (f"<domainsnapshot><name>{name}</name>"
            f"<memory snapshot='external' file='{memory}'/></domainsnapshot>")


async def test_a_template_snapshot_reverts_as_a_clone_that_never_writes_it(
        driver: qdriver.Driver, guest_image: GuestImage, tmp_path: Path) -> None:
    disk = tmp_path / "tmpl.qcow2"
    shutil.copyfile(guest_image.disk, disk)
    dom = await driver.define_xml(with_backing(
        domain_xml(guest_image, "tmpl", disk), "<source type='file'/><access mode='shared'/>"))
    await dom.start()
    await wait_console(dom, "COUNTER 2")
    memory = tmp_path / "t1.mem"
    offset = console_offset(dom)
    await dom.snapshot_create_xml(template_xml("t1", memory), template=True)
    at_snapshot = (await counters_after(dom, offset, 1))[0]
    ram = Path(f"{memory}.ram")
    assert ram.stat().st_size == 256 << 20
    assert memory.stat().st_size < 4 << 20, "the RAM went into the memory file too"
    pristine = sha256(ram)
    await wait_console(dom, f"COUNTER {at_snapshot + 8}")

    offset, before_revert = console_offset(dom), last_counter(dom)
    await dom.revert_to_snapshot("t1")
    resumed = await counters_after(dom, offset, 3)
    assert_resumes_from(resumed, at_snapshot, before_revert)
    assert dom.state == qdriver.DomainState.RUNNING
    await wait_console(dom, f"COUNTER {resumed[-1] + 3}", after=offset)
    assert sha256(ram) == pristine, "the clone wrote into the template's RAM file"
    with pytest.raises(qdriver.QDriverError, match="runs as a clone of template RAM file"):
        await dom.snapshot_create_xml(template_xml("t2", tmp_path / "t2.mem"), template=True)
    assert not (tmp_path / "t2.mem").exists() and not (tmp_path / "t2.mem.ram").exists()
    with pytest.raises(qdriver.QDriverError, match="memory template of running domain.*'tmpl'"):
        await dom.delete_snapshot("t1")
    assert sha256(ram) == pristine and memory.exists()
    elsewhere = qdriver.Driver(tmp_path / "elsewhere")  # a restore of it, on a disk copy
    shutil.copyfile(guest_image.disk, tmp_path / "copy.qcow2")
    with pytest.raises(qdriver.QDriverError, match=f"memory file '{memory}' is a memory "
                       "template's.*revert to its snapshot or fork it"):
        await elsewhere.restore(memory, xml=dom.inactive_definition.with_disk_sources(
            {"vda": (str(tmp_path / "copy.qcow2"), "qcow2")}).to_xml())
    assert elsewhere.list_domains() == []
    shutil.rmtree(qdriver.paths.socket_root(tmp_path / "elsewhere"), ignore_errors=True)
    # a plain memory snapshot of the clone holds its whole RAM, and reverts like any other
    plain = tmp_path / "p.mem"
    await dom.snapshot_create_xml(f"<domainsnapshot><name>p</name><memory snapshot='external' "
                                  f"file='{plain}'/></domainsnapshot>")
    assert plain.stat().st_size > 16 << 20
    offset = console_offset(dom)
    await dom.revert_to_snapshot("p")
    await counters_after(dom, offset, 2)
    await dom.delete_snapshot("p")
    # and so does an internal one, in a QEMU started afresh (its stream must not ask
    # for x-ignore-shared, which only the clone's QEMU had on)
    await dom.snapshot_create_xml("<domainsnapshot><name>i</name></domainsnapshot>")
    await dom.destroy()
    offset = console_offset(dom)
    await dom.revert_to_snapshot("i")
    await counters_after(dom, offset, 2)
    await dom.destroy()
    await dom.delete_snapshot("t1")
    assert not memory.exists() and not ram.exists()
    await dom.delete_snapshot("i")


async def test_a_template_needs_shared_file_ram(
        driver: qdriver.Driver, guest_image: GuestImage, tmp_path: Path) -> None:
    dom = await driver.define_xml(domain_xml(guest_image, "plain", None))
    await dom.start(paused=True)
    with pytest.raises(ConfigUnsupportedError, match=r"<memoryBacking><source type='file'/>"
                       r"<access mode='shared'/></memoryBacking> in domain 'plain'"):
        await dom.snapshot_create_xml(template_xml("t", tmp_path / "t.mem"), template=True)
    assert list(tmp_path.glob("t.mem*")) == []
    await dom.destroy()


SHARED = BASE.replace("<devices/>", "<devices><disk type='file' device='disk'><driver "
                      "type='qcow2'/><source file='/d/a.qcow2'/><target dev='vda' "
                      "bus='virtio'/></disk></devices>")


@pytest.mark.no_qemu
@pytest.mark.parametrize("state, flags, error", [
    ("shutoff", {}, "external memory snapshot of an active domain"),
    ("running", {"live": True}, "external memory snapshot of an active domain"),
    ("running", {"halt": True}, "external memory snapshot of an active domain"),
])
def test_template_plan_refusals(state: str, flags: dict[str, bool], error: str) -> None:
    domain = DomainDef.parse(SHARED.format(backing="<memoryBacking><source type='file'/>"
                                           "<access mode='shared'/></memoryBacking>"))
    xml = "<domainsnapshot><name>t</name><memory snapshot='external' file='/m/t'/>" \
          "</domainsnapshot>" if state != "shutoff" else "<domainsnapshot><name>t</name>" \
          "</domainsnapshot>"
    with pytest.raises(qdriver.QDriverError, match=error):
        plan_snapshot(domain, state, xml, CreateFlags(template=True, **flags))


@pytest.mark.no_qemu
def test_template_plan_switches_to_a_clone_after_the_devices() -> None:
    domain = DomainDef.parse(SHARED.format(backing="<memoryBacking><source type='file'/>"
                                           "<access mode='shared'/></memoryBacking>"))
    plan = plan_snapshot(domain, "running", "<domainsnapshot><name>t</name><memory "
                         "snapshot='external' file='/m/t'/></domainsnapshot>",
                         CreateFlags(template=True))
    steps = list(plan.steps)
    assert CreateStep.RESUME not in steps
    assert steps.index(CreateStep.MIGRATE_TO_FILE) < steps.index(CreateStep.TRANSACTION) < \
        steps.index(CreateStep.SWITCH_DEFINITION) < steps.index(CreateStep.SWITCH_TO_CLONE) \
        == steps.index(CreateStep.WRITE_METADATA) - 1
    assert plan.definition.template_ram == "/m/t.ram"
    stored = SnapshotDef.parse(plan.definition.format(internal=True))
    assert stored.template_ram == "/m/t.ram", "the metadata file does not keep the RAM file"
