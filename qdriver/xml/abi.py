"""Whether two definitions describe the same guest hardware.

A memory file or an internal snapshot only loads into a QEMU built with the
devices it was saved from.  ``virsh restore --xml`` (and ``save-image-define``)
may still change what the host side gives the guest (the images behind its
disks, where its serial port goes, port forwards, lifecycle actions), as
libvirt's ABI stability check allows.  `differences` lists, in libvirt's words,
what else differs.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Sequence

from .domain import CharDef, DiskDef, DomainDef, GraphicsDef, InterfaceDef

HOST_SIDE: dict[type, frozenset[str]] = {
    DomainDef: frozenset({"root", "kernel", "initrd", "cmdline", "boot_devs", "on_poweroff",
                          "on_reboot", "on_crash", "emulator", "unsupported", "disks",
                          "interfaces", "serials", "channels", "graphics", "firmware",
                          "firmware_features", "nvram", "nvram_template", "audio_ids",
                          "cpu_check"}),
    DiskDef: frozenset({"source", "type", "format", "snapshot", "boot_order", "io"}),
    InterfaceDef: frozenset({"forwards", "type", "source", "local", "backend"}),
    CharDef: frozenset({"type", "path", "mode"}),
    GraphicsDef: frozenset({"listen", "port"}),
}
"""Fields that do not reach the guest's hardware, per model class.  The device
lists of `DomainDef` are compared item by item (`DEVICE_LISTS`); the emulator is
the caller's own check (a file must not choose what runs)."""

DEVICE_LISTS: tuple[tuple[str, str], ...] = (
    ("disks", "disk"), ("interfaces", "net card"), ("serials", "serial"),
    ("channels", "channel"), ("graphics", "graphics"),
)
"""`DomainDef` device lists: (field, the device's name in libvirt's messages)."""


LABELS = {"type": "virt type", "uuid": "uuid", "memory_kib": "max memory (KiB)",
          "vcpus": "vCPUs", "cpu_mode": "CPU mode", "cpu_model": "CPU model",
          "acpi": "ACPI", "rng": "RNG", "vmport": "vmport"}


def _label(name: str) -> str:
    return LABELS.get(name, name.replace("_", " "))


def _fields(obj: Any) -> list[tuple[str, Any]]:
    skip = HOST_SIDE.get(type(obj), frozenset())
    return [(f.name, getattr(obj, f.name)) for f in dataclasses.fields(obj)
            if f.name not in skip]


def _compare(what: str, src: Any, dst: Any) -> list[str]:
    out = []
    for (name, old), (_, new) in zip(_fields(src), _fields(dst)):
        if old != new:
            out.append(f"Target {what} {_label(name)} {new!r} does not match source {old!r}")
    return out


def _compare_lists(what: str, src: Sequence[Any], dst: Sequence[Any]) -> list[str]:
    if len(src) != len(dst):
        return [f"Target domain {what} count {len(dst)} does not match source {len(src)}"]
    return [p for old, new in zip(src, dst) for p in _compare(what, old, new)]


def differences(src: DomainDef, dst: DomainDef) -> list[str]:
    """What in ``dst`` would give the guest saved from ``src`` other hardware, each in
    libvirt's wording (``Target ... does not match source ...``); empty if nothing."""
    out = _compare("domain", src, dst)
    for name, what in DEVICE_LISTS:
        out += _compare_lists(what, getattr(src, name), getattr(dst, name))
    return out
