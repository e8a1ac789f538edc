"""Our QMP layer (jobs, fd passing, errors) and the qemu-img wrapper, for real."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
from qemu.qmp import ExecuteError

from qdriver import qemuimg, qmp
from qdriver.launch.cmdline import format_node

from .helpers import MakeDomain, disk_source


async def test_job_helper_runs_snapshot_save_and_reports_job_errors(
        make_domain: MakeDomain) -> None:
    dom = await make_domain()
    await dom.start(paused=True)
    node = format_node("vda")
    progress: list[tuple[int, int]] = []
    async with dom.monitor() as mon:
        await qmp.run_job(mon, "snapshot-save", {"tag": "s1", "vmstate": node,
                                                 "devices": [node]}, "save1", timeout=60,
                          progress=lambda cur, tot: progress.append((cur, tot)))
        # QEMU reports a job's failure only in query-jobs: the helper must surface it
        with pytest.raises(qmp.JobError, match="At least one device is required"):
            await qmp.run_job(mon, "snapshot-save", {"tag": "s2", "vmstate": node,
                                                     "devices": []}, "save2", timeout=60)
        jobs = await mon.execute("query-jobs")
        assert jobs == [], "concluded jobs must be dismissed"
    await dom.destroy()
    snaps = await qemuimg.snapshot_list(disk_source(dom))
    assert [s.name for s in snaps] == ["s1"] and snaps[0].vm_state_size > 0


async def test_command_errors_and_fd_passing(make_domain: MakeDomain, tmp_path: Path) -> None:
    dom = await make_domain()
    await dom.start(paused=True)
    async with dom.monitor() as mon:
        with pytest.raises(qmp.CommandError) as err:
            await mon.execute("getfd", {"fdname": "nothing-sent"})
        assert err.value.error_class == "GenericError"
        assert isinstance(err.value.__cause__, ExecuteError), "the QMP error is kept as cause"
        assert "No file descriptor supplied via SCM_RIGHTS" in str(err.value)
        fd = os.open(tmp_path / "f", os.O_WRONLY | os.O_CREAT, 0o600)
        try:
            await mon.send_fd(fd, "myfd")
        finally:
            os.close(fd)
        await mon.execute("closefd", {"fdname": "myfd"})
        assert await mon.hmp("info status") == "VM status: paused (prelaunch)\r\n"
    await dom.destroy()


@pytest.mark.no_qemu
async def test_connect_to_missing_socket_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(qmp.MonitorConnectError, match="cannot connect to QEMU monitor"):
        await qmp.connect(tmp_path / "none.sock", timeout=1)


async def test_qemuimg_create_info_snapshots(tmp_path: Path) -> None:
    base = tmp_path / "base.qcow2"
    await qemuimg.create(base, "qcow2", size=16 << 20)
    assert (base.stat().st_mode & 0o777) == 0o600
    overlay = tmp_path / "top.qcow2"
    await qemuimg.create(overlay, backing=base, backing_fmt="qcow2")
    info = await qemuimg.info(overlay)
    assert (info.format, info.virtual_size, info.backing_filename) == \
        ("qcow2", 16 << 20, str(base))
    await qemuimg.snapshot_create(base, "one")
    await qemuimg.snapshot_create(base, "two")
    assert [s.name for s in await qemuimg.snapshot_list(base)] == ["one", "two"]
    await qemuimg.snapshot_apply(base, "one")
    await qemuimg.snapshot_delete(base, "one")
    assert [s.name for s in await qemuimg.snapshot_list(base)] == ["two"]
    assert (await qemuimg.check(base))["check-errors"] == 0


async def test_qemuimg_errors_carry_stderr(tmp_path: Path) -> None:
    with pytest.raises(qemuimg.QemuImgError, match="No such file"):
        await qemuimg.info(tmp_path / "missing.qcow2")
    raw = tmp_path / "raw.img"
    await qemuimg.create(raw, "raw", size=1 << 20)
    with pytest.raises(qemuimg.QemuImgError, match="qemu-img snapshot failed"):
        await qemuimg.snapshot_create(raw, "x")
