"""Moving a running domain to another host (``virsh migrate``, ``domjobabort``): the
domain's methods, a mixin of `Domain`, over `qdriver.migrate`."""
from __future__ import annotations

from contextlib import AbstractAsyncContextManager
from typing import Any, Protocol

from .durable import held_elsewhere
from .errors import OperationInvalidError
from .job import Job
from .launch.runtime import Runtime
from .migrate import send, uri
from .migrate.send import MigrateFlags, MigrateReport
from .paths import DomainPaths
from .progress import ProgressFn


class _Undefining(Protocol):
    async def undefine(self, dom: Any, snapshots_metadata: bool = False) -> None: ...


class Migrating:
    """A domain's migration to another host or state directory."""

    name: str
    paths: DomainPaths
    runtime: Runtime

    def job(self, lock_timeout: float | None = None) -> AbstractAsyncContextManager[Job]:
        raise NotImplementedError  # pragma: no cover - `Domain.job` is the one used

    async def migrate(self, dest_uri: str, flags: MigrateFlags = MigrateFlags(),
                      progress: ProgressFn | None = None) -> MigrateReport:
        """Move the running guest to ``dest_uri`` (`qdriver.migrate.uri`): it runs
        there, its QEMU here stops; with ``flags.undefine_source`` this host forgets
        the domain (its snapshot metadata too, as the files stay here).

        :raise InvalidArgError: a bad URI, or a guest qdriver cannot migrate yet.
        :raise OperationAbortedError: `abort_job` asked, or the destination failed;
            the guest runs here as before and the destination keeps nothing.
        """
        dest = uri.parse(dest_uri)
        async with self.job() as job:
            report = await send.migrate(job, dest, flags, progress)
        if flags.undefine_source:
            host: _Undefining = getattr(self, "driver")  # noqa: B009 (`Domain.driver`)
            await host.undefine(self, snapshots_metadata=True)
        return report

    def abort_job(self) -> None:
        """``virsh domjobabort``: ask the process migrating this domain to stop; it
        takes back what it did (the guest runs on here).

        :raise OperationInvalidError: the domain does not run, or no process holds
            it for a job (libvirt's "no job is active on the domain").
        """
        if self.runtime.peek() is None:
            raise OperationInvalidError("domain is not running")
        if not held_elsewhere(self.paths.lock):
            raise OperationInvalidError("no job is active on the domain")
        self.paths.dir.joinpath(send.ABORT_FILE).touch()  # a job holds the domain: ask it


__all__ = ["Migrating"]
