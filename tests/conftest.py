"""Shared fixtures: the real test guest, a driver per test, guests restored
instead of booted, cleanup checks; and the ``no_qemu`` marker.

A test marked ``no_qemu`` runs no QEMU program (neither ``qemu-system-*`` nor
``qemu-img``): `.ci/test` runs it once, not once per QEMU.  While it runs, every
QEMU program on PATH is one that fails the test, so that a wrong mark shows
(a QEMU named by its absolute path escapes that check: such a test is not
``no_qemu``).  A test marked ``system_qemu`` runs the QEMU libvirt runs
(``/usr/bin``) whatever PATH says: once is enough too.
"""
from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any, AsyncIterator, Awaitable, Callable, Iterator

import pytest

import qdriver
from qdriver.paths import socket_root

from .helpers import GuestImage, SavedGuests, qemu_pids
from .helpers.saved import disk_paths, guest_xml

pytest_plugins = ["pytester"]  # the pytest plugin's tests run pytest

HERE = Path(__file__).parent
IMAGES = HERE / "vm-images"
QEMU_PROGRAMS = ("qemu-system-x86_64", "qemu-img", "qemu-io", "qemu-nbd",
                 "qemu-storage-daemon", "virtiofsd")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "no_qemu: the test runs no QEMU program; it runs once, not per QEMU")
    config.addinivalue_line(
        "markers", "system_qemu: the test runs the system QEMU (libvirt's) whatever PATH "
                   "says; it runs once, not per QEMU")


NO_QEMU_LOG = "QDRIVER_TEST_NO_QEMU_LOG"
"""Where the stand-in QEMU programs note that a ``no_qemu`` test ran them."""


@pytest.fixture(scope="session")
def no_qemu_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory of stand-ins for the QEMU programs: each notes who ran it and fails."""
    where = tmp_path_factory.mktemp("no-qemu")
    for name in QEMU_PROGRAMS:
        program = where / name
        program.write_text(f"#!/bin/sh\necho \"{name} $*\" >>\"${{{NO_QEMU_LOG}:-/dev/null}}\"\n"
                           f"echo 'a no_qemu test ran {name}' >&2\nexit 97\n")
        program.chmod(0o755)
    return where


@pytest.fixture(autouse=True)
def _no_qemu_guard(request: pytest.FixtureRequest,
                   tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """For a ``no_qemu`` test: QEMU programs on PATH are stand-ins, and the test fails
    if it (or a process it started) ran one, even where it went on without.  (Its
    own patching, not the test's ``monkeypatch``: that one is undone after this.)"""
    if request.node.get_closest_marker("no_qemu") is None:
        yield
        return
    shims = request.getfixturevalue("no_qemu_path")
    log = tmp_path_factory.mktemp("no-qemu-log") / "ran"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("PATH", f"{shims}{os.pathsep}{os.environ.get('PATH', '')}")
        patch.setenv(NO_QEMU_LOG, str(log))
        yield
    ran = log.read_text() if log.exists() else ""
    assert ran == "", f"a test marked no_qemu ran QEMU programs: {ran}"


@pytest.fixture(scope="session")
def guest_image() -> GuestImage:
    """Build (or reuse) the tiny Debian guest once per session; xdist workers take
    turns, so that one builds and the others find it built."""
    out = Path(os.environ.get("QDRIVER_GUEST_DIR", IMAGES / "out"))
    out.mkdir(parents=True, exist_ok=True)
    with open(out / ".build.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        subprocess.run([sys.executable, str(IMAGES / "build.py"), str(out)], check=True,
                       stdout=subprocess.DEVNULL)
    return GuestImage(out)


@pytest.fixture(scope="session")
def saved_guests(guest_image: GuestImage, tmp_path_factory: pytest.TempPathFactory
                 ) -> SavedGuests:
    """Guests booted once in this session (this xdist worker) and saved."""
    return SavedGuests(tmp_path_factory.mktemp("saved-guests"), guest_image)


@pytest.fixture
def state_dir(tmp_path: Path) -> Path:
    return tmp_path / "state"


@pytest.fixture
async def driver(state_dir: Path) -> AsyncIterator[qdriver.Driver]:
    """A Driver on a fresh state dir; tears down every domain it left running."""
    drv = qdriver.Driver(state_dir)
    yield drv
    for dom in drv.list_domains():
        if dom.is_active:
            await dom.destroy()
        await dom.get_state()  # reaps a QEMU that died on its own, as `qdriver list` does
    for pid in qemu_pids(state_dir):
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
                   **kw: Any) -> qdriver.Domain:
        paths = disk_paths(tmp_path, name, disks if with_disk else 0)
        for path in paths:
            shutil.copyfile(guest_image.disk, path)
        return await driver.define_xml(guest_xml(guest_image, name, paths, **kw))
    return make


@pytest.fixture
def booted(driver: qdriver.Driver, saved_guests: SavedGuests, tmp_path: Path
           ) -> Callable[..., Awaitable[qdriver.Domain]]:
    """A running, counting test guest with private copies of its disks, restored from
    a guest saved once (`SavedGuests`): ``await booted(name="guest", disks=1, **xml)``
    with `make_domain`'s arguments."""
    async def boot(name: str = "guest", with_disk: bool = True, disks: int = 1,
                   **kw: Any) -> qdriver.Domain:
        return await saved_guests.restore(driver, tmp_path, name, disks if with_disk else 0,
                                          **kw)
    return boot


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
