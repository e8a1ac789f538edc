"""save / restore / managedsave on the real guest: the guest goes on from the save point."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

import qdriver
from qdriver import DomainState
from qdriver.memory.header import read_header

from .helpers import (
    MakeDomain,
    assert_resumes_from,
    assert_save_image,
    console_offset,
    counters_after,
    disk_counter,
    disk_source,
    last_counter,
    qemu_pids,
    run_cli,
    sha256,
    wait_console,
)


async def test_save_then_restore_goes_on_from_the_save_point(booted: MakeDomain, state_dir: Path,
                                                             tmp_path: Path) -> None:
    dom = await booted()
    vda = disk_source(dom)
    save = tmp_path / "g.save"
    r = run_cli(state_dir, "save", "guest", str(save))
    assert f"Domain 'guest' saved to {save}" in r.stdout.decode()
    assert "domain guest: memory" in r.stderr.decode()  # progress
    assert dom.state_reason() == (DomainState.SHUTOFF, "saved")
    assert_save_image(save)
    assert read_header(save).was_running
    at = disk_counter(vda)
    offset = console_offset(dom)
    r = run_cli(state_dir, "restore", str(save))
    assert f"Domain restored from {save}" in r.stdout.decode()
    assert dom.state == DomainState.RUNNING
    assert_resumes_from(await counters_after(dom, offset, 4), at, at + 10)
    assert save.exists(), "restore keeps the file, as virsh does"
    await dom.destroy()


async def test_save_paused_restores_paused(booted: MakeDomain, tmp_path: Path) -> None:
    dom = await booted()
    save = tmp_path / "p.save"
    await dom.save(save, paused=True)
    assert not read_header(save).was_running
    await dom.restore_from(save)
    assert dom.state == DomainState.PAUSED
    frozen = last_counter(dom)
    await dom.resume()
    await wait_console(dom, f"COUNTER {frozen + 2}")
    await dom.destroy()


async def test_managed_save_and_start(booted: MakeDomain, state_dir: Path) -> None:
    dom = await booted()
    run_cli(state_dir, "managedsave", "guest")
    assert "Managed save:   yes" in run_cli(state_dir, "dominfo", "guest").stdout.decode()
    r = run_cli(state_dir, "undefine", "guest", check=False)
    assert "Refusing to undefine while domain managed save image exists" in r.stderr.decode()
    at = disk_counter(disk_source(dom))
    offset = console_offset(dom)
    run_cli(state_dir, "start", "guest")
    assert dom.state == DomainState.RUNNING and not dom.has_managed_save()
    assert_resumes_from(await counters_after(dom, offset, 4), at, at + 10)
    text = dom.paths.console_log.read_text(errors="replace")[offset:]
    assert "GUEST-READY" not in text, "the guest booted instead of resuming"
    await dom.destroy()
    # --force-boot discards a managed save and boots
    await dom.start()
    await wait_console(dom, "COUNTER 3", after=offset)
    await dom.managed_save()
    offset = console_offset(dom)
    run_cli(state_dir, "start", "guest", "--force-boot")
    assert not dom.has_managed_save()
    await wait_console(dom, "GUEST-READY", after=offset)
    await dom.destroy()


async def test_restore_defines_a_domain_it_does_not_know(booted: MakeDomain,
                                                         driver: qdriver.Driver, state_dir: Path,
                                                         tmp_path: Path) -> None:
    dom = await booted()
    save = tmp_path / "u.save"
    await dom.save(save)
    xml = run_cli(state_dir, "save-image-dumpxml", str(save)).stdout.decode()
    assert f"<uuid>{dom.uuid}</uuid>" in xml
    await driver.undefine(dom)
    restored = await driver.restore(save)
    assert restored.uuid == dom.uuid and restored.state == DomainState.RUNNING
    await restored.destroy()


async def test_save_image_define_replaces_the_xml(booted: MakeDomain, state_dir: Path,
                                                  tmp_path: Path) -> None:
    dom = await booted()
    save = tmp_path / "d.save"
    await dom.save(save)
    xml = read_header(save).domain_xml
    edited = tmp_path / "edited.xml"
    edited.write_text(xml.replace("<on_poweroff>destroy</on_poweroff>",
                                  "<on_poweroff>destroy</on_poweroff><description>edited"
                                  "</description>"))
    r = run_cli(state_dir, "save-image-define", str(save), str(edited), "--paused")
    assert f"State file {save} updated." in r.stdout.decode()
    header = read_header(save)
    assert "<description>edited</description>" in header.domain_xml and not header.was_running
    assert_save_image(save)
    await dom.restore_from(save)
    assert dom.state == DomainState.PAUSED
    other = tmp_path / "other.xml"
    other.write_text(xml.replace(f"<uuid>{dom.uuid}</uuid>",
                                 "<uuid>00000000-0000-0000-0000-000000000001</uuid>"))
    r = run_cli(state_dir, "save-image-define", str(save), str(other), check=False)
    assert r.returncode == 1 and "the save file holds 'guest'" in r.stderr.decode()
    await dom.destroy()


async def test_bad_restores_change_nothing(booted: MakeDomain, state_dir: Path,
                                           tmp_path: Path) -> None:
    dom = await booted()
    save = tmp_path / "b.save"
    await dom.save(save)
    with open(save, "r+b") as f:
        f.write(b"LibvirtQemudPart")
    r = run_cli(state_dir, "restore", str(save), check=False)
    assert r.returncode == 1 and "is incomplete (LibvirtQemudPart)" in r.stderr.decode()
    assert dom.state == DomainState.SHUTOFF
    with open(save, "r+b") as f:
        f.write(b"LibvirtQemudSave")
    await dom.start()
    with pytest.raises(qdriver.OperationInvalidError, match="already active"):
        await dom.restore_from(save)
    with pytest.raises(qdriver.InvalidArgError, match="mutually exclusive"):
        await dom.save(tmp_path / "x.save", running=True, paused=True)
    assert not (tmp_path / "x.save").exists()
    await dom.destroy()


async def test_a_save_file_cannot_choose_the_emulator(booted: MakeDomain, driver: qdriver.Driver,
                                                      state_dir: Path,
                                                      tmp_path: Path) -> None:
    """The XML in a save file is data: for a domain defined here, a restore never
    runs another emulator than the domain's, and leaves nothing behind."""
    import shutil

    from qdriver.memory.header import rewrite_xml
    dom = await booted()
    path = tmp_path / "g.save"
    await dom.save(path)
    marker = tmp_path / "ran"
    script = tmp_path / "evil-qemu"
    script.write_text(f"#!/bin/sh\ntouch {marker}\nexec {shutil.which('qemu-system-x86_64')} "
                      '"$@"\n')
    script.chmod(0o755)
    xml = read_header(path).domain_xml
    rewrite_xml(path, xml.replace("<devices>", f"<devices><emulator>{script}</emulator>", 1))
    r = run_cli(state_dir, "restore", str(path), check=False)
    assert r.returncode == 1 and "names emulator" in r.stderr.decode(), r.stderr.decode()
    assert not marker.exists() and not dom.is_active and qemu_pids(state_dir) == []
    assert dom.inactive_definition.emulator is None


async def test_a_failed_restore_does_not_keep_the_domain_it_defined(
        booted: MakeDomain, driver: qdriver.Driver, state_dir: Path, tmp_path: Path) -> None:
    dom = await booted(name="gone")
    path = tmp_path / "g.save"
    await dom.save(path)
    disk = disk_source(dom)
    await driver.undefine(dom)
    Path(disk).unlink()  # the restore fails: its disk is missing
    r = run_cli(state_dir, "restore", str(path), check=False)
    assert r.returncode == 1 and "No such file" in r.stderr.decode(), r.stderr.decode()
    assert run_cli(state_dir, "list", "--all", "--name").stdout.split() == []
    assert qemu_pids(state_dir) == []


@pytest.mark.no_qemu
def test_restore_from_a_fifo_is_refused_at_once(state_dir: Path, tmp_path: Path) -> None:
    """A FIFO nobody writes to would block the restore forever: only files are read."""
    import os
    fifo = tmp_path / "pipe.save"
    os.mkfifo(fifo)
    r = run_cli(state_dir, "restore", str(fifo), check=False, timeout=30)
    assert r.returncode == 1 and f"memory file '{fifo}' is not a regular file" in \
        r.stderr.decode(), r.stderr.decode()


async def test_long_operations_show_progress_and_a_final_line(booted: MakeDomain, state_dir: Path,
                                                             tmp_path: Path) -> None:
    """virsh's --verbose is accepted; an internal snapshot and its revert, silent
    before, say how long they took; a save ends with its 100 % line."""
    await booted()
    r = run_cli(state_dir, "snapshot-create-as", "guest", "i1")
    assert "snapshot guest: snapshot-save done in " in r.stderr.decode(), r.stderr.decode()
    r = run_cli(state_dir, "snapshot-revert", "guest", "i1")
    assert "snapshot-load done in " in r.stderr.decode(), r.stderr.decode()
    save = tmp_path / "v.save"
    r = run_cli(state_dir, "save", "guest", str(save), "--verbose")
    lines = r.stderr.decode().splitlines()
    assert lines and "memory 100%" in lines[-1], lines
    r = run_cli(state_dir, "restore", str(save), "--verbose")
    assert "load 100%" in r.stderr.decode().splitlines()[-1], r.stderr.decode()
    run_cli(state_dir, "destroy", "guest")


async def test_restore_with_another_xml_runs_on_other_disks(booted: MakeDomain, state_dir: Path,
                                                            tmp_path: Path) -> None:
    """``restore --xml``: the saved guest on a copy of its disk, the original untouched;
    XML for other hardware is refused in libvirt's words and nothing is defined."""
    dom = await booted()
    vda = Path(disk_source(dom))
    save = tmp_path / "g.save"
    await dom.save(save)
    at = disk_counter(vda)
    copy = tmp_path / "copy.qcow2"
    shutil.copyfile(vda, copy)
    original = sha256(vda)
    xml = tmp_path / "copy.xml"
    xml.write_text(dom.xml_desc(inactive=True).replace(f"file='{vda}'", f"file='{copy}'"))
    bigger = tmp_path / "bigger.xml"
    bigger.write_text(xml.read_text().replace("<memory unit='MiB'>256</memory>",
                                              "<memory unit='MiB'>512</memory>"))
    assert bigger.read_text() != xml.read_text()

    other = tmp_path / "other-state"  # where the domain is not defined yet
    r = run_cli(other, "restore", str(save), "--xml", str(bigger), check=False)
    assert r.returncode == 1
    assert "Target domain max memory (KiB) 524288 does not match source 262144" in \
        r.stderr.decode()
    assert run_cli(other, "list", "--all", "--name").stdout.decode().strip() == ""

    offset = console_offset(dom)
    run_cli(state_dir, "restore", str(save), "--xml", str(xml))
    assert disk_source(dom) == str(copy)
    assert_resumes_from(await counters_after(dom, offset, 4), at, at + 10)
    await dom.destroy()
    assert sha256(vda) == original, "the image the file's XML names was written"
    assert disk_counter(copy) > at
