#!/usr/bin/env python3
"""How soon a listening process hears of a change, one run.

  other process   a second process suspends and resumes the guest (the CLI's
                  case); the time from its call returning to this process's
                  stream yielding the event (``time.time()`` on one host)
  guest           the guest resets itself (``reboot -f`` on its console): QEMU's
                  timestamp of the RESET to the stream yielding ``reboot``
  raw QMP         the same RESET read straight from a monitor of our own: the
                  floor under the guest row

libvirt's embedded driver (``qemu:///embed``) delivers no event caused by
another process at all; its daemon does, and is the thing qdriver does without.
Medians (ms).  Usage: python3 bench/events.py [--rounds N]
"""
from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import anyio

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT))

from common import guest_xml, wait_booted  # noqa: E402

import qdriver  # noqa: E402

ACTOR = textwrap.dedent("""
    import sys, time, anyio, qdriver
    async def main(state, rounds):
        drv = qdriver.Driver(state)
        dom = drv.lookup("ev")
        for _ in range(int(rounds)):
            await dom.suspend(); print(time.time(), flush=True)
            await anyio.sleep(0.3)
            await dom.resume(); print(time.time(), flush=True)
            await anyio.sleep(0.3)
    anyio.run(main, *sys.argv[1:])
""")


async def other_process(drv: qdriver.Driver, state: Path, rounds: int) -> list[float]:
    heard: list[float] = []
    async with drv.events() as stream:
        actor = subprocess.Popen([sys.executable, "-c", ACTOR, str(state), str(rounds)],
                                 stdout=subprocess.PIPE, text=True, cwd=ROOT)
        async for event in stream:
            if event.type in (qdriver.EventType.SUSPENDED, qdriver.EventType.RESUMED):
                heard.append(time.time())
            if len(heard) == 2 * rounds:
                break
        done = [float(t) for t in actor.communicate()[0].split()]
    return [1000 * (h - d) for h, d in zip(heard, done)]


async def guest_resets(drv: qdriver.Driver, dom: qdriver.Domain, rounds: int
                       ) -> tuple[list[float], list[float]]:
    ours, raw = [], []
    async with drv.events() as stream:
        for _ in range(rounds):
            console = dom.console()
            await anyio.sleep(0.3)  # the recorder holds the monitor
            console.write("reboot -f\n")
            async for event in stream:
                if event.type is qdriver.EventType.REBOOT:
                    ours.append(1000 * (time.time() - event.time))
                    break
            await console.wait_async("GUEST-READY", 60)
            console.close()
    raw_mon = await _raw_monitor(dom)
    try:
        for _ in range(rounds):
            console = dom.console()
            typed = time.time()
            console.write("reboot -f\n")
            while True:  # (the firmware's own second reset of the last reboot is older)
                message = json.loads(await raw_mon[0].readline())
                stamp = message.get("timestamp", {})
                at = stamp.get("seconds", 0) + stamp.get("microseconds", 0) / 1e6
                if message.get("event") == "RESET" and at >= typed:
                    raw.append(1000 * (time.time() - at))
                    break
            await console.wait_async("GUEST-READY", 60)
            console.close()
    finally:
        raw_mon[1].close()
    return ours, raw


async def _raw_monitor(dom: qdriver.Domain
                       ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_unix_connection(str(dom.paths.events))
    await reader.readline()
    writer.write(b'{"execute": "qmp_capabilities"}\n')
    await writer.drain()
    await reader.readline()
    return reader, writer


async def main(rounds: int) -> None:
    work = Path(tempfile.mkdtemp(prefix="qdbench-events-"))
    state = work / "state"
    async with qdriver.Driver(state) as drv:
        dom = await drv.define_xml(guest_xml(work, "ev", 256, "qd.quiet=1 qd.shell=1"))
        await dom.start()
        try:
            await wait_booted(dom)
            cross = await other_process(drv, state, rounds)
            ours, raw = await guest_resets(drv, dom, rounds)
        finally:
            await dom.destroy()
            await drv.undefine(dom)
    subprocess.run(["rm", "-rf", str(work)], check=True)
    med = statistics.median
    print(f"{'event heard':<34}{'median ms':>10}{'max ms':>9}")
    print(f"{'other process (suspend/resume)':<34}{med(cross):>10.1f}{max(cross):>9.1f}")
    print(f"{'guest reset, qdriver stream':<34}{med(ours):>10.1f}{max(ours):>9.1f}")
    print(f"{'guest reset, raw QMP monitor':<34}{med(raw):>10.1f}{max(raw):>9.1f}")
    print(f"the stream adds {med(ours) - med(raw):.1f} ms to raw QMP "
          f"({med(ours) / max(med(raw), 0.001):.0f}x): its log is read every 50 ms")
    print("libvirt embedded: events of other processes are not delivered")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    anyio.run(main, parser.parse_args().rounds)
