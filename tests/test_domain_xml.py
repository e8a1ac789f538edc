"""The domain XML model: parsing, defaults, round trip, hostile input."""
from __future__ import annotations

import time
from pathlib import Path

import pytest

from qdriver import cmdline
from qdriver.errors import ConfigUnsupportedError, XMLError
from qdriver.paths import DomainPaths
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


def test_basic_fields_and_generated_uuid() -> None:
    d = dom()
    assert (d.name, d.type, d.memory_kib, d.vcpus, d.machine) == ("g", "qemu", 131072, 1, "q35")
    assert len(d.uuid) == 36
    # the generated uuid is part of the definition from now on
    assert f"<uuid>{d.uuid}</uuid>" in d.to_xml()
    assert DomainDef.parse(d.to_xml()).uuid == d.uuid


@pytest.mark.parametrize("unit,value,kib", [("KiB", 1024, 1024), ("M", 2, 2048),
                                            ("GiB", 1, 1 << 20), ("MB", 1, 976),
                                            ("bytes", 1 << 20, 1024)])
def test_memory_units(unit: str, value: int, kib: int) -> None:
    xml = BASE.format(devices="", extra="").replace(
        "<memory unit='MiB'>128</memory>", f"<memory unit='{unit}'>{value}</memory>")
    assert DomainDef.parse(xml).memory_kib == kib


def test_unknown_elements_are_kept_by_dumpxml() -> None:
    d = dom(devices="<watchdog model='i6300esb'/>",
            extra="<metadata><app:x xmlns:app='urn:a'>keep me</app:x></metadata>")
    out = d.to_xml()
    assert "<watchdog model='i6300esb'/>" in out
    assert "keep me" in out
    again = DomainDef.parse(out)
    assert again.to_xml() == out


def test_unsupported_element_is_named_at_start(tmp_path: Path) -> None:
    d = dom(devices="<watchdog model='i6300esb'/>")
    with pytest.raises(ConfigUnsupportedError, match=r"<devices><watchdog>.*domain 'g'"):
        cmdline.build(d, DomainPaths.of(tmp_path, "g"), "tcg")


@pytest.mark.parametrize("devices,message", [
    ("<interface type='bridge'><source bridge='br0'/></interface>", "interface type='bridge'"),
    ("<disk type='block' device='disk'><source dev='/dev/sda'/><target dev='vdb'/></disk>",
     "disk type='block'"),
    ("<graphics type='spice'/>", "graphics type='spice'"),
])
def test_unsupported_devices(tmp_path: Path, devices: str, message: str) -> None:
    with pytest.raises(ConfigUnsupportedError, match=message):
        cmdline.build(dom(devices=devices), DomainPaths.of(tmp_path, "g"), "tcg")


def test_malformed_xml() -> None:
    with pytest.raises(XMLError, match="malformed domain XML"):
        DomainDef.parse("<domain type='qemu'><name>x</name>")


def test_external_entity_refused(tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_text("TOPSECRET")
    xml = (f"<?xml version='1.0'?><!DOCTYPE d [<!ENTITY x SYSTEM 'file://{secret}'>]>"
           "<domain type='qemu'><name>&x;</name><memory>1024</memory></domain>")
    with pytest.raises(XMLError, match="DTDs and entity declarations are not allowed"):
        DomainDef.parse(xml)


def test_billion_laughs_refused_quickly() -> None:
    ents = "".join(f"<!ENTITY l{i} '&l{i-1};&l{i-1};&l{i-1};&l{i-1};'>" for i in range(1, 20))
    xml = f"<!DOCTYPE d [<!ENTITY l0 'lol'>{ents}]><domain><name>&l19;</name></domain>"
    t = time.monotonic()
    with pytest.raises(XMLError):
        DomainDef.parse(xml)
    assert time.monotonic() - t < 1.0


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
def test_invalid_definitions(xml: str, error: type, message: str) -> None:
    with pytest.raises(error, match=message):
        DomainDef.parse(xml)


def test_console_aliases_first_serial_and_channels() -> None:
    d = dom(devices="<serial type='pty'/><console type='pty'/>"
                    "<channel type='unix'><target type='virtio' name='org.qemu.guest_agent.0'/>"
                    "</channel>")
    assert len(d.serials) == 1 and d.serials[0].type == "pty"
    assert d.channels[0].target_name == "org.qemu.guest_agent.0"
