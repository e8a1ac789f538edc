"""The operation journal: what an operation in progress has done, and how to take it back.

qdriver has no daemon, so the process carrying out an operation can die in
the middle of it.  Before its first side effect an operation writes a
journal into the domain's directory (under the domain lock): its name, its
owner (pid and start time) and the list of `Action`s that take back what it
did so far, newest last.  Each recorded action is written *before* the side
effect it undoes.  The journal is removed when the operation ends, rolled
back or not.  The next process that takes the lock and finds a journal runs
its actions newest first (`qdriver.recovery`): that rolls the operation back,
or, past its point of no return, forward (an operation then replaces its undo
list by the actions that finish it, see `Transaction.commit`).

The file carries a format version (`FORMAT`) and every action is a typed
record of one known kind; a journal of another version or with a kind this
release does not know raises `FormatError` naming it, so recovery can
report it and leave the domain usable instead of failing every operation.

The journal is written atomically but without fsync: it must survive the
death of the writing process, which the page cache guarantees; after a host
crash the QEMU it talks about is gone too.
"""
from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from . import process
from .durable import atomic_write
from .errors import FormatError

FORMAT = 1
"""The journal file's format version; bump it when a record changes shape."""
READABLE = (0, FORMAT)
"""Versions this release runs: 0 is the unversioned file of the first releases,
whose actions have the same fields."""


# -- the action kinds: one typed record each -------------------------------------

@dataclass(frozen=True)
class RemoveFile:
    """Remove a file the operation made (unless the domain uses it by now)."""
    KIND: ClassVar[str] = "remove-file"
    path: str


@dataclass(frozen=True)
class RestoreDir:
    """Put metadata files back: all of the directory's (``exact``) or the named ones
    (None: the file did not exist)."""
    KIND: ClassVar[str] = "restore-dir"
    path: str
    files: dict[str, str | None]
    exact: bool = True


@dataclass(frozen=True)
class WriteDefinition:
    KIND: ClassVar[str] = "write-definition"
    xml: str


@dataclass(frozen=True)
class FollowOverlays:
    """Make the definition name the overlays QEMU writes (None: whatever it writes)."""
    KIND: ClassVar[str] = "follow-overlays"
    overlays: dict[str, str] | None = None
    switched: bool = False


@dataclass(frozen=True)
class ResumeGuest:
    KIND: ClassVar[str] = "resume-guest"


@dataclass(frozen=True)
class CancelMigration:
    KIND: ClassVar[str] = "cancel-migration"


@dataclass(frozen=True)
class WaitJobs:
    KIND: ClassVar[str] = "wait-jobs"


@dataclass(frozen=True)
class Qmp:
    KIND: ClassVar[str] = "qmp"
    command: str
    arguments: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class QmpJob:
    KIND: ClassVar[str] = "qmp-job"
    command: str
    arguments: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Hmp:
    KIND: ClassVar[str] = "hmp"
    command: str


@dataclass(frozen=True)
class QemuImgSnapshotDelete:
    KIND: ClassVar[str] = "qemu-img-snapshot-delete"
    image: str
    name: str


@dataclass(frozen=True)
class Thaw:
    KIND: ClassVar[str] = "thaw"
    path: str


@dataclass(frozen=True)
class StopQemu:
    KIND: ClassVar[str] = "stop-qemu"
    reason: str = "destroyed"


@dataclass(frozen=True)
class CompleteMemoryFile:
    KIND: ClassVar[str] = "complete-memory-file"
    path: str
    template_ram: str | None = None
    """A template's RAM file, flushed before the memory file is marked complete."""


@dataclass(frozen=True)
class MoveRam:
    """Move a stopped guest's RAM file to a template's RAM file (a roll-forward)."""
    KIND: ClassVar[str] = "move-ram"
    source: str
    target: str


@dataclass(frozen=True)
class DiscardFork:
    """Take back a fork: stop its QEMU and remove the domain, if it is the one this
    fork defined (by uuid: a domain of that name someone else defined stays)."""
    KIND: ClassVar[str] = "discard-fork"
    name: str
    uuid: str


@dataclass(frozen=True)
class RestoreFile:
    """Put a file back from the copy taken before it was overwritten (a UEFI variable
    store a revert replaced); nothing if the copy is gone (already put back)."""
    KIND: ClassVar[str] = "restore-file"
    backup: str
    target: str


@dataclass(frozen=True)
class DiscardStandby:
    """Take back a claimed standby QEMU: kill it (started, starting, or already the
    domain's and unrecorded) and remove its overlays."""
    KIND: ClassVar[str] = "discard-standby"
    slot: str
    overlays: list[str]


Step = (RemoveFile | RestoreDir | WriteDefinition | FollowOverlays | ResumeGuest
        | CancelMigration | WaitJobs | Qmp | QmpJob | Hmp | QemuImgSnapshotDelete | Thaw
        | StopQemu | CompleteMemoryFile | MoveRam | DiscardFork | DiscardStandby
        | RestoreFile)
"""What one action does, as data another process can run."""

KINDS: dict[str, type[Step]] = {cls.KIND: cls for cls in (
    RemoveFile, RestoreDir, WriteDefinition, FollowOverlays, ResumeGuest, CancelMigration,
    WaitJobs, Qmp, QmpJob, Hmp, QemuImgSnapshotDelete, Thaw, StopQemu, CompleteMemoryFile,
    MoveRam, DiscardFork, DiscardStandby, RestoreFile)}


@dataclass(frozen=True)
class Action:
    """One recorded step back (or forward): a typed record and what it is for."""

    step: Step
    what: str
    """For people: what this takes back (``memory file /x/m``)."""

    @property
    def kind(self) -> str:
        return self.step.KIND

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "what": self.what, "args": dataclasses.asdict(self.step)}

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> Action:
        """:raise FormatError: an unknown kind or fields that do not fit it."""
        kind = str(raw.get("kind"))
        what = str(raw.get("what", ""))
        step_cls = KINDS.get(kind)
        if step_cls is None:
            raise FormatError(f"unknown journal action '{kind}' ({what})")
        try:
            return cls(step_cls(**dict(raw.get("args") or {})), what)
        except TypeError as e:
            raise FormatError(f"journal action '{kind}' ({what}) does not fit this "
                                     f"release: {e}") from e


@dataclass
class JournalRecord:
    """The journal file's content."""

    op: str
    pid: int
    start_time: int
    actions: list[dict[str, Any]] = field(default_factory=list)
    committed: bool = False
    """True past the point of no return: the actions finish the operation."""
    format: int = FORMAT

    @property
    def owner(self) -> process.ProcessId:
        return process.ProcessId(self.pid, self.start_time)

    @property
    def owner_alive(self) -> bool:
        return process.is_running(self.owner)

    def steps(self) -> list[Action]:
        """The recorded actions, oldest first.

        :raise FormatError: the file is of another format, or holds an
            action this release does not know (each is named).
        """
        if self.format not in READABLE:
            raise FormatError(f"journal format {self.format} is not one this release "
                                     f"reads ({', '.join(map(str, READABLE))})")
        return [Action.from_json(a) for a in self.actions]

    def describe(self) -> str:
        """``snapshot-create 'k1' by process 123 (gone)``"""
        return f"{self.op} by process {self.pid}" + ("" if self.owner_alive else " (gone)")


class Journal:
    """One domain's journal file."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.record: JournalRecord | None = None

    def begin(self, op: str) -> None:
        """Start the journal of operation ``op`` owned by this process."""
        me = os.getpid()
        self.record = JournalRecord(op, me, process.start_time(me) or 0)
        self._write()

    def update(self, actions: list[Action], committed: bool = False) -> None:
        """Store the current undo (or finish) list; call before each side effect."""
        if self.record is None:
            return
        self.record.actions = [a.to_json() for a in actions]
        self.record.committed = committed
        self._write()

    def end(self) -> None:
        """The operation is over (done or rolled back): nothing left to recover."""
        if self.record is not None:
            self.path.unlink(missing_ok=True)
            self.record = None

    def load(self) -> JournalRecord | None:
        """The journal on disk, if any (None if absent or unreadable)."""
        try:
            raw = json.loads(self.path.read_text())
            raw.setdefault("format", 0)  # written before journals carried a version
            return JournalRecord(**raw)
        except FileNotFoundError:
            return None
        except (OSError, ValueError, TypeError):
            return JournalRecord("an operation whose journal is unreadable", 0, 0)

    def _write(self) -> None:
        assert self.record is not None
        atomic_write(self.path, json.dumps(dataclasses.asdict(self.record), indent=1),
                     durable=False)


__all__ = ["Action", "Step", "KINDS", "FORMAT", "Journal", "JournalRecord"]
