"""Where qdriver keeps things.

The state dir holds definitions, snapshot metadata, runtime records and logs;
it defaults to ``$XDG_DATA_HOME/qdriver`` (``~/.local/share/qdriver``).
UNIX socket paths are limited to 108 bytes, so sockets live in a short
per-state-dir directory under ``$XDG_RUNTIME_DIR/qdriver`` (or ``/tmp``).
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

ENV_STATE_DIR = "QDRIVER_STATE_DIR"
SOCKET_PATH_MAX = 107


def default_state_dir() -> Path:
    """``$QDRIVER_STATE_DIR`` or the XDG data directory."""
    if os.environ.get(ENV_STATE_DIR):
        return Path(os.environ[ENV_STATE_DIR])
    data = os.environ.get("XDG_DATA_HOME") or os.path.expanduser("~/.local/share")
    return Path(data) / "qdriver"


def socket_root(state_dir: Path) -> Path:
    """A short directory for this state dir's sockets."""
    tag = hashlib.sha256(str(state_dir.resolve()).encode()).hexdigest()[:10]
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    base = Path(runtime) / "qdriver" if runtime and os.path.isdir(runtime) else \
        Path(f"/tmp/qdriver-{os.getuid()}")
    return base / tag


@dataclass(frozen=True)
class DomainPaths:
    """Every file of one domain."""

    dir: Path
    sockets: Path

    @classmethod
    def of(cls, state_dir: Path, name: str) -> DomainPaths:
        tag = hashlib.sha256(name.encode()).hexdigest()[:10]
        return cls(state_dir / "domains" / name, socket_root(state_dir) / tag)

    @property
    def definition(self) -> Path:
        return self.dir / "domain.xml"

    @property
    def runtime(self) -> Path:
        return self.dir / "run.json"

    @property
    def status(self) -> Path:
        return self.dir / "status.json"

    @property
    def lock(self) -> Path:
        return self.dir / "lock"

    @property
    def qemu_log(self) -> Path:
        return self.dir / "qemu.log"

    @property
    def console_log(self) -> Path:
        return self.dir / "console.log"

    @property
    def pidfile(self) -> Path:
        return self.dir / "qemu.pid"

    @property
    def exitfile(self) -> Path:
        return self.dir / "qemu.exit"

    @property
    def managed_save(self) -> Path:
        """The domain's managed save image (``virsh managedsave``)."""
        return self.dir / "managed.save"

    @property
    def snapshots(self) -> Path:
        return self.dir / "snapshots"

    @property
    def qmp(self) -> Path:
        return self.sockets / "qmp.sock"

    @property
    def qmp_query(self) -> Path:
        return self.sockets / "query.sock"

    @property
    def console(self) -> Path:
        return self.sockets / "console.sock"

    def channel(self, index: int) -> Path:
        return self.sockets / f"channel{index}.sock"
