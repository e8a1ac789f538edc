"""destroy always stops the guest; define and undefine are serialised with operations."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from functools import partial
from pathlib import Path
from typing import Callable

import anyio
import pytest

import qdriver
from qdriver import process
from qdriver.durable import write_record
from qdriver.launch.runtime import Runtime, StatusRecord
from qdriver.paths import DomainPaths
from qdriver.runstatus import DomainState
from qdriver.testing.guestpool import qemu_pids

from .helpers import MakeDomain, alive, run_cli, wait_console


async def test_destroy_preempts_an_operation_waiting_on_a_frozen_qemu(
        booted: MakeDomain, state_dir: Path, tmp_path: Path) -> None:
    dom = await booted()
    rec = dom.runtime.peek()
    assert rec is not None
    definition = dom.xml_desc(inactive=True)
    snap = subprocess.Popen(
        [sys.executable, "-m", "qdriver", "--state-dir", str(state_dir), "snapshot-create-as",
         "guest", "frozen", "--memspec", f"file={tmp_path}/frozen.mem",
         "--diskspec", f"vda,file={tmp_path}/frozen.qcow2"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        while not dom.paths.journal.exists():  # the snapshot has begun, lock held
            assert snap.poll() is None, snap.communicate()
            await anyio.sleep(0.002)
        os.kill(rec.pid, signal.SIGSTOP)  # from here on QEMU answers nothing
        await anyio.sleep(1.0)
        assert snap.poll() is None, "the snapshot ended although QEMU is frozen"
        t0 = time.monotonic()
        result = await anyio.to_thread.run_sync(lambda: run_cli(state_dir, "destroy", "guest"))
        # the snapshot would hold the lock for the 30 s of a QMP timeout: destroy does not
        # wait for that
        assert time.monotonic() - t0 < 10, "destroy waited for the operation"
        assert b"destroyed" in result.stdout
        assert not alive(rec.pid), "destroy returned with QEMU alive"
        _, err = await anyio.to_thread.run_sync(lambda: snap.communicate(timeout=60))
    finally:
        if snap.poll() is None:
            snap.kill()
        if alive(rec.pid):
            os.kill(rec.pid, signal.SIGKILL)
    assert snap.returncode == 1 and b"Traceback" not in err, err
    # the interrupted snapshot rolled back: nothing of it is left, nothing is lost
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("frozen")) == []
    assert dom.list_snapshots() == [] and not dom.paths.journal.exists()
    assert dom.xml_desc(inactive=True) == definition
    assert await dom.get_state() == (DomainState.SHUTOFF, "destroyed")


async def test_define_during_a_memory_snapshot_is_never_lost(make_domain: MakeDomain,
                                                             tmp_path: Path) -> None:
    dom = await make_domain(memory_mib=512, cmdline="qd.fill=300 qd.fillmode=repeat")
    await dom.start()
    await wait_console(dom, "COUNTER 2")
    await wait_console(dom, "GUEST-READY")
    edited = dom.xml_desc(inactive=True).replace("<name>guest</name>",
                                                 "<name>guest</name><description>edited"
                                                 "</description>")
    async with anyio.create_task_group() as tg:
        tg.start_soon(lambda: dom.snapshot_create_xml(
            f"<domainsnapshot><name>m</name><memory snapshot='external' "
            f"file='{tmp_path}/m.mem'/><disks><disk name='vda' snapshot='external'>"
            f"<source file='{tmp_path}/m.qcow2'/></disk></disks></domainsnapshot>"))
        while not dom.paths.journal.exists():  # the snapshot is under way, lock held
            await anyio.sleep(0.005)
        await qdriver.Driver(dom.driver.state_dir).define_xml(edited)  # waits, then lands
    assert "<description>edited</description>" in dom.xml_desc(inactive=True)
    assert dom.current_snapshot().name == "m"
    await dom.destroy()


async def test_undefine_racing_start_ends_one_way_or_the_other(make_domain: MakeDomain,
                                                               state_dir: Path) -> None:
    for _ in range(3):
        await make_domain(with_disk=False)
        procs = [subprocess.Popen([sys.executable, "-m", "qdriver", "--state-dir",
                                   str(state_dir), cmd, "guest"], stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE) for cmd in ("start", "undefine")]
        results = [await anyio.to_thread.run_sync(partial(p.communicate, timeout=25))
                   for p in procs]
        codes = [p.returncode for p in procs]
        for _, err in results:
            assert b"Traceback" not in err
        domain_dir = state_dir / "domains" / "guest"
        if codes == [0, 1]:  # start won: undefine refused a running domain
            assert b"cannot undefine a running domain" in results[1][1]
            assert (domain_dir / "domain.xml").exists()
            run_cli(state_dir, "destroy", "guest")
            run_cli(state_dir, "undefine", "guest")
        else:  # undefine won: start found no domain, nothing is left of it
            assert codes == [1, 0], results
            assert b"no domain with matching name" in results[0][1]
            assert not domain_dir.exists()
        assert qemu_pids(state_dir) == []


@pytest.fixture
def state_dir(request: pytest.FixtureRequest, tmp_path: Path) -> Path:
    """The full-disk test puts the state dir on a small tmpfs; others keep theirs."""
    if "full_state_disk" in request.node.name:
        mount: Callable[..., Path] = request.getfixturevalue("small_tmpfs")
        return mount(size="8m") / "state"
    return tmp_path / "state"


def fill(directory: Path) -> Path:
    filler = directory / "filler"
    subprocess.run(["dd", "if=/dev/zero", f"of={filler}", "bs=64k"], capture_output=True)
    return filler


async def test_full_state_disk_does_not_stop_destroy_suspend_or_shutdown(
        booted: MakeDomain, state_dir: Path) -> None:
    dom = await booted()
    filler = fill(state_dir.parent)
    for cmd, state in (("suspend", DomainState.PAUSED), ("resume", DomainState.RUNNING)):
        result = await anyio.to_thread.run_sync(partial(run_cli, state_dir, cmd, "guest"))
        assert b"warning: cannot record" in result.stderr
        assert (await dom.get_state())[0] == state
    pid = dom.runtime.peek().pid  # type: ignore[union-attr]
    await anyio.to_thread.run_sync(lambda: run_cli(state_dir, "shutdown", "guest"))
    deadline = time.monotonic() + 30
    while alive(pid) and time.monotonic() < deadline:
        await anyio.sleep(0.1)
    assert not alive(pid), "the guest did not power off"
    filler.unlink()
    await dom.start()
    await wait_console(dom, "COUNTER 1", after=dom.paths.console_log.stat().st_size)
    pid = dom.runtime.peek().pid  # type: ignore[union-attr]
    fill(state_dir.parent)
    result = await anyio.to_thread.run_sync(lambda: run_cli(state_dir, "destroy", "guest"))
    assert b"destroyed" in result.stdout
    assert not alive(pid)
    assert (await dom.get_state())[0] == DomainState.SHUTOFF


async def test_define_after_a_killed_snapshot_is_not_undone_by_its_recovery(
        make_domain: MakeDomain, state_dir: Path, tmp_path: Path) -> None:
    dom = await make_domain()
    edited = tmp_path / "edited.xml"
    edited.write_text(dom.xml_desc(inactive=True).replace(
        "<name>guest</name>", "<name>guest</name><description>edited</description>"))
    killed = subprocess.run(
        [sys.executable, "-m", "qdriver", "--state-dir", str(state_dir), "snapshot-create-as",
         "guest", "s1", "--disk-only", "--diskspec", f"vda,file={tmp_path}/s1.qcow2"],
        env={**os.environ, "QDRIVER_FAULT": "snapshot-create:recorded:write-definition"},
        capture_output=True)
    assert killed.returncode == -signal.SIGKILL and dom.paths.journal.exists()
    run_cli(state_dir, "define", str(edited))  # recovers the dead snapshot first
    run_cli(state_dir, "recover", "guest")  # (as any later operation would)
    assert not dom.paths.journal.exists()
    assert "<description>edited</description>" in dom.xml_desc(inactive=True)
    assert not (tmp_path / "s1.qcow2").exists() and dom.list_snapshots() == []


@pytest.mark.no_qemu
async def test_a_new_qemu_waits_for_the_last_word_of_the_old_supervisor(tmp_path: Path
                                                                       ) -> None:
    """The supervisor of a QEMU just killed writes its exit status a moment later;
    a start must wait for that, or the new QEMU's start reads it and fails."""
    exitfile = tmp_path / "qemu.exit"
    process.spawn(["sleep", "0.5"], exitfile, tmp_path / "qemu.log")
    assert process.exit_status(exitfile) is None
    assert process.supervisors_of(exitfile) != []
    await process.wait_supervisors_gone(exitfile, 5.0)
    assert process.exit_status(exitfile) == 0, "the old supervisor had not written yet"
    assert process.supervisors_of(exitfile) == []


@pytest.mark.no_qemu
def test_a_start_scans_for_an_old_supervisor_only_when_one_can_be_left(tmp_path: Path) -> None:
    """The /proc scan costs a start 1-2 ms; it is skipped only where no supervisor
    of an earlier QEMU can write the exit file any more."""
    paths = DomainPaths.of(tmp_path / "state", "g")
    paths.dir.mkdir(parents=True)
    runtime = Runtime(paths)
    assert not runtime._earlier_supervisor_possible(), "no QEMU ever ran here"
    paths.qemu_log.write_text("")
    assert runtime._earlier_supervisor_possible(), "a start died after removing the status"
    write_record(paths.status, StatusRecord("shutdown", exit_recorded=True))
    assert not runtime._earlier_supervisor_possible(), "the exit status was written: done"
    write_record(paths.status, StatusRecord("crashed", exit_recorded=False))
    assert runtime._earlier_supervisor_possible(), "reaped before the supervisor wrote"
    write_record(paths.status, StatusRecord("failed"))
    assert runtime._earlier_supervisor_possible(), "an aborted start may leave one"
