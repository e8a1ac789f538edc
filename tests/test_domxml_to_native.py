"""domxml-to-native prints the QEMU command line a start really runs."""
from __future__ import annotations

import shlex
from pathlib import Path

import qdriver

from .helpers import MakeDomain, run_cli


async def test_native_argv_is_what_start_runs(make_domain: MakeDomain, state_dir: Path,
                                              tmp_path: Path) -> None:
    dom = await make_domain()
    printed = run_cli(state_dir, "domxml-to-native", "guest").stdout.decode()
    xml = tmp_path / "guest.xml"
    xml.write_text(dom.xml_desc(inactive=True))
    from_file = run_cli(state_dir, "domxml-to-native", "--format", "qemu-argv",
                        str(xml)).stdout.decode()
    assert from_file == printed
    await dom.start()
    try:
        rec = dom.runtime.peek()
        assert rec is not None
        ran = Path(f"/proc/{rec.pid}/cmdline").read_bytes().decode().split("\0")[:-1]
        assert shlex.split(printed) == ran
    finally:
        await dom.destroy()
    missing = run_cli(state_dir, "domxml-to-native", "nope", check=False)
    assert missing.returncode == 1 and b"no domain with matching name 'nope'" in missing.stderr
    assert isinstance(qdriver.Driver(state_dir).native_argv("guest"), list)
