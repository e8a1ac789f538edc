"""Which accelerators this host can really use.

libvirt's ``type='kvm'`` means KVM and ``type='qemu'`` means TCG.  A host can
have a ``/dev/kvm`` that cannot run a stock guest: PVM (module ``kvm_pvm``)
runs an unmodified kernel's ring-0 code through KVM's emulator, where it
crawls or dies.  `probe_kvm` tells that apart so ``type='kvm'`` fails clearly.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class AccelStatus:
    """Whether an accelerator is usable, and why not."""

    name: str
    usable: bool
    reason: str = ""


def probe_kvm(dev: Path = Path("/dev/kvm"), sys_module: Path = Path("/sys/module"),
              cpuinfo: Path = Path("/proc/cpuinfo")) -> AccelStatus:
    """Check that ``/dev/kvm`` exists, can be opened, and is real VMX/SVM KVM."""
    if not dev.exists():
        return AccelStatus("kvm", False, f"{dev} does not exist (no KVM module loaded)")
    if not os.access(dev, os.R_OK | os.W_OK):
        return AccelStatus("kvm", False, f"{dev} is not readable and writable by this user")
    if (sys_module / "kvm_pvm").exists():
        return AccelStatus("kvm", False, f"{dev} is provided by kvm_pvm (PVM), which cannot "
                           "run a stock guest kernel; use <domain type='qemu'> (TCG)")
    try:
        flags = cpuinfo.read_text()
    except OSError:
        flags = ""
    if flags and " vmx" not in flags and " svm" not in flags:
        return AccelStatus("kvm", False, "the CPU has no vmx/svm virtualization extensions")
    return AccelStatus("kvm", True)


def probe(domain_type: str) -> AccelStatus:
    """The status of the accelerator a libvirt domain type asks for."""
    if domain_type == "qemu":
        return AccelStatus("tcg", True)
    return probe_kvm()
