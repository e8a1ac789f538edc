"""The standby QEMU: after a template revert, the next one's QEMU is started ahead;
the next revert takes it over, and one that died or no longer fits is discarded.
Real guests: the guest counts on from the snapshot after every revert."""
from __future__ import annotations

import os
import signal
from collections.abc import Callable
from pathlib import Path

import anyio
import pytest

import qdriver
from qdriver.launch import standby
from qdriver.ops.revert_plan import standby_problem
from qdriver.xml.domain import DomainDef

from .helpers import GuestImage, qemu_pids, wait_console
from .helpers.checks import assert_resumes_from
from .helpers.guest import console_offset, counters_after, domain_xml
from .helpers.templates import counting_guest, generation_id, memory_snapshot


async def standby_pid(dom: qdriver.Domain) -> tuple[standby.StandbyRecord, int]:
    """The domain's standby record and its QEMU's pid (once it wrote its pidfile)."""
    rec = standby.read(dom.paths)
    assert rec is not None and standby.alive(dom.paths, rec)
    pidfile = dom.paths.in_slot(rec.slot).pidfile
    await wait_for(pidfile.exists)
    return rec, int(pidfile.read_text())


async def wait_for(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    with anyio.fail_after(timeout):
        while not condition():
            await anyio.sleep(0.01)


async def template_guest(driver: qdriver.Driver, image: GuestImage, tmp_path: Path
                         ) -> tuple[qdriver.Domain, int]:
    """A counting guest with a template snapshot ``t``; its counter at the snapshot."""
    dom = await counting_guest(driver, image, tmp_path, extra="<genid/>")
    offset = console_offset(dom)
    await dom.snapshot_create_xml(memory_snapshot("t", tmp_path), template=True)
    return dom, (await counters_after(dom, offset, 1))[0]


async def revert_and_check(dom: qdriver.Domain, at_snapshot: int) -> None:
    """Let the guest count past the snapshot, revert, and see it count on from it."""
    before = at_snapshot + 3
    await wait_console(dom, f"COUNTER {before}")
    offset = console_offset(dom)
    await dom.revert_to_snapshot("t")
    assert dom.state == qdriver.DomainState.RUNNING
    assert_resumes_from(await counters_after(dom, offset, 3), at_snapshot, before)


async def test_a_template_revert_takes_over_the_qemu_started_ahead(
        driver: qdriver.Driver, guest_image: GuestImage, tmp_path: Path,
        state_dir: Path) -> None:
    dom, at_snapshot = await template_guest(driver, guest_image, tmp_path)
    await revert_and_check(dom, at_snapshot)  # no standby yet: it starts a QEMU
    first_genid = await generation_id(dom)
    ahead, pid = await standby_pid(dom)
    assert ahead.snapshot == "t" and Path(ahead.overlays["vda"]).exists()
    assert sorted(qemu_pids(state_dir)) == sorted([dom.runtime.peek().pid, pid])  # type: ignore[union-attr]

    await revert_and_check(dom, at_snapshot)
    rec = dom.runtime.peek()
    assert rec is not None and rec.pid == pid and rec.slot == ahead.slot, "not taken over"
    assert dom.definition.disks[0].source == ahead.overlays["vda"]
    genid = await generation_id(dom)
    assert genid == dom.definition.genid and genid != first_genid
    following, _ = await standby_pid(dom)
    assert following.slot != ahead.slot
    assert_only_current_overlays(tmp_path, dom)  # the one the revert discarded went
    assert len(qemu_pids(state_dir)) == 2

    await revert_and_check(dom, at_snapshot)  # a QEMU that was a standby is replaced too
    last, _ = await standby_pid(dom)
    await dom.destroy()
    assert qemu_pids(state_dir) == [], "the standby outlived the domain's QEMU"
    assert not dom.paths.standby.exists()
    assert not Path(last.overlays["vda"]).exists()
    assert not dom.paths.in_slot(last.slot).sockets.exists()


def assert_only_current_overlays(where: Path, dom: qdriver.Domain) -> None:
    """The revert overlays in ``where`` are the domain's and its standby's: what a
    discarded standby or an earlier revert made is gone."""
    ahead = standby.read(dom.paths)
    now = {dom.definition.disks[0].source, *(ahead.overlays.values() if ahead else ())}
    assert {str(p) for p in where.glob("src.*") if p.suffix != ".qcow2"} == now


async def test_a_standby_that_died_or_no_longer_fits_is_discarded(
        driver: qdriver.Driver, guest_image: GuestImage, tmp_path: Path,
        state_dir: Path) -> None:
    dom, at_snapshot = await template_guest(driver, guest_image, tmp_path)
    await dom.revert_to_snapshot("t")
    _, pid = await standby_pid(dom)
    os.kill(pid, signal.SIGKILL)
    await revert_and_check(dom, at_snapshot)
    assert dom.runtime.peek().pid != pid  # type: ignore[union-attr]
    assert_only_current_overlays(tmp_path, dom)

    _, pid = await standby_pid(dom)
    memory_file = tmp_path / "t.mem"
    st = memory_file.stat()
    os.utime(memory_file, ns=(st.st_atime_ns, st.st_mtime_ns + 1))  # not what it loads
    await revert_and_check(dom, at_snapshot)
    assert dom.runtime.peek().pid != pid  # type: ignore[union-attr]
    assert_only_current_overlays(tmp_path, dom)
    assert pid not in qemu_pids(state_dir) and len(qemu_pids(state_dir)) == 2


async def test_standbys_off_and_made_on_request(guest_image: GuestImage, tmp_path: Path,
                                                state_dir: Path) -> None:
    """Off: a revert leaves no second QEMU; `prepare_standby` makes one, loaded, that
    the next revert takes over."""
    driver = qdriver.Driver(state_dir, standby=False)
    dom, at_snapshot = await template_guest(driver, guest_image, tmp_path)
    await revert_and_check(dom, at_snapshot)
    assert not dom.paths.standby.exists() and len(qemu_pids(state_dir)) == 1
    assert await dom.prepare_standby("t")
    ahead, pid = await standby_pid(dom)
    assert ahead.loaded
    assert await dom.prepare_standby("t")  # it fits: kept
    assert standby.read(dom.paths) == ahead
    await revert_and_check(dom, at_snapshot)
    assert dom.runtime.peek().pid == pid  # type: ignore[union-attr]
    assert not dom.paths.standby.exists()
    await dom.destroy()


def parts(devices: str = "", serial: str = "pty") -> DomainDef:
    image = GuestImage(Path("/nonexistent"))
    xml = domain_xml(image, "g", None, serial=serial, extra_devices=devices)
    if devices == "UEFI":
        return DomainDef.parse(xml.replace("UEFI", "").replace("<os>", "<os firmware='efi'>"))
    return DomainDef.parse(xml)


@pytest.mark.parametrize(("devices", "serial", "problem"), [
    ("", "pty", None),
    ("<interface type='user'/>", "pty", None),
    ("<channel type='unix'><target type='virtio' name='org.qemu.guest_agent.0'/></channel>",
     "pty", None),
    ("<interface type='user'><portForward proto='tcp'><range start='2222' to='22'/>"
     "</portForward></interface>", "pty", "a port forwarded from the host"),
    ("<interface type='user'><backend type='passt'/></interface>", "pty",
     "an interface of type 'user' (backend 'passt')"),
    ("<interface type='mcast'><source address='230.0.0.1' port='5558'/></interface>", "pty",
     "an interface of type 'mcast'"),
    ("<serial type='file'><source path='/tmp/console.log'/></serial>", "pty",
     "a serial of type 'file' at '/tmp/console.log'"),
    ("<channel type='unix'><source mode='bind' path='/tmp/x.sock'/><target type='virtio' "
     "name='x.0'/></channel>", "pty", "a channel of type 'unix' at '/tmp/x.sock'"),
    ("<graphics type='vnc'/>", "pty", "a graphical display"),
    ("UEFI", "pty", "a UEFI variable store"),
])
def test_what_a_second_qemu_cannot_have_beside_the_first(devices: str, serial: str,
                                                         problem: str | None) -> None:
    found = standby_problem(parts(devices, serial))
    assert found == problem if problem is None else (found or "").startswith(problem), found
