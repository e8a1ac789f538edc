"""Bad values give an error that names them, never a traceback (run_cli asserts that)."""
from __future__ import annotations

from pathlib import Path

import pytest

from .helpers import run_cli

DOMAIN = """<domain type='qemu'><name>{name}</name><memory unit='MiB'>64</memory>
<vcpu>{vcpu}</vcpu><os><type machine='q35'>hvm</type></os>
<devices><disk type='file' device='disk'><driver type='{fmt}'/><source file='{disk}'/>
<target dev='{target}' bus='{bus}'/></disk><graphics type='vnc' port='{port}'/></devices>
</domain>"""


def domain(tmp_path: Path, name: str = "d", vcpu: str = "1", port: str = "5905",
           target: str = "vda", bus: str = "virtio", fmt: str = "raw") -> Path:
    disk = tmp_path / "disk.raw"
    disk.write_bytes(b"\0" * 65536)
    path = tmp_path / f"{name}.xml"
    path.write_text(DOMAIN.format(name=name, vcpu=vcpu, port=port, disk=disk, target=target,
                                  bus=bus, fmt=fmt))
    return path


def refused(state_dir: Path, *args: str) -> str:
    result = run_cli(state_dir, *args, check=False)
    assert result.returncode == 1, result
    err: bytes = result.stderr
    return err.decode()


@pytest.mark.parametrize("args, named", [
    (("--description", "bad\x01text"), "<description> text 'bad\\x01text'"),
    (("--disk-only", "--diskspec", "vda,file=/tmp/o\x02.qcow2"),
     "source file='/tmp/o\\x02.qcow2'"),
    (("--memspec", "file=/tmp/m\x03", "--diskspec", "vda,snapshot=no"),
     "memory file='/tmp/m\\x03'"),
    (("--name", "na\x04me"), "<name> text 'na\\x04me'"),
])
def test_control_characters_in_snapshot_values(state_dir: Path, tmp_path: Path,
                                               args: tuple[str, ...], named: str) -> None:
    run_cli(state_dir, "define", str(domain(tmp_path)))
    err = refused(state_dir, "snapshot-create-as", "d", *args)
    assert "invalid character in" in err and named in err, err
    assert run_cli(state_dir, "snapshot-list", "d", "--name").stdout.split() == []


@pytest.mark.parametrize("kw, named", [
    ({"vcpu": "two"}, "invalid value 'two' for <vcpu>"),
    ({"port": "59x1"}, "invalid value '59x1' for <graphics port>"),
])
@pytest.mark.no_qemu
def test_bad_numbers_in_domain_xml(state_dir: Path, tmp_path: Path, kw: dict[str, str],
                                   named: str) -> None:
    assert named in refused(state_dir, "define", str(domain(tmp_path, **kw)))


@pytest.mark.no_qemu
@pytest.mark.parametrize("encoding", ["utf-16", "utf-16-be", "utf-32"])
def test_entities_are_refused_in_every_encoding(state_dir: Path, tmp_path: Path,
                                                encoding: str) -> None:
    secret = tmp_path / "secret"
    secret.write_text("s3cret")
    name = {"utf-16": "UTF-16", "utf-16-be": "UTF-16BE", "utf-32": "UTF-32"}[encoding]
    xml = (f"<?xml version='1.0' encoding='{name}'?>\n"
           f"<!DOCTYPE domain [<!ENTITY x SYSTEM 'file://{secret}'>]>\n"
           "<domain type='qemu'><name>&x;</name><memory>65536</memory></domain>\n")
    path = tmp_path / "wide.xml"
    path.write_bytes(xml.encode(encoding))
    err = refused(state_dir, "define", str(path))
    assert "DTDs and entity declarations are not allowed" in err or "malformed" in err, err
    assert "s3cret" not in err
    assert run_cli(state_dir, "list", "--all", "--name").stdout.split() == []


def test_utf16_without_entities_is_accepted(state_dir: Path, tmp_path: Path) -> None:
    path = tmp_path / "wide.xml"
    path.write_bytes(domain(tmp_path, name="wide").read_text().encode("utf-16"))
    run_cli(state_dir, "define", str(path))
    assert run_cli(state_dir, "list", "--all", "--name").stdout.split() == [b"wide"]


def test_early_qemu_exit_gives_qemus_own_message_of_this_start(state_dir: Path,
                                                                 tmp_path: Path) -> None:
    # zeros said to be qcow2: an image QEMU itself refuses at start
    run_cli(state_dir, "define", str(domain(tmp_path, fmt="qcow2")))
    for _ in range(2):
        err = refused(state_dir, "start", "d")
        assert "process exited while connecting to monitor" in err, err
        assert "Image is not in qcow2 format" in err, err
        assert err.count("not in qcow2") == 1, "an earlier start's log lines were repeated"
    assert run_cli(state_dir, "domstate", "d").stdout.split() == [b"shut", b"off"]
