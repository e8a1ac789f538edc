#!/usr/bin/env python3
"""Build the tiny qdriver test guest from Debian packages only.

Output (in OUTDIR, default ``tests/vm-images/out``):

* ``vmlinux``    the Debian cloud kernel, uncompressed (boots through PVH, which
                 skips the decompressor: that is what makes it quick on TCG)
* ``vmlinuz``    the same kernel as shipped (bzImage)
* ``initrd.img`` busybox-static initramfs whose ``/init`` runs the workload
* ``disk.qcow2`` 64 MiB ext4 data disk (made with ``mkfs.ext4 -d``, no mounts)

No root mounts, no loop devices, no mknod: the cpio archive is written here
directly, ``/dev/console`` included.  Downloads and extraction are cached in
``OUTDIR/.cache``; the initrd and the disk are rebuilt only when missing or
when this script changes.

Guest kernel command-line options read by ``/init``:

  qd.disk=none|vdX   no data disk (counter in tmpfs) or another disk (default vda)
  qd.fill=MIB        fill MIB of tmpfs with random data before GUEST-READY
  qd.fillmode=repeat fill by repeating 64 MiB of random data (faster)
  qd.interval=SEC    counter period (default 0.1)
  qd.quiet=1         do not print COUNTER lines
  qd.noacpi=1        ignore the ACPI power button (tests shutdown escalation)
  qd.halt=1          power off right after GUEST-READY
  qd.noagent=1       leave the guest agent port unanswered
  qd.shell=1         run each line typed on the serial console as a shell command
  qd.busy=1          spin a busy loop beside the counter (a neighbour that loads the host)
  qd.ip=ADDR/LEN     give eth0 (the first NIC, virtio-net) that address
  qd.dhcp=1          ask for eth0's address by DHCP (busybox udhcpc), print GUEST-IP ADDR
  qd.ping=ADDR       ping ADDR until it answers, then print GUEST-PING-OK ADDR
  qd.hello=PORT      send GUEST-HELLO to TCP PORT of the default gateway until it is
                     taken, then print GUEST-HELLO-SENT

A virtio-serial port named org.qemu.guest_agent.0, when the domain has one, is
served by a minimal guest agent in /init: guest-sync, guest-fsfreeze-freeze and
guest-fsfreeze-thaw (busybox fsfreeze on /mnt), printing GUEST-FSFREEZE and
GUEST-FSTHAW on the console, guest-network-get-interfaces (IPv4), guest-shutdown
(mode reboot or powerdown), guest-get-host-name, guest-get-osinfo and
guest-get-timezone.
"""
from __future__ import annotations

import glob
import gzip
import hashlib
import os
import re
import shutil
import stat
import struct
import subprocess
import sys
import tempfile
from pathlib import Path

KERNEL_FLAVOUR = os.environ.get("KERNEL_FLAVOUR", "cloud-amd64")
DISK_MB = int(os.environ.get("DISK_MB", "64"))
WANTED_MODULES = ["virtio_pci", "virtio_mmio", "virtio_blk", "virtio_console", "button",
                  "evdev", "virtio_net", "pvpanic_mmio", "efivarfs", "virtiofs"]

INIT = r"""#!/bin/sh
/bin/busybox --install -s /bin
export PATH=/bin
mount -t devtmpfs dev /dev
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t tmpfs -o size=90% tmp /tmp
for m in $(cat /lib/modules/load.order); do insmod /lib/modules/$m.ko 2>/dev/null; done
arg() { for w in $(cat /proc/cmdline); do case "$w" in "$1"=*) echo "${w#*=}"; return;; esac; done; echo "$2"; }
DISK=$(arg qd.disk vda); FILL=$(arg qd.fill 0); FILLMODE=$(arg qd.fillmode random)
INTERVAL=$(arg qd.interval 0.1); QUIET=$(arg qd.quiet 0); NOACPI=$(arg qd.noacpi 0); HALT=$(arg qd.halt 0)
if [ "$FILL" -gt 0 ]; then
  if [ "$FILLMODE" = repeat ]; then
    dd if=/dev/urandom of=/tmp/seed bs=1M count=64 2>/dev/null
    i=0; while [ $i -lt "$FILL" ]; do cat /tmp/seed > /tmp/fill.$i; i=$((i + 64)); done
  else
    dd if=/dev/urandom of=/tmp/fill bs=1M count="$FILL" 2>/dev/null
  fi
fi
if [ "$DISK" = none ]; then
  DIR=/tmp
else
  i=0; while [ ! -b /dev/$DISK ] && [ $i -lt 100 ]; do sleep 0.05; i=$((i + 1)); done
  mount -t ext4 /dev/$DISK /mnt || { echo "GUEST-ERROR cannot mount /dev/$DISK"; poweroff -f; }
  DIR=/mnt
fi
n=$(tail -n 1 $DIR/counter 2>/dev/null); n=${n:-0}
if [ "$NOACPI" != 1 ]; then
  mkdir -p /etc/acpi/PWRF
  printf '#!/bin/sh\necho GUEST-POWEROFF >/dev/console\nsync\numount /mnt 2>/dev/null\npoweroff -f\n' > /etc/acpi/PWRF/00000080
  chmod +x /etc/acpi/PWRF/00000080
  # -d (debug, foreground): without it busybox acpid logs through syslog,
  # which this guest lacks, and it never runs the handler
  acpid -d -c /etc/acpi >/dev/null 2>&1 &
fi
agent() {
  for p in /sys/class/virtio-ports/*; do
    [ "$(cat $p/name 2>/dev/null)" = org.qemu.guest_agent.0 ] && port=/dev/${p##*/}
  done
  [ -n "$port" ] || return 0
  while true; do
    while read -r line; do
      case "$line" in
        *guest-sync*) echo "{\"return\": $(echo "$line" | sed -n 's/.*"id": *\([0-9]*\).*/\1/p')}";;
        *guest-fsfreeze-freeze*) fsfreeze --freeze /mnt && echo GUEST-FSFREEZE >/dev/console
                                 echo '{"return": 1}';;
        *guest-fsfreeze-thaw*) fsfreeze --unfreeze /mnt && echo GUEST-FSTHAW >/dev/console
                               echo '{"return": 1}';;
        *guest-shutdown*) case "$line" in *reboot*) reboot -f;; *) poweroff -f;; esac;;
        *guest-get-host-name*) echo "{\"return\": {\"host-name\": \"$(hostname)\"}}";;
        *guest-get-osinfo*) echo "{\"return\": {\"id\": \"qdriver-test\", \"name\": \"qdriver test guest\", \"kernel-release\": \"$(uname -r)\", \"machine\": \"$(uname -m)\"}}";;
        *guest-get-timezone*) echo '{"return": {"offset": 0, "zone": "UTC"}}';;
        *guest-network-get-interfaces*) out=""
          for d in /sys/class/net/*; do
            n=${d##*/}; ips=""
            for a in $(ip -o -4 addr show dev "$n" | sed -n 's/.* inet \([0-9./]*\).*/\1/p'); do
              ips="$ips${ips:+, }{\"ip-address-type\": \"ipv4\", \"ip-address\": \"${a%/*}\", \"prefix\": ${a#*/}}"
            done
            out="$out${out:+, }{\"name\": \"$n\", \"hardware-address\": \"$(cat $d/address)\", \"ip-addresses\": [$ips]}"
          done
          echo "{\"return\": [$out]}";;
        *) echo '{"error": {"class": "CommandNotFound", "desc": "not supported"}}';;
      esac
    done 0<>"$port" 1>&0  # a virtio-serial port opens once: read and write on one fd
    sleep 0.2
  done
}
net() {
  i=0; while [ ! -e /sys/class/net/eth0 ] && [ $i -lt 100 ]; do sleep 0.05; i=$((i + 1)); done
  ip link set lo up; ip link set eth0 up
  [ -n "$1" ] && ip addr add "$1" dev eth0 && echo "GUEST-IP ${1%/*}"
  if [ "$2" = 1 ]; then
    printf '#!/bin/sh\n[ "$1" = bound ] || exit 0\nip addr add $ip/${mask:-24} dev $interface\n[ -n "$router" ] && ip route add default via ${router%% *}\necho "GUEST-IP $ip" >/dev/console\n' > /etc/dhcp.script
    chmod +x /etc/dhcp.script
    udhcpc -i eth0 -q -n -t 20 -T 1 -s /etc/dhcp.script >/dev/null 2>&1 || echo "GUEST-ERROR no DHCP lease"
  fi
}
IP=$(arg qd.ip ""); DHCP=$(arg qd.dhcp 0)
[ -n "$IP" ] || [ "$DHCP" = 1 ] && net "$IP" "$DHCP"
HELLO=$(arg qd.hello "")
[ -n "$HELLO" ] && (until gw=$(ip route | sed -n 's/^default via \([^ ]*\).*/\1/p') && [ -n "$gw" ] &&
                      echo GUEST-HELLO | nc -w 2 "$gw" "$HELLO" >/dev/null 2>&1; do sleep 0.2; done
                    echo "GUEST-HELLO-SENT $gw") &
PING=$(arg qd.ping "")
[ -n "$PING" ] && (until ping -c 1 -W 1 "$PING" >/dev/null 2>&1; do sleep 0.2; done
                   echo "GUEST-PING-OK $PING") &
[ "$DISK" = none ] || [ "$(arg qd.noagent 0)" = 1 ] || agent &
[ "$(arg qd.shell 0)" = 1 ] && (while read -r line; do eval "$line"; done) </dev/console >/dev/console 2>&1 &
[ "$(arg qd.busy 0)" = 1 ] && (while :; do :; done) &
echo "GUEST-READY disk=$DISK start=$n"
[ "$HALT" = 1 ] && { sync; poweroff -f; }
while true; do
  n=$((n + 1))
  echo $n >> $DIR/counter
  sync
  [ "$QUIET" = 1 ] || echo "COUNTER $n"
  sleep "$INTERVAL"
done
"""


def run(*argv: str, cwd: Path | None = None) -> str:
    """Run a command (argument list, no shell) and return its stdout."""
    return subprocess.run(argv, cwd=cwd, check=True, capture_output=True, text=True).stdout


def download(cache: Path) -> tuple[Path, Path]:
    """Fetch the kernel and busybox-static .debs into the cache (once)."""
    debs = cache / "debs"
    debs.mkdir(parents=True, exist_ok=True)
    kdeb = glob.glob(str(debs / "linux-image-*.deb"))
    bdeb = glob.glob(str(debs / "busybox-static_*.deb"))
    if not (kdeb and bdeb):
        deps = run("apt-cache", "depends", f"linux-image-{KERNEL_FLAVOUR}")
        m = re.search(r"Depends: (linux-image-\S+)", deps)
        if not m:
            sys.exit(f"cannot resolve linux-image-{KERNEL_FLAVOUR} (run apt-get update)")
        run("apt-get", "download", m.group(1), "busybox-static", cwd=debs)
        kdeb = glob.glob(str(debs / "linux-image-*.deb"))
        bdeb = glob.glob(str(debs / "busybox-static_*.deb"))
    return Path(kdeb[0]), Path(bdeb[0])


def extract(cache: Path, kdeb: Path, bdeb: Path) -> Path:
    """Unpack the kernel (boot/ and the modules we need) and busybox once."""
    root = cache / "root"
    if (root / ".done-2").exists():  # -2: with kernel/net/core (virtio_net's failover)
        return root
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    tar = subprocess.Popen(["dpkg-deb", "--fsys-tarfile", str(kdeb)], stdout=subprocess.PIPE)
    subprocess.run(["tar", "-x", "-C", str(root), "--wildcards", "./boot/*",
                    "./lib/modules/*/modules.builtin", "./lib/modules/*/kernel/drivers/*",
                    "./lib/modules/*/kernel/lib/*", "./lib/modules/*/kernel/fs/*",
                    "./lib/modules/*/kernel/crypto/*", "./lib/modules/*/kernel/arch/*",
                    "./lib/modules/*/kernel/net/core/*"],
                   stdin=tar.stdout, check=True)
    if tar.wait() != 0:
        sys.exit("dpkg-deb failed")
    run("dpkg", "-x", str(bdeb), str(root))
    (root / ".done-2").touch()
    return root


def module_index(moddir: Path) -> dict[str, Path]:
    """Map module names (with '-' folded to '_') to their .ko files."""
    return {p.stem.replace("-", "_"): p for p in moddir.rglob("*.ko")}


def module_depends(ko: Path) -> list[str]:
    """Read a module's dependencies from its .modinfo ``depends=`` string."""
    m = re.search(rb"\x00depends=([^\x00]*)\x00", ko.read_bytes())
    return [d.replace("-", "_") for d in m.group(1).decode().split(",") if d] if m else []


def resolve_modules(moddir: Path) -> list[Path]:
    """Wanted modules plus their dependencies, dependencies first."""
    index = module_index(moddir)
    order: list[Path] = []
    seen: set[str] = set()

    def visit(name: str) -> None:
        if name in seen or name not in index:  # built-in modules have no .ko
            return
        seen.add(name)
        for dep in module_depends(index[name]):
            visit(dep)
        order.append(index[name])

    for name in WANTED_MODULES:
        visit(name)
    return order


class Cpio:
    """Minimal writer for the newc cpio format the kernel unpacks."""

    def __init__(self) -> None:
        self.data = bytearray()
        self.ino = 1

    def add(self, name: str, mode: int, body: bytes = b"", rdev: tuple[int, int] = (0, 0)) -> None:
        namez = name.encode() + b"\0"
        fields = [self.ino, mode, 0, 0, 1, 0, len(body), 0, 0, rdev[0], rdev[1], len(namez), 0]
        self.ino += 1
        self.data += b"070701" + b"".join(b"%08X" % f for f in fields) + namez
        self.data += b"\0" * (-len(self.data) % 4) + body
        self.data += b"\0" * (-len(self.data) % 4)

    def dir(self, name: str) -> None:
        self.add(name, stat.S_IFDIR | 0o755)

    def file(self, name: str, body: bytes, mode: int = 0o644) -> None:
        self.add(name, stat.S_IFREG | mode, body)

    def finish(self) -> bytes:
        self.add("TRAILER!!!", 0)
        return bytes(self.data)


def build_initrd(root: Path, out: Path) -> None:
    """Write the busybox initramfs with /init, the modules and load.order."""
    moddir = next((root / "lib/modules").iterdir())
    modules = resolve_modules(moddir)
    c = Cpio()
    for d in ("bin", "dev", "proc", "sys", "tmp", "mnt", "etc", "lib", "lib/modules"):
        c.dir(d)
    c.add("dev/console", stat.S_IFCHR | 0o600, rdev=(5, 1))
    c.file("bin/busybox", (root / "bin/busybox").read_bytes(), 0o755)
    c.add("bin/sh", stat.S_IFLNK | 0o777, b"busybox")
    c.file("init", INIT.encode(), 0o755)
    for ko in modules:
        c.file(f"lib/modules/{ko.stem}.ko", ko.read_bytes())
    c.file("lib/modules/load.order", "".join(f"{ko.stem}\n" for ko in modules).encode())
    tmp = out.with_suffix(".tmp")
    tmp.write_bytes(gzip.compress(c.finish(), compresslevel=6))
    tmp.replace(out)


def build_vmlinux(vmlinuz: Path, out: Path) -> None:
    """Decompress the bzImage payload (LZ4) into an ELF vmlinux for PVH boot."""
    img = vmlinuz.read_bytes()
    setup_sects = img[0x1F1] or 4
    offset, length = struct.unpack_from("<II", img, 0x248)
    payload = img[(setup_sects + 1) * 512 + offset:][:length]
    if payload[:4] != b"\x02\x21\x4c\x18":
        shutil.copyfile(vmlinuz, out)  # not LZ4: boot the bzImage as it is
        return
    with open(out.with_suffix(".tmp"), "wb") as f:
        # the kernel appends the 4-byte uncompressed size after the LZ4 stream
        subprocess.run(["lz4", "-dc"], input=payload[:-4], stdout=f, check=True)
    out.with_suffix(".tmp").replace(out)


def build_disk(out: Path) -> None:
    """ext4 image filled from a directory, converted to qcow2."""
    with tempfile.TemporaryDirectory() as tmp:
        content = Path(tmp, "content")
        content.mkdir()
        (content / "README").write_text("qdriver test guest data disk\n")
        raw = Path(tmp, "disk.raw")
        with open(raw, "wb") as f:
            f.truncate(DISK_MB << 20)
        run("mkfs.ext4", "-q", "-F", "-L", "qdata", "-d", str(content), str(raw))
        run("qemu-img", "convert", "-f", "raw", "-O", "qcow2", str(raw), str(out) + ".tmp")
        os.replace(str(out) + ".tmp", out)


def main() -> None:
    out = Path(sys.argv[1] if len(sys.argv) > 1 else Path(__file__).with_name("out")).resolve()
    cache = out / ".cache"
    kdeb, bdeb = download(cache)
    root = extract(cache, kdeb, bdeb)
    stamp = hashlib.sha256(Path(__file__).read_bytes()).hexdigest()
    stamp_file = out / ".stamp"
    fresh = stamp_file.exists() and stamp_file.read_text() == stamp
    vmlinuz = next((root / "boot").glob("vmlinuz-*"))
    if not fresh or not (out / "vmlinuz").exists():
        shutil.copyfile(vmlinuz, out / "vmlinuz")
    if not fresh or not (out / "vmlinux").exists():
        build_vmlinux(vmlinuz, out / "vmlinux")
    if not fresh or not (out / "initrd.img").exists():
        build_initrd(root, out / "initrd.img")
    if not fresh or not (out / "disk.qcow2").exists():
        build_disk(out / "disk.qcow2")
    stamp_file.write_text(stamp)
    print(out)


if __name__ == "__main__":
    main()
