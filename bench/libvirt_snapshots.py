#!/usr/bin/python3
"""libvirt's snapshot operations on a running domain, timed, as the baseline for
bench/beside_libvirt.py.

Run with Debian's python3 (python3-libvirt) through the embedded driver
(``qemu:///embed?root=DIR``, no daemon).  Each round, through libvirt's API:
a disk-only external snapshot and its delete, an internal snapshot (memory
and disks) and its delete, a LIVE external memory+disk snapshot (its guest
pause read from the SUSPENDED/RESUMED lifecycle events) and its delete.
Prints one JSON line: the times in seconds, by operation, and the version of
the libvirt library that ran them (another one is chosen with LD_LIBRARY_PATH
and LIBVIRT_DRIVER_DIR, as bench/beside_libvirt.py --libvirt-prefix does).
Usage: libvirt_snapshots.py DOMAIN_XML ROOT ROUNDS CONSOLE_LOG WORKDIR
"""
from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import libvirt
from libvirt_revert import embedded_domain, wait_booted

EVENTS: list[tuple[int, float]] = []


def on_lifecycle(conn: object, dom: object, event: int, detail: int, opaque: object) -> None:
    EVENTS.append((event, time.monotonic()))


def pause_of(since: float) -> float:
    """Seconds between the first SUSPENDED and the next RESUMED event after ``since``."""
    stopped = next((t for e, t in EVENTS if t >= since
                    and e == libvirt.VIR_DOMAIN_EVENT_SUSPENDED), None)
    resumed = next((t for e, t in EVENTS if stopped is not None and t >= stopped
                    and e == libvirt.VIR_DOMAIN_EVENT_RESUMED), None)
    return resumed - stopped if stopped is not None and resumed is not None else 0.0


@contextmanager
def clock(times: dict[str, list[float]], key: str) -> Iterator[None]:
    t0 = time.monotonic()
    yield
    times.setdefault(key, []).append(time.monotonic() - t0)


def main(xml_path: str, root: str, rounds: int, console: Path, work: Path) -> None:
    times: dict[str, list[float]] = {}
    with embedded_domain(xml_path, root) as dom:
        dom.connect().domainEventRegisterAny(dom, libvirt.VIR_DOMAIN_EVENT_ID_LIFECYCLE,
                                             on_lifecycle, None)
        dom.create()
        wait_booted(console)
        for i in range(rounds):
            with clock(times, "disk-only create"):
                snap = dom.snapshotCreateXML(
                    f"<domainsnapshot><name>d{i}</name><disks><disk name='vda' "
                    f"snapshot='external'><source file='{work}/lv-d{i}.qcow2'/></disk>"
                    "</disks></domainsnapshot>", libvirt.VIR_DOMAIN_SNAPSHOT_CREATE_DISK_ONLY)
            time.sleep(0.3)
            with clock(times, "external delete"):
                snap.delete(0)
            with clock(times, "internal create"):
                snap = dom.snapshotCreateXML(f"<domainsnapshot><name>i{i}</name></domainsnapshot>")
            time.sleep(0.3)
            with clock(times, "internal delete"):
                snap.delete(0)
            since = time.monotonic()
            with clock(times, "live create"):
                snap = dom.snapshotCreateXML(
                    f"<domainsnapshot><name>l{i}</name><memory snapshot='external' "
                    f"file='{work}/lv-l{i}.mem'/><disks><disk name='vda' snapshot='external'>"
                    f"<source file='{work}/lv-l{i}.qcow2'/></disk></disks></domainsnapshot>",
                    libvirt.VIR_DOMAIN_SNAPSHOT_CREATE_LIVE)
            time.sleep(0.2)  # the RESUMED event is delivered by the event thread
            times.setdefault("live pause", []).append(pause_of(since))
            time.sleep(0.3)
            with clock(times, "live delete"):
                snap.delete(0)
    v = libvirt.getVersion()
    print(json.dumps({**times, "version": f"{v // 1000000}.{v // 1000 % 1000}.{v % 1000}"}))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]), Path(sys.argv[4]), Path(sys.argv[5]))
