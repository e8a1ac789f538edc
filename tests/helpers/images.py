"""What an image holds, read with qemu-img (QEMU's own view, not qdriver's)."""
from __future__ import annotations

import hashlib
import json
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import qdriver


def image_info(path: str | Path) -> dict[str, Any]:
    """``qemu-img info`` of one image, without taking its lock."""
    out = subprocess.run(["qemu-img", "info", "-U", "--output=json", str(path)],
                         check=True, capture_output=True, text=True).stdout
    info: dict[str, Any] = json.loads(out)
    return info


def backing_chain(image: str | Path) -> list[str]:
    """The image and its backing files, top first."""
    out = subprocess.run(["qemu-img", "info", "-U", "--backing-chain", "--output=json",
                          str(image)], check=True, capture_output=True, text=True).stdout
    return [entry["filename"] for entry in json.loads(out)]


def backing_of(path: str | Path) -> str | None:
    """The backing file an image names, if any."""
    backing: str | None = image_info(path).get("backing-filename")
    return backing


def internal_snapshots(path: str | Path) -> list[str]:
    """``qemu-img snapshot -l``: the names of the internal snapshots in an image."""
    return [s["name"] for s in image_info(path).get("snapshots", [])]


def sha256(path: str | Path) -> str:
    """The checksum of a file's bytes."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def guest_view(image: str | Path, tmp: Path) -> str:
    """A checksum of what the guest sees through a whole chain."""
    raw = tmp / "view.raw"
    subprocess.run(["qemu-img", "convert", "-U", "-O", "raw", str(image), str(raw)], check=True)
    try:
        return sha256(raw)
    finally:
        raw.unlink()


def qemu_img_check(image: str | Path) -> None:
    """Assert that ``qemu-img check`` finds the image sound."""
    r = subprocess.run(["qemu-img", "check", "-U", str(image)], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def disk_counter(image: str | Path, snapshot: str | None = None) -> int:
    """The last counter value the guest wrote to an image (or to an internal
    snapshot in it), as the guest's next mount sees it, read without mounting:
    qemu-img convert, e2fsck replays the ext4 journal (writes the guest synced
    may still be only there, as after a crash), debugfs reads the file."""
    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "disk.raw"
        args = ["qemu-img", "convert", "-U", "-O", "raw"]
        if snapshot:
            args += ["-l", f"snapshot.name={snapshot}"]
        subprocess.run(args + [str(image), str(raw)], check=True, capture_output=True)
        subprocess.run(["e2fsck", "-E", "journal_only", "-y", str(raw)], capture_output=True)
        out = subprocess.run(["debugfs", "-R", "cat /counter", str(raw)], check=True,
                             capture_output=True, text=True).stdout
    values = [int(x) for x in out.split() if x.isdigit()]
    return values[-1] if values else 0


def disk_source(dom: qdriver.Domain, index: int = 0) -> str:
    """The image a domain's disk ``index`` names now (the live definition's)."""
    source = dom.definition.disks[index].source
    assert source is not None, f"disk {index} of {dom.name} has no image"
    return source
