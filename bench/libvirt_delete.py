#!/usr/bin/python3
"""libvirt's delete of an external disk-only snapshot of a shut-off domain, timed.

The baseline for bench/snapshot_delete.py.  Run with Debian's python3
(python3-libvirt) through the embedded driver (``qemu:///embed?root=DIR``, no
daemon).  libvirt 9.0 starts a paused QEMU to block-commit the overlay.
Prints one JSON line: the delete times in seconds.
Usage: libvirt_delete.py DOMAIN_XML ROOT ROUNDS WORKDIR
"""
from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import libvirt  # type: ignore[import-not-found]
from libvirt_revert import embedded_domain


def main(xml_path: str, root: str, rounds: int, work: Path) -> None:
    with embedded_domain(xml_path, root) as dom:
        times = []
        for i in range(rounds):
            overlay = work / f"lv-{i}.qcow2"
            snap = dom.snapshotCreateXML(
                f"<domainsnapshot><name>lv{i}</name><disks><disk name='vda' "
                f"snapshot='external'><source file='{overlay}'/></disk></disks>"
                "</domainsnapshot>", libvirt.VIR_DOMAIN_SNAPSHOT_CREATE_DISK_ONLY)
            subprocess.run(["qemu-io", "-f", "qcow2", "-c", "write -P 0x61 0 1M",
                            str(overlay)], check=True, capture_output=True)
            t0 = time.monotonic()
            snap.delete(0)
            times.append(time.monotonic() - t0)
        print(json.dumps({"delete": times}))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]), Path(sys.argv[4]))
