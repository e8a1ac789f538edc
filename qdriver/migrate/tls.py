"""TLS for migrations: QEMU's x509 credentials from a directory laid out as
libvirt lays out ``/etc/pki/qemu`` (``migrate_tls_x509_cert_dir``)."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ..errors import InvalidArgError

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


__all__ = ["CREDS", "DEFAULT_DIR", "TLS_FILES", "cert_dir", "check", "creds"]
