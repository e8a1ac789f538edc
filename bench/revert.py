#!/usr/bin/env python3
"""Revert and restore: qdriver beside the same raw QMP calls and beside libvirt, one run.

  internal   revert of a running guest to an internal snapshot.
             qdriver: in the same QEMU (snapshot-load job).
             raw: stop + snapshot-load job + cont on the same QEMU.
             libvirt (Debian's, embedded, no daemon): revertToSnapshot, which
             kills QEMU and starts a new one with -loadvm (bench/libvirt_revert.py).
  external   revert of a shut-off domain to an external memory + disk snapshot.
             qdriver: revert_to_snapshot.
             raw: qemu-img create overlay, spawn QEMU (qdriver's argv with
             -incoming defer), migrate-incoming from the memory file, cont.
  restore    qdriver restore_from(save file) vs raw spawn + migrate-incoming + cont.

Medians of interleaved rounds; ratios to raw (and libvirt/qdriver) in the same run.
Usage: python3 bench/revert.py [--rounds N] [--sizes 256,1024] [--no-libvirt]
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
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

from common import IMAGES, fill_cmdline, guest_xml, wait_booted  # noqa: E402

import qdriver  # noqa: E402
from qdriver import qemuimg, qmp
from qdriver.blockdev.nodes import top_nodes
from qdriver.launch import cmdline
from qdriver.memory.header import read_header
from qdriver.paths import DomainPaths  # noqa: E402
from qdriver.xml.domain import DomainDef  # noqa: E402


async def raw_internal(dom: qdriver.Domain, name: str) -> float:
    async with dom.monitor() as mon:
        node = (await top_nodes(mon))["vda"]
        t0 = time.monotonic()
        await mon.execute("stop")
        await qmp.run_job(mon, "snapshot-load", {"tag": name, "vmstate": node,
                                                 "devices": [node]}, f"raw-{time.time_ns()}",
                          600)
        await mon.execute("cont")
        return time.monotonic() - t0


async def raw_incoming(definition: DomainDef, work: Path, mem: str,
                       base: str | None) -> float:
    """The raw -incoming path: (overlay,) spawn, load the file, run; then kill (untimed)."""
    paths = DomainPaths(work / "rawdom", work / "rawsock")
    for d in (paths.dir, paths.sockets):
        shutil.rmtree(d, ignore_errors=True)
        d.mkdir(parents=True)
    t0 = time.monotonic()
    if base is not None:
        overlay = str(work / f"raw-{time.time_ns()}.qcow2")
        await qemuimg.create(overlay, "qcow2", backing=base, backing_fmt="qcow2")
        definition = definition.with_disk_sources({"vda": (overlay, "qcow2")})
    argv = cmdline.build(definition, paths, "tcg", incoming=True)
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        while not paths.qmp.exists():
            await anyio.sleep(0.001)
        header = read_header(mem)
        fd = os.open(mem, os.O_RDONLY)
        os.lseek(fd, header.stream_offset, os.SEEK_SET)
        async with qmp.open_monitor(paths.qmp) as mon:
            await mon.execute("migrate-set-capabilities", {"capabilities": [
                {"capability": "events", "state": True}]})
            with mon.listener("MIGRATION") as events:
                await mon.send_fd(fd, "in")
                await mon.execute("migrate-incoming", {"uri": "fd:in"})
                await qmp.wait_event(events, lambda e: qmp.data(e).get("status") in (
                    "completed", "failed"), 600, "incoming migration")
            await mon.execute("cont")
            seconds = time.monotonic() - t0
        os.close(fd)
        return seconds
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()


async def run_size(mib: int, rounds: int, images: Path, libvirt: bool) -> None:
    with tempfile.TemporaryDirectory(prefix="qdbench-", dir=os.environ.get("BENCH_DIR")) as tmp:
        work = Path(tmp)
        xml = guest_xml(work, "bench", mib, fill_cmdline(mib))
        drv = qdriver.Driver(work / "state")
        dom = await drv.define_xml(xml)
        times: dict[str, list[float]] = {}
        try:
            await dom.start()
            await wait_booted(dom, settle=1.0)
            await dom.snapshot_create_xml("<domainsnapshot><name>i1</name></domainsnapshot>")
            for i in range(rounds):
                for who in (("qdriver", "raw") if i % 2 == 0 else ("raw", "qdriver")):
                    await anyio.sleep(0.3)
                    if who == "raw":
                        times.setdefault("internal raw", []).append(
                            await raw_internal(dom, "i1"))
                    else:
                        t0 = time.monotonic()
                        await dom.revert_to_snapshot("i1")
                        times.setdefault("internal qdriver", []).append(time.monotonic() - t0)
            mem = str(work / "e1.mem")
            await dom.snapshot_create_xml(f"<domainsnapshot><name>e1</name><memory file='{mem}'/>"
                                          "</domainsnapshot>")
            snap_def = DomainDef.from_element(dom.snapshot_tree().get("e1").domain)
            base = snap_def.disks[0].source
            save = str(work / "g.save")
            await dom.save(save)
            saved_def = DomainDef.parse(read_header(save).domain_xml)
            for i in range(rounds):
                for who in (("qdriver", "raw") if i % 2 == 0 else ("raw", "qdriver")):
                    if who == "raw":
                        times.setdefault("external raw", []).append(
                            await raw_incoming(snap_def, work, mem, base))
                        times.setdefault("restore raw", []).append(
                            await raw_incoming(saved_def, work, save, None))
                    else:
                        t0 = time.monotonic()
                        await dom.revert_to_snapshot("e1")
                        times.setdefault("external qdriver", []).append(time.monotonic() - t0)
                        await dom.destroy()
                        t0 = time.monotonic()
                        await dom.restore_from(save)
                        times.setdefault("restore qdriver", []).append(time.monotonic() - t0)
                        await dom.destroy()
        finally:
            if dom.is_active:
                await dom.destroy()
            shutil.rmtree(qdriver.paths.socket_root(work / "state"), ignore_errors=True)
        if libvirt:
            times["internal libvirt"] = libvirt_revert(xml, work, rounds)
    report(mib, rounds, times)


def libvirt_revert(xml: str, work: Path, rounds: int) -> list[float]:
    shutil.copyfile(IMAGES / "disk.qcow2", work / "bench-vda.qcow2")  # a fresh disk
    lv_xml = work / "lv.xml"
    console = work / "lv-console.log"
    lv_xml.write_text(xml.replace("<serial type='pty'/>", f"<serial type='file'><source "
                                  f"path='{console}'/></serial>"))
    out = subprocess.run(["/usr/bin/python3", str(ROOT / "bench" / "libvirt_revert.py"),
                          str(lv_xml), str(work / "lvroot"), str(rounds), str(console)],
                         capture_output=True, text=True, timeout=900)
    if out.returncode != 0:
        print(f"libvirt baseline failed: {out.stderr.strip()[-500:]}", file=sys.stderr)
        return []
    return list(json.loads(out.stdout.strip().splitlines()[-1])["internal_revert"])


def report(mib: int, rounds: int, times: dict[str, list[float]]) -> None:
    med = {k: statistics.median(v) for k, v in times.items() if v}
    print(f"\nguest {mib} MiB{' (800 MiB of data in RAM)' if mib >= 1024 else ''}, "
          f"median of {rounds} interleaved rounds, QEMU {qemu_version()}")
    print(f"{'operation':10}{'raw s':>9}{'qdriver s':>11}{'ratio':>7}{'libvirt s':>11}"
          f"{'libvirt/qdriver':>17}")
    for op in ("internal", "external", "restore"):
        raw, qd = med.get(f"{op} raw"), med.get(f"{op} qdriver")
        lv = med.get(f"{op} libvirt")
        if raw is None or qd is None:
            continue
        lv_text = f"{lv:11.3f}{lv / qd:17.1f}" if lv else f"{'-':>11}{'-':>17}"
        print(f"{op:10}{raw:9.3f}{qd:11.3f}{qd / raw:7.2f}{lv_text}")
    print("aims: internal <= 1.15x raw and >= 10x faster than libvirt; external and restore "
          "<= 1.2x raw")


def qemu_version() -> str:
    out = subprocess.run(["qemu-system-x86_64", "--version"], capture_output=True, text=True)
    return out.stdout.split()[3]


async def main(rounds: int, sizes: list[int], libvirt: bool) -> None:
    images = ROOT / "tests" / "vm-images" / "out"
    subprocess.run([sys.executable, str(ROOT / "tests/vm-images/build.py"), str(images)],
                   check=True, stdout=subprocess.DEVNULL)
    for mib in sizes:
        await run_size(mib, rounds, images, libvirt)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--sizes", default="256,1024")
    ap.add_argument("--no-libvirt", action="store_true")
    args = ap.parse_args()
    anyio.run(main, args.rounds, [int(x) for x in args.sizes.split(",")], not args.no_libvirt)
