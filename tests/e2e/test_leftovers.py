"""Issue 15, failure 9: what a killed in-place restore leaves in the user's folders.

An in-place restore writes full-size copies of the databases beside them (`.phx-tmp-…`) before
applying them. Killed there, the next command of any kind removes them (it finds them through the
restore's journal), and no backup ever saves such names. Files of a restore that may still run,
of another process, or of another shape are never touched."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from e2e_support import Sandbox, assert_error, mount
from killpoint import SCRIPT, read_report

from phoenix_backup.repo.locks import boot_id, pid_namespace, process_start_time
from phoenix_backup.sample import simulate_day

TMP_MARK = ".phx-tmp-"


def leftovers(sb: Sandbox) -> list[Path]:
    return sorted(p for base in (sb.workspace, sb.home) for p in base.rglob(f"{TMP_MARK}*"))


def kill_restore_at_first_discard(sb: Sandbox, ref: str, match: str = f"unlink(*/{TMP_MARK}*") -> str:
    """Run the in-place restore and SIGKILL it just before it removes its first applied database
    copy: every database copy is then on disk beside its database. (Or before the first call
    `match` describes.) Returns the call it was killed at."""
    report = sb.root / "kill-report"
    # The hook counts only the calls whose description holds the match: the first unlink of a
    # temporary name is the first applied copy's removal (files are renamed, not unlinked).
    env = sb.env_with(PHX_KILL_AT="1", PHX_KILL_MATCH=match, PHX_KILL_REPORT=str(report))
    subprocess.run(
        [sys.executable, str(SCRIPT), "restore", "--backup", ref, "--yes"],
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        timeout=120,
    )
    kind, _n, call = read_report(report)
    assert kind == "killed", f"the restore was not killed: {report.read_text() if report.exists() else ''}"
    return call


def test_the_next_command_removes_a_killed_restores_database_copies(backed_up: Sandbox) -> None:
    sb = backed_up
    ref = sb.snapshots()[-1]["id"]
    simulate_day(sb.layout, 0, seed=7)  # the databases change: the restore must write them
    kill_restore_at_first_discard(sb, ref)
    left = leftovers(sb)
    copies = [p for p in left if p.stat().st_size >= 64 * 1024]
    assert copies, f"the kill left no database copy to clean up: {left}"

    res = sb.phx("list")  # any command
    assert leftovers(sb) == [], f"still there after `phx list`: {leftovers(sb)}"
    assert "temporary file(s) a killed restore left behind" in res.err
    assert not (sb.cache / "restore-journal").exists() or not any((sb.cache / "restore-journal").iterdir())
    sb.phx("restore", "--backup", ref, "--yes")  # and the restore completes
    assert leftovers(sb) == []


def test_backups_never_save_restore_temporary_names(backed_up: Sandbox) -> None:
    sb = backed_up
    me = os.getpid()
    start = process_start_time(me)
    # A restore's temporary file of a process that runs (this test), and a SQLite companion of one.
    live = sb.workspace / f"{TMP_MARK}{me}-{start}-0123456789ab"
    live.write_bytes(b"half a file")
    (sb.home / ".argentos" / f"{TMP_MARK}{me}-{start}-abcdef012345-wal").write_bytes(b"x")
    (sb.workspace / ".phx-tmp-notes.md").write_text("a user's own file with a similar name\n")
    doc = sb.backup()
    names = [e["path"] for e in sb.phx("ls", doc["id"], "--json").json()["entries"]]
    assert not [n for n in names if "0123456789ab" in n or "abcdef012345" in n], names
    assert "workspace/.phx-tmp-notes.md" in names
    assert live.exists(), "a running restore's temporary file was removed"


def test_the_journal_removes_only_a_dead_restores_own_files(sandbox: Sandbox, tmp_path: Path) -> None:
    sb = sandbox
    folder = tmp_path / "folder"
    folder.mkdir()
    dead_pid = 2**22 + 7  # above pid_max's default: no such process
    mine = folder / f"{TMP_MARK}{dead_pid}-123-00aa11bb22cc"
    mine_wal = folder / f"{TMP_MARK}{dead_pid}-123-00aa11bb22cc-wal"
    other_start = folder / f"{TMP_MARK}{dead_pid}-124-00aa11bb22cc"  # another process of that pid
    me = os.getpid()
    alive = folder / f"{TMP_MARK}{me}-{process_start_time(me)}-00aa11bb22cc"
    plain = folder / "notes.md"
    for p in (mine, mine_wal, other_start, alive, plain):
        p.write_bytes(b"data")
    journal = sb.cache / "restore-journal"
    journal.mkdir(parents=True)
    ns = pid_namespace()
    head = {"bootId": boot_id(), "pidNamespace": ns, "pid": dead_pid, "start": 123}
    (journal / f"{dead_pid}-123").write_text(json.dumps(head) + "\n" + json.dumps(str(folder)) + "\n")
    # A restore still running (this process) and one in another PID namespace: left alone.
    live_head = {**head, "pid": me, "start": process_start_time(me)}
    (journal / f"{me}-x").write_text(json.dumps(live_head) + "\n" + json.dumps(str(folder)) + "\n")
    foreign = {**head, "pidNamespace": ns + 1}
    (journal / "foreign").write_text(json.dumps(foreign) + "\n" + json.dumps(str(folder)) + "\n")

    sb.phx("list", check=None)
    assert not mine.exists() and not mine_wal.exists()
    assert other_start.exists() and alive.exists() and plain.exists()
    assert sorted(p.name for p in journal.iterdir()) == sorted([f"{me}-x", "foreign"])


def _plant_dead_journal(journals: Path, folder: Path) -> Path:
    """A journal of a dead restore naming `folder`, and its temporary file there; the file's path."""
    dead_pid = 2**22 + 9
    leftover = folder / f"{TMP_MARK}{dead_pid}-77-00aa11bb22cc"
    leftover.write_bytes(b"a file of someone else's, shaped like a temporary file")
    head = {"bootId": boot_id(), "pidNamespace": pid_namespace(), "pid": dead_pid, "start": 77}
    (journals / f"{dead_pid}-77").write_text(json.dumps(head) + "\n" + json.dumps(str(folder)) + "\n")
    return leftover


@pytest.mark.parametrize("how", ["world-writable", "another-users", "symlink"])
def test_a_journal_folder_others_can_write_is_not_obeyed(sandbox: Sandbox, tmp_path: Path, how: str) -> None:
    """Another local user who can write the journal folder (a shared PHX_CACHE_DIR, `sudo -E` with
    the user's cache, a symlink planted in its place) names no folder that phx cleans, and receives
    no journal from it; the restore still works and says it keeps none."""
    if how == "another-users" and os.geteuid() != 0:
        pytest.skip("giving the folder to another user needs root")
    sb = sandbox
    victim = tmp_path / "victim"
    victim.mkdir()
    journals = sb.cache / "restore-journal"
    if how == "symlink":
        elsewhere = tmp_path / "elsewhere"
        elsewhere.mkdir(mode=0o700)
        journals.symlink_to(elsewhere)
    else:
        journals.mkdir(mode=0o700)
        if how == "world-writable":
            journals.chmod(0o777)
        else:
            os.chown(journals, 4321, 4321)
    planted = _plant_dead_journal(journals, victim)

    doc = sb.backup()
    assert planted.exists(), "a journal in a folder others can write made phx delete a file"
    res = sb.phx("restore", "--backup", doc["id"], "--to", tmp_path / "out")
    assert "keeps no journal" in res.err, res
    assert (tmp_path / "out" / "workspace" / "SOUL.md").read_bytes() == (sb.workspace / "SOUL.md").read_bytes()
    assert sorted(p.name for p in journals.iterdir()) == [f"{2**22 + 9}-77"]
    assert planted.exists()


def test_a_damaged_journal_never_stops_a_command(sandbox: Sandbox, tmp_path: Path) -> None:
    """Journals cut short by a power cut, or garbage: every command still runs, without a
    traceback; undecodable journals are removed, but not one a restore has only just created; an
    overlong line is skipped, unread, and the lines after it still count."""
    sb = sandbox
    journals = sb.cache / "restore-journal"
    journals.mkdir(parents=True, mode=0o700)
    damaged = {
        "no-start": b'{"pid": 5}\n"/tmp"\n',
        "a-list": b"[1, 2]\n",
        "a-string": b'"x"\n',
        "text-pid": json.dumps({"bootId": boot_id(), "pidNamespace": pid_namespace(), "pid": "7", "start": 1}).encode(),
        "bool-pid": json.dumps({"bootId": 1, "pidNamespace": True, "pid": 7, "start": 1}).encode(),
        "binary": os.urandom(256) + b"\n",
        "torn": b'{"bootId": "ab',
    }
    aged = time.time() - 120
    for name, data in damaged.items():
        (journals / name).write_bytes(data)
        os.utime(journals / name, (aged, aged))
    # A restore that has just created its journal and not yet written its first line.
    being_written = journals / f"{os.getpid()}-1"
    being_written.write_bytes(b"")
    folder = tmp_path / "folder"
    folder.mkdir()
    leftover = _plant_dead_journal(journals, folder)
    journal = journals / f"{2**22 + 9}-77"
    head, line = journal.read_text().splitlines()
    long_line = json.dumps("/" + "x" * (1024 * 1024))  # 1 MiB: damage, never a folder
    journal.write_text(f"{head}\n{long_line}\n{line}\n")

    res = sb.phx("doctor", check=None)  # any command; there is no repository yet
    assert "Traceback" not in res.err and res.code == 1, res
    assert not leftover.exists(), "the line after an overlong one was not obeyed"
    assert sorted(p.name for p in journals.iterdir()) == [being_written.name]


def test_a_read_only_cache_folder_does_not_stop_a_restore(sandbox: Sandbox, tmp_path: Path) -> None:
    """A rescue system with the home folder mounted read-only: the restore journal cannot be
    written, and the restore goes on without it, saying so; what needs the cache (a backup, the
    safety snapshot of an in-place restore) fails with one error naming it and PHX_CACHE_DIR.
    Before, `restore --to` ended in an OSError traceback and the others in tracebacks too."""
    sb = sandbox
    doc = sb.backup()
    cache = tmp_path / "cache"
    shutil.copytree(sb.cache, cache)
    if mount("--bind", str(cache), str(cache)).returncode != 0:
        pytest.skip("bind mounts are not allowed here")
    try:
        assert mount("-o", "remount,ro,bind", str(cache)).returncode == 0
        env = sb.env_with(PHX_CACHE_DIR=str(cache))
        res = sb.phx("restore", "--backup", doc["id"], "--to", tmp_path / "out", env=env)
        assert "keeps no journal" in res.err
        assert (tmp_path / "out" / "workspace" / "SOUL.md").read_bytes() == (sb.workspace / "SOUL.md").read_bytes()
        # In place, the safety snapshot needs the cache for its copies: one error with the fix.
        soul = (sb.workspace / "SOUL.md").read_bytes()
        (sb.workspace / "SOUL.md").write_text("changed\n")
        res = sb.phx("restore", "--backup", doc["id"], "--yes", "--path", "workspace/SOUL.md", env=env, check=None)
        assert_error(res, 1, "cache folder", "PHX_CACHE_DIR")
        assert (sb.workspace / "SOUL.md").read_text() == "changed\n"
        assert_error(sb.phx("backup", env=env, check=None), 1, "cache folder", "PHX_CACHE_DIR")
        sb.phx(
            "restore", "--backup", doc["id"], "--yes", "--no-safety-snapshot", "--path", "workspace/SOUL.md", env=env
        )
        assert (sb.workspace / "SOUL.md").read_bytes() == soul
    finally:
        subprocess.run(["umount", str(cache)], capture_output=True, stdin=subprocess.DEVNULL)


def test_a_killed_restore_into_a_workspace_reached_through_a_symlink_is_cleaned(backed_up: Sandbox) -> None:
    """Adversary: a workspace that is a symlink to its folder (moved to a larger disk). The journal
    named the symlink, which the clean-up (rightly) does not follow at a folder's last step: it
    dropped the journal and the killed restore's temporary files stayed for good. The folder the
    link leads to is journalled now."""
    sb = backed_up
    ref = sb.snapshots()[-1]["id"]
    real = sb.root / "workspace-real"
    sb.workspace.rename(real)
    sb.workspace.symlink_to(real)
    for p in real.glob("*.md"):
        p.write_text("changed after the backup\\n")
    call = kill_restore_at_first_discard(sb, ref, match=f"rename(*/{TMP_MARK}*")
    left = sorted(real.glob(f"{TMP_MARK}*"))
    assert left, f"the kill at {call} left nothing at the workspace's top to clean up"
    sb.phx("list")
    assert sorted(real.glob(f"{TMP_MARK}*")) == [], f"still there after `phx list` (killed at {call})"
