"""The pytest plugin, run by pytester in a separate pytest against the real guest."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Iterator

import pytest

from qdriver.paths import socket_root
from qdriver.testing.guestpool import qemu_pids

from .helpers import GuestImage, domain_xml, sha256
from .helpers.images import backing_of

FRESH_TESTS = r'''
import json, os
import pytest

def record(driver, domain):
    run = domain.runtime.peek()
    with open(os.environ["QD_RECORD"], "a") as f:
        f.write(json.dumps({"dir": str(driver.state_dir), "pid": os.getpid(),
                            "domain": domain.name, "qemu": run.pid,
                            "ahead": run.slot is not None}) + "\n")

LAST_SEEN = []  # the last counter each earlier test of this process saw

def check_fresh_and_dirty_it(console):
    first = int(console.wait(r"^COUNTER (\d+)\r?\n", 20).group(1))  # a whole line
    assert all(first < last for last in LAST_SEEN), \
        f"the counter started at {first}, past {LAST_SEEN}: the guest was not reset"
    console.write("cat /mnt/marker 2>/dev/null || echo NO-MARKER$((6*7))\n")
    console.wait(r"^NO-MARKER42", 20)
    console.write("echo dirty > /mnt/marker; sync; echo WROTE$((6*7))\n")
    console.wait(r"^WROTE42", 20)
    # the counter runs on past the reset point (its line may share one with the echo
    # of what was typed: "echo dirty > /mnCOUNTER 6")
    console.wait(rf"COUNTER {first + 5}\r?\n", 20)
    LAST_SEEN.append(first + 5)

@pytest.mark.parametrize("i", range(3))
def test_sync(qdriver_driver, qdriver_domain, qdriver_console, i):
    record(qdriver_driver, qdriver_domain)
    check_fresh_and_dirty_it(qdriver_console)

async def test_async(qdriver_driver, qdriver_domain, qdriver_console):
    record(qdriver_driver, qdriver_domain)
    await qdriver_console.wait_async(r"^COUNTER", 20)
    assert (await qdriver_domain.get_state())[0] == 1  # running, asked on this test's loop
    check_fresh_and_dirty_it(qdriver_console)
'''


@pytest.fixture
def plugin_env(pytester: pytest.Pytester, guest_image: GuestImage,
               monkeypatch: pytest.MonkeyPatch) -> Path:
    """A guest XML over the built image (the plugin only reads it), a record file."""
    xml = domain_xml(guest_image, "plug", guest_image.disk, cmdline="qd.shell=1")
    (pytester.path / "guest.xml").write_text(xml.replace(
        "type='qcow2'/>", "type='qcow2' io='io_uring'/>"))
    monkeypatch.setenv("QD_RECORD", str(pytester.path / "record.jsonl"))
    return pytester.path


def base_dir(path: Path) -> Path:
    return path / "qd"


def run(pytester: pytest.Pytester, *args: str, timeout: float = 300) -> pytest.RunResult:
    return pytester.runpytest_subprocess(
        "-p", "no:cacheprovider", "-o", "asyncio_mode=auto",
        "--qdriver-domain-xml=guest.xml", "--qdriver-ready=GUEST-READY",
        f"--qdriver-state-dir={base_dir(pytester.path)}", *args, timeout=timeout)


def recorded(path: Path) -> list[dict[str, object]]:
    file = path / "record.jsonl"
    return [json.loads(line) for line in file.read_text().splitlines()] if file.exists() else []


def assert_nothing_left(path: Path, keep: tuple[Path, ...] = ()) -> None:
    """No QEMU, pool directory or socket directory of the runs is left."""
    base = base_dir(path)
    assert qemu_pids(base) == [], "a QEMU of the test run survived it"
    left = sorted(p for p in base.iterdir() if p not in keep) if base.exists() else []
    assert left == [], f"pool directories left behind: {left}"
    for entry in recorded(path):
        pool = Path(str(entry["dir"]))
        if pool not in keep:
            assert not socket_root(pool).exists(), f"sockets of {pool} left behind"


def test_every_test_gets_a_fresh_guest(pytester: pytest.Pytester, plugin_env: Path,
                                       guest_image: GuestImage) -> None:
    before = sha256(guest_image.disk)
    pytester.makepyfile(test_fresh=FRESH_TESTS)
    result = run(pytester, "-v")
    result.assert_outcomes(passed=4)
    entries = recorded(plugin_env)
    assert len({e["dir"] for e in entries}) == 1  # one guest, booted once, for all four
    assert sha256(guest_image.disk) == before, "the XML's image was written"
    # every reset after the first resumed a fork made ahead while a test ran
    assert len({e["domain"] for e in entries}) == len({e["qemu"] for e in entries}) == 4
    assert_nothing_left(plugin_env)


def test_xdist_workers_fork_their_guests_from_one_boot(pytester: pytest.Pytester,
                                                       plugin_env: Path) -> None:
    """Two workers, one boot: each worker's guest is a fork of the one booted guest's
    template, fresh for every test (a guest the workers shared would show one
    test's marker to another)."""
    pytester.makepyfile(test_fresh=FRESH_TESTS)
    result = run(pytester, "-n", "2")
    result.assert_outcomes(passed=4)
    entries = recorded(plugin_env)
    assert len({e["pid"] for e in entries}) == 2
    assert len({e["dir"] for e in entries}) == 1  # the controller's shared directory
    for worker in {e["pid"] for e in entries}:  # each reset resumed a fork made ahead
        mine = [e["domain"] for e in entries if e["pid"] == worker]
        assert len(set(mine)) == len(mine), entries
    result.stdout.fnmatch_lines(["qdriver: 1 guest(s) booted for the xdist workers*"])
    assert_nothing_left(plugin_env)


def test_failed_test_reports_console_and_keeps_a_revertible_snapshot(
        pytester: pytest.Pytester, plugin_env: Path) -> None:
    pytester.makepyfile(test_fail='''
        def test_breaks(qdriver_driver, qdriver_console):
            import json, os
            with open(os.environ["QD_RECORD"], "a") as f:
                f.write(json.dumps({"dir": str(qdriver_driver.state_dir), "pid": 0}) + "\\n")
            qdriver_console.write("echo broken-state > /mnt/marker; sync; echo SAVED$((6*7))\\n")
            qdriver_console.wait(r"^SAVED42", 20)
            qdriver_console.wait(r"^COUNTER", 20)  # the report must show it: wait, not guess
            assert False, "the guest misbehaved"

        def test_next_is_fresh(qdriver_console):
            qdriver_console.write("cat /mnt/marker 2>/dev/null || echo NO-MARKER$((6*7))\\n")
            qdriver_console.wait(r"^NO-MARKER42", 20)
    ''')
    result = run(pytester, "--qdriver-keep-failed")
    result.assert_outcomes(passed=1, failed=1)
    out = result.stdout.str()
    assert "qdriver console" in out and "SAVED42" in out and "COUNTER" in out
    assert "qdriver kept" in out and "snapshot-revert" in out
    pool = Path(str(recorded(plugin_env)[0]["dir"]))
    try:
        assert qemu_pids(base_dir(plugin_env)) == []
        cli = [sys.executable, "-m", "qdriver", "--state-dir", str(pool)]
        domain = subprocess.run(cli + ["list", "--all", "--name"], capture_output=True,
                                text=True, check=True).stdout.split()
        assert len(domain) == 1
        names = subprocess.run(cli + ["snapshot-list", domain[0], "--name"],
                               capture_output=True, text=True, check=True).stdout.split()
        kept = [n for n in names if n.startswith("failed-")]
        assert kept == ["failed-test_fail.py_test_breaks"], names
        # the guest's disk as the test left it: frozen below the kept snapshot's overlay
        (overlay,) = pool.glob(f"*-vda.{kept[0]}.qcow2")
        assert read_marker(Path(backing_of(overlay) or "")) == "broken-state"
        reverted = subprocess.run(cli + ["snapshot-revert", domain[0], kept[0], "--running"],
                                  capture_output=True, text=True)
        assert reverted.returncode == 0, reverted.stderr
        assert subprocess.run(cli + ["domstate", domain[0]], capture_output=True,
                              text=True).stdout.strip() == "running"
        subprocess.run(cli + ["destroy", domain[0]], check=True, capture_output=True)
    finally:
        for pid in qemu_pids(pool):
            os.kill(pid, 9)
        shutil.rmtree(pool, ignore_errors=True)
        shutil.rmtree(socket_root(pool), ignore_errors=True)
    assert_nothing_left(plugin_env)


def read_marker(image: Path) -> str:
    """/marker of the guest's ext4 disk in ``image``."""
    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "disk.raw"
        subprocess.run(["qemu-img", "convert", "-U", "-O", "raw", str(image), str(raw)],
                       check=True, capture_output=True)
        return subprocess.run(["debugfs", "-R", "cat /marker", str(raw)], check=True,
                              capture_output=True, text=True).stdout.strip()


SLEEPER = '''
import os, time
def test_sleeps(qdriver_driver, qdriver_console):
    qdriver_console.wait(r"^COUNTER", 20)
    with open(os.environ["QD_RECORD"], "a") as f:
        f.write('{"dir": "%s", "pid": %d}\\n' % (qdriver_driver.state_dir, os.getpid()))
    time.sleep(120)
'''


def start_sleeper(pytester: pytest.Pytester, plugin_env: Path) -> subprocess.Popen[bytes]:
    pytester.makepyfile(test_sleep=SLEEPER)
    proc = subprocess.Popen([sys.executable, "-m", "pytest", "-p", "no:cacheprovider",
                             "--qdriver-domain-xml=guest.xml", "--qdriver-ready=GUEST-READY",
                             f"--qdriver-state-dir={base_dir(plugin_env)}"],
                            cwd=plugin_env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 120
        while not recorded(plugin_env):
            assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
            assert time.monotonic() < deadline, "the guest did not come up"
            time.sleep(0.2)
        assert qemu_pids(base_dir(plugin_env)), "no QEMU runs for the test"
    except BaseException:
        proc.kill()
        proc.communicate()
        raise
    return proc


@pytest.fixture
def cleanup_base(plugin_env: Path) -> Iterator[None]:
    """Whatever a failed assertion leaves, no QEMU of these runs outlives the test."""
    yield
    for pid in qemu_pids(base_dir(plugin_env)):
        os.kill(pid, 9)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_ctrl_c_or_sigterm_leaves_nothing(pytester: pytest.Pytester, plugin_env: Path,
                                          cleanup_base: None, signum: int) -> None:
    """Ctrl-C, or SIGTERM as a cancelled CI job sends, stops every guest it started."""
    proc = start_sleeper(pytester, plugin_env)
    proc.send_signal(signum)
    out, _ = proc.communicate(timeout=120)
    assert b"KeyboardInterrupt" in out, out
    assert_nothing_left(plugin_env)


def test_a_killed_session_is_cleaned_by_the_next(pytester: pytest.Pytester,
                                                  plugin_env: Path, cleanup_base: None) -> None:
    proc = start_sleeper(pytester, plugin_env)
    proc.kill()
    proc.communicate()
    killed = Path(str(recorded(plugin_env)[0]["dir"]))
    assert killed.exists() and qemu_pids(killed), "SIGKILL left no QEMU to clean"
    pytester.makepyfile(test_sleep="def test_uses_a_guest(qdriver_domain): pass")
    run(pytester).assert_outcomes(passed=1)
    assert not killed.exists() and qemu_pids(killed) == []
    assert not socket_root(killed).exists()
    assert_nothing_left(plugin_env)


@pytest.mark.no_qemu
def test_broken_xml_is_a_clear_setup_error(pytester: pytest.Pytester,
                                           plugin_env: Path) -> None:
    (plugin_env / "guest.xml").write_text("<domain type='qemu'><name>x</name>")
    pytester.makepyfile(test_broken="def test_a(qdriver_domain): pass\n"
                                    "def test_b(qdriver_domain): pass\n")
    result = run(pytester)
    result.assert_outcomes(errors=2)
    out = result.stdout.str()
    assert "guest.xml" in out and "qdriver:" in out
    assert "Traceback" not in out and "guestpool.py" not in out
    assert_nothing_left(plugin_env)


def test_a_guest_that_never_gets_ready_is_a_clear_setup_error(
        pytester: pytest.Pytester, plugin_env: Path) -> None:
    pytester.makepyfile(test_never="def test_a(qdriver_domain): pass\n"
                                   "def test_b(qdriver_domain): pass\n")
    result = run(pytester, "--qdriver-ready=NEVER-PRINTED", "--qdriver-boot-timeout=4")
    result.assert_outcomes(errors=2)
    out = result.stdout.str()
    assert "not ready within 4 s" in out and "NEVER-PRINTED" in out
    assert "plug-seed-" in out
    first = out.split("ERROR at setup of test_a")[1].split("ERROR at setup of test_b")[0]
    assert "not tried again" not in first  # the first test's boot, then no second one
    assert "not tried again" in out.split("ERROR at setup of test_b")[1]
    assert "During handling" not in out
    assert_nothing_left(plugin_env)


def test_marker_and_parametrisation_choose_start_state_and_xml(pytester: pytest.Pytester,
                                             plugin_env: Path) -> None:
    pytester.makepyfile(test_prepared='''
        import pytest

        def install(guest):
            console = guest.console()
            console.write("echo prepared > /mnt/marker; sync; echo PREPARED$((6*7))\\n")
            console.wait(r"^PREPARED42", 20)

        pytestmark = pytest.mark.qdriver(prepare=install)

        @pytest.mark.parametrize("i", range(2))
        def test_starts_prepared(qdriver_console, i):
            qdriver_console.write("cat /mnt/marker; echo DONE$((6*7))\\n")
            qdriver_console.wait(r"^DONE42", 20)
            assert "\\nprepared" in qdriver_console.text()
            qdriver_console.write("echo other > /mnt/marker; sync\\n")
    ''', test_other_xml='''
        import pytest

        @pytest.mark.parametrize("qdriver_domain", [{"xml": "other.xml"}], indirect=True)
        def test_parametrised_xml(qdriver_domain):
            assert qdriver_domain.name.startswith("other-")
            assert qdriver_domain.definition.memory_kib == 200 * 1024

        @pytest.mark.qdriver(xml="other.xml")
        def test_marked_xml(qdriver_domain):
            assert qdriver_domain.name.startswith("other-")
    ''')
    (plugin_env / "other.xml").write_text(
        (plugin_env / "guest.xml").read_text().replace("<name>plug</name>", "<name>other</name>")
        .replace("<memory unit='MiB'>256</memory>", "<memory unit='MiB'>200</memory>"))
    run(pytester, "-v").assert_outcomes(passed=4)
    assert_nothing_left(plugin_env)


@pytest.mark.no_qemu
def test_no_qdriver_turns_the_plugin_off(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_off="def test_a(): pass")
    on = pytester.runpytest_subprocess("--fixtures", "-p", "no:cacheprovider")
    assert "qdriver_domain" in on.stdout.str()
    off = pytester.runpytest_subprocess("--fixtures", "-p", "no:cacheprovider",
                                        "-p", "no:qdriver")
    assert "qdriver_domain" not in off.stdout.str()


def test_the_documented_example_runs(pytester: pytest.Pytester, plugin_env: Path) -> None:
    readme = (Path(__file__).parent.parent / "docs" / "pytest-plugin.md").read_text()
    start = readme.index("```python\n# test_guest.py")
    example = readme[start + len("```python\n"):readme.index("```", start + 10)]
    pytester.makepyfile(test_guest=example)
    (plugin_env / "big-guest.xml").write_text(
        (plugin_env / "guest.xml").read_text().replace("<memory unit='MiB'>256</memory>",
                                                       "<memory unit='MiB'>1024</memory>"))
    result = run(pytester, "-v")
    result.assert_outcomes(passed=5)
    assert_nothing_left(plugin_env)


@pytest.mark.no_qemu
def test_a_state_dir_open_to_others_is_refused(pytester: pytest.Pytester,
                                               plugin_env: Path) -> None:
    base = base_dir(plugin_env)
    base.mkdir()
    base.chmod(0o777)
    pytester.makepyfile(test_a="def test_a(qdriver_domain): pass")
    result = run(pytester)
    result.assert_outcomes(errors=1)
    out = result.stdout.str()
    assert f"directory '{base}' has mode 0777, open to other users" in out
    assert "Traceback" not in out
    assert list(base.iterdir()) == []


AGENT_CHANNEL = ("\n    <channel type='unix'><target type='virtio' "
                 "name='org.qemu.guest_agent.0'/></channel>")


def test_ini_options_and_readiness_by_guest_agent(pytester: pytest.Pytester, plugin_env: Path,
                                                  guest_image: GuestImage) -> None:
    (plugin_env / "agent.xml").write_text(domain_xml(
        guest_image, "agent", guest_image.disk, cmdline="qd.shell=1",
        extra_devices=AGENT_CHANNEL))
    pytester.makeini(f"[pytest]\nqdriver_domain_xml = agent.xml\n"
                     f"qdriver_state_dir = {base_dir(plugin_env)}\nqdriver_boot_timeout = 60\n")
    pytester.makepyfile(test_agent='''
        def test_booted_without_a_console_regex(qdriver_domain, qdriver_console):
            assert qdriver_domain.name.startswith("agent-")
            qdriver_console.write("echo UP$((6*7))\\n")
            qdriver_console.wait(r"^UP42", 20)
    ''')
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1)
    # the same XML without the channel: no way to tell readiness, said before booting
    (plugin_env / "agent.xml").write_text(domain_xml(guest_image, "agent", guest_image.disk))
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider")
    result.assert_outcomes(errors=1)
    assert "cannot tell when the guest is ready" in result.stdout.str()
    assert_nothing_left(plugin_env)


def test_a_guest_whose_serial_console_is_a_file(pytester: pytest.Pytester, plugin_env: Path,
                                                guest_image: GuestImage) -> None:
    """The plugin runs any XML qdriver runs: a file console is read, not attached to."""
    log = plugin_env / "serial.log"
    xml = (plugin_env / "guest.xml").read_text().replace(
        "<serial type='pty'/>", f"<serial type='file'><source path='{log}'/></serial>")
    (plugin_env / "guest.xml").write_text(xml)
    pytester.makepyfile(test_file_console='''
import pytest

def test_reads_the_file(qdriver_console):
    qdriver_console.wait(r"COUNTER \\d+", timeout=60)

def test_typing_is_refused_by_name(qdriver_console):
    with pytest.raises(Exception, match="writes to a file and takes no input"):
        qdriver_console.write("echo hi\\n")
''')
    result = run(pytester, "-v")
    result.assert_outcomes(passed=2)
    assert "GUEST-READY" in log.read_text()
    assert_nothing_left(plugin_env)
