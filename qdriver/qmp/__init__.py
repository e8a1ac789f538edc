"""qdriver's QMP layer over ``qemu.qmp``: connect, execute, events, fds, jobs."""
from . import kept
from .connection import DEFAULT_TIMEOUT, Monitor, close, connect, connect_new, open_monitor
from .errors import (
    CommandError,
    JobError,
    MonitorClosedError,
    MonitorConnectError,
    MonitorTimeoutError,
)
from .events import data, wait_event
from .jobs import job_info, run_job

__all__ = ["DEFAULT_TIMEOUT", "Monitor", "close", "connect", "connect_new",
           "open_monitor", "CommandError",
           "JobError", "MonitorClosedError", "MonitorConnectError", "MonitorTimeoutError",
           "data", "wait_event", "job_info", "run_job", "kept"]
