"""When a backup runs the full integrity_check (`check_due`), and how the state file keeps the
last full check of each database (`record_integrity_checks`): docs/integrity-cadence.md."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from pathlib import Path

from phoenix_backup.ops.backup import check_due
from phoenix_backup.state import IntegrityCheck, integrity_checks, record_integrity_checks, write_state

NOW = datetime(2026, 12, 5, 2, 0, 30, tzinfo=timezone(timedelta(hours=1)))


def check(hours_ago: float, result: str = "ok") -> IntegrityCheck:
    return IntegrityCheck((NOW - timedelta(hours=hours_ago)).isoformat(), result, "a" * 64, "backup")


def test_a_check_is_due_at_90_percent_of_the_interval() -> None:
    # A daily schedule that starts a few minutes early still checks at every run.
    assert check_due(check(23.9), "24h", NOW)
    assert check_due(check(21.6), "24h", NOW)
    assert not check_due(check(21.5), "24h", NOW)
    assert not check_due(check(0.1), "1d", NOW)
    assert check_due(check(24 * 6.3), "7d", NOW) and not check_due(check(24 * 6.2), "7d", NOW)


def test_a_check_is_due_without_a_passing_record() -> None:
    assert check_due(None, "24h", NOW)
    assert check_due(check(0.1, "row 3 missing from index i"), "24h", NOW)
    assert check_due(check(0.0), "0h", NOW)  # "0h": at every backup
    assert check_due(check(-2), "24h", NOW)  # recorded in the future: the clock went back
    assert check_due(IntegrityCheck("yesterday", "ok", "a" * 64, "backup"), "24h", NOW)
    assert check_due(IntegrityCheck("2026-12-05T01:00:00", "ok", "a" * 64, "backup"), "24h", NOW)


def test_records_merge_newest_state_first_and_failures_always(tmp_path: Path) -> None:
    state = tmp_path / ".last-backup"
    m, o = "home/.argentos/memory.db", "home/.argentos/observations.db"
    record_integrity_checks({m: check(1), o: check(1)}, state)
    # A drill of an older snapshot that passed does not move the cadence back ...
    record_integrity_checks({m: IntegrityCheck(check(30).time, "ok", "b" * 64, "drill")}, state)
    assert integrity_checks(state)[m] == check(1)
    # ... one that failed replaces the record, so the next backup checks in full.
    failed = IntegrityCheck(check(30).time, "page 7: btreeInitPage() returns error code 11", "b" * 64, "drill")
    record_integrity_checks({m: failed}, state)
    assert integrity_checks(state) == {m: failed, o: check(1)}
    # A backup's state file keeps them; a damaged record reads as none (the check is then due).
    write_state(
        timestamp=NOW.timestamp(),
        backup_path="/r",
        compression=True,
        success=True,
        snapshot_id="c" * 64,
        snapshot_name="n",
        error=None,
        targets={},
        scope="full",
        path=state,
    )
    doc = json.loads(state.read_text())
    assert set(doc["integrityChecks"]) == {m, o}
    doc["integrityChecks"][o] = {"time": 3}
    state.write_text(json.dumps(doc))
    assert set(integrity_checks(state)) == {m}


def test_after_the_clock_went_back_a_backups_check_replaces_the_record_from_the_future(tmp_path: Path) -> None:
    # The clock was set back two days: the record from the future makes the check due (as it
    # should), and the check the backup then runs is the database's last check. Kept behind the
    # future record, it made every backup run the full check until the clock caught up.
    state, m = tmp_path / ".last-backup", "home/.argentos/memory.db"
    record_integrity_checks({m: check(-48)}, state)
    assert check_due(integrity_checks(state)[m], "24h", NOW)
    record_integrity_checks({m: check(0)}, state)
    assert integrity_checks(state)[m] == check(0)
    assert not check_due(integrity_checks(state)[m], "24h", NOW + timedelta(hours=1))
    # A drill of an older snapshot still does not move a record of the present back.
    record_integrity_checks({m: IntegrityCheck(check(30).time, "ok", "b" * 64, "drill")}, state)
    assert integrity_checks(state)[m] == check(0)
