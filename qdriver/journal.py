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

The journal is written atomically but without fsync: it must survive the
death of the writing process, which the page cache guarantees; after a host
crash the QEMU it talks about is gone too.
"""
from __future__ import annotations

import enum
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from . import process
from .statestore import atomic_write


class ActionKind(enum.StrEnum):
    """Everything an undo (or a roll-forward) can do; `qdriver.ops.actions` runs them."""

    REMOVE_FILE = "remove-file"
    RESTORE_DIR = "restore-dir"
    WRITE_DEFINITION = "write-definition"
    FOLLOW_OVERLAYS = "follow-overlays"
    RESUME_GUEST = "resume-guest"
    CANCEL_MIGRATION = "cancel-migration"
    WAIT_JOBS = "wait-jobs"
    QMP = "qmp"
    QMP_JOB = "qmp-job"
    HMP = "hmp"
    QEMU_IMG_SNAPSHOT_DELETE = "qemu-img-snapshot-delete"
    THAW = "thaw"
    STOP_QEMU = "stop-qemu"
    COMPLETE_MEMORY_FILE = "complete-memory-file"


@dataclass(frozen=True)
class Action:
    """One recorded step back (or forward): plain data, so another process can run it."""

    kind: ActionKind
    what: str
    """For people: what this takes back (``memory file /x/m``)."""
    args: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"kind": str(self.kind), "what": self.what, "args": self.args}

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> Action:
        return cls(ActionKind(raw["kind"]), str(raw["what"]), dict(raw.get("args", {})))


@dataclass
class JournalRecord:
    """The journal file's content."""

    op: str
    pid: int
    start_time: int
    actions: list[dict[str, Any]] = field(default_factory=list)
    committed: bool = False
    """True past the point of no return: the actions finish the operation."""

    @property
    def owner(self) -> process.ProcessId:
        return process.ProcessId(self.pid, self.start_time)

    @property
    def owner_alive(self) -> bool:
        return process.is_running(self.owner)

    def steps(self) -> list[Action]:
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
            return JournalRecord(**raw)
        except FileNotFoundError:
            return None
        except (OSError, ValueError, TypeError):
            return JournalRecord("an operation whose journal is unreadable", 0, 0)

    def _write(self) -> None:
        assert self.record is not None
        atomic_write(self.path, json.dumps(asdict(self.record), indent=1), durable=False)


__all__ = ["Action", "ActionKind", "Journal", "JournalRecord"]
