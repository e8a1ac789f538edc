#!/usr/bin/env python3
"""A blocking call's cost beside the same async call, one run.

  async     ``await dom.get_state()`` on the caller's own event loop (QEMU asked
            ``query-status``, the state read under no lock), and the same for a
            shut-off domain (files only).
  blocking  the same through `qdriver.blocking`: the call crosses to the driver's
            loop thread and back (anyio's blocking portal).

Medians of interleaved calls (ms); the difference is what the blocking API adds.
Usage: python3 bench/blocking.py [--calls N]
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

from common import guest_xml  # noqa: E402

import qdriver  # noqa: E402
from qdriver import blocking  # noqa: E402


async def async_calls(state: Path, calls: int) -> dict[str, list[float]]:
    drv = qdriver.Driver(state)
    times: dict[str, list[float]] = {"running": [], "shut off": []}
    for _ in range(calls):
        for label, name in (("running", "on"), ("shut off", "off")):
            dom = drv.lookup(name)
            t0 = time.perf_counter()
            await dom.get_state()
            times[label].append(time.perf_counter() - t0)
    return times


def main(calls: int) -> None:
    work = Path(tempfile.mkdtemp(prefix="qdbench-blocking-"))
    state = work / "state"
    try:
        with blocking.Driver(state) as drv:
            on = drv.define_xml(guest_xml(work, "on", 256, "qd.quiet=1"))
            drv.define_xml(guest_xml(work, "off", 256, "qd.quiet=1"))
            on.start()
            sync: dict[str, list[float]] = {"running": [], "shut off": []}
            aio: dict[str, list[float]] = {"running": [], "shut off": []}
            for _ in range(5):  # interleaved rounds
                for label, name in (("running", "on"), ("shut off", "off")):
                    dom = drv.lookup(name)
                    for _ in range(calls // 5):
                        t0 = time.perf_counter()
                        dom.get_state()
                        sync[label].append(time.perf_counter() - t0)
                for label, values in anyio.run(async_calls, state, calls // 5).items():
                    aio[label] += values
            on.destroy()
    finally:
        shutil.rmtree(qdriver.paths.socket_root(state), ignore_errors=True)
        shutil.rmtree(work, ignore_errors=True)
    print(f"get_state(), median of {calls} calls each (ms):")
    print(f"  {'domain':10} {'async':>8} {'blocking':>9} {'added':>8}")
    for label in ("running", "shut off"):
        a, b = statistics.median(aio[label]) * 1000, statistics.median(sync[label]) * 1000
        print(f"  {label:10} {a:8.3f} {b:9.3f} {b - a:8.3f}")
    print("aim: a blocking call at most 1 ms more than the async call")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--calls", type=int, default=500)
    main(ap.parse_args().calls)
