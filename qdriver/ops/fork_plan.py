"""What forking a snapshot means, as data (pure: no I/O).

A fork is a new domain that starts where the snapshot's guest was: the
snapshot's definition under a new name, with a new UUID and new MAC addresses,
every writable disk on a new qcow2 overlay over the image the snapshot froze,
and the snapshot's memory: a template's RAM file mapped copy-on-write, or a
memory file loaded in full.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..errors import ConfigUnsupportedError, InvalidArgError, OperationInvalidError
from ..xml.domain import DomainDef, disk_sources, name_problem
from ..xml.snapshot import SnapshotDef


@dataclass(frozen=True)
class ForkPlan:
    """The forks of one snapshot."""

    snapshot: str
    names: tuple[str, ...]
    memory_file: str
    template_ram: str | None
    """A template snapshot's RAM file (forks map it); None: the memory file holds the RAM."""
    definition: DomainDef
    """The guest's definition when the snapshot was taken."""
    images: tuple[tuple[str, str, str], ...]
    """(target, frozen image, format): each fork's overlay goes on these."""

    def overlay(self, name: str, target: str) -> str:
        """Fork ``name``'s overlay of disk ``target``, beside the image it builds on."""
        image = next(i for t, i, _ in self.images if t == target)
        return str(Path(image).parent / f"{name}.{target}.qcow2")


def plan_fork(snap: SnapshotDef, names: list[str], taken: set[str]) -> ForkPlan:
    """Decide what forking ``snap`` into domains ``names`` means; raise the refusal
    (``taken``: the names domains have already)."""
    name = snap.name or ""
    if not names:
        raise InvalidArgError("fork needs at least one name for a new domain")
    for new in names:
        problem = name_problem(new)
        if problem:
            raise InvalidArgError(problem)
    twice = {n for n in names if names.count(n) > 1} | (set(names) & taken)
    if twice:
        raise OperationInvalidError(f"domain '{sorted(twice)[0]}' already exists or is "
                                    "named twice")
    if snap.memory != "external" or not snap.memory_file or snap.domain is None:
        raise OperationInvalidError(f"snapshot '{name}' has no external memory state to "
                                    "fork from (a fork starts where the guest was)")
    definition = DomainDef.from_element(snap.domain)
    if definition.loader is not None:
        raise ConfigUnsupportedError(
            f"snapshot '{name}' is of a UEFI guest: its forks would share one variable "
            "store, which only one QEMU may open (fork a guest on BIOS, or boot each one)")
    frozen = {d.name for d in snap.disks if d.snapshot == "external"}
    then = disk_sources(snap.domain)
    images = []
    for disk in definition.disks:
        if disk.readonly or not disk.source:
            continue
        if disk.target not in frozen:
            raise ConfigUnsupportedError(
                f"disk '{disk.target}' of snapshot '{name}' was not frozen by it (no external "
                "disk snapshot): a fork would write into an image the domain goes on using")
        images.append((disk.target, then[disk.target], disk.format))
    return ForkPlan(name, tuple(names), snap.memory_file, snap.template_ram, definition,
                    tuple(images))


__all__ = ["ForkPlan", "plan_fork"]
