"""cloud-init's NoCloud seed: ``define --cloud-init user-data=FILE,...`` as virt-install
takes it.

The seed is an ISO 9660 volume labelled ``cidata`` holding ``user-data``,
``meta-data`` and (if given) ``network-config``, written with pycdlib (Joliet
and Rock Ridge names, as ``cloud-localds`` makes them).  It is kept in the
domain's directory and attached as a read-only cdrom in the stored
definition; it goes with the domain.
"""
from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import pycdlib

from .durable import atomic_write
from .errors import InvalidArgError

LABEL = "cidata"
"""The volume label cloud-init's NoCloud source looks for."""
SEED_NAME = "cidata.iso"
"""The seed's file name in the domain's directory."""
KEYS = ("user-data", "meta-data", "network-config", "ssh-key")


@dataclass(frozen=True)
class CloudInit:
    """What the seed carries (file contents), from ``--cloud-init``'s option string."""

    user_data: bytes | None = None
    meta_data: bytes | None = None
    network_config: bytes | None = None
    ssh_key: str | None = None

    @classmethod
    def parse(cls, option: str) -> CloudInit:
        """``user-data=FILE[,meta-data=FILE][,network-config=FILE]`` or
        ``ssh-key=FILE`` (a public key for the image's default user).

        :raise InvalidArgError: an unknown key, a file that cannot be read, or both
            user-data and ssh-key.
        """
        found: dict[str, bytes] = {}
        for item in option.split(","):
            key, _, value = item.partition("=")
            if key not in KEYS or not value:
                raise InvalidArgError(f"unknown --cloud-init option '{item}': takes "
                                      f"{', '.join(k + '=FILE' for k in KEYS)}")
            try:
                found[key] = Path(value).read_bytes()
            except OSError as e:
                raise InvalidArgError(f"cannot read --cloud-init {key} file '{value}': "
                                      f"{e.strerror}") from e
        if "user-data" in found and "ssh-key" in found:
            raise InvalidArgError("--cloud-init takes user-data or ssh-key, not both: put "
                                  "the key in the user-data (ssh_authorized_keys)")
        ssh_key = found.get("ssh-key")
        return cls(found.get("user-data"), found.get("meta-data"), found.get("network-config"),
                   ssh_key.decode().strip() if ssh_key is not None else None)

    def files(self, instance_id: str, hostname: str) -> dict[str, bytes]:
        """The seed's files: meta-data defaults to the domain's uuid and name."""
        user = self.user_data if self.user_data is not None else (
            b"#cloud-config\n" + (f"ssh_authorized_keys:\n  - {self.ssh_key}\n".encode()
                                  if self.ssh_key else b""))
        meta = self.meta_data if self.meta_data is not None else \
            f"instance-id: {instance_id}\nlocal-hostname: {hostname}\n".encode()
        out = {"user-data": user, "meta-data": meta}
        if self.network_config is not None:
            out["network-config"] = self.network_config
        return out


def write_seed(path: Path, files: dict[str, bytes]) -> None:
    """Write the NoCloud ISO to ``path`` (private)."""
    iso = pycdlib.PyCdlib()
    iso.new(interchange_level=3, joliet=3, rock_ridge="1.09", vol_ident=LABEL)
    for i, (name, data) in enumerate(sorted(files.items())):
        iso.add_fp(io.BytesIO(data), len(data), f"/F{i}.;1", rr_name=name,
                   joliet_path=f"/{name}")
    out = io.BytesIO()
    iso.write_fp(out)
    iso.close()
    atomic_write(path, out.getvalue())


def read_seed(path: Path) -> tuple[str, dict[str, bytes]]:
    """The volume label and the files of a seed (by their Rock Ridge names)."""
    iso = pycdlib.PyCdlib()
    iso.open(str(path))
    try:
        label = iso.pvd.volume_identifier.decode().strip()
        files = {}
        for child in iso.list_children(rr_path="/"):
            name = child.rock_ridge.name().decode() if child.rock_ridge else ""
            if name in ("", ".", "..") or child.is_dir():
                continue
            out = io.BytesIO()
            iso.get_file_from_iso_fp(out, rr_path=f"/{name}")
            files[name] = out.getvalue()
        return label, files
    finally:
        iso.close()


__all__ = ["CloudInit", "LABEL", "SEED_NAME", "write_seed", "read_seed"]
