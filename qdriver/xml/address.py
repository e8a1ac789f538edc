"""Device addresses as libvirt writes them: ``<address type='pci'|'drive'|'usb'|...>``.

A device's address is part of the guest ABI: QEMU names a device's saved state
after its PCI path (``0000:00:01.0/virtio-blk``), so a memory file or internal
snapshot loads only into a QEMU whose devices sit at the same addresses.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..errors import XMLError
from . import safe

PCI_SLOTS = 32
PCI_FUNCTIONS = 8


@dataclass(frozen=True)
class PciAddress:
    """``<address type='pci'>`` in PCI domain 0 (the only one QEMU's x86 machines have):
    bus is the index of the PCI controller it sits on."""

    bus: int
    slot: int
    function: int = 0
    multifunction: bool = False

    @property
    def qemu_addr(self) -> str:
        """QEMU's ``addr=`` value, as libvirt writes it (``0x1``, ``0x1.0x2``)."""
        return f"{self.slot:#x}" if not self.function else f"{self.slot:#x}.{self.function:#x}"


@dataclass(frozen=True)
class DriveAddress:
    """``<address type='drive'>`` of a disk on an IDE, SATA or SCSI controller."""

    controller: int = 0
    bus: int = 0
    target: int = 0
    unit: int = 0


@dataclass(frozen=True)
class PortAddress:
    """``<address type='usb'|'virtio-serial'>``: a port on a controller's bus."""

    type: str
    port: int
    bus: int = 0
    controller: int = 0


Address = PciAddress | DriveAddress | PortAddress


def _num(el: safe.Element, name: str, high: int, default: int = 0,
         value: str | None = None) -> int:
    value = el.get(name) if value is None else value
    if value is None:
        return default
    try:
        number = int(value, 0)
    except ValueError:
        number = -1
    if not 0 <= number <= high:
        raise XMLError(f"Cannot parse <address> '{name}' attribute '{value}'")
    return number


def parse(device: safe.Element) -> Address | None:
    """The ``<address>`` child of a device element, if it has one."""
    el = device.find("address")
    if el is None:
        return None
    kind = el.get("type")
    if kind == "pci":
        if _num(el, "domain", 0xFFFF) != 0:
            raise XMLError("Invalid PCI address domain, only domain 0 is supported")
        return PciAddress(bus=_num(el, "bus", 0xFF), slot=_num(el, "slot", PCI_SLOTS - 1),
                          function=_num(el, "function", PCI_FUNCTIONS - 1),
                          multifunction=el.get("multifunction") == "on")
    if kind == "drive":
        return DriveAddress(controller=_num(el, "controller", 0xFF), bus=_num(el, "bus", 0xFF),
                            target=_num(el, "target", 0xFF), unit=_num(el, "unit", 0x3FFF))
    if kind in ("usb", "virtio-serial"):
        port = el.get("port", "0").split(".")[0]  # a usb hub path '1.2' names its root port
        return PortAddress(kind, port=_num(el, "port", 0xFFFF, value=port),
                           bus=_num(el, "bus", 0xFF), controller=_num(el, "controller", 0xFF))
    raise XMLError(f"unknown address type '{kind}'")


def write(device: safe.Element, addr: Address) -> None:
    """Set ``device``'s ``<address>`` to ``addr`` (libvirt's attribute spelling)."""
    old = device.find("address")
    if old is not None:
        device.remove(old)
    attrs: dict[str, str]
    if isinstance(addr, PciAddress):
        attrs = {"type": "pci", "domain": "0x0000", "bus": f"0x{addr.bus:02x}",
                 "slot": f"0x{addr.slot:02x}", "function": f"0x{addr.function:x}"}
        if addr.multifunction:
            attrs["multifunction"] = "on"
    elif isinstance(addr, DriveAddress):
        attrs = {"type": "drive", "controller": str(addr.controller), "bus": str(addr.bus),
                 "target": str(addr.target), "unit": str(addr.unit)}
    elif addr.type == "usb":
        attrs = {"type": "usb", "bus": str(addr.bus), "port": str(addr.port)}
    else:
        attrs = {"type": addr.type, "controller": str(addr.controller), "bus": str(addr.bus),
                 "port": str(addr.port)}
    safe.sub(device, "address", attrs)
