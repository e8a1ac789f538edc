"""Creating every kind of snapshot on the real test guest, through the CLI.

The guest appends an incrementing counter to its disk every 100 ms and
prints it, so each test can check that a snapshot holds the disk as it was
at the moment it was taken (point in time), and that the guest goes on
afterwards.  Artefacts are checked with qemu-img itself.
"""
from __future__ import annotations

import os
import re
import subprocess
import tempfile
from pathlib import Path
from typing import Callable

import anyio
import pytest

import qdriver
from qdriver import DomainState, qemuimg

from .helpers import (
    MakeDomain,
    assert_save_image,
    backing_of,
    disk_counter,
    disk_source,
    internal_snapshots,
    keeps_counting,
    last_counter,
    run_cli,
    wait_console,
    within,
)


async def cli_snapshot(dom: qdriver.Domain, state_dir: Path, *args: str) -> tuple[int, int]:
    """Run a snapshot CLI command; return the guest counter before and after it."""
    before = last_counter(dom)
    await anyio.to_thread.run_sync(lambda: run_cli(state_dir, *args))
    return before, last_counter(dom)


# -- offline (seed rows 1, 2, 4, 5 and the mixed row) ------------------------------

async def test_offline_internal_external_and_mixed(make_domain: MakeDomain,
                                                   state_dir: Path) -> None:
    dom = await make_domain(disks=2)
    vda, vdb = disk_source(dom, 0), disk_source(dom, 1)
    run_cli(state_dir, "snapshot-create-as", "guest", "off-int")
    assert internal_snapshots(vda) == ["off-int"] and internal_snapshots(vdb) == ["off-int"]

    run_cli(state_dir, "snapshot-create-as", "guest", "off-mix",
            "--diskspec", "vda,snapshot=internal", "--diskspec", "vdb,snapshot=external")
    assert internal_snapshots(vda) == ["off-int", "off-mix"]
    assert internal_snapshots(vdb) == ["off-int"]
    vdb_overlay = str(vdb).rsplit(".", 1)[0] + ".off-mix"
    assert backing_of(vdb_overlay) == vdb
    assert (os.stat(vdb_overlay).st_mode & 0o777) == 0o600

    run_cli(state_dir, "snapshot-create-as", "guest", "off-ext", "--disk-only")
    dom = qdriver.Driver(state_dir).lookup("guest")
    new_vda, new_vdb = disk_source(dom, 0), disk_source(dom, 1)
    assert backing_of(new_vda) == vda and backing_of(new_vdb) == vdb_overlay
    assert "off-ext" in run_cli(state_dir, "dumpxml", "guest").stdout.decode()
    info = run_cli(state_dir, "snapshot-info", "guest", "off-ext").stdout.decode()
    assert "State:          shutoff" in info and "Location:       external" in info
    assert [s.name for s in dom.list_snapshots(topological=True)] == \
        ["off-int", "off-mix", "off-ext"]
    # the guest boots from the new overlays and finds its disk as it was
    await dom.start()
    await wait_console(dom, "GUEST-READY disk=vda start=0")
    await dom.destroy()


# -- online internal (seed rows 7, 12, 19, 21) ---------------------------------------

async def test_online_internal_full_system(booted: MakeDomain, state_dir: Path,
                                           tmp_path: Path) -> None:
    dom = await booted(disks=2)
    xml = tmp_path / "s.xml"
    xml.write_text("<domainsnapshot><name>int1</name><description>full</description>"
                   "</domainsnapshot>")
    before, after = await cli_snapshot(dom, state_dir, "snapshot-create", "guest", str(xml))
    vda, vdb = disk_source(dom, 0), disk_source(dom, 1)
    assert internal_snapshots(vda) == ["int1"] and internal_snapshots(vdb) == ["int1"]
    sizes = {s.name: s.vm_state_size for s in await qemuimg.snapshot_list(vda)}
    assert sizes["int1"] > 0, "the vmstate went into vda"
    assert dom.state == DomainState.RUNNING
    await keeps_counting(dom, after)
    await dom.destroy()
    assert within(disk_counter(vda, "int1"), before, after)
    snap = dom.snapshot_lookup("int1")
    assert snap.is_current() and "<state>running</state>" in snap.xml_desc()
    assert "<memory snapshot='internal'/>" in snap.xml_desc()


async def test_internal_snapshot_of_paused_guest_stays_paused(booted: MakeDomain,
                                                              state_dir: Path) -> None:
    dom = await booted()
    await dom.suspend()
    run_cli(state_dir, "snapshot-create-as", "guest", "p1")
    assert (await dom.get_state())[0] == DomainState.PAUSED
    assert "<state>paused</state>" in dom.snapshot_lookup("p1").xml_desc()
    await dom.destroy()


# -- online disk-only (seed rows 8, 11, 14, 17; 13 and 16 beyond libvirt) -------------

async def test_external_disk_only_switches_both_disks_in_one_transaction(
        booted: MakeDomain, state_dir: Path) -> None:
    dom = await booted(disks=2)
    old = [disk_source(dom, i) for i in range(len(dom.definition.disks))]
    before, after = await cli_snapshot(dom, state_dir, "snapshot-create-as", "guest", "d1",
                                       "--disk-only", "--atomic")
    dom = qdriver.Driver(state_dir).lookup("guest")
    new = [disk_source(dom, i) for i in range(len(dom.definition.disks))]
    assert [backing_of(n) for n in new] == old
    async with dom.monitor() as mon:
        blocks = await mon.execute("query-block")
    files = sorted(b["inserted"]["file"] for b in blocks if b.get("inserted"))
    assert files == sorted(new), "QEMU writes to the overlays now"
    await keeps_counting(dom, after)
    frozen = disk_counter(old[0])
    assert within(frozen, before, after), (frozen, before, after)
    assert disk_counter(new[0]) > frozen
    assert "<state>disk-snapshot</state>" in dom.snapshot_lookup("d1").xml_desc()
    await dom.destroy()


async def test_memory_no_on_running_guest_is_a_disk_only_snapshot(booted: MakeDomain,
                                                                  state_dir: Path) -> None:
    dom = await booted()
    run_cli(state_dir, "snapshot-create-as", "guest", "m0", "--memspec", "snapshot=no")
    dom = qdriver.Driver(state_dir).lookup("guest")
    assert disk_source(dom).endswith(".m0")
    await dom.destroy()


async def test_internal_disk_only_of_running_guest_beyond_libvirt(booted: MakeDomain,
                                                                  state_dir: Path) -> None:
    dom = await booted(disks=2)
    vda, vdb = disk_source(dom, 0), disk_source(dom, 1)
    before, after = await cli_snapshot(
        dom, state_dir, "snapshot-create-as", "guest", "i1", "--disk-only",
        "--diskspec", "vda,snapshot=internal", "--diskspec", "vdb,snapshot=external")
    assert internal_snapshots(vda) == ["i1"]
    sizes = {s.name: s.vm_state_size for s in await qemuimg.snapshot_list(vda)}
    assert sizes["i1"] == 0, "a disk-only snapshot holds no memory"
    assert backing_of(disk_source(qdriver.Driver(state_dir).lookup("guest"), 1)) == vdb
    assert dom.state == DomainState.RUNNING
    await keeps_counting(dom, after)
    await dom.destroy()
    assert within(disk_counter(vda, "i1"), before, after)


# -- online external memory (seed rows 22, 23, 25; 24 beyond libvirt) ------------------

async def test_external_memory_and_disks(booted: MakeDomain, state_dir: Path,
                                         tmp_path: Path) -> None:
    dom = await booted()
    mem = tmp_path / "e1.mem"
    vda = disk_source(dom)
    before, after = await cli_snapshot(dom, state_dir, "snapshot-create-as", "guest", "e1",
                                       "--memspec", f"file={mem},snapshot=external")
    assert_save_image(mem)
    dom = qdriver.Driver(state_dir).lookup("guest")
    assert backing_of(disk_source(dom)) == vda
    assert dom.state == DomainState.RUNNING
    await keeps_counting(dom, after)
    assert within(disk_counter(vda), before, after)
    xml = dom.snapshot_lookup("e1").xml_desc()
    assert f"<memory snapshot='external' file='{mem}'/>" in xml
    await dom.destroy()


async def test_external_memory_only(booted: MakeDomain, state_dir: Path, tmp_path: Path) -> None:
    dom = await booted()
    mem = tmp_path / "m.mem"
    vda = disk_source(dom)
    run_cli(state_dir, "snapshot-create-as", "guest", "m1", "--memspec", str(mem),
            "--diskspec", "vda,snapshot=no")
    assert_save_image(mem)
    assert qdriver.Driver(state_dir).lookup("guest").definition.disks[0].source == vda
    assert internal_snapshots(vda) == []
    await dom.destroy()


async def test_external_memory_with_internal_disk_beyond_libvirt(
        booted: MakeDomain, state_dir: Path, tmp_path: Path) -> None:
    dom = await booted(disks=2)
    mem = tmp_path / "x.mem"
    vda, vdb = disk_source(dom, 0), disk_source(dom, 1)
    before, after = await cli_snapshot(
        dom, state_dir, "snapshot-create-as", "guest", "x1", "--memspec", str(mem),
        "--diskspec", "vda,snapshot=internal", "--diskspec", "vdb,snapshot=external")
    assert_save_image(mem)
    assert internal_snapshots(vda) == ["x1"]
    assert backing_of(disk_source(qdriver.Driver(state_dir).lookup("guest"), 1)) == vdb
    await keeps_counting(dom, after)
    await dom.destroy()
    assert within(disk_counter(vda, "x1"), before, after)


async def test_internal_memory_with_external_disk_beyond_libvirt(
        booted: MakeDomain, state_dir: Path) -> None:
    dom = await booted(disks=2)
    vda, vdb = disk_source(dom, 0), disk_source(dom, 1)
    run_cli(state_dir, "snapshot-create-as", "guest", "y1", "--memspec", "snapshot=internal",
            "--diskspec", "vda,snapshot=internal", "--diskspec", "vdb,snapshot=external")
    assert internal_snapshots(vda) == ["y1"] and internal_snapshots(vdb) == []
    assert {s.name: s.vm_state_size for s in await qemuimg.snapshot_list(vda)}["y1"] > 0
    assert backing_of(disk_source(qdriver.Driver(state_dir).lookup("guest"), 1)) == vdb
    assert dom.state == DomainState.RUNNING
    await dom.destroy()


async def test_live_background_snapshot(booted: MakeDomain, state_dir: Path,
                                        tmp_path: Path) -> None:
    dom = await booted()
    mem = tmp_path / "live.mem"
    plan = await dom.plan_snapshot(f"<domainsnapshot><memory file='{mem}'/></domainsnapshot>",
                                   qdriver.CreateFlags(live=True))
    assert (plan.live, plan.pause) == ("background", "brief")
    vda = disk_source(dom)
    before, after = await cli_snapshot(dom, state_dir, "snapshot-create-as", "guest", "l1",
                                       "--live", "--memspec", str(mem))
    assert_save_image(mem)
    assert (await dom.get_state())[0] == DomainState.RUNNING
    await keeps_counting(dom, after)
    assert within(disk_counter(vda), before, after)
    await dom.destroy()


# -- flags --------------------------------------------------------------------------

async def test_halt_and_no_metadata(booted: MakeDomain, state_dir: Path) -> None:
    dom = await booted()
    vda = disk_source(dom)
    run_cli(state_dir, "snapshot-create-as", "guest", "nm", "--no-metadata")
    assert internal_snapshots(vda) == ["nm"] and dom.list_snapshots() == []
    run_cli(state_dir, "snapshot-create-as", "guest", "h1", "--halt")
    assert dom.state_reason() == (DomainState.SHUTOFF, "from snapshot")
    assert internal_snapshots(vda) == ["nm", "h1"]
    assert [s.name for s in dom.list_snapshots()] == ["h1"]


async def test_manual_disk_leaves_guest_paused(booted: MakeDomain, state_dir: Path) -> None:
    dom = await booted(disks=2)
    run_cli(state_dir, "snapshot-create-as", "guest", "man", "--disk-only",
            "--diskspec", "vda,snapshot=external", "--diskspec", "vdb,snapshot=manual")
    assert (await dom.get_state())[0] == DomainState.PAUSED
    await dom.resume()
    await keeps_counting(dom, last_counter(dom))
    await dom.destroy()


async def test_reuse_external_checks_backing(booted: MakeDomain, state_dir: Path,
                                             tmp_path: Path) -> None:
    dom = await booted()
    vda = disk_source(dom)
    wrong = tmp_path / "wrong.qcow2"
    await qemuimg.create(wrong, "qcow2", size=64 << 20)
    r = run_cli(state_dir, "snapshot-create-as", "guest", "r0", "--disk-only",
                "--reuse-external", "--diskspec", f"vda,file={wrong}", check=False)
    assert r.returncode == 1 and "must be a qcow2 image backed by" in r.stderr.decode()
    assert wrong.exists() and dom.list_snapshots() == []
    good = tmp_path / "good.qcow2"
    await qemuimg.create(good, backing=vda, backing_fmt="qcow2")
    run_cli(state_dir, "snapshot-create-as", "guest", "r1", "--disk-only", "--reuse-external",
            "--diskspec", f"vda,file={good}")
    assert qdriver.Driver(state_dir).lookup("guest").definition.disks[0].source == str(good)
    await dom.destroy()


async def test_progress_is_reported(booted: MakeDomain, tmp_path: Path) -> None:
    dom = await booted()
    seen: list[qdriver.Progress] = []
    await dom.snapshot_create_xml(
        f"<domainsnapshot><memory file='{tmp_path / 'p.mem'}'/></domainsnapshot>",
        progress=seen.append)
    assert seen and seen[-1].phase == "memory" and seen[-1].total > 0
    assert seen[-1].done > 0 and seen[-1].rate > 0
    r = await anyio.to_thread.run_sync(lambda: run_cli(
        dom.driver.state_dir, "snapshot-create-as", "guest", "p2", "--memspec",
        str(tmp_path / "p2.mem")))
    assert re.search(r"snapshot guest: memory +\d+% \([\d.]+ of [\d.]+ MiB, \d+ MiB/s\)",
                     r.stderr.decode()), r.stderr.decode()
    await dom.destroy()


# -- failure injection: nothing lost ----------------------------------------------------

async def assert_untouched(dom: qdriver.Domain, state_dir: Path, sources: list[str],
                           state: DomainState = DomainState.RUNNING) -> None:
    fresh = qdriver.Driver(state_dir).lookup(dom.name)
    assert [d.source for d in fresh.definition.disks] == sources, "definition changed"
    assert fresh.list_snapshots() == [], "metadata was written"
    assert (await fresh.get_state())[0] == state
    for src in sources:
        assert internal_snapshots(src) == []


async def test_overlay_on_readonly_filesystem(booted: MakeDomain, state_dir: Path,
                                              small_tmpfs: Callable[..., Path]) -> None:
    dom = await booted(disks=2)
    sources = [disk_source(dom, i) for i in range(len(dom.definition.disks))]
    ro = small_tmpfs(readonly=True)
    r = run_cli(state_dir, "snapshot-create-as", "guest", "f1", "--disk-only",
                "--diskspec", "vda,snapshot=external",
                "--diskspec", f"vdb,snapshot=external,file={ro}/vdb.f1", check=False)
    assert r.returncode == 1 and "Read-only file system" in r.stderr.decode()
    assert not Path(str(sources[0]).rsplit(".", 1)[0] + ".f1").exists(), "overlay left behind"
    await assert_untouched(dom, state_dir, sources)
    await keeps_counting(dom, last_counter(dom))
    await dom.destroy()


async def test_overlay_on_full_filesystem(booted: MakeDomain, state_dir: Path,
                                          small_tmpfs: Callable[..., Path]) -> None:
    dom = await booted()
    sources = [disk_source(dom, i) for i in range(len(dom.definition.disks))]
    full = small_tmpfs(size="64k", fill=True)
    r = run_cli(state_dir, "snapshot-create-as", "guest", "f2", "--disk-only",
                "--diskspec", f"vda,file={full}/vda.f2", check=False)
    assert r.returncode == 1
    assert not (full / "vda.f2").exists()
    await assert_untouched(dom, state_dir, sources)
    await dom.destroy()


async def test_memory_file_on_full_filesystem(booted: MakeDomain, state_dir: Path,
                                              small_tmpfs: Callable[..., Path]) -> None:
    dom = await booted()
    sources = [disk_source(dom, i) for i in range(len(dom.definition.disks))]
    full = small_tmpfs(size="2m")
    overlay = str(sources[0]).rsplit(".", 1)[0] + ".f3"
    r = run_cli(state_dir, "snapshot-create-as", "guest", "f3", "--memspec",
                f"{full}/f3.mem", check=False)
    assert r.returncode == 1 and "saving the memory state failed" in r.stderr.decode()
    assert not (full / "f3.mem").exists() and not Path(overlay).exists()
    await assert_untouched(dom, state_dir, sources)
    await keeps_counting(dom, last_counter(dom))
    await dom.destroy()


async def test_memory_file_path_that_is_a_dangling_link(booted: MakeDomain, state_dir: Path,
                                                        tmp_path: Path) -> None:
    """A --memspec path that is a symbolic link (dangling) is refused by name, and
    the user's link stays: an undo removes only what the operation made."""
    dom = await booted()
    sources = [disk_source(dom, i) for i in range(len(dom.definition.disks))]
    link = tmp_path / "link.mem"
    link.symlink_to(tmp_path / "nowhere" / "target.mem")
    r = run_cli(state_dir, "snapshot-create-as", "guest", "d1", "--memspec", str(link),
                check=False)
    err = r.stderr.decode()
    assert r.returncode == 1 and f"memory snapshot file '{link}' already exists" in err \
        and "symbolic link" in err and "Errno" not in err, err
    assert link.is_symlink() and os.readlink(link) == str(tmp_path / "nowhere" / "target.mem")
    await assert_untouched(dom, state_dir, sources)
    await dom.destroy()


async def kill_when_saving(mem: Path, pid: int) -> None:
    """SIGKILL QEMU once 8 MiB of its memory are in the file."""
    while not mem.exists() or mem.stat().st_size < (8 << 20):
        await anyio.sleep(0.002)
    os.kill(pid, 9)


async def test_qemu_killed_during_migration(make_domain: MakeDomain, state_dir: Path,
                                            tmp_path: Path) -> None:
    dom = await make_domain(cmdline="qd.fill=160 qd.fillmode=repeat", memory_mib=512)
    await dom.start()
    await wait_console(dom, "COUNTER 2", timeout=90)
    sources = [disk_source(dom, i) for i in range(len(dom.definition.disks))]
    mem = tmp_path / "k.mem"
    async with anyio.create_task_group() as tg:
        tg.start_soon(kill_when_saving, mem, int(dom.paths.pidfile.read_text()))
        with pytest.raises(qdriver.QDriverError):
            await dom.snapshot_create_xml(
                f"<domainsnapshot><name>k1</name><memory file='{mem}'/></domainsnapshot>")
    assert not mem.exists()
    assert not Path(str(sources[0]).rsplit(".", 1)[0] + ".k1").exists()
    assert dom.state_reason() == (DomainState.SHUTOFF, "crashed")
    fresh = qdriver.Driver(state_dir).lookup("guest")
    assert fresh.list_snapshots() == [] and \
        [d.source for d in fresh.definition.disks] == sources


async def test_qemu_killed_during_a_live_memory_snapshot(make_domain: MakeDomain, state_dir: Path,
                                                         tmp_path: Path) -> None:
    """LIVE: the disks switch first, then the RAM is copied while the guest runs. QEMU
    killed during the copy wrote into the new overlay until it died: the definition
    names it, and no file is left that nothing names."""
    dom = await make_domain(cmdline="qd.fill=160 qd.fillmode=repeat", memory_mib=512)
    await dom.start()
    await wait_console(dom, "COUNTER 2", timeout=90)
    mem = tmp_path / "l.mem"
    overlay = tmp_path / "l-vda.qcow2"
    async with anyio.create_task_group() as tg:
        tg.start_soon(kill_when_saving, mem, int(dom.paths.pidfile.read_text()))
        with pytest.raises(qdriver.QDriverError):
            await dom.snapshot_create_xml(
                f"<domainsnapshot><name>l1</name><memory file='{mem}'/><disks>"
                f"<disk name='vda' snapshot='external'><source file='{overlay}'/></disk>"
                "</disks></domainsnapshot>", live=True)
    assert not mem.exists() and dom.list_snapshots() == []
    assert dom.state_reason() == (DomainState.SHUTOFF, "crashed")
    assert [d.source for d in dom.definition.disks] == [str(overlay)], \
        "the overlay QEMU wrote into is named by nothing"
    wrote = disk_counter(overlay)
    assert wrote >= 2, "the guest's writes since the switch are not in the overlay"
    offset = len(dom.paths.console_log.read_text(errors="replace"))
    await dom.start()
    text = await wait_console(dom, "GUEST-READY", after=offset)
    assert f"GUEST-READY disk=vda start={wrote}" in text, text[:200]
    await dom.destroy()


async def test_transaction_rejected_by_qemu(make_domain: MakeDomain, state_dir: Path) -> None:
    dom = await make_domain(disks=2)
    vda, vdb = disk_source(dom, 0), disk_source(dom, 1)
    await qemuimg.snapshot_create(vda, "t1")  # QEMU will refuse a second 't1' on vda
    await dom.start()
    await wait_console(dom, "COUNTER 3")
    r = run_cli(state_dir, "snapshot-create-as", "guest", "t1", "--disk-only",
                "--diskspec", "vda,snapshot=internal", "--diskspec", "vdb,snapshot=external",
                check=False)
    assert r.returncode == 1 and "already exists" in r.stderr.decode()
    overlay = str(vdb).rsplit(".", 1)[0] + ".t1"
    assert not Path(overlay).exists()
    async with dom.monitor() as mon:
        nodes = [n["node-name"] for n in await mon.execute("query-named-block-nodes")]
    assert not any(n.startswith("ov-") for n in nodes), "the overlay node was not deleted"
    fresh = qdriver.Driver(state_dir).lookup("guest")
    assert [d.source for d in fresh.definition.disks] == [vda, vdb]
    assert fresh.list_snapshots() == [] and internal_snapshots(vda) == ["t1"]
    assert internal_snapshots(vdb) == []
    assert (await fresh.get_state())[0] == DomainState.RUNNING
    await dom.destroy()


async def test_quiesce_without_a_responding_agent(booted: MakeDomain, state_dir: Path) -> None:
    channel = ("\n    <channel type='unix'><target type='virtio' "
               "name='org.qemu.guest_agent.0'/></channel>")
    dom = await booted(extra_devices=channel, cmdline="qd.noagent=1")
    sources = [disk_source(dom, i) for i in range(len(dom.definition.disks))]
    with pytest.raises(qdriver.AgentUnresponsiveError):
        await dom.snapshot_create_xml("<domainsnapshot><name>q1</name></domainsnapshot>",
                                      disk_only=True, quiesce=True)
    assert not Path(str(sources[0]).rsplit(".", 1)[0] + ".q1").exists()
    await assert_untouched(dom, state_dir, sources)
    await dom.destroy()


def needs_recovery(image: str | Path) -> bool:
    """Whether an ext4 image was caught mid-transaction (journal not flushed)."""
    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "disk.raw"
        subprocess.run(["qemu-img", "convert", "-U", "-O", "raw", str(image), str(raw)],
                       check=True, capture_output=True)
        out = subprocess.run(["dumpe2fs", "-h", str(raw)], check=True, capture_output=True,
                             text=True).stdout
    return "needs_recovery" in out


async def test_quiesce_freezes_guest_filesystems_around_the_switch(booted: MakeDomain,
                                                                   state_dir: Path) -> None:
    channel = ("\n    <channel type='unix'><target type='virtio' "
               "name='org.qemu.guest_agent.0'/></channel>")
    dom = await booted(extra_devices=channel)
    base = disk_source(dom)
    log_start = len(dom.paths.console_log.read_text())
    run_cli(state_dir, "snapshot-create-as", "guest", "q1", "--disk-only", "--quiesce")
    console = dom.paths.console_log.read_text()[log_start:]
    assert console.index("GUEST-FSFREEZE") < console.index("GUEST-FSTHAW")
    assert not needs_recovery(base), "a quiesced snapshot holds a clean file system"
    await keeps_counting(dom, last_counter(dom))
    # without quiescing, the mounted file system is caught with its journal open
    top = disk_source(qdriver.Driver(state_dir).lookup("guest"))
    run_cli(state_dir, "snapshot-create-as", "guest", "q2", "--disk-only")
    assert needs_recovery(top)
    await dom.destroy()


async def test_existing_files_are_refused_before_anything_happens(
        booted: MakeDomain, state_dir: Path, tmp_path: Path) -> None:
    dom = await booted()
    sources = [disk_source(dom, i) for i in range(len(dom.definition.disks))]
    mem = tmp_path / "exists.mem"
    mem.write_text("precious")
    with pytest.raises(qdriver.OperationFailedError, match="already exists"):
        await dom.snapshot_create_xml(f"<domainsnapshot><memory file='{mem}'/>"
                                      "</domainsnapshot>")
    assert mem.read_text() == "precious"
    await assert_untouched(dom, state_dir, sources)
    await dom.destroy()


async def test_report_measures_the_guest_pause(booted: MakeDomain, tmp_path: Path) -> None:
    dom = await booted()
    internal = await dom.snapshot_create_xml("<domainsnapshot><name>r1</name></domainsnapshot>")
    assert internal.report is not None
    assert 0 < internal.report.pause <= internal.report.seconds
    disk_only = await dom.snapshot_create_xml("<domainsnapshot><name>r2</name>"
                                              "</domainsnapshot>", disk_only=True)
    assert disk_only.report is not None and disk_only.report.pause == 0.0
    mem = await dom.snapshot_create_xml(f"<domainsnapshot><name>r3</name><memory file="
                                        f"'{tmp_path / 'r3.mem'}'/></domainsnapshot>")
    assert mem.report is not None
    assert mem.report.memory_bytes == (tmp_path / "r3.mem").stat().st_size
    assert mem.report.memory_rate > 0
    await dom.destroy()


async def test_hmp_savevm_fallback_where_snapshot_save_is_missing(booted: MakeDomain) -> None:
    """QEMU before 6.0 has no snapshot-save: the plan uses HMP savevm instead."""
    from qdriver.caps.running import RunningCaps
    from qdriver.ops.create_exec import CreateExecution
    from qdriver.ops.create_plan import plan_snapshot
    dom = await booted()
    plan = plan_snapshot(dom.definition, "running", "<domainsnapshot><name>h1</name>"
                         "</domainsnapshot>", caps=RunningCaps(snapshot_save=False))
    assert plan.steps == ("pause", "hmp-savevm", "resume", "write-metadata")
    async with dom.job() as job:
        record = await CreateExecution(job, plan, None).run()
    assert record.name == "h1"
    vda = disk_source(dom)
    assert {s.name: s.vm_state_size for s in await qemuimg.snapshot_list(vda)}["h1"] > 0
    assert dom.current_snapshot().name == "h1"
    assert (await dom.get_state())[0] == DomainState.RUNNING
    await dom.destroy()


async def test_hmp_savevm_errors_are_read_from_its_text(make_domain: MakeDomain) -> None:
    """HMP answers a failed savevm with text, not a QMP error: it must still fail."""
    from qdriver.caps.running import RunningCaps
    from qdriver.ops.create_exec import CreateExecution
    from qdriver.ops.create_plan import plan_snapshot
    template = await make_domain(name="template")
    plan = plan_snapshot(template.definition, "running", "<domainsnapshot><name>h2</name>"
                         "</domainsnapshot>", caps=RunningCaps(snapshot_save=False))
    diskless = await make_domain(name="diskless", with_disk=False)
    await diskless.start(paused=True)
    async with diskless.job() as job:
        execution = CreateExecution(job, plan, None)
        execution.mon = await job.monitor()
        with pytest.raises(qdriver.OperationFailedError,
                           match="savevm failed: Error: no block device can store vmstate"):
            await execution.hmp_savevm()
    await diskless.destroy()


async def test_planning_without_the_lock_changes_nothing(booted: MakeDomain, state_dir: Path,
                                                         tmp_path: Path) -> None:
    """snapshot-plan takes no lock, so it must only read: no run.json write, and no
    toggling of a migration capability another process's live snapshot may be using."""
    dom = await booted()
    xml = f"<domainsnapshot><memory file='{tmp_path / 'x.mem'}'/></domainsnapshot>"
    async with dom.monitor() as mon:  # another operation holds the lock
        await mon.execute("migrate-set-capabilities", {"capabilities": [
            {"capability": "background-snapshot", "state": True}]})
        record = dom.paths.runtime.read_bytes()
        plan = await qdriver.Driver(state_dir).lookup("guest").plan_snapshot(
            xml, qdriver.CreateFlags(live=True))
        assert plan.live == "background"
        caps = {c["capability"]: c["state"]
                for c in await mon.execute("query-migrate-capabilities")}
        assert caps["background-snapshot"] is True, "planning switched the capability off"
        assert dom.paths.runtime.read_bytes() == record, "planning wrote run.json"
        await mon.execute("migrate-set-capabilities", {"capabilities": [
            {"capability": "background-snapshot", "state": False}]})
    await dom.destroy()
