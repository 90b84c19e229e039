"""Integrity checks recorded in the repository (repo/checks.py, docs/restore-checks.md): a
restore of bytes that a drill or an earlier restore proved to pass `integrity_check` does not run
it again, on any machine; a forged, replayed or outvoted "passed" record never lets a damaged
copy through; prune deletes the records of forgotten snapshots."""

from __future__ import annotations

import os
import shutil
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from e2e_support import PASSPHRASE, Receiver, Sandbox
from test_integrity_cadence import LOGICAL, ROWS, change_a_row, damage_index, integrity_of, make_database

from phoenix_backup.config import load_config
from phoenix_backup.ops import drill
from phoenix_backup.ops.context import Environment
from phoenix_backup.repo import checks, keys
from phoenix_backup.repo.repository import Repository
from phoenix_backup.repo.walker import walk_tree
from phoenix_backup.storage.local import LocalBackend

# The repositories the commands leave are the point, not the process: the sandboxes' helpers run phx
# in this process (tests/e2e/conftest.py).
pytestmark = pytest.mark.phx_in_process


@pytest.fixture
def cadenced(make_sandbox: Callable[..., Sandbox], receiver: Receiver) -> Sandbox:
    sb = make_sandbox()
    db = sb.db_path(LOGICAL)
    make_database(db)
    sb.write_config(databases={"sqlite": [str(db)], "integrityCheckEvery": "24h"})
    return sb


def copy_check(doc: dict[str, Any]) -> dict[str, Any]:
    return dict({d["path"]: d for d in doc["databases"]}[LOGICAL].get("copyCheck") or {})


def records(sb: Sandbox) -> list[Path]:
    folder = sb.repo / "checks"
    return sorted(folder.iterdir()) if folder.is_dir() else []


def recorded(sb: Sandbox, *, by_backups: bool = False) -> list[checks.CheckRecord]:
    """The records of the test's database that open with the repository's key; those of the
    backups' own full checks only with `by_backups` (the tests are about what a drill or a
    restore records)."""
    book = checks.CheckBook(open_repo(sb.repo))
    return [r for rs in book.load().values() for r in rs if r.path == LOGICAL and (by_backups or r.by != "backup")]


def open_repo(path: Path, passphrase: str = PASSPHRASE) -> Repository:
    return Repository.open(LocalBackend(path), keys.Credentials(passphrase=passphrase))


def node_of(sb: Sandbox, snapshot: str) -> tuple[str, int]:
    """The SHA-256 and size of the snapshot's copy of the database (as `phx ls --json` gives them)."""
    listing = sb.phx_here("ls", snapshot, "--json").json()
    entries = listing if isinstance(listing, list) else listing["entries"]
    node = next(e for e in entries if e["path"] == LOGICAL)
    return str(node["sha256"]), int(node["size"])


def test_a_restore_records_its_check_and_the_next_restore_of_those_bytes_skips_it(
    cadenced: Sandbox, tmp_path: Path
) -> None:
    sb = cadenced
    checked = sb.backup()
    assert integrity_of(checked) == "ok"
    first = sb.restore_to(checked["id"], tmp_path / "a")
    assert copy_check(first) == {"ran": False, "by": "backup"}  # the backup's own check counts, as before
    assert recorded(sb) == []  # the restore ran no check: it records nothing
    assert [(r.by, r.result, r.snapshot) for r in recorded(sb, by_backups=True)] == [("backup", "ok", checked["id"])]

    change_a_row(sb)
    daily = sb.backup()
    assert integrity_of(daily) == "not checked"
    once = sb.restore_to(daily["id"], tmp_path / "b")
    assert copy_check(once) == {"ran": True, "by": "restore"}
    assert [(r.by, r.result, r.snapshot) for r in recorded(sb)] == [("restore", "ok", daily["id"])], (
        "the restore's passing check was not recorded in the repository"
    )
    assert [r.checks for r in recorded(sb)] == [("integrity_check",)]  # what a restore runs, named

    # Another machine: nothing but the repository (a new home, no cache, no state file).
    (sb.home / ".argentos" / "backup" / ".last-backup").unlink()
    for cache in (sb.home / ".cache", sb.cache):
        shutil.rmtree(cache, ignore_errors=True)
    again = sb.restore_to(daily["id"], tmp_path / "c")
    check = copy_check(again)
    assert check["ran"] is False and check["by"] == "restore" and check["snapshot"] == daily["id"], check
    # Every byte is still proven against the snapshot's SHA-256: the same database comes back.
    con = sqlite3.connect(tmp_path / "c" / LOGICAL)
    assert con.execute("SELECT v FROM t WHERE id = 7").fetchone()[0] == "changed"
    assert con.execute("SELECT COUNT(*) FROM t").fetchone()[0] == ROWS
    con.close()
    text = sb.phx_here("restore", "--backup", daily["id"], "--to", tmp_path / "d").out
    assert "passed integrity_check in a restore at" in text and "not run again" in text, text


def test_a_backups_check_counts_for_the_same_bytes_in_a_later_snapshot_recorded_not_checked(
    cadenced: Sandbox, tmp_path: Path
) -> None:
    """The database's file is touched (a program opened it and wrote nothing): the next backup
    reads it again, between full checks, and records its copy `not checked`, though its bytes are
    those the first backup checked, hash for hash. The first backup's check is recorded in the
    repository, so a restore of the second snapshot finds it by the bytes' SHA-256 and does not
    run the check again (it did before)."""
    sb = cadenced
    checked = sb.backup()
    assert integrity_of(checked) == "ok"
    assert [(r.by, r.result, r.snapshot) for r in recorded(sb, by_backups=True)] == [("backup", "ok", checked["id"])]
    db = sb.db_path(LOGICAL)
    st = db.stat()
    os.utime(db, ns=(st.st_atime_ns, st.st_mtime_ns + 2_000_000_000))
    touched = sb.backup()
    assert integrity_of(touched) == "not checked"
    assert node_of(sb, touched["id"]) == node_of(sb, checked["id"])  # the very bytes
    check = copy_check(sb.restore_to(touched["id"], tmp_path / "r"))
    assert check == {"ran": False, "by": "backup", "checkedAt": check.get("checkedAt"), "snapshot": checked["id"]}
    assert (tmp_path / "r" / LOGICAL).read_bytes() == db.read_bytes()


def test_a_drill_records_its_checks_for_the_restores_after_it(cadenced: Sandbox, tmp_path: Path) -> None:
    sb = cadenced
    sb.backup()
    change_a_row(sb)
    daily = sb.backup()
    assert integrity_of(daily) == "not checked"
    sb.phx_here("drill", "--json", "--scratch", tmp_path, code=0)
    assert [(r.by, r.result, r.snapshot) for r in recorded(sb)] == [("drill", "ok", daily["id"])]
    assert [r.checks for r in recorded(sb)] == [("integrity_check", "fts5_integrity_check")]
    check = copy_check(sb.restore_to(daily["id"], tmp_path / "r"))
    assert check["ran"] is False and check["by"] == "drill", check
    # The drill itself always checks (it is the proof): a second drill still runs every check.
    doc = sb.phx_here("drill", "--json", "--scratch", tmp_path, code=0).json()
    assert {d["path"]: d for d in doc["databases"]}[LOGICAL]["integrity"] == "ok"


def test_no_record_lets_a_damaged_copy_through(cadenced: Sandbox, tmp_path: Path) -> None:
    """As an attacker with write access to the storage: a record sealed with another repository's
    key for the damaged bytes, a genuine passing record of other bytes renamed, and (as a later
    check that disagrees) a passing record made with the owner's key beside the failure the restore
    recorded. Each time the copy is checked and refused."""
    sb = cadenced
    sb.backup()
    damage_index(sb.db_path(LOGICAL))
    bad = sb.backup()
    assert integrity_of(bad) == "not checked"
    sha, size = node_of(sb, bad["id"])
    owner = open_repo(sb.repo)

    # Another key (the repository's own id, in its config for all to read), claiming the damaged
    # bytes passed.
    forger = Repository(LocalBackend(sb.repo), owner.config, keys.MasterSecrets.generate())
    forged = checks.record(sha, size, "ok", "drill", bad["id"], LOGICAL, sqlite3.sqlite_version)
    raw = checks.seal(forger, forged)
    (sb.repo / "checks").mkdir(exist_ok=True)
    (sb.repo / checks.name_of(sha, raw)).write_bytes(raw)
    # A genuine record of the good bytes, stored under a name that fits another object.
    good_sha, good_size = node_of(sb, sb.snapshots()[0]["id"])
    genuine = checks.seal(owner, checks.record(good_sha, good_size, "ok", "drill", bad["id"], LOGICAL, "3"))
    (sb.repo / checks.name_of(sha, genuine)).write_bytes(genuine)

    def refused(dest: Path) -> None:
        res = sb.phx("restore", "--backup", bad["id"], "--to", dest, "--json", check=None)
        assert res.code in (1, 3), res
        assert "fails integrity_check" in res.out + res.err, res
        assert not (dest / LOGICAL).exists(), "a damaged copy was restored"

    refused(tmp_path / "x")
    # The refusal was recorded as a failure; a pass by the owner's key beside it (an older SQLite,
    # a clock set back) does not outvote it.
    book = checks.CheckBook(open_repo(sb.repo))
    assert any(not r.passed for r in book.load().get(sha, [])), "the failed check was not recorded"
    checks.write(owner, [checks.record(sha, size, "ok", "drill", bad["id"], LOGICAL, sqlite3.sqlite_version)])
    refused(tmp_path / "y")


def test_prune_deletes_the_records_of_forgotten_snapshots(cadenced: Sandbox, tmp_path: Path) -> None:
    sb = cadenced
    first = sb.backup()
    change_a_row(sb)
    daily = sb.backup()
    sb.restore_to(daily["id"], tmp_path / "r")
    assert len(recorded(sb)) == 1
    kept_before = [r for r in recorded(sb, by_backups=True) if r.by == "backup"]
    assert [r.snapshot for r in kept_before] == [first["id"]]  # the first backup's own check
    before = len(records(sb))
    (sb.repo / "checks" / ("f" * 64)).write_bytes(os.urandom(200))  # planted: opens with no key
    kept = sb.phx_here("prune", "--dry-run", "--json").json()
    assert [t["checkRecords"] for t in kept["targets"].values()] == [1], kept  # the planted one
    assert len(records(sb)) == before + 1  # a dry run deletes nothing
    sb.phx_here("forget", daily["id"], "--json")
    sb.phx_here("prune", "--json")
    assert recorded(sb) == []  # the restore's record of the forgotten snapshot went
    assert recorded(sb, by_backups=True) == kept_before  # the kept snapshot's stays
    sb.phx_here("forget", first["id"], "--json")
    sb.phx_here("prune", "--json")
    assert records(sb) == []


def _name_not_utf8(db: Path) -> None:
    """A table whose name is not UTF-8: `integrity_check` passes, but reading the schema's names
    (the drill counts rows before it runs the FTS5 checks) raises."""
    con = sqlite3.connect(db, isolation_level=None)
    con.execute("CREATE TABLE x(a)")
    con.execute("PRAGMA writable_schema=ON")
    con.execute(
        "UPDATE sqlite_master SET name=CAST(X'78FF' AS TEXT), tbl_name=CAST(X'78FF' AS TEXT), "
        "sql='CREATE TABLE \"'||CAST(X'78FF' AS TEXT)||'\"(a)' WHERE name='x'"
    )
    con.close()


def _tokenizer_missing(db: Path) -> None:
    """An FTS5 table whose tokenizer this SQLite does not have: its check cannot run."""
    con = sqlite3.connect(db, isolation_level=None)
    con.execute("CREATE VIRTUAL TABLE notes_fts USING fts5(body)")
    con.execute("INSERT INTO notes_fts VALUES ('hello')")
    con.execute("PRAGMA writable_schema=ON")
    con.execute(
        "UPDATE sqlite_master SET sql='CREATE VIRTUAL TABLE notes_fts USING fts5(body, tokenize=nosuch)' "
        "WHERE name='notes_fts'"
    )
    con.close()


def test_a_drill_records_no_pass_when_the_fts5_checks_were_never_reached(cadenced: Sandbox, tmp_path: Path) -> None:
    """The drill's checks of a restored copy where counting the rows raises before the FTS5
    checks run (a table name that is not UTF-8; `integrity_check` passes): no pass is recorded
    for its bytes. (A backup refuses such a database, so the copy is checked here as the drill
    checks the one it restored.)"""
    sb = cadenced
    snap_id = sb.backup()["id"]
    repo = open_repo(sb.repo)
    repo.load_index()
    snap = repo.load_snapshot(snap_id)
    nodes = [(logical, node) for logical, node in walk_tree(repo, snap.tree) if logical == LOGICAL]
    scratch = tmp_path / "scratch"
    copy = scratch / LOGICAL
    copy.parent.mkdir(parents=True)
    shutil.copyfile(sb.db_path(LOGICAL), copy)
    _name_not_utf8(copy)
    ctx = drill.DrillContext(load_config(sb.config_path, sb.env), Environment(env=sb.env), snap, scratch)
    report = drill.SqliteDrill().check(ctx, None, copy)
    assert report.integrity == "ok" and report.problems, report
    result = drill.DrillResult(snap_id, "", "", "", "", "", databases=[report])
    drill._record_in_repository(repo, snap, nodes, {LOGICAL}, result)
    assert not [r for r in recorded(sb) if r.passed], [(r.by, r.result) for r in recorded(sb)]


@pytest.mark.parametrize("damage", [_tokenizer_missing])
def test_a_drill_records_no_pass_when_a_check_it_names_did_not_run(
    cadenced: Sandbox, tmp_path: Path, damage: Callable[[Path], None]
) -> None:
    """A pass lets every later restore of those bytes skip `integrity_check`: it is recorded only
    when every check ran and passed, not when the FTS5 checks were never reached (an error before
    them) or could not run (no tokenizer)."""
    sb = cadenced
    damage(sb.db_path(LOGICAL))
    sb.phx_here("backup", "--json", code=0)
    snap = sb.snapshots()[-1]["id"]
    sb.phx("drill", "--json", "--scratch", tmp_path, check=None)
    sha, _size = node_of(sb, snap)
    assert not [r for r in recorded(sb) if r.sha256 == sha and r.passed], [(r.by, r.result) for r in recorded(sb)]
