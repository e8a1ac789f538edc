"""Lifecycle events: heard by one process whichever process or guest causes them."""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Awaitable, Callable

import anyio
import pytest

import qdriver
from qdriver.console import DomainConsole
from qdriver.events import Event, EventType
from qdriver.events.log import MAX_SIZE, Tail, append
from tests.helpers.cli import run_cli

LATENCY = 0.2
"""The longest an event may take to reach a listener, from the fact (seconds)."""

Heard = list[tuple[float, Event]]


async def _listen(stream: qdriver.EventStream, heard: Heard) -> None:
    async for event in stream:
        heard.append((time.time(), event))


async def _wait_heard(heard: Heard, count: int, timeout: float = 30.0) -> None:
    with anyio.move_on_after(timeout):
        while len(heard) < count:
            await anyio.sleep(0.02)
    assert len(heard) >= count, f"{count} events expected, heard {_words(heard)}"


def _words(heard: Heard) -> list[tuple[str, str]]:
    return [(str(e.type), e.detail) for _, e in heard]


async def test_events_from_the_cli_and_the_guest_arrive_in_order_once(
        driver: qdriver.Driver, make_domain: Callable[..., Awaitable[qdriver.Domain]],
        state_dir: Path) -> None:
    dom = await make_domain("ev", cmdline="qd.shell=1", extra_devices="<panic model='isa'/>")
    heard: Heard = []
    done: dict[str, float] = {}
    async with driver.events() as stream, anyio.create_task_group() as tg:
        tg.start_soon(_listen, stream, heard)

        async def cli(*args: str) -> None:
            await anyio.to_thread.run_sync(lambda: run_cli(state_dir, *args))
            done[args[0]] = time.time()

        async def boot() -> DomainConsole:
            console = dom.console()
            await dom.start()
            await console.wait_async("GUEST-READY", 60)
            return console

        console = await boot()
        await cli("suspend", "ev")
        await cli("resume", "ev")
        await cli("snapshot-create-as", "ev", "s1")
        await cli("destroy", "ev")
        await _wait_heard(heard, 9)
        console = await boot()
        rebooted = dom.console()
        console.write("reboot -f\n")  # the guest resets itself: QEMU goes on
        await rebooted.wait_async("GUEST-READY", 60)
        rebooted.write("poweroff -f\n")
        await _wait_heard(heard, 14)
        console = await boot()
        console.write("echo c > /proc/sysrq-trigger\n")  # a kernel panic, told by pvpanic
        await _wait_heard(heard, 18)
        await anyio.sleep(0.5)  # nothing more may come
        tg.cancel_scope.cancel()
    assert _words(heard) == [
        ("resumed", "unpaused"), ("started", "booted"),
        ("suspended", "paused"), ("resumed", "unpaused"),
        ("suspended", "paused"), ("resumed", "unpaused"), ("snapshot", "created"),
        ("shutdown", "host"), ("stopped", "destroyed"),
        ("resumed", "unpaused"), ("started", "booted"),
        ("reboot", "guest"), ("shutdown", "guest"), ("stopped", "shutdown"),
        ("resumed", "unpaused"), ("started", "booted"),
        ("crashed", "panicked"), ("stopped", "crashed")], heard
    assert {e.domain for _, e in heard} == {"ev"}
    by_step = {"suspend": heard[2], "resume": heard[3], "snapshot-create-as": heard[6],
               "destroy": heard[8]}
    for command, (arrived, _) in by_step.items():
        assert arrived - done[command] <= LATENCY, f"{command}: {arrived - done[command]:.3f} s"
    for i in (11, 12, 16):  # the guest's own: from QEMU's time of the fact
        arrived, event = heard[i]
        assert arrived - event.time <= LATENCY, f"{event}: {arrived - event.time:.3f} s"
    for i in (13, 17):  # QEMU gone: the stop is heard within the same bound of the cause
        assert heard[i][0] - heard[i - 1][1].time <= LATENCY, heard[i]
    assert dom.state_reason() == (qdriver.DomainState.SHUTOFF, "crashed")


async def test_a_domain_stream_hears_its_own_domain_only(
        driver: qdriver.Driver, make_domain: Callable[..., Awaitable[qdriver.Domain]]) -> None:
    one = await make_domain("one", with_disk=False)
    async with one.events() as mine, driver.events() as every:
        two = await make_domain("two", with_disk=False)
        await driver.undefine(two)
        await driver.undefine(one)
        with anyio.fail_after(5):
            assert [str(e) for e in [await mine.__anext__()]] == ["one: undefined removed"]
            seen = [str(await every.__anext__()) for _ in range(3)]
    assert seen == ["two: defined added", "two: undefined removed", "one: undefined removed"]


def test_the_log_rotates_without_losing_a_line(tmp_path: Path) -> None:
    tail = Tail(tmp_path)
    line = len('{"v": 1, "t": 0.0, "domain": "d", "type": "started", "detail": "booted"}\n')
    count = MAX_SIZE // line + 500  # past one rotation, read now and then
    read = 0
    for i in range(count):
        append(tmp_path, "d", EventType.STARTED, "booted", when=float(i))
        if i % 1000 == 999:
            read += len(tail.read())
    times = [e.time for e in tail.read()]
    assert (tmp_path / "events.log.1").exists()
    assert read + len(times) == count and times[-1] == count - 1
    tail.close()


def _reads_log(pid: int, state_dir: Path) -> bool:
    """Whether process ``pid`` has the state dir's event log open."""
    fds = Path(f"/proc/{pid}/fd")
    try:
        return any(os.readlink(fd) == str(state_dir / "events.log") for fd in fds.iterdir())
    except OSError:
        return False


async def _agent_up(dom: qdriver.Domain) -> None:
    """Wait until the guest's agent answers (it starts beside GUEST-READY)."""
    with anyio.fail_after(30):
        while True:
            try:
                await dom.agent_command({"execute": "guest-get-timezone"}, timeout=2)
                return
            except qdriver.AgentUnresponsiveError:
                await anyio.sleep(0.2)


AGENT = "<channel type='unix'><target type='virtio' name='org.qemu.guest_agent.0'/></channel>"


async def test_reboot_by_button_and_by_agent_guestinfo_and_the_event_command(
        make_domain: Callable[..., Awaitable[qdriver.Domain]], state_dir: Path) -> None:
    dom = await make_domain("rb", extra_devices=AGENT)
    console = dom.console()
    await dom.start()
    await console.wait_async("GUEST-READY", 60)
    pid = dom.runtime.peek().pid  # type: ignore[union-attr]
    heard: Heard = []
    async with dom.events() as stream, anyio.create_task_group() as tg:
        tg.start_soon(_listen, stream, heard)
        for mode in ("acpi", "agent"):
            await _agent_up(dom)
            again = dom.console()
            said = await anyio.to_thread.run_sync(
                run_cli, state_dir, "reboot", "rb", "--mode", mode)
            assert said.stdout.decode() == "Domain 'rb' is being rebooted\n"
            await again.wait_async("GUEST-READY", 60)  # booted again...
        await anyio.sleep(0.3)
        tg.cancel_scope.cancel()
    assert dom.runtime.peek().pid == pid  # type: ignore[union-attr]  # ...in the same QEMU
    assert dom.state_reason() == (qdriver.DomainState.RUNNING, "booted")
    assert _words(heard) == [("shutdown", "guest"), ("reboot", "host"), ("reboot", "guest")]
    await _agent_up(dom)
    info = await dom.guest_info()
    assert info["os.id"] == "qdriver-test" and str(info["os.kernel-release"]).startswith("6.")
    assert (info["timezone.name"], info["timezone.offset"]) == ("UTC", 0)
    assert "user.count" not in info  # the agent has no guest-get-users: left out
    shown = run_cli(state_dir, "guestinfo", "rb", "--timezone").stdout.decode()
    assert shown == "timezone.name       : UTC\ntimezone.offset     : 0\n"
    with pytest.raises(qdriver.ArgumentUnsupportedError, match="unknown guest info type"):
        await dom.guest_info(("bogus",))
    with pytest.raises(qdriver.OperationFailedError, match="guest-get-users"):
        await dom.guest_info(("users",))  # asked for by name: the agent's refusal is told
    listener = subprocess.Popen(
        [sys.executable, "-m", "qdriver", "--state-dir", str(state_dir), "event", "rb",
         "--count", "2", "--timeout", "30"], stdout=subprocess.PIPE, text=True)
    with anyio.fail_after(30):  # the listener is up: it has the event log open
        while not _reads_log(listener.pid, state_dir):
            await anyio.sleep(0.05)
    await dom.suspend()
    await dom.resume()
    printed, _ = listener.communicate(timeout=60)
    assert printed.splitlines() == ["event 'lifecycle' for domain 'rb': Suspended Paused",
                                    "event 'lifecycle' for domain 'rb': Resumed Unpaused",
                                    "events received: 2"]
    await dom.destroy()
