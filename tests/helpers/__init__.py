"""What the tests share: the test guest and its console, images read with
qemu-img, the CLI run as a process, guests restored instead of booted, and the
checks that nothing was left half-done.  Test modules import from here, never
from each other."""
from __future__ import annotations

from typing import Awaitable, Callable

import qdriver

from .checks import assert_resumes_from, assert_save_image, within
from .cli import run_cli
from .consistency import assert_consistent, named_files
from .guest import (
    GuestImage,
    console_offset,
    console_text,
    counters,
    counters_after,
    domain_xml,
    keeps_counting,
    last_counter,
    wait_console,
)
from .images import (
    backing_chain,
    backing_of,
    disk_counter,
    disk_source,
    guest_view,
    image_info,
    internal_snapshots,
    qemu_img_check,
    sha256,
)
from .processes import alive, qemu_pids
from .saved import SavedGuests

MakeDomain = Callable[..., Awaitable[qdriver.Domain]]
"""The ``make_domain`` and ``booted`` fixtures: ``await make(name=..., disks=..., **xml)``."""

__all__ = [
    "GuestImage", "MakeDomain", "SavedGuests", "alive", "assert_consistent", "assert_resumes_from",
    "assert_save_image", "within", "backing_chain", "backing_of",
    "console_offset", "console_text", "counters", "counters_after", "disk_counter",
    "disk_source",
    "domain_xml", "guest_view", "image_info", "internal_snapshots", "keeps_counting",
    "last_counter", "named_files", "qemu_img_check", "qemu_pids", "run_cli", "sha256",
    "wait_console",
]
