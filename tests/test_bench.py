"""The benchmarks stay runnable: each one's command line parses (which imports
everything it uses), and libvirt's helper scripts compile under Debian's python."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).parent.parent / "bench"
SCRIPTS = sorted(p for p in BENCH.glob("*.py")
                 if p.name != "common.py" and not p.name.startswith("libvirt_"))


@pytest.mark.no_qemu
@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.stem)
def test_a_benchmark_starts(script: Path) -> None:
    run = subprocess.run([sys.executable, str(script), "--help"], capture_output=True,
                         text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    assert "usage:" in run.stdout


@pytest.mark.no_qemu
def test_the_libvirt_helpers_compile() -> None:
    for script in BENCH.glob("libvirt_*.py"):
        subprocess.run(["/usr/bin/python3", "-m", "py_compile", str(script)], check=True)
