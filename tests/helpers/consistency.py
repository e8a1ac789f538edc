"""Nothing half-done: what a state dir and a work dir must look like between
operations, read as text and with qemu-img so that a bug in qdriver's own
parsing cannot hide a problem."""
from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

from .images import backing_chain


def named_files(state_dir: Path, domain: str = "guest") -> set[str]:
    """Every file the definition or the snapshot metadata names (a template's RAM
    file included)."""
    dom = state_dir / "domains" / domain
    texts = [(dom / "domain.xml").read_text()]
    texts += [f.read_text() for f in (dom / "snapshots").glob("*.xml")] \
        if (dom / "snapshots").is_dir() else []
    return {m for t in texts for m in re.findall(r"(?:file|path|ram)='([^']+)'", t)}


def standby_files(state_dir: Path, domain: str = "guest") -> set[str]:
    """The overlays the standby QEMU's record names: like a journal's, written before
    they are made, so they may be missing; nothing else may be left."""
    record = state_dir / "domains" / domain / "standby.json"
    return set(json.loads(record.read_text())["overlays"].values()) if record.exists() \
        else set()


def chain_or_nothing(image: str) -> set[str]:
    """The image's backing chain; nothing if qemu-img cannot read it."""
    try:
        return set(backing_chain(image))
    except subprocess.CalledProcessError:
        return set()


def assert_consistent(state_dir: Path, work: Path, point: str, domain: str = "guest") -> None:
    """No journal; every file named exists; every file in ``work`` is named or backs
    a named image; every memory file named is complete."""
    dom = state_dir / "domains" / domain
    assert not (dom / "journal.json").exists(), point
    named = {n for n in named_files(state_dir, domain) if n.startswith(str(work))}
    missing = [n for n in named if not Path(n).exists()]
    assert missing == [], f"{point}: metadata names missing files {missing}"
    kept = set().union(*(chain_or_nothing(n) for n in named)) | named \
        | standby_files(state_dir, domain)
    stray = [str(f) for f in work.iterdir() if f.is_file() and str(f) not in kept]
    assert stray == [], f"{point}: files nothing names: {stray}"
    for n in named:
        if n.endswith(".mem"):
            assert Path(n).read_bytes()[:16] == b"LibvirtQemudSave", f"{point}: {n} partial"
