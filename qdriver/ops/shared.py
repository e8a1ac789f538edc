"""What every operation's execution may use: limits, and HMP's word rules.

Executions share helpers through this module (and the packages below `ops`),
never by importing one another.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..errors import ConfigUnsupportedError
from ..parallel import Rendezvous

JOB_TIMEOUT = 3600.0
"""How long a QEMU job (snapshot save, load, delete; a commit) may run."""


def hmp_word(name: str) -> str:
    """A snapshot name as one HMP argument: HMP splits on blanks and reads
    quotes and backslashes, so names with those cannot go through HMP."""
    if not name or any(c.isspace() or c in "\"'\\" for c in name):
        raise ConfigUnsupportedError(
            f"snapshot name '{name}' cannot be passed to this QEMU's savevm/loadvm "
            "(it lacks snapshot-save): use a name without blanks, quotes or backslashes")
    return name


def free_overlay_name(image: str, stamp: int) -> str:
    """libvirt's revert overlay name, ``<image without suffix>.<epoch>``, made unique."""
    base = str(Path(image).with_suffix("")) + f".{stamp}"
    path, n = base, 0
    while Path(path).exists():
        n += 1
        path = f"{base}.{n}"
    return path


@dataclass
class GroupSync:
    """The two points of a group snapshot (`ops.group`): every guest paused; every
    snapshot taken."""

    paused: Rendezvous
    taken: Rendezvous

    def abort(self, reason: str) -> None:
        self.paused.abort(reason)
        self.taken.abort(reason)


__all__ = ["JOB_TIMEOUT", "hmp_word", "free_overlay_name", "GroupSync"]
