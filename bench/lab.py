#!/usr/bin/env python3
"""A lab of guests that talk to each other: bringing it up, and its network, one run.

  up      three 256 MiB test guests on one multicast network (10.9.0.1-3), from
          defined to "each has pinged its neighbour" (the guest's own ping),
          qdriver (started side by side) beside libvirt (Debian's, embedded, no
          daemon, the same XML; started one after the other as its API does).
  up, network  the same lab on a qdriver network (net-start included), each
          guest's address from its DHCP server (fixed hosts).  libvirt cannot run
          this here: its networks need its network driver (a daemon) and a host
          bridge (root).
  rtt     guest-to-guest ping round trip (average of 20) for each socket backend.
  tput    guest-to-guest TCP throughput (busybox nc, 40 MiB) for each backend,
          timed on the host from the command to the receiver's byte count (checked).

Everything runs in a network namespace of the bench's own (multicast needs its
loopback); TCG, so throughput is the emulated CPU's, not the backend's.
Usage: python3 bench/lab.py [--rounds N] [--no-libvirt]
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import anyio

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT))

import qdriver  # noqa: E402
from qdriver.console import SerialLink  # noqa: E402
from qdriver.testing.guestpool import qemu_pids  # noqa: E402
from tests.helpers.guest import GuestImage, domain_xml  # noqa: E402

IMAGES = ROOT / "tests" / "vm-images" / "out"
NAMES = ("la", "lb", "lc")
BLOCKS = 640
"""The throughput test sends BLOCKS x 64 KiB (40 MiB); the receiver counts the bytes."""


def mcast(port: int) -> str:
    return (f"<interface type='mcast'><source address='230.0.0.9' port='{port}'/>"
            "<model type='virtio'/></interface>")


def pair_backends(port: int) -> dict[str, tuple[str, str]]:
    """Each socket backend as the two guests' interfaces."""
    def udp(me: int, peer: int) -> str:
        return (f"<interface type='udp'><source address='127.0.0.1' port='{peer}'>"
                f"<local address='127.0.0.1' port='{me}'/></source>"
                "<model type='virtio'/></interface>")
    tcp = f"<source address='127.0.0.1' port='{port + 2}'/><model type='virtio'/></interface>"
    return {"qdriver network": (on_network(1), on_network(2)),
            "mcast": (mcast(port + 3), mcast(port + 3)),
            "udp": (udp(port, port + 1), udp(port + 1, port)),
            "server/client": (f"<interface type='server'>{tcp}",
                              f"<interface type='client'>{tcp}")}


NETWORK = ("<network><name>lab</name><ip address='10.9.0.254' prefix='24'><dhcp>"
           + "".join(f"<host mac='52:54:00:09:00:0{i}' ip='10.9.0.{i}'/>" for i in (1, 2, 3))
           + "</dhcp></ip></network>")
"""An isolated qdriver network; DHCP gives guest i (its MAC) 10.9.0.i."""


def on_network(i: int) -> str:
    return (f"<interface type='network'><source network='lab'/>"
            f"<mac address='52:54:00:09:00:0{i}'/><model type='virtio'/></interface>")


def lab_xml(image: GuestImage, work: Path, tag: str, i: int, iface: str,
            dhcp: bool = False) -> tuple[str, Path]:
    """Guest ``i`` (1-3) of a lab: a file console, its address (or DHCP), pinging the
    next one."""
    console = work / f"{tag}-{i}.log"
    address = "qd.dhcp=1" if dhcp else f"qd.ip=10.9.0.{i}/24"
    xml = domain_xml(image, f"{tag}-{i}", None, serial="file",
                     cmdline=f"qd.quiet=1 {address} qd.ping=10.9.0.{i % 3 + 1}",
                     extra_devices=iface).replace(
        "<serial type='file'/>", f"<serial type='file'><source path='{console}'/></serial>")
    return xml, console


async def qdriver_up(work: Path, rounds: int, network: bool = False) -> list[float]:
    image = GuestImage(IMAGES)
    times = []
    for r in range(rounds):
        drv = qdriver.Driver(work / "state")
        xmls = [lab_xml(image, work, f"q{r}{'n' if network else ''}", i,
                        on_network(i) if network else mcast(5600 + r), dhcp=network)
                for i in (1, 2, 3)]
        doms = [await drv.define_xml(x) for x, _ in xmls]
        net = drv.define_network(NETWORK) if network else None
        t0 = time.monotonic()
        if net is not None:
            await net.start()
        async with anyio.create_task_group() as tg:
            for dom in doms:
                tg.start_soon(dom.start)
        while not all(c.exists() and b"GUEST-PING-OK" in c.read_bytes() for _, c in xmls):
            await anyio.sleep(0.02)
        times.append(time.monotonic() - t0)
        for dom in doms:
            await dom.destroy()
            await drv.undefine(dom)
        if net is not None:
            await net.destroy()
    return times


async def typed(dom: qdriver.Domain, line: str, marker: str) -> tuple[float, str]:
    """Seconds from typing ``line`` to ``marker`` after it, and the text up to it."""
    start = len(dom.paths.console_log.read_bytes())
    link = SerialLink(dom.console_path())
    t0 = time.monotonic()
    try:
        link.write(f"{line}\n".encode())
        while True:
            text = dom.paths.console_log.read_bytes()[start:].decode(errors="replace")
            if marker in text.split(line, 1)[-1]:
                return time.monotonic() - t0, text
            await anyio.sleep(0.01)
    finally:
        link.close()


async def network(work: Path) -> dict[str, dict[str, float]]:
    image = GuestImage(IMAGES)
    drv = qdriver.Driver(work / "state")
    out: dict[str, dict[str, float]] = {}
    net = drv.define_network(NETWORK)
    await net.start()
    for b, (name, (a_if, b_if)) in enumerate(pair_backends(5700).items()):
        doms = []
        for i, iface in ((1, a_if), (2, b_if)):
            doms.append(await drv.define_xml(domain_xml(
                image, f"n{b}-{i}", None, cmdline=f"qd.quiet=1 qd.shell=1 qd.ip=10.9.0.{i}/24 "
                f"qd.ping=10.9.0.{3 - i}", extra_devices=iface)))
            await doms[-1].start()
        while not all(b"GUEST-PING-OK" in d.paths.console_log.read_bytes() for d in doms):
            await anyio.sleep(0.05)
        _, text = await typed(doms[0], "ping -c 20 -i 0.05 10.9.0.2 | tail -1; echo RTT$((6*7))",
                              "RTT42")
        rtt = re.search(r"= [\d.]+/([\d.]+)/", text)
        await typed(doms[1], "(sleep 600 | nc -l -p 5001 | wc -c | sed 's/^/GOT /') & "
                             "echo LISTENING$((6*7))", "LISTENING42")
        got = len(doms[1].paths.console_log.read_bytes())
        t0 = time.monotonic()
        await typed(doms[0], f"dd if=/dev/zero bs=64k count={BLOCKS} 2>/dev/null | "
                             "nc 10.9.0.2 5001; echo SENT$((6*7))", "SENT42")
        while not (m := re.search(rb"GOT (\d+)", doms[1].paths.console_log.read_bytes()[got:])):
            await anyio.sleep(0.01)
        seconds = time.monotonic() - t0
        assert int(m.group(1)) == BLOCKS * 65536, f"{name}: {m.group(1)!r} bytes arrived"
        out[name] = {"rtt_ms": float(rtt.group(1)) if rtt else float("nan"),
                     "mbit_s": BLOCKS * 65536 * 8 / seconds / 1e6}
        for dom in doms:
            await dom.destroy()
            await drv.undefine(dom)
    await net.destroy()
    return out


def libvirt_up(work: Path, rounds: int) -> list[float]:
    image = GuestImage(IMAGES)
    times = []
    for r in range(rounds):
        paths = []
        for i in (1, 2, 3):
            xml, _ = lab_xml(image, work, f"l{r}", i, mcast(5650 + r))
            path = work / f"l{r}-{i}.xml"
            path.write_text(xml)
            paths.append(str(path))
        res = subprocess.run(["/usr/bin/python3", str(ROOT / "bench" / "libvirt_lab.py"),
                              str(work / "lvroot"), *paths], capture_output=True, text=True,
                             timeout=600, cwd=str(ROOT / "bench"))
        if res.returncode != 0:
            print(f"libvirt baseline failed: {res.stderr.strip()[-400:]}", file=sys.stderr)
            return []
        times.append(json.loads(res.stdout.strip().splitlines()[-1])["up"])
    return times


def inside(work: Path, rounds: int, libvirt: bool) -> None:
    """Everything measured, from inside the namespace; one JSON line."""
    async def qdriver_side() -> tuple[list[float], list[float], dict[str, dict[str, float]]]:
        return (await qdriver_up(work, rounds), await qdriver_up(work, rounds, network=True),
                await network(work))
    up, up_net, net = anyio.run(qdriver_side)
    print(json.dumps({"up": up, "up_net": up_net, "net": net,
                      "libvirt": libvirt_up(work, rounds) if libvirt else []}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--no-libvirt", action="store_true")
    ap.add_argument("--inside", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.inside:
        inside(Path(args.inside), args.rounds, not args.no_libvirt)
        return
    subprocess.run([sys.executable, str(ROOT / "tests/vm-images/build.py"), str(IMAGES)],
                   check=True, stdout=subprocess.DEVNULL)
    ns = f"qdbench-lab-{os.getpid()}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    work = Path(tempfile.mkdtemp(prefix="qdbench-lab-"))
    try:
        for cmd in (["ip", "link", "set", "lo", "up", "multicast", "on"],
                    ["ip", "route", "add", "224.0.0.0/4", "dev", "lo"]):
            subprocess.run(["ip", "netns", "exec", ns, *cmd], check=True)
        res = subprocess.run(["ip", "netns", "exec", ns, sys.executable, __file__, "--inside",
                              str(work), "--rounds", str(args.rounds),
                              *(["--no-libvirt"] if args.no_libvirt else [])],
                             capture_output=True, text=True, timeout=1800)
        if res.returncode != 0:
            raise SystemExit(res.stderr[-2000:])
        r = json.loads(res.stdout.strip().splitlines()[-1])
    finally:
        for pid in qemu_pids(work):  # a failed run's guests go too
            os.kill(pid, signal.SIGKILL)
        subprocess.run(["ip", "netns", "del", ns], check=False)
        shutil.rmtree(work, ignore_errors=True)
    up = statistics.median(r["up"])
    print(f"\nthree-guest lab, defined to all pinged, median of {args.rounds}:")
    line = f"  qdriver {up:.2f} s"
    if r["libvirt"]:
        lv = statistics.median(r["libvirt"])
        line += f"   libvirt {lv:.2f} s   libvirt/qdriver {lv / up:.2f}"
    print(line)
    print(f"  on a qdriver network, DHCP: qdriver {statistics.median(r['up_net']):.2f} s   "
          "libvirt cannot here (network driver daemon, host bridge)")
    print("\nguest to guest, by backend (TCG):")
    print(f"  {'backend':14} {'rtt ms':>8} {'Mbit/s':>8}")
    for name, v in r["net"].items():
        print(f"  {name:14} {v['rtt_ms']:8.2f} {v['mbit_s']:8.1f}")


if __name__ == "__main__":
    main()
