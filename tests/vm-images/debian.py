#!/usr/bin/env python3
"""Build a small Debian 12 guest disk from Debian packages: UEFI, cloud-init, sshd.

Output (in OUTDIR, default ``tests/vm-images/out/debian``): ``disk.qcow2``, a GPT
disk with an EFI system partition (systemd-boot, the kernel and its initrd)
and an ext4 root (``LABEL=debroot``) holding systemd, cloud-init (NoCloud
only), openssh-server, qemu-guest-agent and efibootmgr, made by mmdebstrap
from the host's Debian sources.  No mounts and no loop devices: the root file
system is written by ``mkfs.ext4 -d``, the FAT one by mtools, the partitions
put in place with ``dd``.  Rebuilt only when this script changes.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

PACKAGES = ["systemd-sysv", "udev", "linux-image-amd64", "initramfs-tools", "systemd-boot-efi",
            "cloud-init", "openssh-server", "qemu-guest-agent", "efibootmgr", "ifupdown",
            "isc-dhcp-client", "netbase", "iproute2", "sudo"]
SOURCES = Path("/etc/apt/sources.list.d/debian.sources")
"""The host's Debian sources (deb822): the guest's packages come from the same mirror."""
ESP_MIB, ROOT_MIB = 64, 2048
LOADER_ENTRY = """title Debian
linux /vmlinuz
initrd /initrd.img
options root=LABEL=debroot ro console=ttyS0 quiet systemd.show_status=false
"""
CLOUD_CFG = """datasource_list: [NoCloud, None]
"""


def run(*argv: str, stdin: bytes | None = None) -> None:
    subprocess.run(argv, check=True, input=stdin, stdout=subprocess.DEVNULL)


def sources() -> bytes:
    """The host's sources for bookworm (read from its apt configuration)."""
    if SOURCES.exists():
        return SOURCES.read_bytes()
    return b"\n".join(line.encode() for line in Path("/etc/apt/sources.list").read_text()
                      .splitlines() if line.startswith("deb ") and "bookworm" in line)


def bootstrap(root: Path) -> None:
    shutil.rmtree(root, ignore_errors=True)
    mode = "root" if os.geteuid() == 0 else "unshare"  # unprivileged: a user namespace
    run("mmdebstrap", f"--mode={mode}", "--variant=minbase", "--format=directory",
        f"--include={','.join(PACKAGES)}", "bookworm", str(root), "-", stdin=sources())
    (root / "etc/fstab").write_text("LABEL=debroot / ext4 defaults 0 1\n")
    (root / "etc/cloud/cloud.cfg.d/90_qdriver.cfg").write_text(CLOUD_CFG)
    (root / "etc/machine-id").write_text("")  # each boot of a copy makes its own
    for timer in ("apt-daily.timer", "apt-daily-upgrade.timer", "e2scrub_all.timer",
                  "fstrim.timer", "man-db.timer"):
        (root / "etc/systemd/system" / timer).unlink(missing_ok=True)
        (root / "etc/systemd/system" / timer).symlink_to("/dev/null")  # masked: quiet boot


def esp(root: Path, image: Path) -> None:
    """The EFI system partition: systemd-boot as the removable-media loader."""
    image.unlink(missing_ok=True)
    run("truncate", "-s", f"{ESP_MIB}M", str(image))
    run("mformat", "-i", str(image), "-F", "-v", "ESP", "::")
    run("mmd", "-i", str(image), "::/EFI", "::/EFI/BOOT", "::/loader", "::/loader/entries")
    kernel = max((root / "boot").glob("vmlinuz-*"))
    initrd = max((root / "boot").glob("initrd.img-*"))
    work = image.parent
    (work / "loader.conf").write_text("default debian.conf\ntimeout 0\n")
    (work / "debian.conf").write_text(LOADER_ENTRY)
    for src, dst in ((root / "usr/lib/systemd/boot/efi/systemd-bootx64.efi",
                      "::/EFI/BOOT/BOOTX64.EFI"), (kernel, "::/vmlinuz"),
                     (initrd, "::/initrd.img"), (work / "loader.conf", "::/loader/loader.conf"),
                     (work / "debian.conf", "::/loader/entries/debian.conf")):
        run("mcopy", "-i", str(image), str(src), dst)


def disk(root: Path, out: Path) -> None:
    work = out.parent
    esp(root, work / "esp.img")
    rootfs = work / "root.img"
    rootfs.unlink(missing_ok=True)
    run("mkfs.ext4", "-q", "-L", "debroot", "-d", str(root), str(rootfs), f"{ROOT_MIB}M")
    raw = work / "disk.raw"
    raw.unlink(missing_ok=True)
    run("truncate", "-s", f"{1 + ESP_MIB + ROOT_MIB + 1}M", str(raw))
    table = (f"label: gpt\nstart=2048, size={ESP_MIB * 2048}, "
             "type=C12A7328-F81F-11D2-BA4B-00A0C93EC93B, name=ESP\n"
             f"start={2048 + ESP_MIB * 2048}, size={ROOT_MIB * 2048}, "
             "type=0FC63DAF-8483-4772-8E79-3D69D8477DE4, name=root\n")
    run("sfdisk", "-q", str(raw), stdin=table.encode())
    for part, at in ((work / "esp.img", 1), (rootfs, 1 + ESP_MIB)):
        run("dd", f"if={part}", f"of={raw}", "bs=1M", f"seek={at}", "conv=notrunc,sparse",
            "status=none")
    run("qemu-img", "convert", "-f", "raw", "-O", "qcow2", str(raw), str(out) + ".tmp")
    Path(str(out) + ".tmp").replace(out)
    for leftover in (raw, rootfs, work / "esp.img", work / "loader.conf", work / "debian.conf"):
        leftover.unlink(missing_ok=True)


def main() -> None:
    out = Path(sys.argv[1] if len(sys.argv) > 1 else
               Path(__file__).with_name("out") / "debian").resolve()
    out.mkdir(parents=True, exist_ok=True)
    stamp = hashlib.sha256(Path(__file__).read_bytes()).hexdigest()
    stamp_file = out / ".stamp"
    if stamp_file.exists() and stamp_file.read_text() == stamp and (out / "disk.qcow2").exists():
        print(out)
        return
    root = out / "root"
    bootstrap(root)
    disk(root, out / "disk.qcow2")
    shutil.rmtree(root)
    stamp_file.write_text(stamp)
    print(out)


if __name__ == "__main__":
    main()
