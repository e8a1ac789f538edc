"""Prepare and claim the domain's standby QEMU for its next template revert.

After a template revert the domain gets a standby (`qdriver.launch.standby`):
a QEMU spawned for the same snapshot, on new overlays, waiting in
``-incoming defer``.  Preparing it costs the revert a few milliseconds (the
overlays, the checks, a spawn that does not wait for QEMU); the next revert
to that snapshot claims it and skips QEMU's start-up, most of its time.

A standby is claimed only by a revert whose plan has the same basis: the
snapshot's definition (but for the generation ID), its overlays' images and
the memory and template files, each by inode, size and modification time.
A standby that does not fit, or whose QEMU exited, is discarded and the
revert starts a QEMU as usual.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import secrets
import time

from .. import qemuimg, qmp, runas
from ..errors import FormatError, QDriverError
from ..job import Job, storable_definition
from ..launch import standby
from ..launch.standby import StandbyRecord
from ..launch.start import qemu_command
from ..memory import memfile
from ..progress import ProgressFn, ProgressMeter
from ..testing import faults
from . import actions
from .revert_plan import RevertPlan, standby_problem
from .shared import free_overlay_name
from .transaction import Transaction

log = logging.getLogger("qdriver")


def usable(plan: RevertPlan) -> bool:
    """Whether a revert by ``plan`` can use a standby: a template revert to a
    snapshot, the guest running or paused afterwards, nothing a second QEMU
    could not have while the first runs (`standby_problem`)."""
    return plan.mechanism == "incoming" and bool(plan.template_ram) and bool(plan.name) \
        and plan.state != "shutoff" and standby_problem(plan.definition) is None


def basis(plan: RevertPlan, job: Job) -> str:
    """What a standby for ``plan`` was made from, as one digest."""
    files = [plan.memory_file, plan.template_ram, *(image for _, image, _ in plan.overlays)]
    user = job.policy.qemu_user
    raw = json.dumps([plan.name, plan.definition.xml_but_genid(), list(plan.overlays),
                      files, [_identity(f) for f in files], user.name if user else None])
    return hashlib.sha256(raw.encode()).hexdigest()


def _identity(path: str | None) -> list[int] | None:
    try:
        st = os.stat(path) if path else None
    except OSError:
        return None
    return [st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns] if st else None


async def prepare(job: Job, plan: RevertPlan, load: bool = False) -> None:
    """Spawn a standby for the next revert by a plan like ``plan``; with ``load`` wait
    until it is up and has loaded the memory file, else return at once.  A failure
    only costs the next revert its head start: it is logged and whatever was made
    is removed."""
    paths = job.paths
    rec = StandbyRecord(secrets.token_hex(4), plan.name, basis(plan, job))
    stamp = int(time.time())
    rec.overlays = {t: free_overlay_name(image, stamp) for t, image, _ in plan.overlays}
    try:
        standby.write(paths, rec)  # before any file it names exists
        faults.point("standby:recorded")
        for target, image, fmt in plan.overlays:
            await qemuimg.create_overlay(rec.overlays[target], image, fmt)
            runas.hand_over(job.policy.qemu_user, rec.overlays[target])
        # a generation ID of its own: ``plan`` may be the revert just done, whose
        # guest runs with the plan's
        definition = plan.definition.with_new_genid().with_disk_sources(
            {t: (p, "qcow2") for t, p in rec.overlays.items()})
        command = qemu_command(definition, paths.in_slot(rec.slot), job.policy, incoming=True,
                               ram_template=plan.template_ram)
        rec.definition, rec.accel = storable_definition(definition), command.accel
        rec.ram_template, rec.emulator, rec.spawned = command.ram_template, command.emulator, True
        standby.write(paths, rec)  # spawned: from here its exit file finds it
        job.runtime.spawn_ahead(command, rec.slot)
        faults.point("standby:spawned")
        if load:
            await load_ahead(job, rec, plan.memory_file or "")
            rec.loaded = True
            standby.write(paths, rec, durable=False)  # lost, it is loaded again at use
    except (QDriverError, OSError) as e:
        log.warning("domain '%s': no standby QEMU for the next revert to '%s': %s",
                    job.name, plan.name, e)
        await standby.discard(paths)


async def load_ahead(job: Job, rec: StandbyRecord, memory_file: str,
                     progress: ProgressFn | None = None) -> qmp.Monitor:
    """Connect to the standby (once it is up) and have it load ``memory_file``,
    unless it has; its monitor stays open for the job."""
    mon = await job.connect_ahead(rec)
    if not rec.loaded:
        await memfile.load(mon, memory_file, ProgressMeter("load", progress),
                           ignore_shared=True)
    return mon


async def ensure(job: Job, plan: RevertPlan) -> None:
    """A loaded standby for the next revert by ``plan``: the one the domain has if it
    fits, else a new one."""
    rec = _fitting(job, plan)
    if rec is None:
        await standby.discard(job.paths)
        await prepare(job, plan, load=True)
    elif not rec.loaded:
        await load_ahead(job, rec, plan.memory_file or "")
        rec.loaded = True
        standby.write(job.paths, rec, durable=False)


def _fitting(job: Job, plan: RevertPlan) -> StandbyRecord | None:
    """The domain's standby if it fits ``plan`` and its QEMU lives."""
    try:
        rec = standby.read(job.paths)
    except FormatError:
        return None  # a newer release's: left to it (`standby.discard` leaves it too)
    if rec is None or rec.snapshot != plan.name or rec.basis != basis(plan, job) \
            or not standby.alive(job.paths, rec):
        return None
    return rec


async def claim(job: Job, plan: RevertPlan, txn: Transaction) -> StandbyRecord | None:
    """The domain's standby, if it fits ``plan`` and its QEMU lives: from here the
    revert's journal takes it back on failure.  One that does not fit is discarded."""
    paths = job.paths
    rec = _fitting(job, plan)
    if rec is None:
        if paths.standby.exists():
            await standby.discard(paths)
        return None
    txn.on_undo(actions.discard_standby(rec.slot, list(rec.overlays.values())))
    paths.standby.unlink()
    return rec


__all__ = ["usable", "ensure", "basis", "prepare", "load_ahead", "claim"]
