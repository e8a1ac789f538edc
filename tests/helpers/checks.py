"""Checks several test modules make of a guest's counter and of memory files."""
from __future__ import annotations

from pathlib import Path

from qdriver.memory.header import read_header


def within(value: int, before: int, after: int) -> bool:
    """The guest syncs after each append; allow one value of lag either way."""
    return before - 1 <= value <= after + 1


def assert_resumes_from(counters: list[int], snap_disk: int, before_revert: int) -> None:
    """The guest counts on from its disk's value at the snapshot. The serial console
    lags the guest a little, so lines the guest had queued at the snapshot may come
    first; the last of the first few counters tells."""
    assert counters[-1] < before_revert, (counters, before_revert)
    assert snap_disk <= counters[-1] <= snap_disk + len(counters) + 2, (counters, snap_disk)


def assert_save_image(path: Path) -> None:
    """A complete memory file in libvirt's format, private to its owner."""
    header = read_header(path)
    assert header.complete
    with open(path, "rb") as f:
        assert f.read(16) == b"LibvirtQemudSave"
        f.seek(header.stream_offset)
        assert f.read(4) == b"QEVM", "a QEMU migration stream follows the header"
    assert "<domain" in header.domain_xml
    assert (path.stat().st_mode & 0o777) == 0o600
