"""The ``qdriver`` command line, run as the user runs it: a process of its own."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path


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
