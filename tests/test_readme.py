"""The README is the newcomer's page: its domain XML boots, and it stays short.

The XML is taken from the README as written; only the directory of the test
guest (``/var/tmp/qdriver-guest`` there) is this test's copy of it.
"""
from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

import qdriver

from .helpers import GuestImage, wait_console

ROOT = Path(__file__).parent.parent
README = ROOT / "README.md"
GUEST_DIR = "/var/tmp/qdriver-guest"


def readme_guest_xml() -> str:
    text = README.read_text()
    marker = text.index("<!-- bootable-guest-xml:")
    match = re.search(r"```xml\n(.*?)```", text[marker:], re.S)
    assert match, "the README lost its domain XML"
    return match.group(1)


async def test_the_readme_domain_xml_boots(driver: qdriver.Driver, guest_image: GuestImage,
                                           tmp_path: Path) -> None:
    guest = tmp_path / "guest"
    guest.mkdir()
    for name, source in (("vmlinux", guest_image.kernel), ("initrd.img", guest_image.initrd),
                         ("disk.qcow2", guest_image.disk)):
        shutil.copyfile(source, guest / name)
    xml = readme_guest_xml()
    assert xml.count(GUEST_DIR) == 3
    dom = await driver.define_xml(xml.replace(GUEST_DIR, str(guest)))
    await dom.start()
    await wait_console(dom, "GUEST-READY")
    await wait_console(dom, "COUNTER 2")  # the guest writes to the README's disk
    await dom.destroy()


@pytest.mark.no_qemu
def test_the_readme_is_a_short_page_and_the_rest_is_in_docs() -> None:
    text = README.read_text()
    assert len(text.splitlines()) <= 300
    architecture = text.split("## Architecture\n", 1)[1].split("\n## ", 1)[0]
    assert 0 < len([line for line in architecture.splitlines() if line.strip()]) <= 10
    for link in re.findall(r"\]\((docs/[^)]+)\)", text):
        assert (ROOT / link).is_file(), f"the README links to a missing {link}"
    assert (ROOT / "LICENSE").is_file()
