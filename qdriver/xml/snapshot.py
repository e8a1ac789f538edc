"""The libvirt ``<domainsnapshot>`` model: parse, validate, align, format.

Three parse modes, as in libvirt:

* create input: name, description, memory and disks are read; output-only
  fields (state, creationTime, parent, domain) are ignored;
* REDEFINE: everything is read; name, state and creationTime are required;
* metadata (``internal``): REDEFINE plus ``<active>``, the current marker, and
  ``<stale>``, why its images no longer hold its disk state.

`SnapshotDef.format` writes libvirt's element order and indentation, so
``snapshot-dumpxml`` looks like ``virsh snapshot-dumpxml``.
"""
from __future__ import annotations

import functools
import re
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

from ..errors import ConfigUnsupportedError, InvalidArgError, XMLDetailError, XMLError
from . import safe
from .domain import DomainDef

MODES = ("no", "internal", "external", "manual")
STATES = ("nostate", "running", "blocked", "paused", "shutdown", "shutoff", "crashed",
          "pmsuspended", "disk-snapshot")
DISK_TYPES = ("file", "block", "network")
DRIVERS = ("qcow2", "qed", "raw")
SCHEMA = Path(__file__).with_name("domainsnapshot.rng")
CONTROL = re.compile(r"[\x00-\x1f\x7f]")


@dataclass
class SnapshotDisk:
    """One ``<disk>`` of a snapshot: how one domain disk is captured."""

    name: str
    snapshot: str | None = None
    type: str | None = None
    source: str | None = None
    driver: str | None = None
    delete_in_progress: bool = False


@dataclass
class SnapshotDef:
    """A parsed ``<domainsnapshot>``."""

    name: str | None = None
    description: str | None = None
    state: str | None = None
    creation_time: int | None = None
    parent: str | None = None
    memory: str | None = None
    memory_file: str | None = None
    template_ram: str | None = None
    """A template snapshot's RAM file (its memory file then holds only the devices'
    state): qdriver's own ``<memory><template ram=.../></memory>``."""
    disks: list[SnapshotDisk] = field(default_factory=list)
    revert_disks: list[SnapshotDisk] | None = None
    domain: safe.Element | None = None
    inactive_domain: safe.Element | None = None
    cookie: safe.Element | None = None
    active: bool = False
    stale: str | None = None
    """Why the images this snapshot's disk state lies in no longer hold it (a forced
    revert rewrote an image below them); kept in the metadata file (``<stale>``)."""

    @classmethod
    def parse(cls, text: str | bytes, redefine: bool = False,
              internal: bool = False) -> SnapshotDef:
        """Parse snapshot XML; `XMLError` (or a libvirt-worded error) if invalid.

        The same text gives the same object (a process-wide cache by content, as
        `DomainDef.parse`): a snapshot is never changed in place."""
        raw = text.encode() if isinstance(text, str) else bytes(text)
        return _parsed(raw, redefine or internal, internal)

    def format(self, internal: bool = False) -> str:
        """libvirt's output; ``internal`` adds ``<active>`` (the metadata file form)."""
        return safe.tostring(_format(self, internal))

    @property
    def domain_uuid(self) -> str | None:
        """The uuid recorded in the embedded ``<domain>``."""
        if self.domain is None:
            return None
        el = self.domain.find("uuid")
        return el.text.strip() if el is not None and el.text else None

    @property
    def is_external(self) -> bool:
        """libvirt's EXTERNAL filter: memory or any disk external."""
        return self.memory == "external" or any(d.snapshot == "external" for d in self.disks)


def validate_name(name: str) -> None:
    """Snapshot names become file names: refuse what could escape or confuse."""
    if "/" in name:
        raise XMLDetailError(f"invalid snapshot name '{name}': name can't contain '/'")
    if name.startswith("."):
        raise XMLDetailError(f"invalid snapshot name '{name}': name can't start with '.'")
    if not name or CONTROL.search(name) or len(name.encode()) > 200:
        raise XMLDetailError(f"invalid snapshot name {name!r}: name must be 1 to 200 bytes "
                             "without control characters")


def _text(root: safe.Element, tag: str) -> str | None:
    el = root.find(tag)
    return el.text if el is not None and el.text is not None else None


@functools.lru_cache(maxsize=256)
def _parsed(text: bytes, redefine: bool, internal: bool) -> SnapshotDef:
    return _parse(safe.parse(text, "snapshot XML"), redefine, internal)


def _parse(root: safe.Element, redefine: bool, internal: bool) -> SnapshotDef:
    if root.tag != "domainsnapshot":
        raise XMLError(f"unexpected root element <{root.tag}>, expecting <domainsnapshot>")
    s = SnapshotDef(name=_text(root, "name"), description=_text(root, "description"))
    if s.name is not None:
        s.name = s.name.strip()
        validate_name(s.name)
    if redefine:
        _parse_redefine(root, s)
    _parse_memory(root, s)
    disks = root.find("disks")
    if disks is not None:
        s.disks = [_parse_disk(d) for d in safe.children(disks) if d.tag == "disk"]
    if internal:
        s.active = (_text(root, "active") or "0").strip() == "1"
        s.stale = _text(root, "stale")
    return s


def _parse_redefine(root: safe.Element, s: SnapshotDef) -> None:
    if not s.name:
        raise XMLError("a redefined snapshot must have a name")
    state = _text(root, "state")
    if state is None:
        raise XMLError("missing state from existing snapshot")
    if state.strip() not in STATES:
        raise XMLError(f"Invalid state '{state}' in domain snapshot XML")
    s.state = state.strip()
    created = _text(root, "creationTime")
    if created is None:
        raise XMLError("missing creationTime from existing snapshot")
    try:
        s.creation_time = int(created.strip())
    except ValueError as e:
        raise XMLError(f"invalid creationTime '{created}'") from e
    parent = root.find("parent")
    if parent is not None:
        s.parent = (_text(parent, "name") or "").strip() or None
    for tag in ("domain", "inactiveDomain", "cookie"):
        el = root.find(tag)
        if el is not None:
            setattr(s, {"domain": "domain", "inactiveDomain": "inactive_domain",
                        "cookie": "cookie"}[tag], safe.copy(el))
    revert = root.find("revertDisks")
    if revert is not None:
        s.revert_disks = [_parse_disk(d) for d in safe.children(revert) if d.tag == "disk"]


def _parse_memory(root: safe.Element, s: SnapshotDef) -> None:
    mem = root.find("memory")
    if mem is None:
        return
    mode, path = mem.get("snapshot"), mem.get("file")
    if mode is not None and mode not in MODES:
        raise XMLError(f"unknown memory snapshot setting '{mode}'")
    if mode == "manual":
        raise ConfigUnsupportedError("'manual' memory snapshot mode not supported")
    if path is not None:
        if mode not in (None, "external"):
            raise XMLError(f"memory filename '{path}' requires external snapshot")
        if not path.startswith("/"):
            raise XMLError(f"memory snapshot file path ({path}) must be absolute")
        mode = "external"
    if mode == "external" and not path:
        raise XMLError("external memory snapshots require a filename")
    s.memory, s.memory_file = mode, path
    template = mem.find("template")
    if template is not None:
        ram = template.get("ram") or ""
        if mode != "external" or not ram.startswith("/"):
            raise XMLError("a template snapshot needs an external memory file and an "
                           f"absolute RAM file path, not '{ram}'")
        s.template_ram = ram


def _parse_disk(el: safe.Element) -> SnapshotDisk:
    name = el.get("name")
    if not name:
        raise XMLError("missing name from disk snapshot element")
    mode = el.get("snapshot")
    if mode is not None and mode not in MODES:
        raise XMLError(f"unknown disk snapshot setting '{mode}'")
    dtype = el.get("type")
    if dtype is not None and dtype not in DISK_TYPES:
        raise XMLError(f"unsupported disk snapshot type '{dtype}'")
    source_el = el.find("source")
    source = None
    if source_el is not None:
        source = source_el.get("file") or source_el.get("dev") or source_el.get("name")
        if source and (dtype or "file") != "network" and not source.startswith("/"):
            raise XMLError(f"disk snapshot image path '{source}' must be absolute")
    driver_el = el.find("driver")
    driver = driver_el.get("type") if driver_el is not None else None
    if driver is not None and driver not in DRIVERS:
        raise XMLError(f"unknown disk snapshot driver '{driver}'")
    if (source or driver) and mode is None:
        mode = "external"
    if source and mode != "external":
        raise XMLError(f"file '{source}' for disk '{name}' requires use of external "
                       "snapshot mode")
    return SnapshotDisk(name, mode, dtype, source, driver,
                        el.find("snapshotDeleteInProgress") is not None)


def _format(s: SnapshotDef, internal: bool) -> safe.Element:
    root = safe.new("domainsnapshot")
    safe.sub(root, "name", text=s.name)
    if s.description is not None:
        safe.sub(root, "description", text=s.description)
    if s.state:
        safe.sub(root, "state", text=s.state)
    if s.parent:
        safe.sub(safe.sub(root, "parent"), "name", text=s.parent)
    if s.creation_time is not None:
        safe.sub(root, "creationTime", text=str(s.creation_time))
    if s.memory:
        mem = safe.sub(root, "memory", {"snapshot": s.memory})
        if s.memory_file:
            safe.set_value(mem, "file", s.memory_file)
        if s.template_ram:
            safe.sub(mem, "template", {"ram": s.template_ram})
    if s.disks:
        _format_disks(safe.sub(root, "disks"), s.disks)
    if s.revert_disks:
        _format_disks(safe.sub(root, "revertDisks"), s.revert_disks)
    for el in (s.domain, s.inactive_domain, s.cookie):
        if el is not None:
            root.append(safe.copy(el))
    if internal:
        safe.sub(root, "active", text="1" if s.active else "0")
        if s.stale:
            safe.sub(root, "stale", text=s.stale)
    return root


def _format_disks(parent: safe.Element, disks: list[SnapshotDisk]) -> None:
    for d in disks:
        el = safe.sub(parent, "disk", {"name": d.name})
        if d.snapshot:
            safe.set_value(el, "snapshot", d.snapshot)
        if d.type and (d.source or d.driver):
            safe.set_value(el, "type", d.type)
        if d.delete_in_progress:
            safe.sub(el, "snapshotDeleteInProgress")
        if d.driver:
            safe.sub(el, "driver", {"type": d.driver})
        if d.source:
            attr = {"block": "dev", "network": "name"}.get(d.type or "file", "file")
            safe.sub(el, "source", {attr: d.source})


# -- alignment against the domain ---------------------------------------------

def align_disks(s: SnapshotDef, dom: DomainDef, default: str) -> list[SnapshotDisk]:
    """Every domain disk, in domain order, with its mode and external file.

    Names may be targets or source paths; unnamed disks take the domain
    disk's ``snapshot`` attribute, else ``no`` for empty or read-only
    drives, else ``default``.  External disks without a file get libvirt's
    default name (source without its last suffix, a dot, the snapshot name).
    """
    if len(s.disks) > len(dom.disks):
        raise ConfigUnsupportedError("too many disk snapshot requests for domain")
    given: dict[str, SnapshotDisk] = {}
    for disk in s.disks:
        target = _resolve(disk.name, dom)
        if target in given:
            raise ConfigUnsupportedError(f"disk '{disk.name}' specified twice")
        given[target] = replace(disk, name=target)
    out = []
    for ddisk in dom.disks:
        disk = given.get(ddisk.target) or SnapshotDisk(ddisk.target)
        if disk.snapshot is None:
            empty = ddisk.source is None or ddisk.readonly
            disk.snapshot = ddisk.snapshot or ("no" if empty else default)
        out.append(disk)
    _default_files(out, dom, s.name or "")
    return out


def _resolve(name: str, dom: DomainDef) -> str:
    if dom.disk(name) is not None:
        return name
    matches = [d.target for d in dom.disks if d.source and d.source == name]
    if len(matches) != 1:
        raise ConfigUnsupportedError(f"no disk named '{name}'")
    return matches[0]


def _default_files(disks: list[SnapshotDisk], dom: DomainDef, snap_name: str) -> None:
    for disk in disks:
        if disk.snapshot != "external" or disk.source:
            continue
        ddisk = dom.disk(disk.name)
        assert ddisk is not None
        if ddisk.device != "disk":
            raise ConfigUnsupportedError(f"cannot generate external snapshot name for disk "
                                         f"'{disk.name}' on a '{ddisk.device}' device")
        if not ddisk.source:
            raise ConfigUnsupportedError("cannot generate external snapshot name for disk "
                                         f"'{disk.name}' without source")
        base = ddisk.source
        dot = base.rfind(".")
        if dot > base.rfind("/"):
            base = base[:dot]
        disk.source, disk.type = f"{base}.{snap_name}", "file"
    seen: dict[str, str] = {}
    for disk in disks:
        if disk.snapshot == "external" and disk.source:
            if disk.source in seen:
                raise ConfigUnsupportedError(
                    f"cannot generate external snapshot name for disk '{disk.name}': "
                    f"collision with disk '{seen[disk.source]}'")
            seen[disk.source] = disk.name


def default_name(now: float | None = None) -> str:
    """libvirt's default snapshot name: the creation time in epoch seconds."""
    return str(int(time.time() if now is None else now))


def validate_schema(text: str | bytes) -> None:
    """Check snapshot XML against qdriver's RelaxNG schema (the VALIDATE flag)."""
    from lxml import etree
    schema = etree.RelaxNG(safe.parse(SCHEMA.read_bytes(), "schema"))
    root = safe.parse(text, "snapshot XML")
    if not schema.validate(root):
        raise XMLError(f"snapshot XML does not match the schema: {schema.error_log.last_error}")


def check_redefine_uuid(s: SnapshotDef, uuid: str) -> None:
    """A redefined snapshot must belong to this domain."""
    if s.domain_uuid is not None and s.domain_uuid.lower() != uuid.lower():
        raise InvalidArgError(f"definition for snapshot {s.name} must use uuid {uuid}")
