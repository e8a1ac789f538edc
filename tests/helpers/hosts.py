"""Two hosts on one machine, for migrations: a network namespace each, joined by a
veth pair (10.251.N.1 and 10.251.N.2, inside the namespaces only), an ``sshd``
(Debian's openssh-server) of the test's own in the destination's namespace, and an
``ssh`` on the source's PATH that logs in there with the test's own key.
Everything goes when the test ends: the sshd, the namespaces, the keys."""
from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

SSHD = "/usr/sbin/sshd"
SSH_PORT = 2222


@dataclass(frozen=True)
class Hosts:
    """The source's and the destination's namespaces and addresses."""

    source: str
    dest: str
    source_address: str
    dest_address: str
    bin: Path
    """A directory for the source's PATH: its ``ssh`` logs in to the destination."""

    def on_source(self, *argv: str) -> list[str]:
        """A command that runs in the source's namespace, with its ``ssh``."""
        return ["ip", "netns", "exec", self.source, "env",
                f"PATH={self.bin}:{os.environ.get('PATH', '')}", *argv]

    def on_dest(self, *argv: str) -> list[str]:
        """A command that runs on the destination, through ssh (in its sshd's mount
        namespace too: ``ip netns exec`` gave it one of its own)."""
        return self.on_source("ssh", "-p", str(SSH_PORT), f"root@{self.dest_address}",
                              " ".join(shlex.quote(a) for a in argv))

    def qdriver(self, state_dir: Path, *args: str) -> list[str]:
        """qdriver's CLI on the source host."""
        return self.on_source(sys.executable, "-m", "qdriver", "--state-dir", str(state_dir),
                              *args)

    def uri(self, state_dir: Path) -> str:
        """The destination's URI: qdriver there is this venv's."""
        command = Path(sys.executable).with_name("qdriver")
        return (f"qdriver+ssh://root@{self.dest_address}:{SSH_PORT}{state_dir}"
                f"?command={command}")


def _run(*argv: str) -> None:
    subprocess.run(argv, check=True, capture_output=True)


@contextmanager
def two_hosts(tmp: Path) -> Iterator[Hosts]:
    """Two namespaces, a veth pair between them and an sshd in the second."""
    if os.geteuid() != 0 or shutil.which("ip") is None or not os.access(SSHD, os.X_OK):
        pytest.skip("two hosts need root, iproute2 and openssh-server (see .ci/setup)")
    n = os.getpid() % 250
    src, dst = f"qdsrc-{os.getpid()}", f"qddst-{os.getpid()}"
    hosts = Hosts(src, dst, f"10.251.{n}.1", f"10.251.{n}.2", tmp / "bin")
    sshd: subprocess.Popen[bytes] | None = None
    try:
        for ns in (src, dst):
            _run("ip", "netns", "add", ns)
            _run("ip", "-n", ns, "link", "set", "lo", "up")
        _run("ip", "link", "add", "qdveth0", "netns", src, "type", "veth", "peer", "name",
             "qdveth1", "netns", dst)
        for ns, dev, addr in ((src, "qdveth0", hosts.source_address),
                              (dst, "qdveth1", hosts.dest_address)):
            _run("ip", "-n", ns, "addr", "add", f"{addr}/24", "dev", dev)
            _run("ip", "-n", ns, "link", "set", dev, "up")
        sshd = _start_sshd(tmp, hosts)
        yield hosts
    finally:
        if sshd is not None:
            sshd.kill()
            sshd.wait()
        for ns in (src, dst):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)


def _start_sshd(tmp: Path, hosts: Hosts) -> subprocess.Popen[bytes]:
    """An sshd of the test's own: its host key, one authorized key, root by key only."""
    keys = tmp / "ssh"
    keys.mkdir(mode=0o700)
    for name in ("host", "user"):
        _run("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(keys / name))
    (keys / "authorized_keys").write_text((keys / "user.pub").read_text())
    config = keys / "sshd_config"
    config.write_text(
        f"Port {SSH_PORT}\nListenAddress {hosts.dest_address}\nHostKey {keys / 'host'}\n"
        f"AuthorizedKeysFile {keys / 'authorized_keys'}\nPidFile {keys / 'sshd.pid'}\n"
        "PermitRootLogin prohibit-password\nPasswordAuthentication no\n"
        "KbdInteractiveAuthentication no\nUsePAM no\nStrictModes no\n"
        "AcceptEnv QDRIVER_*\n")
    Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # its privilege separation dir
    sshd = subprocess.Popen(["ip", "netns", "exec", hosts.dest, SSHD, "-D", "-e", "-f",
                             str(config)], stderr=open(keys / "sshd.log", "wb"))
    hosts.bin.mkdir()
    ssh = hosts.bin / "ssh"
    ssh.write_text(f"#!/bin/sh\nexec /usr/bin/ssh -i {keys / 'user'} -o "
                   "StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o "
                   "LogLevel=ERROR \"$@\"\n")
    ssh.chmod(0o755)
    deadline = time.monotonic() + 10
    while subprocess.run(hosts.on_source("ssh", "-p", str(SSH_PORT), "-o", "BatchMode=yes",
                                         f"root@{hosts.dest_address}", "true"),
                         capture_output=True).returncode != 0:
        if time.monotonic() > deadline or sshd.poll() is not None:
            raise AssertionError("the test's sshd does not answer: "
                                 + (keys / "sshd.log").read_text(errors="replace")[-500:])
        time.sleep(0.1)
    return sshd


__all__ = ["Hosts", "two_hosts"]
