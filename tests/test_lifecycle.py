"""Domain lifecycle on a real QEMU running the real test guest."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Awaitable, Callable

import anyio
import pytest

import qdriver
from qdriver import DomainState
from qdriver.paths import socket_root

from .helpers import (
    GuestImage,
    MakeDomain,
    disk_source,
    domain_xml,
    last_counter,
    qemu_pids,
    run_cli,
    wait_console,
)


async def test_define_start_suspend_resume_shutdown(make_domain: MakeDomain) -> None:
    dom = await make_domain()
    await dom.start()
    assert dom.state == DomainState.RUNNING and dom.id is not None
    await wait_console(dom, "GUEST-READY disk=vda start=0")
    await wait_console(dom, "COUNTER 3")

    await dom.suspend()
    assert await dom.get_state() == (DomainState.PAUSED, "user")
    frozen = last_counter(dom)
    await anyio.sleep(0.6)
    assert last_counter(dom) == frozen, "a paused guest kept counting"

    await dom.resume()
    assert (await dom.get_state())[0] == DomainState.RUNNING
    await wait_console(dom, f"COUNTER {frozen + 3}")

    assert await dom.shutdown(timeout=30) is True, "the guest ignored the ACPI power button"
    assert "GUEST-POWEROFF" in dom.paths.console_log.read_text()
    assert dom.state_reason() == (DomainState.SHUTOFF, "shutdown")
    assert dom.id is None


async def test_destroy_running_guest(booted: MakeDomain, state_dir: Path) -> None:
    dom = await booted()
    t = time.monotonic()
    await dom.destroy()
    assert time.monotonic() - t < 5
    assert dom.state_reason() == (DomainState.SHUTOFF, "destroyed")
    assert qemu_pids(state_dir) == []
    assert not dom.paths.runtime.exists() and not dom.paths.qmp.exists()
    with pytest.raises(qdriver.OperationInvalidError, match="domain is not running"):
        await dom.destroy()


async def test_reset_boots_the_guest_again_in_the_same_qemu(booted: MakeDomain,
                                                           state_dir: Path) -> None:
    dom = await booted()
    pid = dom.runtime.peek().pid  # type: ignore[union-attr]
    offset = dom.paths.console_log.stat().st_size
    out = run_cli(state_dir, "reset", "guest").stdout.decode()
    assert "Domain 'guest' was reset" in out
    await wait_console(dom, "GUEST-READY", 120, after=offset)  # booted from the start
    assert dom.state == DomainState.RUNNING and dom.runtime.peek().pid == pid  # type: ignore[union-attr]
    await dom.destroy()
    with pytest.raises(qdriver.OperationInvalidError, match="domain is not running"):
        await dom.reset()


async def test_a_domain_console_reads_types_and_waits(make_domain: MakeDomain) -> None:
    dom = await make_domain(cmdline="qd.shell=1")
    await dom.start()
    with dom.console(from_start=True) as whole:
        await whole.wait_async("GUEST-READY", 120)
        with dom.console() as now:
            now.write("echo HI$((6*7))\n")
            assert (await now.wait_async(r"^HI42", 30)).group(0) == "HI42"
            assert "GUEST-READY" not in now.text()  # only what came since it began
        assert "HI42" in whole.text()
        with pytest.raises(TimeoutError, match="/NEVER/ not on the console of 'guest'"):
            whole.wait("NEVER", 0.2)
    await dom.destroy()


async def test_start_paused(make_domain: MakeDomain) -> None:
    dom = await make_domain()
    await dom.start(paused=True)
    assert await dom.get_state() == (DomainState.PAUSED, "user")
    await anyio.sleep(1.0)
    assert "GUEST-READY" not in dom.paths.console_log.read_text(), "vCPUs ran while paused"
    await dom.resume()
    await wait_console(dom, "GUEST-READY")


async def test_second_process_sees_and_controls_domain(make_domain: MakeDomain,
                                                       state_dir: Path) -> None:
    dom = await make_domain()
    await dom.start()
    listing = run_cli(state_dir, "list", "--all").stdout.decode()
    assert f" {dom.id} " in listing and "guest" in listing and "running" in listing
    run_cli(state_dir, "suspend", "guest")
    assert (await dom.get_state())[0] == DomainState.PAUSED
    assert run_cli(state_dir, "domstate", "guest").stdout.decode().strip() == "paused"
    run_cli(state_dir, "resume", "guest")
    assert (await dom.get_state())[0] == DomainState.RUNNING
    run_cli(state_dir, "destroy", "guest")
    assert dom.state == DomainState.SHUTOFF


async def test_kill_9_is_noticed_as_crash(booted: MakeDomain, state_dir: Path) -> None:
    dom = await booted()
    pid = int(dom.paths.pidfile.read_text())
    os.kill(pid, signal.SIGKILL)
    with anyio.fail_after(30):  # until the supervisor recorded the exit
        while dom.state != DomainState.SHUTOFF:
            await anyio.sleep(0.01)
    assert dom.state_reason() == (DomainState.SHUTOFF, "crashed")
    assert await dom.get_state() == (DomainState.SHUTOFF, "crashed")
    assert not dom.paths.runtime.exists() and not dom.paths.qmp.exists()
    out = run_cli(state_dir, "domstate", "guest", "--reason").stdout.decode().strip()
    assert out == "shut off (crashed)"


async def test_new_driver_reconnects_to_qemu_started_by_another_process(
        make_domain: MakeDomain, state_dir: Path) -> None:
    await make_domain()
    run_cli(state_dir, "start", "guest")  # that process has exited; QEMU lives on
    drv = qdriver.Driver(state_dir)
    dom = drv.lookup("guest")
    assert dom.state == DomainState.RUNNING
    await wait_console(dom, "GUEST-READY")
    await dom.suspend()
    assert (await qdriver.Driver(state_dir).lookup("guest").get_state())[0] == \
        DomainState.PAUSED
    await dom.resume()
    async with dom.monitor() as mon:
        status = await mon.execute("query-status")
    assert status["status"] == "running"
    await dom.destroy()


async def test_shutdown_escalates_when_guest_ignores_acpi(make_domain: MakeDomain) -> None:
    dom = await make_domain(cmdline="qd.noacpi=1")
    await dom.start()
    await wait_console(dom, "GUEST-READY")
    with pytest.raises(qdriver.ShutdownTimeoutError, match="did not shut down within 1 s") \
            as caught:
        await dom.shutdown(timeout=1.0, escalate=False)
    assert not isinstance(caught.value, qdriver.qmp.MonitorTimeoutError)
    assert dom.state == DomainState.RUNNING  # left running, as asked
    t = time.monotonic()
    assert await dom.shutdown(timeout=2.0) is False
    elapsed = time.monotonic() - t
    assert 2.0 <= elapsed < 8.0
    assert dom.state_reason() == (DomainState.SHUTOFF, "destroyed")
    assert "GUEST-POWEROFF" not in dom.paths.console_log.read_text()


async def test_qemu_killed_during_an_ignored_shutdown_is_a_crash(make_domain: MakeDomain,
                                                                   state_dir: Path) -> None:
    """Asked to power off, the guest ignored it, and then QEMU was killed: that is a
    crash, not a shutdown."""
    dom = await make_domain(cmdline="qd.noacpi=1")
    await dom.start()
    await wait_console(dom, "GUEST-READY")
    proc = subprocess.Popen([sys.executable, "-m", "qdriver", "--state-dir", str(state_dir),
                             "shutdown", "guest", "--timeout", "60"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        with anyio.fail_after(60):  # until the shutdown was asked
            rec = dom.runtime.peek()
            while rec is None or rec.stop_requested != "shutdown":
                await anyio.sleep(0.02)
                rec = dom.runtime.peek()
        os.kill(rec.pid, signal.SIGKILL)
        proc.wait(timeout=60)
    finally:
        proc.kill()
        proc.communicate()
    assert await dom.get_state() == (DomainState.SHUTOFF, "crashed")
    out = run_cli(state_dir, "domstate", "guest", "--reason").stdout.decode().strip()
    assert out == "shut off (crashed)"


async def test_lock_makes_second_operation_wait_then_fail(make_domain: MakeDomain,
                                                          state_dir: Path) -> None:
    dom = await make_domain()
    await dom.start(paused=True)
    impatient = qdriver.Driver(state_dir, lock_timeout=0.3).lookup("guest")
    async with dom.monitor():
        t = time.monotonic()
        with pytest.raises(qdriver.DomainBusyError, match="domain 'guest' is busy"):
            await impatient.resume()
        assert time.monotonic() - t >= 0.3
    await impatient.resume()  # free again
    assert (await dom.get_state())[0] == DomainState.RUNNING


async def test_console_attach_and_detach(booted: MakeDomain, state_dir: Path) -> None:
    dom = await booted()
    proc = subprocess.Popen([sys.executable, "-m", "qdriver", "--state-dir", str(state_dir),
                             "console", "guest"], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdin is not None and proc.stdout is not None
    stdout = proc.stdout.fileno()
    seen = b""
    with anyio.fail_after(60):  # the guest prints a COUNTER line every 100 ms
        while seen.count(b"COUNTER ") < 5:
            chunk = await anyio.to_thread.run_sync(os.read, stdout, 4096,
                                                   abandon_on_cancel=True)
            assert chunk, f"console exited before Ctrl-]: {seen!r}"
            seen += chunk
    proc.stdin.write(b"\x1d")  # Ctrl-] detaches
    proc.stdin.flush()
    out, err = await anyio.to_thread.run_sync(lambda: proc.communicate(timeout=30))
    assert proc.returncode == 0, err.decode()
    text = (seen + out).decode(errors="replace")
    assert "Connected to domain 'guest'" in text and "Escape character is ^]" in text
    assert text.count("COUNTER ") >= 5, "guest output did not come through the console"
    assert dom.state == DomainState.RUNNING, "detaching must not stop the guest"


async def test_dumpxml_live_has_id_and_keeps_definition(make_domain: MakeDomain,
                                                        state_dir: Path) -> None:
    dom = await make_domain()
    inactive = dom.xml_desc()
    await dom.start(paused=True)
    live = run_cli(state_dir, "dumpxml", "guest").stdout.decode()
    assert live.startswith(f"<domain type='qemu' id='{dom.id}'>")
    assert run_cli(state_dir, "dumpxml", "--inactive", "guest").stdout.decode() == inactive
    await dom.destroy()


# -- bad input: a clear error and nothing left behind ---------------------------

def assert_nothing_left(dom: qdriver.Domain, state_dir: Path) -> None:
    assert qemu_pids(state_dir) == []
    assert not dom.paths.runtime.exists()
    assert not dom.paths.pidfile.exists()
    assert not dom.paths.qmp.exists() and not dom.paths.sockets.exists()
    assert dom.state == DomainState.SHUTOFF


async def test_missing_disk_image(make_domain: MakeDomain, state_dir: Path) -> None:
    dom = await make_domain()
    Path(disk_source(dom)).unlink()
    with pytest.raises(qdriver.SystemError_,
                       match=r"Cannot access storage file '.*guest-vda\.qcow2'"):
        await dom.start()
    assert_nothing_left(dom, state_dir)


async def test_qemu_refusing_to_start_reports_its_error(make_domain: MakeDomain, state_dir: Path,
                                                        tmp_path: Path) -> None:
    dom = await make_domain(name="rawdisk")
    Path(disk_source(dom)).write_bytes(b"\0" * 65536)  # not a qcow2 image
    with pytest.raises(qdriver.InternalError, match="qcow2"):
        await dom.start()
    assert_nothing_left(dom, state_dir)
    assert dom.state_reason() == (DomainState.SHUTOFF, "failed")


async def test_kvm_unusable_is_reported(make_domain: MakeDomain, state_dir: Path,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    dom = await make_domain(dtype="kvm")
    from qdriver.caps import accel
    monkeypatch.setattr(accel, "probe_kvm", lambda: accel.AccelStatus(
        "kvm", False, "/dev/kvm is provided by kvm_pvm (PVM)"))
    with pytest.raises(qdriver.ConfigUnsupportedError,
                       match="Domain requires KVM, but it is not usable here: .*kvm_pvm"):
        await dom.start()
    assert_nothing_left(dom, state_dir)


async def test_duplicate_name_and_running_start(make_domain: MakeDomain,
                                                driver: qdriver.Driver) -> None:
    dom = await make_domain()
    again = dom.xml_desc().replace(dom.uuid, "00000000-0000-0000-0000-000000000001")
    with pytest.raises(qdriver.OperationFailedError,
                       match=f"domain 'guest' already exists with uuid {dom.uuid}"):
        await driver.define_xml(again)
    await driver.define_xml(dom.xml_desc())  # same name and uuid: a redefinition
    assert driver.lookup_by_uuid(dom.uuid.upper()).name == "guest"
    with pytest.raises(qdriver.NoDomainError, match="no domain with matching uuid"):
        driver.lookup_by_uuid("00000000-0000-0000-0000-000000000009")
    await dom.start(paused=True)
    with pytest.raises(qdriver.OperationInvalidError, match="domain is already running"):
        await dom.start()
    await dom.destroy()


@pytest.mark.no_qemu
async def test_unknown_domain(driver: qdriver.Driver, state_dir: Path) -> None:
    with pytest.raises(qdriver.NoDomainError,
                       match="Domain not found: no domain with matching name 'nope'"):
        driver.lookup("nope")
    for cmd in ("start", "destroy", "domstate", "suspend", "dumpxml"):
        r = run_cli(state_dir, cmd, "nope", check=False)
        assert r.returncode == 1
        assert r.stderr.decode().strip() == \
            "error: Domain not found: no domain with matching name 'nope'"


@pytest.mark.no_qemu
async def test_cli_rejects_bad_xml_and_defines_nothing(state_dir: Path, tmp_path: Path,
                                                       driver: qdriver.Driver) -> None:
    bad = tmp_path / "bad.xml"
    bad.write_text("<domain type='qemu'><name>x</name>")
    r = run_cli(state_dir, "define", str(bad), check=False)
    assert r.returncode == 1 and "error: XML error: malformed domain XML" in r.stderr.decode()
    secret = tmp_path / "secret"
    secret.write_text("TOPSECRET")
    bad.write_text(f"<!DOCTYPE d [<!ENTITY x SYSTEM 'file://{secret}'>]>"
                   "<domain type='qemu'><name>&x;</name><memory>1</memory></domain>")
    r = run_cli(state_dir, "define", str(bad), check=False)
    assert r.returncode == 1 and "entity" in r.stderr.decode()
    assert driver.list_domains() == []


async def test_undefine(make_domain: MakeDomain, driver: qdriver.Driver, state_dir: Path) -> None:
    dom = await make_domain()
    await dom.start(paused=True)
    with pytest.raises(qdriver.OperationInvalidError, match="running"):
        await driver.undefine(dom)
    await dom.destroy()
    run_cli(state_dir, "undefine", "guest")
    assert driver.list_domains() == [] and not dom.paths.dir.exists()
    assert not socket_root(state_dir).joinpath(dom.paths.sockets.name).exists()


async def test_the_state_of_a_qemu_on_its_way_out_is_shut_off(
        booted: Callable[..., Awaitable[qdriver.Domain]]) -> None:
    """QEMU removes its sockets first as it exits; a state query in that moment
    waits for the exit instead of failing to connect."""
    dom = await booted()
    record = dom.runtime.peek()
    assert record is not None
    dom.paths.qmp_query.unlink()  # as QEMU's own exit does first

    async def exit_later() -> None:
        await anyio.sleep(0.5)
        os.kill(record.pid, signal.SIGKILL)
    async with anyio.create_task_group() as tg:
        tg.start_soon(exit_later)
        state, _ = await dom.get_state()
    assert state == qdriver.DomainState.SHUTOFF


async def test_xhci_ports_are_the_guests(driver: qdriver.Driver, guest_image: GuestImage
                                         ) -> None:
    """``ports`` on a qemu-xhci is what QEMU gives the guest (libvirt's p2, p3)."""
    dom = await driver.define_xml(domain_xml(guest_image, "usb", None, extra_devices=(
        "<controller type='usb' model='qemu-xhci' ports='3'/>")))
    await dom.start(paused=True)
    async with dom.monitor() as mon:
        ports = [await mon.execute("qom-get", {"path": "/machine/peripheral/usb",
                                                "property": p}) for p in ("p2", "p3")]
    await dom.destroy()
    assert ports == [3, 3]
    with pytest.raises(qdriver.ConfigUnsupportedError, match="ports"):
        await driver.define_xml(domain_xml(guest_image, "uhci", None, extra_devices=(
            "<controller type='usb' model='piix3-uhci' ports='2'/>")))
