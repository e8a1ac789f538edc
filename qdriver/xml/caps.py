"""``domcapabilities`` XML: what this host can run."""
from __future__ import annotations

from ..caps.accel import AccelStatus
from ..caps.qemucaps import QemuCaps
from . import safe


def snapshot_mechanisms(caps: QemuCaps) -> dict[str, bool]:
    """How this QEMU can take and restore each part of a snapshot, by name."""
    return {
        "snapshot-save": caps.snapshot_save,
        "hmp-savevm": True,
        "transaction-blockdev-snapshot": True,
        "migrate-fd": True,
        "migrate-file": bool(caps.file_transport),
        "mapped-ram": caps.mapped_ram,
        "multifd": caps.multifd,
        "background-snapshot": caps.background_snapshot,
        "background-keeps-run-state": caps.background_keeps_run_state,
    }


def domcapabilities(path: str, domain_type: str, arch: str,
                    accels: list[AccelStatus], qemu: QemuCaps | None = None) -> str:
    """libvirt-shaped domain capabilities plus which accelerators are usable and,
    when the QEMU could be probed, its version and snapshot mechanisms."""
    root = safe.new("domainCapabilities")
    safe.sub(root, "path", text=path)
    safe.sub(root, "domain", text=domain_type)
    safe.sub(root, "arch", text=arch)
    if qemu is not None:
        safe.sub(root, "version", text=qemu.version)
        snaps = safe.sub(root, "snapshots")
        for name, supported in snapshot_mechanisms(qemu).items():
            safe.sub(snaps, "mechanism", {"name": name, "supported": "yes" if supported else "no"})
    acc = safe.sub(root, "accelerators")
    for a in accels:
        el = safe.sub(acc, "accel", {"name": a.name, "usable": "yes" if a.usable else "no"})
        if a.reason:
            el.set("reason", a.reason)
    return safe.tostring(root)
