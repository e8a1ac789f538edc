#!/usr/bin/env python3
"""Snapshot creation: qdriver next to the same operation done with raw QMP calls.

For each guest size (256 MiB idle, 1 GiB with 800 MiB of random data in RAM)
and each mechanism, rounds alternate between qdriver and raw QMP on the same
running guest.  Printed: median total time, median guest pause (QEMU's own
STOP/RESUME event timestamps), the ratio qdriver/raw, and for memory
snapshots the memory-file write rate.  `os.sync()` runs (untimed) before each
round, after the previous round's internal snapshot and memory file were
deleted (untimed), and the two sides take turns going first, so that one
side's writeback does not land on the other.

Mechanisms:
  internal    snapshot-save job (pause, save, resume)
  ext-paused  memory to a file + external disk (pause, migrate, transaction, resume)
  ext-live    LIVE: background-snapshot (pause, transaction, migrate; QEMU resumes)
  disk-only   qemu-img create + blockdev-add + transaction blockdev-snapshot

Usage: python3 bench/snapshot_create.py [--rounds N] [--sizes 256,1024]
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Awaitable, Callable

import anyio

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT))

from common import fill_cmdline, guest_xml, wait_booted  # noqa: E402

import qdriver  # noqa: E402
from qdriver import qemuimg, qmp  # noqa: E402
from qdriver.blockdev.nodes import top_nodes
from qdriver.job import write_definition  # noqa: E402
from qdriver.memory.memfile import MAX_BANDWIDTH
from qdriver.progress import guest_pause

Result = tuple[float, float, int, float]  # seconds, pause, memory bytes, flush seconds


class Bench:
    def __init__(self, dom: qdriver.Domain, work: Path) -> None:
        self.dom = dom
        self.work = work
        self.n = 0

    def name(self, kind: str) -> str:
        self.n += 1
        return f"{kind}{self.n}"

    # -- qdriver --------------------------------------------------------------

    async def qd(self, kind: str) -> Result:
        name = self.name(f"qd-{kind}")
        mem = self.work / f"{name}.mem"
        xml = {"internal": f"<domainsnapshot><name>{name}</name></domainsnapshot>",
               "disk-only": f"<domainsnapshot><name>{name}</name></domainsnapshot>"}.get(
            kind, f"<domainsnapshot><name>{name}</name><memory file='{mem}'/>"
                  "</domainsnapshot>")
        flags = {"disk-only": {"disk_only": True}, "ext-live": {"live": True}}.get(kind, {})
        snap = await self.dom.snapshot_create_xml(xml, **flags)
        assert snap.report is not None
        mem.unlink(missing_ok=True)
        if kind == "internal":
            await self.drop_internal(name)
        return (snap.report.seconds, snap.report.pause, snap.report.memory_bytes,
                snap.report.flush)

    async def drop_internal(self, name: str) -> None:
        """Free the vmstate an internal round wrote (untimed)."""
        async with self.dom.monitor() as mon:
            node = (await top_nodes(mon))["vda"]
            await qmp.run_job(mon, "snapshot-delete", {"tag": name, "devices": [node]},
                              f"del-{name}", 600)

    # -- raw QMP, the same operations --------------------------------------------

    async def raw(self, kind: str) -> Result:
        name = self.name(f"raw-{kind}")
        async with self.dom.monitor() as mon:
            with mon.listener("STOP", "RESUME") as events:
                t0 = time.monotonic()
                size = await RAW[kind](self, mon, name)
                seconds = time.monotonic() - t0
                evs = [dict(e) for e in events.clear()]
        if kind == "internal":
            await self.drop_internal(name)
        return seconds, guest_pause(evs, time.time()), size, 0.0

    async def raw_internal(self, mon: qmp.Monitor, name: str) -> int:
        node = (await top_nodes(mon))["vda"]
        await mon.execute("stop")
        await qmp.run_job(mon, "snapshot-save", {"tag": name, "vmstate": node,
                                                 "devices": [node]}, name, 600)
        await mon.execute("cont")
        return 0

    async def _overlay(self, mon: qmp.Monitor, name: str) -> tuple[str, str]:
        node = (await top_nodes(mon))["vda"]
        current = self.dom.definition.disks[0].source or ""
        path = str(self.work / f"{name}.qcow2")
        await qemuimg.create(path, backing=current, backing_fmt="qcow2")
        await mon.execute("blockdev-add", {"driver": "qcow2", "node-name": name, "backing": None,
                                           "file": {"driver": "file", "filename": path}})
        write_definition(self.dom.paths,
                         self.dom.definition.with_disk_sources({"vda": (path, "qcow2")}))
        return node, name

    async def _migrate(self, mon: qmp.Monitor, name: str, background: bool) -> int:
        path = self.work / f"{name}.mem"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            await mon.execute("migrate-set-capabilities", {"capabilities": [
                {"capability": "events", "state": True},
                {"capability": "background-snapshot", "state": background}]})
            await mon.execute("migrate-set-parameters", {"max-bandwidth": MAX_BANDWIDTH})
            with mon.listener("MIGRATION") as events:
                await mon.send_fd(fd, "m")
                await mon.execute("migrate", {"uri": "fd:m"})
                if background:
                    await self._resume_once_saving(mon)
                await qmp.wait_event(events, lambda e: qmp.data(e).get("status") in (
                    "completed", "failed"), 600, "migration end")
            if background:
                await mon.execute("migrate-set-capabilities", {"capabilities": [
                    {"capability": "background-snapshot", "state": False}]})
        finally:
            os.close(fd)
        size = path.stat().st_size
        path.unlink()
        return size

    async def _resume_once_saving(self, mon: qmp.Monitor) -> None:
        """QEMU 9.0+ ends a background snapshot in the state it found (paused here):
        start the vCPUs once the RAM copy is under way, as a LIVE snapshot must."""
        while True:
            info = await mon.execute("query-migrate")
            if info.get("status") != "active" or int(info.get("ram", {}).get(
                    "transferred", 0)) > 0:
                break
            await anyio.sleep(0.002)
        if (await mon.execute("query-status"))["status"] != "running":
            await mon.execute("cont")

    async def raw_ext_paused(self, mon: qmp.Monitor, name: str) -> int:
        node, overlay = await self._overlay(mon, name)
        await mon.execute("stop")
        size = await self._migrate(mon, name, background=False)
        await mon.execute("transaction", {"actions": [
            {"type": "blockdev-snapshot", "data": {"node": node, "overlay": overlay}}]})
        await mon.execute("cont")
        return size

    async def raw_ext_live(self, mon: qmp.Monitor, name: str) -> int:
        node, overlay = await self._overlay(mon, name)
        await mon.execute("stop")
        await mon.execute("transaction", {"actions": [
            {"type": "blockdev-snapshot", "data": {"node": node, "overlay": overlay}}]})
        return await self._migrate(mon, name, background=True)

    async def raw_disk_only(self, mon: qmp.Monitor, name: str) -> int:
        node, overlay = await self._overlay(mon, name)
        await mon.execute("transaction", {"actions": [
            {"type": "blockdev-snapshot", "data": {"node": node, "overlay": overlay}}]})
        return 0


RAW: dict[str, Callable[[Bench, qmp.Monitor, str], Awaitable[int]]] = {
    "internal": Bench.raw_internal, "ext-paused": Bench.raw_ext_paused,
    "ext-live": Bench.raw_ext_live, "disk-only": Bench.raw_disk_only,
}


async def run_size(mib: int, rounds: int, images: Path) -> None:
    with tempfile.TemporaryDirectory(prefix="qdbench-", dir=os.environ.get("BENCH_DIR")) as tmp:
        work = Path(tmp)
        drv = qdriver.Driver(work / "state")
        dom = await drv.define_xml(guest_xml(work, "bench", mib, fill_cmdline(mib)))
        await dom.start()
        try:
            await wait_booted(dom)
            bench = Bench(dom, work)
            results: dict[tuple[str, str], list[Result]] = {}
            sides = [("raw", bench.raw), ("qdriver", bench.qd)]
            for i in range(rounds):
                for kind in RAW:
                    for who, fn in (sides if i % 2 == 0 else sides[::-1]):
                        os.sync()
                        results.setdefault((kind, who), []).append(await fn(kind))
            report(mib, rounds, results)
        finally:
            if dom.is_active:
                await dom.destroy()
            shutil.rmtree(qdriver.paths.socket_root(work / "state"), ignore_errors=True)


def report(mib: int, rounds: int, results: dict[tuple[str, str], list[Result]]) -> None:
    print(f"\nguest {mib} MiB{' (800 MiB of random data in RAM)' if mib >= 1024 else ''}, "
          f"median of {rounds} interleaved rounds")
    print(f"{'mechanism':12}{'raw ms':>9}{'qdriver ms':>12}{'ratio':>7}{'w/o flush':>11}"
          f"{'ratio':>7}{'raw pause':>11}{'qd pause':>10}{'qd MB/s':>9}")
    for kind in RAW:
        raw, qd = results[(kind, "raw")], results[(kind, "qdriver")]
        rt, qt = (statistics.median(r[0] for r in x) for x in (raw, qd))
        qn = statistics.median(r[0] - r[3] for r in qd)
        rp, qp = (statistics.median(r[1] for r in x) for x in (raw, qd))
        rate = statistics.median(r[2] / r[0] / 1e6 for r in qd) if qd[0][2] else 0.0
        print(f"{kind:12}{rt * 1000:9.1f}{qt * 1000:12.1f}{qt / rt:7.2f}{qn * 1000:11.1f}"
              f"{qn / rt:7.2f}{rp * 1000:11.1f}{qp * 1000:10.1f}{rate:9.0f}")
    print("w/o flush: qdriver's time less the fsync of the memory file, which the raw calls "
          "do not do\n(qdriver flushes after the guest runs again, so it is not in the pause)")
    print("aim: ratio <= 1.15; LIVE (ext-live) pause <= 30 ms on the 256 MiB guest")


async def main(rounds: int, sizes: list[int]) -> None:
    images = ROOT / "tests" / "vm-images" / "out"
    subprocess.run([sys.executable, str(ROOT / "tests/vm-images/build.py"), str(images)],
                   check=True, stdout=subprocess.DEVNULL)
    for mib in sizes:
        await run_size(mib, rounds, images)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--sizes", default="256,1024")
    args = ap.parse_args()
    anyio.run(main, args.rounds, [int(x) for x in args.sizes.split(",")])
