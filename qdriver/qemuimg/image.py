"""The ``qemu-img`` operations qdriver needs, one coroutine each."""
from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from typing import Any

import anyio

from ..errors import OperationFailedError
from .overlay import write as write_overlay

StrPath = str | os.PathLike[str]


class QemuImgError(OperationFailedError):
    """``qemu-img`` exited non-zero."""

    def __init__(self, argv: list[str], stderr: str) -> None:
        super().__init__(f"qemu-img {argv[1] if len(argv) > 1 else ''} failed: "
                         f"{stderr.strip() or 'no message'}")
        self.argv = argv
        self.stderr = stderr


@dataclass(frozen=True)
class SnapshotInfo:
    """One internal snapshot inside a qcow2 image."""

    id: str
    name: str
    vm_state_size: int
    date_sec: int


@dataclass(frozen=True)
class ImageInfo:
    """What ``qemu-img info`` says about one image."""

    filename: str
    format: str
    virtual_size: int
    backing_filename: str | None
    backing_format: str | None
    snapshots: tuple[SnapshotInfo, ...]


def _binary() -> str:
    return shutil.which("qemu-img") or "qemu-img"


async def run(*args: StrPath) -> str:
    """Run ``qemu-img ARGS`` and return stdout, or raise `QemuImgError`."""
    argv = [_binary(), *map(str, args)]
    try:
        result = await anyio.run_process(argv, check=False)
    except FileNotFoundError as e:
        raise QemuImgError(argv, "qemu-img is not installed (package qemu-utils)") from e
    if result.returncode != 0:
        raise QemuImgError(argv, result.stderr.decode(errors="replace"))
    return result.stdout.decode()


def _snapshots(raw: list[dict[str, Any]] | None) -> tuple[SnapshotInfo, ...]:
    return tuple(SnapshotInfo(str(s["id"]), s["name"], int(s.get("vm-state-size", 0)),
                              int(s.get("date-sec", 0))) for s in raw or [])


async def info(path: StrPath, fmt: str | None = None) -> ImageInfo:
    """``qemu-img info`` of one image (``-U``: it may be in use by a running QEMU)."""
    args: list[StrPath] = ["info", "--output=json", "-U"]
    if fmt:
        args += ["-f", fmt]
    raw = json.loads(await run(*args, path))
    return ImageInfo(raw["filename"], raw["format"], int(raw["virtual-size"]),
                     raw.get("backing-filename"), raw.get("backing-filename-format"),
                     _snapshots(raw.get("snapshots")))


async def create_overlay(path: StrPath, backing: str, backing_fmt: str) -> None:
    """A new, empty qcow2 overlay of ``backing`` (mode 0600), written in this process
    (`qemuimg.overlay.write`); through ``qemu-img create`` only for what that does not lay out.

    :raise FileExistsError: something is at ``path`` already.
    """
    try:
        write_overlay(path, backing, backing_fmt)
    except ValueError:
        if os.path.lexists(path):
            raise FileExistsError(path) from None
        await create(path, "qcow2", backing=backing, backing_fmt=backing_fmt)


async def create(path: StrPath, fmt: str = "qcow2", size: int | None = None,
                 backing: StrPath | None = None, backing_fmt: str | None = None) -> None:
    """Create an image (an overlay when ``backing`` is given), mode 0600."""
    args: list[StrPath] = ["create", "-q", "-f", fmt]
    if backing is not None:
        args += ["-b", backing, "-F", backing_fmt or "qcow2"]
    args.append(path)
    if size is not None:
        args.append(str(size))
    old = os.umask(0o077)
    try:
        await run(*args)
    finally:
        os.umask(old)


async def check(path: StrPath, fmt: str = "qcow2") -> dict[str, Any]:
    """``qemu-img check`` result as a dict."""
    result: dict[str, Any] = json.loads(await run("check", "--output=json", "-f", fmt, path))
    return result


async def repair_leaks(path: StrPath, fmt: str = "qcow2") -> None:
    """Free the clusters a QEMU that died mid-write left allocated and unreferenced
    (``qemu-img check -r leaks``): harmless, but ``check`` reports them until freed.
    Real corruption is not touched; it raises `QemuImgError`."""
    await run("check", "-q", "-r", "leaks", "-f", fmt, path)


async def snapshot_list(path: StrPath) -> tuple[SnapshotInfo, ...]:
    """The internal snapshots of a qcow2 image."""
    return (await info(path, "qcow2")).snapshots


async def snapshot_create(path: StrPath, name: str) -> None:
    """``qemu-img snapshot -c NAME``."""
    await run("snapshot", "-q", "-c", name, path)


async def snapshot_apply(path: StrPath, name: str) -> None:
    """``qemu-img snapshot -a NAME``."""
    await run("snapshot", "-q", "-a", name, path)


async def commit(path: StrPath) -> None:
    """``qemu-img commit``: write ``path``'s data into its backing file (``-d``: the
    committed image is removed afterwards, so it is not emptied)."""
    await run("commit", "-q", "-d", "-f", "qcow2", path)


async def rebase_unsafe(path: StrPath, backing: StrPath, backing_fmt: str) -> None:
    """``qemu-img rebase -u``: only rewrite the backing file name (same data below)."""
    await run("rebase", "-u", "-f", "qcow2", "-b", backing, "-F", backing_fmt, path)


async def snapshot_delete(path: StrPath, name: str) -> None:
    """``qemu-img snapshot -d NAME``."""
    await run("snapshot", "-q", "-d", name, path)
