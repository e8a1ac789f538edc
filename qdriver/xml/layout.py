"""libvirt's device layout: the implicit devices and the address of every device.

`assign` does for a definition what libvirt does when it defines a domain: it
adds the devices libvirt adds on its own (USB and SATA controllers, the PCI
root, PS/2 input, a memory balloon...) and gives each device without an
address the one libvirt would give it, in libvirt's order.  On q35 every PCI
Express endpoint gets a ``pcie-root-port`` of its own (numbered from 1, eight
to a slot of ``pcie.0``) and one spare port is added for hotplug; on i440fx
(``pc``) endpoints take the free slots of ``pci.0`` from slot 2.  Addresses
already present are kept, so assigning twice changes nothing: `Driver.define_xml`
stores the result, and every later start places each device exactly there.
"""
from __future__ import annotations

import hashlib
import itertools
from dataclasses import dataclass

from ..errors import ConfigUnsupportedError, XMLError
from . import address, safe
from .address import DriveAddress, PciAddress, PortAddress
from .domain import DomainDef

Q35_RESERVED_SLOTS = (0, 0x1F)
"""The host bridge and the ICH9 functions (LPC, SATA, SMBus)."""
PC_RESERVED_SLOTS = (0, 1)
"""The host bridge and PIIX3 (ISA, IDE, USB)."""
SATA_UNITS, IDE_UNITS, LSI_UNITS = 6, 2, 7


@dataclass
class _Slots:
    """Which PCI addresses are taken."""

    used: set[tuple[int, int, int]]

    def take(self, addr: PciAddress) -> PciAddress:
        self.used.add((addr.bus, addr.slot, addr.function))
        return addr

    def slot_free(self, bus: int, slot: int) -> bool:
        return not any((bus, slot, f) in self.used for f in range(address.PCI_FUNCTIONS))


def machine_problems(d: DomainDef) -> list[str]:
    """What in ``d``'s machine type qdriver cannot lay out (``isapc``, ``none``, ...)."""
    m = d.machine
    if m in ("q35", "pc", "microvm") or m.startswith(("pc-q35-", "pc-i440fx-")) or \
            (m.startswith("pc-") and m[3:4].isdigit()):  # pc-1.0 ...: old i440fx types
        return []
    return [f"machine type '{m}' (qdriver lays out q35, pc and microvm machines)"]


def assign(d: DomainDef) -> DomainDef:
    """``d`` with libvirt's implicit devices added and an address on every device.

    A definition qdriver cannot start (``d.unsupported``) is returned as it is:
    starting it fails naming what is wrong, and guessing its layout helps nobody.
    """
    if d.unsupported or d.machine == "microvm":  # microvm has no PCI bus to lay out
        return d
    root = safe.copy(d.root)
    devices = root.find("devices")
    if devices is None:
        devices = safe.sub(root, "devices")
    _default_cpu(root, d)
    drives = _drive_addresses(devices, d)
    _implicit_devices(devices, d, drives)
    d = DomainDef.from_element(root)
    _pci_addresses(devices, d)
    _port_addresses(devices, d)
    return DomainDef.from_element(root)


def default_mac(uuid: str, index: int) -> str:
    """A stable MAC for a domain's ``index``-th NIC, in QEMU/libvirt's 52:54:00 range."""
    h = hashlib.sha256(f"{uuid}/{index}".encode()).digest()
    return "52:54:00:" + ":".join(f"{x:02x}" for x in h[:3])


DEFAULT_CPU_MODEL = "qemu64"
"""QEMU's x86_64 default, which libvirt writes out: the vCPU is guest ABI too."""


def _default_cpu(root: safe.Element, d: DomainDef) -> None:
    """``<cpu>`` with QEMU's default model, where the definition has none."""
    if root.find("cpu") is not None or d.arch != "x86_64":
        return
    cpu = safe.new("cpu", {"mode": "custom", "match": "exact", "check": "none"})
    safe.sub(cpu, "model", {"fallback": "forbid"}, DEFAULT_CPU_MODEL)
    anchor = root.find("features")
    if anchor is None:
        anchor = root.find("os")
    if anchor is not None:
        anchor.addnext(cpu)
    else:
        root.append(cpu)


# -- disks on IDE, SATA and SCSI controllers ----------------------------------------------

def disk_index(target: str) -> int:
    """libvirt's index of a disk name: ``sda`` 0, ``sdz`` 25, ``sdaa`` 26."""
    letters = target[2:]
    return int(sum((ord(c) - ord("a") + 1) * 26 ** i for i, c in enumerate(reversed(letters)))) - 1


def _drive_address(bus: str, index: int, scsi_model: str) -> DriveAddress:
    if bus == "sata":
        return DriveAddress(controller=index // SATA_UNITS, unit=index % SATA_UNITS)
    if bus == "ide":
        return DriveAddress(controller=index // (2 * IDE_UNITS),
                            bus=index % (2 * IDE_UNITS) // IDE_UNITS, unit=index % IDE_UNITS)
    if scsi_model == "lsilogic":
        return DriveAddress(controller=index // LSI_UNITS, unit=index % LSI_UNITS)
    return DriveAddress(unit=index)


def _drive_addresses(devices: safe.Element, d: DomainDef) -> dict[str, set[int]]:
    """Give each disk off the PCI bus its drive address; ``{bus: controller indexes}``."""
    scsi = d.controller("scsi")
    needed: dict[str, set[int]] = {}
    for el, disk in zip(devices.findall("disk"), d.disks):
        if disk.bus == "virtio":
            continue
        addr = disk.address
        if not isinstance(addr, DriveAddress):
            addr = _drive_address(disk.bus, disk_index(disk.target),
                                  scsi.model if scsi else "lsilogic")
            address.write(el, addr)
        needed.setdefault(disk.bus, set()).add(addr.controller)
    return needed


# -- implicit devices --------------------------------------------------------------------

def _implicit_devices(devices: safe.Element, d: DomainDef, drives: dict[str, set[int]]
                      ) -> None:
    """Add what libvirt adds on its own, in libvirt's order."""
    controllers: list[tuple[str, int, str]] = []
    if not any(c.type == "usb" for c in d.controllers):
        controllers.append(("usb", 0, "qemu-xhci" if d.q35 else "piix3-uhci"))
    if d.q35:
        controllers.append(("sata", 0, ""))
    controllers.append(("pci", 0, "pcie-root" if d.q35 else "pci-root"))
    for bus in ("ide", "scsi", "sata"):
        for index in range(max(drives.get(bus, {-1})) + 1):
            controllers.append((bus, index, "lsilogic" if bus == "scsi" else ""))
    if d.channels:
        controllers.append(("virtio-serial", 0, ""))
    for el in devices.findall("controller"):
        el.set("index", el.get("index") or "0")
    present = {(c.type, c.index) for c in d.controllers}
    for ctype, index, model in controllers:
        if (ctype, index) not in present:
            present.add((ctype, index))
            attrs = {"type": ctype, "index": str(index)} | ({"model": model} if model else {})
            _insert_controller(devices, safe.new("controller", attrs))
    for i, (el, iface) in enumerate(zip(devices.findall("interface"), d.interfaces)):
        mac = el.find("mac")  # MAC and model written out, as libvirt does: guest ABI
        if mac is None:
            mac = safe.new("mac", {"address": default_mac(d.uuid, i)})
            el.insert(0, mac)
        if el.find("model") is None:
            mac.addnext(safe.new("model", {"type": iface.model}))
    if devices.find("memballoon") is None:
        safe.sub(devices, "memballoon", {"model": "virtio"})
    for kind in ("mouse", "keyboard"):
        if not any(i.type == kind and i.bus == "ps2" for i in d.inputs):
            safe.sub(devices, "input", {"type": kind, "bus": "ps2"})
    if d.graphics and not d.videos:
        video = safe.sub(devices, "video")
        safe.sub(video, "model", {"type": "cirrus", "vram": "16384", "heads": "1",
                                  "primary": "yes"})
    if devices.find("audio") is None:  # libvirt 9.0 adds one, a display or not
        safe.sub(devices, "audio", {"id": "1", "type": "none"})


def _insert_controller(devices: safe.Element, el: safe.Element) -> None:
    """After the last controller (or disk), where libvirt lists controllers."""
    anchors = devices.findall("controller") or devices.findall("disk")
    if anchors:
        anchors[-1].addnext(el)
    else:
        devices.append(el)


# -- PCI ---------------------------------------------------------------------------------

def _pci_addresses(devices: safe.Element, d: DomainDef) -> None:
    slots = _Slots(set())
    for el in devices.iter():
        addr = address.parse(el) if el.tag != "address" else None
        if isinstance(addr, PciAddress):
            if (addr.bus, addr.slot, addr.function) in slots.used:
                raise XMLError(f"Attempted double use of PCI Address 0000:{addr.bus:02x}:"
                               f"{addr.slot:02x}.{addr.function}")
            slots.take(addr)
    for el, addr in _fixed_addresses(devices, d):
        if el.find("address") is None:
            address.write(el, slots.take(addr))
    endpoints = [el for el in _endpoints(devices, d) if el.find("address") is None]
    if d.q35:
        _behind_root_ports(devices, d, slots, endpoints)
    else:
        for el in endpoints:
            address.write(el, slots.take(_free_slot(slots, 0, PC_RESERVED_SLOTS)))


def _fixed_addresses(devices: safe.Element, d: DomainDef
                     ) -> list[tuple[safe.Element, PciAddress]]:
    """Devices with a place of their own: the chipset's and the primary video's."""
    fixed: list[tuple[safe.Element, PciAddress]] = []
    for el in devices.findall("controller"):
        kind = (el.get("type"), el.get("index", "0"), el.get("model"))
        if d.q35 and kind[:2] == ("sata", "0"):
            fixed.append((el, PciAddress(0, 0x1F, 2)))
        elif not d.q35 and kind[:2] == ("ide", "0"):
            fixed.append((el, PciAddress(0, 1, 1)))
        elif not d.q35 and kind == ("usb", "0", "piix3-uhci"):
            fixed.append((el, PciAddress(0, 1, 2)))
    video = next((el for el, v in zip(devices.findall("video"), d.videos) if v.model != "none"),
                 None)
    if video is not None:
        fixed.append((video, PciAddress(0, 1 if d.q35 else 2)))
    return fixed


def _endpoints(devices: safe.Element, d: DomainDef) -> list[safe.Element]:
    """Devices that take a PCI address, in the order libvirt gives them one."""
    out = list(devices.findall("filesystem")) + list(devices.findall("interface"))
    for el, c in zip(devices.findall("controller"), d.controllers):
        if c.type in ("usb", "scsi", "virtio-serial", "sata") and c.model != "none" \
                or c.model in ("pci-bridge", "pcie-to-pci-bridge"):
            out.append(el)
    out += [el for el, disk in zip(devices.findall("disk"), d.disks) if disk.bus == "virtio"]
    out += [el for el in devices.findall("memballoon") if el.get("model", "virtio") == "virtio"]
    out += devices.findall("rng")
    return out


def _free_slot(slots: _Slots, bus: int, reserved: tuple[int, ...]) -> PciAddress:
    for slot in range(address.PCI_SLOTS):
        if slot not in reserved and slots.slot_free(bus, slot):
            return PciAddress(bus, slot)
    raise ConfigUnsupportedError(f"no free PCI slot on bus {bus} for another device")


CONVENTIONAL = {("interface", "e1000"), ("interface", "rtl8139"), ("controller", "lsilogic"),
                ("controller", "piix3-uhci"), ("video", "cirrus"), ("video", "vga")}
"""Conventional PCI devices: on q35 libvirt puts them behind a ``pcie-to-pci-bridge``."""
BRIDGE_SLOTS = range(1, address.PCI_SLOTS)
"""A ``pcie-to-pci-bridge`` takes devices in slots 1 to 31."""


def _conventional(el: safe.Element) -> bool:
    model = el.find("model")
    name = el.get("model") if el.tag == "controller" else \
        (model.get("type") if model is not None else None)
    return (el.tag, name) in CONVENTIONAL


@dataclass
class _Q35Ports:
    """The root ports and bridges of a q35 domain, and the ones this define adds."""

    devices: safe.Element
    slots: _Slots
    free: list[int]
    bridges: list[int]
    next_index: itertools.count[int]

    def endpoint(self) -> PciAddress:
        """A PCI Express endpoint's place: a free root port, else a new one."""
        if not self.free:
            self.free.append(self.new("pcie-root-port"))
        return self.slots.take(PciAddress(self.free.pop(0), 0))

    def conventional(self) -> PciAddress:
        """A conventional PCI device's place: a slot on a bridge, else a new bridge."""
        for bridge in self.bridges:
            slot = next((s for s in BRIDGE_SLOTS if self.slots.slot_free(bridge, s)), None)
            if slot is not None:
                return self.slots.take(PciAddress(bridge, slot))
        port = self.endpoint()
        self.bridges.append(self.new("pcie-to-pci-bridge", port))
        return self.conventional()

    def new(self, model: str, at: PciAddress | None = None) -> int:
        index = next(self.next_index)
        el = safe.new("controller", {"type": "pci", "index": str(index), "model": model})
        safe.sub(el, "model", {"name": {"pcie-to-pci-bridge": "pcie-pci-bridge"}.get(model,
                                                                                   model)})
        if at is not None:
            address.write(el, at)
        _insert_controller(self.devices, el)
        return index


def _behind_root_ports(devices: safe.Element, d: DomainDef, slots: _Slots,
                       endpoints: list[safe.Element]) -> None:
    """Each endpoint on a root port of its own, conventional PCI devices on a bridge."""
    ports = [c for c in d.controllers if c.model == "pcie-root-port"]
    q35 = _Q35Ports(
        devices, slots, free=[c.index for c in ports if slots.slot_free(c.index, 0)],
        bridges=[c.index for c in d.controllers if c.model == "pcie-to-pci-bridge"],
        next_index=itertools.count(max((c.index for c in d.controllers if c.type == "pci"),
                                       default=0) + 1))
    for el in endpoints:
        address.write(el, q35.conventional() if _conventional(el) else q35.endpoint())
    if not ports:
        q35.new("pcie-root-port")  # libvirt's spare port, for a hotplugged device
    _place_root_ports(devices, slots)


def _place_root_ports(devices: safe.Element, slots: _Slots) -> None:
    """Root ports without an address go on ``pcie.0``, eight functions to a slot."""
    waiting = [el for el in devices.findall("controller")
               if el.get("model") == "pcie-root-port" and el.find("address") is None]
    places = ((slot, fn) for slot in range(address.PCI_SLOTS)
              if slot not in Q35_RESERVED_SLOTS and slots.slot_free(0, slot)
              for fn in range(address.PCI_FUNCTIONS))
    placed: list[tuple[safe.Element, int, int]] = []
    for el in waiting:
        place = next(places, None)
        if place is None:
            raise ConfigUnsupportedError("no free slot on pcie.0 for another pcie-root-port")
        placed.append((el, *place))
    per_slot = {slot: sum(1 for _, s, _ in placed if s == slot) for _, slot, _ in placed}
    for el, slot, fn in placed:
        addr = PciAddress(0, slot, fn, multifunction=fn == 0 and per_slot[slot] > 1)
        target = el.find("target")
        if target is None:
            target = safe.sub(el, "target")
        target.set("chassis", target.get("chassis") or el.get("index") or "0")
        target.set("port", target.get("port") or f"{slot << 3 | fn:#x}")
        address.write(el, slots.take(addr))


# -- virtio-serial and USB ports ---------------------------------------------------------

def _port_addresses(devices: safe.Element, d: DomainDef) -> None:
    """Channels on virtio-serial ports from 1, USB input on USB ports from 1."""
    kinds = (("virtio-serial", list(zip(devices.findall("channel"), d.channels))),
             ("usb", [(el, i) for el, i in zip(devices.findall("input"), d.inputs)
                      if i.bus == "usb"]))
    for kind, items in kinds:
        taken = {dev.address.port for _, dev in items if isinstance(dev.address, PortAddress)}
        ports = (p for p in itertools.count(1) if p not in taken)
        for el, dev in items:
            if dev.address is None:
                address.write(el, PortAddress(kind, next(ports)))
