"""``qdriver.libvirt``: libvirt-python's API on qdriver, checked against libvirt itself."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

import qdriver.libvirt as libvirt
from qdriver.libvirt.constants import ALL
from tests.helpers.guest import GuestImage, domain_xml
from tests.helpers.libvirt_oracle import SYSTEM_PATH, SYSTEM_PYTHON, needs_libvirt

TOUR = Path(__file__).parent / "scripts" / "libvirt_tour.py"


def _tour(python: str, module: str, uri: str, image: GuestImage, work: Path,
          env: dict[str, str]) -> subprocess.Popen[str]:
    work.mkdir(parents=True, exist_ok=True)
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", str(image.disk), "-F",
                    "qcow2", str(work / "disk.qcow2")], check=True)
    return subprocess.Popen([python, str(TOUR), module, uri, str(image.kernel),
                             str(image.initrd), str(work / "disk.qcow2"), str(work)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


@needs_libvirt
@pytest.mark.system_qemu
def test_one_libvirt_program_prints_the_same_on_libvirt_and_on_qdriver(
        guest_image: GuestImage, tmp_path: Path) -> None:
    # libvirt's QMP sockets live under its root: a short one (a socket path has 108 bytes)
    root = Path(tempfile.mkdtemp(prefix="qdlv-", dir="/tmp"))
    try:
        _compare_tours(guest_image, tmp_path, root)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _compare_tours(guest_image: GuestImage, tmp_path: Path, root: Path) -> None:
    (root / "etc").mkdir(parents=True)
    (root / "etc" / "qemu.conf").write_text('user = "root"\ngroup = "root"\n'
                                             'stdio_handler = "file"\n')
    # the same paths in both runs' output: each run works in a directory of that name
    lv_work, qd_work = tmp_path / "lv" / "work", tmp_path / "qd" / "work"
    runs = [_tour(SYSTEM_PYTHON, "libvirt", f"qemu:///embed?root={root}", guest_image,
                  lv_work, os.environ | {"PATH": SYSTEM_PATH}),
            _tour(sys.executable, "qdriver.libvirt", f"qdriver://{tmp_path / 'qd' / 'state'}",
                  guest_image, qd_work, dict(os.environ))]
    outputs = []
    for run in runs:
        out, err = run.communicate(timeout=300)
        assert run.returncode == 0, err
        outputs.append(out)
    lv, qd = outputs[0].replace(str(lv_work), "WORK"), outputs[1].replace(str(qd_work), "WORK")
    assert qd.splitlines() == lv.splitlines()
    events = [line for line in qd.splitlines() if line.startswith("event ")]
    assert len(events) == 21 and "event tour STOPPED 4" in events  # the run went all the way


@pytest.mark.no_qemu
@needs_libvirt
def test_constants_have_libvirts_names_and_values() -> None:
    dump = subprocess.run(
        [SYSTEM_PYTHON, "-c", "import libvirt, json; print(json.dumps({k: getattr(libvirt, k) "
         "for k in dir(libvirt) if k.startswith('VIR_') and isinstance(getattr(libvirt, k), "
         "int)}))"], capture_output=True, text=True, check=True).stdout
    theirs = json.loads(dump)
    newer = {"VIR_DOMAIN_PAUSED_API_ERROR"}  # added after libvirt 9.0
    assert {k: v for k, v in ALL.items() if k not in newer} == \
        {k: theirs.get(k) for k in ALL if k not in newer}
    assert libvirt.VIR_DOMAIN_EVENT_STOPPED_DESTROYED == 1


@pytest.mark.no_qemu
def test_what_qdriver_does_not_serve_is_no_support_naming_the_call(tmp_path: Path) -> None:
    conn = libvirt.open(f"qdriver://{tmp_path}")
    try:
        with pytest.raises(libvirt.libvirtError) as e:
            conn.migrate3()
        assert e.value.get_error_code() == libvirt.VIR_ERR_NO_SUPPORT
        assert "virConnect.migrate3" in e.value.get_error_message()
        with pytest.raises(libvirt.libvirtError) as e:
            conn.lookupByName("nothing")
        assert e.value.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN
        assert e.value.get_error_message() == \
            "Domain not found: no domain with matching name 'nothing'"
        assert conn.listAllDomains() == [] and conn.listDefinedDomains() == []
    finally:
        conn.close()
    with pytest.raises(libvirt.libvirtError) as e:
        libvirt.open("qemu:///system")
    assert e.value.get_error_code() == libvirt.VIR_ERR_NO_SUPPORT


def test_unsupported_flags_are_refused_as_libvirt_refuses_them(tmp_path: Path,
                                                               guest_image: GuestImage) -> None:
    conn = libvirt.open(f"qdriver://{tmp_path / 'state'}")
    try:
        dom = conn.defineXML(domain_xml(guest_image, "flags", None))
        with pytest.raises(libvirt.libvirtError) as e:
            dom.createWithFlags(libvirt.VIR_DOMAIN_START_AUTODESTROY)
        assert e.value.get_error_code() == libvirt.VIR_ERR_INVALID_ARG
        assert "unsupported flags (0x2) in function virDomainCreateWithFlags" in str(e.value)
        assert dom.state() == [libvirt.VIR_DOMAIN_SHUTOFF, libvirt.VIR_DOMAIN_SHUTOFF_UNKNOWN]
        assert dom.ID() == -1 and dom.isActive() == 0 and dom.isPersistent() == 1
        assert conn.lookupByUUIDString(dom.UUIDString()).name() == "flags"
        dom.undefine()
    finally:
        conn.close()
