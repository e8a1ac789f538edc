"""The ``qdriver`` command: virsh's commands and output, no daemon.

Each command is an async function registered with `registry.command`;
errors print as ``error: <libvirt-style message>`` and exit 1.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys

import anyio

from .. import __version__
from ..driver import Driver
from ..errors import QDriverError
from ..migrate.receive import discard_stale
from . import (  # noqa: F401  (they register their commands)
    domain_cmds,
    event_cmds,
    migrate_cmds,
    network_cmds,
    snapshot_cmds,
)
from .registry import COMMANDS, progress_lines


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every registered command."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--state-dir", default=argparse.SUPPRESS,
                        help="state directory (env QDRIVER_STATE_DIR; "
                             "default ~/.local/share/qdriver)")
    common.add_argument("--qemu-user", default=argparse.SUPPRESS,
                        help="run QEMU as this user (env QDRIVER_QEMU_USER; default: "
                             "the user qdriver runs as)")
    common.add_argument("--allow-host-secrets", action="store_true", default=argparse.SUPPRESS,
                        help="let disks, kernels and initrds resolve to host secrets "
                             "such as /etc/shadow")
    parser = argparse.ArgumentParser(prog="qdriver", parents=[common],
                                     description="virsh-compatible QEMU driver, no daemon")
    parser.add_argument("--version", action="version", version=f"qdriver {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, cmd in COMMANDS.items():
        p = sub.add_parser(name, help=cmd.help, parents=[common])
        cmd.setup(p)
    return parser


async def run(argv: list[str]) -> int:
    """Parse ``argv`` and run the command; return the exit status."""
    args = build_parser().parse_args(argv)
    _report_warnings()
    state_dir = getattr(args, "state_dir", None) or os.environ.get("QDRIVER_STATE_DIR")
    try:
        async with Driver(state_dir, qemu_user=getattr(args, "qemu_user", None),
                          allow_host_secrets=getattr(args, "allow_host_secrets", False)
                          ) as drv:
            for name in await discard_stale(drv):  # what a killed migrate-receive left
                logging.getLogger("qdriver").warning(
                    "discarded the incoming domain '%s' of a migration whose receiving "
                    "process died", name)
            with progress_lines():
                return await COMMANDS[args.command].handler(drv, args)
    except (QDriverError, OSError) as e:
        notes = "".join(f"\n  {note}" for note in getattr(e, "__notes__", ()))
        print(f"error: {e}{notes}", file=sys.stderr, flush=True)
        return 1


def _report_warnings() -> None:
    """The library's warnings (a recovered operation, say) go to stderr once."""
    log = logging.getLogger("qdriver")
    if not log.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("warning: %(message)s"))
        log.addHandler(handler)
        log.setLevel(logging.WARNING)


INTERRUPTED = 130
"""The exit status of a command stopped by Ctrl-C (128 + SIGINT), as shells report it."""


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point.  Ctrl-C cancels the command, which takes back
    what it did (its transaction), and ends with a line, not a traceback."""
    try:
        sys.exit(anyio.run(run, sys.argv[1:] if argv is None else argv))
    except KeyboardInterrupt:
        print("error: operation aborted: interrupted by the user",
              file=sys.stderr, flush=True)
        sys.exit(INTERRUPTED)
