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
"""
from __future__ import annotations

import json
import os
import random
import re
import subprocess
import sys
from pathlib import Path

import pytest

import qdriver
from qdriver.faults import ENV, TRACE_ENV

from .conftest import GuestImage, domain_xml, wait_console


def cli(state_dir: Path, *args: str, fault: str | None = None, trace: Path | None = None,
        timeout: float = 120) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in (ENV, TRACE_ENV)}
    if fault:
        env[ENV] = fault
    if trace:
        env[TRACE_ENV] = str(trace)
    return subprocess.run([sys.executable, "-m", "qdriver", "--state-dir", str(state_dir),
                           *args], capture_output=True, text=True, env=env, timeout=timeout)


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


def kill_and_recover(state_dir: Path, point: str, *args: str) -> str:
    """Kill the operation at ``point``; check it shows; recover; return the report."""
    r = cli(state_dir, *args, fault=point)
    assert r.returncode == -9, f"{point}: not killed (rc {r.returncode}): {r.stderr}"
    info = ok(state_dir, "dominfo", "guest")
    assert re.search(r"Interrupted:\s+\S+ by process \d+ \(gone\)", info), (point, info)
    assert "interrupted" in ok(state_dir, "domstate", "guest", "--reason")
    r = cli(state_dir, "recover", "guest")
    assert r.returncode == 0 and "recovered the interrupted" in r.stdout, (point, r)
    assert "Traceback" not in r.stderr
    assert "Interrupted" not in ok(state_dir, "dominfo", "guest")
    return r.stdout


def named_files(state_dir: Path) -> set[str]:
    """Every file the definition or the snapshot metadata names (read as text, so
    that a bug in qdriver's own parsing cannot hide one)."""
    dom = state_dir / "domains" / "guest"
    texts = [(dom / "domain.xml").read_text()]
    texts += [f.read_text() for f in (dom / "snapshots").glob("*.xml")] \
        if (dom / "snapshots").is_dir() else []
    return {m for t in texts for m in re.findall(r"(?:file|path)='([^']+)'", t)}


def backing_chain(image: str) -> set[str]:
    out = subprocess.run(["qemu-img", "info", "-U", "--backing-chain", "--output=json", image],
                         capture_output=True, text=True)
    if out.returncode != 0:
        return set()
    return {i["filename"] for i in json.loads(out.stdout)}


def assert_consistent(state_dir: Path, work: Path, point: str) -> None:
    dom = state_dir / "domains" / "guest"
    assert not (dom / "journal.json").exists(), point
    named = {n for n in named_files(state_dir) if n.startswith(str(work))}
    missing = [n for n in named if not Path(n).exists()]
    assert missing == [], f"{point}: metadata names missing files {missing}"
    kept = set().union(*(backing_chain(n) for n in named)) | named
    stray = [str(f) for f in work.iterdir() if f.is_file() and str(f) not in kept]
    assert stray == [], f"{point}: files nothing names: {stray}"
    for n in named:
        if n.endswith(".mem"):
            assert Path(n).read_bytes()[:16] == b"LibvirtQemudSave", f"{point}: {n} partial"


def assert_running(state_dir: Path, point: str) -> None:
    state = ok(state_dir, "domstate", "guest", "--reason").strip()
    assert state.startswith("running"), f"{point}: the guest was left {state}"


@pytest.fixture
async def running_guest(driver: qdriver.Driver, guest_image: GuestImage, tmp_path: Path
                        ) -> tuple[Path, Path]:
    """The test guest, running and counting, its disk in its own work dir."""
    work = tmp_path / "work"
    work.mkdir()
    disk = work / "vda.qcow2"
    subprocess.run(["cp", str(guest_image.disk), str(disk)], check=True)
    dom = await driver.define_xml(domain_xml(guest_image, "guest", disk))
    await dom.start()
    await wait_console(dom, "COUNTER 2")
    return driver.state_dir, work


CREATE_KINDS = {
    "external memory and disk": lambda w, n: [
        "--memspec", f"file={w}/{n}.mem", "--diskspec", f"vda,file={w}/vda.{n}"],
    "internal": lambda w, n: [],
    "disk-only": lambda w, n: ["--disk-only", "--diskspec", f"vda,file={w}/vda.{n}"],
}


@pytest.mark.parametrize("kind", CREATE_KINDS)
async def test_snapshot_create_killed_at_every_point(running_guest: tuple[Path, Path],
                                                     tmp_path: Path, kind: str) -> None:
    state_dir, work = running_guest
    args = CREATE_KINDS[kind]
    points = points_of(state_dir, tmp_path, "snapshot-create-as", "guest", "t0",
                       *args(work, "t0"))
    assert any(p.endswith(":end") for p in points)
    if kind.startswith("external"):
        assert "memfile:migrating" in points  # the reported defect: killed mid-migration
    finished = []
    for i, point in enumerate(points):
        name = f"k{i}"
        report = kill_and_recover(state_dir, point, "snapshot-create-as", "guest", name,
                                  *args(work, name))
        assert_consistent(state_dir, work, point)
        assert_running(state_dir, point)
        listed = ok(state_dir, "snapshot-list", "guest", "--name").split()
        if "rolled forward" in report:  # killed once the disks switched after the memory
            assert name in listed, f"{point}: rolled forward, but not listed ({report})"
            assert ok(state_dir, "snapshot-current", "guest", "--name").strip() == name
            finished.append(point)
        else:
            assert name not in listed, f"{point}: a rolled-back snapshot is listed ({report})"
    # everything a memory snapshot needs exists once its disks switched: it finishes
    assert bool(finished) == (kind == "external memory and disk"), finished
    # the guest still works: another snapshot goes through
    ok(state_dir, "snapshot-create-as", "guest", "after", *args(work, "after"))
    assert_consistent(state_dir, work, "after")


async def test_snapshot_delete_killed_at_every_point(running_guest: tuple[Path, Path],
                                                     tmp_path: Path) -> None:
    """A running delete with data (an active block-commit and pivot), killed before
    the marks are recorded, after them, after the commit, after the rename and
    during the metadata removal: it rolls back or finishes, the guest runs on."""
    state_dir, work = running_guest
    disk_only = CREATE_KINDS["disk-only"]
    ok(state_dir, "snapshot-create-as", "guest", "d0", *disk_only(work, "d0"))
    points = points_of(state_dir, tmp_path, "snapshot-delete", "guest", "d0")
    for point in ("snapshot-delete:committed", "snapshot-delete:renamed",
                  "snapshot-delete:metadata", "snapshot-delete:end"):
        assert point in points, points
    for i, point in enumerate(points):
        name = f"d{i + 1}"
        ok(state_dir, "snapshot-create-as", "guest", name, *disk_only(work, name))
        kill_and_recover(state_dir, point, "snapshot-delete", "guest", name)
        assert_consistent(state_dir, work, point)
        assert_running(state_dir, point)
        if name in ok(state_dir, "snapshot-list", "guest", "--name").split():
            assert point.endswith(":recorded:restore-dir"), f"{point}: {name} not finished"
            ok(state_dir, "snapshot-delete", "guest", name)  # rolled back: still deletable
        assert not (work / f"vda.{name}").exists(), point
        defined = ok(state_dir, "dumpxml", "guest")  # the guest writes its base again
        assert f"file='{work / 'vda.qcow2'}'" in defined, f"{point}: {defined}"
    ok(state_dir, "snapshot-create-as", "guest", "after", *disk_only(work, "after"))
    ok(state_dir, "snapshot-delete", "guest", "after")
    assert_consistent(state_dir, work, "after")


async def test_save_killed_at_every_point(running_guest: tuple[Path, Path],
                                          tmp_path: Path) -> None:
    state_dir, work = running_guest
    points = points_of(state_dir, tmp_path, "managedsave", "guest")
    ok(state_dir, "start", "guest")
    for point in points:
        kill_and_recover(state_dir, point, "managedsave", "guest")
        assert_consistent(state_dir, work, point)
        info = ok(state_dir, "dominfo", "guest")
        if re.search(r"Managed save:\s+yes", info):
            # past the point of no return: a complete save, the domain off
            assert ok(state_dir, "domstate", "guest").strip() == "shut off", point
            ok(state_dir, "start", "guest")
        assert_running(state_dir, point)


async def test_start_from_managed_save_killed_at_every_point(
        running_guest: tuple[Path, Path], tmp_path: Path) -> None:
    state_dir, work = running_guest
    ok(state_dir, "managedsave", "guest")
    points = points_of(state_dir, tmp_path, "start", "guest")
    for point in points:
        ok(state_dir, "managedsave", "guest")
        kill_and_recover(state_dir, point, "start", "guest")
        assert_consistent(state_dir, work, point)
        state = ok(state_dir, "domstate", "guest").strip()
        has_save = re.search(r"Managed save:\s+yes", ok(state_dir, "dominfo", "guest"))
        # rolled back: off with the save kept; forward: running, the save gone
        assert (state, bool(has_save)) in {("shut off", True), ("running", False)}, point
        if state == "shut off":
            ok(state_dir, "start", "guest")
        assert_running(state_dir, point)


@pytest.mark.parametrize("kind", ["external", "internal"])
async def test_revert_killed_at_every_point(running_guest: tuple[Path, Path],
                                            tmp_path: Path, kind: str) -> None:
    state_dir, work = running_guest
    extra = CREATE_KINDS["external memory and disk" if kind == "external" else "internal"]
    ok(state_dir, "snapshot-create-as", "guest", "base", *extra(work, "base"))
    points = points_of(state_dir, tmp_path, "snapshot-revert", "guest", "base")
    for point in points:
        kill_and_recover(state_dir, point, "snapshot-revert", "guest", "base")
        assert_consistent(state_dir, work, point)
        if ok(state_dir, "domstate", "guest").strip() == "shut off":
            ok(state_dir, "start", "guest")  # rolled back after the old QEMU was stopped
        assert_running(state_dir, point)
        ok(state_dir, "snapshot-revert", "guest", "base")  # still revertible
        assert_consistent(state_dir, work, point + " (reverted again)")


async def test_start_killed_at_every_point(running_guest: tuple[Path, Path],
                                           tmp_path: Path) -> None:
    state_dir, _ = running_guest
    ok(state_dir, "destroy", "guest")
    points = points_of(state_dir, tmp_path, "start", "guest")
    assert "launch:spawned" in points
    ok(state_dir, "destroy", "guest")
    for point in points:
        kill_and_recover(state_dir, point, "start", "guest")
        assert ok(state_dir, "domstate", "guest").strip() == "shut off", point
    ok(state_dir, "start", "guest")


async def test_shutdown_killed_while_waiting(running_guest: tuple[Path, Path]) -> None:
    state_dir, work = running_guest
    report = kill_and_recover(state_dir, "shutdown:waiting", "shutdown", "guest")
    assert "shutdown" in report
    assert_consistent(state_dir, work, "shutdown")


async def test_metadata_change_killed_half_way(running_guest: tuple[Path, Path],
                                               tmp_path: Path) -> None:
    state_dir, _ = running_guest
    for name in ("a", "b", "c"):
        ok(state_dir, "snapshot-create-as", "guest", name)
    points = points_of(state_dir, tmp_path, "snapshot-current", "guest", "a")
    before = {f.name: f.read_text() for f in (state_dir / "domains/guest/snapshots").iterdir()}
    for point in points:
        kill_and_recover(state_dir, point, "snapshot-current", "guest", "b")
    kill_and_recover(state_dir, "snapshot-delete:metadata", "snapshot-delete", "guest", "b",
                     "--children", "--metadata")  # killed after the first of two removals
    after = {f.name: f.read_text() for f in (state_dir / "domains/guest/snapshots").iterdir()}
    assert after == before  # every half-made change was put back
    assert ok(state_dir, "snapshot-current", "guest", "--name").strip() == "a"


SOAK_ROUNDS = int(os.environ.get("QDRIVER_SOAK_ROUNDS", "16"))


async def test_soak_random_kills(running_guest: tuple[Path, Path]) -> None:
    """Kills at random moments (not only at fault points) of random operations."""
    state_dir, work = running_guest
    rng = random.Random(int(os.environ.get("QDRIVER_SOAK_SEED", "1")))
    ok(state_dir, "snapshot-create-as", "guest", "base", *CREATE_KINDS["internal"](work, ""))
    ops = [
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
                                 str(state_dir), *args], env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        try:
            proc.wait(delay)
        except subprocess.TimeoutExpired:
            proc.kill()
        _, err = proc.communicate()
        assert "Traceback" not in err, err
        where = f"round {i}: {' '.join(args)} killed after {delay:.2f} s"
        cli(state_dir, "recover", "guest")
        assert_consistent(state_dir, work, where)
        if ok(state_dir, "domstate", "guest").strip() == "shut off":
            ok(state_dir, "start", "guest")
        assert_running(state_dir, where)
