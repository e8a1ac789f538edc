"""Persisted records carry a format version; what this release cannot read is
reported by name and never leaves a domain that no operation can touch.

Each test writes a file as a later release might (another version, an action
kind this one does not know) and then uses the domain.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Awaitable, Callable

import pytest

import qdriver
from qdriver import journal
from qdriver.ops import actions

MakeDomain = Callable[..., Awaitable[qdriver.Domain]]


def write_journal(dom: qdriver.Domain, **fields: Any) -> None:
    """A journal left by a dead process (pid 0 never runs)."""
    record = {"op": "snapshot-create 'x'", "pid": 0, "start_time": 0, "actions": [],
              "committed": False, **fields}
    dom.paths.journal.write_text(json.dumps(record))


def test_every_action_kind_round_trips_through_the_journal(tmp_path: Path) -> None:
    made = [actions.remove_file("/x/f"), actions.restore_files(tmp_path, ["a"], "meta"),
            actions.follow_overlays({"vda": "/x/o"}, switched=True), actions.resume_guest(),
            actions.cancel_migration(), actions.wait_jobs(),
            actions.qmp_command("node", "blockdev-del", {"node-name": "n"}),
            actions.qmp_job("snap", "snapshot-delete", {"tag": "s"}),
            actions.hmp("snap", "delvm s"), actions.qemu_img_snapshot_delete("/x/i", "s"),
            actions.thaw(tmp_path), actions.stop_qemu("destroyed"),
            actions.complete_memory_file("/x/m", "/x/m.ram"),
            actions.move_ram_file(Path("/x/pc.ram"), "/x/m.ram"),
            actions.discard_fork("f1", "11111111-2222-3333-4444-555555555555"),
            actions.discard_standby("0a1b2c3d", ["/x/vda.1"]),
            actions.restore_file("/x/g_VARS.fd.before-revert", "/x/g_VARS.fd", "store"),
            actions.write_metadata_files(tmp_path, {"a.xml": "<x/>"}, "meta")]
    assert {a.kind for a in made} | {journal.WriteDefinition.KIND} == set(journal.KINDS)
    assert set(journal.KINDS.values()) == set(actions.ACTIONS), "a kind without its code"
    for action in made:
        assert journal.Action.from_json(json.loads(json.dumps(action.to_json()))) == action


async def test_a_journal_of_a_later_format_is_reported_and_set_aside(
        make_domain: MakeDomain) -> None:
    dom = await make_domain()
    marker = dom.paths.dir / "must-stay"
    marker.write_text("x")
    write_journal(dom, format=99, actions=[
        {"kind": "remove-file", "what": f"file {marker}", "args": {"path": str(marker)}}])
    report = await dom.recover()
    assert report is not None
    assert "journal format 99 is not one this release reads" in str(report), report
    assert marker.exists(), "an action of a journal it cannot read was run"
    assert dom.interrupted_operation() is None and not dom.paths.journal.exists()
    await dom.managed_save_remove()  # the domain takes operations again


async def test_an_unknown_action_kind_is_reported_by_name(make_domain: MakeDomain) -> None:
    dom = await make_domain()
    write_journal(dom, format=journal.FORMAT, actions=[
        {"kind": "teleport-guest", "what": "the guest's trip", "args": {"to": "mars"}}])
    report = await dom.recover()
    assert report is not None and "unknown journal action 'teleport-guest'" in str(report)
    assert "the guest's trip" in str(report)
    assert dom.interrupted_operation() is None
    await dom.managed_save_remove()


async def test_an_action_whose_fields_do_not_fit_is_reported(make_domain: MakeDomain) -> None:
    dom = await make_domain()
    write_journal(dom, format=journal.FORMAT, actions=[
        {"kind": "remove-file", "what": "a file", "args": {"where": "/x"}}])
    report = await dom.recover()
    assert report is not None and "journal action 'remove-file' (a file) does not fit" \
        in str(report)
    await dom.managed_save_remove()


async def test_a_journal_of_the_first_releases_still_runs(make_domain: MakeDomain) -> None:
    """Unversioned journals (before formats) have the same fields: they still roll back."""
    dom = await make_domain()
    left = dom.paths.dir / "left-by-the-dead"
    left.write_text("x")
    write_journal(dom, actions=[
        {"kind": "remove-file", "what": f"file {left}", "args": {"path": str(left)}}])
    report = await dom.recover()
    assert report is not None and report.failed == [] and not left.exists()


async def test_delete_marks_of_a_later_format_leave_the_domain_usable(
        make_domain: MakeDomain) -> None:
    dom = await make_domain()
    index = dom.paths.snapshots / "delete-in-progress.json"
    index.parent.mkdir(parents=True, exist_ok=True)
    index.write_text(json.dumps({"format": 99, "snapshots": ["s1"]}))
    assert "format 99" in (dom.interrupted_operation() or "")
    await dom.managed_save_remove()
    assert not index.exists() and dom.interrupted_operation() is None


async def test_a_run_record_of_a_later_format_is_named(make_domain: MakeDomain) -> None:
    """A run record another release wrote may describe a QEMU this one cannot
    follow: it is refused by name, never taken for "shut off"."""
    dom = await make_domain()
    dom.paths.runtime.write_text(json.dumps({"format": 99, "pid": 1}))
    with pytest.raises(qdriver.InternalError, match="run.json' is of format 99"):
        await dom.start()
    dom.paths.runtime.unlink()
