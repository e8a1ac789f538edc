#!/usr/bin/python3
"""libvirt's internal revert of a running domain, timed, as a baseline for bench/revert.py.

Run with Debian's python3 (python3-libvirt): libvirt's embedded QEMU driver
(``qemu:///embed?root=DIR``), no daemon.  Prints one JSON line: the revert
times in seconds.  The domain's serial console goes to CONSOLE_LOG, where
the guest's GUEST-READY line says it has booted (and filled its RAM).
Usage: libvirt_revert.py DOMAIN_XML ROOT ROUNDS CONSOLE_LOG
"""
from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import libvirt  # type: ignore[import-not-found]


def prepare(root: Path) -> None:
    """qemu.conf for running QEMU as root without virtlogd; the libvirt-qemu user
    libvirt resolves before it reads that file (Debian's daemon package makes it)."""
    (root / "etc").mkdir(parents=True, exist_ok=True)
    (root / "etc" / "qemu.conf").write_text(
        'user = "root"\ngroup = "root"\nstdio_handler = "file"\n')
    if subprocess.run(["id", "libvirt-qemu"], capture_output=True).returncode != 0:
        subprocess.run(["groupadd", "-r", "libvirt-qemu"], check=False)
        subprocess.run(["useradd", "-r", "-g", "libvirt-qemu", "-d", "/var/lib/libvirt",
                        "-s", "/usr/sbin/nologin", "libvirt-qemu"], check=True)
        print("created the system user libvirt-qemu (libvirt needs it)", file=sys.stderr)


def wait_booted(console: Path, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not (console.exists() and b"GUEST-READY" in console.read_bytes()):
        if time.monotonic() > deadline:
            raise SystemExit("the libvirt guest did not boot")
        time.sleep(0.1)
    time.sleep(1.0)


@contextmanager
def embedded_domain(xml_path: str, root: str) -> Iterator[Any]:
    """A domain defined in libvirt's embedded QEMU driver; destroyed, its snapshot
    metadata dropped and undefined afterwards."""
    prepare(Path(root))
    libvirt.virEventRegisterDefaultImpl()
    threading.Thread(target=lambda: [libvirt.virEventRunDefaultImpl() for _ in iter(int, 1)],
                     daemon=True).start()
    conn = libvirt.open(f"qemu:///embed?root={root}")
    dom = conn.defineXML(Path(xml_path).read_text())
    try:
        yield dom
    finally:
        if dom.isActive():
            dom.destroy()
        for s in dom.listAllSnapshots():
            s.delete(libvirt.VIR_DOMAIN_SNAPSHOT_DELETE_METADATA_ONLY)
        dom.undefine()
        conn.close()


def main(xml_path: str, root: str, rounds: int, console: Path) -> None:
    with embedded_domain(xml_path, root) as dom:
        dom.create()
        wait_booted(console)
        snap = dom.snapshotCreateXML("<domainsnapshot><name>lv</name>"
                                     "<memory snapshot='internal'/></domainsnapshot>")
        times = []
        for _ in range(rounds):
            time.sleep(0.5)
            t0 = time.monotonic()
            dom.revertToSnapshot(snap, libvirt.VIR_DOMAIN_SNAPSHOT_REVERT_RUNNING)
            times.append(time.monotonic() - t0)
        print(json.dumps({"internal_revert": times}))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]), Path(sys.argv[4]))
