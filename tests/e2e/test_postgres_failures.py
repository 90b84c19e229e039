"""PostgreSQL that cannot be backed up: the error names the database and the fix, every other
source is still saved, the run exits 3, the state file names the failed part, and the snapshot
never claims the database."""

from __future__ import annotations

import glob
import json
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from e2e_support import Sandbox

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import services
from services import (
    AGENT_ROLE,
    ROLE_PASSWORD,
    PgServer,
    free_port,
    make_memory_db,
    postgres_entry,
    reader_entry,
)

pg_server = services.pg_server  # the session's PostgreSQL server (a fixture)


def _backup_without_db(sandbox: Sandbox, env: dict[str, str], *needles: str) -> dict[str, Any]:
    """Exit 3; the database is named as not saved, with every needle; the files were saved."""
    res = sandbox.phx("backup", "--json", env=env, check=3)
    doc: dict[str, Any] = res.json()
    failed = [i for i in doc["incomplete"] if i["path"] == "postgres/main"]
    assert len(failed) == 1, doc["incomplete"]
    for needle in needles:
        assert needle.lower() in failed[0]["error"].lower(), failed[0]["error"]
    assert "main" in failed[0]["error"]
    assert all(d["path"] != "postgres/main" for d in doc["databases"])
    # Everything else is in the snapshot, and nothing of the database.
    listing = sandbox.phx("ls", doc["id"], env=env).out
    assert "postgres" not in listing and "MEMORY.md" in listing
    assert any(d["path"].endswith("memory.db") for d in doc["databases"])
    assert doc["files"] > 10
    state = json.loads((sandbox.home / ".argentos" / "backup" / ".last-backup").read_text())
    assert "postgres/main" in (state["error"] or ""), state
    return doc


def test_missing_pg_dump_is_named_and_the_rest_is_saved(sandbox: Sandbox, pg_server: PgServer) -> None:
    db = make_memory_db(pg_server, rows_per_agent=2, dims=8)
    sandbox.write_config(databases={"postgres": [postgres_entry(pg_server, db, pgDump="/opt/none/bin/pg_dump")]})
    env = sandbox.env_with(PHX_TEST_PGPASSWORD=pg_server.password)
    _backup_without_db(sandbox, env, "/opt/none/bin/pg_dump: No such file or directory", "pgDump")


def _older_pg_dump() -> str | None:
    for path in sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_dump")):
        if int(path.split("/")[4]) < 18:
            return path
    return None


def test_pg_dump_older_than_the_server_is_refused(sandbox: Sandbox, pg_server: PgServer) -> None:
    old = _older_pg_dump()
    if old is None:
        pytest.skip("no Debian pg_dump older than PostgreSQL 18 here (postgresql-client; scripts/test.sh installs it)")
    db = make_memory_db(pg_server, rows_per_agent=2, dims=8)
    entry = postgres_entry(pg_server, db)
    del entry["pgDump"]  # found on PATH and in the usual places: only the older Debian one is there
    sandbox.write_config(databases={"postgres": [entry]})
    env = sandbox.env_with(PHX_TEST_PGPASSWORD=pg_server.password, PATH=f"{Path(old).parent}:/usr/bin:/bin")
    doc = _backup_without_db(sandbox, env, "older than the server", "PostgreSQL 18", "pgDump")
    version = subprocess.run([old, "--version"], capture_output=True, text=True, check=True).stdout.split()[2]
    assert version in doc["incomplete"][0]["error"]


def test_unreachable_server_and_wrong_password_are_partial_failures(sandbox: Sandbox, pg_server: PgServer) -> None:
    db = make_memory_db(pg_server, rows_per_agent=2, dims=8)
    sandbox.write_config(databases={"postgres": [postgres_entry(pg_server, db, port=free_port())]})
    env = sandbox.env_with(PHX_TEST_PGPASSWORD=pg_server.password)
    _backup_without_db(sandbox, env, "cannot connect to PostgreSQL database `main`")

    sandbox.write_config(databases={"postgres": [postgres_entry(pg_server, db)]})
    wrong = sandbox.env_with(PHX_TEST_PGPASSWORD="not-the-password")
    _backup_without_db(sandbox, wrong, "password authentication failed")

    unset = sandbox.env_with(PHX_TEST_PGPASSWORD=None)
    _backup_without_db(sandbox, unset, "PHX_TEST_PGPASSWORD", "not set")


def test_role_without_bypassrls_is_explained(sandbox: Sandbox, pg_server: PgServer) -> None:
    db = make_memory_db(pg_server, rows_per_agent=2, dims=8)
    sandbox.write_config(
        databases={"postgres": [postgres_entry(pg_server, db, user=AGENT_ROLE, passwordEnv="PHX_TEST_ROLE_PW")]}
    )
    env = sandbox.env_with(PHX_TEST_ROLE_PW=ROLE_PASSWORD)
    _backup_without_db(sandbox, env, "row-level security", "BYPASSRLS", "public.memory_items", "agentId")


def test_dump_failing_midway_leaves_no_database_in_the_snapshot(sandbox: Sandbox, pg_server: PgServer) -> None:
    pg = pg_server
    db = pg.create_database("big")
    pg.sql(
        db,
        """
        CREATE TABLE notes (id bigint PRIMARY KEY, body text);
        INSERT INTO notes SELECT i, repeat(md5(i::text), 40) FROM generate_series(1, 150000) i;
        """,
    )
    sandbox.write_config(databases={"postgres": [postgres_entry(pg, db)]})
    env = sandbox.env_with(PHX_TEST_PGPASSWORD=pg.password)
    killed: list[int] = []

    def kill_the_dump() -> None:
        # The moment pg_dump's COPY is running, its server process is terminated.
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not killed:
            rows = pg.query(
                "postgres",
                "SELECT pid FROM pg_stat_activity WHERE application_name = 'pg_dump' AND query LIKE 'COPY%%'",
            )
            for (pid,) in rows:
                pg.query("postgres", "SELECT pg_terminate_backend(%s)", (pid,))
                killed.append(pid)
            time.sleep(0.005)

    killer = threading.Thread(target=kill_the_dump)
    killer.start()
    try:
        doc = _backup_without_db(sandbox, env, "pg_dump of PostgreSQL database `main` failed")
    finally:
        killed.append(-1)
        killer.join()
    assert killed[0] != -1, "the dump finished before it could be interrupted"
    assert "nothing of it was kept" in doc["incomplete"][0]["error"]
    pg.drop_database(db)


def test_a_backup_without_its_database_is_partial_alerts_and_fails_status(
    sandbox: Sandbox, pg_server: PgServer
) -> None:
    from test_notify import Receiver

    receiver = Receiver()
    try:
        db = make_memory_db(pg_server, rows_per_agent=2, dims=8)
        sandbox.write_config(
            databases={"postgres": [postgres_entry(pg_server, db)]},
            notifications={"enabled": True, "urls": [receiver.url()]},
        )
        good = sandbox.phx("backup", "--json", env=sandbox.env_with(PHX_TEST_PGPASSWORD=pg_server.password)).json()
        assert receiver.received == []
        res = sandbox.phx("backup", "--json", env=sandbox.env_with(PHX_TEST_PGPASSWORD="not-the-password"), check=3)
        doc = res.json()
        # The failed part is said on stderr too, beside the JSON on stdout.
        said = "\n".join(res.stderr_lines())
        assert "phx: not saved: postgres/main: " in said and "password authentication failed" in said, res

        state = json.loads((sandbox.home / ".argentos" / "backup" / ".last-backup").read_text())
        assert state["success"] is False and state["partial"] is True, state
        assert [p["path"] for p in state["failedParts"]] == ["postgres/main"]
        assert "password authentication failed" in state["failedParts"][0]["error"]
        assert state["snapshotId"] == doc["id"] and state["lastSuccess"]["snapshotId"] == good["id"]
        assert all(t["ok"] for t in state["targets"].values()), "a database is not a target"
        assert "postgres/main" in state["lastFailure"]["error"]

        status = sandbox.phx("status", check=1)
        assert "PARTIAL" in status.out and "not saved or are damaged: postgres/main" in status.out, status
        assert "target" not in " ".join(ln for ln in status.out.splitlines() if "postgres/main" in ln)
        last = sandbox.phx("status", "--json", check=1).json()["lastBackup"]
        assert last["partial"] is True and last["failedParts"][0]["path"] == "postgres/main"

        assert len(receiver.received) == 1
        body = receiver.received[0]["body"]
        assert body["type"] == "failure" and "INCOMPLETE" in body["title"]
        assert "not saved: postgres/main" in body["message"]
    finally:
        receiver.stop()


@pytest.mark.parametrize("agent", [True, False], ids=["agent-rows", "dump"])
def test_a_table_locked_by_another_session_fails_the_read_after_a_bounded_wait(
    sandbox: Sandbox, pg_server: PgServer, tmp_path: Path, agent: bool
) -> None:
    # Another session holds `memory_items` locked (LOCK TABLE ... ACCESS EXCLUSIVE, never let go):
    # an agent's rows, and the row counts read beside pg_dump, wait for the lock over phx's own
    # connection. The wait is bounded (the test shortens it to 1 s): the database is one clear
    # error naming the table and the fix, the rest is saved (exit 3), and the snapshot does not
    # claim the database. Before, the read waited for as long as the lock was held (for ever).
    pg = pg_server
    db = make_memory_db(pg, rows_per_agent=2, dims=8)
    entry, env = reader_entry(pg, db, sandbox.env, agent=agent)
    sandbox.write_config(databases={"postgres": [entry]})
    site = tmp_path / "short-lock-wait"
    site.mkdir()
    (site / "sitecustomize.py").write_text("from phoenix_backup.sources import postgres\npostgres.LOCK_WAIT_S = 1\n")
    env["PYTHONPATH"] = str(site)
    locker = pg.connect(db)
    try:
        locker.execute("BEGIN")
        locker.execute("LOCK TABLE memory_items IN ACCESS EXCLUSIVE MODE")
        res = sandbox.phx("backup", "--json", env=env, check=3, timeout=90)
    finally:
        locker.execute("ROLLBACK")
        locker.close()
    doc: dict[str, Any] = res.json()
    failed = [i for i in doc["incomplete"] if i["path"] == "postgres/main"]
    assert len(failed) == 1, doc["incomplete"]
    if agent:
        assert failed[0]["error"] == (
            "reading table public.memory_items of PostgreSQL database `main` failed: another session held a "
            "lock on it for more than 1 s (canceling statement due to lock timeout); end that session's "
            "transaction (its pid is in pg_locks, its query in pg_stat_activity) and run the backup again"
        ), failed[0]["error"]
    else:  # pg_dump's own lock wait (--lock-wait-timeout, the same 1 s) ends first
        assert failed[0]["error"] == (
            "pg_dump of PostgreSQL database `main` failed (exit 1): another session held a lock on a table it "
            "reads for more than 1 s (query failed: ERROR:  canceling statement due to statement timeout); "
            "nothing of it was kept in this snapshot; end that session's transaction (its pid is in pg_locks, "
            "its query in pg_stat_activity) and run the backup again"
        ), failed[0]["error"]
    assert all(d["path"] != "postgres/main" for d in doc["databases"])
    assert "postgres" not in sandbox.phx("ls", doc["id"], env=env).out
    pg.drop_database(db)
