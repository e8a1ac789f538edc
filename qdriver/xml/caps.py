"""``domcapabilities`` XML: what this host can run."""
from __future__ import annotations

from ..accel import AccelStatus
from . import safe


def domcapabilities(path: str, domain_type: str, arch: str,
                    accels: list[AccelStatus]) -> str:
    """libvirt-shaped domain capabilities plus which accelerators are usable."""
    root = safe.new("domainCapabilities")
    safe.sub(root, "path", text=path)
    safe.sub(root, "domain", text=domain_type)
    safe.sub(root, "arch", text=arch)
    acc = safe.sub(root, "accelerators")
    for a in accels:
        el = safe.sub(acc, "accel", {"name": a.name, "usable": "yes" if a.usable else "no"})
        if a.reason:
            el.set("reason", a.reason)
    return safe.tostring(root)
