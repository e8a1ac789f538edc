"""UEFI firmware chosen as libvirt chooses it: from QEMU's firmware descriptors.

``<os firmware='efi'>`` names no file: the firmware packages (Debian's ``ovmf``)
describe theirs in JSON files under `DESCRIPTOR_DIRS`.  The descriptors are
taken in file-name order (a name in an earlier directory hides the same name
in a later one), and the first that is UEFI on flash for this architecture and
machine type, with the features ``<firmware><feature>`` asks for (and none it
refuses), is the domain's: its code image and its variable-store template.
"""
from __future__ import annotations

import fnmatch
import json
from dataclasses import dataclass
from pathlib import Path

from ..errors import ConfigUnsupportedError, OperationFailedError

DESCRIPTOR_DIRS = (Path("/etc/qemu/firmware"), Path("/usr/share/qemu/firmware"))
"""Where QEMU's firmware descriptors are looked for, first directory first (libvirt's
order for a system driver)."""


@dataclass(frozen=True)
class Firmware:
    """What one descriptor offers."""

    descriptor: str
    executable: str
    nvram_template: str | None
    features: frozenset[str]

    @property
    def secure(self) -> bool:
        """Secure boot, which needs SMM to protect its flash (``smm=on``, secure pflash)."""
        return "requires-smm" in self.features


def descriptors(dirs: tuple[Path, ...] = DESCRIPTOR_DIRS) -> list[Path]:
    """The descriptor files, in the order they are tried."""
    found: dict[str, Path] = {}
    for directory in dirs:
        for path in sorted(directory.glob("*.json")) if directory.is_dir() else ():
            found.setdefault(path.name, path)
    return [found[name] for name in sorted(found)]


def _read(path: Path) -> tuple[dict[str, object], Firmware] | None:
    """A descriptor of UEFI on flash with raw images, or None for another kind."""
    try:
        raw = json.loads(path.read_text())
        mapping = raw["mapping"]
        if "uefi" not in raw["interface-types"] or mapping.get("device") != "flash" \
                or mapping["executable"].get("format", "raw") != "raw":
            return None
        template = mapping.get("nvram-template")
        if template is not None and template.get("format", "raw") != "raw":
            return None
        return raw, Firmware(path.name, str(mapping["executable"]["filename"]),
                             str(template["filename"]) if template else None,
                             frozenset(str(f) for f in raw.get("features", ())))
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None  # a damaged descriptor is passed over, as libvirt does


def _targets(raw: dict[str, object], arch: str, machine: str) -> bool:
    targets = raw.get("targets")
    return isinstance(targets, list) and any(
        isinstance(t, dict) and t.get("architecture") == arch
        and any(fnmatch.fnmatchcase(machine, str(m)) for m in t.get("machines", ()))
        for t in targets)


def select(arch: str, machine: str, wanted: dict[str, bool],
           dirs: tuple[Path, ...] = DESCRIPTOR_DIRS) -> Firmware:
    """The firmware for ``<os firmware='efi'>`` on ``machine`` (a versioned type):
    ``wanted`` maps a feature (``secure-boot``, ``enrolled-keys``) to whether it must be
    there (True) or must not (False).

    :raise OperationFailedError: no descriptor fits (libvirt's words).
    """
    for path in descriptors(dirs):
        read = _read(path)
        if read is None or not _targets(read[0], arch, machine):
            continue
        firmware = read[1]
        if all((name in firmware.features) == want for name, want in wanted.items()):
            return firmware
    raise OperationFailedError("Unable to find any firmware to satisfy 'efi'")


def template_for(code: str, dirs: tuple[Path, ...] = DESCRIPTOR_DIRS) -> str | None:
    """The variable-store template a descriptor gives with the code image ``code``."""
    for path in descriptors(dirs):
        read = _read(path)
        if read is not None and read[1].executable == code:
            return read[1].nvram_template
    return None


def check_machine(machine: str, acpi: bool) -> None:
    """:raise ConfigUnsupportedError: UEFI on a machine it cannot run on."""
    if not acpi:
        raise ConfigUnsupportedError("UEFI requires ACPI on this architecture")
    if not machine.startswith(("pc-q35", "q35", "pc-i440fx", "pc")):
        raise ConfigUnsupportedError(f"UEFI is not offered for machine type '{machine}'")


__all__ = ["DESCRIPTOR_DIRS", "Firmware", "descriptors", "select", "check_machine",
           "template_for"]
