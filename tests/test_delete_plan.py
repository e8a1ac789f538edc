"""The delete planner, row by row (pure: metadata + definition + image graph in, plan out)."""
from __future__ import annotations

import pytest

from qdriver.errors import InvalidArgError
from qdriver.ops.delete_plan import (
    Commit,
    DeleteFlags,
    DeleteStep,
    ImageGraph,
    InternalDelete,
    plan_delete,
    victims,
)
from qdriver.snapshots.tree import SnapshotTree
from qdriver.xml.domain import DomainDef
from qdriver.xml.snapshot import SnapshotDef, SnapshotDisk

pytestmark = pytest.mark.no_qemu  # pure: runs no QEMU program

W = "/w"


def dom(vda: str) -> DomainDef:
    return DomainDef.parse(f"""<domain type='qemu'><name>g</name><memory>65536</memory>
      <devices><disk type='file' device='disk'><driver type='qcow2'/>
      <source file='{vda}'/><target dev='vda'/></disk></devices></domain>""")


def ext(name: str, froze: str, top: str, parent: str | None = None,
        memory: str | None = None, revert: str | None = None) -> SnapshotDef:
    return SnapshotDef(name=name, state="running" if memory else "disk-snapshot",
                       parent=parent, memory="external" if memory else "no",
                       memory_file=memory,
                       disks=[SnapshotDisk("vda", "external", "file", top, "qcow2")],
                       revert_disks=[SnapshotDisk("vda", "external", "file", revert, "qcow2")]
                       if revert else None,
                       domain=dom(froze).root_copy())


def internal(name: str, image: str, parent: str | None = None) -> SnapshotDef:
    return SnapshotDef(name=name, state="running", parent=parent, memory="internal",
                       disks=[SnapshotDisk("vda", "internal")], domain=dom(image).root_copy())


def graph(**backing: str | None) -> ImageGraph:
    full = {f"{W}/{k}": (f"{W}/{v}" if v else None) for k, v in backing.items()}
    return ImageGraph(full, {i: "qcow2" for i in full}, frozenset(full))


def chain_tree(current: str = "s4") -> SnapshotTree:
    """orig <- ov2 <- ov3 <- ov4 (active): s2 froze orig, s3 froze ov2, s4 froze ov3."""
    return SnapshotTree({
        "s2": ext("s2", f"{W}/orig", f"{W}/ov2"),
        "s3": ext("s3", f"{W}/ov2", f"{W}/ov3", "s2"),
        "s4": ext("s4", f"{W}/ov3", f"{W}/ov4", "s3"),
    }, current)


CHAIN = graph(orig=None, ov2="orig", ov3="ov2", ov4="ov3")


def test_middle_of_a_running_chain_is_an_intermediate_commit() -> None:
    plan = plan_delete(chain_tree(), dom(f"{W}/ov4"), True, ["s3"], CHAIN)
    assert plan.commits == [Commit("vda", f"{W}/ov3", f"{W}/ov2", "intermediate", ())]
    assert plan.remove == [f"{W}/ov3"] and plan.renames == {f"{W}/ov3": f"{W}/ov2"}
    assert plan.steps == [DeleteStep.MARK, DeleteStep.COMMIT, DeleteStep.REMOVE_FILE,
                          DeleteStep.REMOVE_METADATA]


def test_current_leaf_of_a_running_chain_is_an_active_commit() -> None:
    plan = plan_delete(chain_tree(), dom(f"{W}/ov4"), True, ["s4"], CHAIN)
    assert plan.commits == [Commit("vda", f"{W}/ov4", f"{W}/ov3", "active", ())]
    assert plan.renames == {f"{W}/ov4": f"{W}/ov3"}


def test_shut_off_commits_with_qemu_img() -> None:
    plan = plan_delete(chain_tree(), dom(f"{W}/ov4"), False, ["s3"], CHAIN)
    assert plan.commits == [Commit("vda", f"{W}/ov3", f"{W}/ov2", "offline", (f"{W}/ov4",))]


def test_root_snapshot_merges_into_the_original_disk() -> None:
    plan = plan_delete(chain_tree(), dom(f"{W}/ov4"), True, ["s2"], CHAIN)
    assert plan.commits == [Commit("vda", f"{W}/ov2", f"{W}/orig", "intermediate", ())]


def test_whole_chain_with_children() -> None:
    tree = chain_tree()
    names = victims(tree, "s2", DeleteFlags(children=True))
    assert names == ["s4", "s3", "s2"]
    plan = plan_delete(tree, dom(f"{W}/ov4"), True, names, CHAIN)
    # every boundary goes: the chain folds into the original disk, the guest keeps it
    assert [c.top for c in plan.commits] == [f"{W}/ov2", f"{W}/ov3", f"{W}/ov4"]
    assert all(c.base == f"{W}/orig" for c in plan.commits)
    assert plan.commits[-1].mode == "active"
    assert victims(tree, "s2", DeleteFlags(children_only=True)) == ["s4", "s3"]
    with pytest.raises(InvalidArgError, match="mutually exclusive"):
        victims(tree, "s2", DeleteFlags(children=True, children_only=True))


def test_branch_point_stays_when_two_branches_need_it() -> None:
    """After a revert to s2: orig backs the old branch (ov2...) and the new one (r2)."""
    tree = chain_tree("s2")
    tree.snaps["s2"] = ext("s2", f"{W}/orig", f"{W}/ov2", revert=f"{W}/r2")
    g = graph(orig=None, ov2="orig", ov3="ov2", ov4="ov3", r2="orig")
    plan = plan_delete(tree, dom(f"{W}/r2"), True, ["s2"], g)
    assert plan.commits == [] and plan.remove == []
    assert plan.kept and plan.kept[0][0] == f"{W}/orig" and "branches" in plan.kept[0][1]


def test_discarded_branch_tip_is_removed_not_merged() -> None:
    """After a revert to s3 the old tip ov4 is s4's alone: deleting s4 removes it."""
    tree = chain_tree("s3")
    tree.snaps["s3"] = ext("s3", f"{W}/ov2", f"{W}/ov3", "s2", revert=f"{W}/r3")
    g = graph(orig=None, ov2="orig", ov3="ov2", ov4="ov3", r3="ov2")
    plan = plan_delete(tree, dom(f"{W}/r3"), True, ["s4"], g)
    assert plan.remove == [f"{W}/ov4"] and plan.commits == []


def test_memory_file_and_internal_snapshot() -> None:
    tree = SnapshotTree({"m": ext("m", f"{W}/orig", f"{W}/ov", memory=f"{W}/m.mem"),
                         "i": internal("i", f"{W}/ov", "m")}, "i")
    g = graph(orig=None, ov="orig")
    plan = plan_delete(tree, dom(f"{W}/ov"), True, ["i"], g)
    assert plan.internal == [InternalDelete("vda", f"{W}/ov", "i", True)]
    assert plan.commits == [] and plan.remove == []
    plan = plan_delete(tree, dom(f"{W}/ov"), False, ["i", "m"], g)
    assert plan.internal == [InternalDelete("vda", f"{W}/ov", "i", False)]
    assert f"{W}/m.mem" in plan.remove
    assert plan.commits == [Commit("vda", f"{W}/ov", f"{W}/orig", "offline", ())]


def test_read_only_base_is_kept() -> None:
    g = ImageGraph(dict(CHAIN.backing), dict(CHAIN.formats),
                   frozenset(CHAIN.backing) - {f"{W}/ov2"})
    plan = plan_delete(chain_tree(), dom(f"{W}/ov4"), True, ["s3"], g)
    assert plan.commits == []


def test_metadata_only_touches_nothing() -> None:
    plan = plan_delete(chain_tree(), dom(f"{W}/ov4"), True, ["s3"], CHAIN, metadata_only=True)
    assert plan.steps == [DeleteStep.REMOVE_METADATA] and not plan.commits


def test_image_holding_an_internal_snapshot_is_not_merged_away() -> None:
    tree = chain_tree("i")
    tree.snaps["i"] = internal("i", f"{W}/ov4", "s4")
    plan = plan_delete(tree, dom(f"{W}/ov4"), True, ["s4"], CHAIN)
    assert plan.commits == [] and plan.remove == []
    assert (f"{W}/ov4", "it holds internal snapshot 'i'") in plan.kept


def test_qemu_without_the_snapshot_delete_job_uses_hmp_delvm() -> None:
    tree = SnapshotTree({"i": internal("i", f"{W}/orig")}, "i")
    g = graph(orig=None)
    plan = plan_delete(tree, dom(f"{W}/orig"), True, ["i"], g, snapshot_job=False)
    assert plan.internal == [InternalDelete("vda", f"{W}/orig", "i", True, hmp=True)]
    internal_json = plan.to_json()["internal"]
    assert isinstance(internal_json, list) and internal_json[0]["via"] == "hmp delvm"
    plan = plan_delete(tree, dom(f"{W}/orig"), False, ["i"], g, snapshot_job=False)
    assert plan.internal[0].hmp is False  # shut off: qemu-img whatever the QEMU


def test_the_files_a_revert_leaves_named_but_the_revert_disks_it_replaces() -> None:
    """What decides whether a revert may kill the running QEMU at once: the overlay of
    an earlier revert to ``t`` is named by ``t`` alone, which the revert replaces;
    one that a later snapshot froze stays named."""
    tree = SnapshotTree({"t": ext("t", f"{W}/orig", f"{W}/t-top", revert=f"{W}/rev1"),
                         "u": ext("u", f"{W}/rev2", f"{W}/u-top", "t")}, "u")
    assert f"{W}/rev1" in tree.files()
    assert f"{W}/rev1" not in tree.files(but_revert_disks_of="t")
    assert f"{W}/rev2" in tree.files(but_revert_disks_of="t")  # u froze it
    assert f"{W}/rev1" in tree.files(but_revert_disks_of="u")
