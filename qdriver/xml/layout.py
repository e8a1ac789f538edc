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
from .domain import CONTROLLER_MODELS, PCI_MODEL_NAMES, DomainDef

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
    lone_root = all(c.index == 0 for c in d.controllers if c.type == "pci")
    _default_cpu(root, d)
    drives = _drive_addresses(devices, d)
    _implicit_devices(devices, d, drives)
    _resolve_models(devices, d)
    _serial_targets(devices)
    added = _missing_buses(devices, d)
    _pci_addresses(root, spare=lone_root and d.q35, added=added)
    d = DomainDef.from_element(root)
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


def _resolve_models(devices: safe.Element, d: DomainDef) -> None:
    """Write out what libvirt resolves and stores: the model of a USB or SCSI
    controller named without one, each PCI controller's QEMU device, a PCI bridge's
    chassis number, and a video adapter's sizes and heads."""
    for el in devices.findall("controller"):
        kind, model = el.get("type", ""), el.get("model")
        if kind in ("usb", "scsi") and model in (None, "", "auto"):
            el.set("model", CONTROLLER_MODELS[kind][0])
        names = PCI_MODEL_NAMES.get(model or "") if kind == "pci" else None
        if names and el.find("model") is None:
            el.insert(0, safe.new("model", {"name": names[0]}))
        if model == "pci-bridge":
            target = _target(el)
            target.set("chassisNr", str(target.get("chassisNr") or el.get("index") or "0"))
    for el, video in zip(devices.findall("video"), d.videos):
        written = el.find("model")
        mel = written if written is not None else safe.sub(el, "model", {"type": video.model})
        extra = {k: str(v) for k, v in video.sizes.items() if k != "vram64"}
        if video.model in ("cirrus", "vga"):
            extra = {"vram": "16384"}
        if video.model != "none":
            for key, value in (extra | {"heads": str(video.heads), "primary": "yes"}).items():
                mel.set(key, str(mel.get(key) or value))


def _target(el: safe.Element) -> safe.Element:
    """``el``'s ``<target>``, made if it has none (before its ``<address>``)."""
    target = el.find("target")
    if target is None:
        target = safe.new("target")
        addr = el.find("address")
        if addr is not None:
            addr.addprevious(target)
        else:
            el.append(target)
    return target


def _serial_targets(devices: safe.Element) -> None:
    """Serial ports on ISA ports 0, 1...; the console on the first serial port (a
    console without one gets a serial port of its own, its source copied), as
    libvirt writes them."""
    serials = devices.findall("serial")
    consoles = devices.findall("console")
    if consoles and not serials:
        serial = safe.copy(consoles[0])
        serial.tag = "serial"
        for old in serial.findall("target"):
            serial.remove(old)
        consoles[0].addprevious(serial)
        serials = [serial]
    taken = {t.get("port") for el in serials for t in el.findall("target")}
    free = (str(p) for p in itertools.count() if str(p) not in taken)
    for el in serials:
        target = _target(el)
        target.set("type", target.get("type") or "isa-serial")
        target.set("port", target.get("port") or next(free))
        if target.find("model") is None:
            safe.sub(target, "model", {"name": "isa-serial"})
    for el in consoles[:1]:
        target = _target(el)
        target.set("type", target.get("type") or "serial")
        target.set("port", str(target.get("port") or _target(serials[0]).get("port") or "0"))


def _missing_buses(devices: safe.Element, d: DomainDef) -> int:
    """A controller for each PCI bus index a device names and no controller has (and
    each index below it): a ``pci-bridge`` on pc, a ``pcie-root-port`` on q35, as
    libvirt adds them.  How many were added."""
    wanted = max((a.bus for el in devices.iter() if el.tag != "address"
                  for a in [address.parse(el)] if isinstance(a, PciAddress)), default=0)
    have = {c.index for c in d.controllers if c.type == "pci"}
    model = "pcie-root-port" if d.q35 else "pci-bridge"
    missing = [i for i in range(1, wanted + 1) if i not in have]
    for index in missing:
        el = safe.new("controller", {"type": "pci", "index": str(index), "model": model})
        safe.sub(el, "model", {"name": PCI_MODEL_NAMES[model][0]})
        if model == "pci-bridge":
            safe.sub(el, "target", {"chassisNr": str(index)})
        _insert_controller(devices, el)
    return len(missing)


def _insert_controller(devices: safe.Element, el: safe.Element) -> None:
    """After the last controller (or disk), where libvirt lists controllers."""
    anchors = devices.findall("controller") or devices.findall("disk")
    if anchors:
        anchors[-1].addnext(el)
    else:
        devices.append(el)


# -- PCI ---------------------------------------------------------------------------------

PORT_MODELS = ("pcie-root-port", "pcie-switch-downstream-port")
"""PCI Express ports: each takes one device, in slot 0 of the bus it makes."""


def _pci_addresses(root: safe.Element, spare: bool, added: int) -> None:
    """Give every PCI device without an address libvirt's, in libvirt's two passes.

    The first pass, on a copy, places every device and adds the buses they need: on
    q35 a conventional PCI device without room on a bridge brings a new root port and
    a ``pcie-to-pci-bridge`` on it; a definition with no PCI controllers of its own
    (``spare``) that needed new buses gets one more root port for hotplug unless one
    is left empty (``added``: root ports already added for buses devices name); on pc
    a slot is held back for a ``pci-bridge``.  The second pass places everything
    again, the added controllers first, with the buses the first one found needed."""
    devices = root.find("devices")
    assert devices is not None
    d = DomainDef.from_element(root)
    _given_addresses(devices, d)
    trial = safe.copy(devices)
    for el in _place_all(trial, d, first=True, spare=spare, added=added):
        old = el.find("address")
        if old is not None:
            el.remove(old)
        _insert_controller(devices, el)
    _place_all(devices, DomainDef.from_element(root), first=False, spare=False, added=0)


def _given_addresses(devices: safe.Element, d: DomainDef) -> None:
    """Check the addresses the definition gives (libvirt's words), write them in
    libvirt's spelling, and give the chipset's devices and the video their own."""
    slots = _Slots(set())
    for el in list(devices.iter()):
        addr = address.parse(el) if el.tag != "address" else None
        if isinstance(addr, PciAddress):
            if (addr.bus, addr.slot, addr.function) in slots.used:
                raise XMLError(f"Attempted double use of PCI Address 0000:{addr.bus:02x}:"
                               f"{addr.slot:02x}.{addr.function}")
            _check_port_slot(d, addr)
            address.write(el, slots.take(addr))
    for el, addr in _fixed_addresses(devices, d):
        if el.find("address") is None:
            address.write(el, slots.take(addr))


def _place_all(devices: safe.Element, d: DomainDef, first: bool, spare: bool, added: int
               ) -> list[safe.Element]:
    """One pass: an address for each PCI device without one; the PCI controllers the
    pass added."""
    slots = _Slots({(a.bus, a.slot, a.function) for el in devices.iter() if el.tag != "address"
                    for a in [address.parse(el)] if isinstance(a, PciAddress)})
    before = {c.index for c in d.controllers if c.type == "pci"}
    endpoints = [el for el in _endpoints(devices, d) if el.find("address") is None]
    if d.q35:
        _behind_root_ports(devices, d, slots, endpoints, spare, added)
    else:
        _on_pci_buses(devices, d, slots, endpoints, hold_back=first)
    return [el for el in devices.findall("controller")
            if el.get("type") == "pci" and int(el.get("index") or 0) not in before]


def _on_pci_buses(devices: safe.Element, d: DomainDef, slots: _Slots,
                  endpoints: list[safe.Element], hold_back: bool) -> None:
    """pc: each device in the first free slot of ``pci.0``, then of the bridges; a new
    ``pci-bridge`` when all are full (``hold_back``: keep a slot of ``pci.0`` for it)."""
    bridges = sorted(c.index for c in d.controllers if c.model == "pci-bridge")
    next_index = itertools.count(max((c.index for c in d.controllers if c.type == "pci"),
                                     default=0) + 1)

    def free() -> PciAddress | None:
        for bus in [0, *bridges]:
            reserved = PC_RESERVED_SLOTS if bus == 0 else (0,)
            slot = next((s for s in range(address.PCI_SLOTS)
                         if s not in reserved and slots.slot_free(bus, s)), None)
            if slot is not None:
                return slots.take(PciAddress(bus, slot))
        return None

    held = free() if hold_back else None
    for el in endpoints:
        addr = free()
        if addr is None:
            if held is None:
                raise ConfigUnsupportedError("no free PCI slot for another device")
            bridges.append(next(next_index))
            bridge = safe.new("controller", {"type": "pci", "index": str(bridges[-1]),
                                             "model": "pci-bridge"})
            safe.sub(bridge, "model", {"name": "pci-bridge"})
            safe.sub(bridge, "target", {"chassisNr": str(bridges[-1])})
            address.write(bridge, held)
            _insert_controller(devices, bridge)
            held, addr = free(), free()
            assert addr is not None
        address.write(el, addr)


def _check_port_slot(d: DomainDef, addr: PciAddress) -> None:
    """A device on a PCI Express port's bus must be in slot 0 (libvirt's words)."""
    bus = d.controller("pci", addr.bus)
    if bus is not None and bus.model in PORT_MODELS and addr.slot > 0:
        raise XMLError(f"Invalid PCI address 0000:{addr.bus:02x}:{addr.slot:02x}."
                       f"{addr.function}. slot must be <= 0")


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


BRIDGE_MODELS = ("pci-bridge", "pcie-to-pci-bridge", "pcie-switch-upstream-port",
                 "pcie-switch-downstream-port")
"""PCI controllers placed like devices (root ports go on ``pcie.0`` at the end)."""


def _endpoints(devices: safe.Element, d: DomainDef) -> list[safe.Element]:
    """Devices that take a PCI address, in the order libvirt gives them one: the PCI
    controllers by index, then the rest."""
    pci = sorted(((c.index, el) for el, c in zip(devices.findall("controller"), d.controllers)
                  if c.model in BRIDGE_MODELS), key=lambda pair: pair[0])
    out = [el for _, el in pci]
    out += list(devices.findall("filesystem")) + list(devices.findall("interface"))
    for el, c in zip(devices.findall("controller"), d.controllers):
        if c.type in ("usb", "scsi", "virtio-serial", "sata") and c.model != "none":
            out.append(el)
    out += [el for el, disk in zip(devices.findall("disk"), d.disks) if disk.bus == "virtio"]
    out += [el for el in devices.findall("memballoon") if el.get("model", "virtio") == "virtio"]
    out += devices.findall("rng")
    return out


CONVENTIONAL = {("interface", "e1000"), ("interface", "rtl8139"), ("controller", "lsilogic"),
                ("controller", "piix3-uhci"), ("controller", "pci-bridge"), ("video", "cirrus"),
                ("video", "vga")}
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
    """The PCI Express ports and bridges of a q35 domain, and the ones this define adds."""

    devices: safe.Element
    slots: _Slots
    ports: list[int]
    """Root and switch downstream ports, by index: each one device in slot 0."""
    bridges: list[int]
    upstream: list[int]
    next_index: itertools.count[int]
    below: dict[int, int]
    """Each placed PCI controller's parent bus (a switch never goes below itself)."""
    added: int = 0

    def endpoint(self, avoid: int | None = None) -> PciAddress:
        """A PCI Express device's place: a free port, else a new root port.  ``avoid``:
        a switch's upstream port, which goes only on a port already placed and not
        below itself (libvirt 9.0 may put it on its own downstream port: a loop QEMU
        cannot build)."""
        for port in self.ports:
            if self.slots.slot_free(port, 0) and not (
                    avoid is not None and (port not in self.below or self._under(port, avoid))):
                return self.slots.take(PciAddress(port, 0))
        self.ports.append(self.new("pcie-root-port"))
        self.added += 1
        return self.slots.take(PciAddress(self.ports[-1], 0))

    def _under(self, bus: int, avoid: int | None) -> bool:
        seen = set()
        while bus in self.below and bus not in seen:
            seen.add(bus)
            bus = self.below[bus]
            if bus == avoid:
                return True
        return False

    def conventional(self) -> PciAddress:
        """A conventional PCI device's place: a slot on a bridge, else a new bridge."""
        for bridge in self.bridges:
            slot = next((s for s in BRIDGE_SLOTS if self.slots.slot_free(bridge, s)), None)
            if slot is not None:
                return self.slots.take(PciAddress(bridge, slot))
        port = self.new("pcie-root-port")  # libvirt adds the pair, free ports or not
        self.added += 1
        self.bridges.append(self.new("pcie-to-pci-bridge", self.slots.take(PciAddress(port, 0))))
        return self.conventional()

    def downstream(self) -> PciAddress:
        """A switch downstream port's place: the next slot of an upstream port's bus."""
        for up in self.upstream:
            slot = next((s for s in range(address.PCI_SLOTS) if self.slots.slot_free(up, s)),
                        None)
            if slot is not None:
                return self.slots.take(PciAddress(up, slot))
        raise ConfigUnsupportedError("a pcie-switch-downstream-port needs a free slot on a "
                                     "pcie-switch-upstream-port")

    def new(self, model: str, at: PciAddress | None = None) -> int:
        index = next(self.next_index)
        el = safe.new("controller", {"type": "pci", "index": str(index), "model": model})
        safe.sub(el, "model", {"name": PCI_MODEL_NAMES[model][0]})
        if at is not None:
            address.write(el, at)
        self.below[index] = at.bus if at is not None else 0  # a root port: on pcie.0
        _insert_controller(self.devices, el)
        return index

    def place(self, el: safe.Element) -> None:
        """Give ``el`` its address, by what kind of device it is."""
        model, index = el.get("model"), int(el.get("index") or 0)
        if el.tag == "controller" and model == "pcie-switch-downstream-port":
            addr = self.downstream()
            target = _target(el)
            target.set("chassis", target.get("chassis") or str(index))
            target.set("port", target.get("port") or f"{addr.slot:#x}")
        elif _conventional(el):
            addr = self.conventional()
        else:
            addr = self.endpoint(index if model == "pcie-switch-upstream-port" else None)
        if el.tag == "controller" and el.get("type") == "pci":
            self.below[index] = addr.bus
        address.write(el, addr)


def _behind_root_ports(devices: safe.Element, d: DomainDef, slots: _Slots,
                       endpoints: list[safe.Element], spare: bool, added: int) -> None:
    """Each endpoint on a PCI Express port of its own, conventional PCI devices on a
    bridge; libvirt's spare root port for hotplug if ``spare`` and root ports were
    added (``added`` of them already, for buses devices name)."""
    pci = [c for c in d.controllers if c.type == "pci"]
    q35 = _Q35Ports(
        devices, slots, ports=sorted(c.index for c in pci if c.model in PORT_MODELS),
        bridges=[c.index for c in pci if c.model == "pcie-to-pci-bridge"],
        upstream=[c.index for c in pci if c.model == "pcie-switch-upstream-port"],
        next_index=itertools.count(max((c.index for c in pci), default=0) + 1),
        below={c.index: c.address.bus if isinstance(c.address, PciAddress) else 0 for c in pci
               if isinstance(c.address, PciAddress) or c.model == "pcie-root-port"},
        added=added)
    for el in endpoints:
        q35.place(el)
    if spare and q35.added and not any(slots.slot_free(p, 0) for p in q35.ports):
        q35.new("pcie-root-port")  # libvirt's spare port, for a hotplugged device
    _place_root_ports(devices, slots)


def _place_root_ports(devices: safe.Element, slots: _Slots) -> None:
    """Root ports without an address go on ``pcie.0``, eight functions to a slot."""
    waiting = sorted((el for el in devices.findall("controller")
                      if el.get("model") == "pcie-root-port" and el.find("address") is None),
                     key=lambda el: int(el.get("index") or 0))
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
