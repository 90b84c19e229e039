"""The adversary of errs2 (tests/e2e/test_error_text.py): what still put a raw control character
on the terminal, and where the kernel-file-system check of `--to` was wrong.

1. `--verbose`'s traceback (the text of every exception of the chain: a name, a library's text)
   was written raw; now its control characters are escaped as a report's are (`shown_lines`).
2. The live progress line on a terminal names the database being captured: its file name's
   escape reached the terminal through rich; now escaped (`shown`). Its --json line carried a
   name that is not UTF-8 as a lone surrogate; now as `jsontext` carries every name.
3. A question asked on the terminal (an in-place restore names the snapshot and its databases):
   escaped like a message.
4. A result's lines keep their newlines (`shown_lines`), so a name's own newline made a line of
   its own: a tag in `phx list`'s table, a file or a database's table in a restore's plan, a check of `phx doctor`. Each
   is now escaped in its cell or line.
5. More database copies than a restore says one by one (`leftovers.bounded`) were counted as "temporary
   files killed restores left ...; remove them yourself": now as what they are, which the next
   restore removes.
6. `--to` below a tmpfs mounted over a kernel file system's mount point (same mount point, the
   tmpfs on top) was refused as the kernel file system; and `--to` that became a link into one
   after the check was written into. The file system is now the one the path reaches (`st_dev`),
   checked again on the folder opened.
"""

from __future__ import annotations

import base64
import contextlib
import io
import json
import os
import re
import shutil
import sqlite3
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner
from e2e_support import Sandbox, assert_error, mount

from phoenix_backup.cli import app
from phoenix_backup.cli.progress import Progress
from phoenix_backup.sinks import files, leftovers

# A newline, an ANSI "clear screen", the 8-bit CSI.
HOSTILE = "bad\n\x1b[2J\x9bend"
ESCAPED = "bad\\n\\x1b[2J\\x9bend"
# Any control character but the newline that ends a line (and a tab).
CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def test_a_verbose_traceback_escapes_control_characters(backed_up: Sandbox) -> None:
    """Before: the traceback held `nope\\x1b[2J` raw (the error line below it was escaped)."""
    res = backed_up.phx("--verbose", "ls", "latest", f"nope{HOSTILE}", check=2)
    assert "Traceback" in res.err, res
    assert CONTROL.search(res.err) is None, repr(res.err)
    # A traceback is lines, a message's newline among them; its escapes are text.
    assert "holds no workspace/nopebad\n\\x1b[2J\\x9bend; see" in res.err, res


def test_the_progress_line_escapes_a_database_name() -> None:
    """Before: `capturing bad` then a raw newline, clear-screen and CSI on the terminal."""
    stream = io.StringIO()
    progress = Progress(stream, terminal=True)
    progress.phase("backing up", files=2)
    progress.working(f"capturing {HOSTILE}.db (1 KiB)")
    progress.clear()
    drawn = stream.getvalue()
    assert f"capturing {ESCAPED}.db" in drawn, repr(drawn)
    assert "\x1b[2J" not in drawn and "\x9b" not in drawn and "bad\n" not in drawn, repr(drawn)


def test_a_progress_json_line_is_valid_unicode_for_a_name_that_is_not_utf8() -> None:
    """Before: `"doing": "capturing caf\\udce9.db"`, a lone surrogate no strict JSON parser takes;
    now the form of every other JSON document (`jsontext`): U+FFFD, and the exact bytes beside."""
    stream = io.StringIO()
    progress = Progress(stream, json_lines=True)
    progress.phase("backing up", files=1)
    progress.working("capturing caf\udce9\x9b.db")
    progress.clear()
    line = stream.getvalue().splitlines()[-1]
    assert "\\ud" not in line and CONTROL.search(line) is None, line
    doc = json.loads(line)
    assert doc["doing"] == "capturing caf\ufffd\x9b.db", doc
    assert base64.b64decode(doc["doingBytes"]) == b"capturing caf\xe9\xc2\x9b.db", doc


def test_a_question_on_the_terminal_escapes_a_name(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Before: the question (`Restore NAME ... databases overwritten: FILE`) was printed raw."""
    monkeypatch.setattr(app, "is_tty", lambda: True)
    monkeypatch.setattr("sys.stdin", io.StringIO("n\n"))
    envx = app.make_env(app.Out(as_json=False, verbose=False))
    assert envx.confirm is not None
    assert envx.confirm(f"Restore x in place; databases overwritten: {HOSTILE}.db. Continue?") is False
    asked = capsys.readouterr().err
    assert f"databases overwritten: {ESCAPED}.db. Continue?" in asked, repr(asked)
    assert CONTROL.search(asked) is None and "bad\n" not in asked, repr(asked)


def test_a_name_in_a_table_or_a_plan_stays_on_its_line(backed_up: Sandbox) -> None:
    """Before: `phx list` printed the tag's newline raw (`FAKE  local` a line of its own), and a
    restore's plan did the same with a file's."""
    sb = backed_up
    (sb.workspace / f"{HOSTILE}.md").write_bytes(b"x\n")
    with contextlib.closing(sqlite3.connect(sb.db_path("home/.argentos/memory.db"))) as con, con:
        con.execute(f'CREATE TABLE "t{HOSTILE}" (a)')
        con.execute(f'INSERT INTO "t{HOSTILE}" VALUES (1)')
    sb.backup("--tag", f"t{HOSTILE}")
    listed = sb.phx_here("list").out
    assert CONTROL.search(listed) is None, repr(listed)
    row = [line for line in listed.splitlines() if f"t{ESCAPED}" in line]
    assert len(row) == 1 and row[0].endswith("local"), listed
    assert not any(line.startswith("end") for line in listed.splitlines()), listed
    plan = sb.phx_here("restore", "--latest", "--to", sb.root / "dest", "--path", f"{HOSTILE}.md", "--dry-run").out
    assert CONTROL.search(plan) is None, repr(plan)
    assert any(line.startswith("create") and line.endswith(f"/workspace/{ESCAPED}.md") for line in plan.splitlines())
    assert not any(line.startswith("end") for line in plan.splitlines()), plan
    memory = "home/.argentos/memory.db"
    plan = sb.phx_here("restore", "--latest", "--to", sb.root / "dest", "--path", memory, "--dry-run").out
    assert CONTROL.search(plan) is None, repr(plan)
    assert f"t{ESCAPED} +1 -0 ~0" in plan and not any(line.startswith("end") for line in plan.splitlines()), plan


def test_doctor_says_each_check_on_its_line(sandbox: Sandbox) -> None:
    """Before: a configured database named `gone` + newline + `end.db` made `end.db: does not exist
    ...` a line of its own (`✓ ...` it could have been, for a name chosen so)."""
    sb = sandbox
    # No `[`: a configured path holding one is a glob. ESC c resets the terminal.
    sb.write_config(databases={"sqlite": [str(sb.home / "gone\n\x1bc\x9bend.db")]})
    res = sb.phx("doctor", check=1)
    assert CONTROL.search(res.out) is None, repr(res.out)
    assert f"✗ database {sb.home}/gone\\n\\x1bc\\x9bend.db: does not exist — fix: " in res.out, res
    assert not any(line.startswith("end") for line in res.out.splitlines()), res


def test_many_database_copies_kept_are_counted_as_what_they_are(
    backed_up: Sandbox, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Databases in an append-only folder (as test_error_text.py's one), none said one by one
    (SHOWN_PROBLEMS 0 here: how many copies are in flight when the first error stops the restore
    varies): one line counts them. Before, it said "N more temporary files killed restores left
    could not be removed, or folders holding them searched ...; remove them yourself": not what
    they are, and not that the next restore removes them."""
    sb = backed_up
    (sb.workspace / "dbs").mkdir()
    for name in "abcde":
        with contextlib.closing(sqlite3.connect(sb.workspace / "dbs" / f"{name}.db")) as con, con:
            con.execute("CREATE TABLE t (a)")
    sb.phx_here("backup")
    data = tmp_path / "restored" / "workspace" / "dbs"
    data.mkdir(parents=True)
    for name in "abcde":
        (data / f"{name}.db").write_bytes(b"")
    proc = subprocess.run(["chattr", "+a", str(data)], capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.skip(f"chattr +a does not work here: {proc.stderr.strip()}")
    monkeypatch.setattr(leftovers, "SHOWN_PROBLEMS", 0)
    restore = ["restore", "--latest", "--to", str(tmp_path / "restored"), "--path", "workspace/dbs", "--yes"]
    try:
        code, err = _in_process(sb, restore)
        left = [p for p in data.iterdir() if p.name.startswith(".phx-tmp-")]
    finally:
        subprocess.run(["chattr", "-a", str(data)], check=True)
    assert code == 1 and len(left) > 1, err
    assert [line for line in err.splitlines() if line.startswith("phx: warning:")] == [
        f"phx: warning: {len(left)} more copies of databases this restore wrote and did not apply could not be "
        "removed, for the same kinds of reason; the next restore into their folders removes them, or remove them "
        "yourself"
    ], err
    # That the next restore removes them (once this process, which wrote them, is gone):
    # test_error_text.py::test_a_database_copy_the_restore_cannot_remove_is_said.


def _in_process(sb: Sandbox, args: list[str]) -> tuple[int, str]:
    """`phx ARGS` in this process (so a test's monkeypatch holds): its exit code and stderr."""
    from phoenix_backup.cli.main import cli

    saved = dict(os.environ)
    os.environ.clear()
    os.environ.update(sb.env)
    try:
        run = CliRunner().invoke(cli, args)
    finally:
        os.environ.clear()
        os.environ.update(saved)
    return run.exit_code, run.stderr


def _mounted(mnt: Path, *args: str) -> None:
    if not shutil.which("mount") or os.geteuid() != 0:
        pytest.skip("mounting needs mount(8) and root")
    mnt.mkdir(parents=True, exist_ok=True)
    proc = mount(*args, str(mnt))
    if proc.returncode != 0:
        pytest.skip(f"cannot mount here: {proc.stderr.strip() or proc.returncode}")


@pytest.fixture
def mounts(tmp_path: Path) -> Iterator[Path]:
    """A folder to mount on, every mount on it undone afterwards."""
    mnt = tmp_path / "mnt"
    try:
        yield mnt
    finally:
        for _ in range(3):  # the most this file mounts on one folder
            subprocess.run(["umount", "-l", str(mnt)], capture_output=True, stdin=subprocess.DEVNULL)


def test_a_tmpfs_over_a_kernel_file_system_is_a_destination(backed_up: Sandbox, mounts: Path) -> None:
    """Before: a proc mounted, a tmpfs mounted over it at the same point, `--to` below it: "is on
    ..., a proc file system" (the first of the two mounts, the one hidden), exit 2."""
    _mounted(mounts, "-t", "proc", "proc")
    _mounted(mounts, "-t", "tmpfs", "-o", "size=8m", "tmpfs")
    dest = mounts / "restored"
    backed_up.phx_here("restore", "--latest", "--to", dest, "--path", "MEMORY.md", "--yes")
    assert (dest / "workspace" / "MEMORY.md").read_bytes() == (backed_up.workspace / "MEMORY.md").read_bytes()


def test_a_destination_become_a_link_into_a_kernel_file_system_is_refused(
    backed_up: Sandbox, mounts: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The check of the path passes (a link put at --to after it: the check is made to see none),
    the folder opened is on a bpf file system of this test's. Before: its `workspace` folder made
    there (and the files' writes failing one by one); now one usage error, nothing made."""
    _mounted(mounts, "-t", "bpf", "bpf")
    before = set(os.listdir(mounts))
    to = tmp_path / "to"
    to.symlink_to(mounts)
    real = files.kernel_file_system
    monkeypatch.setattr(files, "kernel_file_system", lambda p: None if isinstance(p, Path) else real(p))
    code, err = _in_process(backed_up, ["restore", "--latest", "--to", str(to), "--path", "MEMORY.md", "--yes"])
    assert code == 2, err
    assert f"is on {mounts}, a bpf file system the kernel makes of its own state" in err, err
    assert set(os.listdir(mounts)) == before


def test_a_special_destination_still_refused(backed_up: Sandbox) -> None:
    """The device check keeps the path check's cases: below /proc, /proc/self, below /sys."""
    for to, says in (("/proc/phx-adv-errs2", "on /proc, a proc"), ("/sys/phx-adv-errs2", "on /sys, a sysfs")):
        res = backed_up.phx("restore", "--latest", "--to", to, "--yes", check=None)
        assert_error(res, 2, says, "choose a folder on a disk with --to")


def test_status_and_verify_lines_and_a_restores_snapshot_name_stay_on_their_lines(backed_up: Sandbox) -> None:
    """Before: a name holding a newline made `end...` a line of its own in `phx status` (a state
    file's snapshot name and failed part), in `phx verify`'s error lines (a file whose pack is
    lost) and in a restore's summary (a planted snapshot's name)."""
    from test_lost_data import data_packs

    from phoenix_backup.cli import render
    from phoenix_backup.ops.restore import RestoreResult

    sb = backed_up
    packs = set(data_packs(sb))
    (sb.workspace / f"{HOSTILE}.bin").write_bytes(os.urandom(150_000))
    sb.backup()
    max(set(data_packs(sb)) - packs, key=lambda p: p.stat().st_size).unlink()
    verified = sb.phx("verify", check=1).out
    assert CONTROL.search(verified) is None, repr(verified)
    assert any(line.startswith("error: ") and ESCAPED in line for line in verified.splitlines()), verified
    assert not any(line.startswith("end") for line in verified.splitlines()), verified

    state_path = sb.home / ".argentos/backup/.last-backup"
    state = json.loads(state_path.read_text())
    state.update(snapshotName=f"s{HOSTILE}", success=False, partial=True)
    state["failedParts"] = [{"path": f"p{HOSTILE}", "error": f"e{HOSTILE}"}]
    state_path.write_text(json.dumps(state))
    status = sb.phx("status", check=1).out
    assert CONTROL.search(status) is None, repr(status)
    assert f"snapshot s{ESCAPED}" in status and f"p{ESCAPED}" in status, status
    assert not any(line.startswith("end") for line in status.splitlines()), status

    for dry in (True, False):
        result = RestoreResult("0123456789abcdef", f"n{HOSTILE}", str(sb.root / "dest"), [], dry)
        result.safety_snapshot = {"id": "fedcba9876543210", "name": f"s{HOSTILE}"}
        text = render.restore(result, verbose=False)
        assert CONTROL.search(text) is None and f"n{ESCAPED}" in text, repr(text)
        assert not any(line.startswith("end") for line in text.splitlines()), text
