"""Carry out a fork: the overlays of each new domain.

The source domain's job holds its lock throughout (its snapshot and files stay
as planned).  Each fork's overlays are recorded for removal in the source's
journal before they are made; once the new domain is defined it names them, so
from then on they are its files.  The new domain then starts like a restore
(`revert_exec.restore`), in a job of its own.
"""
from __future__ import annotations

from .. import qemuimg, runas
from ..errors import OperationFailedError
from ..job import Job, JobView
from . import actions
from .fork_plan import ForkPlan, plan_fork
from .memsave import check_not_owned
from .transaction import Transaction


def plan(job: JobView, snapshot: str, names: list[str], taken: set[str]) -> ForkPlan:
    """What forking ``snapshot`` of the job's domain into ``names`` would do."""
    return plan_fork(job.tree.get(snapshot), names, taken)


async def create_overlays(txn: Transaction, job: Job, the_plan: ForkPlan,
                          name: str) -> dict[str, tuple[str, str]]:
    """Fork ``name``'s new overlays, ``{target: (file, format)}``."""
    sources: dict[str, tuple[str, str]] = {}
    for target, image, fmt in the_plan.images:
        path = the_plan.overlay(name, target)
        check_not_owned(path, f"overlay of disk '{target}' of fork '{name}'",
                        job.paths.state_dir)
        undo = txn.on_undo(actions.remove_file(path, "fork overlay"))
        try:
            await qemuimg.create_overlay(path, image, fmt)
        except FileExistsError:
            txn.discard(undo)  # someone else's file
            raise OperationFailedError(f"fork overlay '{path}' already exists") from None
        runas.hand_over(job.policy.qemu_user, path)
        sources[target] = (path, "qcow2")
    return sources


__all__ = ["plan", "create_overlays"]
