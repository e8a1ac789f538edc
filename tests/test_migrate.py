"""Live migration to another host over ssh, with no daemon on either side.

Two network namespaces are the two hosts (`helpers.hosts`), each with a state
directory of its own; the destination's qdriver runs through the test's sshd.
The guest counts on its disk while it moves; it counts on at the destination
without a restart, its disk the same as the source's at the switch.  Whatever
goes wrong part way (an abort from another process, the destination's QEMU
killed, the source's qdriver killed, the destination's disk full), the guest
runs on at the source and the destination keeps nothing.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import anyio
import pytest

import qdriver
import qdriver.blocking
from qdriver.paths import socket_root

from .helpers import GuestImage, domain_xml, qemu_pids
from .helpers.guest import counters
from .helpers.hosts import Hosts, two_hosts


@pytest.fixture
def hosts(tmp_path: Path) -> Iterator[Hosts]:
    with two_hosts(tmp_path) as h:
        yield h


@dataclass
class Moving:
    """The guest on the source host, and where it goes."""

    hosts: Hosts
    source_dir: Path
    dest_dir: Path
    disk: Path
    dest_disk: Path
    dest_xml: Path

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return subprocess.run(self.hosts.qdriver(self.source_dir, *args), text=True,
                              capture_output=True, check=check, timeout=300)

    def migrate(self, *extra: str, uri_extra: str = "",
                env: tuple[str, ...] = ()) -> subprocess.Popen[str]:
        """``qdriver migrate`` on the source host, running (``env``: NAME=VALUE more)."""
        argv = self.hosts.qdriver(
            self.source_dir, "migrate", "mover", self.hosts.uri(self.dest_dir) + uri_extra,
            "--live", "--copy-storage-all", "--xml", str(self.dest_xml), "--verbose", *extra)
        at = argv.index("env") + 1
        return subprocess.Popen(argv[:at] + list(env) + argv[at:], text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)

    @property
    def console(self) -> Path:
        return self.source_dir / "domains" / "mover" / "console.log"


def emulator() -> str:
    found = shutil.which("qemu-system-x86_64")
    assert found is not None
    return found


@pytest.fixture
def moving(hosts: Hosts, guest_image: GuestImage, tmp_path: Path) -> Iterator[Moving]:
    """The test guest booted on the source host, counting; its destination XML names
    a disk of its own there (both hosts share this machine's file system).  Whatever
    runs on either host at the end is destroyed."""
    disk, dest_disk = tmp_path / "src.qcow2", tmp_path / "dst" / "mover.qcow2"
    dest_disk.parent.mkdir()
    shutil.copyfile(guest_image.disk, disk)
    xml = domain_xml(guest_image, "mover", disk).replace(
        "<devices>", f"<devices><emulator>{emulator()}</emulator>")
    m = Moving(hosts, tmp_path / "a", tmp_path / "b", disk, dest_disk, tmp_path / "dest.xml")
    (tmp_path / "mover.xml").write_text(xml)
    m.cli("define", str(tmp_path / "mover.xml"))
    m.cli("start", "mover")
    wait_counting(m.console)
    m.dest_xml.write_text(m.cli("dumpxml", "mover").stdout.replace(str(disk), str(dest_disk)))
    yield m
    for state_dir in (m.source_dir, m.dest_dir):
        nothing_left_running(state_dir)


def nothing_left_running(state_dir: Path) -> None:
    """Destroy what still runs in ``state_dir``; then no socket may be left in its
    socket directory, which goes (a test's own state dirs are not the fixture's)."""
    drv = qdriver.blocking.Driver(state_dir)
    try:
        for dom in drv.list_domains():
            if dom.is_active:
                dom.destroy()
    finally:
        drv.close()
    sockets = socket_root(state_dir)
    assert [p for p in sockets.rglob("*") if not p.is_dir()] == [], "sockets left behind"
    shutil.rmtree(sockets, ignore_errors=True)


def wait_counting(console: Path, after: int = 0, count: int = 3, timeout: float = 60) -> list[int]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        values = counters(console.read_text(errors="replace")) if console.exists() else []
        values = [v for v in values if v > after]
        if len(values) >= count:
            return values
        time.sleep(0.05)
    raise AssertionError(f"no {count} counters past {after} on {console} in {timeout} s")


def dest_clean(m: Moving) -> None:
    """The destination keeps nothing: no domain, no QEMU, no image, no marker."""
    domains = m.dest_dir / "domains"
    assert not domains.exists() or [p.name for p in domains.iterdir()
                                    if (p / "domain.xml").exists()] == []
    assert not m.dest_disk.exists()
    assert not list((m.dest_dir / "incoming").glob("*.json")) \
        if (m.dest_dir / "incoming").exists() else True
    assert qemu_pids(m.dest_dir) == []


def source_counts_on(m: Moving) -> None:
    """The guest runs at the source as before: its journal clear, still counting."""
    assert m.cli("domstate", "mover").stdout.strip() == "running"
    last = counters(m.console.read_text(errors="replace"))[-1]
    wait_counting(m.console, after=last)
    assert not (m.source_dir / "domains" / "mover" / "journal.json").exists()


def test_a_counting_guest_moves_live_with_its_disk(moving: Moving) -> None:
    m = moving
    proc = m.migrate("--suspend", "--tunnelled", "--p2p")  # through ssh, no TCP port there
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    assert "Migration: total time" in out and "downtime" in out
    assert "copying disks 100%" in err and "migrating memory 100%" in err  # the final lines
    # the source: no QEMU, shut off (migrated); the destination: paused, as asked
    assert m.cli("domstate", "--reason", "mover").stdout.strip() == "shut off (migrated)"
    state = subprocess.run(m.hosts.on_dest(  # asked over ssh, as a user would
        str(Path(sys.executable).with_name("qdriver")), "--state-dir", str(m.dest_dir),
        "domstate", "--reason", "mover"), text=True, capture_output=True, check=True)
    assert state.stdout.strip() == "paused (migrated)"
    # what the guest wrote is what the destination has, byte for byte
    same = subprocess.run(["qemu-img", "compare", "-U", str(m.disk), str(m.dest_disk)],
                          capture_output=True, text=True)
    assert same.returncode == 0, same.stdout + same.stderr
    # it counts on there, without booting again
    source_last = counters(m.console.read_text(errors="replace"))[-1]
    dest_drv = qdriver.blocking.Driver(m.dest_dir)
    try:
        dom = dest_drv.lookup("mover")
        dom.resume()
        console = m.dest_dir / "domains" / "mover" / "console.log"
        values = wait_counting(console)
        text = console.read_text(errors="replace")
        dom.destroy()
    finally:
        dest_drv.close()
    assert "GUEST-READY" not in text
    assert source_last <= values[0] <= source_last + 3


def migrating_dest(m: Moving, proc: subprocess.Popen[str], timeout: float = 60
                   ) -> dict[str, object]:
    """Wait until the destination's QEMU waits for the stream; its run record."""
    record = m.dest_dir / "domains" / "mover" / "run.json"
    deadline = time.monotonic() + timeout
    while not record.exists():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "the destination never started its QEMU"
        time.sleep(0.02)
    time.sleep(0.3)  # the stream is flowing
    return dict(json.loads(record.read_text()))


SLOW = ("--bandwidth", "4")
"""Slow enough to act part way (the guest's 256 MiB take seconds at 4 MiB/s)."""


def test_abort_from_another_process_leaves_the_guest_at_the_source(moving: Moving) -> None:
    m = moving
    proc = m.migrate(*SLOW)
    migrating_dest(m, proc)
    m.cli("domjobabort", "mover")
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 1 and "canceled by client" in err, err
    source_counts_on(m)
    dest_clean(m)
    again = m.cli("domjobabort", "mover", check=False)  # nothing left to abort
    assert again.returncode == 1 and "no job is active on the domain" in again.stderr
    assert not (m.source_dir / "domains" / "mover" / "abort-job").exists()


def test_ctrl_c_leaves_the_guest_at_the_source(moving: Moving) -> None:
    m = moving
    proc = m.migrate(*SLOW)
    migrating_dest(m, proc)
    proc.send_signal(signal.SIGINT)  # ip netns exec execs: this is qdriver itself
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130 and err.endswith(
        "error: operation aborted: interrupted by the user\n"), err
    source_counts_on(m)
    dest_clean(m)


def test_a_killed_destination_qemu_leaves_the_guest_at_the_source(moving: Moving) -> None:
    m = moving
    proc = m.migrate(*SLOW)
    pid = int(migrating_dest(m, proc)["pid"])  # type: ignore[call-overload]
    os.kill(pid, signal.SIGKILL)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 1, err
    source_counts_on(m)
    dest_clean(m)


def test_a_killed_source_qdriver_is_recovered_on_both_sides(moving: Moving) -> None:
    m = moving
    proc = m.migrate(*SLOW)
    migrating_dest(m, proc)
    proc.kill()  # ip netns exec execs: this is qdriver itself
    proc.communicate(timeout=30)
    deadline = time.monotonic() + 60
    while True:  # the destination notices the channel close and takes back what it made
        try:
            dest_clean(m)
            break
        except AssertionError:
            assert time.monotonic() < deadline
            time.sleep(0.1)
    m.cli("suspend", "mover")  # the next command on the source rolls the migration back
    m.cli("resume", "mover")
    source_counts_on(m)


def test_a_killed_receiver_is_cleaned_up_by_the_next_command_there(moving: Moving) -> None:
    m = moving
    proc = m.migrate(*SLOW)
    migrating_dest(m, proc)
    receivers = subprocess.run(["pgrep", "-f", f"{m.dest_dir} migrate-receive"],
                               capture_output=True, text=True).stdout.split()
    assert receivers
    for pid in receivers:
        os.kill(int(pid), signal.SIGKILL)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 1 and "closed the migration channel" in err, err
    source_counts_on(m)
    assert qemu_pids(m.dest_dir)  # the receiver is gone, what it made is still there
    listed = subprocess.run(m.hosts.on_dest(
        str(Path(sys.executable).with_name("qdriver")), "--state-dir", str(m.dest_dir),
        "list", "--all"), text=True, capture_output=True, check=True)
    assert "discarded the incoming domain 'mover'" in listed.stderr
    assert "mover" not in listed.stdout
    dest_clean(m)


def test_a_full_destination_disk_leaves_the_guest_at_the_source(moving: Moving) -> None:
    m = moving
    small = m.dest_disk.parent
    # room for the empty image, not for what the guest's disk holds (about 1 MiB)
    subprocess.run(m.hosts.on_dest("mount", "-t", "tmpfs", "-o", "size=512k", "tmpfs",
                                   str(small)), check=True)
    try:
        proc = m.migrate()
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 1 and "the mirror of disk vda ended" in err, err
        source_counts_on(m)
        dest_clean(m)
        # the image was made there, in the destination's own mount of the small disk
        assert subprocess.run(m.hosts.on_dest("ls", "-A", str(small)), text=True,
                              capture_output=True, check=True).stdout == ""
    finally:
        subprocess.run(m.hosts.on_dest("umount", str(small)), check=True)


def make_certs(pki: Path, server_ip: str) -> None:
    """A CA, a server certificate for ``server_ip`` and a client certificate, in the
    files libvirt's ``/etc/pki/qemu`` holds."""
    pki.mkdir()

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=pki, check=True, capture_output=True)
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca-key.pem",
            "-out", "ca-cert.pem", "-days", "1", "-subj", "/CN=qdriver test CA")
    for role, usage, san in (("server", "serverAuth", f"IP:{server_ip}"),
                             ("client", "clientAuth", "DNS:source")):
        (pki / f"{role}.ext").write_text(f"subjectAltName={san}\nextendedKeyUsage={usage}\n"
                                         "keyUsage=digitalSignature,keyEncipherment\n")
        openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{role}-key.pem",
                "-out", f"{role}.csr", "-subj", f"/CN={role}")
        openssl("x509", "-req", "-in", f"{role}.csr", "-CA", "ca-cert.pem", "-CAkey",
                "ca-key.pem", "-CAcreateserial", "-out", f"{role}-cert.pem", "-days", "1",
                "-extfile", f"{role}.ext")


def test_over_tls_with_libvirts_certificate_layout(moving: Moving, tmp_path: Path) -> None:
    m = moving
    pki = tmp_path / "pki"
    make_certs(pki, m.hosts.dest_address)
    empty = tmp_path / "no-pki"
    empty.mkdir()
    proc = m.migrate("--tls", env=(f"QDRIVER_TLS_DIR={pki}",), uri_extra=f"&tls_dir={empty}")
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 1 and f"needs 'ca-cert.pem' in '{empty}'" in err, err
    source_counts_on(m)
    dest_clean(m)

    proc = m.migrate("--tls", "--suspend", env=(f"QDRIVER_TLS_DIR={pki}",),
                     uri_extra=f"&tls_dir={pki}")
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err


    async def on_dest() -> None:  # its QEMU took the stream with the TLS credentials
        async with qdriver.Driver(m.dest_dir) as there:
            dom = there.lookup("mover")
            async with dom.monitor() as mon:
                params = await mon.execute("query-migrate-parameters")
            assert params["tls-creds"] == "qdriver-migrate-tls"
            await dom.resume()
    anyio.run(on_dest)
    wait_counting(m.dest_dir / "domains" / "mover" / "console.log")


@pytest.fixture
def there(tmp_path: Path) -> Iterator[Path]:
    """The destination state directory of a migration on this host; whatever runs
    there at the end is destroyed, the test passed or not."""
    yield tmp_path / "b"
    nothing_left_running(tmp_path / "b")


async def test_another_state_dir_on_this_host_is_a_destination_too(
        driver: qdriver.Driver, guest_image: GuestImage, tmp_path: Path, there: Path) -> None:
    """``qdriver:///DIR``: the same migration without ssh, through the API; over two
    connections (multifd, set on both QEMUs)."""
    disk = tmp_path / "src.qcow2"
    shutil.copyfile(guest_image.disk, disk)
    dom = await driver.define_xml(domain_xml(guest_image, "local", disk))
    await dom.start()
    await anyio.to_thread.run_sync(wait_counting, dom.paths.console_log)
    dest_xml = dom.xml_desc().replace(str(disk), str(tmp_path / "dst.qcow2"))
    await dom.snapshot_create_xml("<domainsnapshot><name>s</name></domainsnapshot>")
    with pytest.raises(qdriver.OperationInvalidError, match="cannot migrate domain with 1 "
                       "snapshots"):  # libvirt's refusal: the snapshots' files stay here
        await dom.migrate(f"qdriver://{there}")
    await dom.snapshot_lookup("s").delete()
    report = await dom.migrate(f"qdriver://{there}", qdriver.MigrateFlags(
        live=True, copy_storage="all", dest_xml=dest_xml, undefine_source=True,
        parallel=2, auto_converge=True))  # multifd, both ends
    assert report.downtime_ms > 0 and report.ram_bytes > 0 and report.disk_bytes > 0
    assert driver.list_domains() == []  # --undefinesource
    async with qdriver.Driver(there) as dest:
        moved = dest.lookup("local")
        assert moved.state == qdriver.DomainState.RUNNING
        async with moved.monitor() as mon:  # the stream came over TLS, with a key of its own
            assert (await mon.execute("query-migrate-parameters"))["tls-creds"] == \
                "qdriver-migrate-tls"
        for side in (driver.state_dir, there):  # and the key is gone, both sides
            assert not list(socket_root(side).rglob("keys.psk"))
        await anyio.to_thread.run_sync(wait_counting, moved.paths.console_log)
        await moved.destroy()


async def test_an_incremental_copy_moves_the_top_image_and_a_timeout_pauses_to_finish(
        driver: qdriver.Driver, guest_image: GuestImage, tmp_path: Path, there: Path) -> None:
    """``--copy-storage-inc``: the destination has the backing image (the same path
    here), only the top image is copied; ``--timeout``: past it the guest pauses so
    that the migration ends, and it runs on at the destination."""
    top = tmp_path / "top.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", str(guest_image.disk),
                    "-F", "qcow2", str(top)], check=True)
    dom = await driver.define_xml(domain_xml(guest_image, "inc", top))
    await dom.start()
    await anyio.to_thread.run_sync(wait_counting, dom.paths.console_log)
    moved_top = tmp_path / "moved-top.qcow2"
    report = await dom.migrate(f"qdriver://{there}", qdriver.MigrateFlags(
        live=True, copy_storage="inc", dest_xml=dom.xml_desc().replace(str(top), str(moved_top)),
        timeout=0.001, bandwidth=64))
    assert report.disk_bytes < 8 << 20  # the top image's writes, not the 64 MiB disk
    assert report.paused_for_timeout
    info = json.loads(subprocess.run(["qemu-img", "info", "-U", "--output=json",
                                      str(moved_top)], capture_output=True, check=True,
                                     text=True).stdout)
    assert info["backing-filename"] == str(guest_image.disk)
    async with qdriver.Driver(there) as dest:
        moved = dest.lookup("inc")
        assert moved.state == qdriver.DomainState.RUNNING  # paused to finish, resumed there
        await anyio.to_thread.run_sync(wait_counting, moved.paths.console_log)
        await moved.destroy()

