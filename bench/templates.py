#!/usr/bin/env python3
"""Memory templates: reverting a running guest to a template snapshot beside an
internal snapshot of the same guest, one run.

  internal   revert of a running guest to an internal snapshot (memory and disk):
             snapshot-load in the same QEMU, bound by loading the RAM.
  template   revert of a running guest (its RAM a shared file) to a template
             snapshot, as a plain `Driver` does it: the QEMU the previous revert
             started ahead (a standby, on by default) loads the devices' state
             while the old QEMU stops, and takes over; the revert starts the next
             standby.
  cold       the same revert with no standby: it starts a QEMU that maps the
             template's RAM file copy-on-write and loads the devices' state.
  template snapshot   the template snapshot itself: total and guest pause.
  fork       8 forks of one 256 MiB template: the time until all eight run, and the
             guest RAM each holds privately right after (the pages of the template
             file's mapping it wrote: Private_Dirty in /proc/PID/smaps).

1 GiB guests carry 800 MiB of data in RAM; 256 MiB ones are idle.  Medians of
interleaved rounds (ms); ratio: internal / template in the same run.
Usage: python3 bench/templates.py [--rounds N] [--sizes 256,1024] [--forks 8]
"""
from __future__ import annotations

import argparse
import hashlib
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import anyio

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT))

from common import fill_cmdline, guest_xml, wait_booted  # noqa: E402

import qdriver  # noqa: E402
from qdriver.launch import standby  # noqa: E402

SHARED_FILE_RAM = "<memoryBacking><source type='file'/><access mode='shared'/></memoryBacking>"


async def guest(drv: qdriver.Driver, work: Path, name: str, mib: int,
                shared: bool) -> qdriver.Domain:
    xml = guest_xml(work, name, mib, fill_cmdline(mib))
    if shared:
        xml = xml.replace("<vcpu>", SHARED_FILE_RAM + "<vcpu>", 1)
    dom = await drv.define_xml(xml)
    await dom.start()
    await wait_booted(dom, settle=0.5)
    return dom


async def one_size(work: Path, mib: int, rounds: int) -> dict[str, list[float]]:
    times: dict[str, list[float]] = {}
    drv = qdriver.Driver(work / f"state{mib}")
    doms: list[qdriver.Domain] = []
    try:
        internal = await guest(drv, work, f"int{mib}", mib, shared=False)
        doms.append(internal)
        template = await guest(drv, work, f"tpl{mib}", mib, shared=True)
        doms.append(template)
        await internal.snapshot_create_xml("<domainsnapshot><name>i</name></domainsnapshot>")
        t0 = time.monotonic()
        snap = await template.snapshot_create_xml(
            f"<domainsnapshot><name>t</name><memory snapshot='external' "
            f"file='{work}/tpl{mib}.mem'/></domainsnapshot>", template=True)
        times["template snapshot"] = [time.monotonic() - t0]
        times["template snapshot pause"] = [snap.report.pause if snap.report else 0.0]
        for i in range(rounds):
            order = [("internal", internal, "i"), ("template", template, "t"),
                     ("cold", template, "t")]
            for label, dom, name in (order if i % 2 == 0 else order[::-1]):
                await anyio.sleep(0.3)
                if label == "cold":
                    async with dom.job():
                        await standby.discard(dom.paths)
                elif label == "template" and not dom.paths.standby.exists():
                    await dom.revert_to_snapshot(name)  # its first: none started ahead yet
                    await anyio.sleep(0.3)
                t0 = time.monotonic()
                await dom.revert_to_snapshot(name)
                times.setdefault(label, []).append(time.monotonic() - t0)
    finally:
        for dom in doms:
            if dom.is_active:
                await dom.destroy()
        shutil.rmtree(qdriver.paths.socket_root(work / f"state{mib}"), ignore_errors=True)
    return times


def private_ram_kib(pid: int, ram_file: str) -> int:
    """KiB of the mapping of ``ram_file`` that process ``pid`` holds privately."""
    total, inside = 0, False
    for line in Path(f"/proc/{pid}/smaps").read_text().splitlines():
        if "-" in line.split(" ", 1)[0]:  # a mapping's header line
            inside = line.endswith(" " + ram_file)
        elif inside and line.startswith("Private_Dirty:"):
            total += int(line.split()[1])
    return total


async def forks(work: Path, count: int) -> tuple[float, list[int], bool]:
    """Seconds until ``count`` forks of a template run, their private RAM (KiB), and
    whether the template's RAM file is unchanged after they ran a while."""
    drv = qdriver.Driver(work / "forks")
    src = await guest(drv, work, "src", 256, shared=True)
    made: list[qdriver.Domain] = []
    try:
        await src.snapshot_create_xml(
            f"<domainsnapshot><name>t</name><memory snapshot='external' file='{work}/t.mem'/>"
            "</domainsnapshot>", template=True)
        before = hashlib.sha256(Path(f"{work}/t.mem.ram").read_bytes()).hexdigest()
        t0 = time.monotonic()
        made = await src.fork("t", *(f"f{i}" for i in range(count)))
        took = time.monotonic() - t0
        private = []
        for dom in made:
            rec = dom.runtime.peek()
            private.append(private_ram_kib(rec.pid, f"{work}/t.mem.ram") if rec else -1)
        await anyio.sleep(2)  # they run, and write to their RAM
        after = hashlib.sha256(Path(f"{work}/t.mem.ram").read_bytes()).hexdigest()
        return took, private, before == after
    finally:
        for dom in [src, *made]:
            if dom.is_active:
                await dom.destroy()
        shutil.rmtree(qdriver.paths.socket_root(work / "forks"), ignore_errors=True)


def main(rounds: int, sizes: list[int], fork_count: int) -> None:
    results: dict[int, dict[str, float]] = {}
    for mib in sizes:
        with tempfile.TemporaryDirectory(prefix="qdbench-") as tmp:
            raw = anyio.run(one_size, Path(tmp), mib, rounds)
        results[mib] = {k: statistics.median(v) * 1000 for k, v in raw.items()}
        print(f"{mib} MiB done", file=sys.stderr)
    print(f"\nrevert of a running guest, median of {rounds} interleaved rounds (ms)")
    print(f"{'guest':>8}{'internal':>10}{'template':>10}{'ratio':>8}{'cold':>8}"
          f"{'template snapshot':>19}{'its pause':>11}")
    for mib, r in results.items():
        print(f"{mib:>4} MiB{r['internal']:10.1f}{r['template']:10.1f}"
              f"{r['internal'] / r['template']:8.1f}{r['cold']:8.1f}"
              f"{r['template snapshot']:19.1f}{r['template snapshot pause']:11.1f}")
    if len(results) > 1:
        low, high = min(results), max(results)
        print(f"template revert {high} MiB / {low} MiB: "
              f"{results[high]['template'] / results[low]['template']:.2f}")
    if fork_count:
        with tempfile.TemporaryDirectory(prefix="qdbench-") as tmp:
            took, private, unchanged = anyio.run(forks, Path(tmp), fork_count)
        print(f"{fork_count} forks of a 256 MiB template: all running after {took * 1000:.0f} ms;"
              f" private RAM each {min(private) / 1024:.1f}-{max(private) / 1024:.1f} MiB; "
              f"template file {'unchanged' if unchanged else 'CHANGED'}")
    print("aims: template revert >= 20x faster than internal and <= 50 ms at 1 GiB; "
          "256 MiB vs 1 GiB within 1.5x; template snapshot pause <= 150 ms at 1 GiB; "
          "8 forks within 1.5 s, each under 64 MiB private")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--sizes", default="256,1024")
    ap.add_argument("--forks", type=int, default=8)
    args = ap.parse_args()
    main(args.rounds, [int(s) for s in args.sizes.split(",") if s], args.forks)
