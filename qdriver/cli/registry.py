"""The command registry shared by the CLI modules."""
from __future__ import annotations

import argparse
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Awaitable, Callable, Iterator, Mapping, Sequence, TextIO

from ..driver import Driver
from ..progress import Progress

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


def method_commands(table: Mapping[str, tuple[str, str, str]],
                    lookup: Callable[[Driver, argparse.Namespace], Any], message: str,
                    setup: Callable[[argparse.ArgumentParser], object]) -> None:
    """Register commands that each call one method of one object: ``table`` maps a
    command to (help, method, virsh's past participle); ``message`` is formatted
    with the arguments (``a``) and that word (``done``)."""
    for name, (help, method, done) in table.items():
        def handler(drv: Driver, a: argparse.Namespace, method: str = method,
                    done: str = done) -> Awaitable[int]:
            async def call() -> int:
                await getattr(lookup(drv, a), method)()
                out(message.format(a=a, done=done))
                return 0
            return call()
        command(name, help, setup)(handler)


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


def list_options(what: str) -> Callable[[argparse.ArgumentParser], None]:
    """``list``'s and ``net-list``'s flags: which ones, and names only."""
    def setup(p: argparse.ArgumentParser) -> None:
        p.add_argument("--all", action="store_true", help=f"list inactive {what} too")
        p.add_argument("--inactive", action="store_true", help=f"list inactive {what} only")
        p.add_argument("--name", action="store_true", help=f"list {what} names only")
    return setup


def listed(active: bool, a: argparse.Namespace) -> bool:
    """Whether ``--all``/``--inactive`` (or neither: active only) shows this one."""
    return (a.inactive and not active) or (not a.inactive and (active or a.all))


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
    """Progress of a long phase on stderr: ``<what>: <phase> <percent>% (<done> of
    <total> MiB, <rate> MiB/s)``, or the time so far where QEMU tells no total (an
    internal snapshot's job).  On a terminal it is one line, updated in place; elsewhere
    a plain line every few seconds.  Each phase ends with a final line (`finish`)."""

    def __init__(self, name: str, stream: TextIO | None = None) -> None:
        self.name = name
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self.last = 0.0
        self.width = 0
        self.open: Progress | None = None
        """The phase whose line is not finished yet."""
        self.started = time.monotonic()
        OPEN_PRINTERS.append(self)

    def __call__(self, p: Progress) -> None:
        if self.open is not None and p.phase != self.open.phase:
            self.finish()
        if self.open is None:
            self.started = time.monotonic()
        self.open = p
        now = time.monotonic()
        if now - self.last < (0.1 if self.tty else 2.0):
            return
        self.last = now
        self._write(self._line(p, now - self.started), end=False)

    def finish(self, ok: bool = True) -> None:
        """End the open phase: its final line (100 %), or on failure just the line."""
        p, self.open = self.open, None
        if p is None:
            return
        elapsed = time.monotonic() - self.started
        if ok:
            self._write(self._line(Progress(p.phase, max(p.total, p.done), p.total, p.rate),
                                   elapsed, final=True), end=True)
        elif self.tty and self.width:
            self.stream.write("\n")
        self.width = 0

    def _line(self, p: Progress, elapsed: float, final: bool = False) -> str:
        if p.total <= 1:  # QEMU tells no amount for this phase
            return f"{self.name}: {p.phase} {'done in' if final else 'for'} {elapsed:.1f} s"
        pct = 100 * p.done // p.total
        rate = p.total / elapsed if final and elapsed else p.rate
        return (f"{self.name}: {p.phase} {pct:3d}% ({p.done / 2**20:.1f} of "
                f"{p.total / 2**20:.1f} MiB, {rate / 2**20:.0f} MiB/s"
                f"{f', {elapsed:.1f} s' if final else ''})")

    def _write(self, line: str, end: bool) -> None:
        if self.tty:
            self.stream.write("\r" + line.ljust(self.width) + ("\n" if end else ""))
            self.width = 0 if end else len(line)
        else:
            self.stream.write(line + "\n")
        self.stream.flush()


OPEN_PRINTERS: list[ProgressPrinter] = []
"""The progress printers of the command that runs, finished when it ends."""


@contextmanager
def progress_lines() -> Iterator[None]:
    """Around one command: every progress line it opened gets its end."""
    OPEN_PRINTERS.clear()
    try:
        yield
    except BaseException:
        for printer in OPEN_PRINTERS:
            printer.finish(ok=False)
        raise
    for printer in OPEN_PRINTERS:
        printer.finish()
