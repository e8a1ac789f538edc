"""QEMU as an unprivileged user when qdriver runs as root; host secrets are no disk."""
from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Iterator

import pytest

import qdriver
from qdriver.blockdev.nodes import image_file
from qdriver.launch.start import check_files
from qdriver.runas import LaunchPolicy, QemuUser, access_problem, secret_problem

from .helpers import GuestImage, domain_xml, qemu_pids, run_cli, wait_console

USER = "nobody"


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A directory the QEMU user can enter (pytest's own are private to root)."""
    if os.geteuid() != 0:
        pytest.skip("running QEMU as another user needs root")
    path = Path(tempfile.mkdtemp(prefix="qdriver-runas-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def qemu_uid(dom: qdriver.Domain) -> int:
    rec = dom.runtime.peek()
    assert rec is not None
    status = Path(f"/proc/{rec.pid}/status").read_text()
    return int(next(ln for ln in status.splitlines() if ln.startswith("Uid:")).split()[1])


async def test_qemu_runs_as_the_configured_user(guest_image: GuestImage, shared_dir: Path,
                                                state_dir: Path) -> None:
    nobody = pwd.getpwnam(USER)
    disk = shared_dir / "vda.qcow2"
    shutil.copyfile(guest_image.disk, disk)
    os.chown(disk, nobody.pw_uid, nobody.pw_gid)
    drv = qdriver.Driver(state_dir, qemu_user=USER)
    dom = await drv.define_xml(domain_xml(guest_image, "ru", disk))
    await dom.start()
    try:
        assert qemu_uid(dom) == nobody.pw_uid
        await wait_console(dom, "COUNTER 3")
        # a new overlay is handed over: QEMU, as its user, opens it and writes to it
        await dom.snapshot_create_xml(
            f"<domainsnapshot><name>s1</name><disks><disk name='vda' snapshot='external'>"
            f"<source file='{shared_dir}/s1.qcow2'/></disk></disks></domainsnapshot>",
            disk_only=True)
        assert (shared_dir / "s1.qcow2").stat().st_uid == nobody.pw_uid
        after = dom.paths.console_log.stat().st_size
        await wait_console(dom, "COUNTER", after=after)
        assert qemu_uid(dom) == nobody.pw_uid
    finally:
        await dom.destroy()


@pytest.mark.no_qemu
async def test_an_image_the_user_cannot_open_is_refused(guest_image: GuestImage,
                                                        shared_dir: Path,
                                                        state_dir: Path) -> None:
    private = shared_dir / "private"
    private.mkdir(mode=0o700)
    disk = private / "vda.qcow2"
    shutil.copyfile(guest_image.disk, disk)
    drv = qdriver.Driver(state_dir, qemu_user=USER)
    dom = await drv.define_xml(domain_xml(guest_image, "ru", disk))
    with pytest.raises(qdriver.SystemError_, match=f"user '{USER}' cannot enter directory "
                                                   f"'{private}'"):
        await dom.start()
    private.chmod(0o755)
    with pytest.raises(qdriver.SystemError_, match=f"user '{USER}' cannot read and write"):
        await dom.start()
    assert not dom.is_active


def test_host_secrets_are_refused_unless_allowed(guest_image: GuestImage, state_dir: Path,
                                                 tmp_path: Path) -> None:
    link = tmp_path / "innocent.img"
    link.symlink_to("/etc/shadow")
    xml = tmp_path / "secret.xml"
    xml.write_text(domain_xml(guest_image, "sec", link, disk_format="raw"))
    run_cli(state_dir, "define", str(xml))
    result = run_cli(state_dir, "start", "sec", check=False)
    err = result.stderr.decode()
    assert result.returncode == 1 and "refusing disk 'vda'" in err
    assert "resolves to '/etc/shadow', a host secret" in err
    assert run_cli(state_dir, "domstate", "sec").stdout.split() == [b"shut", b"off"]
    # explicitly allowed, the check passes (no QEMU is given /etc/shadow here)
    definition = qdriver.Driver(state_dir).lookup("sec").definition
    check_files(definition, LaunchPolicy(allow_host_secrets=True))
    with pytest.raises(qdriver.InvalidArgError, match="host secret"):
        check_files(definition, LaunchPolicy())


@pytest.mark.no_qemu
def test_access_rules_follow_owner_group_and_other_bits(shared_dir: Path) -> None:
    user = QemuUser("q", 4242, 4343, frozenset({4343}))
    f = shared_dir / "img"
    f.write_bytes(b"")
    for mode, owner, group, write, ok in [
            (0o600, 4242, 0, True, True), (0o640, 0, 4343, False, True),
            (0o640, 0, 4343, True, False), (0o604, 0, 0, False, True),
            (0o600, 0, 0, False, False)]:
        f.chmod(mode)
        os.chown(f, owner, group)
        assert (access_problem(user, str(f), write) is None) == ok, (oct(mode), owner, group)
    assert secret_problem("/etc/shadow") and secret_problem("/etc/ssh/ssh_host_rsa_key")
    assert secret_problem(str(f)) is None


def fds_of(pid: int) -> set[str]:
    out = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            out.add(os.readlink(fd))
        except OSError:
            pass
    return out


@pytest.mark.parametrize("backing", [
    'json:{"driver":"raw","file":{"driver":"file","filename":"/etc/shadow"}}',
    "nbd://127.0.0.1:10809/export"], ids=["json", "protocol"])
async def test_a_backing_name_that_is_not_a_plain_file_is_refused(
        driver: qdriver.Driver, guest_image: GuestImage, tmp_path: Path, state_dir: Path,
        backing: str) -> None:
    """A header is data: QEMU must never be left to open what it names."""
    disk = tmp_path / "evil.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(disk), "64M"], check=True)
    subprocess.run(["qemu-img", "rebase", "-q", "-u", "-b", backing, "-F", "raw", str(disk)],
                   check=True)
    dom = await driver.define_xml(domain_xml(guest_image, "evil", disk))
    with pytest.raises(qdriver.InvalidArgError, match="which is not a plain file"):
        await dom.start(paused=True)
    assert not dom.is_active and qemu_pids(state_dir) == []


async def test_a_hard_link_to_a_host_secret_is_refused(
        driver: qdriver.Driver, guest_image: GuestImage, tmp_path: Path,
        state_dir: Path) -> None:
    link = tmp_path / "innocent.img"
    try:
        os.link("/etc/shadow", link)
    except OSError as e:
        pytest.skip(f"cannot hard-link /etc/shadow here: {e}")
    dom = await driver.define_xml(domain_xml(guest_image, "hl", link, disk_format="raw"))
    with pytest.raises(qdriver.InvalidArgError, match="same file as '/etc/shadow'"):
        await dom.start(paused=True)
    assert not dom.is_active and qemu_pids(state_dir) == []


async def test_a_backing_chain_is_opened_layer_by_layer(
        driver: qdriver.Driver, guest_image: GuestImage, tmp_path: Path) -> None:
    """Each layer qdriver read is its own read-only node; QEMU holds those files
    and nothing else of the chain."""
    base, mid, top = (tmp_path / f"{n}.qcow2" for n in ("base", "mid", "top"))
    shutil.copyfile(guest_image.disk, base)
    for lower, upper in ((base, mid), (mid, top)):
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", lower.name, "-F",
                        "qcow2", str(upper)], check=True, cwd=tmp_path)  # relative names
    dom = await driver.define_xml(domain_xml(guest_image, "layers", top))
    await dom.start()
    try:
        await wait_console(dom, "COUNTER 2")
        async with dom.monitor() as mon:
            nodes = {n["node-name"]: n for n in await mon.execute(
                "query-named-block-nodes", {"flat": True}) if n["drv"] == "qcow2"}
        by_file = {image_file(n): (name, n["ro"]) for name, n in nodes.items()}
        assert by_file[str(top)] == ("fmt-vda", False)
        for layer in (mid, base):
            name, ro = by_file[str(layer)]
            assert name.startswith("ov-vda-") and ro, (layer, name, ro)
        rec = dom.runtime.peek()
        assert rec is not None
        held = fds_of(rec.pid)
        assert {str(top), str(mid), str(base)} <= held and "/etc/shadow" not in held
    finally:
        await dom.destroy()


@pytest.fixture
def script_emulator(shared_dir: Path) -> tuple[Path, Path]:
    """A wrapper emulator that records who runs it, then runs the real QEMU."""
    log = shared_dir / "runs.log"
    log.write_text("")
    log.chmod(0o666)
    script = shared_dir / "qemu-wrapper"
    script.write_text(f"#!/bin/sh\nid -u >> {log}\nexec {shutil.which('qemu-system-x86_64')} "
                      '"$@"\n')
    script.chmod(0o755)
    return script, log


def with_emulator(xml: str, program: Path) -> str:
    return xml.replace("<devices>", f"<devices><emulator>{program}</emulator>", 1)


async def test_a_script_emulator_never_runs_as_root_with_a_qemu_user(
        guest_image: GuestImage, shared_dir: Path, state_dir: Path,
        script_emulator: tuple[Path, Path]) -> None:
    """Every run of the emulator, the probes at define and the QEMU itself, starts
    as the QEMU user: the ids change before the exec."""
    script, log = script_emulator
    nobody = pwd.getpwnam(USER)
    disk = shared_dir / "vda.qcow2"
    shutil.copyfile(guest_image.disk, disk)
    os.chown(disk, nobody.pw_uid, nobody.pw_gid)
    drv = qdriver.Driver(state_dir, qemu_user=USER)
    dom = await drv.define_xml(with_emulator(domain_xml(guest_image, "emu", disk), script))
    assert drv.native_argv("emu")[0] == str(script)
    await dom.start()
    try:
        assert qemu_uid(dom) == nobody.pw_uid
        await wait_console(dom, "COUNTER 2")
        assert qemu_pids(state_dir), "the command line no longer names the domain's files"
    finally:
        await dom.destroy()
    runs = log.read_text().split()
    assert len(runs) >= 2 and set(runs) == {str(nobody.pw_uid)}, runs


@pytest.mark.no_qemu
@pytest.mark.parametrize("change, why", [
    ("mode", "may be changed by other users"), ("owner", "owned by uid"),
    ("answer", "does not answer as QEMU")])
async def test_an_emulator_qdriver_will_not_run_is_refused_at_define(
        guest_image: GuestImage, state_dir: Path, script_emulator: tuple[Path, Path],
        change: str, why: str) -> None:
    script, log = script_emulator
    if change == "mode":
        script.chmod(0o777)
    elif change == "owner":
        os.chown(script, pwd.getpwnam(USER).pw_uid, 0)
    else:
        script.write_text(f"#!/bin/sh\nid -u >> {log}\necho hello\n")
    drv = qdriver.Driver(state_dir)
    with pytest.raises(qdriver.QDriverError, match=why):
        await drv.define_xml(with_emulator(domain_xml(guest_image, "bad", None), script))
    assert drv.list_domains() == []
    if change != "answer":
        assert log.read_text() == "", "the emulator ran before it was checked"


async def test_a_template_made_by_the_qemu_user_is_handed_back_and_sealed(
        guest_image: GuestImage, shared_dir: Path, state_dir: Path) -> None:
    """QEMU, as its user, created the guest's RAM file; once it is a template it is
    root's, the QEMU user's group may read it, and only a QEMU that cannot open
    it read-only (before 8.2) may still open it for writing."""
    from qdriver.caps.qemucaps import ram_file_opens_read_only
    nobody = pwd.getpwnam(USER)
    disk = shared_dir / "vda.qcow2"
    shutil.copyfile(guest_image.disk, disk)
    os.chown(disk, nobody.pw_uid, nobody.pw_gid)
    drv = qdriver.Driver(state_dir, qemu_user=USER)
    dom = await drv.define_xml(domain_xml(
        guest_image, "rt", disk,
        memory_backing="<memoryBacking><source type='file'/><access mode='shared'/>"
                       "</memoryBacking>"))
    await dom.start()
    try:
        await wait_console(dom, "COUNTER 2")
        await dom.snapshot_create_xml(
            f"<domainsnapshot><name>t</name><memory snapshot='external' "
            f"file='{shared_dir}/t.mem'/><disks><disk name='vda' snapshot='external'><source "
            f"file='{shared_dir}/vda.t'/></disk></disks></domainsnapshot>", template=True)
        st = (shared_dir / "t.mem.ram").stat()
        read_only = ram_file_opens_read_only(shutil.which("qemu-system-x86_64") or "",
                                         QemuUser.resolve(USER))
        assert (st.st_uid, st.st_gid) == (0, nobody.pw_gid)
        assert st.st_mode & 0o777 == (0o440 if read_only else 0o660)
        assert qemu_uid(dom) == nobody.pw_uid  # the clone, as the QEMU user
        await wait_console(dom, "COUNTER", after=dom.paths.console_log.stat().st_size)
        for _ in range(2):  # the second takes over the QEMU the first started ahead
            await dom.revert_to_snapshot("t")
            assert qemu_uid(dom) == nobody.pw_uid
            await wait_console(dom, "COUNTER", after=dom.paths.console_log.stat().st_size)
        rec = dom.runtime.peek()
        assert rec is not None and rec.slot is not None, "the revert started its own QEMU"
        assert dom.paths.sockets.stat().st_uid == nobody.pw_uid
    finally:
        await dom.destroy()
    assert qemu_pids(state_dir) == [] and not dom.paths.standby.exists()


@pytest.mark.no_qemu
def test_a_template_ram_file_that_is_a_link_or_a_host_secret_is_refused(
        tmp_path: Path) -> None:
    from qdriver.memory.template import seal
    (tmp_path / "ram").write_bytes(b"\0" * 4096)
    (tmp_path / "link").symlink_to(tmp_path / "ram")
    with pytest.raises(qdriver.OperationFailedError, match="template RAM file '.*link'"):
        seal(str(tmp_path / "link"), 4096, None, True)
    with pytest.raises(qdriver.OperationFailedError, match="not a regular file of 8192"):
        seal(str(tmp_path / "ram"), 8192, None, True)
    seal(str(tmp_path / "ram"), 4096, None, True)
    assert (tmp_path / "ram").stat().st_mode & 0o777 == 0o400
    shadow = tmp_path / "shadow"
    try:
        os.link("/etc/shadow", shadow)
    except OSError as e:
        pytest.skip(f"cannot hard-link /etc/shadow here: {e}")
    with pytest.raises(qdriver.InvalidArgError, match="same file as '/etc/shadow'"):
        seal(str(shadow), shadow.stat().st_size, None, True)
