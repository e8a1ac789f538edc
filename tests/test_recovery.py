"""A qdriver process killed at any point of any operation: the next command recovers.

Each test first runs the operation once with ``QDRIVER_FAULT_TRACE`` to list
every fault point it passes (before each plan step, after each journaled
undo, inside the migration, at the end), then kills the CLI with SIGKILL at
each of them in turn (``QDRIVER_FAULT``), and checks that:
- ``dominfo`` and ``domstate --reason`` show the interrupted operation;
- the next command recovers it and says what it did;
- nothing is left half-done: no journal, the guest is not left paused, every
  file the definition or metadata names exists, every file in the work
  directory is named (or backs a named image), memory files named are complete.

The killed operation is always a CLI process of its own, killed with SIGKILL.
The setup between kills and the checks after them run in this process, through
the API (`Crashed`); the CLI's own report of an interrupted operation is read
at the first point of every test.
"""
from __future__ import annotations

import os
import random
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

import qdriver
from qdriver.launch import standby
from qdriver.testing.faults import ENV, TRACE_ENV

from .helpers import SavedGuests, assert_consistent, qemu_pids
from .helpers.cli import cli_with_faults as cli
from .helpers.images import sha256
from .helpers.templates import SHARED_FILE_RAM


def ok(state_dir: Path, *args: str) -> str:
    r = cli(state_dir, *args)
    assert r.returncode == 0, f"qdriver {' '.join(args)}: {r.stderr}"
    assert "Traceback" not in r.stderr
    return r.stdout


def points_of(state_dir: Path, tmp: Path, *args: str) -> list[str]:
    """Run the operation once, tracing; the fault points it passed, in order."""
    trace = tmp / "trace"
    trace.unlink(missing_ok=True)
    r = cli(state_dir, *args, trace=trace)
    assert r.returncode == 0, r.stderr
    seen: list[str] = []
    for line in trace.read_text().split():
        if line not in seen:
            seen.append(line)
    assert len(seen) >= 2, seen
    return seen


INTERRUPTED = re.compile(r"\S+ by process \d+ \(gone\)")


class Crashed:
    """The guest whose operations get killed, set up and checked in this process."""

    def __init__(self, state_dir: Path, work: Path) -> None:
        self.state_dir = state_dir
        self.work = work
        self.dom = qdriver.Driver(state_dir).lookup("guest")

    async def kill_and_recover(self, point: str, *args: str, via_cli: bool = False) -> str:
        """Kill the operation at ``point``; check it shows; recover; return the report
        (read through the CLI, as the user reads it, with ``via_cli``)."""
        r = cli(self.state_dir, *args, fault=point)
        assert r.returncode == -9, f"{point}: not killed (rc {r.returncode}): {r.stderr}"
        if via_cli:
            return self._recover_with_the_cli(point)
        interrupted = self.dom.interrupted_operation()
        assert interrupted and INTERRUPTED.search(interrupted), (point, interrupted)
        report = await self.dom.recover()
        assert report is not None and "recovered the interrupted" in str(report), (point,
                                                                                  report)
        assert self.dom.interrupted_operation() is None, point
        return str(report)

    def _recover_with_the_cli(self, point: str) -> str:
        info = ok(self.state_dir, "dominfo", "guest")
        assert re.search(r"Interrupted:\s+" + INTERRUPTED.pattern, info), (point, info)
        assert "interrupted" in ok(self.state_dir, "domstate", "guest", "--reason")
        r = cli(self.state_dir, "recover", "guest")
        assert r.returncode == 0 and "recovered the interrupted" in r.stdout, (point, r)
        assert "Traceback" not in r.stderr
        assert "Interrupted" not in ok(self.state_dir, "dominfo", "guest")
        return r.stdout

    async def state(self) -> str:
        state, reason = await self.dom.get_state()
        return f"{state.label} ({reason})"

    async def assert_running(self, point: str) -> None:
        state = await self.state()
        assert state.startswith("running"), f"{point}: the guest was left {state}"

    async def start_if_off(self) -> None:
        """Start the guest a rollback left shut off."""
        if (await self.state()).startswith("shut off"):
            await self.dom.start()

    def snapshots(self) -> list[str]:
        return [s.name for s in self.dom.list_snapshots()]

    def consistent(self, point: str) -> None:
        assert_consistent(self.state_dir, self.work, point)

    def qemu_count(self) -> int:
        """The QEMUs of this state dir that run."""
        return len(qemu_pids(self.state_dir))


@pytest.fixture
async def running_guest(driver: qdriver.Driver, saved_guests: SavedGuests, tmp_path: Path
                        ) -> Crashed:
    """The test guest, running and counting, its disk in its own work dir."""
    work = tmp_path / "work"
    work.mkdir()
    await saved_guests.restore(driver, work)
    return Crashed(driver.state_dir, work)


CREATE_KINDS: dict[str, Callable[[Path, str], list[str]]] = {
    "external memory and disk": lambda w, n: [
        "--memspec", f"file={w}/{n}.mem", "--diskspec", f"vda,file={w}/vda.{n}"],
    "internal": lambda w, n: [],
    "disk-only": lambda w, n: ["--disk-only", "--diskspec", f"vda,file={w}/vda.{n}"],
}
"""Each kind of snapshot as the CLI takes it (what gets killed)..."""

SNAPSHOT_XML: dict[str, Callable[[Path, str], tuple[str, dict[str, bool]]]] = {
    "external memory and disk": lambda w, n: (
        f"<domainsnapshot><name>{n}</name><memory snapshot='external' file='{w}/{n}.mem'/>"
        f"<disks><disk name='vda' snapshot='external'><source file='{w}/vda.{n}'/></disk>"
        "</disks></domainsnapshot>", {}),
    "internal": lambda w, n: (f"<domainsnapshot><name>{n}</name></domainsnapshot>", {}),
    "disk-only": lambda w, n: (
        f"<domainsnapshot><name>{n}</name><disks><disk name='vda' snapshot='external'>"
        f"<source file='{w}/vda.{n}'/></disk></disks></domainsnapshot>", {"disk_only": True}),
}
"""...and as the API takes it (the setup around the kills)."""


async def snapshot(guest: Crashed, kind: str, name: str) -> None:
    xml, flags = SNAPSHOT_XML[kind](guest.work, name)
    await guest.dom.snapshot_create_xml(xml, None, **flags)


@pytest.mark.parametrize("kind", CREATE_KINDS)
async def test_snapshot_create_killed_at_every_point(running_guest: Crashed,
                                                     tmp_path: Path, kind: str) -> None:
    guest, work = running_guest, running_guest.work
    args = CREATE_KINDS[kind]
    points = points_of(guest.state_dir, tmp_path, "snapshot-create-as", "guest", "t0",
                       *args(work, "t0"))
    assert any(p.endswith(":end") for p in points)
    if kind.startswith("external"):
        assert "memfile:migrating" in points  # the reported defect: killed mid-migration
    finished = []
    for i, point in enumerate(points):
        name = f"k{i}"
        report = await guest.kill_and_recover(point, "snapshot-create-as", "guest", name,
                                              *args(work, name), via_cli=i == 0)
        guest.consistent(point)
        await guest.assert_running(point)
        if "rolled forward" in report:  # killed once the disks switched after the memory
            assert name in guest.snapshots(), f"{point}: rolled forward, not listed ({report})"
            assert guest.dom.current_snapshot().name == name
            finished.append(point)
        else:
            assert name not in guest.snapshots(), \
                f"{point}: a rolled-back snapshot is listed ({report})"
    # everything a memory snapshot needs exists once its disks switched: it finishes
    assert bool(finished) == (kind == "external memory and disk"), finished
    # the guest still works: another snapshot goes through
    ok(guest.state_dir, "snapshot-create-as", "guest", "after", *args(work, "after"))
    guest.consistent("after")


async def test_snapshot_delete_killed_at_every_point(running_guest: Crashed,
                                                     tmp_path: Path) -> None:
    """A running delete with data (an active block-commit and pivot), killed before
    the marks are recorded, after them, after the commit, after the rename and
    during the metadata removal: it rolls back or finishes, the guest runs on."""
    guest, work = running_guest, running_guest.work
    await snapshot(guest, "disk-only", "d0")
    points = points_of(guest.state_dir, tmp_path, "snapshot-delete", "guest", "d0")
    for point in ("snapshot-delete:committed", "snapshot-delete:renamed",
                  "snapshot-delete:metadata", "snapshot-delete:end"):
        assert point in points, points
    for i, point in enumerate(points):
        name = f"d{i + 1}"
        await snapshot(guest, "disk-only", name)
        await guest.kill_and_recover(point, "snapshot-delete", "guest", name, via_cli=i == 0)
        guest.consistent(point)
        await guest.assert_running(point)
        if name in guest.snapshots():
            assert point.endswith(":recorded:restore-dir"), f"{point}: {name} not finished"
            await guest.dom.delete_snapshot(name)  # rolled back: still deletable
        assert not (work / f"vda.{name}").exists(), point
        defined = guest.dom.xml_desc()  # the guest writes its base again
        assert f"file='{work / 'guest-vda.qcow2'}'" in defined, f"{point}: {defined}"
    ok(guest.state_dir, "snapshot-create-as", "guest", "after",
       *CREATE_KINDS["disk-only"](work, "after"))
    ok(guest.state_dir, "snapshot-delete", "guest", "after")
    guest.consistent("after")


async def test_save_killed_at_every_point(running_guest: Crashed, tmp_path: Path) -> None:
    guest = running_guest
    points = points_of(guest.state_dir, tmp_path, "managedsave", "guest")
    await guest.dom.start()
    for i, point in enumerate(points):
        await guest.kill_and_recover(point, "managedsave", "guest", via_cli=i == 0)
        guest.consistent(point)
        if guest.dom.has_managed_save():
            # past the point of no return: a complete save, the domain off
            assert (await guest.state()).startswith("shut off"), point
            await guest.dom.start()
        await guest.assert_running(point)


async def test_start_from_managed_save_killed_at_every_point(running_guest: Crashed,
                                                             tmp_path: Path) -> None:
    guest = running_guest
    await guest.dom.managed_save()
    points = points_of(guest.state_dir, tmp_path, "start", "guest")
    for i, point in enumerate(points):
        await guest.dom.managed_save()
        await guest.kill_and_recover(point, "start", "guest", via_cli=i == 0)
        guest.consistent(point)
        state = (await guest.dom.get_state())[0].label
        # rolled back: off with the save kept; forward: running, the save gone
        assert (state, guest.dom.has_managed_save()) in {("shut off", True),
                                                         ("running", False)}, point
        await guest.start_if_off()
        await guest.assert_running(point)


@pytest.mark.parametrize("kind", ["external", "internal"])
async def test_revert_killed_at_every_point(running_guest: Crashed, tmp_path: Path,
                                            kind: str) -> None:
    guest = running_guest
    await snapshot(guest, "external memory and disk" if kind == "external" else "internal",
                   "base")
    points = points_of(guest.state_dir, tmp_path, "snapshot-revert", "guest", "base")
    for i, point in enumerate(points):
        await guest.kill_and_recover(point, "snapshot-revert", "guest", "base", via_cli=i == 0)
        guest.consistent(point)
        await guest.start_if_off()  # rolled back after the old QEMU was stopped
        await guest.assert_running(point)
        await guest.dom.revert_to_snapshot("base")  # still revertible
        guest.consistent(point + " (reverted again)")




async def not_a_clone(guest: Crashed) -> None:
    """Boot the guest afresh if it runs as a clone of a template."""
    record = guest.dom.runtime.peek()
    if record is not None and record.ram_template:
        await guest.dom.destroy()
        await guest.dom.start()


async def test_template_snapshot_and_revert_killed_at_every_point(
        driver: qdriver.Driver, saved_guests: SavedGuests, tmp_path: Path) -> None:
    """A template snapshot (devices' state, then the RAM file copied) and a revert to
    it (a clone started on the template's RAM), killed at each point: rolled back
    or finished, no file left or missing, the template file never changed."""
    work = tmp_path / "work"
    work.mkdir()
    await saved_guests.restore(driver, work, memory_backing=SHARED_FILE_RAM)
    guest = Crashed(driver.state_dir, work)

    def args(n: str) -> list[str]:
        return ["--memspec", f"file={work}/{n}.mem", "--diskspec", f"vda,file={work}/vda.{n}",
                "--template"]
    # the devices' state (well under 1 MiB) may be saved or loaded before QEMU is first
    # asked how far it got: that point is passed in some runs only
    points = [p for p in points_of(guest.state_dir, tmp_path, "snapshot-create-as", "guest",
                                   "t0", *args("t0")) if p != "memfile:migrating"]
    assert "snapshot-create:switch-to-clone" in points, points
    for i, point in enumerate(points):
        await not_a_clone(guest)  # a clone has no RAM file to make a template of
        name = f"k{i}"
        report = await guest.kill_and_recover(point, "snapshot-create-as", "guest", name,
                                              *args(name))
        guest.consistent(point)
        if "rolled forward" in report:  # past the switch: the guest waits for a revert
            assert name in guest.snapshots() and guest.dom.state.label == "shut off", point
            await guest.dom.revert_to_snapshot(name)
        else:
            assert name not in guest.snapshots(), (point, report)
        await guest.assert_running(point)
    pristine = sha256(f"{work}/t0.mem.ram")
    for ahead in (False, True):  # the revert starts a QEMU, or takes over a standby
        await standby_for(guest.dom, "t0" if ahead else None)
        points = [p for p in points_of(guest.state_dir, tmp_path, "snapshot-revert", "guest",
                                       "t0") if p != "memfile:migrating"]
        assert ("snapshot-revert:recorded:discard-standby" in points) == ahead, points
        assert {"standby:recorded", "standby:spawned"} <= set(points), points
        for point in points:
            await standby_for(guest.dom, "t0" if ahead else None)
            if point.startswith("standby:"):  # the revert is done; the next one's QEMU
                r = cli(guest.state_dir, "snapshot-revert", "guest", "t0", fault=point)
                assert r.returncode == -9, (point, r.stderr)  # is half made: no journal
            else:
                await guest.kill_and_recover(point, "snapshot-revert", "guest", "t0")
            guest.consistent(f"{point} (standby: {ahead})")
            await guest.start_if_off()
            await guest.assert_running(point)
            await guest.dom.revert_to_snapshot("t0")  # still revertible
            guest.consistent(f"{point} (standby: {ahead}, reverted again)")
            assert guest.qemu_count() == 2, f"{point}: not just the domain's QEMU and a standby"
    assert sha256(f"{work}/t0.mem.ram") == pristine, "a clone wrote into the template"


async def standby_for(dom: qdriver.Domain, snapshot: str | None) -> None:
    """A standby QEMU loaded for the next revert to ``snapshot``, or (None) none."""
    if snapshot is not None:
        assert await dom.prepare_standby(snapshot)
        return
    async with dom.job():
        await standby.discard(dom.paths)


async def test_fork_killed_at_every_point(driver: qdriver.Driver, saved_guests: SavedGuests,
                                         tmp_path: Path) -> None:
    """Two forks of a template, killed at each point (the source's overlays and
    definitions, each fork's start): the next command on the source takes back
    every fork, or (killed once all run) keeps all of them; no QEMU, domain or
    overlay of a fork taken back is left, and the template never changes."""
    work = tmp_path / "work"
    work.mkdir()
    await saved_guests.restore(driver, work, memory_backing=SHARED_FILE_RAM)
    guest = Crashed(driver.state_dir, work)
    await guest.dom.snapshot_create_xml(
        f"<domainsnapshot><name>t</name><memory snapshot='external' file='{work}/t.mem'/>"
        f"<disks><disk name='vda' snapshot='external'><source file='{work}/vda.t'/></disk>"
        "</disks></domainsnapshot>", template=True)
    pristine = sha256(f"{work}/t.mem.ram")
    points = [p for p in points_of(guest.state_dir, tmp_path, "fork", "guest", "t", "a", "b")
              if p != "memfile:migrating"]
    assert {"fork:recorded:discard-fork", "launch:spawned"} <= set(points), points
    for name in ("a", "b"):
        await _destroyed(driver, name)
        await driver.undefine(driver.lookup(name))
        (work / f"{name}.vda.qcow2").unlink()
    the_guests = sorted(qemu_pids(driver.state_dir))  # the source's, and nothing else
    for point in points:
        report = await guest.kill_and_recover(point, "fork", "guest", "t", "a", "b")
        forks = sorted(d.name for d in driver.list_domains() if d.name != "guest")
        if point == "fork:end":  # all ran: the forks are the user's now
            assert forks == ["a", "b"], (point, report)
            for name in forks:
                await _destroyed(driver, name)
                await driver.undefine(driver.lookup(name))
                (work / f"{name}.vda.qcow2").unlink()
        assert forks in ([], ["a", "b"]), (point, forks)
        assert sorted(qemu_pids(driver.state_dir)) == the_guests, (point, report)
        guest.consistent(point)
        await guest.assert_running(point)
    assert sha256(f"{work}/t.mem.ram") == pristine, "a fork wrote into the template"


async def _destroyed(driver: qdriver.Driver, name: str) -> None:
    dom = driver.lookup(name)
    if dom.is_active:
        await dom.destroy()


async def test_start_killed_at_every_point(running_guest: Crashed, tmp_path: Path) -> None:
    guest = running_guest
    await guest.dom.destroy()
    points = points_of(guest.state_dir, tmp_path, "start", "guest")
    assert "launch:spawned" in points
    await guest.dom.destroy()
    for i, point in enumerate(points):
        await guest.kill_and_recover(point, "start", "guest", via_cli=i == 0)
        assert (await guest.state()).startswith("shut off"), point
    await guest.dom.start()


async def test_shutdown_killed_while_waiting(running_guest: Crashed) -> None:
    guest = running_guest
    report = await guest.kill_and_recover("shutdown:waiting", "shutdown", "guest",
                                          via_cli=True)
    assert "shutdown" in report
    guest.consistent("shutdown")


async def test_metadata_change_killed_half_way(running_guest: Crashed,
                                               tmp_path: Path) -> None:
    guest = running_guest
    for name in ("a", "b", "c"):
        await snapshot(guest, "internal", name)
    points = points_of(guest.state_dir, tmp_path, "snapshot-current", "guest", "a")
    snapshots = guest.state_dir / "domains/guest/snapshots"
    before = {f.name: f.read_text() for f in snapshots.iterdir()}
    for i, point in enumerate(points):
        await guest.kill_and_recover(point, "snapshot-current", "guest", "b", via_cli=i == 0)
    await guest.kill_and_recover(  # killed after the first of two removals
        "snapshot-delete:metadata", "snapshot-delete", "guest", "b", "--children",
        "--metadata")
    after = {f.name: f.read_text() for f in snapshots.iterdir()}
    assert after == before  # every half-made change was put back
    assert guest.dom.current_snapshot().name == "a"


SOAK_ROUNDS = int(os.environ.get("QDRIVER_SOAK_ROUNDS", "16"))


async def test_soak_random_kills(running_guest: Crashed) -> None:
    """Kills at random moments (not only at fault points) of random operations."""
    guest, work = running_guest, running_guest.work
    rng = random.Random(int(os.environ.get("QDRIVER_SOAK_SEED", "1")))
    await snapshot(guest, "internal", "base")
    ops: list[Callable[[str], list[str]]] = [
        lambda n: ["snapshot-create-as", "guest", n,
                   *CREATE_KINDS["external memory and disk"](work, n)],
        lambda n: ["snapshot-create-as", "guest", n],
        lambda n: ["snapshot-create-as", "guest", n,
                   *CREATE_KINDS["disk-only"](work, n)],
        lambda n: ["snapshot-revert", "guest", "base"],
        lambda n: ["managedsave", "guest"],
    ]
    for i in range(SOAK_ROUNDS):
        args = rng.choice(ops)(f"s{i}")
        delay = rng.uniform(0.3, 1.2)  # the CLI's start-up takes ~0.3 s
        env = {k: v for k, v in os.environ.items() if k not in (ENV, TRACE_ENV)}
        proc = subprocess.Popen([sys.executable, "-m", "qdriver", "--state-dir",
                                 str(guest.state_dir), *args], env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        try:
            proc.wait(delay)
        except subprocess.TimeoutExpired:
            proc.kill()
        _, err = proc.communicate()
        assert "Traceback" not in err, err
        where = f"round {i}: {' '.join(args)} killed after {delay:.2f} s"
        await guest.dom.recover()
        guest.consistent(where)
        await guest.start_if_off()
        await guest.assert_running(where)
