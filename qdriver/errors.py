"""The qdriver error hierarchy.

Every error carries a libvirt error code (``code``, e.g. ``ErrorCode.NO_DOMAIN``)
and formats its message the way libvirt does, so ``str(err)`` reads like a
libvirt message ("Domain not found: no domain with matching name 'x'").
One class per kind of failure; catch `QDriverError` to catch them all.
"""
from __future__ import annotations

import enum


class ErrorCode(enum.IntEnum):
    """libvirt's ``virErrorNumber`` values for the errors qdriver raises."""

    INTERNAL_ERROR = 1
    NO_SUPPORT = 3
    INVALID_ARG = 8
    OPERATION_FAILED = 9
    XML_ERROR = 27
    XML_DETAIL = 35
    SYSTEM_ERROR = 38
    NO_DOMAIN = 42
    NO_NETWORK = 43
    OPERATION_INVALID = 55
    CONFIG_UNSUPPORTED = 67
    OPERATION_TIMEOUT = 68
    INVALID_DOMAIN_SNAPSHOT = 71
    NO_DOMAIN_SNAPSHOT = 72
    ARGUMENT_UNSUPPORTED = 74
    SNAPSHOT_REVERT_RISKY = 77
    OPERATION_ABORTED = 78
    OPERATION_UNSUPPORTED = 84
    AGENT_UNRESPONSIVE = 86

    def __str__(self) -> str:
        return f"{type(self).__name__}.{self.name}"

    def __format__(self, spec: str) -> str:
        return format(str(self), spec)


class QDriverError(Exception):
    """Base class: a libvirt-like error with a code and a detail message."""

    code: ErrorCode = ErrorCode.INTERNAL_ERROR
    prefix: str = "internal error: "

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail

    @property
    def message(self) -> str:
        """The full message as libvirt prints it."""
        return f"{self.prefix}{self.detail}"

    def __str__(self) -> str:
        return self.message


class InternalError(QDriverError):
    """Something qdriver or QEMU did not expect."""


class FormatError(InternalError):
    """A persisted record (journal, run record, delete marks) this release cannot
    read: another format version, or a kind of entry it does not know."""


class NoSupportError(QDriverError):
    """This qdriver or QEMU build cannot do what was asked."""

    code = ErrorCode.NO_SUPPORT
    prefix = "this function is not supported by the connection driver: "


class InvalidArgError(QDriverError):
    """A flag or argument is invalid or conflicts with another one."""

    code = ErrorCode.INVALID_ARG
    prefix = "invalid argument: "


class OperationFailedError(QDriverError):
    """An operation was attempted and failed."""

    code = ErrorCode.OPERATION_FAILED
    prefix = "operation failed: "


class XMLError(QDriverError):
    """Malformed, hostile or invalid XML."""

    code = ErrorCode.XML_ERROR
    prefix = "XML error: "


class XMLDetailError(QDriverError):
    """XML that parses but does not fit the schema."""

    code = ErrorCode.XML_DETAIL
    prefix = ""


class SystemError_(QDriverError):
    """A system call failed (a file missing, a permission denied, ...)."""

    code = ErrorCode.SYSTEM_ERROR
    prefix = ""


class NoDomainError(QDriverError):
    """No domain with that name or uuid."""

    code = ErrorCode.NO_DOMAIN
    prefix = "Domain not found: "


class NoNetworkError(QDriverError):
    """No network with that name."""

    code = ErrorCode.NO_NETWORK
    prefix = "Network not found: "


class OperationInvalidError(QDriverError):
    """The request does not fit the domain's current state."""

    code = ErrorCode.OPERATION_INVALID
    prefix = "Requested operation is not valid: "


class ConfigUnsupportedError(QDriverError):
    """The configuration asks for something qdriver or the host cannot do."""

    code = ErrorCode.CONFIG_UNSUPPORTED
    prefix = "unsupported configuration: "


class OperationAbortedError(QDriverError):
    """The operation stopped part way, on purpose (another part of it failed)."""

    code = ErrorCode.OPERATION_ABORTED
    prefix = "operation aborted: "


class OperationTimeoutError(QDriverError):
    """Waiting for a lock, QEMU or the guest took too long."""

    code = ErrorCode.OPERATION_TIMEOUT
    prefix = "Timed out during operation: "


class DomainBusyError(OperationTimeoutError):
    """Another process holds the domain's lock for a conflicting job."""


class InvalidSnapshotError(QDriverError):
    """A snapshot definition is invalid."""

    code = ErrorCode.INVALID_DOMAIN_SNAPSHOT
    prefix = "Invalid snapshot: "


class NoSnapshotError(QDriverError):
    """No snapshot with that name."""

    code = ErrorCode.NO_DOMAIN_SNAPSHOT
    prefix = "Domain snapshot not found: "


class ArgumentUnsupportedError(QDriverError):
    """A requested feature is not configured for this domain."""

    code = ErrorCode.ARGUMENT_UNSUPPORTED
    prefix = "argument unsupported: "


class OperationUnsupportedError(QDriverError):
    """The operation is not supported in this combination."""

    code = ErrorCode.OPERATION_UNSUPPORTED
    prefix = "Operation not supported: "


class AgentUnresponsiveError(QDriverError):
    """The guest agent did not answer."""

    code = ErrorCode.AGENT_UNRESPONSIVE
    prefix = "Guest agent is not responding: "


class ShutdownTimeoutError(OperationTimeoutError):
    """The guest did not power off within the time it was given (ACPI shutdown)."""


class SnapshotRevertRiskyError(QDriverError):
    """Reverting would lose or corrupt state; libvirt's "revert requires force"."""

    code = ErrorCode.SNAPSHOT_REVERT_RISKY
    prefix = "revert requires force: "
