"""The blocking API: the async API's names without an event loop, from a plain
script and from several threads at once on one driver, with real guests."""
from __future__ import annotations

import shutil
import subprocess
import sys
import textwrap
import threading
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
        "Snapshot s1 ['s1']",
        "DomainState.PAUSED",
        "DomainState.RUNNING s1",
        "DomainState.SHUTOFF",
        "OperationInvalidError ErrorCode.OPERATION_INVALID",
        "[]",
    ]


def test_several_threads_drive_their_own_domains_on_one_driver(
        guest_image: GuestImage, tmp_path: Path) -> None:
    state = tmp_path / "state"
    failures: list[BaseException] = []
    with blocking.Driver(state) as drv:
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
        with pytest.raises(qdriver.NoDomainError, match="no domain with matching name 't0'"):
            drv.lookup("t0")
    assert qemu_pids(state) == []
