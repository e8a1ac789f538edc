#!/usr/bin/env python3
"""Memory templates: reverting a running guest to a template snapshot beside an
internal snapshot of the same guest, one run.

  internal   revert of a running guest to an internal snapshot (memory and disk):
             snapshot-load in the same QEMU, bound by loading the RAM.
  template   revert of a running guest (its RAM a shared file) to a template
             snapshot: a new QEMU maps the template's RAM file copy-on-write and
             loads only the devices' state.
  template snapshot   the template snapshot itself: total and guest pause.

1 GiB guests carry 800 MiB of data in RAM; 256 MiB ones are idle.  Medians of
interleaved rounds (ms); ratio: internal / template in the same run.
Usage: python3 bench/templates.py [--rounds N] [--sizes 256,1024]
"""
from __future__ import annotations

import argparse
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
            order = [("internal", internal, "i"), ("template", template, "t")]
            for label, dom, name in (order if i % 2 == 0 else order[::-1]):
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


def main(rounds: int, sizes: list[int]) -> None:
    results: dict[int, dict[str, float]] = {}
    for mib in sizes:
        with tempfile.TemporaryDirectory(prefix="qdbench-") as tmp:
            raw = anyio.run(one_size, Path(tmp), mib, rounds)
        results[mib] = {k: statistics.median(v) * 1000 for k, v in raw.items()}
        print(f"{mib} MiB done", file=sys.stderr)
    print(f"\nrevert of a running guest, median of {rounds} interleaved rounds (ms)")
    print(f"{'guest':>8}{'internal':>10}{'template':>10}{'ratio':>8}"
          f"{'template snapshot':>19}{'its pause':>11}")
    for mib, r in results.items():
        print(f"{mib:>4} MiB{r['internal']:10.1f}{r['template']:10.1f}"
              f"{r['internal'] / r['template']:8.1f}{r['template snapshot']:19.1f}"
              f"{r['template snapshot pause']:11.1f}")
    if len(results) > 1:
        low, high = min(results), max(results)
        print(f"template revert {high} MiB / {low} MiB: "
              f"{results[high]['template'] / results[low]['template']:.2f}")
    print("aims: template revert >= 20x faster than internal and <= 50 ms at 1 GiB; "
          "256 MiB vs 1 GiB within 1.5x; template snapshot pause <= 150 ms at 1 GiB")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--sizes", default="256,1024")
    args = ap.parse_args()
    main(args.rounds, [int(s) for s in args.sizes.split(",")])
