"""Deleting snapshots with their data, on the real guest and with qemu-img alone."""
from __future__ import annotations

import json
import os
import re
import struct
import subprocess
from pathlib import Path
from typing import Callable

import pytest

import qdriver
from qdriver import DomainState, qmp
from qdriver.blockdev import jobs as blockjobs
from qdriver.ops import delete_exec
from qdriver.ops.delete_plan import plan_delete

from .helpers import (
    GuestImage,
    MakeDomain,
    assert_consistent,
    backing_chain,
    disk_counter,
    disk_source,
    guest_view,
    internal_snapshots,
    last_counter,
    qemu_img_check,
    run_cli,
    sha256,
    wait_console,
)


def source(dom: qdriver.Domain) -> str:
    src = disk_source(dom)
    assert src is not None
    return src


def listed(state_dir: Path, domain: str = "guest") -> list[str]:
    out: bytes = run_cli(state_dir, "snapshot-list", domain, "--name").stdout
    return out.decode().split()


def snap_xml(state_dir: Path, name: str) -> str:
    return (state_dir / "domains" / "guest" / "snapshots" / f"{name}.xml").read_text()


async def disk_snapshots(dom: qdriver.Domain, state_dir: Path, work: Path,
                         names: tuple[str, ...]) -> dict[str, int]:
    """External disk-only snapshots, the guest writing between them; what each froze."""
    frozen: dict[str, int] = {}
    for name in names:
        before = source(dom)
        run_cli(state_dir, "snapshot-create-as", "guest", name, "--disk-only",
                "--diskspec", f"vda,file={work}/{name}.qcow2")
        frozen[name] = disk_counter(before)
        if dom.is_active:
            text = dom.paths.console_log.read_text(errors="replace")
            await wait_console(dom, "COUNTER", after=len(text))
            await wait_console(dom, "COUNTER", after=len(text) + 12)
    return frozen


async def running_chain(booted: MakeDomain, state_dir: Path, work: Path
                        ) -> tuple[qdriver.Domain, str, dict[str, int]]:
    """The running guest on orig <- s2 <- s3 <- s4 (disk-only snapshots); what each froze."""
    dom = await booted()
    orig = source(dom)
    return dom, orig, await disk_snapshots(dom, state_dir, work, ("s2", "s3", "s4"))


async def test_running_chain_delete_middle_internal_and_leaf(booted: MakeDomain, state_dir: Path,
                                                             tmp_path: Path) -> None:
    dom, orig, frozen = await running_chain(booted, state_dir, tmp_path)
    orig_sum = sha256(orig)
    run_cli(state_dir, "snapshot-create-as", "guest", "i1")  # internal, in s4.qcow2
    s2, s3, s4 = (str(tmp_path / f"{n}.qcow2") for n in ("s2", "s3", "s4"))
    assert backing_chain(s4) == [s4, s3, s2, orig] and internal_snapshots(s4) == ["i1"]

    plan = json.loads(run_cli(state_dir, "snapshot-delete", "guest", "s3", "--plan",
                              "--json").stdout)
    assert plan["commits"] == [{"disk": "vda", "top": s3, "into": s2, "mode": "intermediate",
                                "rebase": []}]
    assert Path(s3).exists()  # --plan changed nothing
    run_cli(state_dir, "snapshot-delete", "guest", "s3")
    assert backing_chain(s4) == [s4, s2, orig] and not Path(s3).exists()
    assert f"file='{s2}'" in snap_xml(state_dir, "s4")  # s4's disk state is s2.qcow2 now
    assert "<name>s2</name>" in snap_xml(state_dir, "s4").split("<parent>")[1]

    # the leaf still holds i1: it is kept, and the plan says why
    plan = json.loads(run_cli(state_dir, "snapshot-delete", "guest", "s4", "--plan",
                              "--json").stdout)
    assert plan["commits"] == [] and "internal snapshot 'i1'" in plan["kept"][0]["why"]

    run_cli(state_dir, "snapshot-delete", "guest", "i1")
    assert internal_snapshots(s4) == []
    run_cli(state_dir, "snapshot-delete", "guest", "s4")  # the active layer: pivot
    assert source(dom) == s2 and not Path(s4).exists() and backing_chain(s2) == [s2, orig]
    assert listed(state_dir) == ["s2"]
    assert "<active>1</active>" in snap_xml(state_dir, "s2")

    # the guest kept running and writes to the merged image
    text = dom.paths.console_log.read_text(errors="replace")
    await wait_console(dom, "COUNTER", after=len(text))
    assert (await dom.get_state())[0] is DomainState.RUNNING
    async with dom.monitor() as mon:
        files = [b["inserted"]["file"] for b in await mon.execute("query-block")
                 if b.get("inserted")]
    assert files == [s2]
    assert sha256(orig) == orig_sum and disk_counter(orig) == frozen["s2"]
    await dom.destroy()
    qemu_img_check(s2)
    assert_consistent(state_dir, tmp_path, "after the deletes")
    assert sorted(p.name for p in tmp_path.glob("*.qcow2")) == sorted(
        [Path(orig).name, "s2.qcow2"])


async def test_branches_after_revert_stay_revertible(booted: MakeDomain, state_dir: Path,
                                                    tmp_path: Path) -> None:
    dom, orig, frozen = await running_chain(booted, state_dir, tmp_path)
    await dom.destroy()
    run_cli(state_dir, "snapshot-revert", "guest", "s2")  # a branch off orig

    async def check_revertible(names: list[str]) -> None:
        for name in names:
            run_cli(state_dir, "snapshot-revert", "guest", name)
            assert disk_counter(source(dom)) == frozen[name], name

    run_cli(state_dir, "snapshot-delete", "guest", "s3")  # the old branch's middle
    await check_revertible(["s4", "s2"])
    run_cli(state_dir, "snapshot-delete", "guest", "s4")  # the old branch's tip
    await check_revertible(["s2"])
    run_cli(state_dir, "snapshot-delete", "guest", "s2")  # the branch point
    assert listed(state_dir) == []
    assert disk_counter(source(dom)) == frozen["s2"]
    assert [Path(p).name for p in backing_chain(source(dom))][-1] == Path(orig).name
    leftovers = set(tmp_path.glob("*.qcow2")) - {Path(p) for p in backing_chain(source(dom))}
    assert leftovers == set()
    await dom.start()
    await wait_console(dom, "COUNTER")


async def test_shut_off_deletes_use_qemu_img_only(make_domain: MakeDomain, state_dir: Path,
                                                  tmp_path: Path) -> None:
    dom = await make_domain()
    orig = source(dom)
    await disk_snapshots(dom, state_dir, tmp_path, ("s2", "s3", "s4", "s5"))
    view = guest_view(source(dom), tmp_path)
    s2, s3, s4, s5 = (str(tmp_path / f"{n}.qcow2") for n in ("s2", "s3", "s4", "s5"))
    run_cli(state_dir, "snapshot-delete", "guest", "s3", "--metadata")
    assert Path(s3).exists() and backing_chain(s5) == [s5, s4, s3, s2, orig]  # metadata only
    run_cli(state_dir, "snapshot-delete", "guest", "s4", "--children-only")
    assert listed(state_dir) == ["s2", "s4"]
    assert source(dom) == s4 and not Path(s5).exists()  # the child's overlay went into s4
    run_cli(state_dir, "snapshot-delete", "guest", "s2", "--children")
    assert listed(state_dir) == []
    # s3's metadata was forgotten with --metadata, so nothing says its boundary
    # (s2.qcow2 | s3.qcow2) may go: that one stays, every recorded one went
    assert backing_chain(source(dom)) == [s3, orig] and not Path(s2).exists()
    assert guest_view(source(dom), tmp_path) == view  # nothing the guest wrote was lost
    assert not dom.paths.qemu_log.exists()  # no QEMU was started for any of it
    qemu_img_check(source(dom))


def leak_a_cluster(path: str) -> None:
    """Give a qcow2 image one allocated cluster nothing references, as a QEMU killed
    mid-write can leave (one more cluster at the end, its refcount set to 1)."""
    with open(path, "r+b") as f:
        head = f.read(104)
        cluster_bits, = struct.unpack(">I", head[20:24])
        table, = struct.unpack(">Q", head[48:56])
        assert struct.unpack(">I", head[96:100])[0] == 4  # 16-bit refcounts
        size = 1 << cluster_bits
        index = (os.fstat(f.fileno()).st_size + size - 1) // size
        per_block = size * 8 // 16
        f.seek(table + 8 * (index // per_block))
        block, = struct.unpack(">Q", f.read(8))
        f.truncate((index + 1) * size)
        f.seek(block + 2 * (index % per_block))
        f.write(struct.pack(">H", 1))
    leaked = subprocess.run(["qemu-img", "check", path], capture_output=True, text=True)
    assert leaked.returncode == 3 and "leaked clusters were found" in leaked.stdout


async def test_qemu_killed_during_block_commit(booted: MakeDomain, state_dir: Path, tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    dom = await booted()
    orig = source(dom)
    await disk_snapshots(dom, state_dir, tmp_path, ("s2", "s3", "s4"))
    pid = dom.runtime.peek().pid  # type: ignore[union-attr]
    s2, s3, s4 = (str(tmp_path / f"{n}.qcow2") for n in ("s2", "s3", "s4"))
    follow = blockjobs.follow

    async def kill_qemu_then_follow(*args: object) -> None:
        os.kill(pid, 9)  # the block-commit job has just been started
        await follow(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(blockjobs, "follow", kill_qemu_then_follow)
    execute = qmp.Monitor.execute

    async def slow_commit(self: qmp.Monitor, command: str, arguments: object = None,
                          *rest: object) -> object:
        if command == "block-commit":  # a crawling job: the kill comes before it ends
            arguments = {**arguments, "speed": 1}  # type: ignore[dict-item]
        return await execute(self, command, arguments, *rest)  # type: ignore[arg-type]

    monkeypatch.setattr(qmp.Monitor, "execute", slow_commit)
    with pytest.raises(qdriver.QDriverError, match="block commit failed while deleting "
                                                   "disk 'vda'"):
        await dom.delete_snapshot("s3")
    assert dom.interrupted_operation() == "snapshot-delete of s3"
    assert "snapshotDeleteInProgress" in snap_xml(state_dir, "s3")
    # QEMU killed while it commits into s2 may leave a leaked cluster there (it does
    # now and then): make sure it has one, which the recovery must free
    leak_a_cluster(s2)
    report = await dom.recover()  # QEMU is gone: the commit is finished with qemu-img
    assert report is not None and "finished deleting snapshots s3" in str(report)
    assert listed(state_dir) == ["s2", "s4"]
    assert backing_chain(s4) == [s4, s2, orig] and not Path(s3).exists()
    qemu_img_check(s4)
    qemu_img_check(s2)


async def test_full_disk_during_qemu_img_commit(make_domain: MakeDomain, state_dir: Path,
                                                tmp_path: Path,
                                                small_tmpfs: Callable[..., Path]) -> None:
    dom = await make_domain()
    small = small_tmpfs(size="24m")
    run_cli(state_dir, "snapshot-create-as", "guest", "s2", "--disk-only",
            "--diskspec", f"vda,file={small}/s2.qcow2")
    run_cli(state_dir, "snapshot-create-as", "guest", "s3", "--disk-only",
            "--diskspec", f"vda,file={tmp_path}/s3.qcow2")
    # 32 MiB the commit must write into s2.qcow2, on a 24 MiB file system
    subprocess.run(["qemu-io", "-f", "qcow2", "-c", "write -P 0x5a 0 32M",
                    str(tmp_path / "s3.qcow2")], check=True, capture_output=True)
    view = guest_view(source(dom), tmp_path)
    r = run_cli(state_dir, "snapshot-delete", "guest", "s3", check=False)
    err = r.stderr.decode()
    assert r.returncode == 1 and "block commit failed while deleting disk 'vda'" in err
    assert "No space left on device" in err and "Traceback" not in err
    assert guest_view(source(dom), tmp_path) == view  # nothing the guest sees was lost
    assert re.search(r"Interrupted:\s+snapshot-delete of s3",
                     run_cli(state_dir, "dominfo", "guest").stdout.decode())
    r = run_cli(state_dir, "snapshot-revert", "guest", "s3", check=False)  # still no space
    assert r.returncode == 1 and "was target of not completed snapshot delete" in \
        r.stderr.decode()
    subprocess.run(["mount", "-o", "remount,size=96m", str(small)], check=True)
    recovered = run_cli(state_dir, "recover", "guest").stdout.decode()
    assert "finished deleting snapshots s3" in recovered
    assert listed(state_dir) == ["s2"]
    assert source(dom) == str(small / "s2.qcow2") and not (tmp_path / "s3.qcow2").exists()
    assert guest_view(source(dom), tmp_path) == view


async def test_recovery_adopts_a_commit_that_finished(make_domain: MakeDomain, state_dir: Path,
                                                      tmp_path: Path) -> None:
    """The process died after QEMU finished an intermediate commit (the top above
    was re-pointed) but before the metadata followed: recovery renames, not re-commits."""
    dom = await make_domain()
    orig = source(dom)
    await disk_snapshots(dom, state_dir, tmp_path, ("s2", "s3", "s4"))
    s2, s3, s4 = (str(tmp_path / f"{n}.qcow2") for n in ("s2", "s3", "s4"))
    view = guest_view(s4, tmp_path)
    store = dom.snapshot_store()
    delete_exec.mark(store, store.load(), ["s3"])  # what the dead delete had done first
    subprocess.run(["qemu-img", "commit", "-q", "-d", s3], check=True)  # QEMU's part
    subprocess.run(["qemu-img", "rebase", "-u", "-b", s2, "-F", "qcow2", s4], check=True)
    assert dom.interrupted_operation() == "snapshot-delete of s3"
    report = await dom.recover()
    assert report is not None and "finished deleting snapshots s3" in str(report)
    assert listed(state_dir) == ["s2", "s4"] and not Path(s3).exists()
    assert backing_chain(s4) == [s4, s2, orig] and f"file='{s2}'" in snap_xml(state_dir, "s4")
    assert guest_view(s4, tmp_path) == view


async def test_internal_delete_through_hmp_delvm(booted: MakeDomain, state_dir: Path) -> None:
    """The fallback for a QEMU without the snapshot-delete job, on a real QEMU."""
    dom = await booted()
    run_cli(state_dir, "snapshot-create-as", "guest", "i1")
    assert internal_snapshots(source(dom)) == ["i1"]
    async with dom.job() as job:
        plan = plan_delete(job.tree, job.definition, True, ["i1"], job.image_graph(),
                           snapshot_job=False)
        assert plan.internal[0].hmp
        await delete_exec.DeleteExecution(job, plan).run()
    assert internal_snapshots(source(dom)) == [] and listed(state_dir) == []
    assert (await dom.get_state())[0] is DomainState.RUNNING


def sources(dom: qdriver.Domain) -> dict[str, str]:
    return {d.target: d.source or "" for d in dom.definition.disks}


async def test_running_two_disks_commit_side_by_side(booted: MakeDomain, state_dir: Path,
                                                     tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """Each disk's active commit is its own QEMU job: both run at once, both pivot,
    and the definition, the files and the guest end as after one commit each."""
    dom = await booted(disks=2)
    bases = sources(dom)
    run_cli(state_dir, "snapshot-create-as", "guest", "both", "--disk-only",
            "--diskspec", f"vda,file={tmp_path}/both-vda.qcow2",
            "--diskspec", f"vdb,file={tmp_path}/both-vdb.qcow2")
    text = dom.paths.console_log.read_text(errors="replace")
    await wait_console(dom, "COUNTER", after=len(text))  # the guest writes into the overlay
    spans: list[tuple[str, str]] = []
    commit = delete_exec.DeleteExecution._commit

    async def traced(self: delete_exec.DeleteExecution, c: object) -> None:
        spans.append(("start", c.target))  # type: ignore[attr-defined]
        await commit(self, c)  # type: ignore[arg-type]
        spans.append(("end", c.target))  # type: ignore[attr-defined]

    monkeypatch.setattr(delete_exec.DeleteExecution, "_commit", traced)
    assert await dom.delete_snapshot("both") == ["both"]
    assert [kind for kind, _ in spans] == ["start", "start", "end", "end"]  # at once
    assert sorted(t for _, t in spans[:2]) == ["vda", "vdb"]
    assert sources(dom) == bases and listed(state_dir) == []
    assert not list(tmp_path.glob("both-*.qcow2"))
    async with dom.monitor() as mon:  # QEMU writes the bases and holds nothing else
        files = {n["file"] for n in await mon.execute("query-named-block-nodes")}
    assert files == set(bases.values())
    text = dom.paths.console_log.read_text(errors="replace")
    await wait_console(dom, "COUNTER", after=len(text))  # still running, still counting
    assert dom.state == DomainState.RUNNING
    for image in bases.values():
        qemu_img_check(image)


async def test_one_disk_failing_lets_the_other_commit(make_domain: MakeDomain, state_dir: Path,
                                                      tmp_path: Path,
                                                      small_tmpfs: Callable[..., Path]
                                                      ) -> None:
    """Shut off, two disks: vda's commit runs out of space while vdb's (side by side)
    succeeds.  The error names vda as it was raised, vdb's data is safe in its base,
    the mark stays, and the recovery finishes both once there is room."""
    dom = await make_domain(disks=2)
    small = small_tmpfs(size="24m")
    data = tmp_path / "zz"  # vdb's files sort after vda's: a serial delete would try vda first
    data.mkdir()
    run_cli(state_dir, "snapshot-create-as", "guest", "s2", "--disk-only",
            "--diskspec", f"vda,file={small}/s2-vda.qcow2",
            "--diskspec", f"vdb,file={data}/s2-vdb.qcow2")
    run_cli(state_dir, "snapshot-create-as", "guest", "s3", "--disk-only",
            "--diskspec", f"vda,file={tmp_path}/s3-vda.qcow2",
            "--diskspec", f"vdb,file={data}/s3-vdb.qcow2")
    for top, mib in ((tmp_path / "s3-vda.qcow2", 32), (data / "s3-vdb.qcow2", 1)):
        subprocess.run(["qemu-io", "-f", "qcow2", "-c", f"write -P 0x5b 0 {mib}M", str(top)],
                       check=True, capture_output=True)  # vda's cannot fit into 24 MiB
    views = {t: guest_view(s, tmp_path) for t, s in sources(dom).items()}
    r = run_cli(state_dir, "snapshot-delete", "guest", "s3", check=False)
    err = r.stderr.decode()
    assert r.returncode == 1 and "block commit failed while deleting disk 'vda'" in err
    assert "No space left on device" in err and "vdb" not in err and "Traceback" not in err
    read_back = subprocess.run(["qemu-io", "-f", "qcow2", "-c", "read -P 0x5b 0 1M",
                                str(data / "s2-vdb.qcow2")], capture_output=True, text=True)
    assert "read 1048576/1048576" in read_back.stdout and \
        "Pattern verification failed" not in read_back.stdout  # vdb's commit happened
    assert "snapshotDeleteInProgress" in snap_xml(state_dir, "s3")
    assert {t: guest_view(s, tmp_path) for t, s in sources(dom).items()} == views
    subprocess.run(["mount", "-o", "remount,size=96m", str(small)], check=True)
    assert "finished deleting snapshots s3" in \
        run_cli(state_dir, "recover", "guest").stdout.decode()
    assert listed(state_dir) == ["s2"]
    assert sources(dom) == {"vda": str(small / "s2-vda.qcow2"),
                            "vdb": str(data / "s2-vdb.qcow2")}
    assert not list(tmp_path.glob("**/s3-*.qcow2"))
    assert {t: guest_view(s, tmp_path) for t, s in sources(dom).items()} == views


async def test_delete_after_a_forced_revert_never_writes_the_live_disk(
        booted: MakeDomain, state_dir: Path, tmp_path: Path) -> None:
    """A forced revert to an internal snapshot under later overlays rewrites their
    base: the snapshots above it become stale, and deleting one only removes
    metadata and files; it never commits old data into the disk the guest writes."""
    dom = await booted(name="d")
    base = source(dom)
    run_cli(state_dir, "snapshot-create-as", "d", "t1")
    run_cli(state_dir, "snapshot-create-as", "d", "t2", "--disk-only")
    await wait_console(dom, f"COUNTER {last_counter(dom) + 3}")
    run_cli(state_dir, "snapshot-create-as", "d", "t3", "--memspec", str(tmp_path / "t3.mem"))
    run_cli(state_dir, "snapshot-revert", "d", "t1", "--force")
    assert source(dom) == base
    tree = dom.snapshot_tree()
    assert tree.get("t2").stale and tree.get("t3").stale and not tree.get("t1").stale
    info = run_cli(state_dir, "snapshot-revert", "d", "t3", check=False)
    assert info.returncode == 1 and "can no longer be reverted to" in info.stderr.decode()
    await wait_console(dom, f"COUNTER {last_counter(dom) + 3}")
    plan = json.loads(run_cli(state_dir, "snapshot-delete", "d", "t2", "--plan",
                              "--json").stdout)
    assert plan["commits"] == [], plan
    run_cli(state_dir, "snapshot-delete", "d", "t2")
    assert dom.interrupted_operation() is None
    run_cli(state_dir, "snapshot-delete", "d", "t3")
    assert dom.interrupted_operation() is None and not (tmp_path / "t3.mem").exists()
    assert source(dom) == base and backing_chain(base) == [base]
    await wait_console(dom, f"COUNTER {last_counter(dom) + 2}")
    wrote = last_counter(dom)
    run_cli(state_dir, "destroy", "d")
    assert disk_counter(base) >= wrote
    offset = len(dom.paths.console_log.read_text(errors="replace"))
    run_cli(state_dir, "start", "d")
    text = await wait_console(dom, "GUEST-READY", after=offset)
    ready = re.search(r"GUEST-READY disk=\S+ start=(\d+)", text)
    assert ready is not None, text
    started = int(ready.group(1))
    assert started >= wrote, (started, wrote)
    qemu_img_check(base)
    await dom.destroy()


async def test_internal_snapshot_in_a_backing_layer_of_a_running_guest(
        driver: qdriver.Driver, guest_image: GuestImage, state_dir: Path, tmp_path: Path) -> None:
    """Internal s1, disk-only s2, delete s1 on the running guest: QEMU opened s1's
    image read-only as a backing layer; the delete reopens it for the job and the
    domain is never left interrupted, while another guest's QEMU holds the shared
    base image (which recovery never repairs: it is not this domain's)."""
    from .helpers import domain_xml
    shared = tmp_path / "shared-base.qcow2"
    subprocess.run(["cp", str(guest_image.disk), str(shared)], check=True)
    mine, theirs = tmp_path / "mine.qcow2", tmp_path / "theirs.qcow2"
    for overlay in (mine, theirs):
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", str(shared), "-F",
                        "qcow2", str(overlay)], check=True)
    other = await driver.define_xml(domain_xml(guest_image, "other", theirs))
    await other.start(paused=True)  # holds the shared base open
    dom = await driver.define_xml(domain_xml(guest_image, "d", mine))
    await dom.start()
    await wait_console(dom, "COUNTER 3")
    run_cli(state_dir, "snapshot-create-as", "d", "s1")
    run_cli(state_dir, "snapshot-create-as", "d", "s2", "--disk-only")
    assert internal_snapshots(mine) == ["s1"] and backing_chain(source(dom))[1] == str(mine)
    run_cli(state_dir, "snapshot-delete", "d", "s1")
    assert dom.interrupted_operation() is None and listed(state_dir, "d") == ["s2"]
    assert internal_snapshots(mine) == []
    async with dom.job() as job:
        mon = await job.monitor()
        ro = {n["file"]: n["ro"] for n in await mon.execute("query-named-block-nodes",
                                                            {"flat": True})
              if n["drv"] == "qcow2"}
        assert ro[str(mine)] is True, "the backing layer was left writable"
    await wait_console(dom, f"COUNTER {last_counter(dom) + 2}")
    await dom.destroy()
    async with dom.job() as job:  # a dead QEMU's leaks: only this domain's images
        await delete_exec._repair_leaks(job, job.image_graph())
    qemu_img_check(mine)
    assert (await other.get_state())[0] is DomainState.PAUSED
    await other.destroy()
