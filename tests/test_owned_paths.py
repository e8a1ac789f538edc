"""qdriver's own directories are never a target for user files (memory, overlays, saves)."""
from __future__ import annotations

import os
from functools import partial
from pathlib import Path

import anyio
import pytest

from qdriver.paths import owner_dir, runtime_base
from qdriver.runstatus import DomainState

from .helpers import MakeDomain, run_cli


def files_under(path: Path) -> set[Path]:
    return {p for p in path.rglob("*") if p.is_file()}


async def test_state_and_runtime_dirs_are_refused_as_targets(booted: MakeDomain, state_dir: Path,
                                                             tmp_path: Path) -> None:
    dom = await booted()
    domain_dir = dom.paths.dir
    link = tmp_path / "innocent"
    link.symlink_to(domain_dir)  # a link into the state dir is inside it too
    targets = {
        "memory file": [("--memspec", f"file={domain_dir}/status.json.new"),
                        ("--diskspec", f"vda,file={tmp_path}/ok0.qcow2")],
        "memory file ": [("--memspec", f"file={link}/x.mem"),
                         ("--diskspec", f"vda,file={tmp_path}/ok1.qcow2")],
        "overlay of disk 'vda'": [("--diskspec", f"vda,file={domain_dir}/snapshots/o.qcow2"),
                                  ("--disk-only", "")],
        "overlay of disk 'vda' ": [("--diskspec", f"vda,file={dom.paths.sockets}/o.qcow2"),
                                   ("--disk-only", "")],
    }
    before = files_under(domain_dir)
    for i, (what, opts) in enumerate(targets.items()):
        args = [a for pair in opts for a in pair if a]
        result = await anyio.to_thread.run_sync(partial(
            run_cli, state_dir, "snapshot-create-as", "guest", f"s{i}", *args, check=False))
        err = result.stderr.decode()
        assert result.returncode == 1, err
        assert f"{what.strip()} '" in err and "inside qdriver's own directory" in err, err
        assert "Traceback" not in err
    save = await anyio.to_thread.run_sync(lambda: run_cli(
        state_dir, "save", "guest", str(domain_dir / "domain.xml.save"), check=False))
    assert save.returncode == 1 and "inside qdriver's own directory" in save.stderr.decode()
    assert files_under(domain_dir) == before, "a refused target left a file"
    assert not list(tmp_path.glob("ok*.qcow2")), "a refused snapshot left an overlay"
    assert dom.list_snapshots() == []
    assert (await dom.get_state())[0] == DomainState.RUNNING
    # the managed save is qdriver's own file in the state dir, and allowed
    await dom.managed_save()
    assert dom.has_managed_save()
    await dom.start()
    await dom.destroy()


@pytest.mark.no_qemu
def test_owner_dir_resolves_links_and_knows_both_roots(tmp_path: Path) -> None:
    state = tmp_path / "state"
    (state / "domains" / "d").mkdir(parents=True)
    assert owner_dir(state / "domains" / "d" / "x", state) == state / "domains"
    assert owner_dir(state / "elsewhere.qcow2", state) is None
    assert owner_dir(tmp_path / "x.mem", state) is None
    assert owner_dir(runtime_base() / "abc" / "q.sock", state) == runtime_base()
    os.symlink(state / "domains" / "d", tmp_path / "l")
    assert owner_dir(tmp_path / "l" / "x", state) == state / "domains"
