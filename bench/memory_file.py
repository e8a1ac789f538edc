#!/usr/bin/env python3
"""Memory to a file: every mechanism the QEMU on PATH offers, and qdriver, in one run.

A 1 GiB guest with 800 MiB of random data in RAM is paused, then its memory
is written to a file in the page cache, round after round, by:

  fd           ``migrate fd:`` through a passed descriptor (the stream layout;
               what qdriver's external snapshots use)
  file         ``migrate file:PATH`` (QEMU 8.2+)
  mapped-ram   ``file:`` with the mapped-ram capability (QEMU 9.0+)
  mapped-ram+2 mapped-ram with multifd and 2 channels (QEMU 9.0+)
  qdriver      ``snapshot_create_xml`` of the paused guest, external memory
               only; "w/o flush" leaves out the fsync of the memory file,
               which the raw calls do not do

Rounds are interleaved; medians are printed with the ratio of each to the
fastest raw mechanism measured in the same run.  Run it once per QEMU, with
that QEMU's directory first on PATH (``.ci/qemu10`` prints QEMU 10's).

Usage: python3 bench/memory_file.py [--rounds N] [--fill MIB]
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

from common import guest_xml, wait_booted  # noqa: E402

import qdriver  # noqa: E402
from qdriver import qmp
from qdriver.caps import qemucaps
from qdriver.memory.memfile import MAX_BANDWIDTH

Raw = Callable[[qmp.Monitor, Path], Awaitable[None]]


async def _migrate(mon: qmp.Monitor, uri: str, caps: dict[str, bool],
                   params: dict[str, object]) -> None:
    await mon.execute("migrate-set-capabilities", {"capabilities": [
        {"capability": name, "state": on} for name, on in caps.items()]})
    await mon.execute("migrate-set-parameters", {"max-bandwidth": MAX_BANDWIDTH, **params})
    with mon.listener("MIGRATION") as events:
        await mon.execute("migrate", {"uri": uri})
        ev = await qmp.wait_event(events, lambda e: qmp.data(e).get("status") in (
            "completed", "failed"), 600, "migration end")
    if qmp.data(ev).get("status") != "completed":
        raise RuntimeError(f"migration failed: {await mon.execute('query-migrate')}")


async def raw_fd(mon: qmp.Monitor, path: Path) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        await mon.send_fd(fd, "m")
        await _migrate(mon, "fd:m", {"events": True}, {})
    finally:
        os.close(fd)


async def raw_file(mon: qmp.Monitor, path: Path) -> None:
    await _migrate(mon, f"file:{path},offset=0", {"events": True}, {})


async def raw_mapped_ram(mon: qmp.Monitor, path: Path) -> None:
    await _migrate(mon, f"file:{path},offset=0",
                   {"events": True, "mapped-ram": True, "multifd": False}, {})


async def raw_mapped_ram_multifd(mon: qmp.Monitor, path: Path) -> None:
    await _migrate(mon, f"file:{path},offset=0",
                   {"events": True, "mapped-ram": True, "multifd": True},
                   {"multifd-channels": 2})


async def reset(mon: qmp.Monitor) -> None:
    """Leave postmigrate (the next migration needs it) and turn the capabilities off."""
    if (await mon.execute("query-status"))["status"] == "postmigrate":
        await mon.execute("cont")
        await mon.execute("stop")
    known = {c["capability"] for c in await mon.execute("query-migrate-capabilities")}
    await mon.execute("migrate-set-capabilities", {"capabilities": [
        {"capability": c, "state": False} for c in ("mapped-ram", "multifd") if c in known]})


def mechanisms(caps: qemucaps.QemuCaps) -> dict[str, Raw]:
    out: dict[str, Raw] = {"fd": raw_fd}
    if caps.file_transport:
        out["file"] = raw_file
    if caps.mapped_ram and caps.file_transport:
        out["mapped-ram"] = raw_mapped_ram
        if caps.multifd:
            out["mapped-ram+2"] = raw_mapped_ram_multifd
    return out


async def run(rounds: int, fill: int) -> None:
    images = ROOT / "tests" / "vm-images" / "out"
    subprocess.run([sys.executable, str(ROOT / "tests/vm-images/build.py"), str(images)],
                   check=True, stdout=subprocess.DEVNULL)
    caps = await qemucaps.probe_binary()
    raw = mechanisms(caps)
    with tempfile.TemporaryDirectory(prefix="qdbench-", dir=os.environ.get("BENCH_DIR")) as tmp:
        work = Path(tmp)
        drv = qdriver.Driver(work / "state")
        dom = await drv.define_xml(guest_xml(work, "mem", 1024, f"qd.fill={fill} qd.quiet=1",
                                             with_disk=False))
        await dom.start()
        try:
            await wait_booted(dom)
            await dom.suspend()
            times: dict[str, list[float]] = {}
            for i in range(rounds):
                order = list(raw) + ["qdriver"]
                for who in order if i % 2 == 0 else order[::-1]:
                    os.sync()
                    path = work / f"{who}-{i}.mem"
                    if who == "qdriver":
                        total, no_flush = await qd_round(dom, path, i)
                        times.setdefault(who, []).append(total)
                        times.setdefault("qdriver w/o flush", []).append(no_flush)
                    else:
                        async with dom.monitor() as mon:
                            t0 = time.monotonic()
                            await raw[who](mon, path)
                            times.setdefault(who, []).append(time.monotonic() - t0)
                            await reset(mon)
                    path.unlink(missing_ok=True)
            report(caps, fill, rounds, times, list(raw))
        finally:
            if dom.is_active:
                await dom.destroy()
            shutil.rmtree(qdriver.paths.socket_root(work / "state"), ignore_errors=True)


async def qd_round(dom: qdriver.Domain, path: Path, i: int) -> tuple[float, float]:
    """One external memory snapshot (the guest has no disk); total and w/o flush."""
    snap = await dom.snapshot_create_xml(
        f"<domainsnapshot><name>q{i}</name><memory snapshot='external' file='{path}'/>"
        "</domainsnapshot>")
    assert snap.report is not None
    await snap.delete(metadata_only=True)
    if dom.state_reason()[1] == "migrated":  # QEMU 7.2 leaves postmigrate (untimed)
        await dom.resume()
        await dom.suspend()
    return snap.report.seconds, snap.report.seconds - snap.report.flush


def report(caps: qemucaps.QemuCaps, fill: int, rounds: int, times: dict[str, list[float]],
           raw: list[str]) -> None:
    med = {k: statistics.median(v) for k, v in times.items()}
    fastest = min(raw, key=lambda k: med[k])
    print(f"\nQEMU {caps.version}: 1 GiB guest, {fill} MiB of random data, paused; "
          f"median of {rounds} interleaved rounds")
    print(f"{'mechanism':20}{'seconds':>9}{'vs fastest raw':>16}")
    for name in raw + ["qdriver", "qdriver w/o flush"]:
        print(f"{name:20}{med[name]:9.3f}{med[name] / med[fastest]:16.2f}")
    print(f"fastest raw: {fastest}; aim: qdriver w/o flush within 1.1x of it")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--fill", type=int, default=800)
    args = ap.parse_args()
    anyio.run(run, args.rounds, args.fill)
