#!/usr/bin/env python3
"""qdriver beside libvirt on the same snapshot operations of a running 256 MiB guest.

Both sides go through their API: qdriver's in this process, libvirt's
through Debian's python3-libvirt and its embedded driver (``qemu:///embed``,
no daemon: bench/libvirt_snapshots.py), on the same QEMU and the same guest.
Each round takes, then deletes: a disk-only external snapshot, an internal
snapshot (memory and disks), and a LIVE external memory+disk snapshot, whose
guest pause is read from QEMU's STOP/RESUME events (qdriver) or libvirt's
SUSPENDED/RESUMED lifecycle events.

Medians in ms; the ratio is qdriver / libvirt in this run (below 1: qdriver
is faster).  Usage: python3 bench/beside_libvirt.py [--rounds N] [--no-libvirt]
"""
from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import anyio

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT))

from common import guest_xml, wait_booted  # noqa: E402

import qdriver  # noqa: E402

OPERATIONS = ("disk-only create", "external delete", "internal create", "internal delete",
              "live create", "live pause", "live delete")


async def timed(times: dict[str, list[float]], key: str, started: float) -> None:
    times.setdefault(key, []).append(time.monotonic() - started)


async def qdriver_rounds(xml: str, work: Path, rounds: int) -> dict[str, list[float]]:
    times: dict[str, list[float]] = {}
    drv = qdriver.Driver(work / "state")
    dom = await drv.define_xml(xml)
    try:
        await dom.start()
        await wait_booted(dom, settle=1.0)
        for i in range(rounds):
            t0 = time.monotonic()
            await dom.snapshot_create_xml(
                f"<domainsnapshot><name>d{i}</name><disks><disk name='vda' "
                f"snapshot='external'><source file='{work}/qd-d{i}.qcow2'/></disk>"
                "</disks></domainsnapshot>", disk_only=True)
            await timed(times, "disk-only create", t0)
            await anyio.sleep(0.3)
            t0 = time.monotonic()
            await dom.delete_snapshot(f"d{i}")
            await timed(times, "external delete", t0)
            t0 = time.monotonic()
            await dom.snapshot_create_xml(f"<domainsnapshot><name>i{i}</name></domainsnapshot>")
            await timed(times, "internal create", t0)
            await anyio.sleep(0.3)
            t0 = time.monotonic()
            await dom.delete_snapshot(f"i{i}")
            await timed(times, "internal delete", t0)
            t0 = time.monotonic()
            snap = await dom.snapshot_create_xml(
                f"<domainsnapshot><name>l{i}</name><memory snapshot='external' "
                f"file='{work}/qd-l{i}.mem'/><disks><disk name='vda' snapshot='external'>"
                f"<source file='{work}/qd-l{i}.qcow2'/></disk></disks></domainsnapshot>",
                live=True)
            await timed(times, "live create", t0)
            times.setdefault("live pause", []).append(snap.report.pause if snap.report else 0)
            await anyio.sleep(0.3)
            t0 = time.monotonic()
            await dom.delete_snapshot(f"l{i}")
            await timed(times, "live delete", t0)
    finally:
        if dom.is_active:
            await dom.destroy()
        shutil.rmtree(qdriver.paths.socket_root(work / "state"), ignore_errors=True)
    return times


def libvirt_rounds(xml: str, work: Path, rounds: int) -> dict[str, list[float]]:
    lv_xml = work / "lv.xml"
    console = work / "lv-console.log"
    lv_xml.write_text(xml.replace("<serial type='pty'/>", f"<serial type='file'><source "
                                  f"path='{console}'/></serial>"))
    out = subprocess.run(["/usr/bin/python3", str(ROOT / "bench" / "libvirt_snapshots.py"),
                          str(lv_xml), str(work / "lvroot"), str(rounds), str(console),
                          str(work)], capture_output=True, text=True, timeout=1800)
    if out.returncode != 0:
        print(f"libvirt baseline failed: {out.stderr.strip()[-800:]}", file=sys.stderr)
        return {}
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


def libvirt_version() -> str:
    out = subprocess.run(["/usr/bin/python3", "-c",
                          "import libvirt; v = libvirt.getVersion(); "
                          "print(f'{v // 1000000}.{v // 1000 % 1000}.{v % 1000}')"],
                         capture_output=True, text=True)
    return out.stdout.strip() or "?"


def main(rounds: int, with_libvirt: bool) -> None:
    with tempfile.TemporaryDirectory(prefix="qdbench-") as tmp:
        work = Path(tmp)
        qd = anyio.run(qdriver_rounds, guest_xml(work, "qd", 256, "qd.quiet=1"), work, rounds)
        lv = libvirt_rounds(guest_xml(work, "lv", 256, "qd.quiet=1"), work, rounds) \
            if with_libvirt else {}
    med = {k: statistics.median(v) * 1000 for k, v in qd.items()}
    lmed = {k: statistics.median(v) * 1000 for k, v in lv.items() if v}
    print(f"\nrunning 256 MiB guest, median of {rounds} rounds (ms); "
          f"libvirt {libvirt_version() if lv else '-'} (embedded)")
    print(f"{'operation':20}{'qdriver':>10}{'libvirt':>10}{'qdriver/libvirt':>17}")
    for op in OPERATIONS:
        theirs = lmed.get(op)
        ratio = f"{med[op] / theirs:17.2f}" if theirs else f"{'-':>17}"
        print(f"{op:20}{med[op]:10.1f}{theirs if theirs else float('nan'):10.1f}{ratio}")
    print("aims: each operation at most libvirt's time; LIVE: total within 1.5x, pause < 30 ms")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--no-libvirt", action="store_true")
    args = ap.parse_args()
    main(args.rounds, not args.no_libvirt)
