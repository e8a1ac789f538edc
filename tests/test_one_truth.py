"""One truth per domain: handles cache nothing, changes read and write under the lock.

Each test here failed before `Domain` became a thin front over state read
under the domain lock: a handle acted on the definition it had read at
lookup, and CLI processes read the definition before holding the lock.
"""
from __future__ import annotations

import ast
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import anyio
import pytest

import qdriver
from qdriver import DomainState
from qdriver.ops.create_exec import STEPS
from qdriver.ops.create_plan import CreateStep

from .helpers import MakeDomain, backing_chain, disk_source, run_cli, wait_console

PACKAGE = Path(qdriver.__file__).parent


def assert_one_linear_chain(dom: qdriver.Domain, base: str, count: int) -> None:
    """The active image's chain holds every snapshot's overlay, once, above ``base``,
    and each snapshot's metadata parent is the snapshot whose overlay backs its own."""
    tree = dom.snapshot_tree()
    assert len(tree.snaps) == count
    chain = backing_chain(disk_source(dom))
    assert chain[-1] == base and len(chain) == count + 1, chain
    overlay = {name: snap.disks[0].source or "" for name, snap in tree.snaps.items()}
    by_file = {file: name for name, file in overlay.items()}
    assert sorted(by_file) == sorted(chain[:-1]), "an overlay is out of the active chain"
    for upper, lower in zip(chain, chain[1:]):
        expected_parent = by_file.get(lower)  # None for the base image
        assert tree.parent(by_file[upper]) == expected_parent, (upper, lower)
    assert tree.current == by_file[chain[0]]


async def test_a_stale_handle_does_not_orphan_a_snapshot(make_domain: MakeDomain,
                                                         state_dir: Path) -> None:
    a = await make_domain(name="w")
    base = disk_source(a)
    b = qdriver.Driver(state_dir).lookup("w")
    await b.snapshot_create_xml("<domainsnapshot><name>s1</name></domainsnapshot>",
                                disk_only=True)
    await a.snapshot_create_xml("<domainsnapshot><name>s2</name></domainsnapshot>",
                                disk_only=True)
    assert_one_linear_chain(a, base, 2)
    assert backing_chain(disk_source(a))[1] == \
        a.snapshot_tree().get("s1").disks[0].source
    assert a.snapshot_lookup("s2").parent().name == "s1"


@pytest.mark.parametrize("running", [False, True], ids=["offline", "running"])
async def test_concurrent_cli_snapshots_make_one_linear_chain(make_domain: MakeDomain,
                                                              booted: MakeDomain,
                                                              state_dir: Path,
                                                              running: bool) -> None:
    dom = await (booted if running else make_domain)(name="w")
    base = disk_source(dom)
    procs = [subprocess.Popen([sys.executable, "-m", "qdriver", "--state-dir", str(state_dir),
                               "snapshot-create-as", "w", f"c{i}", "--disk-only"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE)
             for i in range(4)]
    results = [(p.wait(timeout=120), p.stderr.read().decode() if p.stderr else "")
               for p in procs]
    for p in procs:
        for stream in (p.stdout, p.stderr):
            if stream:
                stream.close()
    assert [rc for rc, _ in results] == [0] * 4, results
    assert_one_linear_chain(dom, base, 4)
    if running:
        assert dom.state == DomainState.RUNNING
        async with dom.monitor() as mon:  # QEMU writes to the top of that same chain
            block = await mon.execute("query-block")
        assert block[0]["inserted"]["file"] == disk_source(dom)
        await dom.destroy()


async def test_a_long_lived_handle_follows_other_processes(make_domain: MakeDomain,
                                                           state_dir: Path) -> None:
    dom = await make_domain()  # held across everything the CLI does below
    run_cli(state_dir, "start", "guest")
    assert dom.is_active and dom.state == DomainState.RUNNING
    first_id = dom.id
    assert first_id is not None and f"<domain type='qemu' id='{first_id}'" in dom.xml_desc()
    await wait_console(dom, "GUEST-READY")

    run_cli(state_dir, "suspend", "guest")
    assert dom.state_reason() == (DomainState.PAUSED, "user")
    assert (await dom.get_state())[0] == DomainState.PAUSED

    run_cli(state_dir, "snapshot-create-as", "guest", "c1", "--disk-only")
    assert disk_source(dom).endswith(".c1")
    assert dom.current_snapshot().name == "c1"

    run_cli(state_dir, "destroy", "guest")
    assert dom.state_reason() == (DomainState.SHUTOFF, "destroyed")
    assert not dom.is_active and dom.id is None

    run_cli(state_dir, "start", "guest", "--paused")
    assert dom.state == DomainState.PAUSED and dom.id not in (None, first_id)

    # the handle's own change builds on what the CLI did
    snap = await dom.snapshot_create_xml("<domainsnapshot><name>c2</name></domainsnapshot>",
                                         disk_only=True)
    assert snap.parent().name == "c1"
    assert backing_chain(disk_source(dom))[1].endswith(".c1")
    await dom.destroy()


async def test_a_handle_on_a_domain_that_was_replaced_refuses(make_domain: MakeDomain,
                                                              driver: qdriver.Driver,
                                                              state_dir: Path) -> None:
    dom = await make_domain()
    xml = dom.xml_desc(inactive=True)
    await driver.undefine(dom)
    with pytest.raises(qdriver.NoDomainError):
        await dom.start()
    other = await driver.define_xml(xml.replace(f"<uuid>{dom.uuid}</uuid>", ""))
    assert other.uuid != dom.uuid
    with pytest.raises(qdriver.NoDomainError, match="uuid"):
        _ = dom.definition
    with pytest.raises(qdriver.NoDomainError):
        await dom.start()
    assert not other.is_active


async def test_state_queries_neither_reap_without_the_lock_nor_block(
        booted: MakeDomain, monkeypatch: pytest.MonkeyPatch) -> None:
    dom = await booted()

    def no_blocking_sleep(seconds: float) -> None:
        raise AssertionError("time.sleep on a state query blocks the event loop")
    monkeypatch.setattr(time, "sleep", no_blocking_sleep)

    async with dom.job():  # another operation holds the lock
        os.kill(int(dom.paths.pidfile.read_text()), signal.SIGKILL)
        with anyio.fail_after(30):  # until the supervisor recorded the exit
            while dom.state != DomainState.SHUTOFF:
                await anyio.sleep(0.01)
        assert dom.state_reason() == (DomainState.SHUTOFF, "crashed")
        assert await dom.get_state() == (DomainState.SHUTOFF, "crashed")
        assert dom.paths.runtime.exists(), "cleaned up without holding the lock"
    assert await dom.get_state() == (DomainState.SHUTOFF, "crashed")
    assert not dom.paths.runtime.exists() and not dom.paths.qmp.exists()
    assert dom.state_reason() == (DomainState.SHUTOFF, "crashed")


@pytest.mark.no_qemu
def test_every_plan_step_has_an_executor_step() -> None:
    assert set(STEPS) == set(CreateStep)


def _imports(path: Path, module: str) -> set[str]:
    """The qdriver modules ``module`` imports, TYPE_CHECKING imports included."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = package
            for _ in range(node.level - 1):
                base = base.rpartition(".")[0]
            target = f"{base}.{node.module}" if node.level and node.module else \
                base if node.level else node.module or ""
            found.add(target)
            found.update(f"{target}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
    return found


@pytest.mark.no_qemu
def test_the_import_graph_has_no_cycle() -> None:
    modules = {}
    for path in PACKAGE.rglob("*.py"):
        rel = path.relative_to(PACKAGE.parent).with_suffix("")
        name = ".".join(rel.parts[:-1] if rel.name == "__init__" else rel.parts)
        modules[name] = path
    graph = {name: {m for m in _imports(path, name) if m in modules and m != name}
             for name, path in modules.items()}
    # ``from . import x`` names the root package, whose __init__ only re-exports
    # the public API; the edge that counts is the one to ``x``
    graph = {n: (deps - {"qdriver"} if n != "qdriver" else deps) for n, deps in graph.items()}
    for core in ("qdriver.domain", "qdriver.job", "qdriver.launch.runtime",
                 "qdriver.snapshots.handle", "qdriver.ops.transaction",
                 "qdriver.ops.create_exec"):
        assert core in graph
    visiting: list[str] = []
    done: set[str] = set()

    def visit(node: str) -> None:
        if node in done:
            return
        assert node not in visiting, "import cycle: " + " -> ".join(
            visiting[visiting.index(node):] + [node])
        visiting.append(node)
        for dep in sorted(graph[node]):
            visit(dep)
        visiting.pop()
        done.add(node)
    for name in sorted(graph):
        visit(name)


@pytest.mark.no_qemu
def test_domain_stays_an_index_of_the_api() -> None:
    """Each Domain method opens a job and calls one operation: the module stays short."""
    assert len((PACKAGE / "domain.py").read_text().splitlines()) <= 350


@pytest.mark.no_qemu
def test_no_execution_imports_another_operations() -> None:
    """Executions share helpers through lower modules (``ops.shared``, ``ops.memsave``,
    the packages below ``ops``), never through one another."""
    executions = {path.stem: path for path in (PACKAGE / "ops").glob("*_exec.py")}
    assert {"create_exec", "revert_exec", "delete_exec", "save_exec"} <= set(executions)
    for stem, path in executions.items():
        others = {f"qdriver.ops.{o}" for o in executions if o != stem}
        crossing = _imports(path, f"qdriver.ops.{stem}") & others
        assert not crossing, f"{stem} imports {sorted(crossing)}"


async def test_define_on_a_running_domain_leaves_the_live_chain_alone(
        booted: MakeDomain, state_dir: Path, tmp_path: Path) -> None:
    """libvirt's live and persistent definitions: ``define`` of an older XML while
    the guest runs changes only what the next start uses; snapshots of the running
    guest go on from the images QEMU really writes."""
    dom = await booted(name="w")
    base = disk_source(dom)
    old = tmp_path / "old.xml"
    old.write_text(dom.xml_desc(inactive=True))
    await dom.snapshot_create_xml("<domainsnapshot><name>s1</name></domainsnapshot>",
                                  disk_only=True)
    s1 = disk_source(dom)
    assert s1 != base and dom.inactive_definition.disks[0].source == s1, \
        "the persistent definition follows a snapshot of the disk it shares with QEMU"
    run_cli(state_dir, "define", str(old))
    assert dom.inactive_definition.disks[0].source == base
    assert disk_source(dom) == s1, "define changed what QEMU is taken to run"
    live = run_cli(state_dir, "dumpxml", "w").stdout.decode()
    inactive = run_cli(state_dir, "dumpxml", "w", "--inactive").stdout.decode()
    assert s1 in live and s1 not in inactive and base in inactive
    run_cli(state_dir, "snapshot-create-as", "w", "s2", "--disk-only")
    s2 = disk_source(dom)
    assert backing_chain(s2) == [s2, s1, base], "the chain forked under the running guest"
    assert dom.inactive_definition.disks[0].source == base, "the user's define was undone"
    assert all(Path(p).exists() for p in (base, s1, s2))
    await dom.destroy()
    assert disk_source(dom) == base, "the persistent definition applies next"
    assert not dom.paths.live_definition.exists()
