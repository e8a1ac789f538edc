"""Progress lines: in place on a terminal, plain elsewhere, always a final line."""
from __future__ import annotations

import io

import pytest

from qdriver.cli.registry import ProgressPrinter, progress_lines
from qdriver.progress import Progress

pytestmark = pytest.mark.no_qemu  # pure: runs no QEMU program

MiB = 1 << 20


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_on_a_terminal_one_line_updates_in_place_then_ends_at_100() -> None:
    term = Terminal()
    with progress_lines():
        printer = ProgressPrinter("domain g", term)
        for done in (10, 50, 90):
            printer.last = 0.0  # as if time had passed since the last update
            printer(Progress("memory", done * MiB, 100 * MiB, 50 * MiB))
    text = term.getvalue()
    assert text.count("\n") == 1 and text.endswith("\n")  # one line, ended once
    frames = text.rstrip("\n").split("\r")[1:]
    assert [f.split()[3] for f in frames] == ["10%", "50%", "90%", "100%"]
    assert "100.0 of 100.0 MiB" in frames[-1]


def test_elsewhere_plain_lines_and_a_final_one() -> None:
    log = io.StringIO()
    with progress_lines():
        printer = ProgressPrinter("domain g", log)
        printer(Progress("memory", 10 * MiB, 100 * MiB, 50 * MiB))
        printer(Progress("memory", 20 * MiB, 100 * MiB, 50 * MiB))  # within 2 s: not shown
    lines = log.getvalue().splitlines()
    assert "\r" not in log.getvalue() and len(lines) == 2
    assert " 10%" in lines[0] and "100%" in lines[1]


def test_a_phase_without_a_total_shows_its_time() -> None:
    log = io.StringIO()
    with progress_lines():
        printer = ProgressPrinter("snapshot g", log)
        printer(Progress("snapshot-save", 0, 0, 0.0))
        printer(Progress("commit vda", 5 * MiB, 10 * MiB, 1.0))  # a new phase ends the first
    lines = log.getvalue().splitlines()
    assert lines[0].startswith("snapshot g: snapshot-save for ")
    assert lines[1].startswith("snapshot g: snapshot-save done in ")
    assert "commit vda 100%" in lines[-1]


def test_a_failure_ends_the_line_without_claiming_100() -> None:
    term = Terminal()
    with pytest.raises(RuntimeError), progress_lines():
        printer = ProgressPrinter("domain g", term)
        printer(Progress("memory", 30 * MiB, 100 * MiB, 1.0))
        raise RuntimeError("the save failed")
    assert "100%" not in term.getvalue() and term.getvalue().endswith("\n")
