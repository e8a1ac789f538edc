"""Debian's libvirt as the reference: its embedded QEMU driver, no daemon.

``qemu:///embed?root=DIR`` keeps everything (definitions, status, logs) under DIR.
`layout` and `pci_tree` reduce a domain XML and ``query-pci`` to what is guest ABI,
so that libvirt's and qdriver's can be compared.
"""
from __future__ import annotations

import json
import os
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest

AGENT = Path(__file__).with_name("libvirt_agent.py")
SYSTEM_PYTHON = "/usr/bin/python3"
"""python3-libvirt is Debian's: it is in the system Python, not in the venv."""
LIBVIRT_QEMU = "/usr/bin/qemu-system-x86_64"
"""The QEMU libvirt runs: Debian's.  libvirt 9.0 fails its capability probe of QEMU 10
("An error occurred, but the cause is unknown"), so the agent runs with the system
PATH, and a guest that moves between the two names this QEMU in ``<emulator>``."""
SYSTEM_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"


def available() -> bool:
    return subprocess.run([SYSTEM_PYTHON, "-c", "import libvirt"],
                          capture_output=True).returncode == 0 and \
        subprocess.run(["id", "libvirt-qemu"], capture_output=True).returncode == 0


needs_libvirt = pytest.mark.skipif(not available(), reason="Debian's libvirt (python3-libvirt, "
                                   "the libvirt-qemu user) is not installed: see .ci/setup")


class LibvirtError(Exception):
    """libvirt refused a request; the message is libvirt's."""


class Libvirt:
    """An embedded libvirt rooted at ``root``, one connection held by `libvirt_agent`.

    QEMU runs as root (``ROOT/etc/qemu.conf``); libvirt still resolves its default
    user ``libvirt-qemu`` first, which Debian's daemon package (or ``.ci/setup``) makes.
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        (root / "etc").mkdir(parents=True, exist_ok=True)
        (root / "etc" / "qemu.conf").write_text(
            'user = "root"\ngroup = "root"\nstdio_handler = "file"\n')
        self.proc = subprocess.Popen([SYSTEM_PYTHON, str(AGENT), str(root)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                     env=os.environ | {"PATH": SYSTEM_PATH})

    def call(self, op: str, *args: Any) -> Any:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(json.dumps({"op": op, "args": list(args)}) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise AssertionError(f"the libvirt agent died during {op}")
        reply = json.loads(line)
        if "error" in reply:
            raise LibvirtError(reply["error"])
        return reply["ok"]

    def define(self, xml: str) -> str:
        """Define ``xml``; its ``dumpxml --inactive``."""
        name = self.call("define", xml)
        return str(self.call("dumpxml", name, 2))  # VIR_DOMAIN_XML_INACTIVE

    def monitor(self, name: str, command: str, **arguments: Any) -> Any:
        msg = {"execute": command} | ({"arguments": arguments} if arguments else {})
        return json.loads(self.call("monitor", name, json.dumps(msg)))["return"]

    def cleanup(self) -> None:
        """Destroy and undefine everything (the agent does it at end of input)."""
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        self.proc.wait(timeout=120)


def layout(xml: str) -> dict[tuple[str, ...], dict[str, str]]:
    """The machine type and each device of a domain XML and where it sits: the part
    of the XML that is guest ABI (addresses, models, root-port numbering), keyed by
    what the device is."""
    root = ET.fromstring(xml)
    devices = root.find("devices")
    assert devices is not None
    os_type = root.find("os/type")
    out: dict[tuple[str, ...], dict[str, str]] = {
        ("machine",): {"machine": os_type.get("machine", "") if os_type is not None else ""}}
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


def device_addresses(argv: list[str]) -> list[str]:
    """Each ``-device``'s driver, bus and address (and mount tag), in order, from a
    QEMU command line as qdriver gives it or as libvirt's ``domxml-to-native`` prints it
    (split on spaces: its JSON has none)."""
    out = []
    for i, a in enumerate(argv):
        if a == "-device":
            text = argv[i + 1].strip("'")
            d = json.loads(text) if text.startswith("{") else _options(text)
            tag = d.get("tag") or d.get("mount_tag") or ""
            out.append(f"{d['driver']}@{d.get('bus', '')}/{d.get('addr', '')}"
                       + (f":{tag}" if tag else ""))
    return out


PLACE_KEYS = ("chassis", "port", "chassis_nr", "multifunction", "hotplug")
"""What places a PCI controller beside its bus and address: a port's chassis and port
number, a bridge's chassis, a multifunction slot, a port closed to hotplug."""


def device_places(argv: list[str]) -> list[str]:
    """Each ``-device``'s driver, bus, address and `PLACE_KEYS`, sorted: where a command
    line puts every device, from qdriver's ``key=value`` options or libvirt's JSON."""
    out = []
    for i, a in enumerate(argv):
        if a != "-device":
            continue
        text = argv[i + 1].strip("'")
        d: dict[str, Any] = json.loads(text) if text.startswith("{") else _options(text)
        extra = {k: _place_value(d[k]) for k in PLACE_KEYS if k in d}
        out.append(f"{d['driver']}@{d.get('bus', '')}/{d.get('addr', '')}"
                   + "".join(f",{k}={v}" for k, v in extra.items()))
    return sorted(out)


def _place_value(value: Any) -> str:
    """One spelling for JSON's ``8``, ``true`` and an option's ``0x8``, ``on``."""
    if isinstance(value, bool) or value in ("on", "off"):
        return "on" if value in (True, "on") else "off"
    return str(int(value, 0) if isinstance(value, str) else value)


def _options(text: str) -> dict[str, str]:
    """A ``driver,key=value,...`` option string."""
    found = {}
    for i, item in enumerate(text.split(",")):
        key, _, value = item.partition("=")
        found.update({"driver": key} if i == 0 and not value else {key: value})
    return found

