"""UEFI as libvirt does it: the firmware chosen from QEMU's descriptors, a variable
store of the domain's own, the same QEMU arguments as libvirt's."""
from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import pytest

import qdriver
from qdriver.caps import firmware
from qdriver.console import DomainConsole
from tests.helpers.cli import cli_with_faults, run_cli
from tests.helpers.guest import GuestImage, domain_xml
from tests.helpers.libvirt_oracle import Libvirt, device_addresses, needs_libvirt

OVMF = Path("/usr/share/qemu/firmware/60-edk2-x86_64.json")
needs_ovmf = pytest.mark.skipif(not OVMF.exists(), reason="Debian's ovmf is not installed: "
                                "see .ci/setup")
GUID = "4e8f1c2a-6b1d-4f7e-9a3b-2c5d7e9f0a11"
"""The vendor GUID of the variables the guest writes (the kernel takes only the
specification's names under the global one).  Each is written once: efivarfs makes
a variable immutable, and busybox has no chattr."""


def _descriptor(where: Path, name: str, features: list[str], machines: list[str],
                interface: str = "uefi") -> None:
    where.mkdir(parents=True, exist_ok=True)
    (where / name).write_text(json.dumps({
        "interface-types": [interface],
        "mapping": {"device": "flash", "executable": {"filename": f"/fw/{name}.code"},
                    "nvram-template": {"filename": f"/fw/{name}.vars"}},
        "targets": [{"architecture": "x86_64", "machines": machines}],
        "features": features}))


@pytest.mark.no_qemu
@pytest.mark.parametrize("wanted, machine, chosen", [
    ({}, "pc-q35-7.2", "40-secure.json"),                        # file-name order
    ({"secure-boot": False}, "pc-q35-7.2", "60-plain.json"),
    ({"secure-boot": True, "enrolled-keys": False}, "pc-q35-7.2", "50-secure-empty.json"),
    ({}, "pc-i440fx-7.2", "60-plain.json"),                       # machine globs
    ({"secure-boot": True}, "pc-i440fx-7.2", None),
])
def test_firmware_is_chosen_as_libvirt_chooses(tmp_path: Path, wanted: dict[str, bool],
                                               machine: str, chosen: str | None) -> None:
    etc, share = tmp_path / "etc", tmp_path / "share"
    _descriptor(share, "40-secure.json", ["secure-boot", "enrolled-keys", "requires-smm"],
                ["pc-q35-*"])
    _descriptor(share, "50-secure-empty.json", ["secure-boot", "requires-smm"], ["pc-q35-*"])
    _descriptor(share, "60-plain.json", [], ["pc-q35-*", "pc-i440fx-*"])
    _descriptor(share, "10-bios.json", [], ["pc-q35-*"], interface="bios")
    (share / "20-broken.json").write_text("{")
    _descriptor(etc, "60-plain.json", [], ["pc-i440fx-*", "pc-q35-*"])  # /etc hides /usr
    if chosen is None:
        with pytest.raises(qdriver.OperationFailedError, match="Unable to find any firmware"):
            firmware.select("x86_64", machine, wanted, (etc, share))
        return
    got = firmware.select("x86_64", machine, wanted, (etc, share))
    assert got.descriptor == chosen and got.executable == f"/fw/{chosen}.code"
    assert got.secure == ("secure" in chosen)
    assert [p.parent.name for p in firmware.descriptors((etc, share))
            if p.name == "60-plain.json"] == ["etc"]


def _efi_xml(image: GuestImage, name: str, disk: Path | None, features: str = "",
             cmdline: str = "") -> str:
    xml = domain_xml(image, name, disk, cmdline=cmdline)
    xml = xml.replace(str(image.kernel), str(image.dir / "vmlinuz"))  # the EFI stub's kernel
    return xml.replace("<os>", f"<os firmware='efi'>{features}")


@needs_ovmf
@needs_libvirt
@pytest.mark.system_qemu
async def test_uefi_arguments_are_libvirts(driver: qdriver.Driver, guest_image: GuestImage,
                                           tmp_path: Path) -> None:
    """Devices and their addresses, flash images, machine options: as libvirt's."""
    lv = Libvirt(Path(tempfile.mkdtemp(prefix="qdfw-", dir="/tmp")))
    try:
        explicit = ("<loader readonly='yes' type='pflash'>/usr/share/OVMF/OVMF_CODE_4M.fd"
                    "</loader><nvram template='/usr/share/OVMF/OVMF_VARS_4M.fd'>"
                    f"{tmp_path}/fw2_VARS.fd</nvram>")
        for i, features in enumerate(
                ("", "<firmware><feature enabled='no' name='secure-boot'/></firmware>",
                 explicit)):
            xml = _efi_xml(guest_image, f"fw{i}", None, features).replace(
                "<devices>", "<devices><emulator>/usr/bin/qemu-system-x86_64</emulator>")
            if features == explicit:  # <loader> and <nvram> given: no firmware to choose
                xml = xml.replace("<os firmware='efi'>", "<os>")
            theirs = lv.call("to_native", xml).split()
            dom = await driver.define_xml(xml)
            ours = driver.native_argv(f"fw{i}")
            assert _flash(ours) == _flash(theirs)
            assert _machine_flags(ours) == _machine_flags(theirs)
            assert ("driver=cfi.pflash01,property=secure,value=on" in ours) == \
                ("driver=cfi.pflash01,property=secure,value=on" in theirs)
            assert device_addresses(ours) == device_addresses(theirs)
            await driver.undefine(dom, nvram=True)
    finally:
        lv.cleanup()


def _flash(argv: list[str]) -> list[tuple[str, bool]]:
    """The flash images and whether each is read-only."""
    nodes = [json.loads(a.strip("'")) for a in argv if "pflash" in a and a.lstrip("'")
             .startswith("{")]
    files = {n["node-name"]: n["filename"] for n in nodes if n.get("driver") == "file"}
    return [(Path(files[n["file"]]).name, n["read-only"])
            for n in nodes if n.get("driver") == "raw"]


def _machine_flags(argv: list[str]) -> set[str]:
    machine = argv[argv.index("-machine") + 1].split(",")
    return {o.split("=")[0] for o in machine if o.startswith(("smm", "pflash"))} | \
        {o for o in machine if o.startswith("smm")}


async def _shell(console: DomainConsole, command: str, marker: str) -> str:
    """Run ``command`` on the guest's console; the text up to ``marker``."""
    console.write(command + "\n")
    return (await console.wait_async(marker, 30)).group(0)


async def _variables(dom: qdriver.Domain) -> list[str]:
    """The test variables the guest finds in its store."""
    console = dom.console()
    said = await _shell(console, "mount -t efivarfs none /sys/firmware/efi/efivars 2>/dev/null;"
                        f" echo VAR''S= $(cd /sys/firmware/efi/efivars; ls | grep {GUID}) =END",
                        "VARS=[^=]*=END")  # (the typed line, echoed, reads VAR''S)
    console.close()
    return sorted(v.split("-")[0] for v in said[5:-4].split())


async def _set_variable(dom: qdriver.Domain, name: str) -> None:
    console = dom.console()
    # efivarfs takes a variable (attributes, then data) in one write: cat writes it so
    await _shell(console, "mount -t efivarfs none /sys/firmware/efi/efivars 2>/dev/null; "
                 "printf '\\007\\000\\000\\000qd' > /tmp/v; "
                 f"cat /tmp/v > /sys/firmware/efi/efivars/{name}-{GUID}; echo SET-$?", "SET-0")
    console.close()


async def _boot(dom: qdriver.Domain) -> None:
    console = dom.console()
    await dom.start()
    await console.wait_async("GUEST-READY", 120)
    console.close()


@needs_ovmf
async def test_a_uefi_guest_keeps_its_variables_and_snapshots_take_them_back(
        driver: qdriver.Driver, guest_image: GuestImage, tmp_path: Path,
        state_dir: Path) -> None:
    disk = tmp_path / "efi.qcow2"
    shutil.copyfile(guest_image.disk, disk)
    dom = await driver.define_xml(_efi_xml(
        guest_image, "efi", disk, "<firmware><feature enabled='no' name='secure-boot'/>"
        "</firmware>", cmdline="qd.shell=1 qd.quiet=1"))
    definition = dom.inactive_definition
    assert definition.loader is not None and \
        definition.loader.path == "/usr/share/OVMF/OVMF_CODE_4M.fd"
    nvram = Path(definition.nvram or "")
    assert nvram == state_dir / "nvram" / "efi_VARS.fd" and not nvram.exists()
    await _boot(dom)
    assert nvram.stat().st_mode & 0o777 == 0o600
    await dom.snapshot_create_xml("<domainsnapshot><name>i</name></domainsnapshot>")
    await _set_variable(dom, "QdOne")
    await dom.shutdown(timeout=60)
    await _boot(dom)  # the variable is in the domain's store, across QEMUs
    assert await _variables(dom) == ["QdOne"]
    await dom.revert_to_snapshot("i")  # internal: in the QEMU that runs
    assert await _variables(dom) == []
    await _set_variable(dom, "QdOne")  # into the store that QEMU holds open
    await dom.shutdown(timeout=60)
    await _boot(dom)  # the store went back in place: what the guest wrote since is in it
    assert await _variables(dom) == ["QdOne"]
    before = nvram.read_bytes()
    killed = cli_with_faults(state_dir, "snapshot-revert", "efi", "i",
                             fault="snapshot-revert:snapshot-load")
    assert killed.returncode != 0, killed.stderr
    await dom.recover()  # rolled back: the guest as it was, its store as it was
    assert nvram.read_bytes() == before
    assert not Path(f"{nvram}.before-revert").exists()
    assert await _variables(dom) == ["QdOne"]
    await dom.snapshot_create_xml(
        f"<domainsnapshot><name>e</name><memory snapshot='external' file='{tmp_path}/e.mem'/>"
        f"<disks><disk name='vda' snapshot='external'><source file='{tmp_path}/e.qcow2'/>"
        "</disk></disks></domainsnapshot>")
    await _set_variable(dom, "QdTwo")
    assert await _variables(dom) == ["QdOne", "QdTwo"]
    await dom.revert_to_snapshot("e")  # external: a new QEMU loads the memory file
    assert await _variables(dom) == ["QdOne"]
    await dom.shutdown(timeout=60)
    await _boot(dom)
    assert await _variables(dom) == ["QdOne"]
    copies = sorted(p.name for p in dom.paths.snapshots.glob("*.nvram"))
    assert copies == ["e.nvram", "i.nvram"]
    await dom.destroy()
    await dom.delete_snapshot("i", metadata_only=True)
    await dom.delete_snapshot("e", metadata_only=True)
    assert not list(dom.paths.snapshots.glob("*.nvram"))  # gone with their snapshots
    with pytest.raises(qdriver.OperationInvalidError, match="cannot undefine domain with nvram"):
        await driver.undefine(dom)
    run_cli(state_dir, "undefine", "efi", "--nvram")
    assert not nvram.exists()


async def test_uefi_on_a_machine_without_acpi_is_refused(
        driver: qdriver.Driver, guest_image: GuestImage) -> None:
    xml = _efi_xml(guest_image, "noacpi", None).replace("<features><acpi/></features>", "")
    with pytest.raises(qdriver.ConfigUnsupportedError, match="UEFI requires ACPI"):
        await driver.define_xml(xml)
    assert driver.list_domains() == []


