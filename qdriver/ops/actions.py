"""Carry out a journal `Action`: the same code undoes a step in the failing process
and in the process that recovers from a dead one.

Every action is safe to run twice and safe to run when its side effect never
happened (the process may have died between recording the action and doing
the step), so each one checks before it acts: a file that is not there, a
QEMU that is gone, a migration that is not active, are all fine.
"""
from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any, Awaitable, Callable

import anyio

from .. import agent, process, qemuimg, qmp
from .. import journal as j
from ..blockdev.nodes import image_file, open_images
from ..durable import atomic_write, fsync_dir, fsync_path, locked, overwrite_file
from ..errors import NoDomainError, OperationFailedError
from ..job import Job, read_definition
from ..journal import Action
from ..launch import helpers, standby
from ..launch.runtime import Runtime, pid_from_file
from ..memory.header import mark_complete
from ..memory.template import move_ram
from ..paths import DomainPaths
from ..xml.domain import DomainDef

FORK_LOCK_WAIT = 30.0
"""How long taking back a fork waits for the fork's own domain lock."""
JOB_WAIT = 600.0
"""How long recovery waits for a QEMU job a dead process started (a snapshot save)."""


async def run(job: Job, action: Action) -> None:
    """Run one action on the job (its state, its QEMU if one runs)."""
    await ACTIONS[type(action.step)](job, action.step)


def dir_snapshot(directory: Path) -> dict[str, str]:
    """The ``*.xml`` files of a metadata directory, for a `RESTORE_DIR` action."""
    if not directory.is_dir():
        return {}
    return {f.name: f.read_text() for f in sorted(directory.glob("*.xml"))}


async def _remove_file(job: Job, args: j.RemoveFile) -> None:
    """Remove a file the operation made, unless the domain uses it by now: an
    overlay becomes QEMU's active layer the moment its transaction goes through,
    before the process can record that (and the definition follows it, see
    `_follow_overlays`, which a rollback runs first)."""
    path = args.path
    if path in await _images_in_use(job):
        raise OperationFailedError(f"'{path}' is in use by domain '{job.name}': kept")
    Path(path).unlink(missing_ok=True)


async def _images_in_use(job: Job) -> set[str]:
    """The images the definition names and every image the running QEMU has open."""
    used = {d.source for d in job.definition.disks if d.source}
    mon = await job.qemu()
    try:
        return used | (set((await open_images(mon)).nodes) if mon is not None else set())
    except (qmp.MonitorClosedError, qmp.MonitorConnectError):
        return used  # QEMU died during the operation


async def _restore_dir(job: Job, args: j.RestoreDir) -> None:
    """Put metadata files back: all of the directory's (``exact``), or the named
    ones (None: the file did not exist)."""
    directory = Path(args.path)
    files = args.files
    if directory.is_dir() and args.exact:
        for f in directory.glob("*.xml"):
            if f.name not in files:
                f.unlink()
    for name, content in files.items():
        if content is None:
            (directory / name).unlink(missing_ok=True)
        else:
            atomic_write(directory / name, content, sync_dir=False)
    if directory.is_dir():
        fsync_dir(directory)
    if directory == job.store.dir:
        job.forget_tree()


async def _write_definition(job: Job, args: j.WriteDefinition) -> None:
    job.save_definition(DomainDef.parse(args.xml))


async def _follow_overlays(job: Job, args: j.FollowOverlays) -> None:
    """Point the definition at each new overlay QEMU already writes to (a
    transaction that went through cannot be taken back; one QEMU refused
    changed nothing)."""
    mon = await job.qemu()
    wanted = args.overlays
    try:
        blocks = await mon.execute("query-block") if mon is not None else None
    except (qmp.MonitorClosedError, qmp.MonitorConnectError):
        blocks = None  # QEMU died during the operation
    if blocks is None:
        if wanted and args.switched:  # QEMU wrote into them until it died
            job.save_definition(job.definition.with_disk_sources(
                {t: (f, "qcow2") for t, f in wanted.items() if os.path.exists(f)}))
        return
    active = {_qdev_id(b.get("qdev", "")): image_file(b.get("inserted", {}))
              for b in blocks}
    if wanted is None:  # whatever QEMU writes to now (after a block-commit's pivot)
        wanted = {d.target: active[d.target] for d in job.definition.disks
                  if active.get(d.target) and active[d.target] != d.source}
    switched = {t: (f, qemuimg.header.read(f).format) for t, f in wanted.items()
                if active.get(t) == f}
    if switched:
        job.save_definition(job.definition.with_disk_sources(switched))


def _qdev_id(qdev: str) -> str:
    """``/machine/peripheral/vda/virtio-backend`` -> ``vda``."""
    parts = qdev.split("/")
    return parts[3] if len(parts) > 3 and parts[2] == "peripheral" else qdev


async def _resume_guest(job: Job, args: j.ResumeGuest) -> None:
    if await job.qemu() is not None:
        await job.ensure_running()


async def _cancel_migration(job: Job, args: j.CancelMigration) -> None:
    """Stop a migration to a file that its process no longer follows."""
    mon = await job.qemu()
    if mon is None:
        return
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        status = (await mon.execute("query-migrate")).get("status")
        if status in (None, "none", "completed", "failed", "cancelled"):
            return
        if status != "cancelling":
            await mon.execute("migrate_cancel")
        await anyio.sleep(0.02)


async def _wait_jobs(job: Job, args: j.WaitJobs) -> None:
    """Let qdriver's QEMU jobs a dead process started conclude, and dismiss them."""
    mon = await job.qemu()
    if mon is None:
        return
    deadline = time.monotonic() + JOB_WAIT
    while time.monotonic() < deadline:
        jobs = [j for j in await mon.execute("query-jobs")
                if str(j.get("id", "")).startswith("qdriver-")]
        for entry in jobs:
            if entry.get("status") == "concluded":
                await mon.execute("job-dismiss", {"id": entry["id"]})
        if all(j.get("status") == "concluded" for j in jobs):
            return
        await anyio.sleep(0.05)


async def _qmp(job: Job, args: j.Qmp) -> None:
    mon = await job.qemu()
    if mon is not None:
        await mon.execute(args.command, args.arguments or None)


async def _qmp_job(job: Job, args: j.QmpJob) -> None:
    mon = await job.qemu()
    if mon is not None:
        await qmp.run_job(mon, args.command, args.arguments,
                          f"qdriver-undo-{int(time.time() * 1000)}", 60)


async def _hmp(job: Job, args: j.Hmp) -> None:
    mon = await job.qemu()
    if mon is not None:
        await mon.hmp(args.command)


async def _qemu_img_snapshot_delete(job: Job, args: j.QemuImgSnapshotDelete) -> None:
    if Path(args.image).exists():
        await qemuimg.snapshot_delete(args.image, args.name)


async def _thaw(job: Job, args: j.Thaw) -> None:
    if await job.qemu() is not None:
        await agent.fsthaw(Path(args.path))


async def _stop_qemu(job: Job, args: j.StopQemu) -> None:
    """Stop the QEMU the operation started, recorded or not yet."""
    if job.record is not None:
        await job.stop(args.reason)
        return
    pid = pid_from_file(job.paths.pidfile)
    if pid is not None and pid.pid != os.getpid() and \
            process.is_alive(pid, str(job.paths.pidfile)):
        await process.terminate(pid, grace=1.0)
    await process.kill_spawned(job.paths.exitfile)  # one that wrote no pidfile yet
    await helpers.stop(job.paths)
    job.runtime.cleanup()


async def _discard_fork(job: Job, args: j.DiscardFork) -> None:
    """Stop a fork's QEMU (recorded or not yet) and remove the fork's domain, under
    its lock; a domain of that name with another uuid is not this fork's."""
    paths = DomainPaths.of(job.paths.state_dir, args.name)
    try:
        async with locked(paths.lock, FORK_LOCK_WAIT, f"domain '{args.name}'",
                          create_dir=False):
            try:
                read_definition(paths, args.name, args.uuid)
            except NoDomainError:
                return
            runtime = Runtime(paths)
            rec = await runtime.reconcile()
            if rec is not None:
                await runtime.stop(rec, "destroyed", grace=0.0)
            await process.kill_spawned(paths.exitfile)  # spawned, its record not yet written
            await helpers.stop(paths)
            runtime.cleanup()
            paths.remove_files()
    except (FileNotFoundError, NotADirectoryError):
        return  # never defined, or removed already
    paths.remove_dir()


async def _discard_standby(job: Job, args: j.DiscardStandby) -> None:
    """Kill a claimed standby's QEMU by its slot and remove its overlays (and its
    record, if a dead process left it)."""
    await standby.remove(job.paths, args.slot, args.overlays)


async def _move_ram(job: Job, args: j.MoveRam) -> None:
    """The guest's RAM file becomes the template's (once: a second run finds it moved)."""
    if not os.path.exists(args.target):
        await anyio.to_thread.run_sync(move_ram, Path(args.source), args.target)


async def _restore_file(job: Job, args: j.RestoreFile) -> None:
    """Put the file back from its copy, in place (QEMU may hold it open)."""
    if os.path.exists(args.backup):
        await anyio.to_thread.run_sync(overwrite_file, args.backup, args.target)
        os.unlink(args.backup)


async def _complete_memory_file(job: Job, args: j.CompleteMemoryFile) -> None:
    """Mark a memory file whose migration completed as complete (a roll-forward)."""
    path = args.path
    if not os.path.exists(path):
        return
    if args.template_ram and os.path.exists(args.template_ram):
        fsync_path(args.template_ram)
    fd = os.open(path, os.O_RDWR)
    try:
        mark_complete(fd)
    finally:
        os.close(fd)


ACTIONS: dict[type, Callable[[Job, Any], Awaitable[None]]] = {
    j.RemoveFile: _remove_file,
    j.RestoreDir: _restore_dir,
    j.WriteDefinition: _write_definition,
    j.FollowOverlays: _follow_overlays,
    j.ResumeGuest: _resume_guest,
    j.CancelMigration: _cancel_migration,
    j.WaitJobs: _wait_jobs,
    j.Qmp: _qmp,
    j.QmpJob: _qmp_job,
    j.Hmp: _hmp,
    j.QemuImgSnapshotDelete: _qemu_img_snapshot_delete,
    j.Thaw: _thaw,
    j.StopQemu: _stop_qemu,
    j.CompleteMemoryFile: _complete_memory_file,
    j.MoveRam: _move_ram,
    j.DiscardFork: _discard_fork,
    j.DiscardStandby: _discard_standby,
    j.RestoreFile: _restore_file,
}
"""The code that runs each kind of journal record (every kind in `journal.KINDS`)."""


# -- constructors, so executions name what they record ----------------------------

def remove_file(path: str, what: str = "file") -> Action:
    return Action(j.RemoveFile(path), f"{what} {path}")


def restore_dir(directory: Path, what: str) -> Action:
    return Action(j.RestoreDir(str(directory), dict(dir_snapshot(directory)), True), what)


def restore_files(directory: Path, names: list[str], what: str,
                  new: list[str] | None = None) -> Action:
    """Only these metadata files (``NAME.xml``) as they are now, and the files
    ``new`` (which must not exist after an undo): a change that touches two files
    need not copy every snapshot into the journal."""
    files: dict[str, str | None] = {}
    for name in dict.fromkeys(names):
        path = directory / f"{name}.xml"
        files[path.name] = path.read_text() if path.exists() else None
    files.update(dict.fromkeys(new or ()))
    return Action(j.RestoreDir(str(directory), files, False), what)


def write_definition(definition: DomainDef, what: str = "the domain definition") -> Action:
    return Action(j.WriteDefinition(definition.to_xml()), what)


def follow_overlays(overlays: dict[str, str], switched: bool = False) -> Action:
    """The definition names the overlays QEMU writes; ``switched``: QEMU took them (a
    QEMU that died since wrote into them, so they stay named even without it)."""
    return Action(j.FollowOverlays(overlays, switched),
                  "the definition's switch to the new overlays")


def complete_memory_file(path: str, template_ram: str | None = None) -> Action:
    return Action(j.CompleteMemoryFile(path, template_ram),
                  f"the completion of memory file {path}")


def write_metadata_files(directory: Path, files: dict[str, str], what: str) -> Action:
    """Write these metadata files (``NAME.xml``: text) as given (a roll-forward)."""
    return Action(j.RestoreDir(str(directory), dict(files), False), what)


def follow_disks() -> Action:
    return Action(j.FollowOverlays(None), "the definition's disks, as QEMU uses them")


def resume_guest() -> Action:
    return Action(j.ResumeGuest(), "the guest pause")


def cancel_migration() -> Action:
    return Action(j.CancelMigration(), "the migration to the memory file")


def wait_jobs() -> Action:
    return Action(j.WaitJobs(), "QEMU jobs in progress")


def qmp_command(what: str, command: str, arguments: dict[str, Any]) -> Action:
    return Action(j.Qmp(command, arguments), what)


def qmp_job(what: str, command: str, arguments: dict[str, Any]) -> Action:
    return Action(j.QmpJob(command, arguments), what)


def hmp(what: str, command: str) -> Action:
    return Action(j.Hmp(command), what)


def qemu_img_snapshot_delete(image: str, name: str) -> Action:
    return Action(j.QemuImgSnapshotDelete(image, name), f"internal snapshot in {image}")


def thaw(path: Path) -> Action:
    return Action(j.Thaw(str(path)), "the guest filesystem freeze")


def restore_file(backup: str, target: str, what: str) -> Action:
    return Action(j.RestoreFile(backup, target), what)


def move_ram_file(source: Path, target: str) -> Action:
    return Action(j.MoveRam(str(source), target), f"the move of the guest's RAM to {target}")


def stop_qemu(reason: str, what: str = "the QEMU the operation started") -> Action:
    return Action(j.StopQemu(reason), what)


def discard_fork(name: str, uuid: str) -> Action:
    return Action(j.DiscardFork(name, uuid), f"fork '{name}'")


def discard_standby(slot: str, overlays: list[str]) -> Action:
    return Action(j.DiscardStandby(slot, overlays), f"standby QEMU {slot}")


__all__ = ["Action", "run", "ACTIONS", "dir_snapshot"]
