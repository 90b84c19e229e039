"""Integrity on its own cadence (docs/integrity-cadence.md): a database damaged between full
checks is saved "not checked", caught by the next full check (exit 3, an alert), and retention
keeps the last snapshot whose copy passed one; a restore of an unchecked copy checks it and refuses
a damaged one; a drill always checks, and both record their checks in the state file."""

from __future__ import annotations

import json
import sqlite3
import subprocess
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from e2e_support import PHX, Receiver, Sandbox, retention_only

# The repositories the commands leave are the point, not the process: the sandboxes' helpers run phx
# in this process (tests/e2e/conftest.py).
pytestmark = pytest.mark.phx_in_process

LOGICAL = "home/.argentos/cadence.db"
ROWS = 2000


def make_database(path: Path) -> None:
    con = sqlite3.connect(path)
    con.executescript("CREATE TABLE t(id INTEGER PRIMARY KEY, v TEXT NOT NULL);CREATE INDEX t_v ON t(v);")
    con.executemany("INSERT INTO t(id, v) VALUES (?, ?)", [(i, f"value-{i:05d}") for i in range(ROWS)])
    con.commit()
    con.close()


def damage_index(path: Path) -> None:
    """Change one key inside a leaf page of the index `t_v` (page type 0x0A): the table, its row
    count, the header and every page SQLite reads for `SELECT COUNT(*)` stay readable, but the index
    no longer matches the table, which only a full integrity_check notices."""
    data = bytearray(path.read_bytes())
    page_size = int.from_bytes(data[16:18], "big")
    needle = b"value-01000"
    at = data.find(needle)
    while at >= 0:
        page_start = at - at % page_size
        header = page_start + (100 if page_start == 0 else 0)
        if data[header] == 0x0A:
            data[at + len(needle) - 1] ^= 0x07  # value-01000 -> value-01007, out of order
            path.write_bytes(bytes(data))
            return
        at = data.find(needle, at + 1)
    raise AssertionError("no index leaf page holds the key")


def age_last_check(sb: Sandbox, hours: float) -> None:
    """A day passes, as far as the cadence can tell: the recorded check is `hours` older."""
    state_file = sb.home / ".argentos" / "backup" / ".last-backup"
    state = json.loads(state_file.read_text())
    record = state["integrityChecks"][LOGICAL]
    record["time"] = (datetime.fromisoformat(record["time"]) - timedelta(hours=hours)).isoformat()
    state_file.write_text(json.dumps(state))


def change_a_row(sb: Sandbox) -> None:
    con = sqlite3.connect(sb.db_path(LOGICAL))
    con.execute("UPDATE t SET v = 'changed' WHERE id = 7")
    con.commit()
    con.close()


def integrity_of(doc: dict[str, Any]) -> str:
    return str({d["path"]: d for d in doc["databases"]}[LOGICAL]["integrity"])


@pytest.fixture
def cadenced(make_sandbox: Callable[..., Sandbox], receiver: Receiver) -> Sandbox:
    sb = make_sandbox()
    db = sb.db_path(LOGICAL)
    make_database(db)
    sb.write_config(
        databases={"sqlite": [str(db)], "integrityCheckEvery": "24h"},
        retention=retention_only(last=1),
        notifications={"enabled": True, "urls": [receiver.url()]},
    )
    return sb


def test_damage_between_full_checks_is_caught_alerted_and_the_last_good_snapshot_kept(
    cadenced: Sandbox, receiver: Receiver, tmp_path: Path
) -> None:
    sb = cadenced
    good = sb.backup()
    assert integrity_of(good) == "ok" and good["integrityChecked"].get(LOGICAL) == "ok"
    state = json.loads((sb.home / ".argentos/backup/.last-backup").read_text())
    assert state["integrityChecks"][LOGICAL]["result"] == "ok"
    assert state["integrityChecks"][LOGICAL]["snapshotId"] == good["id"]

    damage_index(sb.db_path(LOGICAL))
    unchecked = sb.backup()  # within the day: saved as it is, not checked, exit 0, no alert
    assert integrity_of(unchecked) == "not checked", unchecked["databases"]
    assert LOGICAL not in unchecked["integrityChecked"]
    assert {d["path"]: d for d in unchecked["databases"]}[LOGICAL]["tables"] == {"t": ROWS}
    assert receiver.received == []
    # retention last=1 would leave only the newest: the last checked snapshot stays beside it.
    assert {s["id"] for s in sb.snapshots()} == {good["id"], unchecked["id"]}

    age_last_check(sb, 23)  # 23 h >= 90 % of 24 h: due
    res = sb.phx_here("backup", "--json", code=3)
    caught = res.json()
    problem = integrity_of(caught)
    assert problem not in ("ok", "not checked") and "t_v" in problem, problem
    assert caught["integrityChecked"].get(LOGICAL) == problem
    assert len(receiver.received) == 1
    alert = receiver.received[0]["body"]
    assert alert["type"] == "failure" and f"database {LOGICAL}: integrity" in alert["message"], alert
    state = json.loads((sb.home / ".argentos/backup/.last-backup").read_text())
    assert state["integrityChecks"][LOGICAL]["result"] == problem
    assert state["integrityChecks"][LOGICAL]["snapshotId"] == caught["id"]

    kept = {s["id"] for s in sb.snapshots()}
    assert good["id"] in kept, "retention forgot the last snapshot whose database passed a full check"
    assert unchecked["id"] not in kept and caught["id"] in kept
    plan = sb.phx_here("forget", "--dry-run", "--json").json()
    decisions = [s for t in plan["targets"].values() for s in t["snapshots"] if s["id"] == good["id"]]
    reasons = [r for s in decisions for r in s["reasons"]]
    assert [r["rule"] for r in reasons] == ["checked"], reasons

    # The next backup alerts again: checked again (the last check failed) or, unchanged, the same
    # bytes with the same result.
    again = sb.phx_here("backup", "--json", code=3).json()
    assert integrity_of(again) == problem
    assert len(receiver.received) == 2
    assert good["id"] in {s["id"] for s in sb.snapshots()}


def test_restore_checks_an_unchecked_copy_and_refuses_a_damaged_one(cadenced: Sandbox, tmp_path: Path) -> None:
    sb = cadenced
    sb.backup()
    con = sqlite3.connect(sb.db_path(LOGICAL))
    con.execute("INSERT INTO t(id, v) VALUES (?, ?)", (ROWS, "added"))
    con.commit()
    con.close()
    fine = sb.backup()
    assert integrity_of(fine) == "not checked"
    dest = tmp_path / "fine"
    sb.restore_to(fine["id"], dest)
    restored = dest / LOGICAL
    con = sqlite3.connect(restored)
    assert con.execute("SELECT COUNT(*) FROM t").fetchone()[0] == ROWS + 1
    con.close()

    damage_index(sb.db_path(LOGICAL))
    bad = sb.backup()
    assert integrity_of(bad) == "not checked"
    dest = tmp_path / "bad"
    res = sb.phx("restore", "--backup", bad["id"], "--to", dest, "--json", check=None)
    assert res.code in (1, 3), res
    assert "fails integrity_check" in res.out + res.err, res
    assert not (dest / LOGICAL).exists(), "a damaged copy was restored"


def test_drill_always_checks_and_records_it(cadenced: Sandbox, tmp_path: Path) -> None:
    sb = cadenced
    sb.backup()
    damage_index(sb.db_path(LOGICAL))
    bad = sb.backup()
    assert integrity_of(bad) == "not checked"
    res = sb.phx_here("drill", "--json", "--scratch", tmp_path, code=1)
    doc = res.json()
    report = {d["path"]: d for d in doc["databases"]}[LOGICAL]
    assert report["integrity"] not in ("ok", "not checked") and "t_v" in report["integrity"], report
    assert any(e["path"] == LOGICAL and "integrity_check" in e["message"] for e in doc["errors"]), doc["errors"]
    state = json.loads((sb.home / ".argentos/backup/.last-backup").read_text())
    record = state["integrityChecks"][LOGICAL]
    assert record["by"] == "drill" and record["snapshotId"] == bad["id"] and record["result"] == report["integrity"]
    # `phx status` names it and exits 1 (`phx status || alert`), though the last backup succeeded.
    res = sb.phx_here("status", "--json", code=1)
    status = res.json()
    assert status["lastBackup"]["success"] is True and status["ok"] is False
    assert status["integrityChecks"][LOGICAL]["result"] == report["integrity"]
    assert any(w.startswith(f"{LOGICAL} failed its last full integrity check (drill") for w in status["warnings"])
    # The drill's failure makes the next backup check in full (and find the damage) at once.
    after = sb.phx_here("backup", "--json", code=3).json()
    assert after["integrityChecked"].get(LOGICAL) == integrity_of(after)


def test_an_unchanged_database_is_checked_again_when_its_check_is_due(cadenced: Sandbox) -> None:
    sb = cadenced
    first = sb.backup()
    change_a_row(sb)
    unchecked = sb.backup()
    assert integrity_of(unchecked) == "not checked"
    age_last_check(sb, 30)
    checked = sb.backup()  # nothing changed since, but the image was never checked
    assert integrity_of(checked) == "ok" and checked["integrityChecked"].get(LOGICAL) == "ok"
    assert first["id"] != checked["id"]


def test_every_backup_checks_with_a_zero_interval(cadenced: Sandbox) -> None:
    sb = cadenced
    sb.write_config(databases={"sqlite": [str(sb.db_path(LOGICAL))], "integrityCheckEvery": "0h"})
    sb.backup()
    damage_index(sb.db_path(LOGICAL))
    res = sb.phx_here("backup", "--json", code=3)
    assert "t_v" in integrity_of(res.json())


def test_a_bad_interval_is_a_config_error(cadenced: Sandbox) -> None:
    sb = cadenced
    sb.write_config(databases={"sqlite": [], "integrityCheckEvery": "every day"})
    res = sb.phx("backup", check=2)
    assert "databases.integrityCheckEvery must be a duration" in res.err
    assert "Traceback" not in res.err


def test_a_check_recorded_for_another_repository_does_not_skip_this_ones(cadenced: Sandbox) -> None:
    """The state file is one per home, whichever repository a backup goes to: a check recorded
    for the snapshot of another repository (the one this home backed up to before `phx init` of
    a new one, or a second config's) proves nothing this repository holds. Counted, this
    repository's copies were all `not checked`, and once the database was damaged and caught,
    retention kept only the damaged copy."""
    sb = cadenced
    sb.backup()  # checked, into the first repository
    sb.reinit()  # a new repository, the same home and state file
    first = sb.backup()
    assert integrity_of(first) == "ok" and first["integrityChecked"].get(LOGICAL) == "ok"
    damage_index(sb.db_path(LOGICAL))
    assert integrity_of(sb.backup()) == "not checked"
    age_last_check(sb, 23)
    sb.phx_here("backup", "--json", code=3)
    assert first["id"] in {s["id"] for s in sb.snapshots()}, "only damaged and unchecked copies are left"


def test_an_unchecked_damaged_copy_is_never_applied_in_place(cadenced: Sandbox) -> None:
    """In place, over a live database an agent holds open, and for `--path` of that database alone:
    the damaged unchecked copy is refused and the live database keeps its bytes."""
    sb = cadenced
    sb.backup()
    live = sb.db_path(LOGICAL)
    damage_index(live)
    bad = sb.backup()
    assert integrity_of(bad) == "not checked"
    # The live database is repaired (rebuilt from its rows) before the mistaken restore.
    live.unlink()
    make_database(live)
    before = live.read_bytes()
    held = sqlite3.connect(live)  # the agent holds it open
    try:
        for only in ((), ("--path", LOGICAL)):
            res = sb.phx("restore", "--backup", bad["id"], "--yes", "--json", *only, check=None)
            assert res.code in (1, 3), res
            assert "fails integrity_check" in res.out + res.err, res
            assert live.read_bytes() == before, f"the damaged copy was applied ({only})"
        assert held.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    finally:
        held.close()


def test_dump_and_archive_say_a_copy_was_not_checked(cadenced: Sandbox, tmp_path: Path) -> None:
    """`phx dump` and `phx archive` hand a copy out as it is, unchecked: they say so on stderr
    (their output stays the bytes), and say nothing for a copy that passed."""
    sb = cadenced
    good = sb.backup()
    damage_index(sb.db_path(LOGICAL))
    bad = sb.backup()
    warning = f"the copy of {LOGICAL} was not checked by PRAGMA integrity_check at backup"

    def dump(ref: str) -> tuple[bytes, str]:
        proc = subprocess.run([PHX, "dump", ref, LOGICAL], env=sb.env, capture_output=True, timeout=60, check=True)
        return proc.stdout, proc.stderr.decode()

    data, err = dump(bad["id"])
    assert warning in err and data.startswith(b"SQLite format 3\0"), err
    assert warning not in dump(good["id"])[1]
    res = sb.phx_here("archive", bad["id"], "--output", tmp_path / "bad.tar.gz")
    assert warning in res.err, res.err
    assert warning not in sb.phx_here("archive", good["id"], "--output", tmp_path / "good.tar.gz").err


def test_a_watch_base_that_runs_the_full_check_records_it_and_warns_on_a_failure(cadenced: Sandbox) -> None:
    """`phx watch` takes its base snapshot as a backup does, full check included when one is due:
    the check is recorded like a backup's (a failure makes `phx status` exit 1 and the next backup
    check in full and alert), and a failure is named at once, not a day later."""
    sb = cadenced
    sb.backup()
    damage_index(sb.db_path(LOGICAL))
    age_last_check(sb, 23)  # due: the base runs the full check
    res = sb.phx("watch", "--duration", "1", "--no-files", "--json", check=None)
    doc = res.json()
    assert doc["bases"] == 1, doc
    assert any(LOGICAL in w and "integrity_check" in w for w in doc["warnings"]), doc["warnings"]
    state = json.loads((sb.home / ".argentos/backup/.last-backup").read_text())
    record = state["integrityChecks"][LOGICAL]
    assert record["result"] not in ("ok", "not checked") and "t_v" in record["result"], record
    sb.phx_here("status", "--json", code=1)


def test_a_passing_drill_does_not_postpone_the_backups_full_check(cadenced: Sandbox, tmp_path: Path) -> None:
    """A drill's pass is known only to this machine's state file, not to the snapshot, so retention
    cannot keep the drilled copy for it. Counted for the cadence, a drill run more often than the
    interval stopped every backup from checking: no snapshot recorded a pass again, retention could
    keep only an ever older one, and a damage waited for the next drill."""
    sb = cadenced
    sb.backup()
    change_a_row(sb)
    drilled = sb.backup()
    assert integrity_of(drilled) == "not checked"
    age_last_check(sb, 23)  # the backup's full check is due
    sb.phx_here("drill", "--json", "--scratch", tmp_path)  # passes
    damage_index(sb.db_path(LOGICAL))
    res = sb.phx_here("backup", "--json", code=3)
    assert "t_v" in integrity_of(res.json())
