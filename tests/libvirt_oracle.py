"""Debian's libvirt as the reference: ``virsh`` on the embedded QEMU driver, no daemon.

``qemu:///embed?root=DIR`` keeps everything (definitions, status, logs) under DIR;
each ``virsh`` call opens the driver anew and finds the domains it left there.
QEMU runs as root (``ROOT/etc/qemu.conf``); libvirt still resolves its default
user ``libvirt-qemu`` first, which Debian's daemon package (or ``.ci/setup``) makes.
"""
from __future__ import annotations

import json
import shutil
import subprocess
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest


def available() -> bool:
    return shutil.which("virsh") is not None and \
        subprocess.run(["id", "libvirt-qemu"], capture_output=True).returncode == 0


needs_libvirt = pytest.mark.skipif(not available(), reason="Debian's libvirt (virsh, the "
                                   "libvirt-qemu user) is not installed: see .ci/setup")


@dataclass
class Libvirt:
    """An embedded libvirt rooted at ``root``."""

    root: Path

    def __post_init__(self) -> None:
        (self.root / "etc").mkdir(parents=True, exist_ok=True)
        (self.root / "etc" / "qemu.conf").write_text(
            'user = "root"\ngroup = "root"\nstdio_handler = "file"\n')

    def virsh(self, *args: str, check: bool = True) -> str:
        r = subprocess.run(["virsh", "-q", "-c", f"qemu:///embed?root={self.root}", *args],
                           capture_output=True, text=True, timeout=300)
        if check and r.returncode != 0:
            raise AssertionError(f"virsh {' '.join(args)} failed: {r.stderr}")
        return r.stdout if check else r.stdout + r.stderr

    def define(self, xml: str) -> str:
        """Define ``xml``; its ``virsh dumpxml --inactive``."""
        path = self.root / "in.xml"
        path.write_text(xml)
        name = ET.fromstring(xml).findtext("name") or ""
        self.virsh("define", str(path))
        return self.virsh("dumpxml", "--inactive", name)

    def monitor(self, name: str, command: str, **arguments: Any) -> Any:
        msg = {"execute": command} | ({"arguments": arguments} if arguments else {})
        return json.loads(self.virsh("qemu-monitor-command", name, json.dumps(msg)))["return"]

    def cleanup(self) -> None:
        """Destroy and undefine everything, snapshots' metadata too."""
        for name in self.virsh("list", "--all", "--name").split():
            self.virsh("destroy", name, check=False)
            self.virsh("undefine", name, "--snapshots-metadata", "--managed-save",
                       check=False)


def layout(xml: str) -> dict[tuple[str, ...], dict[str, str]]:
    """Each device of a domain XML and where it sits: the part of the XML that is
    guest ABI (addresses, models, root-port numbering), keyed by what the device is."""
    devices = ET.fromstring(xml).find("devices")
    assert devices is not None
    out: dict[tuple[str, ...], dict[str, str]] = {}
    counters: dict[str, int] = {}
    for el in devices:
        key: tuple[str, ...]
        if el.tag == "disk":
            key = ("disk", el.find("target").get("dev", ""))  # type: ignore[union-attr]
        elif el.tag == "controller":
            key = ("controller", el.get("type", ""), el.get("index", "0"))
        elif el.tag == "channel":
            key = ("channel", el.find("target").get("name", ""))  # type: ignore[union-attr]
        elif el.tag == "input":
            key = ("input", el.get("type", ""), el.get("bus", ""))
        elif el.tag in ("interface", "memballoon", "rng", "video"):
            counters[el.tag] = counters.get(el.tag, -1) + 1
            key = (el.tag, str(counters[el.tag]))
        else:
            continue
        value: dict[str, str] = {}
        addr = el.find("address")
        if addr is not None:
            value |= {f"address.{k}": _norm(v) for k, v in addr.attrib.items()}
        model = el.find("model")
        if el.get("model"):
            value["model"] = el.get("model", "")
        if model is not None and model.get("type"):
            value["model"] = model.get("type", "")
        target = el.find("target")
        if el.tag == "controller" and target is not None:
            value |= {f"target.{k}": _norm(v) for k, v in target.attrib.items()}
        out[key] = value
    return out


def _norm(value: str) -> str:
    try:
        return str(int(value, 0))
    except ValueError:
        return value


def pci_tree(devices: list[dict[str, Any]], bus: int = 0) -> list[tuple[Any, ...]]:
    """``query-pci``'s devices as (bus, slot, function, vendor, device, class), bridges
    followed down: what the guest sees of the PCI layout."""
    out: list[tuple[Any, ...]] = []
    for dev in devices:
        ident = dev["id"]
        out.append((bus, dev["slot"], dev["function"], ident["vendor"], ident["device"],
                    dev["class_info"]["class"]))
        bridge = dev.get("pci_bridge")
        if bridge:
            out += pci_tree(bridge.get("devices", []), bridge["bus"]["secondary"])
    return sorted(out)
