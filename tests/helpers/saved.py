"""Running guests without booting them: booted once per test session, saved, and
restored onto private copies of their disks for every test that needs one.

A boot on TCG takes 3-5 s; a restore of the saved guest a fraction of that.  A
guest is saved once per hardware (the domain XML's arguments) and per pytest
process, so xdist workers share nothing.  Each test gets its own disks, copied
from the images as the guest left them at the save, and its own domain,
restored with ``Driver.restore(xml=...)`` (``virsh restore --xml``): the same
hardware, its own disk paths.  Tests that check the boot itself boot.
"""
from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import qdriver
from qdriver.paths import socket_root

from .guest import GuestImage, counters_after, domain_xml, wait_console

SAVED_AT = "COUNTER 5"
"""How far the guest got before its save: booted, its disk mounted, counting."""


@dataclass(frozen=True)
class SavedGuest:
    """A guest saved once: its memory file, and its disks as it left them."""

    save_file: Path
    disks: tuple[Path, ...]
    uuid: str


def disk_paths(where: Path, name: str, count: int) -> list[Path]:
    """Where a domain's disk copies go: ``NAME-vda.qcow2``, ``NAME-vdb.qcow2``..."""
    return [where / f"{name}-vd{chr(ord('a') + i)}.qcow2" for i in range(count)]


def guest_xml(image: GuestImage, name: str, disks: list[Path], uuid: str | None = None,
              **kw: Any) -> str:
    """The test guest's domain XML on these disks (none: the counter is in RAM)."""
    return domain_xml(image, name, disks[0] if disks else None,
                      extra_disks=tuple(disks[1:]), uuid=uuid, **kw)


class SavedGuests:
    """Guests saved in this test session, one per hardware."""

    def __init__(self, root: Path, image: GuestImage) -> None:
        self.root = root
        self.image = image
        self._saved: dict[str, SavedGuest] = {}

    async def saved(self, name: str, disks: int, **kw: Any) -> SavedGuest:
        """The guest with this hardware, saved (booted and saved the first time)."""
        key = repr((name, disks, sorted(kw.items())))
        if key not in self._saved:
            self._saved[key] = await self._boot_and_save(f"g{len(self._saved)}", name,
                                                         disks, kw)
        return self._saved[key]

    async def _boot_and_save(self, tag: str, name: str, disks: int,
                             kw: dict[str, Any]) -> SavedGuest:
        where = self.root / tag
        where.mkdir(parents=True)
        paths = disk_paths(where, name, disks)
        for path in paths:
            shutil.copyfile(self.image.disk, path)
        state_dir = where / "state"
        driver = qdriver.Driver(state_dir)
        dom = await driver.define_xml(guest_xml(self.image, name, paths, **kw))
        save_file = where / "guest.sav"
        try:
            await dom.start()
            await wait_console(dom, SAVED_AT)
            await dom.save(save_file)
        finally:  # a guest that failed to come up is not left running
            if dom.is_active:
                await dom.destroy()
            await driver.undefine(dom)
            shutil.rmtree(socket_root(state_dir), ignore_errors=True)
        return SavedGuest(save_file, tuple(paths), dom.uuid)

    async def restore(self, driver: qdriver.Driver, where: Path, name: str = "guest",
                      disks: int = 1, **kw: Any) -> qdriver.Domain:
        """A domain of ``driver`` running the saved guest on copies of its disks in
        ``where``, once it printed a COUNTER line of its own."""
        saved = await self.saved(name, disks, **kw)
        paths = disk_paths(where, name, disks)
        for src, dst in zip(saved.disks, paths):
            shutil.copyfile(src, dst)
        xml = guest_xml(self.image, name, paths, uuid=saved.uuid, **kw)
        dom = await driver.restore(saved.save_file, xml=xml)
        await counters_after(dom, 0, count=1)  # its console log is its own
        return dom
