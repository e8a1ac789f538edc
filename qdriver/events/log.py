"""The event log: one JSON line per event, appended by any process, read by all.

Appends are serialized by an ``flock`` on the log itself, so lines never mix
and a rotation (past `MAX_SIZE` the log becomes ``events.log.1``) never loses
one: a writer that finds it opened a log just rotated away opens the new one.
A reader (`Tail`) starts at the end and follows the log across a rotation.
"""
from __future__ import annotations

import fcntl
import json
import logging
import os
import time
from pathlib import Path

from .kinds import DETAILS, Event, EventType

FORMAT = 1
"""The version each line carries (``"v"``)."""
MAX_SIZE = 4 << 20
"""Past this many bytes the log is rotated (one older generation is kept)."""

log = logging.getLogger("qdriver")


def log_path(state_dir: Path) -> Path:
    return state_dir / "events.log"


def append(state_dir: Path, domain: str, type_: EventType, detail: str,
           snapshot: str | None = None, when: float | None = None) -> None:
    """Record one event (``when`` it happened, if not now).  A full or read-only
    state disk loses the event with a warning, never the operation that caused it."""
    assert detail in DETAILS[type_], (type_, detail)
    line: dict[str, object] = {"v": FORMAT, "t": time.time() if when is None else when,
                               "domain": domain, "type": type_.name.lower(), "detail": detail}
    if snapshot is not None:
        line["snapshot"] = snapshot
    try:
        _write(log_path(state_dir), (json.dumps(line) + "\n").encode())
    except OSError as e:
        log.warning("cannot record event %s %s of domain '%s': %s", type_, detail, domain,
                    e.strerror or e)


def _write(path: Path, data: bytes) -> None:
    while True:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW
                     | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            st = os.fstat(fd)
            try:
                current = os.stat(path).st_ino == st.st_ino
            except FileNotFoundError:
                current = False
            if not current:
                continue  # rotated while this process waited: append to the new one
            if st.st_size + len(data) > MAX_SIZE:
                os.replace(path, path.with_name(path.name + ".1"))
                continue
            os.write(fd, data)
            return
        finally:
            os.close(fd)


def parse(raw: bytes) -> Event | None:
    """One line as an event; None for a line of another format or a damaged one."""
    try:
        d = json.loads(raw)
        if d.get("v") != FORMAT:
            return None
        type_ = EventType[str(d["type"]).upper()]
        if d["detail"] not in DETAILS[type_]:
            return None
        return Event(str(d["domain"]), type_, str(d["detail"]), float(d["t"]),
                     d.get("snapshot"))
    except (ValueError, KeyError, TypeError, AttributeError):
        return None


class Tail:
    """The events appended to a state dir's log since this reader was made."""

    def __init__(self, state_dir: Path) -> None:
        self.path = log_path(state_dir)
        self._fd: int | None = None
        self._pending = b""
        self._open(at_end=True)

    def _open(self, at_end: bool) -> None:
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except FileNotFoundError:
            return  # no event yet: the file is made by the first one, read from its start
        if at_end:
            os.lseek(fd, 0, os.SEEK_END)
        self._fd = fd

    def read(self) -> list[Event]:
        """The new events, oldest first (none yet: an empty list)."""
        if self._fd is None:
            self._open(at_end=False)
            if self._fd is None:
                return []
        raw = self._drain()
        if self._rotated():  # the rest of the old log, then the new one from its start
            os.close(self._fd)
            self._fd = None
            self._open(at_end=False)
            if self._fd is not None:
                raw += self._drain()
        *lines, self._pending = (self._pending + raw).split(b"\n")
        return [e for e in map(parse, lines) if e is not None]

    def _drain(self) -> bytes:
        assert self._fd is not None
        chunks = []
        while chunk := os.read(self._fd, 1 << 16):
            chunks.append(chunk)
        return b"".join(chunks)

    def _rotated(self) -> bool:
        assert self._fd is not None
        try:
            return os.stat(self.path).st_ino != os.fstat(self._fd).st_ino
        except FileNotFoundError:
            return False

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


__all__ = ["append", "parse", "Tail", "log_path", "FORMAT", "MAX_SIZE"]
