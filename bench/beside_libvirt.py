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
is faster).  Debian's libvirt always; with --libvirt-prefix DIR also a libvirt
unpacked there (bookworm-backports' 11.3: `apt-get download -t bookworm-backports
libvirt0 libvirt-common libvirt-daemon-driver-qemu libvirt-daemon-log` and
`dpkg -x` each into DIR), loaded by the same python3-libvirt.
Usage: python3 bench/beside_libvirt.py [--rounds N] [--no-libvirt] [--libvirt-prefix DIR]
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import anyio

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))
sys.path.insert(0, str(ROOT))

from common import guest_xml, wait_booted  # noqa: E402

import qdriver  # noqa: E402

OPERATIONS = ("disk-only create", "external delete", "internal create", "internal delete",
              "live create", "live pause", "live delete")


SNAPSHOTS = (("disk-only", "external delete"), ("internal", "internal delete"),
             ("live", "live delete"))
"""Each kind taken, and the row its delete is timed in."""


def snapshot_xml(kind: str, work: Path, i: int) -> tuple[str, str, dict[str, bool]]:
    """The name, XML and flags of round ``i``'s snapshot of ``kind``."""
    name = f"{kind[0]}{i}"
    overlay = f"<disks><disk name='vda' snapshot='external'><source file='{work}/qd-{name}" \
              ".qcow2'/></disk></disks>"
    memory = f"<memory snapshot='external' file='{work}/qd-{name}.mem'/>"
    body, flags = {"disk-only": (overlay, {"disk_only": True}), "internal": ("", {}),
                   "live": (memory + overlay, {"live": True})}[kind]
    return name, f"<domainsnapshot><name>{name}</name>{body}</domainsnapshot>", flags


@contextmanager
def clock(times: dict[str, list[float]], key: str) -> Iterator[None]:
    t0 = time.monotonic()
    yield
    times.setdefault(key, []).append(time.monotonic() - t0)


async def qdriver_rounds(xml: str, work: Path, rounds: int) -> dict[str, list[float]]:
    times: dict[str, list[float]] = {}
    drv = qdriver.Driver(work / "state")
    dom = await drv.define_xml(xml)
    try:
        await dom.start()
        await wait_booted(dom, settle=1.0)
        for i in range(rounds):
            for kind, delete_row in SNAPSHOTS:
                name, snap_xml, flags = snapshot_xml(kind, work, i)
                with clock(times, f"{kind} create"):
                    snap = await dom.snapshot_create_xml(snap_xml, None, **flags)
                if kind == "live":
                    times.setdefault("live pause", []).append(
                        snap.report.pause if snap.report else 0)
                await anyio.sleep(0.3)
                with clock(times, delete_row):
                    await dom.delete_snapshot(name)
    finally:
        if dom.is_active:
            await dom.destroy()
        shutil.rmtree(qdriver.paths.socket_root(work / "state"), ignore_errors=True)
    return times


def libvirt_rounds(xml: str, work: Path, rounds: int, prefix: Path | None
                   ) -> tuple[str, dict[str, list[float]]]:
    """The libvirt side: Debian's libvirt, or (``prefix``) one unpacked with dpkg -x
    (``usr/lib/x86_64-linux-gnu`` holds its libvirt.so.0 and driver modules)."""
    tag = "lv" if prefix is None else f"lv{abs(hash(prefix)) % 1000}"
    lv_xml = work / f"{tag}.xml"
    console = work / f"{tag}-console.log"
    lv_xml.write_text(xml.replace("<serial type='pty'/>", f"<serial type='file'><source "
                                  f"path='{console}'/></serial>"))
    env = dict(os.environ)
    if prefix is not None:
        lib = prefix / "usr/lib/x86_64-linux-gnu"
        env.update(LD_LIBRARY_PATH=str(lib),
                   LIBVIRT_DRIVER_DIR=str(lib / "libvirt" / "connection-driver"))
    out = subprocess.run(["/usr/bin/python3", str(ROOT / "bench" / "libvirt_snapshots.py"),
                          str(lv_xml), str(work / f"{tag}root"), str(rounds), str(console),
                          str(work)], capture_output=True, text=True, timeout=1800, env=env)
    if out.returncode != 0:
        print(f"libvirt baseline failed: {out.stderr.strip()[-800:]}", file=sys.stderr)
        return "?", {}
    raw = dict(json.loads(out.stdout.strip().splitlines()[-1]))
    return str(raw.pop("version")), raw


def main(rounds: int, prefixes: list[Path | None]) -> None:
    with tempfile.TemporaryDirectory(prefix="qdbench-") as tmp:
        work = Path(tmp)
        qd = anyio.run(qdriver_rounds, guest_xml(work, "qd", 256, "qd.quiet=1"), work, rounds)
        libvirts = [libvirt_rounds(guest_xml(work, f"lv{i}", 256, "qd.quiet=1"), work,
                                   rounds, prefix) for i, prefix in enumerate(prefixes)]
    med = {k: statistics.median(v) * 1000 for k, v in qd.items()}
    print(f"\nrunning 256 MiB guest, median of {rounds} rounds (ms); libvirt embedded; "
          "ratio: qdriver / libvirt")
    print(f"{'operation':20}{'qdriver':>10}" + "".join(
        f"{'libvirt ' + version:>16}{'ratio':>7}" for version, _ in libvirts))
    for op in OPERATIONS:
        line = f"{op:20}{med[op]:10.1f}"
        for _, times in libvirts:
            theirs = statistics.median(times[op]) * 1000 if times.get(op) else None
            line += f"{theirs:16.1f}{med[op] / theirs:7.2f}" if theirs else f"{'-':>16}{'-':>7}"
        print(line)
    print("aims: each operation at most libvirt's time; LIVE: total within 1.5x, pause < 30 ms")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--no-libvirt", action="store_true")
    ap.add_argument("--libvirt-prefix", type=Path, action="append", default=[],
                    help="also a libvirt unpacked there (dpkg -x of libvirt0, libvirt-common, "
                         "libvirt-daemon-driver-qemu, libvirt-daemon-log)")
    args = ap.parse_args()
    main(args.rounds, [] if args.no_libvirt else [None, *args.libvirt_prefix])
