"""Reverting to internal snapshots: the planner row by row, then on the real guest.

Each real-guest test lets the guest run on and write after the snapshot,
reverts, and checks both the counter on the console (memory) and the one
the guest keeps on its disk are back at the snapshot point.
"""
from __future__ import annotations

import os
from pathlib import Path

import anyio
import pytest

import qdriver
from qdriver import DomainState, qemuimg
from qdriver.errors import SnapshotRevertRiskyError
from qdriver.ops.create_plan import HostCaps
from qdriver.ops.revert_exec import STEPS
from qdriver.ops.revert_plan import RevertFlags, RevertStep, plan_revert
from qdriver.xml.domain import DomainDef
from qdriver.xml.snapshot import SnapshotDef

from .conftest import disk_counter, last_counter, run_cli, wait_console
from .test_snapshot_create import booted, within

# -- the planner ------------------------------------------------------------------

DOMAIN = """<domain type='qemu'><name>r</name><uuid>11111111-2222-3333-4444-555555555555</uuid>
<memory unit='KiB'>262144</memory><os><type arch='x86_64' machine='q35'>hvm</type></os>
<devices><disk type='file' device='disk'><driver name='qemu' type='qcow2'/>
<source file='/images/r.qcow2'/><target dev='vda' bus='virtio'/></disk></devices></domain>"""


def snapshot(state: str, memory: str, disk: str = "internal", domain: str = DOMAIN) -> SnapshotDef:
    return SnapshotDef.parse(
        f"<domainsnapshot><name>s</name><state>{state}</state><creationTime>1</creationTime>"
        f"<memory snapshot='{memory}'/><disks><disk name='vda' snapshot='{disk}'/></disks>"
        f"{domain}</domainsnapshot>", redefine=True)


S = RevertStep


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
     (S.SWITCH_DEFINITION, S.START_PAUSED, S.SNAPSHOT_LOAD, S.RESUME, S.SET_CURRENT)),
    ("shutoff", "shutoff", "no", {}, "qemu-img-apply", "shutoff",
     (S.QEMU_IMG_APPLY, S.SWITCH_DEFINITION, S.SET_CURRENT)),
    ("running", "shutoff", "no", {}, "qemu-img-apply", "shutoff",
     (S.STOP, S.QEMU_IMG_APPLY, S.SWITCH_DEFINITION, S.SET_CURRENT)),
    ("running", "disk-snapshot", "no", {"running": True}, "qemu-img-apply", "running",
     (S.STOP, S.QEMU_IMG_APPLY, S.SWITCH_DEFINITION, S.START_PAUSED, S.RESUME,
      S.SET_CURRENT)),
    ("shutoff", "shutoff", "no", {"paused": True}, "qemu-img-apply", "paused",
     (S.QEMU_IMG_APPLY, S.SWITCH_DEFINITION, S.START_PAUSED, S.SET_CURRENT)),
])
def test_revert_plan_rows(dom_state: str, snap_state: str, memory: str, flags: dict,
                          mechanism: str, final: str, steps: tuple) -> None:
    plan = plan_revert(DomainDef.parse(DOMAIN), dom_state, snapshot(snap_state, memory),
                       RevertFlags(**flags))
    assert (plan.mechanism, plan.state, plan.steps) == (mechanism, final, steps)
    assert plan.internal_disks == ("vda",)


def test_a_changed_definition_restarts_qemu() -> None:
    other = DOMAIN.replace("262144", "524288")
    plan = plan_revert(DomainDef.parse(DOMAIN), "running", snapshot("running", "internal",
                                                                    domain=other))
    assert plan.mechanism == "restart-and-load" and plan.steps[0] == S.STOP
    assert plan.definition.memory_kib == 524288


def test_hmp_loadvm_where_snapshot_load_is_missing() -> None:
    plan = plan_revert(DomainDef.parse(DOMAIN), "running", snapshot("running", "internal"),
                       caps=HostCaps(snapshot_save=False))
    assert S.HMP_LOADVM in plan.steps and S.SNAPSHOT_LOAD not in plan.steps


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
    with pytest.raises(qdriver.NoSupportError, match="external snapshot 's' is not implemented"):
        plan_revert(dom, "running", snapshot("disk-snapshot", "no", "external"))


def test_every_revert_step_has_an_executor_step() -> None:
    assert set(STEPS) == set(RevertStep)


# -- the real guest -----------------------------------------------------------------

async def snap_here(dom: qdriver.Domain, name: str, **flags: bool) -> int:
    """Take an internal snapshot; return the console counter at that point."""
    await dom.snapshot_create_xml(f"<domainsnapshot><name>{name}</name></domainsnapshot>",
                                  **flags)
    return last_counter(dom)


def console_offset(dom: qdriver.Domain) -> int:
    """Where the console text ends now (in characters, as `wait_console` counts)."""
    log = dom.paths.console_log
    return len(log.read_text(errors="replace")) if log.exists() else 0


async def counters_after(dom: qdriver.Domain, offset: int, count: int = 2) -> list[int]:
    """The next ``count`` COUNTER values printed after console offset ``offset``."""
    text = await wait_console(dom, "COUNTER", after=offset)
    while len([ln for ln in text.splitlines() if ln.startswith("COUNTER ")]) < count:
        await anyio.sleep(0.05)
        text = dom.paths.console_log.read_text(errors="replace")[offset:]
    return [int(ln.split()[1]) for ln in text.splitlines() if ln.startswith("COUNTER ")][:count]


async def test_internal_revert_in_the_same_qemu(make_domain) -> None:
    dom = await booted(make_domain)
    vda = dom.definition.disks[0].source
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


async def test_internal_revert_paused_puts_the_disk_back(make_domain, state_dir: Path) -> None:
    dom = await booted(make_domain)
    vda = dom.definition.disks[0].source
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


async def test_internal_revert_of_a_shut_off_domain_starts_a_new_qemu(make_domain,
                                                                      state_dir: Path) -> None:
    dom = await booted(make_domain)
    vda = dom.definition.disks[0].source
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


async def test_offline_internal_revert(make_domain, state_dir: Path) -> None:
    dom = await make_domain()
    vda = dom.definition.disks[0].source
    await dom.snapshot_create_xml("<domainsnapshot><name>o1</name></domainsnapshot>")
    await dom.start()
    await wait_console(dom, "COUNTER 8")
    await dom.destroy()
    assert disk_counter(vda) >= 7
    run_cli(state_dir, "snapshot-revert", "guest", "o1")
    assert dom.state == DomainState.SHUTOFF
    assert disk_counter(vda) == 0  # the image as it was before the first boot
    run_cli(state_dir, "snapshot-revert", "guest", "o1", "--running")
    text = await wait_console(dom, "GUEST-READY", after=console_offset(dom))
    assert "start=0" in text.split("GUEST-READY", 1)[1].splitlines()[0]
    await dom.destroy()


async def test_disk_only_internal_revert_stops_the_guest(make_domain) -> None:
    dom = await booted(make_domain)
    vda = dom.definition.disks[0].source
    await dom.snapshot_create_xml("<domainsnapshot><name>d1</name><memory snapshot='no'/>"
                                  "<disks><disk name='vda' snapshot='internal'/></disks>"
                                  "</domainsnapshot>")
    at = disk_counter(vda, "d1")
    await wait_console(dom, f"COUNTER {last_counter(dom) + 5}")
    await dom.revert_to_snapshot("d1")
    assert dom.state_reason() == (DomainState.SHUTOFF, "from snapshot")
    assert disk_counter(vda) == at


async def test_a_failed_revert_leaves_the_guest_as_it_was(make_domain, state_dir: Path) -> None:
    dom = await booted(make_domain)
    vda = dom.definition.disks[0].source
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


def assert_resumes_from(counters: list[int], snap_disk: int, before_revert: int) -> None:
    """The guest counts on from its disk's value at the snapshot. The serial console
    lags the guest a little, so lines the guest had queued at the snapshot may come
    first; the last of the first few counters tells."""
    assert counters[-1] < before_revert, (counters, before_revert)
    assert snap_disk <= counters[-1] <= snap_disk + len(counters) + 2, (counters, snap_disk)


async def keeps_counting_after(dom: qdriver.Domain) -> None:
    await wait_console(dom, f"COUNTER {last_counter(dom) + 2}")


async def test_revert_of_an_external_snapshot_says_it_is_not_built(make_domain,
                                                                   tmp_path: Path) -> None:
    dom = await make_domain()
    await dom.snapshot_create_xml("<domainsnapshot><name>e1</name></domainsnapshot>",
                                  disk_only=True)
    before = dom.xml_desc(inactive=True)
    with pytest.raises(qdriver.NoSupportError, match="external snapshot 'e1'"):
        await dom.revert_to_snapshot("e1")
    assert dom.xml_desc(inactive=True) == before
    assert os.path.exists(dom.definition.disks[0].source or "")
