"""The ``qdriver`` command line, run as the user runs it: a process of its own."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from qdriver.testing.faults import ENV, TRACE_ENV


def run_cli(state_dir: Path, *args: str, check: bool = True,
            input: bytes | None = None, timeout: float = 120
            ) -> subprocess.CompletedProcess[bytes]:
    """Run ``qdriver --state-dir STATE_DIR ARGS...``; fail on an error (``check``) or
    on any traceback."""
    result = subprocess.run([sys.executable, "-m", "qdriver", "--state-dir",
                             str(state_dir), *args], capture_output=True, input=input,
                            timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(f"qdriver {' '.join(args)} failed: {result.stderr.decode()}")
    assert b"Traceback (most recent call last)" not in result.stderr, \
        f"qdriver {' '.join(args)} printed a traceback: {result.stderr.decode()}"
    return result


def cli_with_faults(state_dir: Path, *args: str, fault: str | None = None,
                    trace: Path | None = None, timeout: float = 120
                    ) -> subprocess.CompletedProcess[str]:
    """Run ``qdriver --state-dir STATE_DIR ARGS...`` that dies at fault point ``fault``
    (`qdriver.testing.faults`), or records the points it passes in ``trace``."""
    env = {k: v for k, v in os.environ.items() if k not in (ENV, TRACE_ENV)}
    if fault:
        env[ENV] = fault
    if trace:
        env[TRACE_ENV] = str(trace)
    return subprocess.run([sys.executable, "-m", "qdriver", "--state-dir", str(state_dir),
                           *args], capture_output=True, text=True, env=env, timeout=timeout)
