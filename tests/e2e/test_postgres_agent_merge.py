"""Agent-scoped PostgreSQL restores against an ArgentOS-like database (issue 22): merged in
foreign-key order in one transaction, only rows that differ rewritten, user triggers not fired
where the role may say so, tables without a primary key counted truthfully, and a drill that
runs the same merge and fails where the restore would."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from e2e_support import Result, Sandbox, run_phx_here

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import services
from services import AGENT_A, AGENT_B, AGENT_ROLES, ROLE_PASSWORD, PgServer, argentos_rows, make_argentos_db

pg_server = services.pg_server  # the session's PostgreSQL server (a fixture)


def _agent_config(sandbox: Sandbox, pg: PgServer, db: str, role: str | None = AGENT_ROLES[AGENT_A]) -> dict[str, str]:
    """Configure `postgres/main` as agent_a's rows of `db`, read and written as `role` (None: the
    superuser); returns the environment holding the password."""
    if role is None:
        entry = services.postgres_entry(pg, db, agentId=AGENT_A)
        env = sandbox.env_with(PHX_TEST_PGPASSWORD=pg.password)
    else:
        entry = services.postgres_entry(pg, db, user=role, passwordEnv="PHX_TEST_ROLE_PW", agentId=AGENT_A)
        env = sandbox.env_with(PHX_TEST_ROLE_PW=ROLE_PASSWORD)
    sandbox.write_config(databases={"postgres": [entry]})
    return env


def _phx(env: dict[str, str], *args: str | Path, code: int = 0) -> Result:
    """`phx ARGS` with `env`, in this process (exit `code` expected): these tests are about the rows
    a restore writes, not the process (docs/development.md)."""
    return run_phx_here([str(a) for a in args], env, code)


def _restore(sandbox: Sandbox, env: dict[str, str], *extra: str, check: int = 0) -> dict[str, Any]:
    res = _phx(env, "restore", "--latest", "--databases-only", "--yes", "--json", *extra, code=check)
    return next(d for d in res.json()["databases"] if d["path"] == "postgres/main")


def test_deleted_parents_come_back_with_their_children(sandbox: Sandbox, pg_server: PgServer) -> None:
    pg = pg_server
    db = make_argentos_db(pg)
    env = _agent_config(sandbox, pg, db)
    saved = argentos_rows(pg, db, AGENT_A)
    other = argentos_rows(pg, db, AGENT_B)
    _phx(env, "backup")
    # agent_a deletes 20 tasks without subtasks: 60 events and 20 tool calls go with them.
    with pg.connect(db, AGENT_ROLES[AGENT_A], ROLE_PASSWORD) as con:
        con.execute("SELECT set_config('app.agent_id', %s, false)", (AGENT_A,))
        ids = [
            r[0]
            for r in con.execute(
                "SELECT id FROM tasks t WHERE parent_id IS NULL AND NOT EXISTS "
                "(SELECT 1 FROM tasks c WHERE c.parent_id = t.id) ORDER BY id LIMIT 20"
            )
        ]
        assert len(ids) == 20
        con.execute("DELETE FROM tasks WHERE id = ANY(%s)", (ids,))
    assert pg.query(db, "SELECT count(*) FROM task_events WHERE agent_id = %s", (AGENT_A,)) == [(120,)]

    out = _restore(sandbox, env)
    assert out["ok"], out
    assert out["stats"]["public.tasks"]["inserted"] == 20
    assert out["stats"]["public.task_events"]["inserted"] == 60
    assert out["stats"]["public.tool_calls"]["inserted"] == 20
    now = argentos_rows(pg, db, AGENT_A)
    # The inserted tasks fired the audit trigger (this role may not turn user triggers off): 20
    # audit rows more, said beforehand; every other table is exactly as saved.
    assert len(now.pop("audit_log")) == len(saved["audit_log"]) + 20
    assert now == {k: v for k, v in saved.items() if k != "audit_log"}
    assert argentos_rows(pg, db, AGENT_B) == other
    pg.drop_database(db)


def _edit_tasks(pg: PgServer, db: str, n: int = 30) -> None:
    """agent_a renames `n` tasks since the backup (the version trigger bumps them, the audit
    trigger logs them), and agent_b changes its own rows."""
    pg.sql(
        db,
        f"""
        UPDATE tasks SET title = title || ' (renamed)' WHERE agent_id = '{AGENT_A}'
            AND id IN (SELECT id FROM tasks WHERE agent_id = '{AGENT_A}' ORDER BY id LIMIT {n});
        UPDATE memory_items SET content = 'agent_b learned more' WHERE agent_id = '{AGENT_B}';
        """,
    )


def _audit_rows(pg: PgServer, db: str) -> int:
    return int(pg.query(db, "SELECT count(*) FROM audit_log WHERE agent_id = %s", (AGENT_A,))[0][0])


def test_merge_rewrites_only_changed_rows_and_fires_no_trigger(sandbox: Sandbox, pg_server: PgServer) -> None:
    pg = pg_server
    db = make_argentos_db(pg)
    env = _agent_config(sandbox, pg, db, role=None)  # a superuser: may turn user triggers off
    saved = argentos_rows(pg, db, AGENT_A)
    _phx(env, "backup")
    _edit_tasks(pg, db)
    other = argentos_rows(pg, db, AGENT_B)
    audit = _audit_rows(pg, db)

    out = _restore(sandbox, env)
    assert out["ok"], out
    assert out["stats"]["userTriggers"] == "not fired"
    tasks = out["stats"]["public.tasks"]
    assert (tasks["updated"], tasks["inserted"], tasks["unchanged"]) == (30, 0, 30), tasks
    assert out["stats"]["public.task_events"]["updated"] == 0
    assert out["found"]["public.tasks"] == 60
    # The rows are exactly as saved (the version trigger did not bump them), no audit row was
    # added, and agent_b's rows are untouched.
    now = argentos_rows(pg, db, AGENT_A)
    assert now.pop("audit_log")[: len(saved["audit_log"])] and _audit_rows(pg, db) == audit
    assert now == {k: v for k, v in saved.items() if k != "audit_log"}
    assert argentos_rows(pg, db, AGENT_B) == other

    # The agent's own role, granted SET on session_replication_role (PostgreSQL 15+): the same.
    role = AGENT_ROLES[AGENT_A]
    env = _agent_config(sandbox, pg, db, role=role)
    _edit_tasks(pg, db)
    audit = _audit_rows(pg, db)
    pg.sql("postgres", f'GRANT SET ON PARAMETER session_replication_role TO "{role}"')
    try:
        out = _restore(sandbox, env)
    finally:
        pg.sql("postgres", f'REVOKE SET ON PARAMETER session_replication_role FROM "{role}"')
    assert out["ok"] and out["stats"]["userTriggers"] == "not fired", out
    assert out["stats"]["public.tasks"]["updated"] == 30
    assert _audit_rows(pg, db) == audit

    # Without it the triggers fire: said before anything is written, and a restore without a
    # terminal needs --yes.
    _edit_tasks(pg, db)
    audit = _audit_rows(pg, db)
    res = sandbox.phx("restore", "--latest", "--databases-only", env=env, check=2)
    for needle in ("tasks_bump_version (BEFORE UPDATE)", "tasks_audit (AFTER INSERT OR UPDATE)", role, "--yes"):
        assert needle in res.err, res
    plan = _phx(env, "restore", "--latest", "--databases-only", "--dry-run")
    assert "memory_audit" in plan.out and "session_replication_role" in plan.out, plan
    out = _restore(sandbox, env)
    assert out["ok"] and out["stats"]["userTriggers"] == "fired", out
    assert out["stats"]["public.tasks"]["updated"] == 30  # only the rows that differ
    assert _audit_rows(pg, db) == audit + 30
    bumped = pg.query(db, "SELECT count(*) FROM tasks WHERE agent_id = %s AND version > 1", (AGENT_A,))
    assert bumped == [(30,)]
    assert any("30 of 60 rows differ" in w and "triggers" in w for w in out["warnings"]), out
    pg.drop_database(db)


def test_a_table_without_primary_key_is_counted_truthfully_and_can_be_replaced(
    sandbox: Sandbox, pg_server: PgServer
) -> None:
    pg = pg_server
    db = make_argentos_db(pg)
    env = _agent_config(sandbox, pg, db, role=None)
    saved = argentos_rows(pg, db, AGENT_A)["agent_metrics"]
    other = argentos_rows(pg, db, AGENT_B)
    _phx(env, "backup")
    pg.sql(
        db,
        f"""
        DELETE FROM agent_metrics WHERE agent_id = '{AGENT_A}' AND value IN (0, 3);
        UPDATE agent_metrics SET value = -1 WHERE agent_id = '{AGENT_A}' AND value = 6;
        """,
    )
    assert len(argentos_rows(pg, db, AGENT_A)["agent_metrics"]) == 48

    # add (the default): the 3 saved rows missing come back; the changed row is kept and said.
    out = _restore(sandbox, env)
    assert out["ok"], out
    metrics = out["stats"]["public.agent_metrics"]
    assert (metrics["inserted"], metrics["present"], metrics["extra"]) == (3, 50, 1), metrics
    assert out["found"]["public.agent_metrics"] == 50
    assert any("agent_metrics has no primary key" in w and "--keyless replace" in w for w in out["warnings"]), out
    rows = argentos_rows(pg, db, AGENT_A)["agent_metrics"]
    assert len(rows) == 51 and all(r in rows for r in saved)

    # replace: the agent's rows of the table are exactly the saved ones (the one row the snapshot
    # lacks is deleted, the others stay untouched); agent_b's stay.
    out = _restore(sandbox, env, "--keyless", "replace")
    assert out["ok"], out
    metrics = out["stats"]["public.agent_metrics"]
    assert (metrics["deleted"], metrics["inserted"], metrics["present"], metrics["extra"]) == (1, 0, 50, 0)
    assert argentos_rows(pg, db, AGENT_A)["agent_metrics"] == saved
    assert argentos_rows(pg, db, AGENT_B) == other
    pg.drop_database(db)


def test_the_drill_runs_the_merge_and_fails_where_the_restore_would(
    sandbox: Sandbox, pg_server: PgServer, tmp_path: Path
) -> None:
    pg = pg_server
    db = make_argentos_db(pg)
    env = _agent_config(sandbox, pg, db)
    snap = _phx(env, "backup", "--json").json()["id"]
    pg.sql(db, f"DELETE FROM tasks WHERE agent_id = '{AGENT_A}' AND id % 6 = 1")
    before = argentos_rows(pg, db, AGENT_A)

    drill = _phx(env, "drill", "--json", "--backup", snap, "--scratch", tmp_path).json()
    report = next(d for d in drill["databases"] if d["path"] == "postgres/main")
    assert report["ok"] and report["tables"]["public.tasks"] == {"recorded": 60, "restored": 60}, report
    assert argentos_rows(pg, db, AGENT_A) == before  # the drill wrote nothing to the shared tables

    # A column added since the backup, NOT NULL without a default: the saved rows cannot go back.
    pg.sql(db, "ALTER TABLE tasks ADD COLUMN owner text; UPDATE tasks SET owner = 'x'")
    pg.sql(db, "ALTER TABLE tasks ALTER COLUMN owner SET NOT NULL")
    before = argentos_rows(pg, db, AGENT_A)
    out = _restore(sandbox, env, check=3)
    assert not out["ok"] and "owner" in out["error"] and "nothing was changed" in out["error"], out
    drill = _phx(env, "drill", "--json", "--backup", snap, "--scratch", tmp_path, code=1).json()
    report = next(d for d in drill["databases"] if d["path"] == "postgres/main")
    message = report["problems"][0]["message"]
    assert not report["ok"] and "owner" in message and "public.tasks" in message, report
    assert "phx_scratch" not in message
    assert argentos_rows(pg, db, AGENT_A) == before
    pg.drop_database(db)


def _cycle_db(pg: PgServer, deferrable: bool) -> str:
    """Two agent tables referencing each other, filled with agent_a's rows."""
    db = pg.create_database("cycle")
    flag = "DEFERRABLE" if deferrable else ""
    role = AGENT_ROLES[AGENT_A]
    pg.sql(
        db,
        f"""
        CREATE TABLE a (id int PRIMARY KEY, agent_id text NOT NULL, b_id int);
        CREATE TABLE b (id int PRIMARY KEY, agent_id text NOT NULL, a_id int NOT NULL REFERENCES a(id) {flag});
        ALTER TABLE a ADD CONSTRAINT a_b_fkey FOREIGN KEY (b_id) REFERENCES b(id) {flag};
        INSERT INTO a SELECT i, '{AGENT_A}', NULL FROM generate_series(1, 5) i;
        INSERT INTO b SELECT i, '{AGENT_A}', i FROM generate_series(1, 5) i;
        UPDATE a SET b_id = id;
        GRANT USAGE ON SCHEMA public TO "{role}";
        GRANT SELECT, INSERT, UPDATE ON a, b TO "{role}";
        """,
    )
    return db


def test_tables_referencing_each_other(sandbox: Sandbox, pg_server: PgServer, tmp_path: Path) -> None:
    pg = pg_server
    for deferrable in (True, False):
        db = _cycle_db(pg, deferrable)
        env = _agent_config(sandbox, pg, db)
        snap = _phx(env, "backup", "--json").json()["id"]
        saved = pg.query(db, "SELECT a.*, b.* FROM a JOIN b ON b.id = a.b_id ORDER BY a.id")
        pg.sql(db, "UPDATE a SET b_id = NULL; DELETE FROM b; DELETE FROM a")
        if deferrable:
            out = _restore(sandbox, env)
            assert out["ok"] and out["stats"]["public.a"]["inserted"] == 5, out
            assert pg.query(db, "SELECT a.*, b.* FROM a JOIN b ON b.id = a.b_id ORDER BY a.id") == saved
        else:
            out = _restore(sandbox, env, check=3)
            for needle in ("public.a -> public.b -> public.a", "a_b_fkey", "b_a_id_fkey", "DEFERRABLE", "nothing"):
                assert needle in out["error"], out
            assert pg.query(db, "SELECT count(*) FROM a") == [(0,)]
            drill = _phx(env, "drill", "--json", "--backup", snap, "--scratch", tmp_path, code=1).json()
            report = next(d for d in drill["databases"] if d["path"] == "postgres/main")
            assert "public.a -> public.b -> public.a" in report["problems"][0]["message"], report
        pg.drop_database(db)
