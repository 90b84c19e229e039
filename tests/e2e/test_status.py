"""`phx status` through the command: the last backup from the state file and its age, the next one
due, per target the last success, snapshot count, size and deduplication ratio, and the warning
(exit 1) when the last successful backup is older than the schedule implies."""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path

from e2e_support import Sandbox

from phoenix_backup.schedule.runlog import holding


def repo_bytes(repo: Path) -> int:
    return sum(p.stat().st_size for p in repo.rglob("*") if p.is_file() and "locks" not in p.parts)


def age_state(sb: Sandbox, seconds: float) -> None:
    """Make the recorded backups `seconds` older, as if no backup had run since."""
    path = sb.home / ".argentos" / "backup" / ".last-backup"
    state = json.loads(path.read_text())
    for entry in (state, state["lastSuccess"], *state["targetsLastSuccess"].values()):
        entry["timestamp"] -= seconds
    path.write_text(json.dumps(state))


def test_status_before_any_backup_says_so(make_sandbox: Callable[..., Sandbox]) -> None:
    sb = make_sandbox()
    res = sb.phx("status", check=1)
    assert res.out.startswith("warning: no backup has run yet")
    doc = sb.phx("status", "--json", check=1).json()
    assert doc["ok"] is False and doc["lastBackup"] is None and doc["overdue"] is True
    assert doc["targets"]["local"]["error"] is None and doc["targets"]["local"]["snapshots"] == 0
    # Without a repository (the sandbox makes one as `phx init` does): the fix is `phx init`.
    shutil.rmtree(sb.repo)
    doc = sb.phx("status", "--json", check=1).json()
    error = doc["targets"]["local"]["error"]
    assert error.startswith(f"no repository at {sb.repo}") and "not mounted" in error and "`phx init`" in error


def test_status_reports_last_backup_targets_and_dedup(make_sandbox: Callable[..., Sandbox]) -> None:
    sb = make_sandbox()
    first = sb.backup()
    with open(sb.workspace / "MEMORY.md", "a") as f:
        f.write("\n- one more thing\n")
    second = sb.backup()
    doc = sb.phx("status", "--json").json()
    assert doc["ok"] is True and doc["overdue"] is False and doc["alert"] is None
    last = doc["lastBackup"]
    assert last["success"] is True and last["snapshotId"] == second["id"] and 0 <= last["age"] < 120
    assert doc["lastSuccess"]["snapshotName"] == second["name"]
    local = doc["targets"]["local"]
    assert local["snapshots"] == 2
    assert local["size"] == repo_bytes(sb.repo)
    assert local["logicalSize"] == first["size"] + second["size"]
    # Two nearly identical snapshots stored once: close to 2x, more with compression.
    assert local["dedupRatio"] > 1.8, local
    assert local["lastSuccessAge"] < 120
    schedule = doc["schedule"]
    assert schedule["installed"] is False and schedule["description"] == "daily at 02:00"
    due = datetime.fromisoformat(schedule["nextDue"])
    assert 0 < due.timestamp() - time.time() <= 24 * 3600
    assert any("no schedule is installed" in w for w in doc["warnings"])
    text = sb.phx("status").out
    assert "last backup:" in text and "target local:" in text and "deduplication" in text

    # Status never asks for a passphrase: without one it still counts and sizes.
    quiet = sb.phx("status", "--json", env=sb.env_with(PHX_PASSPHRASE=None)).json()
    assert quiet["targets"]["local"]["snapshots"] == 2 and quiet["targets"]["local"]["dedupRatio"] is None
    assert "passphrase" in quiet["targets"]["local"]["notice"].lower()


def test_status_warns_when_the_last_success_is_older_than_the_schedule(make_sandbox: Callable[..., Sandbox]) -> None:
    sb = make_sandbox()
    sb.backup()
    age_state(sb, 2 * 3600)
    # Two hours is fine for a daily schedule...
    assert sb.phx("status", "--json").json()["overdue"] is False
    # ...but not for an hourly one.
    sb.write_config(schedule={"every": "hourly"})
    res = sb.phx("status", check=1)
    assert res.out.startswith("warning: the last successful backup is 2.0 h old")
    assert "hourly" in res.out and "expected one at" in res.out
    sb.write_config(schedule={"every": "daily", "at": "02:00"})
    age_state(sb, 3 * 86400)
    doc = sb.phx("status", "--json", check=1).json()
    assert doc["overdue"] is True and "3.1 days old" in doc["alert"] and "daily at 02:00" in doc["alert"]


def test_status_reports_a_failed_last_backup(make_sandbox: Callable[..., Sandbox]) -> None:
    sb = make_sandbox()
    good = sb.backup()
    sb.phx("backup", env=sb.env_with(PHX_PASSPHRASE="not the passphrase"), check=1)
    doc = sb.phx("status", "--json", check=1).json()
    assert doc["lastBackup"]["success"] is False and "passphrase" in doc["lastBackup"]["error"]
    assert doc["lastSuccess"]["snapshotId"] == good["id"]
    assert "passphrase" in doc["lastFailure"]["error"]
    assert any(w.startswith("the last backup failed") for w in doc["warnings"])
    assert doc["overdue"] is False, "the last success is recent; the failure is its own warning"


def test_a_database_saved_damaged_makes_the_backup_partial(make_sandbox: Callable[..., Sandbox]) -> None:
    """memory.db fails SQLite's integrity_check (an index out of step with its table): the backup
    exits 3, names it on stderr, and the state and `phx status` say partial, not success."""
    import sqlite3

    sb = make_sandbox()
    good = sb.backup()
    path = "home/.argentos/memory.db"
    con = sqlite3.connect(sb.db_path(path))
    con.executescript("CREATE TABLE zz (a, b); CREATE INDEX zz_a ON zz (a); INSERT INTO zz VALUES (1, 2), (3, 4);")
    con.close()
    con = sqlite3.connect(sb.db_path(path))
    con.executescript(
        "PRAGMA writable_schema = ON; UPDATE sqlite_master SET sql = 'CREATE INDEX zz_a ON zz (b)' WHERE name = 'zz_a';"
    )
    con.close()
    res = sb.phx("backup", check=3)
    assert f"phx: damaged: {path}: integrity check failed: row 1 missing from index zz_a" in res.err, res
    doc = sb.phx("status", "--json", check=1).json()
    last = doc["lastBackup"]
    assert last["success"] is False and last["partial"] is True, last
    assert [p["path"] for p in last["failedParts"]] == [path]
    assert doc["lastSuccess"]["snapshotId"] == good["id"]
    assert any(w.startswith("the last backup was partial") and path in w for w in doc["warnings"]), doc


def test_status_names_a_scheduled_run_that_never_finished(make_sandbox: Callable[..., Sandbox]) -> None:
    """A scheduled run killed mid-backup (the OOM killer, a reboot: SIGKILL) writes no end to its
    log and no state file: `phx status` said the night before's backup was the last, all well."""
    sb = make_sandbox()
    sb.phx_here("backup", "--json")
    folder = sb.home / ".argentos" / "backup"
    (folder / "schedule.json").write_text(
        json.dumps({"job": "backup", "scheduler": "cron", "every": "daily", "at": "02:00"})
    )
    logs = folder / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    done = (
        "2026-01-01T02:00:00+00:00 scheduled backup starting (config x)\n"
        "2026-01-01T02:01:00+00:00 scheduled backup finished: exit 0\n"
    )
    (logs / "backup.log").write_text(done)
    doc = sb.phx_here("status", "--json", code=0).json()
    assert not [w for w in doc["warnings"] if "scheduled backup that started" in w]
    # The next night's run, killed: its start is the log's last word.
    (logs / "backup.log").write_text(done + "2026-01-02T02:00:00+00:00 scheduled backup starting (config x)\n")
    doc = sb.phx_here("status", "--json", code=0).json()  # perhaps still running: a warning
    said = [w for w in doc["warnings"] if "scheduled backup that started" in w]
    assert len(said) == 1 and "started at 2026-01-02T02:00" in said[0] and "killed" in said[0], doc["warnings"]


def _a_killed_or_running_run(sb: Sandbox, started: datetime) -> Path:
    folder = sb.home / ".argentos" / "backup"
    logs = folder / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    (folder / "schedule.json").write_text(
        json.dumps({"job": "backup", "scheduler": "cron", "every": "daily", "at": "02:00"})
    )
    (logs / "backup.log").write_text(f"{started.isoformat(timespec='seconds')} scheduled backup starting (config x)\n")
    return logs


def _unfinished_said(sb: Sandbox) -> str:
    said = [w for w in sb.phx_here("status", "--json").json()["warnings"] if "scheduled backup that started" in w]
    assert len(said) == 1, said
    return said[0]


def test_status_tells_a_scheduled_run_still_going_from_a_killed_one(make_sandbox: Callable[..., Sandbox]) -> None:
    """During a long scheduled backup, `phx status` said "still running, or killed ... run `phx
    backup` if nothing runs": the user could not tell, and a second backup beside the first was
    what it asked for. The run holds a lock the kernel drops however it ends."""
    sb = make_sandbox()
    sb.phx_here("backup", "--json")
    logs = _a_killed_or_running_run(sb, datetime.now().astimezone() + timedelta(minutes=1))
    with holding(logs, "backup.log"):
        said = _unfinished_said(sb)
        assert "is still running" in said and "killed" not in said and "phx backup" not in said, said
    said = _unfinished_said(sb)  # the lock dropped, no end in the log: killed
    assert "was killed" in said and "still running" not in said and "run `phx backup`" in said, said


def test_a_backup_after_the_killed_scheduled_run_is_not_asked_for_again(make_sandbox: Callable[..., Sandbox]) -> None:
    """The run killed at 02:00, the user ran `phx backup` as `phx status` said: status still said
    "has not finished: still running ... run `phx backup`" until the next night's run."""
    sb = make_sandbox()
    _a_killed_or_running_run(sb, datetime.now().astimezone() - timedelta(hours=1))
    sb.phx_here("backup", "--json")
    said = _unfinished_said(sb)
    assert "was killed" in said and "a backup was recorded since" in said, said
    assert "run `phx backup`" not in said and "still running" not in said, said
