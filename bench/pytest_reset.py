#!/usr/bin/env python3
"""The pytest plugin's per-test reset beside booting a guest per test, one run.

  reset   what ``qdriver_domain`` does before each test (`GuestPool.reset`), timed
          from the fixture's side: each test's 256 MiB guest is a fork of the
          boot's template, made paused while the test before ran
          (`GuestPool.prepare_next`, as the plugin does); the reset resumes it.
          The same under xdist, the boot then shared by the workers.
  revert  the reset with ``--qdriver-keep-failed``: the booted guest goes back to
          its template snapshot; the QEMU started and loaded ahead while the test
          before ran takes over.
  internal  the same for a guest the pool cannot make a template of (its XML asks
          for memfd RAM): an internal snapshot loaded inside the same QEMU.
  raw     that internal reset as bare QMP: stop + snapshot-load job + cont.
  boot    what a test pays without the plugin: define the XML on a new
          overlay, start, wait for GUEST-READY, destroy, undefine.

Run for the test guest's two kernel images: ``vmlinux`` (PVH, what the test
suite boots) and ``vmlinuz`` (the bzImage a distribution boots), each with the
disk's ``io='io_uring'`` and with QEMU's default I/O (threads).
Each kind in turn, the other guests paused (a test process runs one guest);
medians; ratios in the same run.
Usage: python3 bench/pytest_reset.py [--resets N] [--boots N]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import anyio

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT))

from common import IMAGES  # noqa: E402

from qdriver import qemuimg, qmp  # noqa: E402
from qdriver.blockdev.nodes import top_nodes
from qdriver.testing.guestpool import GuestPool, GuestSpec
from qdriver.xml.domain import DomainDef  # noqa: E402
from tests.helpers.guest import GuestImage, domain_xml  # noqa: E402

READY = "GUEST-READY"


def write_xml(work: Path, kernel: str, io: str | None, memfd: bool = False) -> Path:
    image = GuestImage(IMAGES)
    xml = domain_xml(image, f"bench-{kernel}{'-memfd' if memfd else ''}", image.disk,
                     cmdline="qd.shell=1", memory_mib=256,
                     memory_backing="<memoryBacking><source type='memfd'/></memoryBacking>"
                     if memfd else "").replace(str(image.kernel), str(IMAGES / kernel))
    if io:
        xml = xml.replace("type='qcow2'/>", f"type='qcow2' io='{io}'/>")
    path = work / f"{kernel}-{io or 'threads'}{'-memfd' if memfd else ''}.xml"
    path.write_text(xml)
    return path


async def raw_reset(pool: GuestPool, spec: GuestSpec) -> float:
    guest = await pool.guest(spec)
    async with guest.domain.monitor() as mon:
        node = (await top_nodes(mon))["vda"]
        t0 = time.monotonic()
        await mon.execute("stop")
        await qmp.run_job(mon, "snapshot-load", {"tag": guest.snapshot, "vmstate": node,
                                                 "devices": [node]},
                          f"raw-{time.time_ns()}", 60)
        await mon.execute("cont")
        return time.monotonic() - t0


async def boot_once(pool: GuestPool, spec: GuestSpec, overlay: Path) -> float:
    """Boot per test: a new overlay, define, start, wait until ready, destroy, undefine."""
    assert pool.driver is not None
    t0 = time.monotonic()
    definition = DomainDef.parse(spec.xml.read_text())
    await qemuimg.create(overlay, backing=str(IMAGES / "disk.qcow2"), backing_fmt="qcow2")
    dom = await pool.driver.define_xml(definition.with_disk_sources(
        {"vda": (str(overlay), "qcow2")}).renamed(f"boot-{overlay.stem}").to_xml())
    await dom.start()
    while READY not in dom.paths.console_log.read_text(errors="replace"):
        await anyio.sleep(0.05)
    await dom.destroy()
    await pool.driver.undefine(dom)
    overlay.unlink()
    return time.monotonic() - t0


async def measure(work: Path, kernel: str, io: str | None, resets: int,
                  boots: int) -> dict[str, float]:
    spec = GuestSpec(write_xml(work, kernel, io), READY)
    internal_spec = GuestSpec(write_xml(work, kernel, io, memfd=True), READY)
    pool = GuestPool(work / "pools", f"{kernel}-{io}")
    await pool.open()
    fork_pool = GuestPool(work / "pools", f"fork-{kernel}-{io}", forks=True)
    await fork_pool.open()
    try:
        guest, internal = await pool.guest(spec), await pool.guest(internal_spec)
        forked = await fork_pool.guest(spec)
        await fork_pool.reset(forked)  # the first reset of a new fork has nothing to do
        kinds = ((fork_pool, forked, "reset"), (pool, guest, "revert"),
                 (pool, internal, "internal"))
        times: dict[str, list[float]] = {}
        for owner, which, label in kinds:  # one guest runs at a time, as in a test process
            others = [w for _, w, _ in kinds if w is not which]
            for other in others:
                await other.domain.suspend()
            for _ in range(resets):
                t0 = time.monotonic()
                await owner.reset(which)
                times.setdefault(label, []).append(time.monotonic() - t0)
                async with anyio.create_task_group() as tg:  # the test runs a little
                    tg.start_soon(owner.prepare_next, which)
                    await anyio.sleep(0.3)
                if label == "internal":
                    times.setdefault("raw", []).append(await raw_reset(pool, internal_spec))
            for other in others:
                await other.domain.resume()
        boot = [await boot_once(pool, spec, work / f"boot-{i}.qcow2") for i in range(boots)]
        return {**{k: statistics.median(v) for k, v in times.items()},
                "boot": statistics.median(boot)}
    finally:
        await pool.close()
        await fork_pool.close()


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--resets", type=int, default=15)
    ap.add_argument("--boots", type=int, default=3)
    args = ap.parse_args()
    print(f"{'guest (256 MiB, TCG)':34} {'reset':>8} {'revert':>8} {'internal':>9} "
          f"{'raw QMP':>8} {'internal/reset':>15} {'boot':>8} {'boot/reset':>10}")
    with tempfile.TemporaryDirectory(prefix="qdriver-bench-") as tmp:
        for kernel in ("vmlinux", "vmlinuz"):
            for io in ("io_uring", None):
                r = await measure(Path(tmp), kernel, io, args.resets, args.boots)
                label = f"{kernel}, io={io or 'threads'}"
                print(f"{label:34} {r['reset'] * 1000:6.0f}ms {r['revert'] * 1000:6.0f}ms "
                      f"{r['internal'] * 1000:7.0f}ms "
                      f"{r['raw'] * 1000:6.0f}ms {r['internal'] / r['reset']:15.2f} "
                      f"{r['boot']:7.2f}s {r['boot'] / r['reset']:10.1f}", flush=True)


if __name__ == "__main__":
    anyio.run(main)
