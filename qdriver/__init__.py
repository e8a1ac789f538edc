"""qdriver: run QEMU/KVM guests from libvirt domain XML over QMP, no daemon.

``async with Driver(state_dir) as drv: dom = await drv.define_xml(xml)``
"""
from importlib import metadata as _metadata

from .caps.running import RunningCaps
from .domain import Domain
from .driver import Driver
from .errors import (
    AgentUnresponsiveError,
    ArgumentUnsupportedError,
    ConfigUnsupportedError,
    DomainBusyError,
    ErrorCode,
    InternalError,
    InvalidArgError,
    InvalidSnapshotError,
    NoDomainError,
    NoNetworkError,
    NoSnapshotError,
    NoSupportError,
    OperationAbortedError,
    OperationFailedError,
    OperationInvalidError,
    OperationTimeoutError,
    OperationUnsupportedError,
    QDriverError,
    ShutdownTimeoutError,
    SnapshotRevertRiskyError,
    SystemError_,
    XMLError,
)
from .events import Event, EventType
from .events.stream import EventStream
from .migrate import MigrateFlags, MigrateReport
from .network import Lease, Network
from .ops.create_plan import CreateFlags, CreatePlan, plan_snapshot
from .ops.group import Taken
from .ops.revert_plan import RevertFlags, RevertPlan, plan_revert
from .progress import CreateReport, Progress
from .runstatus import DomainState
from .snapshots.handle import Snapshot
from .snapshots.tree import ListFilter

try:
    __version__ = _metadata.version("qdriver")
except _metadata.PackageNotFoundError:  # run from a source tree that was not installed
    __version__ = "0+unknown"

__all__ = [
    "Domain", "DomainState", "Driver", "CreateFlags", "RunningCaps", "CreatePlan", "plan_snapshot",
    "RevertFlags", "RevertPlan", "plan_revert", "Taken", "Snapshot", "ListFilter", "CreateReport",
    "Progress", "Event", "EventType", "EventStream", "MigrateFlags", "MigrateReport",
    "AgentUnresponsiveError",
    "ArgumentUnsupportedError", "ConfigUnsupportedError",
    "DomainBusyError", "ErrorCode", "InternalError", "InvalidArgError", "InvalidSnapshotError",
    "NoDomainError", "NoNetworkError", "Network", "Lease", "NoSnapshotError", "NoSupportError",
    "OperationAbortedError", "OperationFailedError",
    "OperationInvalidError", "OperationTimeoutError", "OperationUnsupportedError",
    "QDriverError", "ShutdownTimeoutError", "SnapshotRevertRiskyError", "SystemError_",
    "XMLError",
]
