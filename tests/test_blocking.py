"""The blocking API: the async API's names without an event loop, from a plain
script and from several threads at once on one driver, with real guests."""
from __future__ import annotations

import shutil
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

import qdriver
from qdriver import blocking

from .helpers import GuestImage, qemu_pids
from .helpers.guest import domain_xml

ROOT = Path(__file__).resolve().parent.parent


def guest(image: GuestImage, where: Path, name: str) -> str:
    disk = where / f"{name}.qcow2"
    shutil.copyfile(image.disk, disk)
    return domain_xml(image, name, disk)


def test_a_plain_script_runs_a_guest_without_an_event_loop(guest_image: GuestImage,
                                                            tmp_path: Path) -> None:
    (tmp_path / "g.xml").write_text(guest(guest_image, tmp_path, "g"))
    script = textwrap.dedent(f"""
        import qdriver.blocking
        with qdriver.blocking.Driver({str(tmp_path / 'state')!r}) as drv:
            dom = drv.define_xml(open({str(tmp_path / 'g.xml')!r}).read())
            print(type(dom).__name__, dom.name, dom.state)
            dom.start()
            print(dom.state, dom.get_state()[0])
            with dom.monitor() as mon:  # an async context manager, blocking
                print(mon.execute("query-status")["status"])
            snap = dom.snapshot_create_xml("<domainsnapshot><name>s1</name></domainsnapshot>")
            print(type(snap).__name__, snap.name, [s.name for s in dom.list_snapshots()])
            dom.suspend()
            print(dom.state)
            snap.revert()
            print(dom.state, dom.current_snapshot().name)
            dom.destroy()
            print(dom.state)
            try:
                dom.resume()
            except qdriver.QDriverError as e:
                print(type(e).__name__, e.code)
            snap.delete()
            drv.undefine(dom)
            print([d.name for d in drv.list_domains()])
    """)
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         timeout=120, cwd=ROOT)
    assert run.returncode == 0, run.stderr
    assert run.stdout.splitlines() == [
        "Domain g DomainState.SHUTOFF",
        "DomainState.RUNNING DomainState.RUNNING",
        "running",
        "Snapshot s1 ['s1']",
        "DomainState.PAUSED",
        "DomainState.RUNNING s1",
        "DomainState.SHUTOFF",
        "OperationInvalidError ErrorCode.OPERATION_INVALID",
        "[]",
    ]


LIFE = [("defined", "added"), ("resumed", "unpaused"), ("started", "booted"),
        ("suspended", "paused"), ("resumed", "unpaused"), ("snapshot", "created"),
        ("suspended", "from_snapshot"), ("resumed", "from_snapshot"),
        ("defined", "from_snapshot"), ("snapshot", "reverted"),
        ("shutdown", "host"), ("stopped", "destroyed"), ("snapshot", "deleted"),
        ("undefined", "removed")]
"""The events of one thread's domain, as its life below causes them."""


def test_several_threads_drive_their_own_domains_on_one_driver(
        guest_image: GuestImage, tmp_path: Path) -> None:
    state = tmp_path / "state"
    failures: list[BaseException] = []
    called: list[tuple[str, qdriver.Event]] = []
    with blocking.Driver(state) as drv:
        callback = drv.register_event_callback(
            lambda e: called.append((threading.current_thread().name, e)))
        t0_events = drv.events()
        def life(name: str) -> None:
            try:
                dom = drv.define_xml(guest(guest_image, tmp_path, name))
                dom.start()
                dom.snapshot_create_xml(f"<domainsnapshot><name>{name}-s</name>"
                                        "</domainsnapshot>")
                dom.revert_to_snapshot(f"{name}-s")
                assert dom.state == qdriver.DomainState.RUNNING
                assert drv.lookup(name) == dom
                dom.destroy()
                dom.delete_snapshot(f"{name}-s")
                drv.undefine(dom)
            except BaseException as e:  # noqa: BLE001 - reported below, per thread
                failures.append(e)
        threads = [threading.Thread(target=life, args=(f"t{i}",)) for i in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=300)
        assert failures == []
        assert drv.list_domains() == []
        t0 = [e for e in iter(lambda: t0_events.get(timeout=1.0), None) if e.domain == "t0"]
        t0_events.close()
        deadline = time.monotonic() + 5
        while len(called) < 3 * len(LIFE) and time.monotonic() < deadline:
            time.sleep(0.05)
        drv.deregister_event_callback(callback)
        for name in ("t0", "t1", "t2"):  # each domain's events in order, each once
            assert [(str(e.type), e.detail) for _, e in called if e.domain == name] == LIFE
        assert {thread for thread, _ in called} == {"qdriver-events"}  # not the caller's
        assert [(str(e.type), e.detail) for e in t0] == LIFE
        with pytest.raises(qdriver.NoDomainError, match="no domain with matching name 't0'"):
            drv.lookup("t0")
    assert qemu_pids(state) == []
