"""Bad input in what `phx` says (task errs2): every error, warning and notice is one line of text
whatever the file names it carries; what a failed clean-up leaves is said; a special destination
is one sentence.

1. Control characters: `stderr_line` (cli/app.py), the one place every human error, warning and
   notice is printed, escapes them as `errors.shown` escapes a name; `--json` lines carry them as
   JSON escapes (C1 ones too, `jsontext.dumps`); `ls` and `diff` show each name escaped on its one
   line (`ls -b`), their `--json` the exact name.
2. A database copy a restore could not remove after another error is one warning naming it.
3. `--to` on /proc or /sys, a FIFO, a character device: one sentence, non-zero exit, nothing written.
4. `restore --realign` whose manifest goes away before its mode is read: one destination error.
5. A restore journal that cannot be read: one warning naming it and the fix, the journal kept.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import CliRunner
from e2e_support import Sandbox, assert_error

from phoenix_backup.cli.app import stderr_line
from phoenix_backup.errors import shown
from phoenix_backup.repo.locks import boot_id, pid_namespace

CAPLESS = ["setpriv", "--inh-caps=-all", "--bounding-set=-all", "--no-new-privs", "--"]
# A name holding a newline, a carriage return, an ANSI "clear screen" and the 8-bit CSI.
HOSTILE = "bad\nname\r\x1b[2J\x9bend.md"
ESCAPED = "bad\\nname\\r\\x1b[2J\\x9bend.md"
# Any control character but the newline that ends a line (and a tab).
CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def _one_line_each(text: str) -> list[str]:
    """The lines of `text`, none holding a control character (so no escape reaches a terminal)."""
    assert CONTROL.search(text) is None, repr(text)
    return text.splitlines()


def _needs_setpriv() -> None:
    if shutil.which("setpriv") is None:
        pytest.skip("setpriv (util-linux) runs phx without the capability to ignore file modes")


def test_every_line_said_escapes_control_characters() -> None:
    """The one place: a message carrying a raw hostile name is one line with it escaped; one that
    escaped it already (`shown`) is not escaped twice; with --json the message is the exact text."""
    assert stderr_line("notice", f"warning: {HOSTILE} was skipped", as_json=False) == (
        f"phx: warning: {ESCAPED} was skipped"
    )
    assert stderr_line("error", f"cannot read {shown(HOSTILE)}", as_json=False) == f"phx: error: cannot read {ESCAPED}"
    # A name that is not UTF-8: its byte 0x9B (a CSI where the terminal is not UTF-8) escaped too.
    raw = b"caf\xe9\x9b.md".decode("utf-8", "surrogateescape")
    assert stderr_line("problem", f"not saved: {raw}", as_json=False) == "phx: not saved: caf\udce9\\x9b.md"
    for kind in ("error", "notice", "problem"):
        line = stderr_line(kind, f"warning: {HOSTILE}", as_json=True)
        assert _one_line_each(line) == [line]
        assert json.loads(line)["message"].endswith(HOSTILE)


def test_a_backup_failing_on_a_hostile_name_says_it_escaped(sandbox: Sandbox) -> None:
    _needs_setpriv()
    sb = sandbox
    bad = sb.workspace / HOSTILE
    bad.write_bytes(b"secret\n")
    bad.chmod(0)
    sb.prefix = CAPLESS
    try:
        res = sb.phx("backup", check=3)
        as_json = sb.phx("backup", "--json", check=3)
    finally:
        sb.prefix = ()
    lines = _one_line_each(res.err)
    assert any(ESCAPED in line for line in lines), res
    assert all(line.startswith("phx: ") for line in lines), res
    _one_line_each(as_json.err)
    messages = [json.loads(line).get("message", "") for line in as_json.err.splitlines()]
    assert any(HOSTILE in m for m in messages), as_json


def test_a_restore_failing_on_a_hostile_name_says_it_escaped(
    sandbox: Sandbox, tmpfs: Callable[[str], Path], tmp_path: Path
) -> None:
    """ENOSPC's sentence names the file being restored: a tmpfs of 1 MiB cannot take 2 MiB."""
    sb = sandbox
    (sb.workspace / HOSTILE).write_bytes(os.urandom(3 << 19))
    snap = sb.backup()
    dest = tmpfs("1m")
    res = sb.phx("restore", "--backup", snap["id"], "--to", dest, "--path", HOSTILE, check=None)
    assert_error(res, 1, "no space left", ESCAPED)
    _one_line_each(res.err + res.out)
    as_json = sb.phx("restore", "--backup", snap["id"], "--to", dest, "--path", HOSTILE, "--json", check=1)
    _one_line_each(as_json.err + as_json.out)
    assert HOSTILE in json.loads(as_json.out)["error"], as_json


def test_ls_and_diff_show_a_hostile_name_escaped_on_its_line(backed_up: Sandbox) -> None:
    """Listings are data: on stdout each name is on its one line, escaped as `ls -b` does; --json
    carries the exact name (decoded, it is the name)."""
    sb = backed_up
    first = sb.snapshots()[0]
    (sb.workspace / HOSTILE).write_bytes(b"x\n")
    os.symlink(HOSTILE, sb.workspace / "link.md")
    second = sb.backup()
    ls = sb.phx_here("ls", second["id"], "workspace")
    lines = _one_line_each(ls.out)
    entries = sb.phx_here("ls", second["id"], "workspace", "--json").json()["entries"]
    assert isinstance(entries, list), entries
    assert len(lines) == len(entries), ls
    assert any(line.endswith(f"workspace/{ESCAPED}") for line in lines), ls
    assert any(line.endswith(f"workspace/link.md -> {ESCAPED}") for line in lines), ls
    assert f"workspace/{HOSTILE}" in [e["path"] for e in entries]
    diff = sb.phx_here("diff", first["id"], second["id"])
    assert any(f"added    workspace/{ESCAPED}" in line for line in _one_line_each(diff.out)), diff
    added = sb.phx_here("diff", first["id"], second["id"], "--json").json()["files"]["added"]
    assert f"workspace/{HOSTILE}" in [f["path"] for f in added]


def test_a_database_copy_the_restore_cannot_remove_is_said(backed_up: Sandbox, tmp_path: Path) -> None:
    """A database's folder append-only (`chattr +a`): its checked copy is written, but cannot be
    renamed over the database (the restore's error) nor removed afterwards. Before, the copy was
    left as `.phx-tmp-…` without a word; now one warning names it, and the next restore, the
    cause gone, removes it."""
    sb = backed_up
    dest = tmp_path / "restored"
    data = dest / "home" / ".argentos" / "data"
    data.mkdir(parents=True)
    (data / "dashboard.db").write_bytes(b"")
    proc = subprocess.run(["chattr", "+a", str(data)], capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.skip(f"chattr +a does not work here: {proc.stderr.strip()}")
    try:
        res = sb.phx("restore", "--latest", "--to", dest, "--yes", check=None)
        left = [p for p in data.iterdir() if p.name.startswith(".phx-tmp-")]
    finally:
        subprocess.run(["chattr", "-a", str(data)], check=True)
    assert res.code != 0, res
    assert "bug in Phoenix" not in res.err, res
    assert len(left) == 1, left
    warnings = [line for line in res.stderr_lines() if line.startswith("phx: warning:")]
    assert warnings == [
        f"phx: warning: {left[0]}, a copy of a database this restore wrote and did not apply, could not be "
        "removed (Operation not permitted); the next restore into that folder removes it, or remove it yourself"
    ], res
    sb.phx("restore", "--latest", "--to", dest, "--yes")
    assert [p for p in dest.rglob(".phx-tmp-*")] == []


def test_realign_whose_manifest_goes_away_is_one_clear_error(
    backed_up: Sandbox, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The manifest is read, then its mode: removed in between (by another program, made real
    here right after the read), the lstat's ENOENT was an internal error; now it is the restore's
    destination error naming it."""
    from phoenix_backup.argentos import alignment
    from phoenix_backup.cli.main import cli

    sb = backed_up
    dest = tmp_path / "restored"
    sb.phx("restore", "--latest", "--to", dest, "--yes")
    manifest = dest / "workspace" / alignment.MANIFEST
    if not manifest.exists():
        pytest.skip("the sample has no alignment manifest")
    (dest / "workspace" / "SOUL.md").write_text("a soul the manifest does not know\n")
    real = alignment.realigned

    def removing(*args: object, **kwargs: object) -> object:
        manifest.unlink()
        return real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(alignment, "realigned", removing)
    saved = dict(os.environ)
    os.environ.clear()
    os.environ.update(sb.env)
    try:
        run = CliRunner().invoke(
            cli, ["restore", "--latest", "--to", str(dest), "--path", "MEMORY.md", "--realign", "--yes"]
        )
    finally:
        os.environ.clear()
        os.environ.update(saved)
    assert run.exit_code == 1, run.output
    assert "bug in Phoenix" not in run.stderr, run.stderr
    assert f"a folder is gone while reading the mode of {manifest}" in run.stderr, run.stderr


def test_a_restore_journal_that_cannot_be_read_is_said(sandbox: Sandbox) -> None:
    """Kept, as before (nothing is lost: the next command reads it again), but no longer in silence."""
    _needs_setpriv()
    sb = sandbox
    journals = sb.cache / "restore-journal"
    journals.mkdir(parents=True, exist_ok=True)
    journals.chmod(0o700)
    dead = 2**22 + 13
    journal = journals / f"{dead}-77"
    head = {"bootId": boot_id(), "pidNamespace": pid_namespace(), "pid": dead, "start": 77}
    journal.write_text(json.dumps(head) + "\n" + json.dumps(str(sb.root)) + "\n")
    journal.chmod(0)
    sb.prefix = CAPLESS
    try:
        res = sb.phx("list", check=0)
    finally:
        sb.prefix = ()
    warnings = [line for line in res.stderr_lines() if line.startswith("phx: warning:")]
    assert warnings == [
        f"phx: warning: the restore journal {journal} could not be read (Permission denied), so the temporary "
        "files of the killed restore it names, if any, stay; it is kept and read again by the next command: "
        "make it readable by this user, or remove it once no restore runs"
    ], res
    assert journal.exists()
    journal.chmod(0o600)
    assert "warning" not in sb.phx("list").err
    assert not journal.exists()


def _fifo(tmp_path: Path) -> Path:
    os.mkfifo(tmp_path / "fifo")
    return tmp_path / "fifo"


def _char_device(tmp_path: Path) -> Path:
    try:
        os.mknod(tmp_path / "null", 0o600 | 0o020000, os.makedev(1, 3))
    except PermissionError:
        pytest.skip("mknod of a character device needs root")
    return tmp_path / "null"


SPECIAL: dict[str, tuple[Callable[[Path], Path], int, tuple[str, ...]]] = {
    "proc": (lambda _t: Path("/proc/phx-errs2-test"), 2, ("on /proc, a proc file system", "choose a folder")),
    "proc-self": (lambda _t: Path("/proc/self"), 2, ("on /proc, a proc file system", "choose a folder")),
    "sys": (lambda _t: Path("/sys/phx-errs2-test"), 2, ("on /sys, a sysfs file system", "choose a folder")),
    "fifo": (_fifo, 1, ("is a FIFO (named pipe), not a folder", "move it away or choose another path")),
    "char-device": (_char_device, 1, ("is a character device, not a folder", "move it away")),
    "below-a-file": (lambda t: t / "file" / "sub", 1, ("is a file, not a folder", "move it away")),
}


@pytest.mark.parametrize("kind", sorted(SPECIAL))
def test_a_special_destination_is_one_sentence(backed_up: Sandbox, tmp_path: Path, kind: str) -> None:
    """Before: /proc/x "No such file or directory while opening ..." (no fix), /proc/self "a
    folder is gone ... removed or moved", /sys "permission denied ... check the owner and mode",
    a character device "is a file"."""
    make, code, says = SPECIAL[kind]
    tmp_path = tmp_path / "t"
    tmp_path.mkdir()
    (tmp_path / "file").write_bytes(b"a file\n")
    to = make(tmp_path)
    if kind in ("proc", "sys"):
        assert not to.exists()
    res = backed_up.phx("restore", "--latest", "--to", to, "--yes", check=None)
    assert_error(res, code, *says)
    assert (tmp_path / "file").read_bytes() == b"a file\n"
    assert {p.name for p in tmp_path.iterdir()} <= {"file", "fifo", "null"}  # nothing written
    assert not Path("/proc/phx-errs2-test").exists() and not Path("/sys/phx-errs2-test").exists()
