"""The domain XML model: parsing, defaults, round trip, hostile input."""
from __future__ import annotations

import time
from pathlib import Path

import pytest

from qdriver.errors import ConfigUnsupportedError, XMLError
from qdriver.launch import cmdline
from qdriver.paths import DomainPaths
from qdriver.xml import abi
from qdriver.xml.domain import DomainDef

BASE = """<domain type='qemu'>
  <name>g</name>
  <memory unit='MiB'>128</memory>
  <os><type arch='x86_64' machine='q35'>hvm</type><kernel>/k</kernel></os>
  <devices>{devices}</devices>
  {extra}
</domain>"""


def dom(devices: str = "", extra: str = "") -> DomainDef:
    return DomainDef.parse(BASE.format(devices=devices, extra=extra))


@pytest.mark.no_qemu
def test_basic_fields_and_generated_uuid() -> None:
    d = dom()
    assert (d.name, d.type, d.memory_kib, d.vcpus, d.machine) == ("g", "qemu", 131072, 1, "q35")
    assert len(d.uuid) == 36
    # the generated uuid is part of the definition from now on
    assert f"<uuid>{d.uuid}</uuid>" in d.to_xml()
    assert DomainDef.parse(d.to_xml()).uuid == d.uuid


@pytest.mark.no_qemu
@pytest.mark.parametrize("unit,value,kib", [("KiB", 1024, 1024), ("M", 2, 2048),
                                            ("GiB", 1, 1 << 20), ("MB", 1, 976),
                                            ("bytes", 1 << 20, 1024)])
def test_memory_units(unit: str, value: int, kib: int) -> None:
    xml = BASE.format(devices="", extra="").replace(
        "<memory unit='MiB'>128</memory>", f"<memory unit='{unit}'>{value}</memory>")
    assert DomainDef.parse(xml).memory_kib == kib


@pytest.mark.no_qemu
def test_unknown_elements_are_kept_by_dumpxml() -> None:
    d = dom(devices="<watchdog model='i6300esb'/>",
            extra="<metadata><app:x xmlns:app='urn:a'>keep me</app:x></metadata>")
    out = d.to_xml()
    assert "<watchdog model='i6300esb'/>" in out
    assert "keep me" in out
    again = DomainDef.parse(out)
    assert again.to_xml() == out


@pytest.mark.no_qemu
def test_unsupported_element_is_named_at_start(tmp_path: Path) -> None:
    d = dom(devices="<watchdog model='i6300esb'/>")
    with pytest.raises(ConfigUnsupportedError, match=r"<devices><watchdog>.*domain 'g'"):
        cmdline.build(d, DomainPaths.of(tmp_path, "g"), "tcg")


@pytest.mark.parametrize("devices,message", [
    ("<interface type='bridge'><source bridge='br0'/></interface>", "interface type='bridge'"),
    ("<disk type='network' device='disk'><source protocol='nbd' name='x'/>"
     "<target dev='vdb'/></disk>", "disk type='network'"),
    ("<graphics type='spice'/>", "graphics type='spice'"),
])
@pytest.mark.no_qemu
def test_unsupported_devices(tmp_path: Path, devices: str, message: str) -> None:
    with pytest.raises(ConfigUnsupportedError, match=message):
        cmdline.build(dom(devices=devices), DomainPaths.of(tmp_path, "g"), "tcg")


@pytest.mark.no_qemu
def test_malformed_xml() -> None:
    with pytest.raises(XMLError, match="malformed domain XML"):
        DomainDef.parse("<domain type='qemu'><name>x</name>")


@pytest.mark.no_qemu
def test_external_entity_refused(tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_text("TOPSECRET")
    xml = (f"<?xml version='1.0'?><!DOCTYPE d [<!ENTITY x SYSTEM 'file://{secret}'>]>"
           "<domain type='qemu'><name>&x;</name><memory>1024</memory></domain>")
    with pytest.raises(XMLError, match="DTDs and entity declarations are not allowed"):
        DomainDef.parse(xml)


@pytest.mark.no_qemu
def test_billion_laughs_refused_quickly() -> None:
    ents = "".join(f"<!ENTITY l{i} '&l{i-1};&l{i-1};&l{i-1};&l{i-1};'>" for i in range(1, 20))
    xml = f"<!DOCTYPE d [<!ENTITY l0 'lol'>{ents}]><domain><name>&l19;</name></domain>"
    t = time.monotonic()
    with pytest.raises(XMLError):
        DomainDef.parse(xml)
    assert time.monotonic() - t < 1.0


@pytest.mark.no_qemu
def test_huge_and_deep_documents_refused() -> None:
    with pytest.raises(XMLError, match="too large"):
        DomainDef.parse("<domain>" + "x" * (5 << 20) + "</domain>")
    with pytest.raises(XMLError, match="deeper"):
        DomainDef.parse("<a>" * 200 + "</a>" * 200)


@pytest.mark.parametrize("xml,error,message", [
    (BASE.format(devices="<disk type='file'><driver type='vmdk'/><source file='/x'/>"
                         "<target dev='vda'/></disk>", extra=""),
     ConfigUnsupportedError, "unknown driver format value 'vmdk'"),
    (BASE.format(devices="<disk type='file'><source file='/a'/><target dev='vda'/></disk>"
                         "<disk type='file'><source file='/b'/><target dev='vda'/></disk>",
                 extra=""), XMLError, "target 'vda' duplicated"),
    (BASE.replace("<name>g</name>", "<name>a/b</name>"), XMLError, "cannot contain '/'"),
    (BASE.replace("<name>g</name>", ""), XMLError, "missing domain name"),
    (BASE.replace("type='qemu'", "type='xen'"), ConfigUnsupportedError, "domain type 'xen'"),
    (BASE.format(devices="<graphics type='vnc' listen='0.0.0.0'/>", extra=""),
     ConfigUnsupportedError, "loopback"),
    (BASE.replace("<memory unit='MiB'>128</memory>", "<memory unit='parsec'>1</memory>"),
     XMLError, "unknown suffix"),
])
@pytest.mark.no_qemu
def test_invalid_definitions(xml: str, error: type, message: str) -> None:
    with pytest.raises(error, match=message):
        DomainDef.parse(xml)


@pytest.mark.no_qemu
def test_console_aliases_first_serial_and_channels() -> None:
    d = dom(devices="<serial type='pty'/><console type='pty'/>"
                    "<channel type='unix'><target type='virtio' name='org.qemu.guest_agent.0'/>"
                    "</channel>")
    assert len(d.serials) == 1 and d.serials[0].type == "pty"
    assert d.channels[0].target_name == "org.qemu.guest_agent.0"


@pytest.mark.parametrize("change, message", [
    (("<memory unit='MiB'>128</memory>", "<memory unit='KiB'>-5</memory>"),
     "invalid value '-5' for <memory>"),
    (("<memory unit='MiB'>128</memory>", f"<memory unit='KiB'>{10 ** 20}</memory>"),
     f"invalid value '{10 ** 20}' for <memory>"),
    (("<devices>", "<cpu mode='custom'><model> </model></cpu><devices>"),
     "Missing CPU model name"),
], ids=["negative-memory", "huge-memory", "blank-cpu-model"])
@pytest.mark.no_qemu
def test_values_qemu_would_refuse_are_refused_when_parsed(change: tuple[str, str],
                                                          message: str) -> None:
    with pytest.raises(XMLError, match=message):
        DomainDef.parse(BASE.format(devices="", extra="").replace(*change))


@pytest.mark.no_qemu
def test_host_model_cpu_may_leave_the_model_out() -> None:
    xml = BASE.format(devices="", extra="").replace(
        "<devices>", "<cpu mode='host-model'><model fallback='allow'/></cpu><devices>")
    assert DomainDef.parse(xml).cpu_model is None


@pytest.mark.no_qemu
def test_one_pci_address_for_two_devices_is_refused() -> None:
    from qdriver.xml import layout
    at = "<address type='pci' domain='0' bus='0' slot='3' function='0'/>"
    d = dom(devices=f"<memballoon model='virtio'>{at}</memballoon>"
                    f"<rng model='virtio'><backend model='random'>/dev/urandom</backend>{at}</rng>")
    with pytest.raises(XMLError, match="Attempted double use of PCI Address 0000:00:03.0"):
        layout.assign(d)


@pytest.mark.no_qemu
@pytest.mark.parametrize("machine, ok", [("q35", True), ("pc-q35-7.2", True), ("pc", True),
                                         ("pc-i440fx-7.2", True), ("pc-1.0", True),
                                         ("microvm", True), ("isapc", False), ("none", False)])
def test_machines_qdriver_can_lay_out(machine: str, ok: bool) -> None:
    from qdriver.xml import layout
    d = DomainDef.parse(BASE.format(devices="", extra="").replace("'q35'", f"'{machine}'"))
    assert (layout.machine_problems(d) == []) == ok


@pytest.mark.parametrize("change, message", [
    (("'q35'", "'pc-q35-99.0'"), "does not support machine type 'pc-q35-99.0'"),
    (("'q35'", "'isapc'"), "machine type 'isapc'"),
    (("<devices>", "<devices><watchdog model='i6300esb'/>"), "<devices><watchdog>"),
    (("<devices>", "<devices><interface type='bridge'><source bridge='br0'/></interface>"),
     "interface type='bridge'"),
], ids=["unknown-machine", "isapc", "watchdog", "bridge"])
async def test_define_refuses_what_cannot_start_and_stores_nothing(
        tmp_path: Path, change: tuple[str, str], message: str) -> None:
    import qdriver
    drv = qdriver.Driver(tmp_path / "state")
    with pytest.raises(ConfigUnsupportedError, match=message):
        await drv.define_xml(BASE.format(devices="", extra="").replace(*change))
    assert drv.list_domains() == []


@pytest.mark.no_qemu
def test_a_namespaced_element_is_named_as_written() -> None:
    d = dom(extra="<qemu:commandline xmlns:qemu='http://libvirt.org/schemas/domain/qemu/1.0'>"
                  "<qemu:arg value='-foo'/></qemu:commandline>")
    assert d.unsupported == ["<qemu:commandline>"]


# -- the same hardware (``virsh restore --xml``): libvirt's ABI stability check ------

SAVED = """<domain type='qemu'>
  <name>g</name><uuid>0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0</uuid>
  <memory unit='MiB'>128</memory>
  <os><type arch='x86_64' machine='pc-q35-7.2'>hvm</type><kernel>/k</kernel></os>
  <devices>
    <disk type='file' device='disk'><driver name='qemu' type='qcow2'/>
      <source file='/a.qcow2'/><target dev='vda' bus='virtio'/></disk>
    <interface type='user'><mac address='52:54:00:00:00:01'/><model type='virtio'/></interface>
    <serial type='pty'/>
  </devices>
</domain>"""


@pytest.mark.parametrize("old,new,problem", [
    ("/a.qcow2", "/b.qcow2", None),  # another image behind the same disk
    ("type='qcow2'", "type='raw'", None),
    ("<kernel>/k</kernel>", "<kernel>/other</kernel>", None),  # loaded at boot only
    ("<serial type='pty'/>", "<serial type='unix'><source mode='bind' path='/s'/></serial>",
     None),  # where the serial port goes is the host's side
    ("128", "256", "Target domain max memory (KiB) 262144 does not match source 131072"),
    ("<name>g</name>", "<name>h</name>", "Target domain name 'h' does not match source 'g'"),
    ("0f1e2d3c", "1f1e2d3c", "Target domain uuid '1f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0' "
                             "does not match source '0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0'"),
    ("pc-q35-7.2", "pc-q35-10.0", "Target domain machine 'pc-q35-10.0' does not match "
                                  "source 'pc-q35-7.2'"),
    ("bus='virtio'", "bus='sata'", "Target disk bus 'sata' does not match source 'virtio'"),
    ("<target dev='vda' bus='virtio'/></disk>",
     "<target dev='vda' bus='virtio'/></disk><disk type='file' device='disk'>"
     "<source file='/c.qcow2'/><target dev='vdb' bus='virtio'/></disk>",
     "Target domain disk count 2 does not match source 1"),
    ("type='virtio'", "type='e1000'", "Target net card model 'e1000' does not match source "
                                      "'virtio'"),
])
@pytest.mark.no_qemu
def test_same_hardware_allows_the_host_side_only(old: str, new: str,
                                                 problem: str | None) -> None:
    assert old in SAVED
    differences = abi.differences(DomainDef.parse(SAVED), DomainDef.parse(SAVED.replace(old,
                                                                                         new)))
    assert differences == ([problem] if problem else [])


@pytest.mark.no_qemu
@pytest.mark.parametrize("element,expected", [
    ("", None),
    ("<genid>AAAAAAAA-1111-2222-3333-444444444444</genid>",
     "aaaaaaaa-1111-2222-3333-444444444444"),
    ("<genid/>", "generated"),
    ("<genid>  </genid>", "generated"),
])
def test_genid_is_kept_or_generated_as_libvirt_does(element: str, expected: str | None) -> None:
    d = dom(extra=element)
    if expected != "generated":
        assert d.genid == expected
        return
    assert d.genid is not None and len(d.genid) == 36
    again = DomainDef.parse(d.to_xml())  # the generated value is stored, not made again
    assert again.genid == d.genid


@pytest.mark.no_qemu
def test_a_malformed_genid_is_named() -> None:
    with pytest.raises(XMLError, match="malformed genid element 'not-a-guid'"):
        dom(extra="<genid>not-a-guid</genid>")


@pytest.mark.no_qemu
def test_a_new_genid_changes_only_the_genid() -> None:
    d = dom(extra="<genid>aaaaaaaa-1111-2222-3333-444444444444</genid>")
    new = d.with_new_genid()
    assert new.genid not in (None, d.genid)
    assert new.to_xml().replace(new.genid or "", d.genid or "") == d.to_xml()
    assert dom().with_new_genid().genid is None
    fork = d.forked("f", {})
    assert fork.genid not in (None, d.genid) and fork.uuid != d.uuid
