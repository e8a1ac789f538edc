"""One job per operation: the state an operation acts on is read once.

A running internal revert and a delete each parse the definition and the
snapshot tree once and ask QEMU its run status once; the counts are taken
by wrapping the parsers and the monitor, in this process.
"""
from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Awaitable, Callable

import pytest

import qdriver
from qdriver import qmp
from qdriver.xml.domain import DomainDef
from qdriver.xml.snapshot import SnapshotDef

from .helpers import wait_console


@contextmanager
def counted(monkeypatch: pytest.MonkeyPatch) -> Iterator[Counter[str]]:
    """Count definition parses, snapshot-file parses and QMP commands by name."""
    seen: Counter[str] = Counter()
    parse_domain = DomainDef.parse.__func__  # type: ignore[attr-defined]
    parse_snapshot = SnapshotDef.parse.__func__  # type: ignore[attr-defined]
    execute = qmp.Monitor.execute

    def domain(cls: type[DomainDef], *args: Any, **kw: Any) -> DomainDef:
        seen["definition"] += 1
        return parse_domain(cls, *args, **kw)  # type: ignore[no-any-return]

    def snapshot(cls: type[SnapshotDef], *args: Any, **kw: Any) -> SnapshotDef:
        seen["snapshot file"] += 1
        return parse_snapshot(cls, *args, **kw)  # type: ignore[no-any-return]

    async def command(self: qmp.Monitor, name: str, *args: Any, **kw: Any) -> Any:
        seen[name] += 1
        return await execute(self, name, *args, **kw)

    monkeypatch.setattr(DomainDef, "parse", classmethod(domain))
    monkeypatch.setattr(SnapshotDef, "parse", classmethod(snapshot))
    monkeypatch.setattr(qmp.Monitor, "execute", command)
    yield seen
    monkeypatch.undo()


async def test_a_running_internal_revert_reads_its_state_once(
        booted: Callable[..., Awaitable[qdriver.Domain]],
        monkeypatch: pytest.MonkeyPatch) -> None:
    dom = await booted()
    await dom.snapshot_create_xml("<domainsnapshot><name>s1</name></domainsnapshot>")
    await dom.snapshot_create_xml("<domainsnapshot><name>s2</name></domainsnapshot>")
    await wait_console(dom, "COUNTER 7")
    with counted(monkeypatch) as seen:
        await dom.revert_to_snapshot("s1")
    assert dom.current_snapshot().name == "s1" and dom.state == qdriver.DomainState.RUNNING
    assert seen["definition"] == 1, seen
    assert seen["snapshot file"] == 2, f"the tree of two snapshots parsed more than once: {seen}"
    assert seen["query-status"] == 1, seen


async def test_a_running_delete_reads_its_state_once(
        booted: Callable[..., Awaitable[qdriver.Domain]], tmp_path: Any,
        monkeypatch: pytest.MonkeyPatch) -> None:
    dom = await booted()
    for name in ("e1", "e2"):
        await dom.snapshot_create_xml(
            f"<domainsnapshot><name>{name}</name><disks><disk name='vda' snapshot='external'>"
            f"<source file='{tmp_path}/vda.{name}'/></disk></disks></domainsnapshot>",
            disk_only=True)
    with counted(monkeypatch) as seen:
        await dom.delete_snapshot("e1")
    assert [s.name for s in dom.list_snapshots()] == ["e2"]
    assert seen["definition"] == 1, seen
    assert seen["snapshot file"] == 2, f"the tree of two snapshots parsed more than once: {seen}"
    assert seen["query-status"] <= 1, seen


async def test_a_template_revert_asks_the_new_qemu_nothing_the_last_one_told(
        booted: Callable[..., Awaitable[qdriver.Domain]], tmp_path: Any,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The revert stops one QEMU and starts another of the same binary: what the
    first one's emulator could do holds for the second, so it is not probed again
    (and a QEMU of another binary is, see `RunRecord.emulator`)."""
    dom = await booted(memory_backing="<memoryBacking><source type='file'/>"
                                      "<access mode='shared'/></memoryBacking>")
    await dom.snapshot_create_xml(
        f"<domainsnapshot><name>t</name><memory snapshot='external' file='{tmp_path}/t.mem'/>"
        f"<disks><disk name='vda' snapshot='external'><source file='{tmp_path}/vda.t'/>"
        "</disk></disks></domainsnapshot>", template=True)
    before = dom.runtime.peek()
    assert before is not None and before.caps and before.emulator
    with counted(monkeypatch) as seen:
        await dom.revert_to_snapshot("t")
    after = dom.runtime.peek()
    assert after is not None and after.pid != before.pid
    assert (after.caps, after.emulator) == (before.caps, before.emulator)
    assert seen["query-version"] == seen["query-commands"] == 0, seen
