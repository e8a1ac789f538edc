"""The backing graph of image files, as their headers say (no QEMU asked).

The delete planner simulates merges on it, a revert finds which snapshots an
internal revert spoils, recovery repairs a dead QEMU's chains along it.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Iterable, Mapping

from .header import read as read_header


@dataclass(frozen=True)
class ImageGraph:
    """What the images on disk say: each one's backing file and format."""

    backing: dict[str, str | None]
    """Changed only by the planner's own copy while it simulates merges."""
    formats: Mapping[str, str] = field(default_factory=dict)
    writable: frozenset[str] = frozenset()
    """Images this process may write (a commit target must be one)."""

    def children(self, image: str) -> list[str]:
        return sorted(i for i, b in self.backing.items() if b == image)

    def chain(self, top: str | None) -> list[str]:
        out: list[str] = []
        while top and top not in out:
            out.append(top)
            top = self.backing.get(top)
        return out


def image_graph(images: Iterable[str]) -> ImageGraph:
    """The graph of ``images`` and everything below them (missing files are left out)."""
    todo = list(images)
    backing: dict[str, str | None] = {}
    formats: dict[str, str] = {}
    while todo:
        image = todo.pop()
        if image in backing or not os.path.isfile(image):
            continue
        head = read_header(image)
        backing[image], formats[image] = head.backing, head.format
        if head.backing:
            todo.append(head.backing)
    writable = frozenset(i for i in backing if os.access(i, os.W_OK))
    return ImageGraph(backing, formats, writable)


__all__ = ["ImageGraph", "image_graph"]
