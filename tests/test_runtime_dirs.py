"""Private runtime directories: sockets never go where another user can reach them."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

import qdriver
from qdriver import qmp
from qdriver.qmp import MonitorConnectError
from qdriver.paths import runtime_base

from .conftest import GuestImage, domain_xml

NOBODY = 65534


@pytest.fixture
def xdg(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A runtime dir of our own, so the attack setups never touch /tmp."""
    run = tmp_path / "xdg"
    run.mkdir(mode=0o700)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(run))
    assert runtime_base() == run / "qdriver"
    return run


def attacker_dir(tmp_path: Path) -> Path:
    """A world-writable directory owned by another user (as /tmp/evil would be)."""
    evil = tmp_path / "evil"
    evil.mkdir()
    os.chmod(evil, 0o1777)
    if os.geteuid() == 0:
        os.chown(evil, NOBODY, NOBODY)
    return evil


async def start_refused(driver: qdriver.Driver, guest_image: GuestImage, why: str) -> None:
    dom = await driver.define_xml(domain_xml(guest_image, "rd", None))
    with pytest.raises(qdriver.QDriverError) as err:
        await dom.start(paused=True)
    assert str(runtime_base()) in str(err.value) and why in str(err.value)
    assert dom.state is qdriver.DomainState.SHUTOFF


async def test_symlinked_base_is_refused(xdg: Path, tmp_path: Path, driver: qdriver.Driver,
                                         guest_image: GuestImage) -> None:
    evil = attacker_dir(tmp_path)
    (xdg / "qdriver").symlink_to(evil)
    await start_refused(driver, guest_image, "symbolic link")
    assert list(evil.iterdir()) == []  # nothing was created in the other user's directory


@pytest.mark.skipif(os.geteuid() != 0, reason="making a directory another user owns needs root")
async def test_base_owned_by_another_user_is_refused(xdg: Path, driver: qdriver.Driver,
                                                     guest_image: GuestImage) -> None:
    (xdg / "qdriver").mkdir(mode=0o700)
    os.chown(xdg / "qdriver", NOBODY, NOBODY)
    await start_refused(driver, guest_image, f"owned by uid {NOBODY}")


async def test_world_writable_base_is_refused(xdg: Path, driver: qdriver.Driver,
                                              guest_image: GuestImage) -> None:
    (xdg / "qdriver").mkdir()
    os.chmod(xdg / "qdriver", 0o777)
    await start_refused(driver, guest_image, "open to other users")


async def test_private_dirs_are_made_private(xdg: Path, driver: qdriver.Driver,
                                             guest_image: GuestImage) -> None:
    dom = await driver.define_xml(domain_xml(guest_image, "ok", None))
    old = os.umask(0)  # the most permissive umask must not matter
    try:
        await dom.start(paused=True)
        for d in (runtime_base(), dom.paths.sockets.parent, dom.paths.sockets):
            st = d.lstat()
            assert (st.st_mode & 0o777, st.st_uid) == (0o700, os.geteuid()), d
    finally:
        os.umask(old)
        await dom.destroy()


async def test_monitor_in_a_writable_directory_is_refused(tmp_path: Path) -> None:
    shared = attacker_dir(tmp_path)
    with pytest.raises(MonitorConnectError, match="others may write to it|not this user's"):
        await qmp.connect(shared / "qmp.sock")
