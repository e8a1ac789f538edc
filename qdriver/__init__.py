"""qdriver: run QEMU/KVM guests from libvirt domain XML over QMP, no daemon.

``async with Driver(state_dir) as drv: dom = await drv.define_xml(xml)``
"""
from .domain import Domain, DomainState
from .driver import Driver
from .planner import CreateFlags, HostCaps, Plan, plan_snapshot
from .snapshot import Snapshot
from .snapshots import ListFilter
from .errors import (AgentUnresponsiveError, ArgumentUnsupportedError, ConfigUnsupportedError, DomainBusyError,
                     ErrorCode, InternalError, InvalidArgError, InvalidSnapshotError,
                     NoDomainError, NoSnapshotError, NoSupportError, OperationFailedError,
                     OperationInvalidError, OperationTimeoutError, OperationUnsupportedError,
                     QDriverError, SystemError_, XMLError)

__all__ = [
    "Domain", "DomainState", "Driver", "CreateFlags", "HostCaps", "Plan", "plan_snapshot",
    "Snapshot", "ListFilter", "AgentUnresponsiveError", "ArgumentUnsupportedError",
    "ConfigUnsupportedError",
    "DomainBusyError", "ErrorCode", "InternalError", "InvalidArgError", "InvalidSnapshotError",
    "NoDomainError", "NoSnapshotError", "NoSupportError", "OperationFailedError",
    "OperationInvalidError", "OperationTimeoutError", "OperationUnsupportedError",
    "QDriverError", "SystemError_", "XMLError",
]
