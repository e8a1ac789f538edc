"""Reverting to internal snapshots: the planner row by row, then on the real guest.

Each real-guest test lets the guest run on and write after the snapshot,
reverts, and checks both the counter on the console (memory) and the one
the guest keeps on its disk are back at the snapshot point.
"""
from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Callable

import anyio
import pytest

import qdriver
from qdriver import DomainState, qemuimg
from qdriver.caps.running import RunningCaps
from qdriver.errors import SnapshotRevertRiskyError
from qdriver.ops.revert_exec import STEPS
from qdriver.ops.revert_plan import RevertFlags, RevertStep, plan_revert
from qdriver.xml.domain import DomainDef
from qdriver.xml.snapshot import SnapshotDef

from .helpers import (
    GuestImage,
    MakeDomain,
    assert_resumes_from,
    backing_of,
    console_offset,
    counters_after,
    disk_counter,
    disk_source,
    last_counter,
    run_cli,
    sha256,
    wait_console,
    within,
)

# -- the planner ------------------------------------------------------------------

DOMAIN = """<domain type='qemu'><name>r</name><uuid>11111111-2222-3333-4444-555555555555</uuid>
<memory unit='KiB'>262144</memory><os><type arch='x86_64' machine='q35'>hvm</type></os>
<devices><disk type='file' device='disk'><driver name='qemu' type='qcow2'/>
<source file='/images/r.qcow2'/><target dev='vda' bus='virtio'/></disk></devices></domain>"""


def snapshot(state: str, memory: str, disk: str = "internal", domain: str = DOMAIN) -> SnapshotDef:
    mem_file = " file='/images/r.mem'" if memory == "external" else ""
    return SnapshotDef.parse(
        f"<domainsnapshot><name>s</name><state>{state}</state><creationTime>1</creationTime>"
        f"<memory snapshot='{memory}'{mem_file}/>"
        f"<disks><disk name='vda' snapshot='{disk}'/></disks>{domain}</domainsnapshot>",
        redefine=True)


S = RevertStep
END = (S.SET_CURRENT, S.DROP_DISCARDED)


@pytest.mark.parametrize("dom_state, snap_state, memory, flags, mechanism, final, steps", [
    ("running", "running", "internal", {}, "load-in-place", "running",
     (S.PAUSE, S.SNAPSHOT_LOAD, S.RESUME, S.SET_CURRENT)),
    ("paused", "running", "internal", {}, "load-in-place", "running",
     (S.SNAPSHOT_LOAD, S.RESUME, S.SET_CURRENT)),
    ("running", "running", "internal", {"paused": True}, "load-in-place", "paused",
     (S.PAUSE, S.SNAPSHOT_LOAD, S.SET_CURRENT)),
    ("running", "paused", "internal", {}, "load-in-place", "paused",
     (S.PAUSE, S.SNAPSHOT_LOAD, S.SET_CURRENT)),
    ("shutoff", "running", "internal", {}, "restart-and-load", "running",
     (S.SWITCH_DEFINITION, S.START_PAUSED, S.SNAPSHOT_LOAD, S.RESUME, *END)),
    ("shutoff", "shutoff", "no", {}, "qemu-img-apply", "shutoff",
     (S.QEMU_IMG_APPLY, S.SWITCH_DEFINITION, *END)),
    ("running", "shutoff", "no", {}, "qemu-img-apply", "shutoff",
     (S.STOP, S.QEMU_IMG_APPLY, S.SWITCH_DEFINITION, *END)),
    ("running", "disk-snapshot", "no", {"running": True}, "qemu-img-apply", "running",
     (S.STOP, S.QEMU_IMG_APPLY, S.SWITCH_DEFINITION, S.START_PAUSED, S.RESUME, *END)),
    ("shutoff", "shutoff", "no", {"paused": True}, "qemu-img-apply", "paused",
     (S.QEMU_IMG_APPLY, S.SWITCH_DEFINITION, S.START_PAUSED, *END)),
])
@pytest.mark.no_qemu
def test_revert_plan_rows(dom_state: str, snap_state: str, memory: str, flags: dict[str, bool],
                          mechanism: str, final: str, steps: tuple[str, ...]) -> None:
    plan = plan_revert(DomainDef.parse(DOMAIN), dom_state, snapshot(snap_state, memory),
                       RevertFlags(**flags))
    assert (plan.mechanism, plan.state, plan.steps) == (mechanism, final, steps)
    assert plan.internal_disks == ("vda",) and plan.overlays == ()


EXT_END = (S.RECORD_REVERT_DISKS, S.SET_CURRENT, S.DROP_DISCARDED)


@pytest.mark.parametrize("dom_state, snap_state, memory, disk, flags, mechanism, final, steps", [
    ("running", "running", "external", "external", {}, "incoming", "running",
     (S.CHECK_MEMORY_FILE, S.STOP, S.CREATE_OVERLAYS, S.SWITCH_DEFINITION, S.START_INCOMING,
      S.LOAD_MEMORY_FILE, S.RESUME, *EXT_END)),
    ("shutoff", "paused", "external", "external", {}, "incoming", "paused",
     (S.CHECK_MEMORY_FILE, S.CREATE_OVERLAYS, S.SWITCH_DEFINITION, S.START_INCOMING,
      S.LOAD_MEMORY_FILE, *EXT_END)),
    ("running", "running", "external", "internal", {}, "incoming", "running",
     (S.CHECK_MEMORY_FILE, S.STOP, S.QEMU_IMG_APPLY, S.SWITCH_DEFINITION, S.START_INCOMING,
      S.LOAD_MEMORY_FILE, S.RESUME, *END)),
    ("running", "disk-snapshot", "no", "external", {}, "new-overlays", "shutoff",
     (S.STOP, S.CREATE_OVERLAYS, S.SWITCH_DEFINITION, *EXT_END)),
    ("shutoff", "shutoff", "no", "external", {"running": True}, "new-overlays", "running",
     (S.CREATE_OVERLAYS, S.SWITCH_DEFINITION, S.START_PAUSED, S.RESUME, *EXT_END)),
    ("running", "running", "internal", "external", {}, "restart-and-load", "running",
     (S.STOP, S.CREATE_OVERLAYS, S.SWITCH_DEFINITION, S.START_PAUSED, S.SNAPSHOT_LOAD,
      S.RESUME, *EXT_END)),
])
@pytest.mark.no_qemu
def test_external_revert_plan_rows(dom_state: str, snap_state: str, memory: str, disk: str,
                                   flags: dict[str, bool], mechanism: str, final: str,
                                   steps: tuple[str, ...]) -> None:
    plan = plan_revert(DomainDef.parse(DOMAIN), dom_state, snapshot(snap_state, memory, disk),
                       RevertFlags(**flags))
    assert (plan.mechanism, plan.state, plan.steps) == (mechanism, final, steps)
    if disk == "external":
        assert plan.overlays == (("vda", "/images/r.qcow2", "qcow2"),)
    assert plan.memory_file == ("/images/r.mem" if memory == "external" else None)


@pytest.mark.no_qemu
def test_an_internal_snapshot_under_a_later_overlay_needs_force() -> None:
    moved = DomainDef.parse(DOMAIN.replace("/images/r.qcow2", "/images/r.later"))
    with pytest.raises(SnapshotRevertRiskyError, match="disk vda has moved"):
        plan_revert(moved, "shutoff", snapshot("shutoff", "no"))
    plan = plan_revert(moved, "shutoff", snapshot("shutoff", "no"), RevertFlags(force=True))
    assert plan.definition.disks[0].source == "/images/r.qcow2"


@pytest.mark.no_qemu
def test_a_changed_definition_restarts_qemu() -> None:
    other = DOMAIN.replace("262144", "524288")
    plan = plan_revert(DomainDef.parse(DOMAIN), "running", snapshot("running", "internal",
                                                                    domain=other))
    assert plan.mechanism == "restart-and-load" and plan.steps[0] == S.STOP
    assert plan.definition.memory_kib == 524288


@pytest.mark.no_qemu
def test_hmp_loadvm_where_snapshot_load_is_missing() -> None:
    plan = plan_revert(DomainDef.parse(DOMAIN), "running", snapshot("running", "internal"),
                       caps=RunningCaps(snapshot_save=False))
    assert S.HMP_LOADVM in plan.steps and S.SNAPSHOT_LOAD not in plan.steps


@pytest.mark.no_qemu
def test_revert_refusals() -> None:
    dom = DomainDef.parse(DOMAIN)
    with pytest.raises(qdriver.InvalidArgError, match="mutually exclusive"):
        plan_revert(dom, "running", snapshot("running", "internal"), RevertFlags(True, True))
    bare = SnapshotDef.parse("<domainsnapshot><name>s</name><state>running</state>"
                             "<creationTime>1</creationTime></domainsnapshot>", redefine=True)
    with pytest.raises(SnapshotRevertRiskyError,
                       match="revert requires force: snapshot 's' lacks domain 'r'"):
        plan_revert(dom, "running", bare, RevertFlags(force=True))
    with pytest.raises(qdriver.OperationUnsupportedError, match="PMSUSPENDED"):
        plan_revert(dom, "running", snapshot("pmsuspended", "internal"))


@pytest.mark.no_qemu
def test_every_revert_step_has_an_executor_step() -> None:
    assert set(STEPS) == set(RevertStep)


# -- the real guest -----------------------------------------------------------------

async def snap_here(dom: qdriver.Domain, name: str, **flags: bool) -> int:
    """Take an internal snapshot; return the console counter at that point."""
    await dom.snapshot_create_xml(f"<domainsnapshot><name>{name}</name></domainsnapshot>",
                                  None, **flags)
    return last_counter(dom)


async def ready_line(dom: qdriver.Domain, offset: int) -> str:
    """The guest's whole GUEST-READY line past console ``offset`` (the serial console
    may show a line before its end), with a space after it for exact matching."""
    text = await wait_console(dom, "GUEST-READY", after=offset)
    while "\n" not in text.split("GUEST-READY", 1)[1]:
        await anyio.sleep(0.05)
        text = dom.paths.console_log.read_text(errors="replace")[offset:]
    return text.split("GUEST-READY", 1)[1].split("\n", 1)[0].rstrip("\r") + " "


async def test_internal_revert_in_the_same_qemu(booted: MakeDomain) -> None:
    dom = await booted()
    vda = disk_source(dom)
    at = await snap_here(dom, "s1")
    snap_disk = disk_counter(vda, "s1")
    await wait_console(dom, f"COUNTER {at + 15}")
    pid = dom.paths.pidfile.read_text()
    await dom.revert_to_snapshot("s1")
    offset = console_offset(dom)
    assert dom.paths.pidfile.read_text() == pid, "QEMU was restarted"
    assert dom.state == DomainState.RUNNING and dom.current_snapshot().name == "s1"
    # memory: counting goes on from the snapshot point, not from where it was
    assert_resumes_from(await counters_after(dom, offset, 4), snap_disk, at + 15)
    # the snapshot is still in the image, as taken
    assert [s.name for s in await qemuimg.snapshot_list(vda)] == ["s1"]
    await dom.destroy()


async def test_internal_revert_paused_puts_the_disk_back(booted: MakeDomain,
                                                         state_dir: Path) -> None:
    dom = await booted()
    vda = disk_source(dom)
    at = await snap_here(dom, "s1")
    await wait_console(dom, f"COUNTER {at + 10}")
    assert disk_counter(vda) > at + 5
    run_cli(state_dir, "snapshot-revert", "guest", "s1", "--paused")
    assert dom.state_reason()[0] == DomainState.PAUSED
    assert within(disk_counter(vda), at, at)  # the disk is back at the snapshot point
    frozen = last_counter(dom)
    await anyio.sleep(0.5)
    assert last_counter(dom) == frozen
    await dom.resume()
    await dom.destroy()


async def test_internal_revert_of_a_shut_off_domain_starts_a_new_qemu(booted: MakeDomain,
                                                                      state_dir: Path) -> None:
    dom = await booted()
    vda = disk_source(dom)
    at = await snap_here(dom, "s1")
    snap_disk = disk_counter(vda, "s1")
    await wait_console(dom, f"COUNTER {at + 10}")
    await dom.destroy()
    plan = await dom.plan_revert("s1")
    assert plan.mechanism == "restart-and-load"
    offset = console_offset(dom)
    run_cli(state_dir, "snapshot-revert", "guest", "--current")
    assert dom.state == DomainState.RUNNING
    assert_resumes_from(await counters_after(dom, offset, 4), snap_disk, at + 10)
    await dom.destroy()


async def test_offline_internal_revert(make_domain: MakeDomain, state_dir: Path) -> None:
    dom = await make_domain()
    vda = disk_source(dom)
    await dom.snapshot_create_xml("<domainsnapshot><name>o1</name></domainsnapshot>")
    await dom.start()
    await wait_console(dom, "COUNTER 8")
    await dom.destroy()
    assert disk_counter(vda) >= 7
    run_cli(state_dir, "snapshot-revert", "guest", "o1")
    assert dom.state == DomainState.SHUTOFF
    assert disk_counter(vda) == 0  # the image as it was before the first boot
    run_cli(state_dir, "snapshot-revert", "guest", "o1", "--running")
    assert "start=0 " in await ready_line(dom, console_offset(dom))
    await dom.destroy()


async def test_a_failing_step_names_itself_and_the_operation(make_domain: MakeDomain,
                                                           state_dir: Path) -> None:
    """The internal snapshot went from the image behind qdriver's back: the
    ``qemu-img snapshot -a`` step fails, and the error says which step of what."""
    dom = await make_domain()
    vda = disk_source(dom)
    await dom.snapshot_create_xml("<domainsnapshot><name>o2</name></domainsnapshot>")
    await qemuimg.snapshot_delete(vda, "o2")
    with pytest.raises(qemuimg.QemuImgError) as failed:
        await dom.revert_to_snapshot("o2")
    assert "in step 'qemu-img-apply' of snapshot-revert" in failed.value.__notes__
    r = run_cli(state_dir, "snapshot-revert", "guest", "o2", check=False)
    assert r.returncode == 1
    assert b"\n  in step 'qemu-img-apply' of snapshot-revert" in r.stderr


async def test_disk_only_internal_revert_stops_the_guest(booted: MakeDomain) -> None:
    dom = await booted()
    vda = disk_source(dom)
    await dom.snapshot_create_xml("<domainsnapshot><name>d1</name><memory snapshot='no'/>"
                                  "<disks><disk name='vda' snapshot='internal'/></disks>"
                                  "</domainsnapshot>")
    at = disk_counter(vda, "d1")
    await wait_console(dom, f"COUNTER {last_counter(dom) + 5}")
    await dom.revert_to_snapshot("d1")
    assert dom.state_reason() == (DomainState.SHUTOFF, "from snapshot")
    assert disk_counter(vda) == at


async def test_a_failed_revert_leaves_the_guest_as_it_was(booted: MakeDomain,
                                                          state_dir: Path) -> None:
    dom = await booted()
    vda = disk_source(dom)
    await snap_here(dom, "s1")
    async with dom.monitor() as mon:  # the image loses the snapshot behind qdriver's back
        await mon.hmp("delvm s1")
    r = run_cli(state_dir, "snapshot-revert", "guest", "s1", check=False)
    assert r.returncode == 1
    assert "missing vmstate section when reverting active internal snapshot 's1'" in \
        r.stderr.decode()
    assert "Traceback" not in r.stderr.decode()
    assert dom.state == DomainState.RUNNING  # resumed, same QEMU
    async with dom.monitor() as mon:
        assert (await mon.execute("query-status"))["status"] == "running"
    await keeps_counting_after(dom)
    assert await qemuimg.snapshot_list(vda) == ()
    await dom.destroy()


async def keeps_counting_after(dom: qdriver.Domain) -> None:
    await wait_console(dom, f"COUNTER {last_counter(dom) + 2}")




# -- external snapshots ----------------------------------------------------------------

async def test_external_memory_revert_starts_from_the_memory_file(booted: MakeDomain,
                                                                  state_dir: Path,
                                                                 tmp_path: Path) -> None:
    dom = await booted()
    base = disk_source(dom)
    mem = tmp_path / "e1.mem"
    run_cli(state_dir, "snapshot-create-as", "guest", "e1", "--memspec", str(mem))
    at = last_counter(dom)
    overlay = disk_source(dom)
    sums = {base: sha256(base), str(mem): sha256(mem)}
    snap_disk = disk_counter(base)
    await wait_console(dom, f"COUNTER {at + 10}")
    before_revert = last_counter(dom)
    run_cli(state_dir, "snapshot-revert", "guest", "e1")
    offset = console_offset(dom)
    assert dom.state == DomainState.RUNNING
    assert_resumes_from(await counters_after(dom, offset, 4), snap_disk, before_revert)
    new = disk_source(dom)
    assert new not in (base, overlay) and backing_of(new) == base
    assert {p: sha256(p) for p in sums} == sums, "an image the snapshot needs changed"
    assert Path(overlay).exists(), "the state after the snapshot stays as a branch"
    snap = dom.snapshot_tree().get("e1")
    assert [d.source for d in snap.revert_disks or ()] == [new]
    # a second revert replaces the first revert's overlay, which nothing names any more
    await dom.revert_to_snapshot("e1", paused=True)
    assert dom.state_reason()[0] == DomainState.PAUSED and not Path(new).exists()
    assert within(disk_counter(disk_source(dom)), snap_disk, snap_disk)
    await dom.destroy()


async def test_live_snapshot_revert(booted: MakeDomain, tmp_path: Path) -> None:
    dom = await booted()
    base = disk_source(dom)
    await dom.snapshot_create_xml(f"<domainsnapshot><name>l1</name><memory file='"
                                  f"{tmp_path / 'l1.mem'}'/></domainsnapshot>", live=True)
    snap_disk = disk_counter(base)
    at = last_counter(dom)
    await wait_console(dom, f"COUNTER {at + 10}")
    await dom.revert_to_snapshot("l1")
    offset = console_offset(dom)
    assert_resumes_from(await counters_after(dom, offset, 4), snap_disk, at + 10)
    await dom.destroy()


async def test_disk_only_external_revert(booted: MakeDomain, state_dir: Path) -> None:
    dom = await booted()
    base = disk_source(dom)
    run_cli(state_dir, "snapshot-create-as", "guest", "d1", "--disk-only")
    snap_disk = disk_counter(base)
    base_sum = sha256(base)
    await wait_console(dom, f"COUNTER {last_counter(dom) + 5}")
    run_cli(state_dir, "snapshot-revert", "guest", "d1")
    assert dom.state_reason() == (DomainState.SHUTOFF, "from snapshot")
    assert backing_of(disk_source(dom)) == base
    assert disk_counter(disk_source(dom)) == snap_disk
    assert sha256(base) == base_sum
    offset = console_offset(dom)
    run_cli(state_dir, "snapshot-revert", "guest", "d1", "--running")
    assert f"start={snap_disk} " in await ready_line(dom, offset)
    await dom.destroy()


async def test_mixed_internal_memory_external_disk_revert(booted: MakeDomain,
                                                          tmp_path: Path) -> None:
    """Beyond libvirt: memory inside vda, an overlay for vdb; revert loads vda's snapshot
    in a new QEMU on a fresh overlay over vdb's snapshot-time image."""
    dom = await booted(disks=2)
    vdb = disk_source(dom, 1)
    await dom.snapshot_create_xml(
        "<domainsnapshot><name>m1</name><memory snapshot='internal'/><disks>"
        "<disk name='vda' snapshot='internal'/><disk name='vdb' snapshot='external'/>"
        "</disks></domainsnapshot>")
    at = last_counter(dom)
    vda_at = disk_counter(disk_source(dom), "m1")
    await wait_console(dom, f"COUNTER {at + 10}")
    plan = await dom.plan_revert("m1")
    assert plan.mechanism == "restart-and-load"
    await dom.revert_to_snapshot("m1")
    offset = console_offset(dom)
    assert_resumes_from(await counters_after(dom, offset, 4), vda_at, at + 10)
    assert backing_of(disk_source(dom, 1)) == vdb
    await dom.destroy()


@pytest.mark.parametrize("damage, message", [
    ("missing", "memory file '{mem}' does not exist"),
    ("partial", "memory file '{mem}' is incomplete (LibvirtQemudPart)"),
    ("foreign", "'{mem}' is not a readable memory file"),
])
async def test_a_bad_memory_file_is_refused_before_anything_changes(
        booted: MakeDomain, state_dir: Path, tmp_path: Path, damage: str, message: str) -> None:
    dom = await booted()
    mem = tmp_path / "b1.mem"
    await dom.snapshot_create_xml(f"<domainsnapshot><name>b1</name><memory file='{mem}'/>"
                                  "</domainsnapshot>")
    if damage == "missing":
        mem.unlink()
    elif damage == "partial":
        with open(mem, "r+b") as f:
            f.write(b"LibvirtQemudPart")
    else:
        mem.write_bytes(b"\0" * 4096)
    definition, pid = dom.xml_desc(inactive=True), dom.paths.pidfile.read_text()
    files = sorted(tmp_path.iterdir())
    r = run_cli(state_dir, "snapshot-revert", "guest", "b1", check=False)
    assert r.returncode == 1 and message.format(mem=mem) in r.stderr.decode(), r.stderr
    assert dom.paths.pidfile.read_text() == pid and dom.state == DomainState.RUNNING
    assert dom.xml_desc(inactive=True) == definition and sorted(tmp_path.iterdir()) == files
    await dom.destroy()


async def test_a_truncated_memory_file_leaves_the_domain_shut_off_and_true(
        booted: MakeDomain, state_dir: Path, tmp_path: Path) -> None:
    dom = await booted()
    mem = tmp_path / "t1.mem"
    await dom.snapshot_create_xml(f"<domainsnapshot><name>t1</name><memory file='{mem}'/>"
                                  "</domainsnapshot>")
    os.truncate(mem, mem.stat().st_size // 2)
    definition = dom.xml_desc(inactive=True)
    files = sorted(tmp_path.iterdir())
    r = run_cli(state_dir, "snapshot-revert", "guest", "t1", check=False)
    assert r.returncode == 1 and str(mem) in r.stderr.decode(), r.stderr
    assert "Traceback" not in r.stderr.decode()
    assert dom.state == DomainState.SHUTOFF
    assert dom.xml_desc(inactive=True) == definition, "the definition was left switched"
    assert sorted(tmp_path.iterdir()) == files, "a revert overlay was left behind"
    assert dom.current_snapshot().name == "t1"


async def test_a_missing_backing_image_is_refused_before_anything_changes(
        make_domain: MakeDomain, state_dir: Path) -> None:
    dom = await make_domain()
    base = disk_source(dom)
    run_cli(state_dir, "snapshot-create-as", "guest", "x1", "--disk-only")
    os.rename(base, base + ".moved")
    r = run_cli(state_dir, "snapshot-revert", "guest", "x1", check=False)
    assert r.returncode == 1
    assert f"Cannot access storage file '{base}'" in r.stderr.decode()
    assert dom.snapshot_tree().get("x1").revert_disks is None
    os.rename(base + ".moved", base)


async def test_offline_external_revert(make_domain: MakeDomain, state_dir: Path) -> None:
    dom = await make_domain()
    base = disk_source(dom)
    run_cli(state_dir, "snapshot-create-as", "guest", "x1", "--disk-only")
    base_sum = sha256(base)
    await dom.start()
    await wait_console(dom, "COUNTER 6")
    await dom.destroy()
    assert disk_counter(disk_source(dom)) >= 5
    run_cli(state_dir, "snapshot-revert", "guest", "x1")
    assert dom.state == DomainState.SHUTOFF
    top = disk_source(dom)
    assert backing_of(top) == base and disk_counter(top) == 0
    assert sha256(base) == base_sum


async def test_external_memory_with_internal_disk_revert(booted: MakeDomain,
                                                         tmp_path: Path) -> None:
    """Beyond libvirt: memory to a file, vda snapshotted inside its image."""
    dom = await booted()
    vda = disk_source(dom)
    mem = tmp_path / "x2.mem"
    await dom.snapshot_create_xml(
        f"<domainsnapshot><name>x2</name><memory snapshot='external' file='{mem}'/><disks>"
        "<disk name='vda' snapshot='internal'/></disks></domainsnapshot>")
    snap_disk = disk_counter(vda, "x2")
    at = last_counter(dom)
    await wait_console(dom, f"COUNTER {at + 10}")
    plan = await dom.plan_revert("x2")
    assert plan.mechanism == "incoming" and S.QEMU_IMG_APPLY in plan.steps
    await dom.revert_to_snapshot("x2")
    offset = console_offset(dom)
    assert disk_source(dom) == vda
    assert_resumes_from(await counters_after(dom, offset, 4), snap_disk, at + 10)
    await dom.destroy()


@pytest.mark.no_qemu
def test_a_managed_save_is_removed_and_needs_force_without_memory() -> None:
    dom = DomainDef.parse(DOMAIN)
    with pytest.raises(SnapshotRevertRiskyError, match="removal of existing managed saved"):
        plan_revert(dom, "shutoff", snapshot("shutoff", "no"), managed_save=True)
    plan = plan_revert(dom, "shutoff", snapshot("shutoff", "no"), RevertFlags(force=True),
                       managed_save=True)
    assert plan.steps[-1] == S.REMOVE_MANAGED_SAVE
    with_memory = plan_revert(dom, "shutoff", snapshot("running", "internal"),
                              managed_save=True)
    assert with_memory.steps[-1] == S.REMOVE_MANAGED_SAVE


async def test_load_progress_and_qemu_killed_during_the_load(booted: MakeDomain,
                                                             tmp_path: Path) -> None:
    dom = await booted()
    mem = tmp_path / "k1.mem"
    await dom.snapshot_create_xml(f"<domainsnapshot><name>k1</name><memory file='{mem}'/>"
                                  "</domainsnapshot>")
    seen: list[qdriver.Progress] = []
    await dom.revert_to_snapshot("k1", progress=seen.append)
    assert seen and seen[-1].phase == "load" and seen[-1].total > 0
    definition = dom.xml_desc(inactive=True)
    files = sorted(tmp_path.iterdir())

    def kill_qemu(p: qdriver.Progress) -> None:
        if dom.paths.pidfile.exists():
            os.kill(int(dom.paths.pidfile.read_text()), 9)
    with pytest.raises(qdriver.OperationFailedError,
                       match=f"loading memory file '{mem}'"):
        await dom.revert_to_snapshot("k1", progress=kill_qemu)
    assert dom.state == DomainState.SHUTOFF
    assert dom.xml_desc(inactive=True) == definition
    assert sorted(tmp_path.iterdir()) == files, "a revert overlay was left behind"


async def test_a_full_disk_while_creating_revert_overlays(make_domain: MakeDomain,
                                                          small_tmpfs: Callable[..., Path],
                                                          guest_image: GuestImage,
                                                          state_dir: Path) -> None:
    where = small_tmpfs(size="4m")
    disk = where / "vda.qcow2"
    disk.write_bytes(guest_image.disk.read_bytes())
    dom = await make_domain(with_disk=False)
    await qdriver.Driver(state_dir).define_xml(
        dom.xml_desc(inactive=True).replace("<devices>", f"""<devices>
    <disk type='file' device='disk'><driver name='qemu' type='qcow2'/>
      <source file='{disk}'/><target dev='vda' bus='virtio'/></disk>""").replace(
            "qd.disk=none", ""))
    await dom.start()
    await wait_console(dom, "COUNTER 3")
    run_cli(state_dir, "snapshot-create-as", "guest", "f1", "--disk-only")
    await dom.destroy()
    subprocess.run(["dd", "if=/dev/zero", f"of={where / 'filler'}", "bs=64k"],
                   capture_output=True)  # fill the file system
    definition = dom.xml_desc(inactive=True)
    files = sorted(where.iterdir())
    r = run_cli(state_dir, "snapshot-revert", "guest", "f1", check=False)
    assert r.returncode == 1 and "No space left on device" in r.stderr.decode(), r.stderr
    assert "Traceback" not in r.stderr.decode()
    assert dom.xml_desc(inactive=True) == definition and sorted(where.iterdir()) == files
    assert dom.snapshot_tree().get("f1").revert_disks is None


GENID = "aaaaaaaa-1111-2222-3333-444444444444"


@pytest.mark.no_qemu
@pytest.mark.parametrize("dom_state, snap_state, memory, disk, flags, new_genid", [
    ("shutoff", "running", "internal", "internal", {}, True),
    ("running", "running", "external", "external", {}, True),
    ("shutoff", "shutoff", "no", "external", {"running": True}, True),
    ("running", "shutoff", "no", "internal", {}, False),
    ("running", "disk-snapshot", "no", "external", {}, False),
])
def test_a_revert_after_which_the_guest_runs_gives_it_a_new_genid(
        dom_state: str, snap_state: str, memory: str, disk: str, flags: dict[str, bool],
        new_genid: bool) -> None:
    with_genid = DOMAIN.replace("</uuid>", f"</uuid><genid>{GENID}</genid>")
    plan = plan_revert(DomainDef.parse(with_genid), dom_state,
                       snapshot(snap_state, memory, disk, domain=with_genid),
                       RevertFlags(**flags))
    assert plan.definition.genid is not None
    assert (plan.definition.genid != GENID) == new_genid


@pytest.mark.no_qemu
def test_a_genid_guest_reverts_in_place_only_by_restarting_with_force() -> None:
    with_genid = DOMAIN.replace("</uuid>", f"</uuid><genid>{GENID}</genid>")
    dom, snap = DomainDef.parse(with_genid), snapshot("running", "internal", domain=with_genid)
    with pytest.raises(SnapshotRevertRiskyError,
                       match="revert requires force: domain genid update requires restart"):
        plan_revert(dom, "running", snap)
    plan = plan_revert(dom, "running", snap, RevertFlags(force=True))
    assert plan.mechanism == "restart-and-load" and plan.steps[0] == S.STOP
    assert plan.definition.genid not in (None, GENID)


UEFI_DOMAIN = DOMAIN.replace(
    "<os><type arch='x86_64' machine='q35'>hvm</type></os>",
    "<os firmware='efi'><type arch='x86_64' machine='pc-q35-7.2'>hvm</type><loader "
    "readonly='yes' type='pflash'>/fw/code.fd</loader><nvram>/s/r_VARS.fd</nvram></os>"
    "<features><acpi/></features>")


@pytest.mark.parametrize("dom_state, snap_state, memory, disk, before", [
    ("running", "running", "internal", "internal", S.SNAPSHOT_LOAD),  # paused, in place
    ("shutoff", "running", "internal", "internal", S.START_PAUSED),  # before QEMU opens it
    ("running", "running", "external", "external", S.START_INCOMING),
    ("running", "shutoff", "no", "internal", S.QEMU_IMG_APPLY),  # before the disks change
])
@pytest.mark.no_qemu
def test_a_uefi_revert_puts_the_variable_store_back_before_it_is_used(
        dom_state: str, snap_state: str, memory: str, disk: str, before: RevertStep) -> None:
    snap = snapshot(snap_state, memory, disk, UEFI_DOMAIN)
    steps = plan_revert(DomainDef.parse(UEFI_DOMAIN), dom_state, snap).steps
    assert steps.count(S.RESTORE_NVRAM) == 1
    assert steps[steps.index(S.RESTORE_NVRAM) + 1] == before, steps
    plain = plan_revert(DomainDef.parse(DOMAIN), dom_state, snapshot(snap_state, memory, disk))
    assert S.RESTORE_NVRAM not in plain.steps
