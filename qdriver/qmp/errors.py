"""Errors of the QMP layer, each a libvirt-like `QDriverError`."""
from __future__ import annotations

from ..errors import InternalError, OperationFailedError, OperationTimeoutError


class MonitorConnectError(OperationFailedError):
    """The QMP socket could not be reached or did not greet us."""


class MonitorTimeoutError(OperationTimeoutError):
    """A QMP command, event or job did not finish in time."""


class MonitorClosedError(OperationFailedError):
    """QEMU closed the monitor (it exited) while we were waiting."""


class CommandError(InternalError):
    """QEMU answered a command with an error."""

    def __init__(self, command: str, error_class: str, desc: str) -> None:
        super().__init__(f"unable to execute QEMU command '{command}': {desc}")
        self.command = command
        self.error_class = error_class
        self.desc = desc


class JobError(OperationFailedError):
    """A QEMU job concluded with an error."""

    def __init__(self, job_id: str, desc: str) -> None:
        super().__init__(f"job '{job_id}' failed: {desc}")
        self.job_id = job_id
        self.desc = desc
