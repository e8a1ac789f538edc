"""Snapshot metadata: the tree, libvirt's list filters, persistence, REDEFINE, the CLI."""
from __future__ import annotations

import json
import os
from functools import partial
from pathlib import Path

import pytest

import qdriver
from qdriver.errors import InvalidArgError, NoSnapshotError, OperationInvalidError, QDriverError

from .helpers import run_cli

DOMAIN = """<domain type='qemu'><name>meta</name><uuid>{uuid}</uuid><memory>65536</memory>
<devices>
  <disk type='file'><driver type='qcow2'/><source file='/img/vda.qcow2'/><target dev='vda'/></disk>
</devices></domain>"""
UUID = "0b7c3a5e-1111-4d2c-8e7f-8f0c6d9a2b10"


def snap_xml(name: str, state: str = "running", parent: str | None = None, t: int = 0,
             uuid: str = UUID, external: bool = False) -> str:
    parent_xml = f"<parent><name>{parent}</name></parent>" if parent else ""
    memory = "<memory snapshot='external' file='/m'/>" if external else \
        "<memory snapshot='no'/>" if state in ("shutoff", "disk-snapshot") else \
        "<memory snapshot='internal'/>"
    return (f"<domainsnapshot><name>{name}</name><state>{state}</state>{parent_xml}"
            f"<creationTime>{t}</creationTime>{memory}"
            f"<domain type='qemu'><name>meta</name><uuid>{uuid}</uuid></domain>"
            "</domainsnapshot>")


@pytest.fixture
async def dom(driver: qdriver.Driver) -> qdriver.Domain:
    return await driver.define_xml(DOMAIN.format(uuid=UUID))


async def build_tree(dom: qdriver.Domain) -> None:
    """a -> b -> c,  a -> d (external),  e (offline root), f (disk-only, under e).

    Creation times are deliberately not in tree order, so that sorting by
    time and topological order differ.
    """
    for xml in (snap_xml("a", t=50), snap_xml("b", parent="a", t=10),
                snap_xml("c", parent="b", t=5), snap_xml("d", parent="a", t=60, external=True),
                snap_xml("e", state="shutoff", t=1),
                snap_xml("f", state="disk-snapshot", parent="e", t=70)):
        await dom.snapshot_create_xml(xml, redefine=True)
    await dom.snapshot_set_current("c")


def names(snaps: list[qdriver.Snapshot]) -> list[str]:
    return [s.name for s in snaps]


async def test_tree_operations(dom: qdriver.Domain) -> None:
    await build_tree(dom)
    c = dom.snapshot_lookup("c")
    assert c.is_current() and dom.current_snapshot() == c and dom.has_current_snapshot()
    assert c.parent().name == "b" and c.parent().parent().name == "a"
    with pytest.raises(NoSnapshotError, match="snapshot 'a' does not have a parent"):
        dom.snapshot_lookup("a").parent()
    assert names(dom.snapshot_lookup("a").children()) == ["b", "d"]
    assert names(dom.snapshot_lookup("a").children(descendants=True)) == ["b", "c", "d"]
    with pytest.raises(NoSnapshotError, match="no domain snapshot with matching name 'zz'"):
        dom.snapshot_lookup("zz")


async def test_list_filters(dom: qdriver.Domain) -> None:
    await build_tree(dom)
    by_time = ["e", "c", "b", "a", "d", "f"]
    assert names(dom.list_snapshots()) == by_time
    assert names(dom.list_snapshots(roots=True)) == ["e", "a"]
    assert names(dom.list_snapshots(leaves=True)) == ["c", "d", "f"]
    assert names(dom.list_snapshots(no_leaves=True)) == ["e", "b", "a"]
    assert names(dom.list_snapshots(leaves=True, no_leaves=True)) == by_time
    assert names(dom.list_snapshots(inactive=True)) == ["e"]
    assert names(dom.list_snapshots(disk_only=True)) == ["f"]
    assert names(dom.list_snapshots(active=True)) == ["c", "b", "a", "d"]
    assert names(dom.list_snapshots(inactive=True, disk_only=True)) == ["e", "f"]
    assert names(dom.list_snapshots(external=True)) == ["d"]
    assert names(dom.list_snapshots(internal=True)) == ["e", "c", "b", "a", "f"]
    assert names(dom.list_snapshots(metadata=True)) == by_time
    assert names(dom.list_snapshots(no_metadata=True)) == []
    assert names(dom.list_snapshots(leaves=True, active=True)) == ["c", "d"]
    assert names(dom.list_snapshots(start="a")) == ["b", "d"]
    assert names(dom.list_snapshots(start="a", descendants=True)) == ["b", "c", "d"]


async def test_topological_order_puts_parents_first(dom: qdriver.Domain) -> None:
    await build_tree(dom)
    order = names(dom.list_snapshots(topological=True))
    assert sorted(order) == sorted("abcdef")
    tree = dom.snapshot_tree()
    for name in order:
        parent = tree.parent(name)
        if parent is not None:
            assert order.index(parent) < order.index(name), order
    assert names(dom.list_snapshots()) != order  # time order alone would not do


async def test_metadata_persists_in_libvirt_format(dom: qdriver.Domain, state_dir: Path) -> None:
    await build_tree(dom)
    again = qdriver.Driver(state_dir).lookup("meta")
    assert again.current_snapshot().name == "c"
    files = sorted(p.name for p in dom.paths.snapshots.iterdir())
    assert files == [f"{n}.xml" for n in "abcdef"]
    texts = {p.stem: p.read_text() for p in dom.paths.snapshots.iterdir()}
    assert [n for n, t in texts.items() if "<active>1</active>" in t] == ["c"]
    assert all("<active>0</active>" in t for n, t in texts.items() if n != "c")
    assert f"<uuid>{UUID}</uuid>" in texts["a"]
    assert "<active>" not in again.snapshot_lookup("c").xml_desc()


async def test_set_current_rewrites_both_files(dom: qdriver.Domain) -> None:
    await build_tree(dom)
    await dom.snapshot_set_current("a")
    assert "<active>1</active>" in (dom.paths.snapshots / "a.xml").read_text()
    assert "<active>0</active>" in (dom.paths.snapshots / "c.xml").read_text()


async def test_delete_metadata_reparents_and_moves_current(dom: qdriver.Domain) -> None:
    await build_tree(dom)
    await dom.snapshot_set_current("b")
    assert await dom.snapshot_lookup("b").delete(metadata_only=True) == ["b"]
    assert dom.snapshot_lookup("c").parent().name == "a"
    assert dom.current_snapshot().name == "a"
    assert not (dom.paths.snapshots / "b.xml").exists()
    c_xml = (dom.paths.snapshots / "c.xml").read_text()
    assert "<parent>\n    <name>a</name>\n  </parent>" in c_xml
    assert qdriver.Driver(dom.driver.state_dir).lookup("meta").snapshot_lookup("c") \
        .parent().name == "a"
    removed = await dom.snapshot_lookup("a").delete(metadata_only=True, children_only=True)
    assert sorted(removed) == ["c", "d"] and names(dom.list_snapshots()) == ["e", "a", "f"]
    await dom.snapshot_lookup("e").delete(metadata_only=True, children=True)
    assert names(dom.list_snapshots()) == ["a"]
    assert await dom.snapshot_lookup("a").delete() == ["a"]  # its images never existed
    assert names(dom.list_snapshots()) == []


async def test_atomic_write_keeps_old_file_when_rename_fails(
        dom: qdriver.Domain, monkeypatch: pytest.MonkeyPatch) -> None:
    await build_tree(dom)
    path = dom.paths.snapshots / "c.xml"
    before = path.read_text()

    def crash(src: object, dst: object) -> None:
        raise OSError("simulated crash between write and rename")
    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="simulated crash"):
        await dom.snapshot_set_current("a")
    monkeypatch.undo()
    assert path.read_text() == before
    assert [p for p in dom.paths.snapshots.iterdir() if p.name.startswith(".")] == []
    assert dom.current_snapshot().name == "c"


async def test_corrupt_file_is_skipped_with_a_clear_message(dom: qdriver.Domain,
                                                            state_dir: Path) -> None:
    await build_tree(dom)
    (dom.paths.snapshots / "b.xml").write_text("<domainsnapshot><name>b</name")
    (dom.paths.snapshots / "zz.xml").write_text(snap_xml("other", t=3))
    assert sorted(names(dom.list_snapshots())) == ["a", "c", "d", "e", "f"]
    errors = dom.snapshot_load_errors()
    assert any("Failed to parse snapshot XML from file" in e and "b.xml" in e for e in errors)
    assert any("zz.xml" in e for e in errors)
    r = run_cli(state_dir, "snapshot-list", "meta", "--name")
    assert r.stdout.decode().split() == ["e", "c", "a", "d", "f"]
    assert "warning: Failed to parse snapshot XML from file" in r.stderr.decode()


def claiming_current(dom: qdriver.Domain) -> list[str]:
    return sorted(p.stem for p in dom.paths.snapshots.glob("*.xml")
                  if "<active>1</active>" in p.read_text())


async def test_two_current_markers_pick_the_newest_and_are_repaired(
        dom: qdriver.Domain, state_dir: Path) -> None:
    await build_tree(dom)
    path = dom.paths.snapshots / "a.xml"  # as an interrupted change could leave it
    path.write_text(path.read_text().replace("<active>0</active>", "<active>1</active>"))
    assert claiming_current(dom) == ["a", "c"]
    # loading picks the newest claimant (a: t=50, c: t=5), and says so and how to repair
    assert dom.current_snapshot().name == "a"
    assert any("Too many snapshots claiming to be current" in e and "using the newest, 'a'"
               in e and "snapshot-current" in e for e in dom.snapshot_load_errors())
    r = run_cli(state_dir, "snapshot-current", "meta", "--name")
    assert r.stdout.decode().split() == ["a"] and "warning: Too many" in r.stderr.decode()
    # snapshot-current repairs it, to any of them: exactly one claims it afterwards
    run_cli(state_dir, "snapshot-current", "meta", "c")
    assert claiming_current(dom) == ["c"]
    assert dom.current_snapshot().name == "c" and dom.snapshot_load_errors() == []


async def test_redefine_validation(dom: qdriver.Domain) -> None:
    await build_tree(dom)
    other = "11111111-2222-3333-4444-555555555555"
    with pytest.raises(InvalidArgError, match=f"definition for snapshot x must use uuid {UUID}"):
        await dom.snapshot_create_xml(snap_xml("x", uuid=other), redefine=True)
    with pytest.raises(InvalidArgError, match="parent nope for snapshot x not found"):
        await dom.snapshot_create_xml(snap_xml("x", parent="nope"), redefine=True)
    with pytest.raises(InvalidArgError, match="parent c would create cycle to a"):
        await dom.snapshot_create_xml(snap_xml("a", parent="c"), redefine=True)
    with pytest.raises(InvalidArgError, match="cannot change between online and offline "
                                              "snapshot state in snapshot a"):
        await dom.snapshot_create_xml(snap_xml("a", state="shutoff"), redefine=True)
    with pytest.raises(InvalidArgError, match="cannot change between disk only and full "
                                              "system in snapshot e"):
        await dom.snapshot_create_xml(snap_xml("e", state="disk-snapshot"), redefine=True)
    with pytest.raises(InvalidArgError, match="disk-only flag for snapshot a requires "
                                              "disk-snapshot state"):
        await dom.snapshot_create_xml(snap_xml("a"), redefine=True, disk_only=True)
    with pytest.raises(InvalidArgError, match="is required by flag "
                                              "'VIR_DOMAIN_SNAPSHOT_CREATE_CURRENT'"):
        await dom.snapshot_create_xml(snap_xml("x"), current=True)
    assert sorted(names(dom.list_snapshots())) == list("abcdef")  # nothing changed


async def test_redefine_updates_in_place_and_imports_libvirt_metadata(
        dom: qdriver.Domain, tmp_path: Path) -> None:
    await build_tree(dom)
    # a file as libvirt keeps it in /var/lib/libvirt/qemu/snapshot/<vm>/<name>.xml
    libvirt_file = snap_xml("imported", parent="c", t=99).replace(
        "</domainsnapshot>", "<active>1</active></domainsnapshot>")
    snap = await dom.snapshot_create_xml(libvirt_file, redefine=True, current=True)
    assert snap.is_current() and snap.parent().name == "c"
    redone = snap_xml("b", parent="a", t=10).replace("<name>b</name>",
                                                     "<name>b</name><description>new</description>")
    await dom.snapshot_create_xml(redone, redefine=True)
    assert "<description>new</description>" in dom.snapshot_lookup("b").xml_desc()
    assert names(dom.snapshot_lookup("b").children()) == ["c"]


async def test_names_cannot_escape_the_snapshot_directory(dom: qdriver.Domain) -> None:
    with pytest.raises(QDriverError):
        dom.snapshot_store().path("../../domain")
    with pytest.raises(QDriverError):
        await dom.snapshot_create_xml(snap_xml("../escape"), redefine=True)
    assert not (dom.paths.dir / "escape.xml").exists()


async def test_creation_is_planned_first_and_refusals_touch_nothing(dom: qdriver.Domain) -> None:
    with pytest.raises(QDriverError, match="memory state cannot be saved"):
        await dom.snapshot_create_xml("<domainsnapshot><memory snapshot='internal'/>"
                                      "</domainsnapshot>")
    assert not dom.paths.snapshots.exists()


async def test_undefine_with_snapshots(dom: qdriver.Domain, driver: qdriver.Driver) -> None:
    await build_tree(dom)
    with pytest.raises(OperationInvalidError, match="cannot delete inactive domain with 6 "
                                                    "snapshots"):
        await driver.undefine(dom)
    await driver.undefine(dom, snapshots_metadata=True)
    assert driver.list_domains() == []


# -- the CLI ------------------------------------------------------------------------

async def test_cli_snapshot_commands(dom: qdriver.Domain, state_dir: Path,
                                     tmp_path: Path) -> None:
    await build_tree(dom)
    cli = partial(run_cli, state_dir)
    tree = cli("snapshot-list", "meta", "--tree").stdout.decode()
    assert tree == ("e\n  |\n  +- f\n\na\n  |\n  +- b\n  |   |\n  |   +- c\n  |\n  +- d\n")
    table = cli("snapshot-list", "meta", "--parent").stdout.decode().splitlines()
    assert table[0].split() == ["Name", "Creation", "Time", "State", "Parent"]
    assert set(table[1]) == {"-"}
    assert table[3].split()[0] == "c" and table[3].split()[-1] == "b"
    assert cli("snapshot-list", "meta", "--roots", "--name").stdout.decode().split() == \
        ["e", "a"]
    assert cli("snapshot-list", "meta", "--current", "--name").stdout.decode().split() == []
    assert cli("snapshot-list", "meta", "--from", "a", "--name").stdout.decode().split() == \
        ["b", "d"]
    assert cli("snapshot-list", "meta", "--from", "a", "--tree").stdout.decode() == \
        "a\n  |\n  +- b\n  |   |\n  |   +- c\n  |\n  +- d\n"
    r = cli("snapshot-list", "meta", "--from", "a", "--roots", check=False)
    assert r.returncode == 1 and "not compatible" in r.stderr.decode()
    assert cli("snapshot-current", "meta", "--name").stdout.decode().strip() == "c"
    assert cli("snapshot-parent", "meta", "c").stdout.decode().strip() == "b"
    r = cli("snapshot-parent", "meta", "a", check=False)
    assert r.returncode == 1 and r.stderr.decode().strip() == \
        "error: Domain snapshot not found: snapshot 'a' does not have a parent"
    info = cli("snapshot-info", "meta", "d").stdout.decode()
    assert "Location:       external" in info and "Parent:         a" in info
    assert cli("snapshot-dumpxml", "meta", "a").stdout.decode() == \
        dom.snapshot_lookup("a").xml_desc()
    assert cli("snapshot-current", "meta", "a").stdout.decode().strip() == \
        "Snapshot a set as current"
    f = tmp_path / "g.xml"
    f.write_text(snap_xml("g", parent="a", t=80))
    assert cli("snapshot-create", "meta", str(f), "--redefine", "--current").stdout.decode() \
        .strip() == f"Domain snapshot g defined from '{f}'"
    assert dom.current_snapshot().name == "g"
    assert cli("snapshot-delete", "meta", "g", "--metadata").stdout.decode().strip() == \
        "Domain snapshot g deleted"
    assert dom.current_snapshot().name == "a"


async def test_cli_snapshot_plan_contract(dom: qdriver.Domain, state_dir: Path,
                                          tmp_path: Path) -> None:
    r = run_cli(state_dir, "snapshot-plan", "meta", "--json")
    plan = json.loads(r.stdout)
    assert plan["memory"] == "no" and plan["state"] == "shutoff"
    assert plan["disks"] == {"vda": {"snapshot": "internal", "file": None}}
    assert plan["pause"] == "none" and plan["steps"][0] == "qemu-img-snapshot"
    r = run_cli(state_dir, "snapshot-plan", "meta", "--assume-state", "running", "--json",
                "--memspec", "/save/m", "--name", "s1")
    plan = json.loads(r.stdout)
    assert (plan["memory"], plan["memory_file"], plan["state"], plan["pause"]) == \
        ("external", "/save/m", "running", "whole")
    assert plan["disks"]["vda"] == {"snapshot": "external", "file": "/img/vda.s1"}
    assert "migrate-to-file" in plan["steps"] and "transaction" in plan["steps"]
    f = tmp_path / "bad.xml"
    f.write_text("<domainsnapshot><memory snapshot='internal'/></domainsnapshot>")
    r = run_cli(state_dir, "snapshot-plan", "meta", str(f), "--json", check=False)
    assert r.returncode == 1
    assert json.loads(r.stdout) == {"error": {
        "code": "XML_ERROR",
        "message": "XML error: memory state cannot be saved with offline or disk-only snapshot"}}
    r = run_cli(state_dir, "snapshot-plan", "meta", "--assume-state", "running", "--live",
                "--json", check=False)
    assert json.loads(r.stdout)["error"]["code"] == "OPERATION_UNSUPPORTED"
    human = run_cli(state_dir, "snapshot-plan", "meta", "--assume-state", "running")
    assert "steps:" in human.stdout.decode() and "snapshot-save" in human.stdout.decode()


async def test_cli_create_as_print_xml(dom: qdriver.Domain, state_dir: Path) -> None:
    r = run_cli(state_dir, "snapshot-create-as", "meta", "s1", "--description", "hi",
                "--memspec", "file=/save/s1.mem,snapshot=external",
                "--diskspec", "vda,snapshot=external,file=/img/vda.s1,driver=qcow2",
                "--print-xml")
    assert r.stdout.decode() == (
        "<domainsnapshot>\n  <name>s1</name>\n  <description>hi</description>\n"
        "  <memory snapshot='external' file='/save/s1.mem'/>\n  <disks>\n"
        "    <disk name='vda' snapshot='external'>\n      <driver type='qcow2'/>\n"
        "      <source file='/img/vda.s1'/>\n    </disk>\n  </disks>\n</domainsnapshot>\n")
    assert dom.list_snapshots() == []


async def test_redefine_imports_metadata_whose_files_are_elsewhere(
        dom: qdriver.Domain) -> None:
    """Redefine moves metadata between hosts: the overlay and memory paths it names
    need not exist here (libvirt imports them the same way)."""
    xml = ("<domainsnapshot><name>moved</name><state>running</state>"
           "<creationTime>5</creationTime>"
           "<memory snapshot='external' file='/path/to/moved.mem'/>"
           "<disks><disk name='hdd' snapshot='external' type='file'>"
           "<driver type='qcow2'/><source file='/path/to/hdd.moved'/></disk></disks>"
           f"<domain type='qemu'><name>meta</name><uuid>{UUID}</uuid></domain>"
           "</domainsnapshot>")
    snap = await dom.snapshot_create_xml(xml, redefine=True)
    assert snap.name == "moved" and "/path/to/hdd.moved" in snap.xml_desc()
