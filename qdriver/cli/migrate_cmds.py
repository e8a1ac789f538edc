"""``migrate``, ``domjobabort`` and the destination's side, ``migrate-receive``."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from anyio.streams.file import FileReadStream, FileWriteStream

from ..driver import Driver
from ..migrate import MigrateFlags
from ..migrate.channel import Channel
from ..migrate.receive import receive
from ..migrate.uri import RECEIVE_COMMAND
from .registry import ProgressPrinter, command, domain_arg, out


def _setup_migrate(p: argparse.ArgumentParser) -> None:
    domain_arg(p)
    p.add_argument("desturi", help="qdriver+ssh://[user@]host[:port]/STATE_DIR"
                                   "[?command=PROGRAM] or qdriver:///STATE_DIR")
    p.add_argument("--live", action="store_true", help="the guest runs while it migrates")
    p.add_argument("--persistent", action="store_true",
                   help="define the domain on the destination (qdriver always does)")
    p.add_argument("--undefinesource", action="store_true",
                   help="forget the domain here once it runs there")
    copy = p.add_mutually_exclusive_group()
    copy.add_argument("--copy-storage-all", action="store_true",
                      help="copy every writable disk, whole")
    copy.add_argument("--copy-storage-inc", action="store_true",
                      help="copy each writable disk's top image (the destination has the "
                           "backing images at the same paths)")
    p.add_argument("--xml", help="the domain XML to use on the destination (same hardware; "
                                 "other disk paths, for one)")
    p.add_argument("--parallel", action="store_true", help="several migration connections")
    p.add_argument("--parallel-connections", type=int, default=0, metavar="N",
                   help="how many (default 2)")
    p.add_argument("--auto-converge", action="store_true",
                   help="slow the guest down if its memory changes faster than it moves")
    p.add_argument("--timeout", type=float, metavar="S",
                   help="pause the guest after S seconds of live migration")
    p.add_argument("--suspend", action="store_true",
                   help="leave the guest paused on the destination")
    p.add_argument("--bandwidth", type=int, default=0, metavar="MiB",
                   help="MiB/s for memory and for each disk copy")
    p.add_argument("--tunnelled", action="store_true",
                   help="memory and disks through the ssh connection (private UNIX "
                        "sockets forwarded), not a TCP port of the destination")
    p.add_argument("--p2p", action="store_true",
                   help="virsh's companion of --tunnelled (qdriver always is)")
    p.add_argument("--tls", action="store_true",
                   help="memory and disks over TLS (certificates as libvirt keeps them: "
                        "here in $QDRIVER_TLS_DIR or /etc/pki/qemu, there in the URI's "
                        "tls_dir or the same defaults)")
    p.add_argument("--verbose", action="store_true",
                   help="show progress (virsh's flag; qdriver always shows it)")


@command("migrate", "move a running domain to another host", _setup_migrate)
async def cmd_migrate(drv: Driver, a: argparse.Namespace) -> int:
    parallel = (a.parallel_connections or 2) if a.parallel or a.parallel_connections else 0
    flags = MigrateFlags(
        live=a.live, persistent=a.persistent, undefine_source=a.undefinesource,
        copy_storage="all" if a.copy_storage_all else "inc" if a.copy_storage_inc else None,
        parallel=parallel, auto_converge=a.auto_converge, timeout=a.timeout,
        suspend=a.suspend, bandwidth=a.bandwidth, tls=a.tls, tunnelled=a.tunnelled,
        dest_xml=Path(a.xml).read_text() if a.xml else None)
    report = await drv.lookup(a.domain).migrate(a.desturi, flags,
                                                ProgressPrinter(f"domain {a.domain}"))
    out(f"Migration: total time {report.total_ms} ms, downtime {report.downtime_ms} ms, "
        f"memory {report.ram_bytes / 2**20:.1f} MiB, disks {report.disk_bytes / 2**20:.1f} "
        "MiB")
    return 0


@command("domjobabort", "abort the migration of a domain", domain_arg)
async def cmd_domjobabort(drv: Driver, a: argparse.Namespace) -> int:
    drv.lookup(a.domain).abort_job()
    return 0


@command(RECEIVE_COMMAND, "(internal) the destination's side of a migration: JSON lines "
                          "on stdin and stdout")
async def cmd_migrate_receive(drv: Driver, a: argparse.Namespace) -> int:
    # unbuffered: a read returns what has come, a reply leaves at once
    stdin = open(sys.stdin.fileno(), "rb", buffering=0, closefd=False)
    stdout = open(sys.stdout.fileno(), "wb", buffering=0, closefd=False)
    channel = Channel(FileReadStream(stdin), FileWriteStream(stdout), "the source")
    return await receive(drv, channel)
