#!/usr/bin/env python3
"""Deleting an external disk snapshot: qdriver beside raw calls and beside libvirt, one run.

  shut off   delete of a disk-only snapshot whose overlay holds 1 MiB.
             qdriver: delete_snapshot (qemu-img commit, metadata).
             raw: qemu-img commit -d + rm.
             libvirt (Debian's, embedded, no daemon): snapshot delete, which
             starts a paused QEMU for the commit (bench/libvirt_delete.py).
  running    delete of the active layers of a running guest (two disks), twice:
             with overlays the guest wrote little to, and with 64 MiB in the
             data disk's (vdb) overlay, written before it was attached.
             qdriver: delete_snapshot (active block-commits, pivot, metadata).
             raw: block-commit + job-complete + blockdev-del on the same QEMU,
             for overlays the raw calls added themselves: one disk after the
             other, and (raw ||) both disks' jobs at once, as qdriver runs them.

Medians of interleaved rounds; ratios to raw (and libvirt/qdriver) in the same run.
Usage: python3 bench/snapshot_delete.py [--rounds N] [--no-libvirt]
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import anyio

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT))

from common import guest_xml, wait_booted  # noqa: E402

import qdriver  # noqa: E402
from qdriver import qemuimg, qmp  # noqa: E402
from qdriver.blockdev.nodes import top_nodes


def fill(image: Path) -> None:
    subprocess.run(["qemu-io", "-f", "qcow2", "-c", "write -P 0x61 0 1M", str(image)],
                   check=True, capture_output=True)


async def shut_off(work: Path, rounds: int, times: dict[str, list[float]]) -> str:
    xml = guest_xml(work, "off", 256, "qd.quiet=1")
    drv = qdriver.Driver(work / "state")
    dom = await drv.define_xml(xml)
    for i in range(rounds):
        for who in (("qdriver", "raw") if i % 2 == 0 else ("raw", "qdriver")):
            overlay = work / f"{who}-{i}.qcow2"
            if who == "qdriver":
                await dom.snapshot_create_xml(
                    f"<domainsnapshot><name>d{i}</name><disks><disk name='vda' "
                    f"snapshot='external'><source file='{overlay}'/></disk></disks>"
                    "</domainsnapshot>", disk_only=True)
                fill(overlay)
                t0 = time.monotonic()
                await dom.delete_snapshot(f"d{i}")
            else:
                base = dom.definition.disks[0].source or ""
                await qemuimg.create(overlay, "qcow2", backing=base, backing_fmt="qcow2")
                fill(overlay)
                t0 = time.monotonic()
                await qemuimg.commit(overlay)
                overlay.unlink()
            times.setdefault(f"shut off {who}", []).append(time.monotonic() - t0)
    return xml.replace(str(work / "off-vda.qcow2"), str(work / "lv-vda.qcow2")).replace(
        "<name>off</name>", "<name>lvdel</name>")


async def overlays(dom: qdriver.Domain, work: Path, tag: str, mib: int) -> dict[str, Path]:
    """New overlays on each disk; the data disk's (vdb, the guest never reads it)
    already holds ``mib`` MiB, as if the guest had written them since the snapshot."""
    made = {}
    for d in dom.definition.disks:
        made[d.target] = work / f"{tag}-{d.target}.qcow2"
        await qemuimg.create(made[d.target], "qcow2", backing=d.source or "",
                             backing_fmt=d.format)
    if mib:
        spec = {"driver": "qcow2", "backing": None,  # the backing file is QEMU's, locked
                "file": {"driver": "file", "filename": str(made["vdb"])}}
        subprocess.run(["qemu-io", "-c", f"write -P 0x61 0 {mib}M", f"json:{json.dumps(spec)}"],
                       check=True, capture_output=True)
    return made


async def raw_commit_one(mon: qmp.Monitor, target: str, base_node: str) -> None:
    job = f"rawc{target}"
    with mon.listener("JOB_STATUS_CHANGE") as events:
        await mon.execute("block-commit", {"job-id": job, "device": f"raw{target}",
                                           "base-node": base_node})
        await qmp.wait_event(events, lambda e: qmp.data(e).get("id") == job and
                             qmp.data(e).get("status") == "ready", 600, "commit ready")
        await mon.execute("job-complete", {"id": job})
        await qmp.wait_event(events, lambda e: qmp.data(e).get("id") == job and
                             qmp.data(e).get("status") == "null", 600, "commit end")
    await mon.execute("blockdev-del", {"node-name": f"raw{target}"})


async def raw_active_commit(dom: qdriver.Domain, work: Path, tag: str, mib: int,
                            together: bool = False) -> float:
    """Add overlays with raw calls (untimed), then the timed raw active commits: one
    disk after the other, or (``together``) every disk's job at once."""
    made = await overlays(dom, work, tag, mib)
    async with dom.monitor() as mon:
        nodes = await top_nodes(mon)
        for d in dom.definition.disks:
            overlay = made[d.target]
            await mon.execute("blockdev-add", {
                "driver": "qcow2", "node-name": f"raw{d.target}", "backing": None,
                "file": {"driver": "file", "filename": str(overlay)}})
            await mon.execute("blockdev-snapshot", {"node": nodes[d.target],
                                                    "overlay": f"raw{d.target}"})
        await anyio.sleep(0.3)  # the guest writes into them
        t0 = time.monotonic()
        if together:
            async with anyio.create_task_group() as tg:
                for d in dom.definition.disks:
                    tg.start_soon(raw_commit_one, mon, d.target, nodes[d.target])
        else:
            for d in dom.definition.disks:
                await raw_commit_one(mon, d.target, nodes[d.target])
        for d in dom.definition.disks:
            (work / f"{tag}-{d.target}.qcow2").unlink()
        return time.monotonic() - t0


async def running(work: Path, rounds: int, times: dict[str, list[float]]) -> None:
    drv = qdriver.Driver(work / "state")
    data = work / "run-vdb.qcow2"
    await qemuimg.create(data, "qcow2", size=128 << 20)
    xml = guest_xml(work, "run", 256, "qd.quiet=1").replace("</disk>", f"""</disk>
    <disk type='file' device='disk'><driver name='qemu' type='qcow2'/>
      <source file='{data}'/><target dev='vdb' bus='virtio'/></disk>""", 1)
    dom = await drv.define_xml(xml)
    try:
        await dom.start()
        await wait_booted(dom, settle=0.5)
        for i in range(rounds):
            for mib, case in ((0, "running"), (64, "running 64M")):
                order = ("qdriver", "raw", "raw ||")
                for who in (order if i % 2 == 0 else order[::-1]):
                    tag = f"run-{who[:3]}{len(who)}-{mib}-{i}"
                    if who != "qdriver":
                        times.setdefault(f"{case} {who}", []).append(
                            await raw_active_commit(dom, work, tag, mib, who == "raw ||"))
                        continue
                    made = await overlays(dom, work, tag, mib)
                    await dom.snapshot_create_xml(
                        f"<domainsnapshot><name>{tag}</name><disks>"
                        f"<disk name='vda' snapshot='external'><source file='{made['vda']}'/>"
                        f"</disk><disk name='vdb' snapshot='external'><source "
                        f"file='{made['vdb']}'/></disk></disks></domainsnapshot>",
                        disk_only=True, reuse_ext=True)
                    await anyio.sleep(0.3)
                    t0 = time.monotonic()
                    await dom.delete_snapshot(tag)
                    times.setdefault(f"{case} qdriver", []).append(time.monotonic() - t0)
    finally:
        if dom.is_active:
            await dom.destroy()
        shutil.rmtree(qdriver.paths.socket_root(work / "state"), ignore_errors=True)


def libvirt_delete(xml: str, work: Path, rounds: int) -> list[float]:
    shutil.copyfile(work / "off-vda.qcow2", work / "lv-vda.qcow2")
    lv_xml = work / "lv.xml"
    lv_xml.write_text(xml)
    out = subprocess.run(["/usr/bin/python3", str(ROOT / "bench" / "libvirt_delete.py"),
                          str(lv_xml), str(work / "lvroot"), str(rounds), str(work)],
                         capture_output=True, text=True, timeout=900,
                         cwd=str(ROOT / "bench"))
    if out.returncode != 0:
        print(f"libvirt baseline failed: {out.stderr.strip()[-500:]}", file=sys.stderr)
        return []
    return list(json.loads(out.stdout.strip().splitlines()[-1])["delete"])


async def main(rounds: int, libvirt: bool) -> None:
    images = ROOT / "tests" / "vm-images" / "out"
    subprocess.run([sys.executable, str(ROOT / "tests/vm-images/build.py"), str(images)],
                   check=True, stdout=subprocess.DEVNULL)
    times: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory(prefix="qdbench-", dir=os.environ.get("BENCH_DIR")) as tmp:
        work = Path(tmp)
        lv_xml = await shut_off(work, rounds, times)
        await running(work, rounds, times)
        if libvirt:
            times["shut off libvirt"] = libvirt_delete(lv_xml, work, rounds)
    med = {k: statistics.median(v) for k, v in times.items() if v}
    version = subprocess.run(["qemu-system-x86_64", "--version"], capture_output=True,
                             text=True).stdout.split()[3]
    print(f"\nexternal snapshot delete, median of {rounds} interleaved rounds, QEMU {version}")
    print(f"{'case':12}{'raw ms':>9}{'qdriver ms':>12}{'ratio':>7}{'raw || ms':>11}"
          f"{'ratio ||':>10}{'libvirt ms':>12}{'libvirt/qdriver':>17}")
    for case in ("shut off", "running", "running 64M"):
        raw, qd, par, lv = (med.get(f"{case} {w}") for w in ("raw", "qdriver", "raw ||",
                                                             "libvirt"))
        if raw is None or qd is None:
            continue
        par_text = f"{par * 1000:11.1f}{qd / par:10.2f}" if par else f"{'-':>11}{'-':>10}"
        lv_text = f"{lv * 1000:12.1f}{lv / qd:17.1f}" if lv else f"{'-':>12}{'-':>17}"
        print(f"{case:12}{raw * 1000:9.1f}{qd * 1000:12.1f}{qd / raw:7.2f}{par_text}{lv_text}")
    print("aims: shut off under 100 ms; running within 1.2x of the raw block-commit\n"
          "raw ||: the same raw calls with both disks' jobs at once, as qdriver runs them")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=11)
    ap.add_argument("--no-libvirt", action="store_true")
    args = ap.parse_args()
    anyio.run(main, args.rounds, not args.no_libvirt)
