"""The libvirt domain XML model.

`DomainDef.parse` reads the subset of libvirt's format qdriver interprets into
typed dataclasses, and keeps the whole element tree so that `DomainDef.to_xml`
writes back everything, including elements qdriver does not interpret.  What
qdriver cannot honour is listed in `DomainDef.unsupported`; starting such a
domain is an error that names it (see `qdriver.cmdline`).
"""
from __future__ import annotations

import ipaddress
import re
import uuid as uuidlib
from dataclasses import dataclass, field

from ..errors import ConfigUnsupportedError, XMLError
from . import address, safe
from .address import Address

UNITS: dict[str, int] = {
    "b": 1, "bytes": 1, "kb": 1000, "k": 1024, "kib": 1024, "mb": 1000**2, "m": 1024**2,
    "mib": 1024**2, "gb": 1000**3, "g": 1024**3, "gib": 1024**3, "tb": 1000**4,
    "t": 1024**4, "tib": 1024**4,
}
DISK_FORMATS = ("qcow2", "raw")
DISK_BUSES = ("virtio", "sata", "scsi", "ide")
DISK_IO_MODES = ("threads", "io_uring")
"""``<driver io=...>`` values qdriver honours (``native`` needs ``cache='none'``)."""
NAME_RE = re.compile(r"^[^/\x00-\x1f]+$")
TARGET_RE = re.compile(r"^[a-z]{2,4}[a-z]*$")
MAC_RE = re.compile(r"^[0-9a-fA-F]{2}(:[0-9a-fA-F]{2}){5}$")
NETWORK_NAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.+-]{0,63}$")
"""A qdriver network's name (`xml.network`), as an interface's source names it too."""
TOKEN_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
"""Machine types and CPU models: what QEMU names them with, nothing else."""

# Elements accepted and either interpreted or harmless to leave to QEMU's defaults.
TOP_LEVEL = {"name", "uuid", "genid", "title", "description", "metadata", "memory", "currentMemory",
             "memoryBacking",
             "vcpu", "os", "features", "cpu", "clock", "on_poweroff", "on_reboot",
             "on_crash", "devices", "pm", "resource", "seclabel"}
"""``<resource>`` (a cgroup partition) and ``<seclabel>`` are libvirt's host-side settings
in the XML it writes to save files and snapshots: they do not change the guest."""
FEATURES = {"acpi", "apic", "pae", "vmport"}
PM_STATES = {"suspend-to-mem": "s3", "suspend-to-disk": "s4"}
"""``<pm>`` children and the ACPI sleep state each turns on or off."""
DEVICES = {"emulator", "disk", "interface", "serial", "console", "channel", "graphics",
           "controller", "memballoon", "input", "video", "rng", "audio", "panic",
           "filesystem"}
CONTROLLER_MODELS: dict[str, tuple[str, ...]] = {
    "pci": ("pci-root", "pcie-root", "pcie-root-port", "pci-bridge", "pcie-to-pci-bridge",
            "pcie-switch-upstream-port", "pcie-switch-downstream-port"),
    "usb": ("piix3-uhci", "qemu-xhci", "none"),
    "scsi": ("lsilogic", "virtio-scsi"),
    "sata": ("",), "ide": ("",), "virtio-serial": ("",),
}
"""Controller types and models qdriver builds (the first is libvirt's default for a
controller the XML names without a model: ``auto`` for SCSI says the same)."""
PCI_MODEL_NAMES: dict[str, tuple[str, ...]] = {
    "pcie-root-port": ("pcie-root-port", "ioh3420"), "pci-bridge": ("pci-bridge",),
    "pcie-to-pci-bridge": ("pcie-pci-bridge",),
    "pcie-switch-upstream-port": ("x3130-upstream",),
    "pcie-switch-downstream-port": ("xio3130-downstream",),
}
"""``<controller type='pci'><model name=...>``: the QEMU device of each PCI controller
model (the first is the one libvirt writes when none is named)."""
PCIE_MODELS = ("pcie-root", "pcie-root-port", "pcie-to-pci-bridge", "pcie-switch-upstream-port",
               "pcie-switch-downstream-port")
"""PCI controllers of PCI Express: a q35 machine's only."""
VIDEO_MODELS = ("cirrus", "vga", "virtio", "qxl", "none")
"""The first is libvirt's default for x86."""
QXL_DEFAULTS = {"ram": 65536, "vram": 65536, "vgamem": 16384, "vram64": 0}
"""A qxl adapter's memory sizes (KiB) where the XML gives none: libvirt's."""
TIMERS: dict[str, dict[str, tuple[str | None, ...]]] = {
    "rtc": {"tickpolicy": (None, "catchup", "delay"), "track": (None, "guest", "wall",
                                                                  "realtime"),
            "present": (None, "yes")},
    "pit": {"tickpolicy": (None, "delay", "discard"), "present": (None, "yes")},
    "hpet": {"present": (None, "yes", "no")},
    "kvmclock": {"present": (None, "yes", "no")},
}
"""``<clock><timer>``: each timer qdriver passes to QEMU and the values of each of its
attributes it honours (None: the attribute left out).  QEMU's in-kernel PIT knows no
catch-up (libvirt 9.0 takes ``catchup`` and passes nothing)."""
CPU_FEATURE_POLICIES = {"force": True, "require": True, "optional": True,
                        "disable": False, "forbid": False}
"""``<cpu><feature policy=...>``: on or off in QEMU's ``-cpu model,feature=on|off``."""
CPU_CHECKS = ("none", "partial", "full")
NIC_MODELS = ("virtio", "e1000", "e1000e", "rtl8139")
"""``<interface><model type=...>`` values qdriver builds (`launch.cmdline` has their devices)."""
DEFAULT_NIC_MODEL = "rtl8139"
"""libvirt's model for an x86 ``<interface>`` without ``<model>``."""
INPUTS = {("mouse", "ps2"), ("keyboard", "ps2"), ("tablet", "usb"), ("mouse", "usb"),
          ("keyboard", "usb")}
PANIC_ACTIONS = {"destroy": "exit-failure", "preserve": "pause"}
"""What QEMU does when a guest with a ``<panic>`` device panics (``-action panic=``),
by ``<on_crash>``: exit (the domain stops, crashed), or stay paused, crashed."""
LIFECYCLE = {"on_poweroff": ("destroy", "preserve"), "on_reboot": ("restart", "destroy"),
             "on_crash": ("destroy", "preserve", "restart", "coredump-destroy",
                          "coredump-restart")}


@dataclass
class DiskDef:
    """One ``<disk>``: a disk or cdrom on an image file or a host block device."""

    target: str
    bus: str
    device: str = "disk"
    source: str | None = None
    """The image file, or with ``type='block'`` the block device (``<source dev=>``)."""
    type: str = "file"
    """``file`` or ``block`` (a host block device: a disk, or a host cdrom drive)."""
    format: str = "raw"
    readonly: bool = False
    snapshot: str | None = None
    """The domain-level default snapshot mode (``<disk snapshot=...>``)."""
    boot_order: int | None = None
    io: str | None = None
    """``<driver io=...>``: how QEMU does the image I/O (QEMU's default, threads, if unset).
    ``io_uring`` avoids a thread hand-off per request: it halves the time to load an
    internal snapshot's memory."""
    address: Address | None = None


@dataclass
class PortForward:
    """A host port forwarded to the guest over user-mode networking."""

    proto: str
    host_port: int
    guest_port: int
    address: str = "127.0.0.1"


SOCKET_INTERFACES = ("mcast", "udp", "server", "client")
"""Interface types QEMU's ``socket`` netdev carries: point to point between QEMUs."""


@dataclass(frozen=True)
class FilesystemDef:
    """``<filesystem type='mount'>``: a host directory the guest mounts by its tag."""

    driver: str
    """``virtiofs`` (a virtiofsd process, shared guest RAM) or ``path`` (9p in QEMU)."""
    source: str
    target: str
    """The mount tag the guest names."""
    accessmode: str = "passthrough"
    readonly: bool = False
    address: Address | None = None


@dataclass(frozen=True)
class LoaderDef:
    """``<loader type='pflash'>``: UEFI code on read-only flash (``path`` None until
    ``<os firmware='efi'>`` is resolved, at define); ``secure``: flash only SMM may
    write (secure boot)."""

    path: str | None = None
    secure: bool = False


FIRMWARE_FEATURES = ("secure-boot", "enrolled-keys")
"""``<os><firmware><feature name=...>`` that choose among the firmware descriptors."""


@dataclass(frozen=True)
class Endpoint:
    """An IPv4 address and a port (``<source address= port=>``, ``<local .../>``)."""

    address: str
    port: int

    def __str__(self) -> str:
        return f"{self.address}:{self.port}"


@dataclass
class InterfaceDef:
    """A network interface: user-mode (slirp), or a socket to another QEMU."""

    model: str = DEFAULT_NIC_MODEL
    mac: str | None = None
    forwards: list[PortForward] = field(default_factory=list)
    address: Address | None = None
    type: str = "user"
    source: Endpoint | None = None
    """Where a socket interface sends (mcast group, udp peer, server's listening
    address, the server a client connects to)."""
    local: Endpoint | None = None
    """A ``udp`` interface's own address (``<source><local .../></source>``)."""
    backend: str = "default"
    """A user interface's ``<backend type=...>``: QEMU's slirp, or ``passt``."""
    network: str | None = None
    """A ``network`` interface's qdriver network (``<source network=...>``)."""


@dataclass
class CharDef:
    """A serial port, console or channel."""

    kind: str
    type: str
    path: str | None = None
    mode: str = "bind"
    target_name: str | None = None
    address: Address | None = None
    append: bool = False
    """``<source append='on'>`` of a file: QEMU appends instead of truncating."""


@dataclass
class ControllerDef:
    """A ``<controller>``: a PCI bus (root, root port, bridge) or a disk/USB/serial bus."""

    type: str
    index: int
    model: str = ""
    address: Address | None = None
    chassis: int | None = None
    port: int | None = None
    ports: int | None = None
    """``<controller type='usb' model='qemu-xhci' ports=N>``: its USB 2 and 3 ports."""
    model_name: str | None = None
    """A PCI controller's ``<model name=...>``: its QEMU device (``ioh3420``...)."""
    hotplug: bool = True
    """``<target hotplug='off'>`` of a PCI Express port: no hotplug into it."""

    @property
    def bus_name(self) -> str:
        """The QEMU bus the controller provides (libvirt's ids: ``pci.N``, ``usb``...)."""
        if self.type == "pci":
            return {"pcie-root": "pcie.0", "pci-root": "pci.0"}.get(self.model,
                                                                   f"pci.{self.index}")
        return {"usb": "usb" if self.index == 0 else f"usb{self.index}",
                "virtio-serial": f"virtio-serial{self.index}"}.get(
                    self.type, f"{self.type}{self.index}")


@dataclass
class VideoDef:
    """A ``<video>`` adapter (sizes in KiB, as the XML gives them)."""

    model: str
    address: Address | None = None
    heads: int = 1
    sizes: dict[str, int] = field(default_factory=dict)
    """qxl's ``ram``, ``vram``, ``vram64`` and ``vgamem`` (`QXL_DEFAULTS` where absent)."""


@dataclass
class InputDef:
    """An ``<input>``: PS/2 ones are built into the machine, USB ones are devices."""

    type: str
    bus: str
    address: Address | None = None


@dataclass
class GraphicsDef:
    """A VNC display, listening on loopback only."""

    type: str
    listen: str = "127.0.0.1"
    port: int | None = None


@dataclass(frozen=True)
class MemoryBacking:
    """``<memoryBacking>``: where the guest's RAM comes from and how it is mapped."""

    source: str = "anonymous"
    """``<source type=...>``: ``anonymous``, ``file`` (a file of the domain's own,
    in its runtime directory) or ``memfd``."""
    shared: bool = False
    """``<access mode='shared'>``: a shared mapping (others may map the same RAM)."""
    merge: bool = True
    """False with ``<nosharepages/>``: the host must not merge its pages (KSM)."""
    locked: bool = False
    """``<locked/>``: the RAM stays resident (QEMU's ``mem-lock``)."""
    discard: bool = False
    """``<discard/>``: the file's contents are dropped when QEMU exits."""
    prealloc: bool = False
    """``<allocation mode='immediate'>``: every page is allocated at start."""
    prealloc_threads: int | None = None

    @property
    def needs_backend(self) -> bool:
        """Whether QEMU needs an explicit memory backend object (anything beyond
        private anonymous RAM, page merging and locking)."""
        return (self.source, self.shared, self.discard, self.prealloc) != \
            ("anonymous", False, False, False)


MEMORY_SOURCES = ("anonymous", "file", "memfd")


@dataclass
class DomainDef:
    """A parsed libvirt domain definition."""

    root: safe.Element
    type: str
    name: str
    uuid: str
    memory_kib: int
    genid: str | None = None
    """``<genid>``: the VM generation ID QEMU's ``vmgenid`` device shows the guest (a
    new one tells it that it runs from a copy of its past: a revert, a fork)."""
    memory_backing: MemoryBacking = MemoryBacking()
    vcpus: int = 1
    arch: str = "x86_64"
    machine: str = "pc"
    """libvirt's default for x86 when ``<type machine=>`` is absent: i440fx."""
    kernel: str | None = None
    initrd: str | None = None
    cmdline: str | None = None
    boot_devs: list[str] = field(default_factory=list)
    acpi: bool = False
    cpu_mode: str | None = None
    cpu_model: str | None = None
    cpu_features: list[tuple[str, bool]] = field(default_factory=list)
    """``<cpu><feature>``: each feature's name and whether the vCPU has it."""
    cpu_check: str = "none"
    """``<cpu check=...>``: ``partial`` and ``full`` make QEMU refuse to start a vCPU
    that lacks a feature asked for (``enforce``), instead of leaving it out."""
    timers: dict[str, dict[str, str]] = field(default_factory=dict)
    """``<clock><timer>``: by timer name, the attributes the XML gives it."""
    on_poweroff: str = "destroy"
    on_reboot: str = "restart"
    on_crash: str = "destroy"
    emulator: str | None = None
    disks: list[DiskDef] = field(default_factory=list)
    interfaces: list[InterfaceDef] = field(default_factory=list)
    serials: list[CharDef] = field(default_factory=list)
    channels: list[CharDef] = field(default_factory=list)
    graphics: list[GraphicsDef] = field(default_factory=list)
    balloon: bool = False
    balloon_address: Address | None = None
    rng: bool = False
    rng_address: Address | None = None
    panic: bool = False
    """``<panic model='isa'/>``: QEMU's pvpanic device, through which a guest tells
    QEMU it panicked (the crashed event; ``<on_crash>`` says what follows)."""
    controllers: list[ControllerDef] = field(default_factory=list)
    videos: list[VideoDef] = field(default_factory=list)
    inputs: list[InputDef] = field(default_factory=list)
    filesystems: list[FilesystemDef] = field(default_factory=list)
    firmware: str | None = None
    """``<os firmware='efi'|'bios'>``: let the firmware be chosen (`caps.firmware`)."""
    firmware_features: dict[str, bool] = field(default_factory=dict)
    loader: LoaderDef | None = None
    nvram: str | None = None
    """``<nvram>``: the domain's own UEFI variable store, made from ``nvram_template``."""
    nvram_template: str | None = None
    vmport: bool | None = None
    """``<features><vmport state=...>``: VMware's I/O port (None: QEMU's default)."""
    sleep_states: dict[str, bool] = field(default_factory=dict)
    """``<pm>``: ``{"s3": enabled, "s4": enabled}`` as the XML sets them."""
    audio_ids: list[int] = field(default_factory=list)
    """``<audio type='none'>`` backends (libvirt writes one into every new domain)."""
    unsupported: list[str] = field(default_factory=list)

    @classmethod
    def parse(cls, text: str | bytes) -> DomainDef:
        """Parse domain XML text; raise `XMLError` or `ConfigUnsupportedError`.

        The same text gives the same object (a process-wide cache by content: a
        job reads ``domain.xml`` afresh, and most jobs find it unchanged).  A
        definition is never changed in place: changes make copies."""
        return _parsed(text.encode() if isinstance(text, str) else bytes(text))

    @classmethod
    def from_element(cls, root: safe.Element) -> DomainDef:
        """Parse a ``<domain>`` element held elsewhere (a snapshot's saved definition)."""
        return _parse(safe.copy(root))

    def to_xml(self, domain_id: int | None = None) -> str:
        """The definition as libvirt would print it (live XML carries the id)."""
        root = safe.copy(self.root)
        if domain_id is not None:
            root.set("id", str(domain_id))
        return safe.tostring(root)

    @property
    def q35(self) -> bool:
        """Whether the machine is a q35 (PCI Express) one; else i440fx (``pc``)."""
        return self.machine == "q35" or self.machine.startswith("pc-q35")

    def controller(self, ctype: str, index: int = 0) -> ControllerDef | None:
        """The controller of that type and index, if any."""
        return next((c for c in self.controllers if (c.type, c.index) == (ctype, index)), None)

    def disk(self, target: str) -> DiskDef | None:
        """The disk with that target name, if any."""
        return next((d for d in self.disks if d.target == target), None)

    def with_seed_cdrom(self, seed: str) -> DomainDef:
        """A copy with a read-only cdrom of image ``seed`` (a cloud-init seed): the
        disk that already reads it, or a new one on the machine's cdrom bus (sata on
        q35, ide on pc) at the first free target."""
        if any(d.source == seed for d in self.disks):
            return self
        bus, prefix = ("sata", "sd") if self.q35 else ("ide", "hd")
        taken = {d.target for d in self.disks}
        target = next(f"{prefix}{chr(c)}" for c in range(ord("a"), ord("z") + 1)
                      if f"{prefix}{chr(c)}" not in taken)
        root = safe.copy(self.root)
        devices = root.find("devices")
        if devices is None:
            devices = safe.sub(root, "devices")
        disk = safe.sub(devices, "disk", {"type": "file", "device": "cdrom"})
        safe.sub(disk, "driver", {"name": "qemu", "type": "raw"})
        safe.sub(disk, "source", {"file": seed})
        safe.sub(disk, "target", {"dev": target, "bus": bus})
        safe.sub(disk, "readonly")
        return _parse(root)

    def with_disk_sources(self, sources: dict[str, tuple[str, str]]) -> DomainDef:
        """A copy whose disks ``{target: (file, format)}`` point at new images."""
        root = safe.copy(self.root)
        for el in root.findall("devices/disk"):
            target = el.find("target")
            dev = target.get("dev") if target is not None else None
            if dev is None or dev not in sources:
                continue
            path, fmt = sources[dev]
            source = el.find("source")
            if source is None:
                source = safe.sub(el, "source")
            safe.set_value(source, "file", path)
            driver = el.find("driver")
            if driver is None:
                driver = safe.new("driver", {"name": "qemu"})
                el.insert(0, driver)
            driver.set("type", fmt)
        return _parse(root)

    def with_machine(self, machine: str) -> DomainDef:
        """A copy on another machine type (an alias resolved to the versioned type)."""
        root = safe.copy(self.root)
        os_type = root.find("os/type")
        if os_type is None:
            os_el = root.find("os")
            os_type = safe.sub(os_el if os_el is not None else safe.sub(root, "os"), "type",
                               text="hvm")
        safe.set_value(os_type, "machine", machine)
        return _parse(root)

    def with_firmware(self, code: str, secure: bool, nvram: str,
                      template: str | None) -> DomainDef:
        """A copy whose ``<loader>`` and ``<nvram>`` name the chosen firmware and the
        domain's variable store (what libvirt stores once it chose)."""
        root = safe.copy(self.root)
        os_el = root.find("os")
        assert os_el is not None
        for old in (os_el.find("loader"), os_el.find("nvram")):
            if old is not None:
                os_el.remove(old)
        at = 1 if os_el.find("type") is not None else 0
        loader = safe.new("loader", {"readonly": "yes", "secure": "yes" if secure else "no",
                                         "type": "pflash"}, text=code)
        store = safe.new("nvram", {"template": template} if template else {}, text=nvram)
        os_el.insert(at, loader)
        os_el.insert(at + 1, store)
        return _parse(root)

    def renamed(self, name: str) -> DomainDef:
        """A copy under another name and without a ``<uuid>`` (defining it makes one):
        a second domain from the same XML."""
        root = safe.copy(self.root)
        for uuid in root.findall("uuid"):
            root.remove(uuid)
        el = root.find("name")
        if el is None:
            el = safe.sub(root, "name")
        el.text = name
        return _parse(root)

    def with_appending_file_consoles(self) -> DomainDef:
        """A copy whose file serial consoles are appended to (a QEMU that starts again
        keeps what the last one wrote)."""
        root = safe.copy(self.root)
        for el in [*root.findall("devices/serial"), *root.findall("devices/console")]:
            source = el.find("source")
            if el.get("type") == "file" and source is not None:
                safe.set_value(source, "append", "on")
        return _parse(root)

    def with_shared_file_ram(self) -> DomainDef:
        """A copy whose RAM is a shared file (what a template snapshot needs), for a
        definition that asks nothing of its RAM's backing."""
        root = safe.copy(self.root)
        for old in root.findall("memoryBacking"):
            root.remove(old)
        backing = safe.new("memoryBacking")
        safe.sub(backing, "source", {"type": "file"})
        safe.sub(backing, "access", {"mode": "shared"})
        memory = root.find("memory")
        root.insert(list(root).index(memory) + 1 if memory is not None else 0, backing)
        return _parse(root)

    def xml_but_genid(self) -> str:
        """The XML with the generation ID's value left out: two definitions equal in
        it start the same machine, but for the ID its guest sees."""
        root = safe.copy(self.root)
        el = root.find("genid")
        if el is not None:
            el.text = None
        return safe.tostring(root)

    def with_new_genid(self) -> DomainDef:
        """A copy with a new generation ID where it has one (itself otherwise)."""
        if self.genid is None:
            return self
        root = safe.copy(self.root)
        el = root.find("genid")
        assert el is not None
        el.text = str(uuidlib.uuid4())
        return _parse(root)

    def forked(self, name: str, sources: dict[str, tuple[str, str]],
               uuid: str | None = None) -> DomainDef:
        """A fork of this guest: another name, ``uuid`` (or none: defining it makes
        one), no MAC addresses (defining it makes new ones), a new generation ID,
        its disks on ``{target: (file, format)}``."""
        root = self.renamed(name).with_disk_sources(sources).with_new_genid().root_copy()
        name_el = root.find("name")
        if uuid is not None and name_el is not None:
            name_el.addnext(safe.new("uuid", text=str(uuidlib.UUID(uuid))))
        for iface in root.findall("devices/interface"):
            for mac in iface.findall("mac"):
                iface.remove(mac)
        return _parse(root)

    def save_cookie(self) -> str:
        """The ``<cookie>`` of a memory file: the guest CPU, as libvirt records it so
        that a restore gives the guest the CPU it ran on."""
        cookie = safe.new("cookie")
        cpu = self.root.find("cpu")
        if cpu is not None:
            copy = safe.copy(cpu)
            copy.set("check", "none")  # the model as defined; libvirt checks nothing more
            cookie.append(copy)
        return safe.tostring(cookie)

    def root_copy(self) -> safe.Element:
        """A detached copy of the whole ``<domain>`` element."""
        return safe.copy(self.root)


def disk_sources(root: safe.Element) -> dict[str, str]:
    """``{target: source file}`` of a stored ``<domain>``, read leniently: a snapshot's
    embedded domain (redefined, or from an older libvirt) need not be a startable one."""
    out: dict[str, str] = {}
    for disk in root.findall("devices/disk"):
        target, source = disk.find("target"), disk.find("source")
        dev = target.get("dev") if target is not None else None
        path = source.get("file") if source is not None else None
        if dev and path:
            out[dev] = path
    return out


def replace_disk_source(root: safe.Element, old: str, new: str, fmt: str) -> safe.Element:
    """A copy of a stored ``<domain>`` whose disks on ``old`` are on ``new`` (format
    ``fmt``); lenient like `disk_sources`."""
    copy = safe.copy(root)
    for disk in copy.findall("devices/disk"):
        source = disk.find("source")
        if source is not None and source.get("file") == old:
            safe.set_value(source, "file", new)
            driver = disk.find("driver")
            if driver is not None:
                driver.set("type", fmt)
    return copy


MAX_MEMORY_KIB = 1 << 44
"""16 PiB: far above what any QEMU can give a guest, far below an overflow."""


def parse_size(el: safe.Element | None, default_unit: str = "KiB") -> int | None:
    """A libvirt scaled integer (``<memory unit='MiB'>256</memory>``) in KiB."""
    if el is None:
        return None
    unit = (el.get("unit") or default_unit).lower()
    if unit not in UNITS:
        raise XMLError(f"unknown suffix '{el.get('unit')}'")
    try:
        value = int((el.text or "").strip())
    except ValueError as e:
        raise XMLError(f"invalid value '{el.text}' for <{el.tag}>") from e
    return value * UNITS[unit] // 1024


def _int(value: str | None, what: str, low: int = 0, high: int = 2**31) -> int:
    """An integer attribute or element text, or libvirt's "invalid value" error."""
    try:
        number = int((value or "").strip())
    except ValueError:
        number = low - 1
    if not low <= number <= high:
        raise XMLError(f"invalid value '{value}' for {what}")
    return number


def _token(value: str, what: str) -> str:
    if not TOKEN_RE.match(value):
        raise XMLError(f"invalid {what} '{value}'")
    return value


def _text(root: safe.Element, path: str) -> str | None:
    el = root.find(path)
    return el.text.strip() if el is not None and el.text else None


_PARSED: dict[bytes, DomainDef] = {}
PARSED_KEPT = 64


def _parsed(text: bytes) -> DomainDef:
    """Parse, or find the text parsed before.  Only a definition that names its
    uuid is kept: one without gets a new uuid at each parse, as libvirt gives it."""
    found = _PARSED.get(text)
    if found is not None:
        return found
    root = safe.parse(text, "domain XML")
    named = root.find("uuid") is not None
    definition = _parse(root)
    if named:
        if len(_PARSED) >= PARSED_KEPT:
            del _PARSED[next(iter(_PARSED))]  # the oldest
        _PARSED[text] = definition
    return definition


def _parse(root: safe.Element) -> DomainDef:
    if root.tag != "domain":
        raise XMLError(f"unexpected root element <{root.tag}>, expecting <domain>")
    dtype = root.get("type")
    if dtype not in ("kvm", "qemu"):
        raise ConfigUnsupportedError(f"domain type '{dtype}' is not supported: use 'kvm' or 'qemu'")
    name = _text(root, "name")
    if not name:
        raise XMLError("missing domain name information")
    problem = name_problem(name)
    if problem:
        raise XMLError(problem)
    memory = parse_size(root.find("memory"))
    if not memory:
        raise XMLError("missing or zero <memory> in domain XML")
    if not 0 < memory <= MAX_MEMORY_KIB:
        raise XMLError(f"invalid value '{(root.findtext('memory') or '').strip()}' for "
                       f"<memory>: the size must be above 0 and at most {MAX_MEMORY_KIB} KiB")
    d = DomainDef(root=root, type=dtype, name=name, uuid=_uuid(root), memory_kib=memory,
                  genid=_genid(root))
    d.vcpus = _int(_text(root, "vcpu") or "1", "<vcpu>", 1, 4096)
    vcpu = root.find("vcpu")
    if vcpu is not None and vcpu.get("current") not in (None, str(d.vcpus)):
        d.unsupported.append(f"<vcpu current='{vcpu.get('current')}'>")
    _parse_memory_backing(root.find("memoryBacking"), d)
    _parse_pm(root, d)
    _parse_os(root, d)
    _parse_features(root, d)
    _parse_cpu(root, d)
    for el_name, allowed in LIFECYCLE.items():
        value = _text(root, el_name) or getattr(d, el_name)
        if value not in allowed:
            d.unsupported.append(f"<{el_name}>{value}</{el_name}>")
        setattr(d, el_name, value)
    d.unsupported += [f"<{safe.written_name(c)}>" for c in safe.children(root)
                      if c.tag not in TOP_LEVEL]
    _parse_clock(root, d)
    _parse_devices(root, d)
    if d.panic and d.on_crash not in PANIC_ACTIONS:
        d.unsupported.append(f"<on_crash>{d.on_crash}</on_crash> with a <panic> device")
    return d


def name_problem(name: str) -> str | None:
    """Why ``name`` cannot name a domain (its directory's name), or None."""
    if not NAME_RE.match(name) or name.startswith("."):
        return f"name '{name}' cannot contain '/', control characters or start with '.'"
    return None


def _uuid(root: safe.Element) -> str:
    """The domain's uuid, generated (and added to the tree) when absent."""
    text = _text(root, "uuid")
    if text is None:
        value = str(uuidlib.uuid4())
        el = safe.new("uuid", text=value)
        name = root.find("name")
        assert name is not None  # checked by the caller
        name.addnext(el)
        return value
    try:
        return str(uuidlib.UUID(text))
    except ValueError as e:
        raise XMLError(f"malformed uuid element '{text}'") from e


def _genid(root: safe.Element) -> str | None:
    """``<genid>``: its value, or (``<genid/>``, libvirt's way to ask for one) a new
    one, written into the tree as libvirt does; None without the element."""
    el = root.find("genid")
    if el is None:
        return None
    text = (el.text or "").strip()
    if not text:
        el.text = str(uuidlib.uuid4())
        return el.text
    try:
        el.text = str(uuidlib.UUID(text))
    except ValueError as e:
        raise XMLError(f"malformed genid element '{text}'") from e
    return el.text


def _parse_memory_backing(el: safe.Element | None, d: DomainDef) -> None:
    """``<memoryBacking>``; huge pages are refused (no hugetlbfs is set up)."""
    if el is None:
        return
    source = el.find("source")
    kind = source.get("type", "anonymous") if source is not None else "anonymous"
    access = el.find("access")
    mode = access.get("mode", "private") if access is not None else "private"
    alloc = el.find("allocation")
    how = alloc.get("mode", "ondemand") if alloc is not None else "ondemand"
    threads = alloc.get("threads") if alloc is not None else None
    if kind not in MEMORY_SOURCES:
        d.unsupported.append(f"<memoryBacking><source type='{kind}'>")
    if mode not in ("private", "shared"):
        d.unsupported.append(f"<memoryBacking><access mode='{mode}'>")
    if how not in ("ondemand", "immediate"):
        d.unsupported.append(f"<memoryBacking><allocation mode='{how}'>")
    known = {"source", "access", "allocation", "nosharepages", "locked", "discard"}
    d.unsupported += [f"<memoryBacking><{safe.written_name(c)}>" for c in safe.children(el)
                      if c.tag not in known]
    d.memory_backing = MemoryBacking(
        source=kind, shared=mode == "shared", merge=el.find("nosharepages") is None,
        locked=el.find("locked") is not None, discard=el.find("discard") is not None,
        prealloc=how == "immediate",
        prealloc_threads=_int(threads, "<allocation threads>", 1, 1024) if threads else None)
    if d.memory_backing.discard and kind != "file":
        d.unsupported.append(f"<memoryBacking><discard/> with <source type='{kind}'>")


def _parse_os(root: safe.Element, d: DomainDef) -> None:
    os_el = root.find("os")
    if os_el is None:
        return
    t = os_el.find("type")
    if t is not None:
        if (t.text or "hvm").strip() != "hvm":
            d.unsupported.append(f"<os><type>{t.text}</type>")
        d.arch = _token(t.get("arch", d.arch), "architecture")
        d.machine = _token(t.get("machine", d.machine), "machine type")
    d.kernel = _text(os_el, "kernel")
    d.initrd = _text(os_el, "initrd")
    d.cmdline = _text(os_el, "cmdline")
    d.boot_devs = [b.get("dev", "hd") for b in os_el.findall("boot")]
    _parse_firmware(os_el, d)
    known = {"type", "kernel", "initrd", "cmdline", "boot", "loader", "nvram", "firmware"}
    d.unsupported += [f"<os><{safe.written_name(c)}>" for c in safe.children(os_el)
                      if c.tag not in known]


def _parse_firmware(os_el: safe.Element, d: DomainDef) -> None:
    """``<os firmware=>``, ``<firmware><feature>``, ``<loader>``, ``<nvram>``."""
    d.firmware = os_el.get("firmware")
    if d.firmware not in (None, "bios", "efi"):
        raise XMLError(f"invalid firmware '{d.firmware}' in <os firmware>")
    features = os_el.find("firmware")
    for f in safe.children(features) if features is not None else ():
        name = f.get("name", "")
        if f.tag != "feature" or name not in FIRMWARE_FEATURES:
            d.unsupported.append(f"<os><firmware><{f.tag} name='{name}'>")
        else:
            d.firmware_features[name] = _on_off(f.get("enabled", ""),
                                                f"<firmware><feature name='{name}' enabled>")
    loader, nvram = os_el.find("loader"), os_el.find("nvram")
    if loader is not None:
        if loader.get("type", "pflash") != "pflash" or loader.get("readonly", "yes") != "yes" \
                or loader.get("format", "raw") != "raw" or loader.get("stateless") == "yes":
            d.unsupported.append("<loader> other than read-only raw pflash")
        d.loader = LoaderDef((loader.text or "").strip() or None,
                             _on_off(loader.get("secure", "no"), "<loader secure>"))
    elif d.firmware == "efi":
        d.loader = LoaderDef()
    if nvram is not None:
        if nvram.get("format", "raw") != "raw" or nvram.get("type", "file") != "file":
            d.unsupported.append("<nvram> other than a raw file")
        d.nvram = (nvram.text or "").strip() or None
        d.nvram_template = nvram.get("template")


def _parse_features(root: safe.Element, d: DomainDef) -> None:
    feats = root.find("features")
    if feats is None:
        return
    for f in safe.children(feats):
        if f.tag not in FEATURES:
            d.unsupported.append(f"<features><{f.tag}>")
    d.acpi = feats.find("acpi") is not None
    vmport = feats.find("vmport")
    if vmport is not None:
        d.vmport = _on_off(vmport.get("state", "on"), "<vmport state>")


def _on_off(value: str, what: str) -> bool:
    if value not in ("on", "off", "yes", "no"):
        raise XMLError(f"invalid value '{value}' for {what}")
    return value in ("on", "yes")


def _parse_pm(root: safe.Element, d: DomainDef) -> None:
    pm = root.find("pm")
    for el in safe.children(pm) if pm is not None else ():
        if el.tag not in PM_STATES:
            d.unsupported.append(f"<pm><{el.tag}>")
        elif el.get("enabled") is not None:
            d.sleep_states[PM_STATES[el.tag]] = _on_off(el.get("enabled", ""),
                                                        f"<pm><{el.tag} enabled>")


def _parse_clock(root: safe.Element, d: DomainDef) -> None:
    """``<clock offset='utc'>`` and the ``<timer>``s of `TIMERS`, with their values."""
    clock = root.find("clock")
    if clock is None:
        return
    if clock.get("offset", "utc") != "utc":
        d.unsupported.append(f"<clock offset='{clock.get('offset')}'>")
    for timer in safe.children(clock):
        name = timer.get("name", "")
        honoured = TIMERS.get(name) if timer.tag == "timer" else None
        attrs = {str(k): str(v) for k, v in timer.attrib.items() if k != "name"}
        bad = [k for k, v in attrs.items() if honoured and v not in honoured.get(k, ())]
        if honoured is None or bad or len(timer):
            d.unsupported.append(f"<clock><{timer.tag} name='{name}'"
                                 + "".join(f" {k}='{attrs[k]}'" for k in bad) + ">")
        else:
            d.timers[name] = attrs


def _parse_cpu(root: safe.Element, d: DomainDef) -> None:
    cpu = root.find("cpu")
    if cpu is None:
        return
    d.cpu_mode = cpu.get("mode", "custom")
    if d.cpu_mode not in ("host-passthrough", "host-model", "maximum", "custom"):
        raise XMLError(f"Invalid CPU mode '{d.cpu_mode}'")
    model = _text(cpu, "model")
    if not model and d.cpu_mode == "custom" and cpu.find("model") is not None:
        raise XMLError("Missing CPU model name")
    d.cpu_model = _token(model, "CPU model") if model else None
    if d.cpu_mode in ("host-passthrough", "host-model") and d.type == "qemu":
        # TCG emulates a CPU model: there is no host CPU to pass through
        d.unsupported.append(f"<cpu mode='{d.cpu_mode}'> in a domain of type 'qemu'")
    d.cpu_check = cpu.get("check", "none")
    if d.cpu_check not in CPU_CHECKS:
        raise XMLError(f"Invalid CPU check '{d.cpu_check}'")
    if cpu.get("match", "exact") != "exact":
        d.unsupported.append(f"<cpu match='{cpu.get('match')}'>")
    model_el = cpu.find("model")
    if model_el is not None and model_el.get("fallback", "allow") not in ("allow", "forbid"):
        raise XMLError(f"Invalid CPU fallback '{model_el.get('fallback')}'")
    for c in safe.children(cpu):
        if c.tag == "feature" and d.cpu_mode == "custom" and d.cpu_model:
            policy = c.get("policy", "require")
            if policy not in CPU_FEATURE_POLICIES:
                raise XMLError(f"Invalid CPU feature policy '{policy}'")
            d.cpu_features.append((_token(c.get("name", ""), "CPU feature"),
                                   CPU_FEATURE_POLICIES[policy]))
        elif c.tag != "model" or c.get("vendor_id") is not None:
            d.unsupported.append(f"<cpu><{safe.written_name(c)}>" if c.tag != "model"
                                 else "<cpu><model vendor_id>")


def _parse_devices(root: safe.Element, d: DomainDef) -> None:
    devs = root.find("devices")
    if devs is None:
        return
    for el in safe.children(devs):
        handler = DEVICE_PARSERS.get(el.tag)
        if handler is None and el.tag not in DEVICES:
            d.unsupported.append(f"<devices><{safe.written_name(el)}>")
        elif handler is not None:
            handler(el, d)
    targets = [disk.target for disk in d.disks]
    dup = {t for t in targets if targets.count(t) > 1}
    if dup:
        raise XMLError(f"target '{sorted(dup)[0]}' duplicated for disk sources")


def _parse_emulator(el: safe.Element, d: DomainDef) -> None:
    d.emulator = (el.text or "").strip() or None


def _parse_disk(el: safe.Element, d: DomainDef) -> None:
    dtype, device = el.get("type", "file"), el.get("device", "disk")
    target = el.find("target")
    tdev = target.get("dev") if target is not None else None
    if target is None or not tdev:
        raise XMLError("missing target information for device")
    if not TARGET_RE.match(tdev):
        raise XMLError(f"Unknown disk name '{tdev}' and no address specified")
    if dtype not in ("file", "block") or device not in ("disk", "cdrom"):
        d.unsupported.append(f"<disk type='{dtype}' device='{device}'> ({tdev})")
        return
    driver = el.find("driver")
    fmt = driver.get("type", "raw") if driver is not None else "raw"
    if fmt not in DISK_FORMATS:
        raise ConfigUnsupportedError(f"unknown driver format value '{fmt}' for disk '{tdev}'")
    io = driver.get("io") if driver is not None else None
    if io is not None and io not in DISK_IO_MODES:
        d.unsupported.append(f"<driver io='{io}'> ({tdev})")
    bus = target.get("bus") or ("virtio" if tdev.startswith("vd") else "sata")
    if bus not in DISK_BUSES or (bus == "ide" and d.q35):
        d.unsupported.append(f"<target bus='{bus}'> ({tdev}) on machine '{d.machine}'")
    if device == "cdrom" and bus == "virtio":
        raise XMLError(f"disk '{tdev}': cdrom device cannot use the virtio bus")
    source = el.find("source")
    path = source.get("dev" if dtype == "block" else "file") if source is not None else None
    if device == "disk" and not path:
        raise XMLError(f"disk '{tdev}' has no source {'dev' if dtype == 'block' else 'file'}")
    boot = el.find("boot")
    order = _int(boot.get("order"), f"<boot order> of disk '{tdev}'", 1) \
        if boot is not None else 0
    d.disks.append(DiskDef(
        target=tdev, bus=bus, device=device, source=path, format=fmt, type=dtype,
        readonly=el.find("readonly") is not None or device == "cdrom",
        snapshot=el.get("snapshot"),
        boot_order=order or None, io=io if io in DISK_IO_MODES else None,
        address=address.parse(el)))


def _parse_interface(el: safe.Element, d: DomainDef) -> None:
    itype = el.get("type", "")
    if itype not in ("user", "network", *SOCKET_INTERFACES):
        d.unsupported.append(f"<interface type='{itype}'>")
        return
    model = el.find("model")
    mac = el.find("mac")
    mac_address = mac.get("address") if mac is not None else None
    if mac_address is not None and not MAC_RE.match(mac_address):
        raise XMLError(f"unable to parse mac address '{mac_address}'")
    iface = InterfaceDef(model=(model.get("type") if model is not None else None)
                         or DEFAULT_NIC_MODEL,
                         mac=mac_address, address=address.parse(el), type=itype)
    if iface.model not in NIC_MODELS:
        d.unsupported.append(f"<interface><model type='{iface.model}'>")
    backend = el.find("backend")
    iface.backend = backend.get("type", "default") if backend is not None else "default"
    if iface.backend not in (("default", "passt") if itype == "user" else ("default",)):
        d.unsupported.append(f"<interface type='{itype}'><backend type='{iface.backend}'>")
    if itype != "user":
        if el.find("portForward") is not None:  # only a user interface forwards ports
            d.unsupported.append(f"<interface type='{itype}'><portForward>")
        parse = _parse_network_interface if itype == "network" else _parse_socket_interface
        parse(el, iface)
        d.interfaces.append(iface)
        return
    for pf in el.findall("portForward"):
        proto, host = pf.get("proto", "tcp"), pf.get("address", "127.0.0.1")
        if proto not in ("tcp", "udp"):
            raise XMLError(f"invalid portForward proto '{proto}'")
        try:
            ipaddress.ip_address(host)
        except ValueError as e:
            raise XMLError(f"invalid portForward address '{host}'") from e
        for rng in pf.findall("range"):
            start = _int(rng.get("start"), "<portForward><range start>", 1, 65535)
            iface.forwards.append(PortForward(
                proto=proto, host_port=start, address=host,
                guest_port=_int(rng.get("to") or str(start), "<portForward><range to>",
                                1, 65535)))
    d.interfaces.append(iface)


def _parse_network_interface(el: safe.Element, iface: InterfaceDef) -> None:
    """``<source network=...>``: the qdriver network the interface joins."""
    source = el.find("source")
    iface.network = source.get("network") if source is not None else None
    if not iface.network:
        raise XMLError("<interface type='network'> needs <source network=...>")
    if not NETWORK_NAME_RE.match(iface.network):
        raise XMLError(f"network name '{iface.network}' is not a valid name")


def _parse_socket_interface(el: safe.Element, iface: InterfaceDef) -> None:
    """``<source address= port=>`` (and a udp one's ``<local>``) of a socket interface;
    a server without an address listens on loopback only."""
    source = el.find("source")
    if source is None:
        raise XMLError(f"<interface type='{iface.type}'> needs <source address= port=>")
    default = "127.0.0.1" if iface.type == "server" else None
    iface.source = _endpoint(source, f"<interface type='{iface.type}'><source>", default)
    if iface.type == "mcast" and not ipaddress.ip_address(iface.source.address).is_multicast:
        raise XMLError(f"<interface type='mcast'> address '{iface.source.address}' is not a "
                       "multicast address")
    local = source.find("local")
    if iface.type == "udp":
        if local is None:
            raise XMLError("<interface type='udp'> needs <source><local address= port=>")
        iface.local = _endpoint(local, "<interface type='udp'><source><local>", None)


def _endpoint(el: safe.Element, what: str, default: str | None) -> Endpoint:
    host = el.get("address", default)
    if host is None:
        raise XMLError(f"{what} needs an address")
    try:
        ip = ipaddress.ip_address(host)
    except ValueError as e:
        raise XMLError(f"invalid address '{host}' in {what}") from e
    if ip.version != 4:
        raise ConfigUnsupportedError(f"{what}: QEMU's socket network backend takes IPv4 "
                                     f"addresses only, not '{host}'")
    return Endpoint(str(ip), _int(el.get("port"), f"{what} port", 1, 65535))


def _parse_chardev(el: safe.Element, d: DomainDef) -> None:
    ctype = el.get("type", "pty")
    source = el.find("source")
    if ctype not in ("pty", "file", "unix"):
        d.unsupported.append(f"<{el.tag} type='{ctype}'>")
        return
    path = source.get("path") if source is not None else None
    mode = source.get("mode", "bind") if source is not None else "bind"
    if ctype == "file" and not path:
        raise XMLError(f"<{el.tag} type='file'> needs <source path=...>")
    append = _on_off(source.get("append", "off"), f"<{el.tag}><source append>") \
        if source is not None else False
    if el.tag == "channel":
        target = el.find("target")
        name = target.get("name") if target is not None else None
        if target is None or target.get("type") != "virtio" or ctype != "unix":
            d.unsupported.append("<channel> other than a virtio unix channel")
            return
        d.channels.append(CharDef("channel", ctype, path, mode, name, address.parse(el)))
        return
    target = el.find("target")
    kind = target.get("type") if target is not None else None
    model = target.find("model") if target is not None else None
    wanted = ("serial", None) if el.tag == "console" else ("isa-serial", None)
    if kind not in wanted or (model is not None and model.get("name") != "isa-serial"):
        d.unsupported.append(f"<{el.tag}><target type='{kind}'>")
    elif el.tag == "console" and d.serials:
        return  # libvirt's <console> aliases the first <serial>
    else:
        d.serials.append(CharDef(el.tag, ctype, path, mode, append=append and ctype == "file"))


def _parse_graphics(el: safe.Element, d: DomainDef) -> None:
    gtype = el.get("type")
    if gtype == "none":
        return
    if gtype != "vnc":
        d.unsupported.append(f"<graphics type='{gtype}'>")
        return
    listen = el.get("listen") or "127.0.0.1"
    lel = el.find("listen")
    if lel is not None:
        listen = lel.get("address") or listen
    if listen not in ("127.0.0.1", "localhost", "::1"):
        raise ConfigUnsupportedError(f"VNC may only listen on loopback, not '{listen}'")
    port = el.get("port") or "-1"
    autoport = el.get("autoport", "yes" if port == "-1" else "no") == "yes"
    d.graphics.append(GraphicsDef("vnc", listen, None if autoport else
                                  _int(port, "<graphics port>", 5900, 65535)))


def _parse_memballoon(el: safe.Element, d: DomainDef) -> None:
    model = el.get("model", "virtio")
    if model not in ("virtio", "none"):
        d.unsupported.append(f"<memballoon model='{model}'>")
    d.balloon = model == "virtio"
    d.balloon_address = address.parse(el)


def _parse_rng(el: safe.Element, d: DomainDef) -> None:
    backend = el.find("backend")
    source = (backend.text or "").strip() if backend is not None else "/dev/urandom"
    if el.get("model", "virtio") != "virtio" or source not in ("/dev/urandom", "/dev/random") \
            or (backend is not None and backend.get("model", "random") != "random"):
        d.unsupported.append("<rng> other than virtio from /dev/urandom")
        return
    d.rng = True
    d.rng_address = address.parse(el)


def _parse_filesystem(el: safe.Element, d: DomainDef) -> None:
    driver = el.find("driver")
    kind = driver.get("type", "path") if driver is not None else "path"
    source, target = el.find("source"), el.find("target")
    mode = el.get("accessmode", "passthrough")
    if el.get("type", "mount") != "mount" or kind not in ("virtiofs", "path") or \
            (kind == "virtiofs" and mode != "passthrough") or \
            mode not in ("passthrough", "mapped", "squash") or el.find("binary") is not None:
        d.unsupported.append(f"<filesystem type='{el.get('type', 'mount')}' accessmode="
                             f"'{mode}'> with <driver type='{kind}'> or a <binary>")
        return
    if kind == "virtiofs" and el.find("readonly") is not None:
        d.unsupported.append("<filesystem><readonly/> with <driver type='virtiofs'>")
        return
    if source is None or not source.get("dir") or target is None or not target.get("dir"):
        raise XMLError("a <filesystem> needs <source dir=...> and <target dir=...>")
    if kind == "virtiofs" and "," in str(source.get("dir")):  # virtiofsd splits -o on commas
        d.unsupported.append(f"<filesystem><source dir='{source.get('dir')}'> with a comma "
                             "for virtiofs")
        return
    d.filesystems.append(FilesystemDef(
        kind, str(source.get("dir")), _token(str(target.get("dir")), "filesystem target"),
        mode, el.find("readonly") is not None, address.parse(el)))


def _parse_panic(el: safe.Element, d: DomainDef) -> None:
    iobase = el.find("address")
    if el.get("model", "isa") != "isa" or (iobase is not None and (
            iobase.get("type") != "isa" or iobase.get("iobase", "0x505").lower() != "0x505")):
        d.unsupported.append("<panic> other than model 'isa' at iobase 0x505")
        return
    d.panic = True


def _parse_controller(el: safe.Element, d: DomainDef) -> None:
    ctype = el.get("type", "")
    models = CONTROLLER_MODELS.get(ctype)
    model = el.get("model") or (models[0] if models else "")
    if ctype == "scsi" and model == "auto":
        model = models[0] if models else model
    if models is None or model not in models:
        d.unsupported.append(f"<controller type='{ctype}' model='{model}'>")
        return
    name_el = el.find("model")
    model_name = name_el.get("name") if name_el is not None else None
    if model_name is not None and model_name not in PCI_MODEL_NAMES.get(model, ()):
        d.unsupported.append(f"<controller type='{ctype}' model='{model}'><model "
                             f"name='{model_name}'>")
        return
    root = "pcie-root" if d.q35 else "pci-root"
    if ctype == "pci" and (el.get("index") or "0") == "0" and model != root:
        raise XMLError(f"The PCI controller with index='0' must be model='{root}' for this "
                       f"machine type, but model='{model}' was found instead")
    if model in PCIE_MODELS and not d.q35:
        d.unsupported.append(f"<controller type='{ctype}' model='{model}'> on machine "
                             f"'{d.machine}'")
        return
    index = _int(el.get("index") or "0", f"<controller type='{ctype}'> index", 0, 255)
    if d.controller(ctype, index) is not None:
        raise XMLError(f"Multiple '{ctype}' controllers with index '{index}'")
    target = el.find("target")
    chassis = target.get("chassisNr" if model == "pci-bridge" else "chassis") \
        if target is not None else None
    port = target.get("port") if target is not None else None
    hotplug = _on_off(target.get("hotplug", "on"), "<controller><target hotplug>") \
        if target is not None else True
    ports = el.get("ports")
    if ports is not None and model != "qemu-xhci":
        d.unsupported.append(f"<controller type='{ctype}' model='{model}' ports=...>")
        return
    d.controllers.append(ControllerDef(
        ctype, index, model, address.parse(el),
        chassis=_int(chassis, "<controller><target chassis>", 0, 255) if chassis else None,
        port=_int(str(int(port, 0)) if re.fullmatch(r"0x[0-9a-fA-F]+|[0-9]+", port) else port,
                  "<controller><target port>", 0, 255) if port else None,
        ports=_int(ports, "<controller ports>", 1, 15) if ports else None,
        model_name=model_name, hotplug=hotplug))


def _parse_video(el: safe.Element, d: DomainDef) -> None:
    model = el.find("model")
    mtype = (model.get("type") if model is not None else None) or VIDEO_MODELS[0]
    if mtype not in VIDEO_MODELS:
        d.unsupported.append(f"<video><model type='{mtype}'>")
        return
    if d.videos:
        d.unsupported.append("a second <video>")
        return
    assert model is not None or mtype == VIDEO_MODELS[0]
    sizes = {k: _int(model.get(k) if model is not None else None, f"<video><model {k}>",
                     0, 1 << 24) if model is not None and model.get(k) else v
             for k, v in QXL_DEFAULTS.items()} if mtype == "qxl" else {}
    heads = model.get("heads") if model is not None else None
    d.videos.append(VideoDef(mtype, address.parse(el),
                             _int(heads, "<video><model heads>", 1, 16) if heads else 1, sizes))


def _parse_input(el: safe.Element, d: DomainDef) -> None:
    kind = (el.get("type", ""), el.get("bus") or ("usb" if el.get("type") == "tablet"
                                                   else "ps2"))
    if kind not in INPUTS:
        d.unsupported.append(f"<input type='{kind[0]}' bus='{kind[1]}'>")
        return
    d.inputs.append(InputDef(kind[0], kind[1], address.parse(el)))


def _parse_audio(el: safe.Element, d: DomainDef) -> None:
    if el.get("type") != "none":
        d.unsupported.append(f"<audio type='{el.get('type')}'>")
        return
    d.audio_ids.append(_int(el.get("id") or "1", "<audio id>", 1, 1 << 16))


DEVICE_PARSERS = {
    "emulator": _parse_emulator, "disk": _parse_disk, "interface": _parse_interface,
    "serial": _parse_chardev, "console": _parse_chardev, "channel": _parse_chardev,
    "graphics": _parse_graphics, "memballoon": _parse_memballoon, "rng": _parse_rng,
    "audio": _parse_audio, "controller": _parse_controller, "video": _parse_video,
    "input": _parse_input, "panic": _parse_panic, "filesystem": _parse_filesystem,
}
