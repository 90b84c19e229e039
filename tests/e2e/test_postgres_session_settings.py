"""Nothing Phoenix sets on a PostgreSQL server session outlives the transaction it serves: through a
transaction pooler (pgbouncer, pool_mode=transaction) the next client of the same server session
would inherit it (the agent's row-level-security scope, row_security off, lock_timeout, DateStyle,
prepared statements). Each of phx's connections is read once more as phx closes it, and must be as
a fresh connection made with the same arguments (role, database, options) is."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
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


@pytest.fixture
def pgbouncer(request: pytest.FixtureRequest, pg_server: PgServer) -> Iterator[int]:
    """pgbouncer in front of the test server: pool_mode=transaction (or the test's indirect
    parameter), one server session per database and role (so the next client gets the very session
    phx used). Returns its port."""
    pool_mode, _, extra = str(getattr(request, "param", "transaction")).partition("\n")  # then more ini lines
    exe = shutil.which("pgbouncer") or shutil.which("pgbouncer", path="/usr/sbin")
    if exe is None:
        pytest.skip("pgbouncer is not installed (scripts/test.sh installs it: apt-get install pgbouncer)")
    top = Path(tempfile.mkdtemp(prefix="phx-pgbouncer-", dir="/tmp"))
    top.chmod(0o755)  # it runs as the server's unprivileged user when the tests run as root
    port = services.free_port()
    users = top / "users.txt"
    users.write_text(f'"{AGENT_ROLES[AGENT_A]}" "{ROLE_PASSWORD}"\n"{services.PG_SUPERUSER}" "{pg_server.password}"\n')
    ini = top / "pgbouncer.ini"
    ini.write_text(
        f"[databases]\n* = host={pg_server.host} port={pg_server.port}\n[pgbouncer]\n"
        f"listen_addr = 127.0.0.1\nlisten_port = {port}\nunix_socket_dir =\nauth_type = plain\n"
        f"auth_file = {users}\npool_mode = {pool_mode}\ndefault_pool_size = 1\nmax_client_conn = 20\n"
        f"admin_users = {services.PG_SUPERUSER}\n"
        f"logfile = {top}/pgbouncer.log\n{extra}\n"
    )
    for f in (users, ini):
        f.chmod(0o644)
    (top / "pgbouncer.log").touch()
    (top / "pgbouncer.log").chmod(0o666)  # written by that user
    # Its log goes to stderr as well as to the log file: a pipe nobody reads would fill (64 KiB, a
    # few hundred connections) and stop pgbouncer. The log file says why it did not start.
    proc = subprocess.Popen([*pg_server.prefix, exe, str(ini)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        # Listening, and pgbouncer itself (not another process that took the port meanwhile).
        if not services._wait_port(port, 15) or proc.poll() is not None:
            proc.kill()
            pytest.fail(f"pgbouncer did not start: {(top / 'pgbouncer.log').read_text()[-500:]}")
        yield port
    finally:
        proc.terminate()
        proc.wait(10)
        shutil.rmtree(top, ignore_errors=True)


def _agent_through(
    sandbox: Sandbox, pg_server: PgServer, pgbouncer: int
) -> tuple[str, dict[str, str], Callable[[], psycopg.Connection[Any]]]:
    """The test database, a config whose one entry reads agent_a's rows through pgbouncer, its
    environment, and how the agent's app connects through the same pool."""
    db = _database(pg_server)
    role = AGENT_ROLES[AGENT_A]
    entry = services.postgres_entry(
        pg_server, db, port=pgbouncer, user=role, passwordEnv="PHX_TEST_ROLE_PW", agentId=AGENT_A
    )
    sandbox.write_config(databases={"postgres": [entry]})

    def agent_client() -> psycopg.Connection[Any]:
        return psycopg.connect(
            host="127.0.0.1", port=pgbouncer, dbname=db, user=role, password=ROLE_PASSWORD, autocommit=True
        )

    return db, sandbox.env_with(PHX_TEST_ROLE_PW=ROLE_PASSWORD), agent_client


def test_through_pgbouncer_the_next_client_gets_nothing_of_an_agent_scoped_backup_or_restore(
    sandbox: Sandbox, pg_server: PgServer, pgbouncer: int
) -> None:
    """The adversary's case: pgbouncer 1.18, pool_mode=transaction, default_pool_size=1; after `phx
    backup` and `phx restore` of one agent's rows through it, the agent's own next session (the
    same server session) has no setting of phx's, and row-level security shows it no agent's rows."""
    db, env, agent_client = _agent_through(sandbox, pg_server, pgbouncer)

    def next_client() -> dict[str, Any]:
        with agent_client() as con:
            held = _probe(con)
            row = con.execute("SELECT count(*), pg_backend_pid() FROM sessions").fetchone()
            assert row is not None
            # The same server session each time (a pool of one, never closed in between): the one
            # phx used, not a fresh one pgbouncer opened after closing phx's.
            held["rows seen"], held["server session"] = row
            return held

    before = next_client()
    assert before["rows seen"] == 0 and before["DateStyle"] == "SQL, DMY"  # no agent set: RLS hides all
    doc = sandbox.phx("backup", "--json", env=env).json()
    assert (
        next((d for d in doc["databases"] if d["path"] == "postgres/main"), {}).get("tables", {}).get("public.sessions")
        == 10
    ), doc
    after_backup = next_client()
    assert {k: (v, before[k]) for k, v in after_backup.items() if v != before[k]} == {}
    # Its safety snapshot reads through the pooler too: a statement phx prepared before, left on
    # the session, made it fail ("prepared statement "_pg3_0" already exists").
    res = sandbox.phx("restore", "--latest", "--databases-only", "--yes", "--json", env=env)
    assert all(d["ok"] for d in res.json()["databases"]), res.out
    after_restore = next_client()
    pg_server.drop_database(db)
    assert {k: (v, before[k]) for k, v in after_restore.items() if v != before[k]} == {}


@pytest.mark.parametrize("pgbouncer", ["statement"], indirect=True)
def test_through_pgbouncer_in_statement_mode_the_error_says_which_mode_works(
    sandbox: Sandbox, pg_server: PgServer, pgbouncer: int
) -> None:
    """pgbouncer in statement mode refuses every transaction, and each read and merge of phx is
    one: the backup fails, and says what to point the entry at (it said only pgbouncer's words,
    `transaction blocks not allowed in statement pooling mode`). Nothing is left on the session."""
    db, env, agent_client = _agent_through(sandbox, pg_server, pgbouncer)

    def next_client() -> dict[str, Any]:
        with agent_client() as con:
            return _probe(con)

    before = next_client()
    res = sandbox.phx("backup", "--json", env=env, check=None)
    after = next_client()
    pg_server.drop_database(db)
    assert res.code != 0
    error = next(d for d in res.json()["incomplete"] if d["path"] == "postgres/main")["error"]
    assert error == (
        "reading PostgreSQL database `main` failed: transaction blocks not allowed in statement pooling mode; "
        "Phoenix reads and restores in transactions: point it at a pool in transaction or session mode, "
        "or at the server itself"
    )
    assert after == before


def _waiting_clients(pgbouncer: int, password: str, db: str) -> int:
    """Clients of `db` that pgbouncer keeps waiting for a server session (its admin console)."""
    with psycopg.connect(
        host="127.0.0.1",
        port=pgbouncer,
        dbname="pgbouncer",
        user=services.PG_SUPERUSER,
        password=password,
        autocommit=True,
    ) as admin:
        cur = admin.execute("SHOW CLIENTS")
        names = [c.name for c in cur.description or []]
        clients = [dict(zip(names, row, strict=True)) for row in cur.fetchall()]
        return sum(1 for c in clients if c["database"] == db and c["state"] == "waiting")


def test_through_pgbouncer_phx_doctor_gives_the_other_clients_nothing(
    sandbox: Sandbox, pg_server: PgServer, pgbouncer: int
) -> None:
    """`phx doctor` checked an agent-scoped entry by running `pg_dump --schema-only` through the
    pooler: pg_dump's setup is session `SET`s each in a transaction of its own, so between two of
    them pgbouncer handed the server session to the next waiting client, with `search_path` ''
    (its unqualified table names no longer found), `row_security` off, `statement_timeout` 0.
    Here the agent's app waits behind doctor's first statement for the pool's one session."""
    db, env, agent_client = _agent_through(sandbox, pg_server, pgbouncer)
    probe = _PROBE + ", current_setting('search_path'), current_setting('statement_timeout')"

    def wait_for(n: int, also: threading.Thread) -> None:
        deadline = time.monotonic() + 60
        while _waiting_clients(pgbouncer, pg_server.password, db) < n:
            assert also.is_alive() and time.monotonic() < deadline, "no client came to wait for the pool"
            time.sleep(0.2)

    with agent_client() as con:
        before = con.execute(probe).fetchone()
    seen: list[Any] = []
    doctor: list[Any] = []

    def app() -> None:
        with agent_client() as con:
            seen.append(con.execute(probe).fetchone())

    holder = agent_client()
    holder.execute("BEGIN")
    holder.execute("SELECT 1")  # the pool's one server session, held
    run = threading.Thread(target=lambda: doctor.append(sandbox.phx("doctor", "--json", env=env, check=None)))
    run.start()
    wait_for(1, run)  # doctor's first statement waits for the session
    agent_app = threading.Thread(target=app)
    agent_app.start()
    wait_for(2, agent_app)  # and the agent's app behind it
    holder.execute("COMMIT")
    holder.close()
    agent_app.join(60)
    run.join(120)
    pg_server.drop_database(db)
    assert seen == [before]
    checks = {c["name"]: c for c in doctor[0].json()["checks"]}
    assert checks["postgres main"]["status"] == "ok", checks["postgres main"]
    assert "pg_dump" not in checks  # an agent-scoped entry needs no pg_dump
