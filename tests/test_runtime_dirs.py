"""Private runtime directories: sockets never go where another user can reach them."""
from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

import pytest

import qdriver
from qdriver import qmp
from qdriver.paths import runtime_base
from qdriver.qmp import MonitorConnectError

from .helpers import GuestImage, domain_xml

NOBODY = 65534


@pytest.fixture
def xdg(monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A runtime dir of our own, so the attack setups never touch /tmp's shared
    directories; short, as a real one is (a socket's path has 107 bytes at most, and
    an xdist worker's tmp_path is long)."""
    run = Path(tempfile.mkdtemp(prefix="xdg-", dir="/tmp"))
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(run))
    assert runtime_base() == run / "qdriver"
    yield run
    shutil.rmtree(run, ignore_errors=True)


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


@pytest.mark.no_qemu
async def test_monitor_in_a_writable_directory_is_refused(tmp_path: Path) -> None:
    shared = attacker_dir(tmp_path)
    with pytest.raises(MonitorConnectError, match="others may write to it|not this user's"):
        await qmp.connect(shared / "qmp.sock")


@pytest.mark.no_qemu
@pytest.mark.skipif(os.geteuid() != 0, reason="a directory of another user needs root")
def test_a_runtime_dir_others_may_write_is_not_used(tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """An $XDG_RUNTIME_DIR of another user, open to all, would let them swap our
    private directory for theirs: the sticky /tmp fallback is used instead."""
    evil = attacker_dir(tmp_path)
    os.chmod(evil, 0o777)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(evil))
    assert runtime_base() == Path(f"/tmp/qdriver-{os.getuid()}")


@pytest.mark.no_qemu
def test_a_runtime_path_through_a_file_is_refused_by_name(tmp_path: Path) -> None:
    from qdriver.paths import make_private_dirs
    (tmp_path / "base").mkdir(mode=0o700)
    (tmp_path / "base" / "plain").write_text("")
    with pytest.raises(qdriver.QDriverError, match="plain' is not a directory: refusing"):
        make_private_dirs(tmp_path / "base" / "plain" / "sockets", root=tmp_path / "base")
    with pytest.raises(qdriver.QDriverError, match="cannot create directory '.*plain/sockets' "
                       "for QEMU's sockets: Not a directory"):
        make_private_dirs(tmp_path / "base" / "plain" / "sockets", root=tmp_path / "base" /
                          "plain" / "sockets")


async def test_logs_and_domain_directories_are_private(driver: qdriver.Driver,
                                                       guest_image: GuestImage) -> None:
    """Another local user must not read a guest's console or QEMU's log."""
    old = os.umask(0o022)
    try:
        dom = await driver.define_xml(domain_xml(guest_image, "logs", None))
        dom.paths.console_log.write_text("old text\n")
        os.chmod(dom.paths.console_log, 0o644)  # left by an older qdriver
        await dom.start(paused=True)
        for d in (driver.state_dir / "domains", dom.paths.dir):
            assert d.stat().st_mode & 0o777 == 0o700, d
        for f in (dom.paths.console_log, dom.paths.qemu_log):
            assert f.stat().st_mode & 0o777 == 0o600, f
    finally:
        os.umask(old)
        await dom.destroy()


@pytest.mark.no_qemu
def test_a_parent_removed_meanwhile_is_made_again(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """Another process's clean-up removes the shared base once it is empty, between our
    mkdir of the base and of the directory below it: the chain is made again."""
    from qdriver import paths
    base = tmp_path / "base"
    target = base / "state" / "dom"
    real_mkdir = os.mkdir
    removed: list[Path] = []

    def racing_mkdir(path: str | os.PathLike[str], mode: int = 0o777) -> None:
        if Path(path) == base / "state" and not removed:
            os.rmdir(base)  # the other process's clean-up wins the race once
            removed.append(base)
        real_mkdir(path, mode)
    monkeypatch.setattr(os, "mkdir", racing_mkdir)
    os.mkdir(base, 0o700)
    paths.make_private_dirs(target, root=base)
    assert removed == [base] and target.is_dir()
    assert oct(target.stat().st_mode & 0o777) == "0o700"
