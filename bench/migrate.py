#!/usr/bin/env python3
"""Live migration: total time and downtime (QEMU's own figures), one run per row.

  raw QMP            the source QEMU's ``migrate`` to a bare QEMU started from the
                     same command line with ``-incoming`` (shared disk): QEMU's floor
  qdriver            ``migrate --live`` to another state directory (``qdriver:///``),
                     the disk shared
  qdriver +storage   ``migrate --live --copy-storage-all``: the disk mirrored over NBD
  libvirt            not measured: ``virsh migrate`` needs a libvirt daemon on the
                     destination, or one client holding both ends; the embedded
                     driver (``qemu:///embed``, the only libvirt run here, without a
                     daemon) opens once per process ("Cannot open embedded driver at
                     path B, already open with path A"), so neither is possible

Each guest counts on its disk while it moves; the 1 GiB guest holds 800 MiB of
data in RAM.  "wall" is the whole call (the destination's start included).
Usage: python3 bench/migrate.py [--sizes 256,1024]
"""
from __future__ import annotations

import argparse
import json
import subprocess
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
from qdriver.migrate.receive import free_port  # noqa: E402


async def booted(drv: qdriver.Driver, work: Path, name: str, mib: int) -> qdriver.Domain:
    dom = await drv.define_xml(guest_xml(work, name, mib, fill_cmdline(mib)))
    await dom.start()
    await wait_booted(dom, settle=1.0)
    return dom


async def raw(work: Path, mib: int) -> dict[str, float]:
    """The source QEMU migrates to a bare QEMU of the same command line."""
    async with qdriver.Driver(work / "raw-a") as a, qdriver.Driver(work / "raw-b") as b:
        dom = await booted(a, work, "raw", mib)
        await b.define_xml(dom.xml_desc())
        port = free_port("127.0.0.1")
        argv = b.native_argv("raw") + ["-incoming", f"tcp:127.0.0.1:{port}"]
        paths = b.lookup("raw").paths
        paths.sockets.mkdir(parents=True, exist_ok=True)  # where its monitors listen
        dest = subprocess.Popen(argv, stdout=subprocess.DEVNULL,
                                stderr=open(work / "raw-dest.log", "wb"))
        try:
            await anyio.sleep(1.0)
            started = time.monotonic()
            async with dom.monitor() as mon:
                await mon.execute("migrate-set-parameters", {"max-bandwidth": 1 << 50})
                await mon.execute("migrate", {"uri": f"tcp:127.0.0.1:{port}"})
                while (info := await mon.execute("query-migrate"))["status"] not in (
                        "completed", "failed", "cancelled"):
                    await anyio.sleep(0.01)
            wall = time.monotonic() - started
            assert info["status"] == "completed", info
            return {"total": info["total-time"], "downtime": info["downtime"],
                    "wall": wall * 1000}
        finally:
            dest.kill()
            dest.wait()
            await dom.destroy()


async def with_qdriver(work: Path, mib: int, storage: bool) -> dict[str, float]:
    tag = "qds" if storage else "qd"
    async with qdriver.Driver(work / f"{tag}-a") as a:
        dom = await booted(a, work, tag, mib)
        disk = str(work / f"{tag}-vda.qcow2")
        flags = qdriver.MigrateFlags(
            live=True, copy_storage="all" if storage else None,
            dest_xml=dom.xml_desc().replace(disk, disk + ".moved") if storage else None)
        started = time.monotonic()
        report = await dom.migrate(f"qdriver://{work}/{tag}-b", flags)
        wall = time.monotonic() - started
    async with qdriver.Driver(work / f"{tag}-b") as b:
        await b.lookup(tag).destroy()
    return {"total": report.total_ms, "downtime": report.downtime_ms, "wall": wall * 1000}


async def main(sizes: list[int]) -> None:
    rows: list[tuple[str, dict[str, float]]] = []
    with tempfile.TemporaryDirectory(prefix="qdbench-") as tmp:
        work = Path(tmp)
        for mib in sizes:
            base = await raw(work / f"r{mib}", mib)
            rows.append((f"{mib} MiB raw QMP", base))
            for storage in (False, True):
                measured = await with_qdriver(work / f"q{mib}{int(storage)}", mib, storage)
                rows.append((f"{mib} MiB qdriver{' +storage' if storage else ''}",
                             measured | {"ratio": measured["total"] / max(base["total"], 1)}))
    print(f"{'':24} {'total ms':>9} {'downtime ms':>12} {'wall ms':>9} {'total/raw':>10}")
    for name, r in rows:
        ratio = f"{r['ratio']:.2f}x" if "ratio" in r else "1.00x"
        print(f"{name:24} {r['total']:9.0f} {r['downtime']:12.0f} {r['wall']:9.0f} {ratio:>10}")
    print("libvirt: not measured (its embedded driver opens once per process, and a "
          "migration needs both ends in one client or a daemon; see --help)")
    print(json.dumps({name: r for name, r in rows}))


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="256,1024", help="guest sizes in MiB")
    args = ap.parse_args()
    anyio.run(main, [int(s) for s in args.sizes.split(",")])
