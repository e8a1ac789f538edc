"""Build the QEMU command line for a domain definition.

Pure: a `DomainDef`, the domain's paths and the accelerator go in, an argument
list comes out.  Disks are attached with ``-blockdev`` under stable node names
(`format_node`, `file_node`) so that later QMP ``transaction``,
``blockdev-snapshot`` and ``snapshot-save`` commands can address them.
QEMU always starts with ``-S``; the caller decides whether to ``cont``.
"""
from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

from ..errors import ConfigUnsupportedError
from ..paths import DomainPaths
from ..qemuimg.chain import Layer
from ..xml import layout
from ..xml.address import Address, DriveAddress, PciAddress, PortAddress
from ..xml.domain import (
    PANIC_ACTIONS,
    CharDef,
    ControllerDef,
    DiskDef,
    DomainDef,
    FilesystemDef,
    InterfaceDef,
)

NIC_MODELS = {"virtio": "virtio-net-pci", "e1000": "e1000", "e1000e": "e1000e",
              "rtl8139": "rtl8139"}
CONTROLLER_DEVICES = {
    ("pci", "pcie-root-port"): "pcie-root-port", ("pci", "pci-bridge"): "pci-bridge",
    ("pci", "pcie-to-pci-bridge"): "pcie-pci-bridge", ("usb", "qemu-xhci"): "qemu-xhci",
    ("usb", "piix3-uhci"): "piix3-usb-uhci", ("scsi", "virtio-scsi"): "virtio-scsi-pci",
    ("scsi", "lsilogic"): "lsi", ("sata", ""): "ahci", ("virtio-serial", ""): "virtio-serial-pci",
    ("pci", "pcie-switch-upstream-port"): "x3130-upstream",
    ("pci", "pcie-switch-downstream-port"): "xio3130-downstream",
}
"""The QEMU device of each controller; the others are built into the machine."""
VIDEO_DEVICES = {"cirrus": "cirrus-vga", "vga": "VGA", "virtio": "virtio-vga", "qxl": "qxl-vga"}
RTC_TRACK = {"guest": "vm", "wall": "host", "realtime": "rt"}
"""``<timer name='rtc' track=...>``: the clock QEMU's RTC follows (``-rtc clock=``)."""
PIT_POLICY = {"delay": "delay", "discard": "discard"}
"""``<timer name='pit' tickpolicy=...>``: the in-kernel PIT's lost tick policy, as
libvirt passes it (QEMU's own PIT, under TCG, has no such setting)."""
USB_INPUTS = {"tablet": "usb-tablet", "mouse": "usb-mouse", "keyboard": "usb-kbd"}
SANDBOX = "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny"
CONSOLE_LOG_FD = 3
"""Where QEMU started as its user finds the console log, which its supervisor opened
(the domain's directory is private to qdriver's user)."""
CONSOLE_LOG_FDSET = 1


def opt(value: object) -> str:
    """A value for a QEMU ``key=value,...`` option string: commas doubled.

    QEMU's option parser reads ``,,`` as a literal comma and nothing else as
    special inside a value, so this is the whole escaping.  Every value from
    the XML or the filesystem goes through here (or into JSON).
    """
    return str(value).replace(",", ",,")


def format_node(target: str) -> str:
    """The node name of a disk's format (top) layer."""
    return f"fmt-{target}"


def file_node(target: str) -> str:
    """The node name of a disk's protocol (file) layer."""
    return f"file-{target}"


def layer_nodes(target: str, path: str) -> tuple[str, str]:
    """Stable (format, file) node names for an image below a disk's top, or an
    overlay a snapshot adds: the same file always gets the same names."""
    tag = hashlib.sha256(path.encode()).hexdigest()[:8]
    return f"ov-{target}-{tag}", f"ovf-{target}-{tag}"


def aio_option(io: str | None) -> dict[str, str]:
    """The ``file`` node's ``aio`` option for a disk's ``<driver io=...>`` (none: QEMU's)."""
    return {"aio": io} if io else {}


def emulator_for(d: DomainDef) -> str:
    """The QEMU binary: ``<emulator>`` or ``qemu-system-ARCH`` from PATH."""
    if d.emulator:
        return d.emulator
    found = shutil.which(f"qemu-system-{d.arch}")
    if not found:
        raise ConfigUnsupportedError(f"no emulator for arch '{d.arch}': qemu-system-{d.arch} "
                                     "is not installed")
    return found


@dataclass
class _Builder:
    d: DomainDef
    paths: DomainPaths
    argv: list[str] = field(default_factory=list)
    chains: Mapping[str, tuple[Layer, ...]] = field(default_factory=dict)
    """Each disk's images below its top, as qdriver read them (`qemuimg.chain`)."""
    log_fd: bool = False
    ram_template: str | None = None
    read_only_ram: bool = False
    helper_sockets: Mapping[int, Path] = field(default_factory=dict)
    fs_sockets: Mapping[int, Path] = field(default_factory=dict)
    """By filesystem index, the socket of each virtiofs folder's virtiofsd."""

    @property
    def console_log(self) -> str:
        return f"/dev/fdset/{CONSOLE_LOG_FDSET}" if self.log_fd else str(self.paths.console_log)

    def add(self, *args: str) -> None:
        self.argv.extend(args)

    def place(self, addr: Address | None) -> str:
        """The ``bus=...,addr=...`` options that put a PCI device at ``addr``."""
        if not isinstance(addr, PciAddress):
            return ""
        bus = self.d.controller("pci", addr.bus)
        if bus is None:
            raise ConfigUnsupportedError(f"a device is on PCI bus {addr.bus}, and the domain "
                                         f"has no PCI controller with index {addr.bus}")
        multi = ",multifunction=on" if addr.multifunction else ""
        return f",bus={bus.bus_name},addr={addr.qemu_addr}{multi}"


def build(d: DomainDef, paths: DomainPaths, accel: str, incoming: bool = False,
          log_fd: bool = False, chains: Mapping[str, tuple[Layer, ...]] | None = None,
          emulator: str | None = None, ram_template: str | None = None,
          read_only_ram: bool = False, helper_sockets: Mapping[int, Path] | None = None,
          fs_sockets: Mapping[int, Path] | None = None) -> list[str]:
    """The full argument list that starts ``d`` paused (``-S``); with ``incoming``
    QEMU waits for ``migrate-incoming`` (a memory file to load) instead.  With
    ``log_fd`` QEMU writes the console log to the descriptor `CONSOLE_LOG_FD` it
    inherits (it starts as a user that cannot open the file).  ``emulator``: the
    checked program (default: `emulator_for`).  ``ram_template``: the guest's RAM is
    a private, copy-on-write mapping of this template file (a clone's start), opened
    read-only with ``read_only_ram`` (``rom=off``: QEMU 8.2+).  ``helper_sockets``:
    by interface index, the socket of each passt interface's helper
    (`launch.helpers`) and the switch of each network interface's network.
    ``chains``: each disk's backing images (by target), every one its own node; a
    qcow2 disk not in it gets no backing at all (QEMU never follows a header)."""
    if d.unsupported:
        raise ConfigUnsupportedError(
            f"qdriver cannot honour {d.unsupported[0]} in domain '{d.name}'")
    d = layout.assign(d)  # a definition stored before addresses were assigned at define
    b = _Builder(d, paths, chains=chains or {}, log_fd=log_fd, ram_template=ram_template,
                 read_only_ram=read_only_ram, helper_sockets=helper_sockets or {},
                 fs_sockets=fs_sockets or {})
    b.add(emulator or emulator_for(d), "-name", f"guest={opt(d.name)},debug-threads=on", "-S",
          "-uuid", d.uuid, "-no-user-config", "-nodefaults", "-display", "none",
          "-msg", "timestamp=on", "-sandbox", SANDBOX, "-pidfile", str(paths.pidfile))
    if log_fd:
        # opaque: the file's name, so the command line still says which domain this is
        b.add("-add-fd", f"fd={CONSOLE_LOG_FD},set={CONSOLE_LOG_FDSET},"
                         f"opaque={opt(paths.console_log)}")
    _firmware(b)
    _machine(b, accel)
    _memory(b)
    b.add("-smp", str(d.vcpus))
    _boot(b)
    _monitors(b)
    for controller in _parents_first(d.controllers):
        _controller(b, controller)
    if d.machine == "microvm" and d.channels:  # no PCI: the MMIO flavour, no layout pass
        b.add("-device", "virtio-serial-device,id=virtio-serial0")
    for disk in d.disks:
        _disk(b, disk)
    for i, iface in enumerate(d.interfaces):
        _interface(b, i, iface)
    for i, serial in enumerate(d.serials):
        _serial(b, i, serial)
    for i, chan in enumerate(d.channels):
        _channel(b, i, chan)
    sound = f",audiodev=audio{d.audio_ids[0]}" if d.audio_ids else ""  # libvirt's link
    for g in d.graphics:
        b.add("-vnc", (f"{opt(g.listen)}:{g.port - 5900}" if g.port else
                       f"{opt(g.listen)}:0,to=99") + sound)
    for video in (v for v in d.videos if v.model != "none"):  # one: a second is refused
        sizes = "".join(f",{k}={v}" for k, v in _qxl_sizes(video.sizes, video.heads).items())
        b.add("-device", f"{VIDEO_DEVICES[video.model]},id=video0{sizes}"
                         f"{b.place(video.address)}")
    for i, inp in enumerate(i for i in d.inputs if i.bus == "usb"):
        port = f",port={inp.address.port}" if isinstance(inp.address, PortAddress) else ""
        b.add("-device", f"{USB_INPUTS[inp.type]},id=input{i},bus=usb.0{port}")
    for i, fs in enumerate(d.filesystems):
        _filesystem(b, i, fs)
    if d.balloon:
        b.add("-device", f"virtio-balloon-pci,id=balloon0{b.place(d.balloon_address)}")
    if d.rng:
        b.add("-object", "rng-random,id=objrng0,filename=/dev/urandom",
              "-device", f"virtio-rng-pci,rng=objrng0,id=rng0{b.place(d.rng_address)}")
    if d.panic:
        b.add("-device", "pvpanic,ioport=1285", "-action", f"panic={PANIC_ACTIONS[d.on_crash]}")
    if d.genid is not None:  # a parsed UUID: nothing to escape
        b.add("-device", f"vmgenid,guid={d.genid},id=vmgenid0")
    for audio in d.audio_ids:  # as libvirt: a silent backend, no sound device
        b.add("-audiodev", json.dumps({"id": f"audio{audio}", "driver": "none"}))
    if incoming:
        b.add("-incoming", "defer")
    return b.argv


RAM_ID = "pc.ram"
"""The guest RAM's memory backend object, where ``<memoryBacking>`` needs one."""

BACKENDS = {"anonymous": "memory-backend-ram", "file": "memory-backend-file",
            "memfd": "memory-backend-memfd"}


def _memory(b: _Builder) -> None:
    """``-m``, and the RAM's backend object where ``<memoryBacking>`` asks for more
    than private anonymous memory."""
    d, m = b.d, b.d.memory_backing
    b.add("-m", f"size={d.memory_kib}k")
    if m.locked:
        b.add("-overcommit", "mem-lock=on")
    if not m.needs_backend and b.ram_template is None:
        return
    props: dict[str, object] = {"qom-type": BACKENDS[m.source], "id": RAM_ID,
                                "size": d.memory_kib * 1024, "share": m.shared}
    if b.ram_template is not None:  # the template file is never written
        props.update({"qom-type": BACKENDS["file"], "mem-path": b.ram_template,
                      "share": False})
        if b.read_only_ram:  # opened read-only, mapped writable and private
            props.update({"readonly": True, "rom": "off"})
    elif m.source == "file":
        props.update({"mem-path": str(b.paths.ram_file)}, **({"discard-data": True}
                                                           if m.discard else {}))
    if not m.merge:
        props["merge"] = False
    if m.prealloc:
        props["prealloc"] = True
        if m.prealloc_threads:
            props["prealloc-threads"] = m.prealloc_threads
    b.add("-object", json.dumps(props))


def _firmware(b: _Builder) -> None:
    """UEFI on two flash devices, as libvirt gives it: the code read-only, the
    domain's variable store writable (`DomainDef.loader`, `DomainDef.nvram`)."""
    d = b.d
    if d.loader is None:
        return
    if d.loader.path is None or d.nvram is None:
        raise ConfigUnsupportedError(f"the UEFI firmware of domain '{d.name}' is not chosen "
                                     "yet: define the domain first")
    for unit, path, ro in ((0, d.loader.path, True), (1, d.nvram, False)):
        b.add("-blockdev", json.dumps({
            "driver": "file", "filename": path, "node-name": f"file-pflash{unit}",
            "auto-read-only": True, "discard": "unmap"}))
        b.add("-blockdev", json.dumps({
            "node-name": f"fmt-pflash{unit}", "read-only": ro, "driver": "raw",
            "file": f"file-pflash{unit}"}))


def _filesystem(b: _Builder, i: int, fs: FilesystemDef) -> None:
    """A host folder: 9p inside QEMU, or virtiofs through its virtiofsd's socket."""
    if fs.driver == "path":
        b.add("-fsdev", f"local,security_model={fs.accessmode},id=fsdev-fs{i},"
              f"path={opt(fs.source)}" + (",readonly=on" if fs.readonly else ""),
              "-device", f"virtio-9p-pci,id=fs{i},fsdev=fsdev-fs{i},mount_tag={opt(fs.target)}"
              f"{b.place(fs.address)}")
        return
    sock = b.fs_sockets.get(i, b.paths.sockets / f"fs{i}.sock")
    b.add("-chardev", f"socket,id=chr-vu-fs{i},path={opt(sock)}",
          "-device", f"vhost-user-fs-pci,id=fs{i},chardev=chr-vu-fs{i},"
          f"tag={opt(fs.target)}{b.place(fs.address)}")


def _machine(b: _Builder, accel: str) -> None:
    d = b.d
    opts = [opt(d.machine), f"accel={accel}"]
    if d.loader is not None and d.loader.secure:
        opts.append("smm=on")  # secure boot: only SMM code writes the variable store
    if not d.acpi:
        opts.append("acpi=off")
    if d.vmport is not None:
        opts.append(f"vmport={'on' if d.vmport else 'off'}")
    if d.timers.get("hpet", {}).get("present") == "no":
        opts.append("hpet=off")  # libvirt's -no-hpet, which QEMU 9 dropped
    if d.memory_backing.needs_backend or b.ram_template is not None:
        opts.append(f"memory-backend={RAM_ID}")
    elif not d.memory_backing.merge:
        opts.append("mem-merge=off")
    if d.loader is not None:
        opts += ["pflash0=fmt-pflash0", "pflash1=fmt-pflash1"]
    b.add("-machine", ",".join(opts))
    if d.loader is not None and d.loader.secure:
        b.add("-global", "driver=cfi.pflash01,property=secure,value=on")
    power = "ICH9-LPC" if d.q35 else "PIIX4_PM"  # as libvirt: the chipset's power device
    for state, enabled in sorted(d.sleep_states.items()):
        b.add("-global", f"{power}.disable_{state}={0 if enabled else 1}")
    _cpu(b, accel)
    _clock(b)
    if d.on_poweroff == "preserve":
        b.add("-no-shutdown")
    if d.on_reboot == "destroy":
        b.add("-no-reboot")


def _cpu(b: _Builder, accel: str) -> None:
    """``-cpu``: the model (or ``host``, ``max``), its ``<feature>``s on or off, kvmclock
    as ``<timer name='kvmclock'>`` says, and ``enforce`` for ``check='partial|full'``."""
    d = b.d
    if d.cpu_mode in ("host-passthrough", "host-model"):
        if accel != "kvm":
            raise ConfigUnsupportedError(f"CPU mode '{d.cpu_mode}' needs KVM "
                                         "(domain type='kvm'), not TCG")
        model = "host"
    else:
        model = "max" if d.cpu_mode == "maximum" else opt(d.cpu_model or "")
    flags = [f"{opt(name)}={'on' if on else 'off'}" for name, on in d.cpu_features]
    kvmclock = d.timers.get("kvmclock", {}).get("present")
    if kvmclock:
        flags.append(f"kvmclock={'on' if kvmclock == 'yes' else 'off'}")
    if d.cpu_check != "none" and d.cpu_features:
        flags.append("enforce")  # QEMU refuses a feature it cannot give, not drops it
    if model:
        b.add("-cpu", ",".join([model, *flags]))
    elif flags:
        raise ConfigUnsupportedError("<timer name='kvmclock'> needs a <cpu> model")


def _clock(b: _Builder) -> None:
    """``-rtc`` (UTC; the clock it tracks, catch-up of lost ticks) and the PIT's lost
    tick policy, as libvirt passes them."""
    rtc, pit = b.d.timers.get("rtc", {}), b.d.timers.get("pit", {})
    value = "base=utc"
    if rtc.get("track"):
        value += f",clock={RTC_TRACK[rtc['track']]}"
    if rtc.get("tickpolicy") == "catchup":
        value += ",driftfix=slew"
    b.add("-rtc", value)
    if pit.get("tickpolicy"):
        b.add("-global", f"kvm-pit.lost_tick_policy={PIT_POLICY[pit['tickpolicy']]}")


def _boot(b: _Builder) -> None:
    d = b.d
    if d.kernel:
        b.add("-kernel", d.kernel)
        if d.initrd:
            b.add("-initrd", d.initrd)
        if d.cmdline:
            b.add("-append", d.cmdline)
    elif d.boot_devs:
        letters = {"hd": "c", "cdrom": "d", "network": "n", "fd": "a"}
        b.add("-boot", "order=" + "".join(letters.get(x, "c") for x in d.boot_devs))


def _monitors(b: _Builder) -> None:
    for cid, path in (("qmp", b.paths.qmp), ("qmpquery", b.paths.qmp_query),
                      ("qmpkeep", b.paths.qmp_keep), ("qmpevents", b.paths.events)):
        b.add("-chardev", f"socket,id={cid},path={opt(path)},server=on,wait=off",
              "-mon", f"chardev={cid},mode=control")


def _backing(fmt: str, target: str, layers: tuple[Layer, ...], below: int
             ) -> dict[str, object]:
    """A qcow2 node's ``backing``: the node of layer ``below``, or explicitly none."""
    if fmt != "qcow2":
        return {}
    if below >= len(layers):
        return {"backing": None}
    return {"backing": layer_nodes(target, layers[below].path)[0]}


def _protocol(disk: DiskDef) -> str:
    """The QEMU driver that opens a disk's source: a file, a host block device or a
    host cdrom drive."""
    if disk.type != "block":
        return "file"
    return "host_cdrom" if disk.device == "cdrom" else "host_device"


def _disk(b: _Builder, disk: DiskDef) -> None:
    ro = disk.readonly
    drive = ""
    if disk.source:
        layers = b.chains.get(disk.target, ())
        for i, layer in reversed(list(enumerate(layers))):  # a node exists before its user
            fmt_node, file = layer_nodes(disk.target, layer.path)
            b.add("-blockdev", json.dumps({
                "driver": layer.format, "node-name": fmt_node, "read-only": True,
                "file": {"driver": "file", "filename": layer.path, "node-name": file,
                         "auto-read-only": True, "discard": "unmap", **aio_option(disk.io)},
                **_backing(layer.format, disk.target, layers, i + 1)}))
        b.add("-blockdev", json.dumps({
            "driver": _protocol(disk), "filename": disk.source,
            "node-name": file_node(disk.target), "read-only": ro, "discard": "unmap",
            **aio_option(disk.io)}))
        b.add("-blockdev", json.dumps({
            "driver": disk.format, "file": file_node(disk.target),
            "node-name": format_node(disk.target), "read-only": ro, "discard": "unmap",
            **_backing(disk.format, disk.target, layers, 0)}))
        drive = f",drive={opt(format_node(disk.target))}"
    boot = f",bootindex={disk.boot_order}" if disk.boot_order else ""
    kind = "cd" if disk.device == "cdrom" else "hd"
    if disk.bus == "virtio":
        dev = "virtio-blk-device" if b.d.machine == "microvm" else "virtio-blk-pci"
        b.add("-device", f"{dev}{b.place(disk.address)}{drive},id={opt(disk.target)}{boot}")
        return
    addr = disk.address if isinstance(disk.address, DriveAddress) else DriveAddress()
    ctrl = b.d.controller(disk.bus, addr.controller)
    if ctrl is None:
        raise ConfigUnsupportedError(f"disk '{disk.target}' is on {disk.bus} controller "
                                     f"{addr.controller}, which the domain does not have")
    if disk.bus == "scsi" and ctrl.model == "lsilogic":  # no LUNs: the unit is the target
        bus = f"bus={ctrl.bus_name}.0,scsi-id={addr.unit}"
    elif disk.bus == "scsi":
        bus = f"bus={ctrl.bus_name}.0,channel={addr.bus},scsi-id={addr.target},lun={addr.unit}"
    elif disk.bus == "ide":
        bus = f"bus=ide.{addr.bus},unit={addr.unit}"
    else:  # q35's own SATA controller is QEMU's bus "ide"
        bus = f"bus={'ide' if b.d.q35 and addr.controller == 0 else ctrl.bus_name}.{addr.unit}"
    device = f"scsi-{kind}" if disk.bus == "scsi" else f"ide-{kind}"
    b.add("-device", f"{device},{bus}{drive},id={opt(disk.target)}{boot}")


def _qxl_sizes(sizes: Mapping[str, int], heads: int) -> dict[str, int]:
    """A qxl adapter's QEMU properties from the XML's sizes in KiB (libvirt's mapping)."""
    if not sizes:
        return {}
    return {"max_outputs": heads, "ram_size": sizes["ram"] * 1024,
            "vram_size": sizes["vram"] * 1024, "vram64_size_mb": sizes["vram64"] // 1024,
            "vgamem_mb": sizes["vgamem"] // 1024}


def _parents_first(controllers: list[ControllerDef]) -> list[ControllerDef]:
    """PCI controllers by index, each after the bus it sits on (QEMU adds a device
    only to a bus that exists), then the other controllers."""
    pending = sorted((c for c in controllers if c.type == "pci"), key=lambda c: c.index)
    made = {0}
    out: list[ControllerDef] = []
    while pending:
        ready = next((c for c in pending if c.index == 0 or not isinstance(c.address, PciAddress)
                      or c.address.bus in made), pending[0])  # a loop is QEMU's to report
        pending.remove(ready)
        made.add(ready.index)
        out.append(ready)
    return out + sorted((c for c in controllers if c.type != "pci"), key=lambda c: c.index)


def _controller(b: _Builder, c: ControllerDef) -> None:
    device = CONTROLLER_DEVICES.get((c.type, c.model))
    if device is None or (c.type == "sata" and b.d.q35 and c.index == 0):
        return  # the PCI root, q35's SATA, PIIX's IDE, USB none: part of the machine
    extra = ""
    if c.model in ("pcie-root-port", "pcie-switch-downstream-port"):
        device = c.model_name or device
        extra = f",port={c.port if c.port is not None else 0:#x},chassis={c.chassis or c.index}"
        extra += "" if c.hotplug else ",hotplug=off"
    elif c.model == "pci-bridge":
        extra = f",chassis_nr={c.chassis or c.index}"
    elif c.model == "qemu-xhci" and c.ports is not None:  # as libvirt: USB 2 and 3 alike
        extra = f",p2={c.ports},p3={c.ports}"
    b.add("-device", f"{device}{extra},id={c.bus_name}{b.place(c.address)}")


SOCKET_NETDEV = {"mcast": "mcast", "udp": "udp", "server": "listen", "client": "connect"}
"""Each socket interface type's ``-netdev socket`` option, as libvirt writes it."""


def _netdev(b: _Builder, i: int, iface: InterfaceDef) -> str:
    """The ``-netdev`` of an interface (addresses and ports are parsed values)."""
    if iface.type == "user" and iface.backend == "passt":  # passt's socket (`helpers`)
        sock = _helper_socket(b, i, "passt's socket")
        return f"stream,id=hostnet{i},server=off,addr.type=unix,addr.path={opt(sock)}"
    if iface.type == "network":  # the qdriver network's switch (`launch.netprocs`)
        return f"vde,id=hostnet{i},sock={opt(_helper_socket(b, i, 'its network switch'))}"
    if iface.type == "user":
        netdev = f"user,id=hostnet{i}"
        for pf in iface.forwards:
            netdev += (f",hostfwd={opt(pf.proto)}:{opt(pf.address)}:{pf.host_port}"
                       f"-:{pf.guest_port}")
        return netdev
    netdev = f"socket,id=hostnet{i},{SOCKET_NETDEV[iface.type]}={iface.source}"
    return netdev + (f",localaddr={iface.local}" if iface.local is not None else "")


def _helper_socket(b: _Builder, i: int, what: str) -> Path:
    """The socket interface ``i`` connects to (the caller's ``helper_sockets``)."""
    sock = b.helper_sockets.get(i)
    if sock is None:
        raise ConfigUnsupportedError(f"interface {i} needs {what}")
    return sock


def _interface(b: _Builder, i: int, iface: InterfaceDef) -> None:
    if iface.model not in NIC_MODELS:
        raise ConfigUnsupportedError(f"interface model '{iface.model}' is not supported")
    mac = iface.mac
    if mac is None:  # microvm: no layout pass wrote it into the definition
        mac = layout.default_mac(b.d.uuid, i)
    dev = "virtio-net-device" if b.d.machine == "microvm" and iface.model == "virtio" \
        else NIC_MODELS[iface.model]
    b.add("-netdev", _netdev(b, i, iface),
          "-device", f"{dev},netdev=hostnet{i},id=net{i},mac={opt(mac)}{b.place(iface.address)}")


def _serial(b: _Builder, i: int, c: CharDef) -> None:
    cid = f"charserial{i}"
    log = f",logfile={opt(b.console_log)},logappend=on" if i == 0 else ""
    if c.type == "pty":
        b.add("-chardev", f"pty,id={cid}{log}")
    elif c.type == "file":
        b.add("-chardev", f"file,id={cid},path={opt(c.path)}"
                          + (",append=on" if c.append else ""))
    else:
        path = c.path or (b.paths.console if i == 0 else b.paths.sockets / f"serial{i}.sock")
        server = ",server=on,wait=off" if c.mode == "bind" else ""
        b.add("-chardev", f"socket,id={cid},path={opt(path)}{server}{log}")
    b.add("-device", f"isa-serial,chardev={cid},id=serial{i}")


def _channel(b: _Builder, i: int, c: CharDef) -> None:
    path = c.path or b.paths.channel(i)
    port = c.address if isinstance(c.address, PortAddress) else PortAddress("virtio-serial", i + 1)
    b.add("-chardev", f"socket,id=charchannel{i},path={opt(path)},server=on,wait=off",
          "-device", f"virtserialport,bus=virtio-serial{port.controller}.{port.bus},"
                     f"nr={port.port},"
                     f"chardev=charchannel{i},id=channel{i},name={opt(c.target_name or '')}")
