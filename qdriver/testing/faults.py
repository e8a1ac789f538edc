"""Fault injection for tests: die hard at a named point of an operation.

``QDRIVER_FAULT=create:migrate-to-file`` makes the process that reaches that
point kill itself with SIGKILL, as an OOM kill or a second Ctrl-C would: no
``finally`` runs, no journal is cleared.  Points are ``OP:STEP`` before each
plan step, ``OP:recorded:KIND`` right after an undo is journaled (before its
side effect), ``OP:end`` after the last step, and a few inside long steps
(``memfile:migrating``).  Off unless the variable is set.
"""
from __future__ import annotations

import os
import signal

ENV = "QDRIVER_FAULT"
TRACE_ENV = "QDRIVER_FAULT_TRACE"
"""A file each point reached is appended to: how tests enumerate an operation's points."""


def point(name: str) -> None:
    """Die here if ``$QDRIVER_FAULT`` names this point."""
    trace = os.environ.get(TRACE_ENV)
    if trace:
        with open(trace, "a") as f:
            f.write(name + "\n")
    wanted = os.environ.get(ENV)
    if wanted and wanted == name:
        os.kill(os.getpid(), signal.SIGKILL)


__all__ = ["point", "ENV", "TRACE_ENV"]
