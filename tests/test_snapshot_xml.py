"""The <domainsnapshot> model: round trips, schema, libvirt's vectors, hostile input."""
from __future__ import annotations

import time
from pathlib import Path

import pytest

from qdriver import plan_snapshot
from qdriver.errors import QDriverError, XMLError
from qdriver.xml.domain import DomainDef
from qdriver.xml.snapshot import SnapshotDef, validate_schema

pytestmark = pytest.mark.no_qemu  # pure: runs no QEMU program

REF = Path(__file__).resolve().parents[2] / "shared" / "ref" / "libvirt" / "tests"

FULL = """<domainsnapshot>
  <name>full</name>
  <description>every element &amp; more</description>
  <state>running</state>
  <parent>
    <name>base</name>
  </parent>
  <creationTime>1764220000</creationTime>
  <memory snapshot='external' file='/var/lib/qd/full.mem'/>
  <disks>
    <disk name='vda' snapshot='external' type='file'>
      <driver type='qcow2'/>
      <source file='/var/lib/qd/vda.full'/>
    </disk>
    <disk name='vdb' snapshot='internal'/>
    <disk name='vdc' snapshot='no'/>
    <disk name='vdd' snapshot='manual'/>
    <disk name='vde' snapshot='external' type='file'>
      <snapshotDeleteInProgress/>
      <source file='/var/lib/qd/vde.full'/>
    </disk>
  </disks>
  <revertDisks>
    <disk name='vda' snapshot='external' type='file'>
      <source file='/var/lib/qd/vda.1764220100'/>
    </disk>
  </revertDisks>
  <domain type='qemu'>
    <name>guest</name>
    <uuid>6c1f4a4e-8b7d-4b8e-9a3e-0d5b0b6f1a11</uuid>
    <memory unit='KiB'>262144</memory>
  </domain>
  <inactiveDomain type='qemu'>
    <name>guest</name>
    <uuid>6c1f4a4e-8b7d-4b8e-9a3e-0d5b0b6f1a11</uuid>
    <memory unit='KiB'>524288</memory>
  </inactiveDomain>
  <cookie>
    <cpu mode='custom' match='exact' check='full'>
      <model fallback='forbid'>qemu64</model>
    </cpu>
  </cookie>
  <active>1</active>
</domainsnapshot>
"""


def test_round_trip_every_element() -> None:
    snap = SnapshotDef.parse(FULL, internal=True)
    assert (snap.name, snap.description, snap.state, snap.parent, snap.creation_time) == \
        ("full", "every element & more", "running", "base", 1764220000)
    assert (snap.memory, snap.memory_file) == ("external", "/var/lib/qd/full.mem")
    assert [(d.name, d.snapshot) for d in snap.disks] == [
        ("vda", "external"), ("vdb", "internal"), ("vdc", "no"), ("vdd", "manual"),
        ("vde", "external")]
    assert snap.disks[0].driver == "qcow2" and snap.disks[4].delete_in_progress
    assert snap.revert_disks and snap.revert_disks[0].source == "/var/lib/qd/vda.1764220100"
    assert snap.domain_uuid == "6c1f4a4e-8b7d-4b8e-9a3e-0d5b0b6f1a11"
    assert snap.inactive_domain is not None and snap.cookie is not None and snap.active
    out = snap.format(internal=True)
    assert out == FULL
    again = SnapshotDef.parse(out, internal=True)
    assert again.format(internal=True) == out
    public = snap.format()
    assert "<active>" not in public and public == again.format()


NAMESPACED = """<domainsnapshot>
  <name>ns</name>
  <state>shutoff</state>
  <creationTime>1764220000</creationTime>
  <domain xmlns:qemu='http://libvirt.org/schemas/domain/qemu/1.0' type='qemu'>
    <name>guest</name>
    <metadata>
      <app1:foo xmlns:app1='http://app1.org/app1/'>fooish</app1:foo>
      <thing xmlns='urn:default'>
        <inner a='b'/>
      </thing>
      <app2:bar xmlns:app2='urn:app2' app2:level='2'/>
    </metadata>
    <qemu:commandline>
      <qemu:arg value='-no-user-config'/>
    </qemu:commandline>
  </domain>
  <active>0</active>
</domainsnapshot>
"""


def test_namespaces_stay_where_they_were_declared() -> None:
    """A domain with libvirt's qemu namespace and application metadata, inside a
    snapshot: every declaration prints on the element that made it, as libvirt's does."""
    snap = SnapshotDef.parse(NAMESPACED, internal=True)
    assert snap.format(internal=True) == NAMESPACED


def test_everything_printed_validates_against_our_schema() -> None:
    snap = SnapshotDef.parse(FULL, internal=True)
    validate_schema(snap.format(internal=True))
    validate_schema(snap.format())
    dom = DomainDef.parse("""<domain type='qemu'><name>g</name><memory>1024</memory><devices>
      <disk type='file'><driver type='qcow2'/><source file='/i/a.qcow2'/><target dev='vda'/>
      </disk></devices></domain>""")
    for state, xml in (("running", "<domainsnapshot/>"), ("shutoff", "<domainsnapshot/>"),
                       ("running", "<domainsnapshot><memory file='/m'/></domainsnapshot>")):
        validate_schema(plan_snapshot(dom, state, xml, now=1).definition.format())


def test_schema_rejects_what_is_not_the_format() -> None:
    for bad in ("<domainsnapshot><state>sleeping</state></domainsnapshot>",
                "<domainsnapshot><memory snapshot='internal' file='/x'/></domainsnapshot>",
                "<domainsnapshot><disks><disk name='a' snapshot='sideways'/></disks>"
                "</domainsnapshot>",
                "<domainsnapshot><frobnicate/></domainsnapshot>"):
        with pytest.raises(XMLError, match="does not match the schema"):
            validate_schema(bad)


def test_create_input_ignores_output_only_fields() -> None:
    snap = SnapshotDef.parse("<domainsnapshot><name>a</name><state>running</state>"
                             "<creationTime>5</creationTime><parent><name>p</name></parent>"
                             "</domainsnapshot>")
    assert (snap.state, snap.creation_time, snap.parent) == (None, None, None)


@pytest.mark.parametrize("xml,message", [
    ("<domainsnapshot><state>running</state><creationTime>1</creationTime></domainsnapshot>",
     "a redefined snapshot must have a name"),
    ("<domainsnapshot><name>a</name><creationTime>1</creationTime></domainsnapshot>",
     "missing state from existing snapshot"),
    ("<domainsnapshot><name>a</name><state>running</state></domainsnapshot>",
     "missing creationTime from existing snapshot"),
    ("<domainsnapshot><name>a</name><state>asleep</state><creationTime>1</creationTime>"
     "</domainsnapshot>", "Invalid state 'asleep' in domain snapshot XML"),
])
def test_redefine_requires_output_fields(xml: str, message: str) -> None:
    with pytest.raises(XMLError, match=message):
        SnapshotDef.parse(xml, redefine=True)


@pytest.mark.skipif(not REF.exists(), reason="libvirt reference vectors not beside the repo")
@pytest.mark.parametrize("name", ["disk_snapshot.xml", "noparent.xml"])
def test_libvirt_output_vectors_round_trip_identically(name: str) -> None:
    text = (REF / "domainsnapshotxml2xmlout" / name).read_text()
    internal = "<active>" in text  # libvirt's harness parses these with REDEFINE
    snap = SnapshotDef.parse(text, redefine=True, internal=internal)
    assert snap.format(internal=internal) == text


# -- hostile input: refused quickly with a clear error --------------------------------

def _quick_refusal(xml: str | bytes, match: str) -> None:
    t = time.monotonic()
    with pytest.raises(XMLError, match=match):
        SnapshotDef.parse(xml)
    assert time.monotonic() - t < 1.0


def test_billion_laughs() -> None:
    ents = "".join(f"<!ENTITY l{i} '&l{i-1};&l{i-1};&l{i-1};&l{i-1};&l{i-1};'>"
                   for i in range(1, 30))
    _quick_refusal(f"<!DOCTYPE s [<!ENTITY l0 'ha'>{ents}]><domainsnapshot><description>&l29;"
                   "</description></domainsnapshot>", "entity declarations are not allowed")


def test_external_entity(tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_text("TOPSECRET")
    _quick_refusal(f"<!DOCTYPE s [<!ENTITY x SYSTEM 'file://{secret}'>]><domainsnapshot>"
                   "<description>&x;</description></domainsnapshot>", "not allowed")


def test_ten_megabyte_description() -> None:
    _quick_refusal("<domainsnapshot><description>" + "x" * (10 << 20) +
                   "</description></domainsnapshot>", "too large")


def test_deep_nesting() -> None:
    _quick_refusal("<domainsnapshot><cookie>" + "<a>" * 5000 + "</a>" * 5000 +
                   "</cookie></domainsnapshot>", "deeper|malformed")


@pytest.mark.parametrize("name", ["../../etc/passwd", "a/b", ".hidden", "tab\there", " ",
                                  "x" * 300])
def test_names_that_could_escape_are_refused(name: str) -> None:
    with pytest.raises(QDriverError):
        SnapshotDef.parse(f"<domainsnapshot><name>{name}</name></domainsnapshot>")
