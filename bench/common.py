"""What the benchmarks share: the test guest on a private disk copy, booted."""
from __future__ import annotations

import shutil
import sys
import time
from pathlib import Path

import anyio

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT))

import qdriver  # noqa: E402
from tests.helpers.guest import GuestImage, domain_xml  # noqa: E402

IMAGES = ROOT / "tests" / "vm-images" / "out"


def guest_xml(work: Path, name: str, mib: int, cmdline: str, with_disk: bool = True) -> str:
    """The test guest's domain XML; its disk is a fresh copy in ``work``."""
    disk = None
    if with_disk:
        disk = work / f"{name}-vda.qcow2"
        shutil.copyfile(IMAGES / "disk.qcow2", disk)
    return domain_xml(GuestImage(IMAGES), name, disk, cmdline=cmdline, memory_mib=mib)


async def wait_booted(dom: qdriver.Domain, settle: float = 0.0, timeout: float = 300) -> None:
    """Until the guest printed GUEST-READY (then ``settle`` seconds more)."""
    deadline = time.monotonic() + timeout
    while b"GUEST-READY" not in dom.paths.console_log.read_bytes():
        assert time.monotonic() < deadline, "guest did not boot"
        await anyio.sleep(0.1)
    await anyio.sleep(settle)


def fill_cmdline(mib: int) -> str:
    """1 GiB guests carry 800 MiB of data in RAM; smaller ones are idle."""
    return "qd.fill=800 qd.fillmode=repeat qd.quiet=1" if mib >= 1024 else "qd.quiet=1"
