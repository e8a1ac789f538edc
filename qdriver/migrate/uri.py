"""Where a migration goes: a destination URI, and how to run qdriver there.

``qdriver+ssh://[user@]host[:port]/STATE_DIR[?command=PROGRAM][&tls_dir=DIR]`` runs the
destination's qdriver through ``ssh`` (as ``git`` and ``rsync`` do: no daemon on
either side); ``qdriver:///STATE_DIR`` is another state directory on this host,
the same code without ssh.  The destination's QEMU listens on the host the URI
names (``127.0.0.1`` for a local one), where the source's QEMU connects.
"""
from __future__ import annotations

import shlex
import sys
from dataclasses import dataclass
from urllib.parse import parse_qs, unquote, urlsplit

from ..errors import InvalidArgError

RECEIVE_COMMAND = "migrate-receive"
"""The destination's internal CLI command (`qdriver.migrate.receive`)."""
SSH_OPTIONS = ("-o", "BatchMode=yes", "-o", "ServerAliveInterval=5",
               "-o", "ServerAliveCountMax=3")
"""No password prompts (the migration owns stdin and stdout), and a dead peer is
noticed within 15 s."""


@dataclass(frozen=True)
class Destination:
    """A parsed destination URI."""

    state_dir: str
    host: str | None = None
    """None: this host, no ssh."""
    user: str | None = None
    port: int | None = None
    command: str = "qdriver"
    tls_dir: str | None = None
    """``?tls_dir=``: the destination's certificates for ``--tls`` (default: its
    ``QDRIVER_TLS_DIR``, else libvirt's ``/etc/pki/qemu``)."""

    @property
    def address(self) -> str:
        """Where the source's QEMU reaches the destination's."""
        return self.host or "127.0.0.1"

    def argv(self) -> list[str]:
        """The command that runs the destination's side, its stdin and stdout the
        channel (`qdriver.migrate.channel`)."""
        if self.host is None:
            return [sys.executable, "-m", "qdriver", "--state-dir", self.state_dir,
                    RECEIVE_COMMAND]
        remote = " ".join(shlex.quote(a) for a in (
            self.command, "--state-dir", self.state_dir, RECEIVE_COMMAND))
        target = f"{self.user}@{self.host}" if self.user else self.host
        port = ["-p", str(self.port)] if self.port else []
        return ["ssh", *SSH_OPTIONS, *port, "--", target, remote]


def forward_argv(dest: Destination, pairs: list[tuple[str, str]]) -> list[str]:
    """An ``ssh`` that forwards each local UNIX socket to the destination's socket
    of the pair (``--tunnelled``), and does nothing else."""
    assert dest.host is not None
    target = f"{dest.user}@{dest.host}" if dest.user else dest.host
    port = ["-p", str(dest.port)] if dest.port else []
    forwards = [a for local, remote in pairs for a in ("-L", f"{local}:{remote}")]
    return ["ssh", *SSH_OPTIONS, "-N", "-o", "ExitOnForwardFailure=yes", "-o",
            "StreamLocalBindUnlink=yes", *port, *forwards, "--", target]


def parse(uri: str) -> Destination:
    """``DEST_URI`` of ``qdriver migrate``.

    :raise InvalidArgError: another scheme, no state directory, a bad port.
    """
    parts = urlsplit(uri)
    path = unquote(parts.path)
    if parts.scheme not in ("qdriver", "qdriver+ssh") or not path.startswith("/") or \
            path == "/":
        raise InvalidArgError(f"destination URI '{uri}': expected qdriver+ssh://[user@]host"
                              "[:port]/STATE_DIR or qdriver:///STATE_DIR")
    query = parse_qs(parts.query)
    command = query.pop("command", ["qdriver"])[-1]
    tls_dir = query.pop("tls_dir", [None])[-1]
    if query:
        raise InvalidArgError(f"destination URI '{uri}': unknown parameter "
                              f"'{sorted(query)[0]}'")
    if parts.scheme == "qdriver":
        if parts.netloc:
            raise InvalidArgError(f"destination URI '{uri}': a qdriver:/// URI names no host "
                                  "(use qdriver+ssh:// for another host)")
        return Destination(path, tls_dir=tls_dir)
    try:
        port = parts.port
    except ValueError as e:
        raise InvalidArgError(f"destination URI '{uri}': bad port") from e
    if not parts.hostname:
        raise InvalidArgError(f"destination URI '{uri}' names no host")
    return Destination(path, parts.hostname, parts.username, port, command, tls_dir)


__all__ = ["Destination", "RECEIVE_COMMAND", "forward_argv", "parse"]
