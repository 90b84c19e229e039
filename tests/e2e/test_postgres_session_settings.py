"""Nothing Phoenix sets on a PostgreSQL server session outlives the transaction it serves: through a
transaction pooler (pgbouncer, pool_mode=transaction) the next client of the same server session
would inherit it (the agent's row-level-security scope, row_security off, lock_timeout, DateStyle,
prepared statements). Each of phx's connections is read once more as phx closes it, and must be as
a fresh connection made with the same arguments (role, database, options) is."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from e2e_support import Sandbox
from psycopg.pq import TransactionStatus

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import services
from phoenix_backup import Environment, load_config
from phoenix_backup.config.model import PostgresDb
from phoenix_backup.ops.context import open_repository
from phoenix_backup.repo.walker import walk_tree
from phoenix_backup.shell import StopScope
from phoenix_backup.sinks import databases
from phoenix_backup.sinks.streams import group_database_nodes
from phoenix_backup.sources import postgres as pg
from services import AGENT_A, AGENT_ROLES, ROLE_PASSWORD, PgServer, make_argentos_db

pg_server = services.pg_server  # the session's PostgreSQL server (a fixture)

_SETTINGS = (
    "lock_timeout",
    "client_connection_check_interval",
    "DateStyle",
    "TimeZone",
    "IntervalStyle",
    "extra_float_digits",
    "row_security",
)
# Every value below as the session has it: app.agent_id never set reads NULL, and '' once a
# transaction that set it locally has ended (both: no agent).
_PROBE = (
    "SELECT "
    + ", ".join(f"current_setting('{name}')" for name in _SETTINGS)
    + f", coalesce(current_setting('{pg.AGENT_SETTING}', true), '')"
    + ", (SELECT count(*) FROM pg_prepared_statements)"
)
_NAMES = (*_SETTINGS, pg.AGENT_SETTING, "prepared statements")


def _probe(con: psycopg.Connection[Any]) -> dict[str, Any]:
    row = con.execute(_PROBE).fetchone()
    assert row is not None
    return dict(zip(_NAMES, row, strict=True))


@pytest.fixture
def closed_sessions(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[tuple[dict[str, Any], dict[str, Any]]]]:
    """Per connection phx opened (application_name phoenix-backup) and closed: (what its session
    held as phx closed it, what was about to go back to a pooler's next client; what a fresh
    session made with the same arguments holds)."""
    seen: list[tuple[dict[str, Any], dict[str, Any]]] = []
    real = psycopg.Connection
    made: dict[int, tuple[tuple[Any, ...], dict[str, Any]]] = {}

    class Probed(real):  # type: ignore[misc, valid-type]
        def close(self) -> None:
            if not self.closed:
                args, kw = made.pop(id(self))
                status = self.info.transaction_status
                held = _probe(self) if status == TransactionStatus.IDLE else {"transaction": status.name}
                with real.connect(*args, **kw) as fresh:
                    seen.append((held, _probe(fresh)))
            super().close()

    def connect(*args: Any, **kw: Any) -> Any:
        if kw.get("application_name") != "phoenix-backup":
            return real.connect(*args, **kw)
        con = Probed.connect(*args, **kw)
        made[id(con)] = (args, kw)
        return con

    monkeypatch.setattr(psycopg, "connect", connect)
    yield seen


def _database(pg_srv: PgServer) -> str:
    """The ArgentOS-like database (ten agent tables: psycopg would prepare a query run for each),
    its roles' defaults unlike what phx sets for its reads (set for this database only)."""
    db = make_argentos_db(pg_srv, dims=8)
    for role in (AGENT_ROLES[AGENT_A], services.PG_SUPERUSER):
        pg_srv.sql(
            "postgres",
            f'ALTER ROLE "{role}" IN DATABASE "{db}" SET DateStyle = \'SQL, DMY\'; '
            f'ALTER ROLE "{role}" IN DATABASE "{db}" SET TimeZone = \'Asia/Kolkata\'; '
            f'ALTER ROLE "{role}" IN DATABASE "{db}" SET IntervalStyle = \'iso_8601\'; '
            f'ALTER ROLE "{role}" IN DATABASE "{db}" SET extra_float_digits = 0',
        )
    return db


def _entries(pg_srv: PgServer, db: str) -> list[dict[str, Any]]:
    agent = services.postgres_entry(
        pg_srv, db, user=AGENT_ROLES[AGENT_A], passwordEnv="PHX_TEST_ROLE_PW", agentId=AGENT_A
    )
    return [agent, services.postgres_entry(pg_srv, db, name="whole")]


def _changed(seen: list[tuple[dict[str, Any], dict[str, Any]]]) -> list[dict[str, tuple[Any, Any]]]:
    """Per closed session, each value unlike a fresh session's: (left by phx, fresh)."""
    return [{k: (held.get(k), v) for k, v in fresh.items() if held.get(k) != v} for held, fresh in seen]


def _read_all(reader: pg.PostgresDump | pg.AgentRows) -> dict[str, bytes]:
    out: dict[str, bytes] = {}
    with reader:
        for stream in reader.streams():
            out[stream.name] = stream.reader.read()
            stream.finish()
    return out


def test_a_backups_reads_leave_nothing_on_the_session(pg_server: PgServer, closed_sessions: list[Any]) -> None:
    db = _database(pg_server)
    env = {"PHX_TEST_ROLE_PW": ROLE_PASSWORD, "PHX_TEST_PGPASSWORD": pg_server.password}
    base = {"host": pg_server.host, "port": pg_server.port, "database": db, "pg_dump": pg_server.tool("pg_dump")}
    agent = PostgresDb(
        name="main", user=AGENT_ROLES[AGENT_A], password_env="PHX_TEST_ROLE_PW", agent_id=AGENT_A, **base
    )
    whole = PostgresDb(name="whole", user=services.PG_SUPERUSER, password_env="PHX_TEST_PGPASSWORD", **base)
    left: dict[str, list[dict[str, Any]]] = {}
    for entry in (agent, whole):
        reader = pg.AgentRows(entry, env, StopScope()) if entry.agent_id else pg.PostgresDump(entry, env, StopScope())
        files = _read_all(reader)
        assert reader.summary is not None and reader.summary.tables and files
        if entry.agent_id:  # read in phx's own text form whatever the role's defaults say
            assert b"+00" in files["rows/public.sessions.csv"]
        assert closed_sessions
        # The role's own defaults in this database, unlike what phx sets for its reads.
        fresh = closed_sessions[0][1]
        assert (fresh["DateStyle"], fresh["extra_float_digits"], fresh["lock_timeout"]) == ("SQL, DMY", "0", "0")
        left[type(reader).__name__] = [c for c in _changed(closed_sessions) if c]
        closed_sessions.clear()
    pg_server.drop_database(db)
    assert left == {"AgentRows": [], "PostgresDump": []}


def test_restores_drills_and_previews_leave_nothing_on_the_session(
    sandbox: Sandbox, pg_server: PgServer, closed_sessions: list[Any]
) -> None:
    db = _database(pg_server)
    sandbox.write_config(databases={"postgres": _entries(pg_server, db)})
    env = sandbox.env_with(PHX_TEST_ROLE_PW=ROLE_PASSWORD, PHX_TEST_PGPASSWORD=pg_server.password)
    snapshot = sandbox.phx("backup", "--json", env=env).json()["id"]
    closed_sessions.clear()  # the backup ran in its own process; what follows runs in this one
    cfg = load_config(sandbox.config_path)
    repo = open_repository(cfg, Environment(env=env))
    try:
        repo.load_index()
        nodes = [n for n in walk_tree(repo, repo.find_snapshot(snapshot).tree) if n[0].startswith("postgres/")]
        groups = group_database_nodes(nodes)
        in_place = [n for n in nodes if n[0].startswith("postgres/main/")]
        assert set(groups) == {"postgres/main", "postgres/whole"}
        steps: list[tuple[str, Any]] = [
            ("preview", lambda: databases.preview_databases(repo, cfg, env, nodes)),
            ("warnings", lambda: databases.server_warnings(repo, cfg, env, nodes)),
            (
                "drill main",
                lambda: databases.drill_database(repo, cfg, env, "postgres/main", groups["postgres/main"], "x"),
            ),
            (
                "drill whole",
                lambda: databases.drill_database(repo, cfg, env, "postgres/whole", groups["postgres/whole"], f"{db}_d"),
            ),
            ("restore main", lambda: databases.restore_databases(repo, cfg, env, in_place)),
            (
                "restore whole",
                lambda: databases.restore_databases(
                    repo,
                    cfg,
                    env,
                    [n for n in nodes if n[0].startswith("postgres/whole/")],
                    to_database=f"{db}_r",
                ),
            ),
        ]
        left: dict[str, list[dict[str, Any]]] = {}
        for what, step in steps:
            result = step()
            for outcome in result if isinstance(result, list) else [result]:
                error = outcome.get("error") if isinstance(outcome, dict) else getattr(outcome, "error", None)
                assert getattr(outcome, "ok", True) and not error, (what, outcome)
            assert closed_sessions, what
            left[what] = [c for c in _changed(closed_sessions) if c]
            closed_sessions.clear()
        assert left == {what: [] for what, _ in steps}
    finally:
        repo.close()
    pg_server.drop_database(f"{db}_r")
    pg_server.drop_database(db)
