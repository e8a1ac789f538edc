"""A distribution guest, as people run them: Debian 12 on UEFI, set up by cloud-init.

The disk is built from Debian packages by ``tests/vm-images/debian.py`` (`.ci/test`
builds it).  One boot checks what only a boot shows: the firmware, cloud-init's
user, key and hostname, the guest agent, ssh through a port forward, and host
folders through virtiofs and 9p.
"""
from __future__ import annotations

import shutil
import socket
import subprocess
from pathlib import Path

import anyio
import pytest

import qdriver
from tests.helpers.cli import run_cli

IMAGE = Path(__file__).parent / "vm-images" / "out" / "debian" / "disk.qcow2"
BOOT_TIMEOUT = 400.0
"""Debian to cloud-init's end on TCG: about 90 s alone, more beside other tests."""

pytestmark = pytest.mark.skipif(not IMAGE.exists(), reason="the Debian guest is not built: "
                                "python3 tests/vm-images/debian.py (.ci/test does)")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _xml(disk: Path, port: int, share: Path) -> str:
    return f"""<domain type='qemu'>
  <name>debian-lab</name>
  <memory unit='MiB'>768</memory>
  <memoryBacking><source type='memfd'/><access mode='shared'/></memoryBacking>
  <vcpu>2</vcpu>
  <os firmware='efi'><type arch='x86_64' machine='q35'>hvm</type>
    <firmware><feature enabled='no' name='secure-boot'/></firmware></os>
  <features><acpi/></features>
  <devices>
    <disk type='file' device='disk'><driver name='qemu' type='qcow2'/>
      <source file='{disk}'/><target dev='vda' bus='virtio'/></disk>
    <interface type='user'><model type='virtio'/>
      <portForward proto='tcp'><range start='{port}' to='22'/></portForward></interface>
    <channel type='unix'><target type='virtio' name='org.qemu.guest_agent.0'/></channel>
    <filesystem type='mount' accessmode='passthrough'><driver type='virtiofs'/>
      <source dir='{share}'/><target dir='hostshare'/></filesystem>
    <filesystem type='mount' accessmode='passthrough'><driver type='path'/>
      <source dir='{share}'/><target dir='ninep'/></filesystem>
    <serial type='pty'/>
  </devices>
</domain>"""


async def _agent_answers(dom: qdriver.Domain) -> dict[str, str | int]:
    with anyio.fail_after(BOOT_TIMEOUT):
        while True:
            try:
                return await dom.guest_info(("hostname", "os"))
            except (qdriver.AgentUnresponsiveError, qdriver.OperationFailedError):
                await anyio.sleep(2)


def _ssh(key: Path, port: int, command: str) -> str:
    run = subprocess.run(
        ["ssh", "-i", str(key), "-p", str(port), "-o", "StrictHostKeyChecking=no",
         "-o", "UserKnownHostsFile=/dev/null", "-o", "BatchMode=yes", "-o", "LogLevel=ERROR",
         "-o", "ConnectTimeout=20", "debian@127.0.0.1", command],
        capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    return run.stdout


@pytest.mark.skipif(shutil.which("ssh") is None, reason="no ssh client (openssh-client)")
async def test_debian_boots_on_uefi_set_up_by_cloud_init(
        driver: qdriver.Driver, tmp_path: Path, state_dir: Path) -> None:
    disk = tmp_path / "debian.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", str(IMAGE), "-F",
                    "qcow2", str(disk)], check=True)
    key = tmp_path / "id"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    share = tmp_path / "share"
    share.mkdir()
    (share / "hello").write_text("from-host\n")
    port = _free_port()
    (tmp_path / "debian.xml").write_text(_xml(disk, port, share))
    run_cli(state_dir, "define", str(tmp_path / "debian.xml"), "--cloud-init",
            f"ssh-key={key}.pub")
    dom = driver.lookup("debian-lab")
    await dom.start()
    info = await _agent_answers(dom)  # the guest agent answers qdriver
    assert info["hostname"] == "debian-lab" and info["os.id"] == "debian"
    with anyio.fail_after(BOOT_TIMEOUT):  # sshd comes up with cloud-init's keys
        while subprocess.run(["ssh", "-i", str(key), "-p", str(port), "-o",
                              "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
                              "-o", "BatchMode=yes", "-o", "ConnectTimeout=5",
                              "debian@127.0.0.1", "true"], capture_output=True).returncode:
            await anyio.sleep(2)
    said = await anyio.to_thread.run_sync(
        _ssh, key, port, "hostname; id -un; test -d /sys/firmware/efi && echo uefi")
    assert said.split() == ["debian-lab", "debian", "uefi"]
    said = await anyio.to_thread.run_sync(_ssh, key, port, (
        "sudo mkdir -p /mnt/v /mnt/9 && sudo mount -t virtiofs hostshare /mnt/v && "
        "sudo mount -t 9p -o trans=virtio ninep /mnt/9 && cat /mnt/v/hello /mnt/9/hello && "
        "echo by-virtiofs | sudo tee /mnt/v/from-virtiofs >/dev/null && "
        "echo by-9p | sudo tee /mnt/9/from-9p >/dev/null && sync"))
    assert said.split() == ["from-host", "from-host"]
    assert (share / "from-virtiofs").read_text() == "by-virtiofs\n"
    assert (share / "from-9p").read_text() == "by-9p\n"
    await dom.destroy()
    await driver.undefine(dom, nvram=True)
