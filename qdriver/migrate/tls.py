"""TLS for migrations: QEMU's x509 credentials from a directory laid out as
libvirt lays out ``/etc/pki/qemu`` (``migrate_tls_x509_cert_dir``) for ``--tls``;
otherwise a key made for the one migration, shared over the channel, so that the
connections between the two QEMUs are theirs alone."""
from __future__ import annotations

import os
import secrets
import shutil
from pathlib import Path
from typing import Any

from ..durable import atomic_write
from ..errors import InvalidArgError
from ..runas import QemuUser, hand_over

DEFAULT_DIR = "/etc/pki/qemu"
"""libvirt's default for migration certificates."""
CREDS = "qdriver-migrate-tls"
"""The credentials object's id in both QEMUs."""
TLS_FILES = {"client": ("ca-cert.pem", "client-cert.pem", "client-key.pem"),
             "server": ("ca-cert.pem", "server-cert.pem", "server-key.pem")}
"""What each end needs in the directory (QEMU's and libvirt's names)."""


def cert_dir(given: str | None) -> str:
    """The directory asked for, else ``QDRIVER_TLS_DIR``, else libvirt's."""
    return given or os.environ.get("QDRIVER_TLS_DIR") or DEFAULT_DIR


def check(directory: str, endpoint: str) -> None:
    """:raise InvalidArgError: a file the ``endpoint`` needs is missing."""
    missing = [f for f in TLS_FILES[endpoint] if not (Path(directory) / f).is_file()]
    if missing:
        raise InvalidArgError(f"TLS for the migration needs '{missing[0]}' in '{directory}' "
                              f"(the {endpoint}'s certificates, laid out as libvirt's "
                              f"{DEFAULT_DIR})")


def creds(directory: str, endpoint: str) -> dict[str, Any]:
    """The ``object-add`` arguments of the credentials; the peer's certificate is
    verified against the CA either way."""
    return {"qom-type": "tls-creds-x509", "id": CREDS, "dir": directory,
            "endpoint": endpoint, "verify-peer": True}




PSK_DIR = "migrate-psk"
"""Under a domain's socket directory: the key file's directory, while it exists."""
PSK_USER = "qdriver"
"""The identity both QEMUs use with a migration's pre-shared key."""


def new_psk() -> str:
    """A key for one migration: the default's protection (no ``--tls``, no
    ``--tunnelled``), so that only the two QEMUs can join its connections."""
    return secrets.token_hex(32)


def write_psk(directory: Path, key: str, user: QemuUser | None) -> None:
    """The key file QEMU's ``tls-creds-psk`` reads (``keys.psk``), private, the QEMU
    user's; in a directory of its own under the domain's socket directory."""
    directory.mkdir(mode=0o700, exist_ok=True)
    hand_over(user, directory)
    atomic_write(directory / "keys.psk", f"{PSK_USER}:{key}\n", durable=False,
                 owner=(user.uid, user.gid) if user is not None else None)


def remove_psk(directory: Path) -> None:
    shutil.rmtree(directory, ignore_errors=True)


def psk_creds(directory: Path, endpoint: str) -> dict[str, Any]:
    """The ``object-add`` arguments of pre-shared key credentials."""
    return {"qom-type": "tls-creds-psk", "id": CREDS, "dir": str(directory),
            "endpoint": endpoint} | ({"username": PSK_USER} if endpoint == "client" else {})


__all__ = ["CREDS", "DEFAULT_DIR", "PSK_DIR", "PSK_USER", "TLS_FILES", "cert_dir", "check", "creds",
           "new_psk", "psk_creds", "remove_psk", "write_psk"]
