"""``define --cloud-init``: a NoCloud seed made for the domain, attached as a cdrom."""
from __future__ import annotations

from pathlib import Path

import pytest

import qdriver
from qdriver.cloudinit import CloudInit, read_seed
from tests.helpers.cli import run_cli
from tests.helpers.guest import GuestImage, domain_xml


def test_define_attaches_a_seed_that_cloud_init_reads(guest_image: GuestImage, tmp_path: Path,
                                                      state_dir: Path) -> None:
    (tmp_path / "g.xml").write_text(domain_xml(guest_image, "web", None))
    (tmp_path / "user-data").write_text("#cloud-config\nhostname: web\n")
    (tmp_path / "net").write_text("version: 2\n")
    said = run_cli(state_dir, "define", str(tmp_path / "g.xml"), "--cloud-init",
                   f"user-data={tmp_path / 'user-data'},network-config={tmp_path / 'net'}")
    assert said.stdout.decode().startswith("Domain 'web' defined")
    xml = run_cli(state_dir, "dumpxml", "web", "--inactive").stdout.decode()
    seed = state_dir / "domains" / "web" / "cidata.iso"
    assert f"<source file='{seed}'/>" in xml and "device='cdrom'" in xml
    assert "<target dev='sda' bus='sata'/>" in xml and "<readonly/>" in xml
    label, files = read_seed(seed)
    uuid = xml.split("<uuid>")[1].split("</uuid>")[0]
    assert label == "cidata"
    assert files == {"user-data": b"#cloud-config\nhostname: web\n",
                     "meta-data": f"instance-id: {uuid}\nlocal-hostname: web\n".encode(),
                     "network-config": b"version: 2\n"}
    assert seed.stat().st_mode & 0o777 == 0o600
    run_cli(state_dir, "undefine", "web")
    assert not seed.exists()  # it went with its domain


def test_an_ssh_key_becomes_the_default_users(guest_image: GuestImage, tmp_path: Path,
                                              state_dir: Path) -> None:
    (tmp_path / "g.xml").write_text(domain_xml(guest_image, "k", None))
    (tmp_path / "id.pub").write_text("ssh-ed25519 AAAAC3Nza me@host\n")
    run_cli(state_dir, "define", str(tmp_path / "g.xml"), "--cloud-init",
            f"ssh-key={tmp_path / 'id.pub'}")
    _, files = read_seed(state_dir / "domains" / "k" / "cidata.iso")
    assert files["user-data"] == \
        b"#cloud-config\nssh_authorized_keys:\n  - ssh-ed25519 AAAAC3Nza me@host\n"
    # defined again with the seed's cdrom in its XML: the one cdrom, a new seed
    xml = run_cli(state_dir, "dumpxml", "k", "--inactive").stdout
    (tmp_path / "again.xml").write_bytes(xml)
    (tmp_path / "id.pub").write_text("ssh-ed25519 BBBB other@host\n")
    run_cli(state_dir, "define", str(tmp_path / "again.xml"), "--cloud-init",
            f"ssh-key={tmp_path / 'id.pub'}")
    again = run_cli(state_dir, "dumpxml", "k", "--inactive").stdout.decode()
    assert again.count("device='cdrom'") == 1
    _, files = read_seed(state_dir / "domains" / "k" / "cidata.iso")
    assert b"BBBB other@host" in files["user-data"]


@pytest.mark.no_qemu
@pytest.mark.parametrize("option, message", [
    ("user-data", "unknown --cloud-init option 'user-data'"),
    ("vendor-data=/x", "unknown --cloud-init option 'vendor-data=/x'"),
    ("user-data=/nonexistent/u", "cannot read --cloud-init user-data file"),
])
def test_bad_cloud_init_options_name_what_is_wrong(option: str, message: str) -> None:
    with pytest.raises(qdriver.InvalidArgError, match=message):
        CloudInit.parse(option)


@pytest.mark.no_qemu
def test_user_data_and_an_ssh_key_together_are_refused(tmp_path: Path) -> None:
    (tmp_path / "u").write_text("#cloud-config\n")
    (tmp_path / "k").write_text("ssh-rsa AAA\n")
    with pytest.raises(qdriver.InvalidArgError, match="not both"):
        CloudInit.parse(f"user-data={tmp_path / 'u'},ssh-key={tmp_path / 'k'}")
