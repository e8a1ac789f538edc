"""Live migration to another host (or state directory), with no daemon: QEMU's own
migration and NBD server are the engine, ssh runs the destination's qdriver."""
from __future__ import annotations

from .send import MigrateFlags, MigrateReport, migrate
from .uri import Destination, parse

__all__ = ["Destination", "MigrateFlags", "MigrateReport", "migrate", "parse"]
