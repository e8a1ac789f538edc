"""The planner, row by row: the seed's 2012 table, libvirt 12.8's matrix, beyond libvirt.

Pure: no QEMU, no files.  Each case names the row it checks.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from qdriver import CreateFlags, RunningCaps, plan_snapshot
from qdriver.errors import ErrorCode, QDriverError
from qdriver.ops.create_plan import TABLE, Refuse, Row
from qdriver.xml.domain import DomainDef

pytestmark = pytest.mark.no_qemu  # pure: runs no QEMU program

ONE_DISK = """<domain type='qemu'><name>g</name><memory>262144</memory><devices>
  <disk type='file'><driver type='qcow2'/><source file='/img/vda.qcow2'/><target dev='vda'/></disk>
  {extra}</devices></domain>"""
TWO_DISKS = ONE_DISK.replace("{extra}", """
  <disk type='file'><driver type='qcow2'/><source file='/img/vdb.qcow2'/><target dev='vdb'/></disk>
  {extra}""")
RAW_DISK = ONE_DISK.replace("type='qcow2'", "type='raw'")
AGENT = """<channel type='unix'><target type='virtio' name='org.qemu.guest_agent.0'/></channel>"""


def domain(xml: str = ONE_DISK, extra: str = "") -> DomainDef:
    return DomainDef.parse(xml.replace("{extra}", extra))


def snapshot_xml(memory: str | None, disks: dict[str, str] | str | None,
                 memfile: str = "/save/mem") -> str:
    """A snapshot request; ``disks`` is one mode for every disk, or per disk."""
    mem = ""
    if memory == "external":
        mem = f"<memory snapshot='external' file='{memfile}'/>"
    elif memory is not None:
        mem = f"<memory snapshot='{memory}'/>"
    body = ""
    if disks is not None:
        per = disks if isinstance(disks, dict) else {"vda": disks}
        body = "<disks>" + "".join(f"<disk name='{n}' snapshot='{m}'/>"
                                   for n, m in per.items()) + "</disks>"
    return f"<domainsnapshot><name>s</name>{mem}{body}</domainsnapshot>"


@dataclass(frozen=True)
class Ok:
    memory: str
    disk: str
    mechanism: str
    state: str


@dataclass(frozen=True)
class No:
    code: ErrorCode
    message: str


NOTHING = No(ErrorCode.CONFIG_UNSUPPORTED, "unsupported configuration: nothing selected for "
             "snapshot")
OFFLINE_MEMORY = No(ErrorCode.XML_ERROR, "XML error: memory state cannot be saved with "
                    "offline or disk-only snapshot")
NO_VMSTATE = No(ErrorCode.CONFIG_UNSUPPORTED, "unsupported configuration: internal memory "
                "snapshot needs at least one disk with snapshot='internal' (a qcow2 image) to "
                "hold the memory state")


def check(dom: DomainDef, state: str, xml: str, flags: CreateFlags, expect: Ok | No) -> None:
    if isinstance(expect, No):
        with pytest.raises(QDriverError) as err:
            plan_snapshot(dom, state, xml, flags)
        assert (err.value.code, err.value.message) == (expect.code, expect.message)
        return
    plan = plan_snapshot(dom, state, xml, flags)
    assert (plan.memory, plan.disk("vda").snapshot, plan.state) == \
        (expect.memory, expect.disk, expect.state)
    assert expect.mechanism in plan.steps, plan.steps


# The seed's 25 rows (libvirt commit 4201a7ea, 2012).  A row whose cell says
# "any" or "omit/no" is checked for each value.  Where libvirt 12.8 changed the
# 2012 plan (DISK_ONLY now defaults disks to external, also offline) the 12.8
# behaviour is expected; rows the seed left "unsupported for now" are planned
# where QEMU can do them and refused where they are impossible.
SEED = [
    # row domain  memory disk   disk-only  expected
    (1, "shutoff", None, None, False, Ok("no", "internal", "qemu-img-snapshot", "shutoff")),
    (1, "shutoff", None, None, True, Ok("no", "external", "qemu-img-create", "shutoff")),
    (2, "shutoff", "no", None, False, Ok("no", "internal", "qemu-img-snapshot", "shutoff")),
    (2, "shutoff", "no", None, True, Ok("no", "external", "qemu-img-create", "shutoff")),
    (3, "shutoff", None, "no", False, NOTHING),
    (3, "shutoff", "no", "no", True, NOTHING),
    (4, "shutoff", None, "internal", False, Ok("no", "internal", "qemu-img-snapshot", "shutoff")),
    (4, "shutoff", "no", "internal", True, Ok("no", "internal", "qemu-img-snapshot", "shutoff")),
    (5, "shutoff", None, "external", False, Ok("no", "external", "qemu-img-create", "shutoff")),
    (5, "shutoff", "no", "external", True, Ok("no", "external", "qemu-img-create", "shutoff")),
    (6, "shutoff", "internal", None, False, OFFLINE_MEMORY),
    (6, "shutoff", "external", "external", True, OFFLINE_MEMORY),
    (7, "running", None, None, False, Ok("internal", "internal", "snapshot-save", "running")),
    (8, "running", None, None, True, Ok("no", "external", "transaction", "disk-snapshot")),
    (9, "running", None, "no", False, NO_VMSTATE),
    (9, "running", None, "external", False, NO_VMSTATE),
    (10, "running", None, "no", True, NOTHING),
    (11, "running", None, "external", True, Ok("no", "external", "transaction", "disk-snapshot")),
    (12, "running", None, "internal", False, Ok("internal", "internal", "snapshot-save",
                                                 "running")),
    (13, "running", None, "internal", True, Ok("no", "internal", "transaction", "disk-snapshot")),
    (14, "running", "no", None, False, Ok("no", "external", "transaction", "disk-snapshot")),
    (14, "running", "no", None, True, Ok("no", "external", "transaction", "disk-snapshot")),
    (15, "running", "no", "no", False, NOTHING),
    (15, "running", "no", "no", True, NOTHING),
    (16, "running", "no", "internal", False, Ok("no", "internal", "transaction",
                                                "disk-snapshot")),
    (16, "running", "no", "internal", True, Ok("no", "internal", "transaction",
                                               "disk-snapshot")),
    (17, "running", "no", "external", False, Ok("no", "external", "transaction",
                                                "disk-snapshot")),
    (17, "running", "no", "external", True, Ok("no", "external", "transaction",
                                               "disk-snapshot")),
    (18, "running", "internal", None, True, OFFLINE_MEMORY),
    (18, "running", "external", "external", True, OFFLINE_MEMORY),
    (19, "running", "internal", None, False, Ok("internal", "internal", "snapshot-save",
                                                "running")),
    (20, "running", "internal", "no", False, NO_VMSTATE),
    (20, "running", "internal", "external", False, NO_VMSTATE),
    (21, "running", "internal", "internal", False, Ok("internal", "internal", "snapshot-save",
                                                      "running")),
    (22, "running", "external", None, False, Ok("external", "external", "migrate-to-file",
                                                "running")),
    (23, "running", "external", "no", False, Ok("external", "no", "migrate-to-file", "running")),
    (24, "running", "external", "internal", False, Ok("external", "internal",
                                                      "transaction-internal", "running")),
    (25, "running", "external", "external", False, Ok("external", "external", "transaction",
                                                      "running")),
]


@pytest.mark.parametrize("row,state,memory,disk,disk_only,expect", SEED,
                         ids=[f"seed{r[0]}-{i}" for i, r in enumerate(SEED)])
def test_seed_2012_table(row: int, state: str, memory: str | None, disk: str | None,
                         disk_only: bool, expect: Ok | No) -> None:
    check(domain(), state, snapshot_xml(memory, disk), CreateFlags(disk_only=disk_only),
          expect)


def test_every_seed_row_is_covered() -> None:
    assert {r[0] for r in SEED} == set(range(1, 26))


# -- libvirt 12.8's matrix (facts c.2), one test per row -------------------------

def test_c2_offline_internal_qemu_img() -> None:
    plan = plan_snapshot(domain(TWO_DISKS), "shutoff", snapshot_xml(None, None))
    assert plan.steps == ("qemu-img-snapshot", "write-metadata")
    assert [d.snapshot for d in plan.disks] == ["internal", "internal"]
    assert (plan.pause, plan.libvirt) == ("none", True)


def test_c2_offline_external_overlays_switch_definition() -> None:
    plan = plan_snapshot(domain(TWO_DISKS), "shutoff",
                         snapshot_xml(None, {"vda": "external", "vdb": "no"}))
    assert plan.steps == ("qemu-img-create", "switch-definition", "write-metadata")
    assert plan.disk("vda").file == "/img/vda.s" and plan.disk("vdb").file is None
    assert (plan.state, plan.memory, plan.libvirt) == ("shutoff", "no", True)


def test_c2_offline_memory_refused() -> None:
    for memory in ("internal", "external"):
        check(domain(), "shutoff", snapshot_xml(memory, None), CreateFlags(), OFFLINE_MEMORY)


def test_c2_offline_mixed_is_planned_beyond_libvirt() -> None:
    plan = plan_snapshot(domain(TWO_DISKS), "shutoff",
                         snapshot_xml(None, {"vda": "internal", "vdb": "external"}))
    assert plan.steps == ("qemu-img-snapshot", "qemu-img-create", "switch-definition",
                          "write-metadata")
    assert plan.libvirt is False


def test_c2_running_internal_full_system() -> None:
    plan = plan_snapshot(domain(TWO_DISKS), "running", snapshot_xml("internal", None))
    assert plan.steps == ("pause", "snapshot-save", "resume", "write-metadata")
    assert (plan.pause, plan.resume, plan.state, plan.libvirt) == ("whole", True, "running",
                                                                   True)


def test_c2_paused_internal_stays_paused() -> None:
    plan = plan_snapshot(domain(), "paused", snapshot_xml(None, None))
    assert plan.steps == ("snapshot-save", "write-metadata")
    assert (plan.state, plan.pause, plan.resume) == ("paused", "none", False)


def test_c2_running_memory_no_is_disk_only_beyond_libvirt() -> None:
    # libvirt 12.8: "internal snapshot of a running VM must include the memory state"
    plan = plan_snapshot(domain(), "running", snapshot_xml("no", None))
    assert plan.steps == ("create-overlays", "transaction", "switch-definition",
                          "write-metadata")
    assert (plan.state, plan.pause, plan.libvirt) == ("disk-snapshot", "none", False)


def test_c2_running_external_memory_and_disks() -> None:
    plan = plan_snapshot(domain(TWO_DISKS), "running", snapshot_xml("external", None))
    assert plan.steps == ("create-overlays", "pause", "migrate-to-file", "transaction",
                          "switch-definition", "resume", "write-metadata")
    assert (plan.memory_file, plan.pause, plan.live) == ("/save/mem", "whole", "none")
    assert {d.file for d in plan.disks} == {"/img/vda.s", "/img/vdb.s"}


def test_c2_running_external_live_background_and_precopy() -> None:
    xml = snapshot_xml("external", None)
    plan = plan_snapshot(domain(), "running", xml, CreateFlags(live=True))
    assert plan.steps == ("create-overlays", "pause", "transaction", "migrate-background",
                          "switch-definition", "write-metadata")
    assert (plan.pause, plan.live, plan.resume) == ("brief", "background", True)
    plan = plan_snapshot(domain(), "running", xml, CreateFlags(live=True),
                         RunningCaps(background_snapshot=False))
    assert plan.steps == ("create-overlays", "migrate-live", "transaction",
                          "switch-definition", "resume", "write-metadata")
    assert (plan.pause, plan.live) == ("brief", "precopy")


def test_c2_running_external_memory_only() -> None:
    plan = plan_snapshot(domain(), "running", snapshot_xml("external", "no"))
    assert plan.steps == ("pause", "migrate-to-file", "resume", "write-metadata")
    assert plan.libvirt is True


def test_c2_running_external_memory_internal_disk_beyond_libvirt() -> None:
    plan = plan_snapshot(domain(TWO_DISKS), "running",
                         snapshot_xml("external", {"vda": "internal", "vdb": "external"}))
    # internal snapshots first: a finished migration leaves the images inactive
    assert plan.steps == ("create-overlays", "pause", "transaction-internal", "migrate-to-file",
                          "transaction", "switch-definition", "resume", "write-metadata")
    assert plan.libvirt is False
    live = plan_snapshot(domain(TWO_DISKS), "running",
                         snapshot_xml("external", {"vda": "internal", "vdb": "external"}),
                         CreateFlags(live=True))
    assert live.steps[:4] == ("create-overlays", "pause", "transaction", "migrate-background")
    with pytest.raises(QDriverError, match="needs the background-snapshot"):
        plan_snapshot(domain(), "running", snapshot_xml("external", "internal"),
                      CreateFlags(live=True), RunningCaps(background_snapshot=False))


def test_c2_running_internal_memory_with_external_or_excluded_disk_beyond_libvirt() -> None:
    plan = plan_snapshot(domain(TWO_DISKS), "running",
                         snapshot_xml("internal", {"vda": "internal", "vdb": "external"}))
    assert plan.steps == ("create-overlays", "pause", "snapshot-save", "transaction",
                          "switch-definition", "resume", "write-metadata")
    assert plan.libvirt is False
    plan = plan_snapshot(domain(TWO_DISKS), "running",
                         snapshot_xml("internal", {"vda": "internal", "vdb": "no"}))
    assert plan.steps == ("pause", "snapshot-save", "resume", "write-metadata")
    assert plan.libvirt is False


def test_c2_running_disk_only_with_quiesce() -> None:
    plan = plan_snapshot(domain(extra=AGENT), "running", snapshot_xml(None, None),
                         CreateFlags(disk_only=True, quiesce=True))
    assert plan.steps == ("create-overlays", "agent-freeze", "transaction", "agent-thaw",
                          "switch-definition", "write-metadata")
    assert (plan.pause, plan.state, plan.libvirt) == ("none", "disk-snapshot", True)


def test_c2_running_disk_only_internal_beyond_libvirt() -> None:
    # libvirt: "active qemu domains require external disk snapshots; disk vda requested
    # internal"; qdriver uses blockdev-snapshot-internal-sync in the transaction
    plan = plan_snapshot(domain(TWO_DISKS), "running",
                         snapshot_xml(None, {"vda": "internal", "vdb": "external"}),
                         CreateFlags(disk_only=True))
    assert plan.steps == ("create-overlays", "transaction", "switch-definition",
                          "write-metadata")
    assert (plan.disk("vda").snapshot, plan.libvirt) == ("internal", False)


def test_c2_live_without_external_memory_refused() -> None:
    for memory, flags in (("internal", CreateFlags(live=True)),
                          (None, CreateFlags(live=True, disk_only=True))):
        check(domain(), "running", snapshot_xml(memory, None), flags,
              No(ErrorCode.OPERATION_UNSUPPORTED, "Operation not supported: live snapshot "
                 "creation is supported only during full system snapshots"))


def test_c2_manual_disk_leaves_guest_paused() -> None:
    plan = plan_snapshot(domain(TWO_DISKS), "running",
                         snapshot_xml("external", {"vda": "external", "vdb": "manual"}))
    assert "resume" not in plan.steps and plan.resume is False
    assert plan.steps == ("create-overlays", "pause", "migrate-to-file", "transaction",
                          "switch-definition", "write-metadata")
    plan = plan_snapshot(domain(TWO_DISKS), "running",
                         snapshot_xml(None, {"vda": "external", "vdb": "manual"}),
                         CreateFlags(disk_only=True))
    assert plan.steps[:3] == ("create-overlays", "pause", "transaction")
    assert (plan.pause, plan.resume) == ("whole", False)


def test_c2_pmsuspended_refused() -> None:
    check(domain(), "pmsuspended", snapshot_xml(None, None), CreateFlags(),
          No(ErrorCode.OPERATION_UNSUPPORTED, "Operation not supported: qemu doesn't support "
             "taking snapshots of PMSUSPENDED guests"))


def test_c2_halt_no_metadata_atomic() -> None:
    plan = plan_snapshot(domain(), "running", snapshot_xml(None, None), CreateFlags(halt=True))
    # the snapshot is recorded before QEMU stops: stopping it cannot be undone
    assert plan.steps == ("pause", "snapshot-save", "write-metadata", "halt")
    assert plan.resume is False
    plan = plan_snapshot(domain(), "running", snapshot_xml(None, None),
                         CreateFlags(no_metadata=True))
    assert "write-metadata" not in plan.steps
    atomic = plan_snapshot(domain(), "running", snapshot_xml(None, None),
                           CreateFlags(atomic=True))
    assert atomic.steps == plan_snapshot(domain(), "running", snapshot_xml(None, None)).steps


def test_reuse_external_checks_instead_of_creating() -> None:
    plan = plan_snapshot(domain(), "running", snapshot_xml(None, None),
                         CreateFlags(disk_only=True, reuse_ext=True))
    assert plan.steps[0] == "check-reused-overlays"
    offline = plan_snapshot(domain(), "shutoff", snapshot_xml(None, "external"),
                            CreateFlags(reuse_ext=True))
    assert offline.steps[0] == "check-reused-overlays"


# -- refusals ------------------------------------------------------------------------

FLAG = CreateFlags.libvirt_name


@pytest.mark.parametrize("flags,message", [
    (CreateFlags(current=True), f"Flag '{FLAG('redefine')}' is required by flag "
                                f"'{FLAG('current')}'"),
    (CreateFlags(redefine=True, halt=True), f"Flags '{FLAG('redefine')}' and '{FLAG('halt')}' "
                                            "are mutually exclusive"),
    (CreateFlags(redefine=True, no_metadata=True), f"Flags '{FLAG('redefine')}' and "
                                                   f"'{FLAG('no_metadata')}' are mutually "
                                                   "exclusive"),
    (CreateFlags(redefine=True, live=True), f"Flags '{FLAG('redefine')}' and '{FLAG('live')}' "
                                            "are mutually exclusive"),
    (CreateFlags(quiesce=True), f"Flag '{FLAG('disk_only')}' is required by flag "
                                f"'{FLAG('quiesce')}'"),
])
def test_flag_conflicts(flags: CreateFlags, message: str) -> None:
    check(domain(), "running", snapshot_xml(None, None), flags,
          No(ErrorCode.INVALID_ARG, f"invalid argument: {message}"))


def test_internal_snapshot_of_raw_disk_refused() -> None:
    for state in ("running", "shutoff"):
        check(domain(RAW_DISK), state, snapshot_xml(None, None), CreateFlags(),
              No(ErrorCode.CONFIG_UNSUPPORTED, "unsupported configuration: internal snapshot "
                 "for disk vda unsupported for storage type raw"))


def test_quiesce_needs_an_agent_a_running_guest_and_no_manual_disk() -> None:
    flags = CreateFlags(disk_only=True, quiesce=True)
    check(domain(), "running", snapshot_xml(None, None), flags,
          No(ErrorCode.ARGUMENT_UNSUPPORTED,
             "argument unsupported: QEMU guest agent is not configured"))
    with pytest.raises(QDriverError, match="domain is paused"):
        plan_snapshot(domain(extra=AGENT), "paused", snapshot_xml(None, None), flags)
    check(domain(TWO_DISKS, AGENT), "running",
          snapshot_xml(None, {"vda": "external", "vdb": "manual"}), flags,
          No(ErrorCode.CONFIG_UNSUPPORTED, "unsupported configuration: 'manual' disk snapshot "
             "mode requires explicit quiescing (VIR_DOMAIN_SNAPSHOT_CREATE_QUIESCE is not "
             "supported)"))


@pytest.mark.parametrize("xml,code,message", [
    ("<domainsnapshot><memory snapshot='manual'/></domainsnapshot>", ErrorCode.CONFIG_UNSUPPORTED,
     "'manual' memory snapshot mode not supported"),
    ("<domainsnapshot><memory snapshot='internal' file='/x'/></domainsnapshot>",
     ErrorCode.XML_ERROR, "memory filename '/x' requires external snapshot"),
    ("<domainsnapshot><memory snapshot='external'/></domainsnapshot>", ErrorCode.XML_ERROR,
     "external memory snapshots require a filename"),
    ("<domainsnapshot><memory file='rel/x'/></domainsnapshot>", ErrorCode.XML_ERROR,
     "memory snapshot file path (rel/x) must be absolute"),
    ("<domainsnapshot><disks><disk name='vdz'/></disks></domainsnapshot>",
     ErrorCode.CONFIG_UNSUPPORTED, "no disk named 'vdz'"),
    ("<domainsnapshot><disks><disk name='vda'/><disk name='vdb'/></disks></domainsnapshot>",
     ErrorCode.CONFIG_UNSUPPORTED, "too many disk snapshot requests for domain"),
    ("<domainsnapshot><disks><disk name='vda' snapshot='internal'><source file='/n'/></disk>"
     "</disks></domainsnapshot>", ErrorCode.XML_ERROR,
     "file '/n' for disk 'vda' requires use of external snapshot mode"),
    ("<domainsnapshot><disks><disk name='vda'><source file='rel'/></disk></disks>"
     "</domainsnapshot>", ErrorCode.XML_ERROR, "disk snapshot image path 'rel' must be absolute"),
    ("<domainsnapshot><disks><disk name='vda'><driver type='vmdk'/></disk></disks>"
     "</domainsnapshot>", ErrorCode.XML_ERROR, "unknown disk snapshot driver 'vmdk'"),
    ("<domainsnapshot><disks><disk name='vda'><driver type='qed'/></disk></disks>"
     "</domainsnapshot>", ErrorCode.CONFIG_UNSUPPORTED,
     "external snapshot format for disk vda is unsupported: qed"),
    ("<domainsnapshot><name>a/b</name></domainsnapshot>", ErrorCode.XML_DETAIL,
     "invalid snapshot name 'a/b': name can't contain '/'"),
    ("<domainsnapshot><name>.hidden</name></domainsnapshot>", ErrorCode.XML_DETAIL,
     "invalid snapshot name '.hidden': name can't start with '.'"),
])
def test_invalid_requests(xml: str, code: ErrorCode, message: str) -> None:
    with pytest.raises(QDriverError) as err:
        plan_snapshot(domain(), "running", xml)
    assert err.value.code == code and err.value.detail == message


def test_disk_named_twice() -> None:
    xml = "<domainsnapshot><disks><disk name='vda'/><disk name='/img/vda.qcow2'/></disks>" \
          "</domainsnapshot>"
    with pytest.raises(QDriverError, match="disk '/img/vda.qcow2' specified twice"):
        plan_snapshot(domain(TWO_DISKS), "running", xml)


def test_default_external_name_collision() -> None:
    xml = TWO_DISKS.replace("/img/vdb.qcow2", "/img/vda.raw")
    with pytest.raises(QDriverError, match="cannot generate external snapshot name for disk "
                                           "'vdb': collision with disk 'vda'"):
        plan_snapshot(domain(xml), "shutoff", snapshot_xml(None, None),
                      CreateFlags(disk_only=True))


def test_disk_named_by_source_path_and_default_name() -> None:
    xml = "<domainsnapshot><disks><disk name='/img/vda.qcow2' snapshot='external'/></disks>" \
          "</domainsnapshot>"
    plan = plan_snapshot(domain(), "shutoff", xml, now=1700000000)
    assert plan.name == "1700000000"
    assert plan.disk("vda").file == "/img/vda.1700000000"
    assert plan.definition.disks[0].name == "vda"


def test_the_table_has_every_cell_once() -> None:
    cells = {(o, m, k) for o in (False, True) for m in ("no", "internal", "external")
             for k in ("none", "int", "ext", "mix") if o or m == "no"}
    assert set(TABLE) == cells
    assert all(isinstance(v, (Row, Refuse)) for v in TABLE.values())


def test_planner_does_no_io(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # the images named in the domain do not exist; planning must not care
    import builtins
    import os

    def forbidden(*a: object, **k: object) -> None:
        raise AssertionError("the planner touched the filesystem")
    monkeypatch.setattr(builtins, "open", forbidden)
    monkeypatch.setattr(os, "stat", forbidden)
    plan = plan_snapshot(domain(TWO_DISKS), "running", snapshot_xml("external", None))
    assert plan.steps


UEFI = ONE_DISK.replace("<devices>", "<os firmware='efi'><type machine='pc-q35-7.2'>hvm</type>"
                        "<loader readonly='yes' type='pflash'>/fw/code.fd</loader>"
                        "<nvram>/s/g_VARS.fd</nvram></os><features><acpi/></features>"
                        "<devices>")


@pytest.mark.parametrize(("state", "memory", "disks", "flags", "before"), [
    ("running", "internal", "internal", CreateFlags(), "resume"),       # while paused
    ("running", "external", "external", CreateFlags(), "resume"),
    ("running", None, "external", CreateFlags(disk_only=True), "write-metadata"),
    ("shutoff", None, "internal", CreateFlags(), "write-metadata"),
    ("running", "internal", "internal", CreateFlags(no_metadata=True), None),  # nothing kept
])
def test_a_uefi_snapshot_copies_the_variable_store_while_the_guest_is_paused(
        state: str, memory: str | None, disks: str, flags: CreateFlags,
        before: str | None) -> None:
    steps = [str(s) for s in plan_snapshot(domain(UEFI), state, snapshot_xml(memory, disks),
                                           flags).steps]
    if before is None:
        assert "copy-nvram" not in steps
        return
    assert steps.count("copy-nvram") == 1
    assert steps[steps.index("copy-nvram") + 1] == before, steps
    assert "copy-nvram" not in [str(s) for s in plan_snapshot(
        domain(), state, snapshot_xml(memory, disks), flags).steps]  # BIOS: no store
