#!/usr/bin/env python3
"""The main job end to end: define the test guest, start it, show its console's
ready line, suspend and resume it, take every kind of snapshot (internal,
external disk-only, external memory + disks, LIVE, internal disk-only of a
running guest, offline), show the snapshot tree, shut it down.
Revert arrives with its own issue.

Usage: python3 examples/demo.py [WORKDIR]   (builds the test guest if needed)
"""
from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import anyio

import qdriver
from qdriver.cli.snapshot_cmds import format_tree

ROOT = Path(__file__).resolve().parent.parent


async def wait_for(dom: qdriver.Domain, marker: str, timeout: float = 60,
                   after: int = 0) -> str:
    """The first console line (past character ``after``) that holds ``marker``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = dom.paths.console_log.read_text(errors="replace")[after:] \
            if dom.paths.console_log.exists() else ""
        for line in text.splitlines():
            if marker in line:
                return line
        await anyio.sleep(0.05)
    raise SystemExit(f"demo: '{marker}' did not appear on the console")


def step(text: str) -> None:
    print(f"\n== {text}", flush=True)


async def main(work: Path) -> None:
    images = ROOT / "tests" / "vm-images" / "out"
    subprocess.run([sys.executable, str(ROOT / "tests/vm-images/build.py"), str(images)],
                   check=True, stdout=subprocess.DEVNULL)
    disk = work / "demo.qcow2"
    shutil.copyfile(images / "disk.qcow2", disk)
    xml = f"""<domain type='qemu'>
  <name>demo</name>
  <memory unit='MiB'>256</memory>
  <vcpu>1</vcpu>
  <os>
    <type arch='x86_64' machine='q35'>hvm</type>
    <kernel>{images / 'vmlinux'}</kernel>
    <initrd>{images / 'initrd.img'}</initrd>
    <cmdline>console=ttyS0 quiet panic=-1 qd.interval=0.5</cmdline>
  </os>
  <features><acpi/></features>
  <devices>
    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2'/>
      <source file='{disk}'/>
      <target dev='vda' bus='virtio'/>
    </disk>
    <serial type='pty'/>
  </devices>
</domain>"""
    async with qdriver.Driver(work / "state") as drv:
        step("define")
        dom = await drv.define_xml(xml)
        print(f"Domain '{dom.name}' defined, uuid {dom.uuid}")
        step("start (TCG)")
        t = time.monotonic()
        await dom.start()
        print(f"QMP ready after {time.monotonic() - t:.2f} s; state {dom.state.label}")
        print("console:", await wait_for(dom, "GUEST-READY"),
              f"({time.monotonic() - t:.1f} s after start)")
        step("suspend / resume")
        await dom.suspend()
        print("state:", (await dom.get_state())[0].label)
        await dom.resume()
        print("state:", (await dom.get_state())[0].label)
        print("console:", await wait_for(dom, "COUNTER 2"))
        await snapshots(dom, work)
        await reverts(dom)
        step("shutdown (ACPI power button)")
        graceful = await dom.shutdown(timeout=60)
        state, reason = dom.state_reason()
        print(f"state: {state.label} ({reason}); guest powered off by itself: {graceful}")
        step("offline snapshot (qemu-img) of the shut-off guest")
        await create(dom, "offline", "<domainsnapshot><name>offline</name></domainsnapshot>")
        step("the snapshot tree")
        sys.stdout.write(format_tree(dom.snapshot_tree(),
                                     [s.name for s in dom.list_snapshots(topological=True)]))
        await drv.undefine(dom, snapshots_metadata=True)


async def create(dom: qdriver.Domain, name: str, xml: str, **flags: bool) -> None:
    """Create one snapshot and say what it cost the guest."""
    plan = await dom.plan_snapshot(xml, qdriver.CreateFlags(**flags))
    snap = await dom.snapshot_create_xml(xml, **flags)
    cost = f"{snap.report.seconds * 1000:.0f} ms, guest paused " \
           f"{snap.report.pause * 1000:.0f} ms" if snap.report else ""
    print(f"snapshot {name:10} {', '.join(plan.steps):72} {cost}")


async def snapshots(dom: qdriver.Domain, work: Path) -> None:
    step("snapshots of the running guest (mechanisms, then time and guest pause)")
    await create(dom, "internal", "<domainsnapshot><name>internal</name></domainsnapshot>")
    await create(dom, "disk-only", "<domainsnapshot><name>disk-only</name></domainsnapshot>",
                 disk_only=True)
    await create(dom, "memory", f"<domainsnapshot><name>memory</name><memory file="
                 f"'{work / 'memory.save'}'/></domainsnapshot>")
    await create(dom, "live", f"<domainsnapshot><name>live</name><memory file="
                 f"'{work / 'live.save'}'/></domainsnapshot>", live=True)
    await create(dom, "int-disk", "<domainsnapshot><name>int-disk</name><disks><disk "
                 "name='vda' snapshot='internal'/></disks></domainsnapshot>", disk_only=True)
    print("console:", await wait_for(dom, f"COUNTER {last(dom) + 2}"))


async def revert(dom: qdriver.Domain, name: str) -> None:
    """Revert to one snapshot and show where the guest's counter went."""
    plan = await dom.plan_revert(name)
    before = last(dom)
    offset = len(dom.paths.console_log.read_text(errors="replace"))
    t = time.monotonic()
    await dom.revert_to_snapshot(name)
    took = time.monotonic() - t
    after = await wait_for(dom, "COUNTER", after=offset)
    print(f"revert to {name:8} {plan.mechanism:16} {took * 1000:5.0f} ms; counter was "
          f"{before}, now {after}")


async def reverts(dom: qdriver.Domain) -> None:
    step("revert (the counter goes back; the later state stays as a branch)")
    await revert(dom, "memory")
    await create(dom, "here", "<domainsnapshot><name>here</name></domainsnapshot>")
    await wait_for(dom, f"COUNTER {last(dom) + 3}")
    await revert(dom, "here")


def last(dom: qdriver.Domain) -> int:
    lines = [ln for ln in dom.paths.console_log.read_text(errors="replace").splitlines()
             if ln.startswith("COUNTER ")]
    return int(lines[-1].split()[1]) if lines else 0


if __name__ == "__main__":
    if len(sys.argv) > 1:
        workdir = Path(sys.argv[1])
        workdir.mkdir(parents=True, exist_ok=True)
        anyio.run(main, workdir.resolve())
    else:
        with tempfile.TemporaryDirectory(prefix="qdriver-demo-") as tmp:
            anyio.run(main, Path(tmp))
