"""Restoring PostgreSQL onto a server that lacks the database (a new machine, a dropped database):
it is created, owned as the original was, in place and with --to-database; the safety snapshot
skips what does not exist and says so; and the restored tables are analyzed at once."""

from __future__ import annotations

import secrets
import sys
from pathlib import Path

from e2e_support import Sandbox

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import services
from services import OWNER_ROLE, PgServer, db_state, make_memory_db, postgres_entry

pg_server = services.pg_server  # the session's PostgreSQL server (a fixture)


def _owner(pg: PgServer, database: str) -> str:
    rows = pg.query("postgres", "SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = %s", (database,))
    return str(rows[0][0]) if rows else ""


def _analyzed(pg: PgServer, database: str) -> list[str]:
    rows = pg.query(database, "SELECT relname FROM pg_stat_user_tables WHERE last_analyze IS NOT NULL ORDER BY 1")
    return [str(r[0]) for r in rows]


def test_a_database_the_server_lacks_is_created_as_it_was(sandbox: Sandbox, pg_server: PgServer) -> None:
    pg = pg_server
    db = make_memory_db(pg, rows_per_agent=10, dims=768)
    pg.sql("postgres", f'ALTER DATABASE "{db}" OWNER TO "{OWNER_ROLE}"')
    sandbox.write_config(databases={"postgres": [postgres_entry(pg, db)]})
    env = sandbox.env_with(PHX_TEST_PGPASSWORD=pg.password)
    before = db_state(pg, db)
    sandbox.phx("backup", env=env)
    pg.drop_database(db)

    plan = sandbox.phx("restore", "--latest", "--databases-only", "--dry-run", "--json", env=env).json()
    server = next(d for d in plan["databases"] if d["path"] == "postgres/main")
    assert server["action"] == "create" and server["tables"]["public.memory_items"]["added"] == 30, plan

    copy = f"{db}_copy"
    res = sandbox.phx("restore", "--latest", "--to-database", copy, "--json", env=env).json()
    out = res["databases"][0]
    assert out["ok"] and out["stats"]["databaseCreated"], out
    assert _owner(pg, copy) == OWNER_ROLE
    assert db_state(pg, copy) == before
    assert _analyzed(pg, copy) == ["agents", "entities", "memory_items"]
    pg.drop_database(copy)

    res = sandbox.phx("restore", "--latest", "--databases-only", "--yes", "--json", env=env)
    doc = res.json()
    out = next(d for d in doc["databases"] if d["path"] == "postgres/main")
    assert out["ok"] and out["stats"]["databaseCreated"], out
    said = f"postgres/main: database {db} does not exist on 127.0.0.1:{pg.port}, so the safety snapshot holds nothing"
    assert said in res.err and any(w.startswith(said) for w in doc["warnings"]), res
    assert _owner(pg, db) == OWNER_ROLE
    assert db_state(pg, db) == before
    assert _analyzed(pg, db) == ["agents", "entities", "memory_items"]
    pg.drop_database(db)


def test_a_sql_ascii_database_is_saved_and_created_again(sandbox: Sandbox, pg_server: PgServer) -> None:
    """A legacy SQL_ASCII database (its text came back as bytes, and pg_dump was handed
    b'...' as the snapshot to read): saved, then made again with its encoding and locale."""
    pg = pg_server
    db = f"ascii_{secrets.token_hex(4)}"
    pg.sql("postgres", f"CREATE DATABASE {db} ENCODING 'SQL_ASCII' LC_COLLATE 'C' LC_CTYPE 'C' TEMPLATE template0")
    pg.sql(db, "CREATE TABLE notes (id int PRIMARY KEY, body text); INSERT INTO notes VALUES (1, 'plain'), (2, 'more')")
    sandbox.write_config(databases={"postgres": [postgres_entry(pg, db)]})
    env = sandbox.env_with(PHX_TEST_PGPASSWORD=pg.password)
    rows = "SELECT * FROM notes ORDER BY id"  # text comes back as bytes from a SQL_ASCII database
    before = pg.query(db, rows)
    sandbox.phx("backup", env=env)
    pg.drop_database(db)
    res = sandbox.phx("restore", "--latest", "--databases-only", "--yes", "--json", env=env)
    out = next(d for d in res.json()["databases"] if d["path"] == "postgres/main")
    assert out["ok"] and out["stats"]["databaseCreated"] and out["found"] == {"public.notes": 2}, out
    encoding = "SELECT pg_encoding_to_char(encoding), datcollate FROM pg_database WHERE datname = %s"
    assert pg.query("postgres", encoding, (db,)) == [("SQL_ASCII", "C")]
    assert pg.query(db, rows) == before
    pg.drop_database(db)


def test_a_database_on_the_builtin_locale_provider_is_created_on_it_again(
    sandbox: Sandbox, pg_server: PgServer
) -> None:
    """PostgreSQL 17's builtin provider (C.UTF-8 knows the case of é; libc's C does not): the
    database made again on a server that lacks it uses the same provider and locale."""
    pg = pg_server
    db = f"builtin_{secrets.token_hex(4)}"
    pg.sql("postgres", f"CREATE DATABASE {db} LOCALE_PROVIDER builtin BUILTIN_LOCALE 'C.UTF-8' TEMPLATE template0")
    pg.sql(db, "CREATE TABLE names (id int PRIMARY KEY, name text); INSERT INTO names VALUES (1, 'élan')")
    sandbox.write_config(databases={"postgres": [postgres_entry(pg, db)]})
    env = sandbox.env_with(PHX_TEST_PGPASSWORD=pg.password)
    snap = sandbox.phx("backup", "--json", env=env).json()["id"]
    pg.drop_database(db)
    out = sandbox.phx("restore", "--latest", "--databases-only", "--yes", "--json", env=env).json()["databases"]
    assert next(d for d in out if d["path"] == "postgres/main")["ok"], out
    provider = "SELECT datlocprovider::text, datlocale FROM pg_database WHERE datname = %s"
    assert pg.query("postgres", provider, (db,)) == [("b", "C.UTF-8")]
    assert pg.query(db, "SELECT upper(name) FROM names") == [("ÉLAN",)]
    pg.drop_database(db)

    # An ICU database, onto a server built without ICU (this one): made on libc, and said.
    from test_postgres_agent_edges import _craft_manifest

    icu = _craft_manifest(sandbox, env, lambda doc: doc | {"localeProvider": "icu", "locale": "en-US"}, snap)
    res = sandbox.phx("restore", "--backup", icu, "--to-database", db, "--json", env=env).json()["databases"][0]
    assert res["ok"] and any("icu locale 'en-US'" in w and "libc" in w for w in res["warnings"]), res
    assert pg.query("postgres", provider, (db,)) == [("c", None)]
    pg.drop_database(db)
