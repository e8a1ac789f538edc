"""Snapshot commands: snapshot-create(-as), -list, -info, -plan, ... as virsh has them."""
from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import fields
from pathlib import Path

from ..domain import Domain
from ..driver import Driver
from ..errors import InvalidArgError, QDriverError
from ..ops.create_plan import CreateFlags, CreatePlan, refusal_json
from ..ops.delete_plan import DeletePlan
from ..snapshots.handle import Snapshot
from ..snapshots.tree import SnapshotTree
from ..xml.snapshot import SnapshotDef, SnapshotDisk
from .registry import ProgressPrinter, command, domain_arg, format_fields, format_table, out

CREATE_FLAGS = {f.name: "--" + f.name.replace("_", "-") for f in fields(CreateFlags)}
CREATE_FLAGS["reuse_ext"] = "--reuse-external"
STATES = ("running", "paused", "shutoff", "pmsuspended")


def _flag_args(p: argparse.ArgumentParser) -> None:
    for dest, opt in CREATE_FLAGS.items():
        p.add_argument(opt, dest=dest, action="store_true")


def _flags(a: argparse.Namespace) -> CreateFlags:
    return CreateFlags(**{k: getattr(a, k) for k in CREATE_FLAGS})


# -- building XML from --memspec / --diskspec ----------------------------------

def _spec(text: str, bare: str) -> dict[str, str]:
    """``[bare=]value[,key=value]...`` as a dict."""
    out: dict[str, str] = {}
    for i, part in enumerate(text.split(",")):
        key, eq, value = part.partition("=")
        if not eq:
            if i != 0:
                raise InvalidArgError(f"unable to parse spec '{text}'")
            key, value = bare, key
        out[key] = value
    return out


def snapshot_from_args(name: str | None, description: str | None, memspec: str | None,
                       diskspecs: list[str]) -> SnapshotDef:
    """The ``<domainsnapshot>`` that virsh snapshot-create-as would build."""
    snap = SnapshotDef(name=name, description=description)
    if memspec:
        mem = _spec(memspec, "file")
        snap.memory = mem.get("snapshot") or ("external" if "file" in mem else None)
        snap.memory_file = mem.get("file")
    for spec in diskspecs:
        d = _spec(spec, "name")
        snap.disks.append(SnapshotDisk(d["name"], d.get("snapshot"), d.get("stype"),
                                       d.get("file"), d.get("driver")))
    return SnapshotDef.parse(snap.format())  # validate as if it came in as XML


# -- create ---------------------------------------------------------------------

def _setup_create(p: argparse.ArgumentParser) -> None:
    domain_arg(p)
    p.add_argument("file", nargs="?", help="snapshot XML (default: an empty <domainsnapshot/>)")
    _flag_args(p)


@command("snapshot-create", "create a snapshot from XML", _setup_create)
async def cmd_snapshot_create(drv: Driver, a: argparse.Namespace) -> int:
    dom = drv.lookup(a.domain)
    xml = Path(a.file).read_bytes() if a.file else b"<domainsnapshot/>"
    snap = await dom.snapshot_create_xml(xml, progress=ProgressPrinter(f"snapshot {a.domain}"),
                                         **vars(_flags(a)))
    src = f" from '{a.file}'" if a.file else ""
    out(f"Domain snapshot {snap.name} {'defined' if a.redefine else 'created'}{src}")
    return 0


def _setup_create_as(p: argparse.ArgumentParser) -> None:
    domain_arg(p)
    p.add_argument("name", nargs="?", help="snapshot name")
    p.add_argument("--name", dest="name_opt")
    p.add_argument("--description")
    p.add_argument("--memspec", help="[file=]FILE[,snapshot=TYPE]")
    p.add_argument("--diskspec", action="append", default=[],
                   help="DISK[,snapshot=TYPE][,driver=TYPE][,stype=TYPE][,file=FILE]")
    p.add_argument("--print-xml", action="store_true", help="print the XML, create nothing")
    _group_args(p)
    _flag_args(p)


def _group_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--group", metavar="NAME",
                   help="snapshot NAME of every domain named (DOM DOM...) at one instant")
    p.add_argument("more", nargs="*", help=argparse.SUPPRESS)


def _group_domains(drv: Driver, a: argparse.Namespace, second: str | None) -> list[Domain]:
    """``--group NAME DOM DOM...``: every domain named; else an argument too many."""
    if not a.group:
        if a.more:
            raise InvalidArgError(f"unexpected argument '{a.more[0]}'")
        return []
    return [drv.lookup(n) for n in (a.domain, *([second] if second else []), *a.more)]


@command("snapshot-create-as", "create a snapshot from a set of arguments", _setup_create_as)
async def cmd_snapshot_create_as(drv: Driver, a: argparse.Namespace) -> int:
    group = _group_domains(drv, a, a.name)
    if group:
        snap_def = snapshot_from_args(a.group, a.description, a.memspec, a.diskspec)
        for taken in await drv.snapshot_group(a.group, group, snap_def.format(),
                                              disk_only=a.disk_only):
            out(f"Domain snapshot {taken.snapshot} of {taken.domain} created")
        return 0
    snap_def = snapshot_from_args(a.name or a.name_opt, a.description, a.memspec, a.diskspec)
    xml = snap_def.format()
    if a.print_xml:
        sys.stdout.write(xml)
        return 0
    snap = await drv.lookup(a.domain).snapshot_create_xml(
        xml, progress=ProgressPrinter(f"snapshot {a.domain}"), **vars(_flags(a)))
    out(f"Domain snapshot {snap.name} created")
    return 0


# -- plan -----------------------------------------------------------------------

def _setup_plan(p: argparse.ArgumentParser) -> None:
    domain_arg(p)
    p.add_argument("file", nargs="?", help="snapshot XML (default: an empty <domainsnapshot/>)")
    p.add_argument("--memspec")
    p.add_argument("--diskspec", action="append", default=[])
    p.add_argument("--name", dest="name_opt")
    p.add_argument("--assume-state", choices=STATES,
                   help="plan for this domain state instead of the current one")
    p.add_argument("--json", action="store_true")
    _flag_args(p)


@command("snapshot-plan", "show what a snapshot request would do, without doing it",
         _setup_plan)
async def cmd_snapshot_plan(drv: Driver, a: argparse.Namespace) -> int:
    dom = drv.lookup(a.domain)
    try:
        if a.file:
            xml = Path(a.file).read_bytes()
        else:
            xml = snapshot_from_args(a.name_opt, None, a.memspec, a.diskspec).format().encode()
        plan = await dom.plan_snapshot(xml, _flags(a), a.assume_state)
    except QDriverError as e:
        if not a.json:
            raise
        out(json.dumps(refusal_json(e)))
        return 1
    out(json.dumps(plan.to_json(), indent=2) if a.json else describe_plan(plan))
    return 0


def describe_plan(plan: CreatePlan) -> str:
    """The plan for a person."""
    disks = ", ".join(f"{d.target} {d.snapshot}" + (f" -> {d.file}" if d.file else "")
                      for d in plan.disks) or "none"
    memory = plan.memory + (f" -> {plan.memory_file}" if plan.memory_file else "")
    rows = [("snapshot", plan.name), ("memory", memory), ("disks", disks),
            ("state", plan.state), ("guest pause", plan.pause), ("live", plan.live),
            ("steps", ", ".join(plan.steps)),
            ("guest afterwards", "running" if plan.resume else "not resumed"),
            ("libvirt 12.8", "accepts this too" if plan.libvirt else "refuses this")]
    return "\n".join(f"{k + ':':<18}{v}" for k, v in rows)


# -- inspection -------------------------------------------------------------------

LIST_FLAGS = ("roots", "leaves", "no_leaves", "inactive", "active", "disk_only", "internal",
              "external", "topological")


def _setup_list(p: argparse.ArgumentParser) -> None:
    domain_arg(p)
    for flag in LIST_FLAGS:
        p.add_argument("--" + flag.replace("_", "-"), dest=flag, action="store_true")
    p.add_argument("--parent", action="store_true", help="add a Parent column")
    p.add_argument("--tree", action="store_true")
    p.add_argument("--name", action="store_true", help="names only")
    p.add_argument("--from", dest="start", metavar="SNAPSHOT")
    p.add_argument("--current", action="store_true", help="start from the current snapshot")
    p.add_argument("--descendants", action="store_true")


def _warn_load_errors(dom: Domain) -> None:
    """What loading the metadata found wrong (and what was assumed), on stderr."""
    for err in dom.snapshot_load_errors():
        print(f"warning: {err}", file=sys.stderr)


@command("snapshot-list", "list snapshots of a domain", _setup_list)
async def cmd_snapshot_list(drv: Driver, a: argparse.Namespace) -> int:
    dom = drv.lookup(a.domain)
    start = dom.current_snapshot().name if a.current else a.start
    if start is not None and a.roots:
        raise InvalidArgError("--roots is not compatible with --from or --current")
    # virsh: with --tree, --from implies --descendants and shows the start itself
    snaps = dom.list_snapshots(start=start, descendants=a.descendants or a.tree,
                               **{f: getattr(a, f) for f in LIST_FLAGS})
    if a.tree and start is not None:
        snaps.insert(0, dom.snapshot_lookup(start))
    tree = dom.snapshot_tree()
    _warn_load_errors(dom)
    if a.tree:
        sys.stdout.write(format_tree(tree, [s.name for s in snaps]))
    elif a.name:
        for s in snaps:
            out(s.name)
    else:
        header = ["Name", "Creation Time", "State"] + (["Parent"] if a.parent else [])
        rows = []
        for s in snaps:
            d = tree.get(s.name)
            row = [s.name, _time(d.creation_time), d.state or ""]
            if a.parent:
                row.append(tree.parent(s.name) or "")
            rows.append(tuple(row))
        out(format_table(header, rows))
    return 0


def _time(epoch: int | None) -> str:
    if epoch is None:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S %z", time.localtime(epoch))


def format_tree(tree: SnapshotTree, names: list[str]) -> str:
    """virsh's ``--tree`` layout."""
    wanted = set(names)
    lines: list[str] = []

    def walk(name: str, prefix: str) -> None:
        kids = [k for k in tree.children(name) if k in wanted]
        for i, kid in enumerate(kids):
            last = i == len(kids) - 1
            lines.append(f"{prefix}  |")
            lines.append(f"{prefix}  +- {kid}")
            walk(kid, prefix + ("    " if last else "  | "))

    roots = [n for n in names if tree.parent(n) not in wanted]
    for root in roots:
        lines.append(root)
        walk(root, "")
        lines.append("")
    return "\n".join(lines).rstrip("\n") + "\n" if lines else ""


def _setup_snap(p: argparse.ArgumentParser) -> None:
    domain_arg(p)
    p.add_argument("snapshot", nargs="?")
    p.add_argument("--current", action="store_true", help="use the current snapshot")


def _pick(drv: Driver, a: argparse.Namespace) -> Snapshot:
    dom = drv.lookup(a.domain)
    if a.current or not a.snapshot:
        return dom.current_snapshot()
    return dom.snapshot_lookup(a.snapshot)


@command("snapshot-dumpxml", "dump the XML of a snapshot", _setup_snap)
async def cmd_snapshot_dumpxml(drv: Driver, a: argparse.Namespace) -> int:
    sys.stdout.write(_pick(drv, a).xml_desc())
    return 0


@command("snapshot-info", "snapshot information", _setup_snap)
async def cmd_snapshot_info(drv: Driver, a: argparse.Namespace) -> int:
    snap = _pick(drv, a)
    tree = snap.domain.snapshot_tree()
    d = tree.get(snap.name)
    rows = [("Name", snap.name), ("Domain", snap.domain.name),
            ("Current", "yes" if tree.current == snap.name else "no"),
            ("State", d.state or "-"), ("Location", "external" if d.is_external else "internal"),
            ("Parent", tree.parent(snap.name) or "-"),
            ("Children", str(len(tree.children(snap.name)))),
            ("Descendants", str(len(tree.children(snap.name, True)))), ("Metadata", "yes")]
    out(format_fields(rows))
    return 0


@command("snapshot-parent", "the name of a snapshot's parent", _setup_snap)
async def cmd_snapshot_parent(drv: Driver, a: argparse.Namespace) -> int:
    out(_pick(drv, a).parent().name)
    return 0


def _setup_current(p: argparse.ArgumentParser) -> None:
    domain_arg(p)
    p.add_argument("snapshot", nargs="?", help="make this snapshot the current one")
    p.add_argument("--name", action="store_true", help="print the name only")


@command("snapshot-current", "get or set the current snapshot", _setup_current)
async def cmd_snapshot_current(drv: Driver, a: argparse.Namespace) -> int:
    dom = drv.lookup(a.domain)
    if a.snapshot:
        await dom.snapshot_set_current(a.snapshot)
        out(f"Snapshot {a.snapshot} set as current")
        return 0
    snap = dom.current_snapshot()
    _warn_load_errors(dom)
    if a.name:
        out(snap.name)
    else:
        sys.stdout.write(snap.xml_desc())
    return 0


def _setup_delete(p: argparse.ArgumentParser) -> None:
    _setup_snap(p)
    p.add_argument("--metadata", action="store_true", help="delete metadata only")
    kids = p.add_mutually_exclusive_group()
    kids.add_argument("--children", action="store_true", help="delete its descendants too")
    kids.add_argument("--children-only", action="store_true",
                      help="delete its descendants only")
    p.add_argument("--plan", action="store_true",
                   help="list what would be committed, rebased, removed and kept; do nothing")
    p.add_argument("--json", action="store_true", help="with --plan: as JSON")


@command("snapshot-delete", "delete a snapshot", _setup_delete)
async def cmd_snapshot_delete(drv: Driver, a: argparse.Namespace) -> int:
    snap = _pick(drv, a)
    if a.plan:
        plan = await drv.lookup(a.domain).plan_delete(snap.name, a.metadata, a.children,
                                                      a.children_only)
        out(json.dumps(plan.to_json(), indent=1) if a.json else _describe_delete(plan))
        return 0
    await drv.lookup(a.domain).delete_snapshot(
        snap.name, a.metadata, a.children, a.children_only,
        progress=ProgressPrinter(f"snapshot {snap.name}"))
    if a.children_only:
        out(f"Domain snapshot {snap.name} children deleted")
    else:
        out(f"Domain snapshot {snap.name} deleted")
    return 0


def _describe_delete(plan: DeletePlan) -> str:
    """``snapshot-delete --plan`` for people."""
    lines = [f"delete snapshots: {', '.join(plan.names)}"]
    lines += [f"delete internal snapshot '{i.name}' in {i.image} "
              f"({'QMP snapshot-delete' if i.online else 'qemu-img snapshot -d'})"
              for i in plan.internal]
    for c in plan.commits:
        how = {"active": "block-commit (active, pivot)", "intermediate": "block-commit",
               "offline": "qemu-img commit"}[c.mode]
        lines.append(f"commit {c.top} into {c.base} ({how})")
        lines += [f"rebase {child} onto {c.base}" for child in c.rebase]
    lines += [f"remove {path}" for path in plan.remove]
    lines += [f"keep {image}: {why}" for image, why in plan.kept]
    if plan.metadata_only:
        lines.append("metadata only: no image is touched")
    return "\n".join(lines)


def _setup_revert(p: argparse.ArgumentParser) -> None:
    _setup_snap(p)
    state = p.add_mutually_exclusive_group()
    state.add_argument("--running", action="store_true", help="run the guest afterwards")
    state.add_argument("--paused", action="store_true", help="leave the guest paused")
    p.add_argument("--force", action="store_true", help="revert even where it is risky")
    p.add_argument("--plan", action="store_true",
                   help="print what the revert would do (JSON), do nothing")
    _group_args(p)


def _setup_fork(p: argparse.ArgumentParser) -> None:
    domain_arg(p)
    p.add_argument("snapshot", help="an external memory snapshot (a template forks fastest)")
    p.add_argument("names", nargs="+", metavar="newname", help="the new domains' names")


@command("fork", "start new domains from a domain's memory snapshot", _setup_fork)
async def cmd_fork(drv: Driver, a: argparse.Namespace) -> int:
    dom = drv.lookup(a.domain)
    for new in await dom.fork(a.snapshot, *a.names,
                              progress=ProgressPrinter(f"fork of {a.domain}")):
        out(f"Domain '{new.name}' forked from snapshot '{a.snapshot}' of '{a.domain}'")
    return 0


@command("snapshot-revert", "revert a domain to a snapshot", _setup_revert)
async def cmd_snapshot_revert(drv: Driver, a: argparse.Namespace) -> int:
    group = _group_domains(drv, a, a.snapshot)
    if group:
        await drv.revert_group(a.group, group, running=a.running, paused=a.paused)
        out(f"Domains {', '.join(d.name for d in group)} reverted to snapshot {a.group}")
        return 0
    snap = _pick(drv, a)
    dom = drv.lookup(a.domain)
    if a.plan:
        plan = await dom.plan_revert(snap.name, a.running, a.paused, a.force)
        out(json.dumps(plan.to_json(), indent=1))
        return 0
    await dom.revert_to_snapshot(snap.name, running=a.running, paused=a.paused, force=a.force,
                                 progress=ProgressPrinter(f"snapshot {a.domain}"))
    return 0
