"""Detecting an unusable KVM (missing, inaccessible, PVM, no VMX/SVM)."""
from __future__ import annotations

from pathlib import Path

import pytest

from qdriver.caps.accel import probe, probe_kvm

pytestmark = pytest.mark.no_qemu  # pure: runs no QEMU program


def fake_host(tmp_path: Path, pvm: bool = False, flags: str = "fpu vmx sse") -> dict[str, Path]:
    dev = tmp_path / "kvm"
    dev.write_text("")
    mods = tmp_path / "module"
    (mods / "kvm").mkdir(parents=True)
    if pvm:
        (mods / "kvm_pvm").mkdir()
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(f"flags\t\t: {flags}\n")
    return {"dev": dev, "sys_module": mods, "cpuinfo": cpuinfo}


def test_missing_device(tmp_path: Path) -> None:
    status = probe_kvm(dev=tmp_path / "nokvm")
    assert not status.usable and "does not exist" in status.reason


def test_pvm_is_unusable(tmp_path: Path) -> None:
    status = probe_kvm(**fake_host(tmp_path, pvm=True))
    assert not status.usable and "kvm_pvm" in status.reason and "type='qemu'" in status.reason


def test_no_virtualization_extensions(tmp_path: Path) -> None:
    status = probe_kvm(**fake_host(tmp_path, flags="fpu sse"))
    assert not status.usable and "vmx/svm" in status.reason


def test_real_kvm_is_usable(tmp_path: Path) -> None:
    assert probe_kvm(**fake_host(tmp_path)).usable


def test_this_host_agrees_with_its_modules() -> None:
    status = probe("kvm")
    if Path("/sys/module/kvm_pvm").exists():
        assert not status.usable and "PVM" in status.reason
    assert probe("qemu").usable
