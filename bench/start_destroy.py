#!/usr/bin/env python3
"""Start and destroy latency: qdriver next to raw QEMU, same command line.

raw:     spawn QEMU with the argv qdriver builds, poll for the QMP socket,
         connect and negotiate (qemu.qmp) -> "QMP ready"; SIGTERM + wait -> gone.
qdriver: start(paused=True) of a defined domain -> QMP ready; destroy() -> gone.
Also qdriver start(paused=False), which adds the `cont`, and define_xml alone.
Rounds are interleaved (the machine is noisy); medians are printed with the
ratio to raw measured in the same run.

Usage: python3 bench/start_destroy.py [--rounds N]
"""
from __future__ import annotations

import argparse
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import anyio
from qemu.qmp import QMPClient

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT))

import qdriver  # noqa: E402
from qdriver.launch import cmdline
from tests.helpers.guest import GuestImage, domain_xml  # noqa: E402


async def raw_round(argv: list[str], qmp_sock: Path, pidfile: Path) -> tuple[float, float]:
    for p in (qmp_sock, pidfile):
        p.unlink(missing_ok=True)
    t0 = time.perf_counter()
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    while not qmp_sock.exists():
        await anyio.sleep(0.001)
    client = QMPClient("raw")
    while True:
        try:
            await client.connect(str(qmp_sock))
            break
        except Exception:
            await anyio.sleep(0.001)
    start = time.perf_counter() - t0
    await client.disconnect()
    t1 = time.perf_counter()
    proc.send_signal(signal.SIGTERM)
    await anyio.to_thread.run_sync(proc.wait)
    return start, time.perf_counter() - t1


async def qdriver_round(drv: qdriver.Driver, xml: str, paused: bool) -> tuple[float, float]:
    dom = await drv.define_xml(xml)  # define is its own operation (see "define" below)
    t0 = time.perf_counter()
    await dom.start(paused=paused)
    start = time.perf_counter() - t0
    t1 = time.perf_counter()
    await dom.destroy()
    destroy = time.perf_counter() - t1
    await drv.undefine(dom)
    return start, destroy


async def main(rounds: int) -> None:
    images = ROOT / "tests" / "vm-images" / "out"
    subprocess.run([sys.executable, str(ROOT / "tests/vm-images/build.py"), str(images)],
                   check=True, stdout=subprocess.DEVNULL)
    with tempfile.TemporaryDirectory(prefix="qdbench-") as tmp:
        work = Path(tmp)
        disk = work / "disk.qcow2"
        shutil.copyfile(images / "disk.qcow2", disk)
        xml = domain_xml(GuestImage(images), "bench", disk)
        drv = qdriver.Driver(work / "state")
        # the raw command line: exactly what qdriver runs, in another state dir
        raw_def = qdriver.xml.domain.DomainDef.parse(xml)
        paths = qdriver.paths.DomainPaths.of(work / "raw", "bench")
        paths.dir.mkdir(parents=True)
        qdriver.paths.make_private_dirs(paths.sockets)  # private, as qdriver makes it
        argv = cmdline.build(raw_def, paths, "tcg")
        results: dict[str, list[tuple[float, float]]] = {"raw": [], "qdriver": [],
                                                         "qdriver-run": []}
        defines: list[float] = []
        for _ in range(rounds):
            t0 = time.perf_counter()
            defined = await drv.define_xml(xml)
            defines.append(time.perf_counter() - t0)
            await drv.undefine(defined)
            results["raw"].append(await raw_round(argv, paths.qmp, paths.pidfile))
            results["qdriver"].append(await qdriver_round(drv, xml, paused=True))
            results["qdriver-run"].append(await qdriver_round(drv, xml, paused=False))
        for state in ("raw", "state"):
            shutil.rmtree(qdriver.paths.socket_root(work / state), ignore_errors=True)
        try:
            qdriver.paths.runtime_base().rmdir()  # the per-user base, once nothing uses it
        except OSError:
            pass
    raw_start = statistics.median(s for s, _ in results["raw"])
    raw_destroy = statistics.median(d for _, d in results["raw"])
    print(f"start/destroy latency, median of {rounds} interleaved rounds (ms)")
    print(f"{'':34}{'start':>9}{'ratio':>8}{'destroy':>10}{'ratio':>8}")
    for name, label in (("raw", "raw QEMU (same argv, -S)"),
                        ("qdriver", "qdriver start --paused"),
                        ("qdriver-run", "qdriver start (cont)")):
        s = statistics.median(x for x, _ in results[name])
        d = statistics.median(y for _, y in results[name])
        print(f"{label:34}{s * 1000:9.1f}{s / raw_start:8.2f}{d * 1000:10.1f}"
              f"{d / raw_destroy:8.2f}")
    print(f"{'qdriver define (its own operation)':34}"
          f"{statistics.median(defines) * 1000:9.1f}")
    print("aim: start <= 1.15x raw, destroy <= 100 ms")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=9)
    anyio.run(main, ap.parse_args().rounds)
