"""Overlays written in this process are the images ``qemu-img create -b`` makes.

``qemu-img check`` finds no error, ``qemu-img info`` reports the same image as
qemu-img's own overlay of the same backing (size, backing file and format,
cluster size, refcount width), and the file is new and private.
"""
from __future__ import annotations

import json
import os
import stat
import subprocess
from pathlib import Path

import pytest

from qdriver.qemuimg import overlay

FIELDS = ("format", "virtual-size", "cluster-size", "backing-filename",
          "backing-filename-format", "full-backing-filename")


def info(path: Path) -> dict[str, object]:
    out = subprocess.run(["qemu-img", "info", "--output=json", str(path)], check=True,
                         capture_output=True, text=True).stdout
    raw: dict[str, object] = json.loads(out)
    specific = raw.get("format-specific", {})
    assert isinstance(specific, dict)
    return {**{k: raw.get(k) for k in FIELDS}, "specific": specific.get("data")}


@pytest.mark.parametrize("fmt,size", [("qcow2", 100 << 20), ("raw", 3 << 30),
                                      ("qcow2", (1 << 40) + 4096)])
def test_an_overlay_is_what_qemu_img_makes(tmp_path: Path, fmt: str, size: int) -> None:
    base = tmp_path / f"base.{fmt}"
    subprocess.run(["qemu-img", "create", "-q", "-f", fmt, str(base), str(size)], check=True)
    theirs, ours = tmp_path / "theirs.qcow2", tmp_path / "ours.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", str(base), "-F", fmt,
                    str(theirs)], check=True)
    overlay.write(ours, str(base), fmt)
    subprocess.run(["qemu-img", "check", "-q", str(ours)], check=True)
    assert info(ours) == info(theirs)
    assert stat.S_IMODE(os.stat(ours).st_mode) == 0o600


def test_an_overlay_never_replaces_a_file(tmp_path: Path) -> None:
    base = tmp_path / "base.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(base), "1M"], check=True)
    there = tmp_path / "there"
    there.write_text("someone's")
    with pytest.raises(FileExistsError):
        overlay.write(there, str(base), "qcow2")
    assert there.read_text() == "someone's"
