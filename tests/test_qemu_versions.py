"""One driver for QEMU 7.2 to 10: abilities are probed, not read off the version.

`.ci/test` runs the whole suite twice, on the system QEMU 7.2 and on QEMU 10
from bookworm-backports; these tests pin the behaviours that differ.
"""
from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

import qdriver
from qdriver import DomainState
from qdriver.caps import qemucaps
from qdriver.caps.running import RunningCaps
from qdriver.ops.create_plan import CreateStep, plan_snapshot
from qdriver.xml.domain import DomainDef

from .helpers import (
    MakeDomain,
    assert_save_image,
    keeps_counting,
    last_counter,
    run_cli,
    wait_console,
)


def qemu_version() -> str:
    """The version of the QEMU on PATH, as it prints it."""
    out = subprocess.run(["qemu-system-x86_64", "--version"], check=True,
                         capture_output=True, text=True).stdout
    return out.split()[3]


async def test_the_probe_reads_this_qemu_and_is_recorded_once(booted: MakeDomain,
                                                              tmp_path: Path) -> None:
    caps = await qemucaps.probe_binary()
    assert caps.version == qemu_version()
    assert caps.snapshot_save and caps.background_snapshot
    major = int(caps.version.split(".")[0])
    assert caps.file_transport == ((major, int(caps.version.split(".")[1])) >= (8, 2))
    assert caps.mapped_ram == (major >= 9)
    dom = await booted()
    await dom.snapshot_create_xml(f"<domainsnapshot><name>m1</name><memory snapshot='external' "
                                  f"file='{tmp_path / 'm1.mem'}'/></domainsnapshot>")
    record = json.loads(dom.paths.runtime.read_text())
    assert record["caps"]["version"] == caps.version
    assert record["caps"]["mapped_ram"] == caps.mapped_ram
    await dom.destroy()


async def test_domcapabilities_names_the_qemu_and_its_mechanisms(state_dir: Path) -> None:
    out = run_cli(state_dir, "domcapabilities").stdout.decode()
    assert f"<version>{qemu_version()}</version>" in out
    caps = await qemucaps.probe_binary()
    for name, supported in (("snapshot-save", True), ("background-snapshot", True),
                            ("migrate-file", bool(caps.file_transport)),
                            ("mapped-ram", caps.mapped_ram)):
        assert f"<mechanism name='{name}' supported='{'yes' if supported else 'no'}'/>" in out


async def test_a_live_snapshot_leaves_the_running_guest_running(booted: MakeDomain, state_dir: Path,
                                                                tmp_path: Path) -> None:
    """QEMU 9.0+ ends a background snapshot in the run state it started from: paused,
    because the disks were switched first. The guest must run again all the same, and
    during the save, not only after it."""
    dom = await booted()
    mem = tmp_path / "live.mem"
    snap = await dom.snapshot_create_xml(
        f"<domainsnapshot><name>l1</name><memory file='{mem}'/></domainsnapshot>", live=True)
    assert_save_image(mem)
    assert dom.state_reason()[0] == DomainState.RUNNING
    async with dom.monitor() as mon:
        assert (await mon.execute("query-status"))["status"] == "running"
    assert snap.report is not None and snap.report.pause < snap.report.seconds
    await keeps_counting(dom, last_counter(dom))
    await dom.destroy()


async def test_memory_snapshots_of_a_paused_guest_keep_it_paused(booted: MakeDomain,
                                                                 state_dir: Path,
                                                                 tmp_path: Path) -> None:
    """A memory save leaves a paused guest's QEMU in postmigrate, from which every QEMU
    here refuses the next migration (7.2 and 10 alike) and internal snapshots (its
    images are inactive). The second snapshot must work all the same."""
    dom = await booted()
    await dom.suspend()
    frozen = last_counter(dom)

    def xml(name: str) -> str:
        return (f"<domainsnapshot><name>{name}</name><memory snapshot='external' "
                f"file='{tmp_path / name}.mem'/></domainsnapshot>")
    await dom.snapshot_create_xml(xml("p1"))
    async with dom.monitor() as mon:
        assert (await mon.execute("query-status"))["status"] == "postmigrate"
    plan = await dom.plan_snapshot(xml("p2"))
    assert plan.steps[0] == CreateStep.LEAVE_POSTMIGRATE
    await dom.snapshot_create_xml(xml("p2"))
    await dom.snapshot_create_xml("<domainsnapshot><name>p3</name></domainsnapshot>")
    for name in ("p1", "p2"):
        assert_save_image(tmp_path / f"{name}.mem")
    assert [s.name for s in dom.list_snapshots()] == ["p1", "p2", "p3"]
    assert dom.state == DomainState.PAUSED
    # the vCPUs ran only for a cont/stop round trip: at most one counter tick
    assert last_counter(dom) <= frozen + 1, "the paused guest ran"
    await dom.resume()
    await wait_console(dom, f"COUNTER {frozen + 3}")
    await dom.destroy()


DOMAIN = """<domain type='qemu'><name>p</name><memory unit='MiB'>256</memory>
<os><type arch='x86_64' machine='q35'>hvm</type></os><devices>
<disk type='file' device='disk'><driver name='qemu' type='qcow2'/>
<source file='/images/p.qcow2'/><target dev='vda' bus='virtio'/></disk>
</devices></domain>"""


@pytest.mark.parametrize("xml, flags, leaves", [
    ("<domainsnapshot><memory file='/images/p.mem'/></domainsnapshot>", {}, True),
    ("<domainsnapshot/>", {}, True),  # internal: inactive images refuse it
    ("<domainsnapshot/>", {"disk_only": True}, False),  # overlays work on inactive images
])
@pytest.mark.no_qemu
def test_plan_leaves_postmigrate_only_when_the_snapshot_needs_it(xml: str,
                                                                 flags: dict[str, bool],
                                                                 leaves: bool) -> None:
    plan = plan_snapshot(DomainDef.parse(DOMAIN), "paused", xml,
                         qdriver.CreateFlags(**flags), caps=RunningCaps(migrated=True))
    assert (CreateStep.LEAVE_POSTMIGRATE in plan.steps) == leaves
    assert CreateStep.RESUME not in plan.steps
    assert CreateStep.LEAVE_POSTMIGRATE not in plan_snapshot(
        DomainDef.parse(DOMAIN), "paused", xml, qdriver.CreateFlags(**flags)).steps


@pytest.mark.no_qemu
def test_recorded_caps_survive_a_round_trip() -> None:
    caps = qemucaps.QemuCaps(version="10.0.2", snapshot_save=True, background_snapshot=True,
                             mapped_ram=True, multifd=True)
    assert qemucaps.QemuCaps.from_record(caps.to_record() | {"future": 1}) == caps
    assert caps.background_keeps_run_state
    assert not qemucaps.QemuCaps(version="7.2.22", background_snapshot=True
                                 ).background_keeps_run_state


@pytest.mark.no_qemu
def test_the_file_transport_is_read_from_the_schema() -> None:
    schema = [{"meta-type": "enum", "name": "1", "values": ["socket", "exec", "rdma", "file"]}]
    assert qemucaps.has_file_transport(schema)
    assert not qemucaps.has_file_transport(
        [{"meta-type": "enum", "name": "2", "values": ["file", "socket", "pty"]}])


@pytest.mark.no_qemu
def test_a_prefix_qemu_is_pointed_at_its_own_modules(tmp_path: Path) -> None:
    from qdriver.emulator import module_env
    modules = tmp_path / "usr" / "lib" / "x86_64-linux-gnu" / "qemu"
    modules.mkdir(parents=True)
    assert module_env(str(tmp_path / "usr" / "bin" / "qemu-system-x86_64")) == \
        {"QEMU_MODULE_DIR": str(modules)}
    assert module_env("/usr/bin/qemu-system-x86_64") == {}


async def test_the_running_qemu_has_its_own_module_directory(make_domain: MakeDomain) -> None:
    """On the QEMU 10 run (a private prefix first on PATH) QEMU must not try the
    system QEMU's modules ("Only modules from the same build can be loaded")."""
    import os
    import shutil

    from qdriver.emulator import module_env
    dom = await make_domain(with_disk=False)
    await dom.start(paused=True)
    try:
        rec = dom.runtime.peek()
        assert rec is not None
        environ = Path(f"/proc/{rec.pid}/environ").read_bytes().split(b"\0")
        expected = module_env(os.path.realpath(shutil.which("qemu-system-x86_64") or ""))
        for key, value in expected.items():
            assert f"{key}={value}".encode() in environ
        if not expected:
            assert not any(e.startswith(b"QEMU_MODULE_DIR=") for e in environ)
        assert "Only modules from the same build" not in dom.paths.qemu_log.read_text()
    finally:
        await dom.destroy()
