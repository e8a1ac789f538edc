"""qdriver: run QEMU/KVM guests from libvirt domain XML over QMP, no daemon.

``async with Driver(state_dir) as drv: dom = await drv.define_xml(xml)``
"""
from .domain import Domain
from .domstate import DomainState
from .driver import Driver
from .ops.create_plan import CreateFlags, HostCaps, Plan, plan_snapshot
from .ops.progress import CreateReport, Progress
from .snapshot_handle import Snapshot
from .snapshot_tree import ListFilter
from .errors import (AgentUnresponsiveError, ArgumentUnsupportedError, ConfigUnsupportedError, DomainBusyError,
                     ErrorCode, InternalError, InvalidArgError, InvalidSnapshotError,
                     NoDomainError, NoSnapshotError, NoSupportError, OperationFailedError,
                     OperationInvalidError, OperationTimeoutError, OperationUnsupportedError,
                     QDriverError, ShutdownTimeoutError, SystemError_, XMLError)

__all__ = [
    "Domain", "DomainState", "Driver", "CreateFlags", "HostCaps", "Plan", "plan_snapshot",
    "Snapshot", "ListFilter", "CreateReport", "Progress", "ShutdownTimeoutError", "AgentUnresponsiveError", "ArgumentUnsupportedError",
    "ConfigUnsupportedError",
    "DomainBusyError", "ErrorCode", "InternalError", "InvalidArgError", "InvalidSnapshotError",
    "NoDomainError", "NoSnapshotError", "NoSupportError", "OperationFailedError",
    "OperationInvalidError", "OperationTimeoutError", "OperationUnsupportedError",
    "QDriverError", "SystemError_", "XMLError",
]
