"""Fork: new running domains from a memory snapshot, each with its own identity
and disks, the template never written; a real guest counts on in each."""
from __future__ import annotations

from pathlib import Path

import pytest

import qdriver
from qdriver.errors import ConfigUnsupportedError

from .helpers import GuestImage, run_cli, wait_console
from .helpers.checks import assert_resumes_from
from .helpers.guest import console_offset, counters_after
from .helpers.images import backing_of, sha256
from .helpers.templates import counting_guest, generation_id, memory_snapshot


async def test_forks_of_a_template_run_on_from_it_with_identities_of_their_own(
        driver: qdriver.Driver, guest_image: GuestImage, tmp_path: Path,
        state_dir: Path) -> None:
    src = await counting_guest(driver, guest_image, tmp_path)
    offset = console_offset(src)
    await src.snapshot_create_xml(memory_snapshot("t", tmp_path), template=True)
    at_snapshot = (await counters_after(src, offset, 1))[0]
    ram = tmp_path / "t.mem.ram"
    pristine = sha256(ram)
    await wait_console(src, f"COUNTER {at_snapshot + 4}")
    before_fork = at_snapshot + 4

    forks = await src.fork("t", "f1", "f2")
    run_cli(state_dir, "fork", "src", "t", "f3")
    forks.append(driver.lookup("f3"))
    for dom in forks:
        assert dom.state == qdriver.DomainState.RUNNING, dom.name
        assert_resumes_from(await counters_after(dom, 0, 3), at_snapshot, before_fork)
    everyone = [src, *forks]
    assert len({d.uuid for d in everyone}) == 4
    macs = [d.definition.interfaces[0].mac for d in everyone]
    assert len(set(macs)) == 4 and None not in macs, macs
    frozen = str(tmp_path / "src.qcow2")  # vda when t was taken
    for dom in forks:
        overlay = dom.definition.disks[0].source or ""
        assert overlay == f"{tmp_path}/{dom.name}.vda.qcow2" and backing_of(overlay) == frozen
    await wait_console(forks[0], f"COUNTER {before_fork + 2}")
    assert sha256(ram) == pristine, "a fork wrote into the template's RAM file"
    with pytest.raises(qdriver.QDriverError, match="running domain.*'f1', 'f2', 'f3'"):
        await src.delete_snapshot("t")


async def test_clones_and_reverted_guests_get_a_new_generation_id(
        driver: qdriver.Driver, guest_image: GuestImage, tmp_path: Path) -> None:
    src = await counting_guest(driver, guest_image, tmp_path, extra="<genid/>")
    first = src.definition.genid
    assert first is not None and await generation_id(src) == first
    await src.snapshot_create_xml(memory_snapshot("t", tmp_path), template=True)
    assert await generation_id(src) == first  # the same guest goes on, as a clone
    (fork,) = await src.fork("t", "f1")
    assert await generation_id(fork) == fork.definition.genid
    await src.revert_to_snapshot("t")
    reverted = await generation_id(src)
    assert len({first, fork.definition.genid, reverted}) == 3
    assert src.definition.genid == reverted == src.inactive_definition.genid
    await wait_console(src, "COUNTER")


async def test_a_fork_from_a_plain_memory_snapshot_loads_it(
        driver: qdriver.Driver, guest_image: GuestImage, tmp_path: Path) -> None:
    src = await counting_guest(driver, guest_image, tmp_path)
    offset = console_offset(src)
    await src.snapshot_create_xml(memory_snapshot("p", tmp_path))
    at_snapshot = (await counters_after(src, offset, 1))[0]
    await wait_console(src, f"COUNTER {at_snapshot + 3}")
    (fork,) = await src.fork("p", "plain")
    assert_resumes_from(await counters_after(fork, 0, 3), at_snapshot, at_snapshot + 3)
    record = fork.runtime.peek()
    assert record is not None and record.ram_template is None


async def test_bad_forks_are_refused_and_leave_nothing(
        driver: qdriver.Driver, guest_image: GuestImage, tmp_path: Path) -> None:
    src = await counting_guest(driver, guest_image, tmp_path)
    await src.snapshot_create_xml("<domainsnapshot><name>i</name></domainsnapshot>")
    await src.snapshot_create_xml(memory_snapshot("p", tmp_path))
    before = sorted(tmp_path.iterdir())
    with pytest.raises(qdriver.QDriverError, match="no external memory state to fork from"):
        await src.fork("i", "x")
    with pytest.raises(qdriver.QDriverError, match="domain 'src' already exists"):
        await src.fork("p", "src")
    with pytest.raises(qdriver.QDriverError, match="named twice"):
        await src.fork("p", "y", "y")
    (tmp_path / "z.vda.qcow2").write_bytes(b"someone else's")
    with pytest.raises(qdriver.QDriverError, match="fork overlay .* already exists"):
        await src.fork("p", "z")
    assert (tmp_path / "z.vda.qcow2").read_bytes() == b"someone else's"
    with pytest.raises(qdriver.QDriverError, match="fork overlay .* already exists"):
        await src.fork("p", "a", "z")  # the first is made, the second cannot be: neither stays
    assert (tmp_path / "z.vda.qcow2").read_bytes() == b"someone else's"
    (tmp_path / "z.vda.qcow2").unlink()
    assert sorted(tmp_path.iterdir()) == before
    assert [d.name for d in driver.list_domains()] == ["src"]
    assert src.interrupted_operation() is None


@pytest.mark.no_qemu
def test_a_disk_the_snapshot_did_not_freeze_is_refused() -> None:
    from qdriver.ops.fork_plan import plan_fork
    from qdriver.xml.snapshot import SnapshotDef
    snap = SnapshotDef.parse(
        "<domainsnapshot><name>s</name><state>running</state><creationTime>1</creationTime>"
        "<memory snapshot='external' file='/m/s.mem'/><disks><disk name='vda' "
        "snapshot='no'/></disks><domain type='qemu'><name>g</name><memory>1024</memory>"
        "<os><type machine='q35'>hvm</type></os><devices><disk type='file' device='disk'>"
        "<driver type='qcow2'/><source file='/d/a.qcow2'/><target dev='vda' bus='virtio'/>"
        "</disk></devices></domain></domainsnapshot>", redefine=True)
    with pytest.raises(ConfigUnsupportedError, match="disk 'vda' of snapshot 's' was not "
                       "frozen"):
        plan_fork(snap, ["x"], set())


@pytest.mark.no_qemu
def test_a_fork_name_a_domain_cannot_have_is_refused_before_anything() -> None:
    from qdriver.ops.fork_plan import plan_fork
    from qdriver.xml.snapshot import SnapshotDef
    snap = SnapshotDef.parse(
        "<domainsnapshot><name>s</name><state>running</state><creationTime>1</creationTime>"
        "<memory snapshot='external' file='/m/s.mem'/><domain type='qemu'><name>g</name>"
        "<memory>1024</memory><os><type machine='q35'>hvm</type></os><devices/></domain>"
        "</domainsnapshot>", redefine=True)
    for bad in ("a/b", ".hidden"):
        with pytest.raises(qdriver.InvalidArgError, match=f"name '{bad}' cannot contain"):
            plan_fork(snap, [bad], set())


@pytest.mark.no_qemu
def test_a_uefi_guest_is_not_forked_onto_one_variable_store() -> None:
    from qdriver.ops.fork_plan import plan_fork
    from qdriver.xml.snapshot import SnapshotDef
    snap = SnapshotDef.parse(
        "<domainsnapshot><name>s</name><state>running</state><creationTime>1</creationTime>"
        "<memory snapshot='external' file='/m/s.mem'/><domain type='qemu'><name>g</name>"
        "<memory>1024</memory><os firmware='efi'><type machine='pc-q35-7.2'>hvm</type>"
        "<loader readonly='yes' type='pflash'>/fw/code.fd</loader><nvram>/s/g_VARS.fd</nvram>"
        "</os><features><acpi/></features><devices/></domain></domainsnapshot>",
        redefine=True)
    with pytest.raises(ConfigUnsupportedError, match="forks would share one variable store"):
        plan_fork(snap, ["x"], set())
