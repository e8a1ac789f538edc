"""The test guest: its image, its domain XML, and what it prints on its console.

The guest (``tests/vm-images/build.py``) counts: every 0.1 s it appends the next
value to ``/counter`` on its disk and prints ``COUNTER n`` on the serial
console, which qdriver logs.  Tests read progress from those lines, never from
the clock.
"""
from __future__ import annotations

import re
import time
from dataclasses import dataclass
from pathlib import Path

import anyio

import qdriver

COUNTER_LINE = re.compile(r"^COUNTER (\d+)\r?\n", re.M)
"""A whole COUNTER line (the console may hold a line's start before its end)."""


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


def domain_xml(image: GuestImage, name: str, disk: Path | None, *, cmdline: str = "",
               memory_mib: int = 256, dtype: str = "qemu", serial: str = "pty",
               extra_devices: str = "", disk_format: str = "qcow2",
               extra_disks: tuple[Path, ...] = (), uuid: str | None = None,
               memory_backing: str = "") -> str:
    """A libvirt domain XML for the test guest (vda, then vdb, vdc, ...)."""
    disks = ([disk] if disk is not None else []) + list(extra_disks)
    disk_xml = "".join(f"""
    <disk type='file' device='disk'>
      <driver name='qemu' type='{disk_format}'/>
      <source file='{path}'/>
      <target dev='vd{chr(ord("a") + i)}' bus='virtio'/>
    </disk>""" for i, path in enumerate(disks))
    args = "console=ttyS0 quiet panic=-1 " + ("qd.disk=none " if disk is None else "") + cmdline
    uuid_xml = f"\n  <uuid>{uuid}</uuid>" if uuid else ""
    return f"""<domain type='{dtype}'>
  <name>{name}</name>{uuid_xml}
  <memory unit='MiB'>{memory_mib}</memory>{memory_backing}
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


def console_text(dom: qdriver.Domain, after: int = 0) -> str:
    """The console log past offset ``after`` (empty before QEMU made it)."""
    try:
        return dom.paths.console_log.read_text(errors="replace")[after:]
    except FileNotFoundError:
        return ""


def console_offset(dom: qdriver.Domain) -> int:
    """Where the console text ends now (in characters, as `wait_console` counts)."""
    return len(console_text(dom))


async def wait_console(dom: qdriver.Domain, marker: str, timeout: float = 60.0,
                       after: int = 0) -> str:
    """Wait until ``marker`` appears in the console log (past offset ``after``)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = console_text(dom, after)
        if marker in text:
            return text
        await anyio.sleep(0.05)
    raise AssertionError(f"'{marker}' not on the console of {dom.name} within {timeout} s")


def counters(text: str) -> list[int]:
    """The values of the whole COUNTER lines in a console text."""
    return [int(v) for v in COUNTER_LINE.findall(text)]


def last_counter(dom: qdriver.Domain) -> int:
    """The last COUNTER value the guest printed."""
    values = counters(console_text(dom))
    return values[-1] if values else 0


async def counters_after(dom: qdriver.Domain, offset: int, count: int = 2,
                         timeout: float = 60.0) -> list[int]:
    """The next ``count`` COUNTER values printed after console offset ``offset``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        values = counters(console_text(dom, offset))
        if len(values) >= count:
            return values[:count]
        await anyio.sleep(0.05)
    raise AssertionError(f"{count} COUNTER lines not on the console of {dom.name} past "
                         f"offset {offset} within {timeout} s")


async def keeps_counting(dom: qdriver.Domain, after: int, timeout: float = 30.0) -> None:
    """Wait until the guest printed three values past ``after``."""
    await wait_console(dom, f"COUNTER {after + 3}", timeout=timeout)
