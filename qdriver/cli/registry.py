"""The command registry shared by the CLI modules."""
from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass
from typing import Awaitable, Callable, Sequence

from ..driver import Driver
from ..ops.progress import Progress

Handler = Callable[[Driver, argparse.Namespace], Awaitable[int]]


@dataclass(frozen=True)
class Command:
    """One CLI command: its handler, help and argument setup."""

    handler: Handler
    help: str
    setup: Callable[[argparse.ArgumentParser], object]


COMMANDS: dict[str, Command] = {}


def command(name: str, help: str,
            setup: Callable[[argparse.ArgumentParser], object] = lambda p: None
            ) -> Callable[[Handler], Handler]:
    """Register a CLI command."""
    def register(fn: Handler) -> Handler:
        COMMANDS[name] = Command(fn, help, setup)
        return fn
    return register


def domain_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("domain", help="domain name")


def domain_with(**flags: str) -> Callable[[argparse.ArgumentParser], None]:
    """Argument setup: the domain, then boolean ``--flags`` (name -> help)."""
    def setup(p: argparse.ArgumentParser) -> None:
        domain_arg(p)
        for name, help in flags.items():
            p.add_argument("--" + name.replace("_", "-"), dest=name, action="store_true",
                           help=help)
    return setup


def format_fields(rows: Sequence[tuple[str, str]]) -> str:
    """virsh's ``Key:  value`` blocks (dominfo, snapshot-info)."""
    return "".join(f"{key + ':':<16}{value}\n" for key, value in rows)


def out(text: str = "") -> None:
    print(text, flush=True)


def format_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """virsh's table layout: padded columns, a dashed rule under the header."""
    widths = [max([len(h)] + [len(r[i]) for r in rows]) for i, h in enumerate(header)]

    def line(cells: Sequence[str]) -> str:
        return (" " + "   ".join(c.ljust(w) for c, w in zip(cells, widths))).rstrip()
    rule = "-" * (sum(widths) + 3 * (len(widths) - 1) + 2)
    return "\n".join([line(header), rule, *(line(r) for r in rows)]) + "\n"


class ProgressPrinter:
    """Progress of a memory save or load on stderr, at most a few lines a second:
    ``<what>: <phase> <percent>% (<done> of <total> MiB, <rate> MiB/s)``."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.last = 0.0

    def __call__(self, p: Progress) -> None:
        now = time.monotonic()
        if now - self.last < 0.5 and p.done < p.total:
            return
        self.last = now
        pct = 100 * p.done // p.total if p.total else 0
        print(f"{self.name}: {p.phase} {pct:3d}% ({p.done / 2**20:.1f} of "
              f"{p.total / 2**20:.1f} MiB, {p.rate / 2**20:.0f} MiB/s)", file=sys.stderr,
              flush=True)
