#!/usr/bin/python3
"""One embedded libvirt connection, driven by JSON lines on stdin (a test helper).

Run with Debian's python3 (python3-libvirt): ``libvirt_agent.py ROOT``.  Each
request ``{"op": NAME, "args": [...]}`` gets one reply line, ``{"ok": RESULT}``
or ``{"error": MESSAGE}``.  One long-lived connection, because each ``virsh``
call on ``qemu:///embed`` opens the driver anew and races its reconnection to
the running QEMUs.  At end of input every domain is destroyed and undefined.
"""
from __future__ import annotations

import json
import sys
import threading
from typing import Any, Callable

import libvirt
import libvirt_qemu


def main(root: str) -> None:
    libvirt.virEventRegisterDefaultImpl()
    threading.Thread(target=lambda: [libvirt.virEventRunDefaultImpl() for _ in iter(int, 1)],
                     daemon=True).start()
    conn = libvirt.open(f"qemu:///embed?root={root}")
    dom = conn.lookupByName
    ops: dict[str, Callable[..., Any]] = {
        "define": lambda xml: conn.defineXML(xml).name(),
        "dumpxml": lambda name, flags=0: dom(name).XMLDesc(flags),
        "to_native": lambda xml: conn.domainXMLToNative("qemu-argv", xml, 0),
        "start": lambda name: dom(name).create(),
        "destroy": lambda name: dom(name).destroy(),
        "state": lambda name: dom(name).state()[0],
        "monitor": lambda name, cmd: libvirt_qemu.qemuMonitorCommand(dom(name), cmd, 0),
        "save": lambda name, path: dom(name).save(path),
        "restore": lambda path: conn.restore(path),
        "save_image_xml": lambda path: conn.saveImageGetXMLDesc(path, 0),
        "snapshot_create": lambda name, xml, flags=0: dom(name).snapshotCreateXML(
            xml, flags).getName(),
        "snapshot_xml": lambda name, snap: dom(name).snapshotLookupByName(snap).getXMLDesc(),
    }
    for line in sys.stdin:
        request = json.loads(line)
        try:
            reply = {"ok": ops[request["op"]](*request.get("args", []))}
        except libvirt.libvirtError as e:
            reply = {"error": str(e)}
        print(json.dumps(reply), flush=True)
    for d in conn.listAllDomains():
        if d.isActive():
            d.destroy()
        for s in d.listAllSnapshots():
            s.delete(libvirt.VIR_DOMAIN_SNAPSHOT_DELETE_METADATA_ONLY)
        if d.isPersistent():
            d.undefine()
    conn.close()


if __name__ == "__main__":
    main(sys.argv[1])
