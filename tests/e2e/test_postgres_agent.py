"""Agent-scoped PostgreSQL: one agent's rows of a shared database, backed up and restored under
row-level security, never touching the other agents' rows."""

from __future__ import annotations

import csv
import io
import sys
from pathlib import Path

from e2e_support import Sandbox

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import services
from services import AGENT_ROLE, ROLE_PASSWORD, PgServer, agent_rows, make_memory_db, postgres_entry

pg_server = services.pg_server  # the session's PostgreSQL server (a fixture)


def test_agent_rows_round_trip_without_touching_other_agents(sandbox: Sandbox, pg_server: PgServer) -> None:
    pg = pg_server
    db = make_memory_db(pg, rows_per_agent=30, dims=32)
    entry = postgres_entry(pg, db, user=AGENT_ROLE, passwordEnv="PHX_TEST_ROLE_PW", agentId="argent")
    sandbox.write_config(databases={"postgres": [entry]})
    env = sandbox.env_with(PHX_TEST_ROLE_PW=ROLE_PASSWORD)
    saved = agent_rows(pg, db, "argent")

    doc = sandbox.phx("backup", "--json", env=env).json()
    info = next(d for d in doc["databases"] if d["path"] == "postgres/main")
    assert info["tables"] == {"public.entities": 2, "public.memory_items": 30}
    assert info["details"]["agentId"] == "argent"
    rows_csv = sandbox.phx("dump", doc["id"], "postgres/main/rows/public.memory_items.csv", env=env).out
    rows = list(csv.DictReader(io.StringIO(rows_csv)))
    assert len(rows) == 30 and {r["agent_id"] for r in rows} == {"argent"}
    assert rows[0]["embedding"].startswith("[")  # the vector, as pgvector writes it
    drill = services.drill(sandbox, env, doc["id"], "postgres/main", "unused")
    assert drill.ok and drill.found == info["tables"], drill

    # Since the backup: argent lost rows and changed some; the other agents changed too.
    pg.sql(
        db,
        """
        DELETE FROM memory_items WHERE agent_id = 'argent' AND id % 5 = 0;
        UPDATE memory_items SET content = 'edited by argent', importance = 0.99
            WHERE agent_id = 'argent' AND id % 5 = 1;
        UPDATE memory_items SET content = 'scout learned more' WHERE agent_id = 'scout';
        INSERT INTO memory_items (id, agent_id, content) VALUES (1000, 'scribe', 'a new note of scribe');
        DELETE FROM entities WHERE agent_id = 'argent' AND name = 'Jason';
        """,
    )
    others = {a: agent_rows(pg, db, a) for a in ("scout", "scribe")}
    edited = {r[0]: r for r in agent_rows(pg, db, "argent") if r[2] == "edited by argent"}
    assert len(edited) == 6

    # skip: the missing rows come back, the edited ones stay as they are now.
    res = sandbox.phx("restore", "--latest", "--databases-only", "--yes", "--conflict-mode", "skip", "--json", env=env)
    out = next(d for d in res.json()["databases"] if d["path"] == "postgres/main")
    assert out["ok"], out
    assert out["stats"]["public.memory_items"]["inserted"] == 6
    # The 6 edited rows are kept as they are now; the other 18 already were as saved.
    assert out["stats"]["public.memory_items"]["skipped"] == 6
    assert out["stats"]["public.memory_items"]["unchanged"] == 18
    now = {r[0]: r for r in agent_rows(pg, db, "argent")}
    assert len(now) == 30
    assert all(now[i] == edited[i] for i in edited)
    assert {a: agent_rows(pg, db, a) for a in ("scout", "scribe")} == others
    assert pg.query(db, "SELECT count(*) FROM entities WHERE agent_id = 'argent'") == [(2,)]

    # update: argent's rows are exactly as saved; the others still untouched.
    res = sandbox.phx(
        "restore", "--latest", "--databases-only", "--yes", "--conflict-mode", "update", "--json", env=env
    )
    out = next(d for d in res.json()["databases"] if d["path"] == "postgres/main")
    assert out["ok"], out
    # Only the 6 rows that differ are rewritten.
    assert out["stats"]["public.memory_items"]["updated"] == 6
    assert out["stats"]["public.memory_items"]["unchanged"] == 24
    assert agent_rows(pg, db, "argent") == saved
    assert {a: agent_rows(pg, db, a) for a in ("scout", "scribe")} == others
    pg.drop_database(db)
