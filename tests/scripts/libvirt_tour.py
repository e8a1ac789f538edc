"""One libvirt-python program, run unchanged on libvirt and on qdriver.

``python libvirt_tour.py MODULE URI KERNEL INITRD DISK WORKDIR``: MODULE is
``libvirt`` or ``qdriver.libvirt``.  It defines a guest, listens for its
lifecycle events the way libvirt programs do (the default event loop run in a
thread), starts it, takes an internal, a disk-only and an external memory
snapshot, lists them, reverts, deletes, saves, restores, destroys and undefines.
It reverts a shut-off domain: a running one, libvirt 9.0 reverts by starting a
new QEMU and qdriver in the QEMU that runs, so the events differ (stopped and
started, against suspended and resumed, each from the snapshot).
It prints one line per step: the state after it, snapshot names, then every
event in the order received.  The two runs must print the same lines.
"""
from __future__ import annotations

import importlib
import sys
import threading
import time
from typing import Any

libvirt: Any = importlib.import_module(sys.argv[1])
URI, KERNEL, INITRD, DISK, WORK = sys.argv[2:7]

XML = f"""<domain type='qemu'>
  <name>tour</name>
  <memory unit='MiB'>128</memory>
  <vcpu>1</vcpu>
  <os>
    <type arch='x86_64' machine='q35'>hvm</type>
    <kernel>{KERNEL}</kernel>
    <initrd>{INITRD}</initrd>
    <cmdline>console=ttyS0 quiet panic=-1</cmdline>
  </os>
  <on_poweroff>destroy</on_poweroff>
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2'/>
      <source file='{DISK}'/>
      <target dev='vda' bus='virtio'/>
    </disk>
    <serial type='pty'/>
    <memballoon model='none'/>
  </devices>
</domain>"""

EXTERNAL = f"""<domainsnapshot><name>withmem</name>
  <memory snapshot='external' file='{WORK}/withmem.mem'/>
  <disks><disk name='vda' snapshot='external'>
    <source file='{WORK}/withmem.qcow2'/></disk></disks>
</domainsnapshot>"""

DISK_ONLY = f"""<domainsnapshot><name>diskonly</name>
  <disks><disk name='vda' snapshot='external'>
    <source file='{WORK}/diskonly.qcow2'/></disk></disks>
</domainsnapshot>"""

EVENT_NAMES = {getattr(libvirt, n): n[len("VIR_DOMAIN_EVENT_"):] for n in (
    "VIR_DOMAIN_EVENT_DEFINED", "VIR_DOMAIN_EVENT_UNDEFINED", "VIR_DOMAIN_EVENT_STARTED",
    "VIR_DOMAIN_EVENT_SUSPENDED", "VIR_DOMAIN_EVENT_RESUMED", "VIR_DOMAIN_EVENT_STOPPED",
    "VIR_DOMAIN_EVENT_SHUTDOWN", "VIR_DOMAIN_EVENT_PMSUSPENDED", "VIR_DOMAIN_EVENT_CRASHED")}
events: list[str] = []


def lifecycle(conn: Any, dom: Any, event: int, detail: int, opaque: Any) -> None:
    events.append(f"{dom.name()} {EVENT_NAMES[event]} {detail}")


def loop() -> None:
    while True:
        libvirt.virEventRunDefaultImpl()


def settle() -> None:
    """Let the events of the last call arrive."""
    time.sleep(1.0)


def step(what: str, dom: Any) -> None:
    settle()
    state, reason = dom.state()
    print(f"{what}: state {state} reason {reason} active {dom.isActive()}")


def main() -> None:
    libvirt.virEventRegisterDefaultImpl()
    threading.Thread(target=loop, daemon=True).start()
    conn = libvirt.open(URI)
    cb = conn.domainEventRegisterAny(None, libvirt.VIR_DOMAIN_EVENT_ID_LIFECYCLE,
                                     lifecycle, None)
    dom = conn.defineXML(XML)
    step("defined", dom)
    print("persistent", dom.isPersistent(), "defined", conn.listDefinedDomains())
    dom.create()
    step("started", dom)
    print("id positive", dom.ID() > 0, "info", dom.info()[0], dom.info()[1])
    dom.snapshotCreateXML("<domainsnapshot><name>internal</name></domainsnapshot>", 0)
    step("internal snapshot", dom)
    dom.suspend()
    step("suspended", dom)
    dom.resume()
    step("resumed", dom)
    dom.destroy()
    step("destroyed", dom)
    dom.revertToSnapshot(dom.snapshotLookupByName("internal"), 0)
    step("reverted", dom)
    dom.snapshotCreateXML(DISK_ONLY, libvirt.VIR_DOMAIN_SNAPSHOT_CREATE_DISK_ONLY)
    step("disk-only snapshot", dom)
    dom.snapshotCreateXML(EXTERNAL, 0)
    step("external snapshot", dom)
    print("names", sorted(dom.snapshotListNames()), "count", dom.snapshotNum())
    print("all", sorted(s.getName() for s in dom.listAllSnapshots()))
    print("current", dom.snapshotCurrent().getName(), dom.hasCurrentSnapshot())
    internal = dom.snapshotLookupByName("internal")
    print("children of internal", sorted(s.getName() for s in internal.listAllChildren()))
    print("parent of withmem", dom.snapshotLookupByName("withmem").getParent().getName())
    print("current is withmem", dom.snapshotLookupByName("withmem").isCurrent())
    dom.snapshotLookupByName("withmem").delete(
        libvirt.VIR_DOMAIN_SNAPSHOT_DELETE_METADATA_ONLY)
    step("deleted withmem", dom)
    print("names", sorted(dom.snapshotListNames()))
    try:
        dom.snapshotLookupByName("withmem")
    except libvirt.libvirtError as e:
        print("lookup withmem:", e.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN_SNAPSHOT)
    dom.save(f"{WORK}/tour.save")
    step("saved", dom)
    conn.restore(f"{WORK}/tour.save")
    dom = conn.lookupByName("tour")
    step("restored", dom)
    dom.destroy()
    step("destroyed", dom)
    for snap in dom.listAllSnapshots():
        snap.delete(libvirt.VIR_DOMAIN_SNAPSHOT_DELETE_METADATA_ONLY)
    dom.undefine()
    settle()
    try:
        conn.lookupByName("tour")
    except libvirt.libvirtError as e:
        print("lookup after undefine:", e.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN)
    conn.domainEventDeregisterAny(cb)
    conn.close()
    for line in events:
        print("event", line)


if __name__ == "__main__":
    main()
