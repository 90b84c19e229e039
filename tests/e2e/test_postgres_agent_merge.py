"""Agent-scoped PostgreSQL restores against an ArgentOS-like database (issue 22): merged in
foreign-key order in one transaction, only rows that differ rewritten, user triggers not fired
where the role may say so, tables without a primary key counted truthfully, and a drill that
runs the same merge and fails where the restore would."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from e2e_support import Sandbox

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


def _restore(sandbox: Sandbox, env: dict[str, str], *extra: str, check: int = 0) -> dict[str, Any]:
    res = sandbox.phx("restore", "--latest", "--databases-only", "--yes", "--json", *extra, env=env, check=check)
    return next(d for d in res.json()["databases"] if d["path"] == "postgres/main")


def test_deleted_parents_come_back_with_their_children(sandbox: Sandbox, pg_server: PgServer) -> None:
    pg = pg_server
    db = make_argentos_db(pg)
    env = _agent_config(sandbox, pg, db)
    saved = argentos_rows(pg, db, AGENT_A)
    other = argentos_rows(pg, db, AGENT_B)
    sandbox.phx("backup", env=env)
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
