"""Group snapshots: a lab of guests snapshotted at one instant and reverted together.

Rows for the planner (pure), then three real guests on one multicast network
(in a network namespace of the test's own): a group snapshot stops them
within 50 ms of each other by QEMU's clocks; after a change in each (counters
go on, a file written) a group revert puts every guest back to the snapshot
instant, and they ping each other again.  A group one of whose snapshots is
refused leaves none, and every guest running.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import anyio
import pytest

import qdriver
from qdriver.console import SerialLink
from qdriver.ops import create_exec
from qdriver.ops.create_plan import CreateFlags, CreateStep, plan_snapshot
from qdriver.testing import faults
from qdriver.xml.domain import DomainDef

from .helpers import GuestImage, run_cli, wait_console
from .helpers.checks import assert_resumes_from
from .helpers.guest import console_offset, counters_after, domain_xml
from .helpers.netns import multicast_namespace

DOMAIN = """<domain type='qemu'><name>r</name><uuid>11111111-2222-3333-4444-555555555555</uuid>
<memory unit='KiB'>262144</memory><os><type arch='x86_64' machine='q35'>hvm</type></os>
<devices><disk type='file' device='disk'><driver name='qemu' type='qcow2'/>
<source file='/images/r.qcow2'/><target dev='vda' bus='virtio'/></disk></devices></domain>"""
DISK_ONLY = ("<domainsnapshot><name>g</name><disks><disk name='vda' snapshot='external'>"
             "<source file='/x/o'/></disk></disks></domainsnapshot>")


@pytest.mark.no_qemu
@pytest.mark.parametrize("xml, flags", [
    ("<domainsnapshot><name>g</name></domainsnapshot>", CreateFlags()),
    (DISK_ONLY, CreateFlags(disk_only=True)),
])
def test_a_group_member_is_paused_for_its_whole_snapshot(xml: str, flags: CreateFlags) -> None:
    plan = plan_snapshot(DomainDef.parse(DOMAIN), "running", xml, flags, group=True)
    steps = list(plan.steps)
    assert steps.count(CreateStep.PAUSE) == steps.count(CreateStep.RESUME) == 1
    assert steps.index(CreateStep.PAUSE) < steps.index(CreateStep.RESUME) \
        == steps.index(CreateStep.WRITE_METADATA) - 1
    assert plan.pause == "whole" and plan.state in ("running", "disk-snapshot")


@pytest.mark.no_qemu
@pytest.mark.parametrize("flag", ["live", "template", "halt"])
def test_flags_that_would_break_the_instant_are_refused(flag: str) -> None:
    with pytest.raises(qdriver.InvalidArgError, match=f"cannot take flag "
                       f"'VIR_DOMAIN_SNAPSHOT_CREATE_{flag.upper()}'"):
        plan_snapshot(DomainDef.parse(DOMAIN), "running",
                      "<domainsnapshot><name>g</name></domainsnapshot>",
                      CreateFlags(**{flag: True}), group=True)


@pytest.fixture
def lab_netns() -> Iterator[str]:
    """A network namespace whose loopback carries the lab's multicast."""
    with multicast_namespace("qdt-lab") as name:
        yield name


NAMES = ("la", "lb", "lc")


@pytest.fixture
async def lab(driver: qdriver.Driver, guest_image: GuestImage, tmp_path: Path,
              lab_netns: str) -> AsyncIterator[list[qdriver.Domain]]:
    """Three counting guests on one multicast group, 10.9.0.1-3, started in the
    namespace, each with its own disk and a shell on its console."""
    group = ("<interface type='mcast'><source address='230.0.0.7' port='5571'/>"
             "<model type='virtio'/></interface>")
    doms = []
    for i, name in enumerate(NAMES, 1):
        disk = tmp_path / f"{name}.qcow2"
        shutil.copyfile(guest_image.disk, disk)
        doms.append(await driver.define_xml(domain_xml(
            guest_image, name, disk, cmdline=f"qd.shell=1 qd.ip=10.9.0.{i}/24",
            extra_devices=group)))
        subprocess.run(["ip", "netns", "exec", lab_netns, sys.executable, "-m", "qdriver",
                        "--state-dir", str(driver.state_dir), "start", name],
                       check=True, capture_output=True, timeout=120)
    try:
        for dom in doms:
            await wait_console(dom, "COUNTER 3", 120)
        yield doms
    finally:
        for dom in doms:
            if dom.is_active:
                await dom.destroy()


async def type_and_wait(dom: qdriver.Domain, line: str, marker: str) -> str:
    """Type ``line`` on the guest's console; wait for ``marker`` after it."""
    offset = console_offset(dom)
    link = SerialLink(dom.console_path())
    try:
        link.write(f"{line}\n".encode())
        return await wait_console(dom, marker, 30, after=offset)
    finally:
        link.close()


async def test_a_group_snapshot_and_revert_take_the_lab_back_to_one_instant(
        driver: qdriver.Driver, lab: list[qdriver.Domain]) -> None:
    offsets = [console_offset(d) for d in lab]
    taken = await driver.snapshot_group("g", lab)
    assert [(t.domain, t.snapshot) for t in taken] == [(n, "g") for n in NAMES]
    stops = [t.report.stopped_at for t in taken if t.report and t.report.stopped_at]
    assert len(stops) == 3, taken
    assert max(stops) - min(stops) <= 0.050, f"the guests stopped {stops} apart"
    at_snapshot = [(await counters_after(d, o, 1))[0] for d, o in zip(lab, offsets)]

    for dom, at in zip(lab, at_snapshot):  # each goes on, and writes a file
        await wait_console(dom, f"COUNTER {at + 4}", 60)
        await type_and_wait(dom, "echo changed > /mnt/marker; sync; echo WROTE$((6*7))",
                            "WROTE42")
    before_revert = [(await counters_after(d, console_offset(d), 1))[0] for d in lab]

    offsets = [console_offset(d) for d in lab]
    await driver.revert_group("g", lab)
    for dom, at, before, offset in zip(lab, at_snapshot, before_revert, offsets):
        assert dom.state == qdriver.DomainState.RUNNING, dom.name
        assert_resumes_from(await counters_after(dom, offset, 3), at, before)
        await type_and_wait(dom, "cat /mnt/marker 2>/dev/null || echo NO-MARKER$((6*7))",
                            "NO-MARKER42")
    for i, dom in enumerate(lab):  # the lab works right after the revert
        peer = (i + 1) % 3 + 1
        await type_and_wait(dom, f"ping -c 1 -W 5 10.9.0.{peer} >/dev/null && "
                                 f"echo PONG$((6*7))-{peer}", f"PONG42-{peer}")


async def test_a_group_whose_one_snapshot_is_refused_keeps_none(
        driver: qdriver.Driver, lab: list[qdriver.Domain]) -> None:
    await lab[1].snapshot_create_xml("<domainsnapshot><name>g</name></domainsnapshot>")
    with pytest.raises(qdriver.QDriverError, match="Snapshot 'g' already exists"):
        await driver.snapshot_group("g", lab)
    assert [s.name for s in lab[0].list_snapshots()] == []
    assert [s.name for s in lab[2].list_snapshots()] == []
    for dom in lab:
        assert dom.state == qdriver.DomainState.RUNNING, dom.name
        offset = console_offset(dom)
        await counters_after(dom, offset, 2)  # and counting
    with anyio.fail_after(5):
        assert lab[0].interrupted_operation() is None


async def test_a_group_that_fails_after_the_instant_keeps_none(
        driver: qdriver.Driver, lab: list[qdriver.Domain],
        monkeypatch: pytest.MonkeyPatch) -> None:
    """One domain's metadata write fails once every snapshot is taken: the domains
    that finished delete theirs, and every guest runs on."""
    keep = create_exec.STEPS[CreateStep.WRITE_METADATA]

    async def failing(execution: create_exec.CreateExecution) -> None:
        if execution.job.name == lab[1].name:
            raise qdriver.OperationFailedError("the metadata disk broke")
        await keep(execution)
    monkeypatch.setitem(create_exec.STEPS, CreateStep.WRITE_METADATA, failing)
    with pytest.raises(qdriver.QDriverError, match="the metadata disk broke"):
        await driver.snapshot_group("g", lab)
    for dom in lab:
        assert [s.name for s in dom.list_snapshots()] == [], dom.name
        assert dom.state == qdriver.DomainState.RUNNING, dom.name
        assert dom.interrupted_operation() is None
        await counters_after(dom, console_offset(dom), 2)  # and counting


async def test_a_group_revert_killed_before_the_guests_resume_is_rolled_forward(
        driver: qdriver.Driver, lab: list[qdriver.Domain]) -> None:
    """Killed once every guest is reverted (paused) but before they run: each guest's
    next command resumes it, from the snapshot."""
    await driver.snapshot_group("g", lab)
    offsets = [console_offset(dom) for dom in lab]
    at_snapshot = [(await counters_after(dom, off, 1))[0] for dom, off in zip(lab, offsets)]
    for dom, at in zip(lab, at_snapshot):
        await wait_console(dom, f"COUNTER {at + 3}")
    env = {**os.environ, faults.ENV: "group-revert:reverted"}
    killed = subprocess.run([sys.executable, "-m", "qdriver", "--state-dir",
                             str(driver.state_dir), "snapshot-revert", "--group", "g",
                             *NAMES], env=env, capture_output=True, timeout=120)
    assert killed.returncode == -9, killed.stderr
    for dom in lab:
        assert dom.state == qdriver.DomainState.PAUSED, dom.name
        assert "group-revert" in (dom.interrupted_operation() or ""), dom.name
    for dom, at in zip(lab, at_snapshot):
        offset = console_offset(dom)
        report = await dom.recover()
        assert report is not None and "rolled forward" in str(report), report
        assert dom.state == qdriver.DomainState.RUNNING, dom.name
        assert_resumes_from(await counters_after(dom, offset, 2), at, at + 3)


async def test_the_cli_takes_and_reverts_a_group(
        booted: Callable[..., Awaitable[qdriver.Domain]], state_dir: Path) -> None:
    doms = [await booted(name) for name in ("ga", "gb")]
    out = run_cli(state_dir, "snapshot-create-as", "--group", "g", "ga", "gb").stdout.decode()
    assert "Domain snapshot g of ga created" in out and "of gb created" in out
    run_cli(state_dir, "snapshot-revert", "--group", "g", "ga", "gb")
    for dom in doms:
        assert dom.current_snapshot().name == "g"
        assert dom.state == qdriver.DomainState.RUNNING
    bad = run_cli(state_dir, "snapshot-create-as", "ga", "s", "gb", check=False)
    assert bad.returncode != 0 and b"unexpected argument 'gb'" in bad.stderr
    assert [s.name for s in doms[0].list_snapshots()] == ["g"]
