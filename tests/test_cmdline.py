"""The QEMU command-line builder (pure)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from qdriver.errors import ConfigUnsupportedError
from qdriver.launch import cmdline
from qdriver.paths import DomainPaths
from qdriver.xml.domain import DomainDef

pytestmark = pytest.mark.no_qemu  # pure: runs no QEMU program

XML = """<domain type='{t}'>
  <name>c</name><uuid>11111111-2222-3333-4444-555555555555</uuid>
  <memory unit='MiB'>256</memory><vcpu>2</vcpu>
  <os><type machine='q35'>hvm</type><kernel>/k</kernel><initrd>/i</initrd>
      <cmdline>console=ttyS0</cmdline></os>
  <features><acpi/></features>{cpu}
  <devices>
    <disk type='file' device='disk'><driver type='qcow2'/><source file='/d/a.qcow2'/>
      <target dev='vda' bus='virtio'/></disk>
    <disk type='file' device='disk'><driver type='raw'/><source file='/d/b.img'/>
      <target dev='sdb' bus='sata'/><readonly/></disk>
    <disk type='file' device='cdrom'><target dev='sdc' bus='scsi'/></disk>
    <interface type='user'><portForward proto='tcp'><range start='2222' to='22'/>
      </portForward></interface>
    <serial type='pty'/>
    <channel type='unix'><target type='virtio' name='org.qemu.guest_agent.0'/></channel>
    <graphics type='vnc' port='5901'/>
  </devices>
</domain>"""


def build(tmp_path: Path, t: str = "qemu", cpu: str = "", accel: str = "tcg") -> list[str]:
    d = DomainDef.parse(XML.format(t=t, cpu=cpu))
    return cmdline.build(d, DomainPaths.of(tmp_path, "c"), accel)


def opts(argv: list[str], flag: str) -> list[str]:
    return [argv[i + 1] for i, a in enumerate(argv) if a == flag]


def test_starts_paused_with_four_monitors(tmp_path: Path) -> None:
    argv = build(tmp_path)
    assert "-S" in argv
    assert opts(argv, "-machine") == ["q35,accel=tcg"]
    assert opts(argv, "-m") == ["size=262144k"] and opts(argv, "-smp") == ["2"]
    assert opts(argv, "-mon") == ["chardev=qmp,mode=control", "chardev=qmpquery,mode=control",
                                 "chardev=qmpkeep,mode=control", "chardev=qmpevents,mode=control"]
    paths = DomainPaths.of(tmp_path, "c")
    assert len(str(paths.qmp)) <= 107
    assert any(str(paths.qmp) in c for c in opts(argv, "-chardev"))


def test_disks_use_blockdev_with_stable_node_names(tmp_path: Path) -> None:
    argv = build(tmp_path)
    nodes = [json.loads(b) for b in opts(argv, "-blockdev")]
    assert [n["node-name"] for n in nodes] == ["file-vda", "fmt-vda", "file-sdb", "fmt-sdb"]
    assert nodes[1] == {"driver": "qcow2", "file": "file-vda", "node-name": "fmt-vda",
                        "read-only": False, "discard": "unmap", "backing": None}
    assert nodes[3]["driver"] == "raw" and nodes[3]["read-only"] is True
    assert "backing" not in nodes[3]  # a raw image has none to name
    devices = opts(argv, "-device")
    # placed as libvirt places them (tests/test_libvirt_layout.py checks against libvirt)
    assert "virtio-blk-pci,bus=pci.5,addr=0x0,drive=fmt-vda,id=vda" in devices
    assert "ide-hd,bus=ide.1,drive=fmt-sdb,id=sdb" in devices
    assert "lsi,id=scsi0,bus=pci.2,addr=0x2" in devices  # libvirt's default SCSI model
    assert "scsi-cd,bus=scsi0.0,scsi-id=2,id=sdc" in devices


def test_each_backing_layer_is_its_own_read_only_node(tmp_path: Path) -> None:
    """QEMU never follows a header's backing name: every layer qdriver read is named."""
    from qdriver.qemuimg.chain import Layer
    d = DomainDef.parse(XML.format(t="qemu", cpu=""))
    layers = (Layer("/d/mid.qcow2", "qcow2"), Layer("/d/base.raw", "raw"))
    argv = cmdline.build(d, DomainPaths.of(tmp_path, "c"), "tcg", chains={"vda": layers})
    nodes = {n["node-name"]: n for n in map(json.loads, opts(argv, "-blockdev"))}
    mid, base = (cmdline.layer_nodes("vda", p)[0] for p in ("/d/mid.qcow2", "/d/base.raw"))
    assert nodes["fmt-vda"]["backing"] == mid
    assert nodes[mid]["backing"] == base and nodes[mid]["read-only"] is True
    assert nodes[mid]["file"]["filename"] == "/d/mid.qcow2"
    assert nodes[mid]["file"]["auto-read-only"] is True
    assert nodes[base]["driver"] == "raw" and "backing" not in nodes[base]


def test_network_serial_channel_vnc(tmp_path: Path) -> None:
    argv = build(tmp_path)
    assert opts(argv, "-netdev") == ["user,id=hostnet0,hostfwd=tcp:127.0.0.1:2222-:22"]
    chardevs = opts(argv, "-chardev")
    assert any(c.startswith("pty,id=charserial0,logfile=") for c in chardevs)
    assert any("name=org.qemu.guest_agent.0" in d for d in opts(argv, "-device"))
    assert opts(argv, "-vnc") == ["127.0.0.1:1,audiodev=audio1"]  # as libvirt links them


def test_kvm_and_cpu_modes(tmp_path: Path) -> None:
    argv = build(tmp_path, t="kvm", cpu="<cpu mode='host-passthrough'/>", accel="kvm")
    assert opts(argv, "-cpu") == ["host"] and opts(argv, "-machine") == ["q35,accel=kvm"]
    assert opts(build(tmp_path, cpu="<cpu mode='maximum'/>"), "-cpu") == ["max"]
    with pytest.raises(ConfigUnsupportedError, match="host-passthrough' needs KVM"):
        build(tmp_path, t="kvm", cpu="<cpu mode='host-passthrough'/>")  # KVM unusable here
    with pytest.raises(ConfigUnsupportedError, match="host-passthrough'> in a domain of type"):
        build(tmp_path, cpu="<cpu mode='host-passthrough'/>")


@pytest.mark.parametrize("io, aio", [(None, None), ("threads", "threads"),
                                     ("io_uring", "io_uring")])
def test_disk_io_mode_reaches_the_file_node(tmp_path: Path, io: str | None,
                                            aio: str | None) -> None:
    xml = XML.format(t="qemu", cpu="")
    if io:
        xml = xml.replace("<driver type='qcow2'/>", f"<driver type='qcow2' io='{io}'/>")
    d = DomainDef.parse(xml)
    assert d.disks[0].io == io and "io=" in d.to_xml() if io else True
    nodes = [json.loads(b) for b in opts(cmdline.build(d, DomainPaths.of(tmp_path, "c"),
                                                       "tcg"), "-blockdev")]
    assert nodes[0].get("aio") == aio
    assert "aio" not in nodes[2]  # the other disk keeps QEMU's default


def test_disk_io_native_is_refused_by_name(tmp_path: Path) -> None:
    d = DomainDef.parse(XML.format(t="qemu", cpu="").replace(
        "<driver type='qcow2'/>", "<driver type='qcow2' io='native'/>"))
    with pytest.raises(ConfigUnsupportedError, match="io='native'"):
        cmdline.build(d, DomainPaths.of(tmp_path, "c"), "tcg")


def test_audio_none_is_a_silent_backend_and_other_audio_is_refused(tmp_path: Path) -> None:
    with_audio = XML.format(t="qemu", cpu="").replace("</devices>",
                                                      "<audio id='1' type='none'/></devices>")
    argv = cmdline.build(DomainDef.parse(with_audio), DomainPaths.of(tmp_path, "c"), "tcg")
    assert [json.loads(a) for a in opts(argv, "-audiodev")] == [{"id": "audio1",
                                                                 "driver": "none"}]
    pulse = DomainDef.parse(with_audio.replace("type='none'", "type='pulseaudio'"))
    with pytest.raises(ConfigUnsupportedError, match="<audio type='pulseaudio'>"):
        cmdline.build(pulse, DomainPaths.of(tmp_path, "c"), "tcg")


def test_a_file_console_appends_when_asked(tmp_path: Path) -> None:
    xml = XML.format(t="qemu", cpu="").replace(
        "<serial type='pty'/>", "<serial type='file'><source path='/l/s.log' append='on'/>"
        "</serial>")
    chardevs = opts(cmdline.build(DomainDef.parse(xml), DomainPaths.of(tmp_path, "c"), "tcg"),
                    "-chardev")
    assert "file,id=charserial0,path=/l/s.log,append=on" in chardevs
    plain = opts(cmdline.build(DomainDef.parse(xml.replace(" append='on'", "")),
                               DomainPaths.of(tmp_path, "c"), "tcg"), "-chardev")
    assert "file,id=charserial0,path=/l/s.log" in plain


def test_a_genid_is_the_vmgenid_device(tmp_path: Path) -> None:
    xml = XML.format(t="qemu", cpu="").replace(
        "</uuid>", "</uuid><genid>aaaaaaaa-1111-2222-3333-444444444444</genid>")
    argv = cmdline.build(DomainDef.parse(xml), DomainPaths.of(tmp_path, "c"), "tcg")
    assert "vmgenid,guid=aaaaaaaa-1111-2222-3333-444444444444,id=vmgenid0" in opts(argv,
                                                                                  "-device")
    assert not any(o.startswith("vmgenid") for o in opts(build(tmp_path), "-device"))
