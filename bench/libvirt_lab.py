#!/usr/bin/python3
"""libvirt bringing up the same three-guest lab, timed, as a baseline for bench/lab.py.

Run with Debian's python3 (python3-libvirt), inside the lab's network namespace:
libvirt's embedded QEMU driver (``qemu:///embed?root=DIR``), no daemon.  Each
domain XML has a file serial console; the guest prints GUEST-PING-OK once it
has pinged its neighbour.  Prints one JSON line: seconds from the first
start to the last GUEST-PING-OK.
Usage: libvirt_lab.py ROOT XML [XML...]
"""
from __future__ import annotations

import json
import re
import sys
import threading
import time
from pathlib import Path

import libvirt  # type: ignore[import-not-found]
from libvirt_revert import prepare


def main() -> None:
    root, xmls = Path(sys.argv[1]), [Path(p) for p in sys.argv[2:]]
    prepare(root)
    libvirt.virEventRegisterDefaultImpl()
    threading.Thread(target=lambda: [libvirt.virEventRunDefaultImpl() for _ in iter(int, 1)],
                     daemon=True).start()
    conn = libvirt.open(f"qemu:///embed?root={root}")
    texts = [x.read_text() for x in xmls]
    consoles = [Path(re.search(r"<source path='([^']+)'", t).group(1)) for t in texts]
    doms = [conn.defineXML(t) for t in texts]
    try:
        t0 = time.monotonic()
        for dom in doms:
            dom.create()
        deadline = t0 + 300
        while not all(c.exists() and b"GUEST-PING-OK" in c.read_bytes() for c in consoles):
            if time.monotonic() > deadline:
                raise SystemExit("the libvirt lab did not come up")
            time.sleep(0.02)
        print(json.dumps({"up": time.monotonic() - t0}))
    finally:
        for dom in doms:
            if dom.isActive():
                dom.destroy()
            dom.undefine()
        conn.close()


if __name__ == "__main__":
    main()
