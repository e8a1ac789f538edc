"""Shared fixtures: the real test guest, a driver per test, cleanup checks."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import AsyncIterator, Awaitable, Callable, Iterator

import anyio
import pytest

import qdriver
from qdriver.guestpool import qemu_pids
from qdriver.paths import socket_root

pytest_plugins = ["pytester"]  # the pytest plugin's tests run pytest

HERE = Path(__file__).parent
IMAGES = HERE / "vm-images"


@dataclass(frozen=True)
class GuestImage:
    """The built test guest."""

    dir: Path

    @property
    def kernel(self) -> Path:
        return self.dir / "vmlinux"

    @property
    def initrd(self) -> Path:
        return self.dir / "initrd.img"

    @property
    def disk(self) -> Path:
        return self.dir / "disk.qcow2"


@pytest.fixture(scope="session")
def guest_image() -> GuestImage:
    """Build (or reuse) the tiny Debian guest once per session."""
    out = Path(os.environ.get("QDRIVER_GUEST_DIR", IMAGES / "out"))
    out.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, str(IMAGES / "build.py"), str(out)], check=True,
                   stdout=subprocess.DEVNULL)
    return GuestImage(out)


def domain_xml(image: GuestImage, name: str, disk: Path | None, *, cmdline: str = "",
               memory_mib: int = 256, dtype: str = "qemu", serial: str = "pty",
               extra_devices: str = "", disk_format: str = "qcow2",
               extra_disks: tuple[Path, ...] = ()) -> str:
    """A libvirt domain XML for the test guest (vda, then vdb, vdc, ...)."""
    disks = ([disk] if disk is not None else []) + list(extra_disks)
    disk_xml = "".join(f"""
    <disk type='file' device='disk'>
      <driver name='qemu' type='{disk_format}'/>
      <source file='{path}'/>
      <target dev='vd{chr(ord("a") + i)}' bus='virtio'/>
    </disk>""" for i, path in enumerate(disks))
    args = "console=ttyS0 quiet panic=-1 " + ("qd.disk=none " if disk is None else "") + cmdline
    return f"""<domain type='{dtype}'>
  <name>{name}</name>
  <memory unit='MiB'>{memory_mib}</memory>
  <vcpu>1</vcpu>
  <os>
    <type arch='x86_64' machine='q35'>hvm</type>
    <kernel>{image.kernel}</kernel>
    <initrd>{image.initrd}</initrd>
    <cmdline>{args.strip()}</cmdline>
  </os>
  <features><acpi/></features>
  <on_poweroff>destroy</on_poweroff>
  <devices>{disk_xml}
    <serial type='{serial}'/>
    <memballoon model='none'/>{extra_devices}
  </devices>
</domain>
"""


@pytest.fixture
def state_dir(tmp_path: Path) -> Path:
    return tmp_path / "state"


def qemu_pids_for(state_dir: Path) -> list[int]:
    """QEMU processes whose command line mentions this state dir."""
    return qemu_pids(state_dir)


@pytest.fixture
async def driver(state_dir: Path) -> AsyncIterator[qdriver.Driver]:
    """A Driver on a fresh state dir; tears down every domain it left running."""
    drv = qdriver.Driver(state_dir)
    yield drv
    for dom in drv.list_domains():
        if dom.is_active:
            await dom.destroy()
        await dom.get_state()  # reaps a QEMU that died on its own, as `qdriver list` does
    for pid in qemu_pids_for(state_dir):
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes()[:400]
        os.kill(pid, 9)
        pytest.fail(f"QEMU {pid} survived the test: {cmd!r}")
    sockets = socket_root(state_dir)
    leftovers = list(sockets.rglob("*")) if sockets.exists() else []
    shutil.rmtree(sockets, ignore_errors=True)
    try:
        sockets.parent.rmdir()  # the per-user base, once no state dir uses it
    except OSError:
        pass
    assert leftovers == [], f"sockets left behind: {leftovers}"
    assert list(state_dir.rglob("run.json")) == []


@pytest.fixture
def make_domain(driver: qdriver.Driver, guest_image: GuestImage, tmp_path: Path
                ) -> Callable[..., Awaitable[qdriver.Domain]]:
    """Define a test-guest domain with a private copy of the disk."""
    async def make(name: str = "guest", with_disk: bool = True, disks: int = 1,
                   **kw: object) -> qdriver.Domain:
        paths = []
        for i in range(disks if with_disk else 0):
            path = tmp_path / f"{name}-vd{chr(ord('a') + i)}.qcow2"
            shutil.copyfile(guest_image.disk, path)
            paths.append(path)
        return await driver.define_xml(domain_xml(  # type: ignore[arg-type]
            guest_image, name, paths[0] if paths else None, extra_disks=tuple(paths[1:]), **kw))
    return make


async def wait_console(dom: qdriver.Domain, marker: str, timeout: float = 60.0,
                       after: int = 0) -> str:
    """Wait until ``marker`` appears in the console log (past offset ``after``)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            text = dom.paths.console_log.read_text(errors="replace")[after:]
        except FileNotFoundError:
            text = ""
        if marker in text:
            return text
        await anyio.sleep(0.05)
    raise AssertionError(f"'{marker}' not on the console of {dom.name} within {timeout} s")


def last_counter(dom: qdriver.Domain) -> int:
    """The last COUNTER value the guest printed."""
    lines = [ln for ln in dom.paths.console_log.read_text(errors="replace").splitlines()
             if ln.startswith("COUNTER ")]
    return int(lines[-1].split()[1]) if lines else 0


def run_cli(state_dir: Path, *args: str, check: bool = True,
            input: bytes | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    """Run the ``qdriver`` CLI in a separate process."""
    result = subprocess.run([sys.executable, "-m", "qdriver", "--state-dir",
                             str(state_dir), *args], capture_output=True, input=input,
                            timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(f"qdriver {' '.join(args)} failed: {result.stderr.decode()}")
    assert b"Traceback (most recent call last)" not in result.stderr, \
        f"qdriver {' '.join(args)} printed a traceback: {result.stderr.decode()}"
    return result


def disk_counter(image: str | Path, snapshot: str | None = None) -> int:
    """The last counter value the guest wrote to an image (or to an internal
    snapshot in it), read without mounting: qemu-img convert + debugfs."""
    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "disk.raw"
        args = ["qemu-img", "convert", "-U", "-O", "raw"]
        if snapshot:
            args += ["-l", f"snapshot.name={snapshot}"]
        subprocess.run(args + [str(image), str(raw)], check=True, capture_output=True)
        out = subprocess.run(["debugfs", "-R", "cat /counter", str(raw)], check=True,
                             capture_output=True, text=True).stdout
    values = [int(x) for x in out.split() if x.isdigit()]
    return values[-1] if values else 0


@pytest.fixture
def small_tmpfs(tmp_path: Path) -> Iterator[Callable[..., Path]]:
    """Mount tiny tmpfs file systems (full or read-only) for failure injection."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mounts: list[Path] = []

    def mount(size: str = "1m", readonly: bool = False, fill: bool = False) -> Path:
        where = tmp_path / f"tmpfs{len(mounts)}"
        where.mkdir()
        subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)],
                       check=True)
        mounts.append(where)
        if fill:
            subprocess.run(["dd", "if=/dev/zero", f"of={where}/filler", "bs=64k"],
                           capture_output=True)
        if readonly:
            subprocess.run(["mount", "-o", "remount,ro", str(where)], check=True)
        return where
    yield mount
    for where in mounts:
        subprocess.run(["umount", "-l", str(where)], check=False)
