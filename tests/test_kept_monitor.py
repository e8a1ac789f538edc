"""A process keeps one monitor connection per QEMU between its jobs (`qmp.kept`),
without standing in the way of any other process.

Connections are counted by wrapping the two connect paths in this process.
"""
from __future__ import annotations

import fcntl
import os
import subprocess
import sys
import textwrap
from collections import Counter
from pathlib import Path
from typing import Any, Awaitable, Callable

import pytest

import qdriver
from qdriver import qmp
from qdriver.qmp import connection

from .helpers.cli import run_cli

Booted = Callable[..., Awaitable[qdriver.Domain]]


def count_connects(monkeypatch: pytest.MonkeyPatch) -> Counter[str]:
    """Count connections to each socket by its file name (``keep.sock``, ``qmp.sock``)."""
    seen: Counter[str] = Counter()
    real = connection.connect

    async def counting(path: Path, *args: Any, **kw: Any) -> qmp.Monitor:
        seen[path.name] += 1
        return await real(path, *args, **kw)
    monkeypatch.setattr(connection, "connect", counting)
    monkeypatch.setattr(qmp.kept, "connect", counting)
    return seen


async def test_one_process_connects_once_for_many_jobs(
        booted: Booted, driver: qdriver.Driver, monkeypatch: pytest.MonkeyPatch) -> None:
    dom = await booted()
    seen = count_connects(monkeypatch)
    await dom.suspend()
    await dom.resume()
    await dom.snapshot_create_xml("<domainsnapshot><name>k1</name></domainsnapshot>")
    await dom.delete_snapshot("k1")
    assert seen["qmp.sock"] == 0, seen
    assert seen["keep.sock"] <= 1, f"the kept connection was made again: {seen}"
    assert dom.paths.qmp_keep in qmp.kept.kept_paths()
    await driver.__aexit__(None, None, None)  # leaving `async with Driver()` lets go of it
    assert dom.paths.qmp_keep not in qmp.kept.kept_paths()
    assert not dom.paths.keep_lease.exists() or _lease_free(dom.paths.keep_lease)


def _lease_free(lease: Path) -> bool:
    fd = os.open(lease, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except OSError:
        return False
    finally:
        os.close(fd)


async def test_another_process_works_while_this_one_keeps_the_monitor(
        booted: Booted, state_dir: Path) -> None:
    dom = await booted()
    await dom.suspend()  # this process now keeps the connection
    assert dom.paths.qmp_keep in qmp.kept.kept_paths()
    assert not _lease_free(dom.paths.keep_lease)
    run_cli(state_dir, "resume", dom.name, timeout=30)  # a command line: the ordinary socket
    resumed = dom.state
    await dom.suspend()  # and the kept connection still serves this process
    assert (resumed, dom.state) == (qdriver.DomainState.RUNNING, qdriver.DomainState.PAUSED)
    await dom.resume()


async def test_a_qemu_without_the_kept_socket_is_reached_per_job(
        booted: Booted, monkeypatch: pytest.MonkeyPatch) -> None:
    dom = await booted()
    await qmp.kept.release(dom.paths.qmp_keep)
    dom.paths.qmp_keep.unlink()  # as a QEMU started by an earlier release has none
    seen = count_connects(monkeypatch)
    await dom.suspend()
    await dom.resume()
    assert seen == Counter({"qmp.sock": 2}), seen
    assert dom.state == qdriver.DomainState.RUNNING


async def test_each_event_loop_of_a_process_gets_its_own_connection(
        booted: Booted, state_dir: Path) -> None:
    """A script that calls ``asyncio.run`` twice: the second loop cannot use the
    first one's connection; it closes it and connects again."""
    dom = await booted()
    script = textwrap.dedent(f"""
        import asyncio, collections, qdriver
        from qdriver.qmp import connection, kept
        seen, real = collections.Counter(), connection.connect
        async def counting(path, *args, **kw):
            seen[path.name] += 1
            return await real(path, *args, **kw)
        connection.connect = kept.connect = counting
        async def pause_resume():
            dom = qdriver.Driver({str(state_dir)!r}).lookup({dom.name!r})
            await dom.suspend()
            await dom.resume()
            return dom.state.label
        print(asyncio.run(pause_resume()), asyncio.run(pause_resume()), dict(seen))
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    first, second, connects = out.stdout.split(maxsplit=2)
    assert (first, second) == ("running", "running")
    assert connects.strip() == "{'keep.sock': 2}", "the second loop did not reconnect " \
        f"to the kept socket (a connection of a closed loop left open?): {connects}"
    assert "Task was destroyed" not in out.stderr and "Error" not in out.stderr, out.stderr
    assert dom.state == qdriver.DomainState.RUNNING
