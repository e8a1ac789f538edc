"""libvirt-python's classes over `qdriver.blocking`: virConnect, virDomain,
virDomainSnapshot, libvirtError, and the default event loop.

Each method maps its flags onto qdriver's keywords; a flag qdriver cannot honour
is libvirt's ``VIR_ERR_INVALID_ARG`` "unsupported flags", and a call qdriver does
not serve is ``VIR_ERR_NO_SUPPORT`` naming it, as libvirt's own drivers answer.
"""
from __future__ import annotations

import functools
import os
import queue
import threading
from pathlib import Path
from typing import Any, Callable, TypeVar
from urllib.parse import urlparse

from .. import blocking
from ..errors import ErrorCode, QDriverError
from ..events.kinds import Event, EventType
from ..paths import default_state_dir
from ..runstatus import DomainState
from .constants import ALL, LIFECYCLE_TYPES, SNAPSHOT_LIST_FLAGS, reason_code

F = TypeVar("F", bound=Callable[..., Any])


class libvirtError(Exception):  # noqa: N801 - libvirt-python's name
    """libvirt-python's error: ``get_error_code()``, ``get_error_message()``."""

    def __init__(self, message: str, code: int = ErrorCode.INTERNAL_ERROR) -> None:
        super().__init__(message)
        self._code = int(code)
        self._message = message

    def get_error_code(self) -> int:
        return self._code

    def get_error_message(self) -> str:
        return self._message

    def get_error_domain(self) -> int:
        return ALL["VIR_FROM_QEMU"]

    def get_error_level(self) -> int:
        return 2  # VIR_ERR_ERROR


def _translated(method: F) -> F:
    """qdriver's errors as `libvirtError`, with their code and message."""
    @functools.wraps(method)
    def call(*args: Any, **kwargs: Any) -> Any:
        try:
            return method(*args, **kwargs)
        except QDriverError as e:
            raise libvirtError(e.message, e.code) from e
    return call  # type: ignore[return-value]


def _flags(flags: int, allowed: int, function: str) -> None:
    if flags & ~allowed:
        raise libvirtError(f"invalid argument: unsupported flags (0x{flags & ~allowed:x}) in "
                           f"function {function}", ErrorCode.INVALID_ARG)


def _unsupported(name: str) -> Callable[..., Any]:
    def call(*args: Any, **kwargs: Any) -> Any:
        raise libvirtError(f"this function is not supported by the connection driver: "
                           f"{name}", ErrorCode.NO_SUPPORT)
    return call


class _Unsupported:
    """Every libvirt call not written here answers as libvirt's drivers do for a call
    they lack: ``VIR_ERR_NO_SUPPORT``, naming it."""

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        return _unsupported(f"vir{type(self).__name__[3:]}.{name}")


def _bits(flags: int, names: tuple[str, ...]) -> dict[str, bool]:
    return {n: bool(flags & (1 << i)) for i, n in enumerate(names)}


class virDomainSnapshot(_Unsupported):  # noqa: N801
    def __init__(self, dom: virDomain, snap: Any) -> None:
        self._dom = dom
        self._snap = snap

    def getName(self) -> str:  # noqa: N802 - libvirt's names from here on
        return str(self._snap.name)

    def getDomain(self) -> virDomain:
        return self._dom

    def getConnect(self) -> virConnect:
        return self._dom.connect()

    @_translated
    def getXMLDesc(self, flags: int = 0) -> str:
        return str(self._snap.xml_desc())

    @_translated
    def getParent(self, flags: int = 0) -> virDomainSnapshot:
        return virDomainSnapshot(self._dom, self._snap.parent())

    @_translated
    def isCurrent(self, flags: int = 0) -> int:
        return int(self._snap.is_current())

    @_translated
    def hasMetadata(self, flags: int = 0) -> int:
        return int(self._snap.has_metadata())

    @_translated
    def listAllChildren(self, flags: int = 0) -> list[virDomainSnapshot]:
        descendants = bool(flags & 1)
        return [virDomainSnapshot(self._dom, s) for s in self._snap.children(descendants)]

    def listChildrenNames(self, flags: int = 0) -> list[str]:
        return [s.getName() for s in self.listAllChildren(flags)]

    def numChildren(self, flags: int = 0) -> int:
        return len(self.listAllChildren(flags))

    @_translated
    def delete(self, flags: int = 0) -> int:
        _flags(flags, 7, "virDomainSnapshotDelete")
        self._dom._dom.delete_snapshot(self.getName(), **_bits(
            flags, ("children", "metadata_only", "children_only")))
        return 0


class virDomain(_Unsupported):  # noqa: N801
    def __init__(self, conn: virConnect, dom: Any) -> None:
        self._conn = conn
        self._dom = dom

    def connect(self) -> virConnect:
        return self._conn

    def name(self) -> str:
        return str(self._dom.name)

    def UUIDString(self) -> str:  # noqa: N802
        return str(self._dom.uuid)

    def UUID(self) -> bytes:  # noqa: N802
        return bytes.fromhex(self.UUIDString().replace("-", ""))

    def ID(self) -> int:  # noqa: N802
        dom_id = self._dom.id
        return -1 if dom_id is None else int(dom_id)

    @_translated
    def XMLDesc(self, flags: int = 0) -> str:  # noqa: N802
        return str(self._dom.xml_desc(inactive=bool(flags & ALL["VIR_DOMAIN_XML_INACTIVE"])))

    @_translated
    def state(self, flags: int = 0) -> list[int]:
        state, reason = self._dom.state_reason()
        return [int(state), reason_code(state, reason)]

    @_translated
    def info(self) -> list[int]:
        state = self._dom.state
        definition = self._dom.definition
        return [int(state), definition.memory_kib, definition.memory_kib, definition.vcpus,
                _cpu_time(self._dom.runtime.peek())]

    def isActive(self) -> int:  # noqa: N802
        return int(bool(self._dom.is_active))

    def isPersistent(self) -> int:  # noqa: N802
        return 1  # qdriver's domains are all persistent

    def isUpdated(self) -> int:  # noqa: N802
        return 0

    @_translated
    def create(self) -> int:
        return self.createWithFlags(0)

    @_translated
    def createWithFlags(self, flags: int = 0) -> int:  # noqa: N802
        _flags(flags, 1 | 8, "virDomainCreateWithFlags")
        self._dom.start(paused=bool(flags & 1), force_boot=bool(flags & 8))
        return 0

    @_translated
    def destroy(self) -> int:
        self._dom.destroy()
        return 0

    @_translated
    def destroyFlags(self, flags: int = 0) -> int:  # noqa: N802
        _flags(flags, 1, "virDomainDestroyFlags")
        self._dom.destroy()
        return 0

    @_translated
    def shutdown(self) -> int:
        self._dom.shutdown(timeout=0, escalate=False)  # the button pressed, as libvirt
        return 0

    @_translated
    def shutdownFlags(self, flags: int = 0) -> int:  # noqa: N802
        _flags(flags, 1, "virDomainShutdownFlags")
        return self.shutdown()

    @_translated
    def reboot(self, flags: int = 0) -> int:
        _flags(flags, 3, "virDomainReboot")
        self._dom.reboot(mode="agent" if flags & 2 else "acpi")
        return 0

    @_translated
    def reset(self, flags: int = 0) -> int:
        self._dom.reset()
        return 0

    @_translated
    def suspend(self) -> int:
        self._dom.suspend()
        return 0

    @_translated
    def resume(self) -> int:
        self._dom.resume()
        return 0

    @_translated
    def save(self, to: str) -> int:
        self._dom.save(to)
        return 0

    @_translated
    def saveFlags(self, to: str, dxml: str | None = None, flags: int = 0) -> int:  # noqa: N802
        _flags(flags, 6, "virDomainSaveFlags")
        if dxml:
            raise libvirtError("this function is not supported by the connection driver: "
                               "virDomainSaveFlags with an XML", ErrorCode.NO_SUPPORT)
        self._dom.save(to, running=bool(flags & 2), paused=bool(flags & 4))
        return 0

    @_translated
    def managedSave(self, flags: int = 0) -> int:  # noqa: N802
        _flags(flags, 6, "virDomainManagedSave")
        self._dom.managed_save(running=bool(flags & 2), paused=bool(flags & 4))
        return 0

    @_translated
    def hasManagedSaveImage(self, flags: int = 0) -> int:  # noqa: N802
        return int(self._dom.has_managed_save())

    @_translated
    def managedSaveRemove(self, flags: int = 0) -> int:  # noqa: N802
        self._dom.managed_save_remove()
        return 0

    @_translated
    def undefine(self) -> int:
        return self.undefineFlags(0)

    @_translated
    def undefineFlags(self, flags: int = 0) -> int:  # noqa: N802
        _flags(flags, 1 | 2 | 4 | 8, "virDomainUndefineFlags")
        self._conn._drv.undefine(self._dom, snapshots_metadata=bool(flags & 2),
                                 managed_save=bool(flags & 1), nvram=bool(flags & 4),
                                 keep_nvram=bool(flags & 8))
        return 0

    # -- snapshots ------------------------------------------------------------------

    @_translated
    def snapshotCreateXML(self, xmlDesc: str, flags: int = 0) -> virDomainSnapshot:  # noqa: N802,N803
        _flags(flags, (1 << 10) - 1, "virDomainSnapshotCreateXML")
        names = ("redefine", "current", "no_metadata", "halt", "disk_only", "reuse_ext",
                 "quiesce", "atomic", "live", "validate")
        snap = self._dom.snapshot_create_xml(xmlDesc, **_bits(flags, names))
        return virDomainSnapshot(self, snap)

    @_translated
    def listAllSnapshots(self, flags: int = 0) -> list[virDomainSnapshot]:  # noqa: N802
        _flags(flags, (1 << 11) - 1, "virDomainListAllSnapshots")
        snaps = self._dom.list_snapshots(**_bits(flags, SNAPSHOT_LIST_FLAGS))
        return [virDomainSnapshot(self, s) for s in snaps]

    def snapshotListNames(self, flags: int = 0) -> list[str]:  # noqa: N802
        return [s.getName() for s in self.listAllSnapshots(flags)]

    def snapshotNum(self, flags: int = 0) -> int:  # noqa: N802
        return len(self.listAllSnapshots(flags))

    @_translated
    def snapshotLookupByName(self, name: str, flags: int = 0) -> virDomainSnapshot:  # noqa: N802
        return virDomainSnapshot(self, self._dom.snapshot_lookup(name))

    @_translated
    def snapshotCurrent(self, flags: int = 0) -> virDomainSnapshot:  # noqa: N802
        return virDomainSnapshot(self, self._dom.current_snapshot())

    @_translated
    def hasCurrentSnapshot(self, flags: int = 0) -> int:  # noqa: N802
        return int(self._dom.has_current_snapshot())

    @_translated
    def revertToSnapshot(self, snap: virDomainSnapshot, flags: int = 0) -> int:  # noqa: N802
        _flags(flags, 7, "virDomainRevertToSnapshot")
        self._dom.revert_to_snapshot(snap.getName(), **_bits(flags, ("running", "paused",
                                                                     "force")))
        return 0


def _cpu_time(rec: Any) -> int:
    """QEMU's CPU time in nanoseconds (0 while shut off)."""
    if rec is None:
        return 0
    try:
        fields = Path(f"/proc/{rec.pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0
    return (int(fields[11]) + int(fields[12])) * 1_000_000_000 // os.sysconf("SC_CLK_TCK")


class virConnect(_Unsupported):  # noqa: N801
    def __init__(self, state_dir: Path) -> None:
        self._drv = blocking.Driver(state_dir)
        self._callbacks: dict[int, int] = {}

    def _domain(self, dom: Any) -> virDomain:
        return virDomain(self, dom)

    def getURI(self) -> str:  # noqa: N802
        return f"qdriver://{self._drv.state_dir}"

    def getType(self) -> str:  # noqa: N802
        return "QEMU"

    def isAlive(self) -> int:  # noqa: N802
        return 1

    @_translated
    def defineXML(self, xml: str) -> virDomain:  # noqa: N802
        return self._domain(self._drv.define_xml(xml))

    def defineXMLFlags(self, xml: str, flags: int = 0) -> virDomain:  # noqa: N802
        _flags(flags, 0, "virDomainDefineXMLFlags")
        return self.defineXML(xml)

    @_translated
    def lookupByName(self, name: str) -> virDomain:  # noqa: N802
        return self._domain(self._drv.lookup(name))

    @_translated
    def lookupByUUIDString(self, uuid: str) -> virDomain:  # noqa: N802
        return self._domain(self._drv.lookup_by_uuid(uuid))

    @_translated
    def listAllDomains(self, flags: int = 0) -> list[virDomain]:  # noqa: N802
        _flags(flags, 15, "virConnectListAllDomains")
        doms = [self._domain(d) for d in self._drv.list_domains()]
        if flags & 3 and not flags & 3 == 3:  # only the active, or only the inactive ones
            doms = [d for d in doms if d.isActive() == bool(flags & 1)]
        return [] if flags & 8 and not flags & 4 else doms

    def listDefinedDomains(self) -> list[str]:  # noqa: N802
        return [d.name() for d in self.listAllDomains(2)]

    def listDomainsID(self) -> list[int]:  # noqa: N802
        return [d.ID() for d in self.listAllDomains(1)]

    def numOfDomains(self) -> int:  # noqa: N802
        return len(self.listAllDomains(1))

    def numOfDefinedDomains(self) -> int:  # noqa: N802
        return len(self.listAllDomains(2))

    @_translated
    def restore(self, frm: str) -> int:
        self._drv.restore(frm)
        return 0

    @_translated
    def restoreFlags(self, frm: str, dxml: str | None = None, flags: int = 0) -> int:  # noqa: N802
        _flags(flags, 6, "virDomainRestoreFlags")
        self._drv.restore(frm, running=bool(flags & 2), paused=bool(flags & 4), xml=dxml)
        return 0

    def domainEventRegisterAny(self, dom: virDomain | None, eventID: int,  # noqa: N802,N803
                               cb: Callable[..., Any], opaque: Any) -> int:
        """Call ``cb`` for each event of ``eventID`` (lifecycle or reboot), inside
        `virEventRunDefaultImpl` as libvirt does."""
        wanted = {0: None, 1: EventType.REBOOT}
        if eventID not in wanted:
            raise libvirtError(f"this function is not supported by the connection driver: "
                               f"virConnectDomainEventRegisterAny with event {eventID}",
                               ErrorCode.NO_SUPPORT)

        def deliver(event: Event) -> None:
            lifecycle = eventID == 0 and event.type in LIFECYCLE_TYPES
            if lifecycle or event.type is wanted[eventID]:
                _EVENT_LOOP.put(functools.partial(self._dispatch, cb, opaque, eventID, event))
        key = self._drv.register_event_callback(deliver, dom.name() if dom else None)
        self._callbacks[key] = key
        return key

    def _dispatch(self, cb: Callable[..., Any], opaque: Any, event_id: int,
                  event: Event) -> None:
        try:
            dom = self.lookupByName(event.domain)
        except libvirtError:  # undefined since: a handle by name, as libvirt keeps one
            dom = virDomain(self, _Gone(event.domain))
        if event_id == 0:
            cb(self, dom, int(event.type), event.detail_code, opaque)
        else:
            cb(self, dom, opaque)

    def domainEventDeregisterAny(self, callbackID: int) -> int:  # noqa: N802,N803
        self._drv.deregister_event_callback(self._callbacks.pop(callbackID))
        return 0

    def close(self) -> int:
        self._drv.close()
        return 0


class _Gone:
    """A domain that is no longer defined, by name (its events still name it)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.uuid = ""
        self.id = None


def open(name: str | None = None) -> virConnect:  # noqa: A001 - libvirt.open
    """``qdriver:///ABSOLUTE/STATE/DIR``; ``qemu:///session`` (or None): the default
    state dir."""
    if not name or name == "qemu:///session":
        return virConnect(default_state_dir())
    uri = urlparse(name)
    if uri.scheme != "qdriver" or uri.netloc or not uri.path.startswith("/"):
        raise libvirtError(f"no connection driver available for {name}",
                           ErrorCode.NO_SUPPORT)
    return virConnect(Path(uri.path))


def openReadOnly(name: str | None = None) -> virConnect:  # noqa: N802
    return open(name)


# -- the default event loop -------------------------------------------------------------

_EVENT_LOOP: queue.Queue[Callable[[], None]] = queue.Queue()
_REGISTERED = threading.Event()
RUN_TIMEOUT = 0.5
"""How long one `virEventRunDefaultImpl` iteration waits for an event to dispatch."""


def virEventRegisterDefaultImpl() -> int:  # noqa: N802
    """As libvirt's: events are then dispatched by `virEventRunDefaultImpl`."""
    _REGISTERED.set()
    return 0


def virEventRunDefaultImpl() -> int:  # noqa: N802
    """One iteration of the event loop: run the callbacks of the events that arrived
    (waiting up to `RUN_TIMEOUT` for one), in the calling thread."""
    try:
        call = _EVENT_LOOP.get(timeout=RUN_TIMEOUT)
    except queue.Empty:
        return 0
    call()
    while True:
        try:
            _EVENT_LOOP.get_nowait()()
        except queue.Empty:
            return 0


def getVersion() -> int:  # noqa: N802
    return 11_003_000


__all__ = ["libvirtError", "virConnect", "virDomain", "virDomainSnapshot", "open",
           "openReadOnly", "virEventRegisterDefaultImpl", "virEventRunDefaultImpl",
           "getVersion", "DomainState"]
