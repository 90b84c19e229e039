"""Whole-database PostgreSQL restores that fail or skip part of globals.sql, against the real server
of tests/services.py: the roles a failed restore created are dropped again, every statement of
globals.sql that is not run is named, a restore waiting for another session's lock ends, and one
through a transaction pooler is refused; and a Redis Cluster node is refused, naming the cluster."""

from __future__ import annotations

import contextlib
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from e2e_support import Sandbox, run_phx_here

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import test_postgres_session_settings

import services
from phoenix_backup.sinks.streams import DbRestoreOutcome
from services import PgServer, postgres_entry

pg_server = services.pg_server  # the session's PostgreSQL server (a fixture)
redis_server = services.redis_server  # the session's standalone Redis (a fixture)
pgbouncer = test_postgres_session_settings.pgbouncer  # pgbouncer in front of it, pool_mode=transaction


@contextlib.contextmanager
def _backed_up_then_read_in_a_transaction(pg: PgServer, db: str, env: dict[str, str]) -> Iterator[Any]:
    """The configured database `db` (a table `t`) backed up, its rows then deleted, and another
    session holding a transaction that read `t` (the lock `--clean`'s DROP waits for): that session."""
    run_phx_here(["backup", "--json"], env)
    pg.sql(db, "DELETE FROM t")
    with pg.connect(db) as holder:
        holder.execute("BEGIN")
        holder.execute("SELECT * FROM t")
        yield holder


def _restore_behind_a_lock(pg: PgServer, pid: int, env: dict[str, str], wait: float) -> str:
    """`phx restore --databases-only` (exit 3 expected) while the session `pid` holds a lock: the
    error said for postgres/main. The session is ended after `wait` seconds, so that a restore
    waiting for ever (the code before the lock watch) still ends the test."""
    done = threading.Event()

    def end_holder() -> None:
        if not done.wait(wait):
            pg.sql("postgres", f"SELECT pg_terminate_backend({pid})")

    watchdog = threading.Thread(target=end_holder)
    watchdog.start()
    try:
        res = run_phx_here(
            ["restore", "--latest", "--databases-only", "--yes", "--no-safety-snapshot", "--json"], env, code=3
        )
    finally:
        done.set()
        watchdog.join()
    error: str = next(d for d in res.json()["databases"] if d["path"] == "postgres/main")["integrity"]
    return error


def _owning_once_created(pg: PgServer, database: str, role: str) -> threading.Thread:
    """Another session, started: as soon as `role` exists, it makes it own a table in `database`
    (so DROP ROLE refuses it)."""

    def hold() -> None:
        with pg.connect(database) as con:
            for _ in range(4000):
                if con.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (role,)).fetchone():
                    con.execute(f"CREATE TABLE k (id int); ALTER TABLE k OWNER TO {role}")
                    return
                threading.Event().wait(0.005)

    holder = threading.Thread(target=hold)
    holder.start()
    return holder


def _backed_up(sandbox: Sandbox, pg: PgServer, db: str) -> tuple[dict[str, str], str]:
    """`db` the config's one PostgreSQL database, backed up: the environment to run `phx` with and
    the snapshot's id."""
    sandbox.write_config(databases={"postgres": [postgres_entry(pg, db)]})
    env = sandbox.env_with(PHX_TEST_PGPASSWORD=pg.password)
    return env, run_phx_here(["backup", "--json"], env).json()["id"]


def test_roles_a_failed_restore_created_are_dropped_again(sandbox: Sandbox, pg_server: PgServer) -> None:
    """A whole-database restore creates the snapshot's roles the server lacks, then pg_restore
    fails and rolls back: the roles stayed, with LOGIN and the snapshot's password. Now those it
    created are dropped again, unless something depends on them (a role that existed before is
    never touched)."""
    pg = pg_server
    db = pg.create_database("rolesback")
    tag = db[-8:]
    owner, member, kept, there = (f"{p}{tag}" for p in ("own", "mem", "kept", "was"))
    pg.sql(
        "postgres",
        f"CREATE ROLE {owner} LOGIN PASSWORD 'pw'; CREATE ROLE {member} IN ROLE {owner}; CREATE ROLE {kept};"
        f"CREATE ROLE {there}",
    )
    pg.sql(db, f"CREATE TABLE t (id int); CREATE TABLE o (id int); ALTER TABLE o OWNER TO {owner}")
    env, _ = _backed_up(sandbox, pg, db)
    # Then: the roles are gone, and a view the snapshot does not know depends on t, so that
    # pg_restore --clean cannot drop t and fails.
    pg.sql(db, "DROP TABLE o; CREATE VIEW v AS SELECT id FROM t")
    pg.sql("postgres", f"DROP ROLE {member}; DROP ROLE {owner}; DROP ROLE {kept}")
    other = pg.create_database("rolesdep")
    try:
        # Another session takes a role as soon as it is created: it is left (something depends on it).
        holder = _owning_once_created(pg, other, kept)
        out = run_phx_here(
            ["restore", "--latest", "--databases-only", "--yes", "--no-safety-snapshot"], env, code=3
        ).out
        holder.join()
        roles = "SELECT rolname FROM pg_roles WHERE rolname = ANY(%s) ORDER BY 1"
        assert pg.query("postgres", roles, ([owner, member, kept, there],)) == [(kept,), (there,)], out
        assert "left after it failed" in out and kept in out, out
        assert pg.query(db, "SELECT count(*) FROM pg_views WHERE viewname = 'v'") == [(1,)]
    finally:
        pg.drop_database(other)
        pg.drop_database(db)
        for role in (member, owner, kept, there):
            pg.sql("postgres", f"DROP ROLE IF EXISTS {role}")


def test_a_drill_drops_the_roles_it_created_with_its_scratch_database(sandbox: Sandbox, pg_server: PgServer) -> None:
    """A drill restores into a scratch database it drops once checked, but the roles it created
    from globals.sql for it stayed (with LOGIN and the snapshot's password). Now they go with the
    scratch database; a role that was there before stays, and one another session came to depend
    on meanwhile stays (DROP ROLE refuses it), named in a warning."""
    pg = pg_server
    db = pg.create_database("drillroles")
    tag = db[-8:]
    owner, held, there = (f"{p}{tag}" for p in ("own", "held", "was"))
    pg.sql("postgres", f"CREATE ROLE {owner} LOGIN PASSWORD 'pw'; CREATE ROLE {held}; CREATE ROLE {there}")
    pg.sql(db, f"CREATE TABLE t (id int); ALTER TABLE t OWNER TO {owner}; GRANT SELECT ON t TO {held}, {there}")
    env, snap = _backed_up(sandbox, pg, db)
    pg.sql(db, f"ALTER TABLE t OWNER TO postgres; REVOKE ALL ON t FROM {held}")
    pg.sql("postgres", f"DROP ROLE {owner}; DROP ROLE {held}")
    other = pg.create_database("drilldep")
    try:
        # Another session takes `held` as soon as the drill created it.
        holder = _owning_once_created(pg, other, held)
        drill = services.drill(sandbox, env, snap, "postgres/main", f"{db}_drill")
        holder.join()
        assert drill.ok, drill
        roles = "SELECT rolname FROM pg_roles WHERE rolname = ANY(%s) ORDER BY 1"
        assert pg.query("postgres", roles, ([owner, held, there],)) == [(held,), (there,)], drill.warnings
        assert any("left after the drill" in w and held in w for w in drill.warnings), drill.warnings
        assert pg.query("postgres", "SELECT count(*) FROM pg_database WHERE datname = %s", (f"{db}_drill",)) == [(0,)]
    finally:
        pg.drop_database(other)
        pg.drop_database(db)
        for role in (owner, held, there):
            pg.sql("postgres", f"DROP ROLE IF EXISTS {role}")


def _apply_globals(monkeypatch: pytest.MonkeyPatch, script: str, pg: PgServer) -> DbRestoreOutcome:
    from phoenix_backup.sinks import postgres as sink

    monkeypatch.setattr(sink, "read_node", lambda *_: script.encode())
    server = type("Server", (), {"connect_server": lambda _: pg.connect()})()
    outcome = DbRestoreOutcome("postgres/x", "postgresql", "here")
    sink._apply_globals(None, server, "postgres/x", None, outcome)  # type: ignore[arg-type]
    return outcome


def test_every_statement_of_globals_sql_not_run_is_named(pg_server: PgServer, monkeypatch: pytest.MonkeyPatch) -> None:
    """`CREATE ROLE x WITH LOGIN`, `CREATE ROLE y IN ROLE x`, a comment on a created role, a
    tablespace: none of them is run, and nothing said so; the user did not know what to redo. Now
    one warning names each (a password left out, a line break escaped); the session settings at the
    top and what concerns a role that exists here (left as it is by design) are not named."""
    pg = pg_server
    tag = "".join(chr(97 + int(d)) for d in str(services.free_port()))
    new, odd, inrole, there = (f"{p}{tag}" for p in ("new", "odd", "inr", "was"))
    script = (
        "\\restrict abc\n\nSET default_transaction_read_only = off;\nSET client_encoding = 'UTF8';\n"
        f"CREATE ROLE {there};\nALTER ROLE {there} WITH SUPERUSER;\nCOMMENT ON ROLE {there} IS 'x';\n"
        f"GRANT {new} TO {there} WITH INHERIT TRUE GRANTED BY postgres;\n"
        f"CREATE ROLE {new};\nALTER ROLE {new} WITH LOGIN;\nCOMMENT ON ROLE {new} IS 'a\nb';\n"
        f"CREATE ROLE {odd} WITH LOGIN PASSWORD 'sekrit';\nCREATE ROLE {inrole} IN ROLE {new};\n"
        "CREATE TABLESPACE ts OWNER postgres LOCATION '/nowhere';\n"
    )
    pg.sql("postgres", f"CREATE ROLE {there}")
    try:
        outcome = _apply_globals(monkeypatch, script, pg)
        roles = "SELECT rolname, rolsuper FROM pg_roles WHERE rolname = ANY(%s) ORDER BY 1"
        assert pg.query("postgres", roles, ([new, odd, inrole, there],)) == [(new, False), (there, False)]
        skipped = [w for w in outcome.warnings if "of globals.sql were not run" in w]
        assert len(skipped) == 1, outcome.warnings
        text = skipped[0]
        assert text.startswith("4 statement(s) of globals.sql were not run"), text
        for part in (
            f"COMMENT ON ROLE {new} IS 'a\\nb';",
            f"CREATE ROLE {odd} WITH LOGIN PASSWORD '…';",
            f"CREATE ROLE {inrole} IN ROLE {new};",
            "CREATE TABLESPACE ts OWNER postgres LOCATION '/nowhere';",
        ):
            assert part in text, text
        assert "sekrit" not in text and "\n" not in text and there not in text and "SET" not in text, text
    finally:
        for role in (inrole, odd, new, there):
            pg.sql("postgres", f"DROP ROLE IF EXISTS {role}")


def test_a_restore_behind_another_sessions_lock_fails_with_the_cause_not_waits_for_ever(
    sandbox: Sandbox, pg_server: PgServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An open transaction that read a table (a dashboard's idle session) or locked it: the whole
    database restore's pg_restore --clean (DROP TABLE) and an agent's merge waited for as long as
    that session lived, with no word. Now each fails after the lock wait bound (pg.LOCK_WAIT_S, 1 s
    here) naming the cause and the fix, and nothing changes. (Here the other session is ended after
    a while, so the old code ended too, restoring.)"""
    from phoenix_backup.sources import postgres as pg_source

    monkeypatch.setattr(pg_source, "LOCK_WAIT_S", 1)
    pg = pg_server
    db = pg.create_database("locked")
    pg.sql(db, "CREATE TABLE t (id int PRIMARY KEY, agent_id text NOT NULL); INSERT INTO t VALUES (1, 'agent_a')")
    entries = {
        "dump": postgres_entry(pg, db),
        "agent": postgres_entry(pg, db, agentId="agent_a"),
    }
    env = sandbox.env_with(PHX_TEST_PGPASSWORD=pg.password)
    try:
        for kind, lock in (("dump", "SELECT * FROM t"), ("agent", "LOCK TABLE t IN ACCESS EXCLUSIVE MODE")):
            sandbox.write_config(databases={"postgres": [entries[kind]]})
            run_phx_here(["backup", "--json"], env)
            pg.sql(db, "DELETE FROM t")
            holder = pg.connect(db)
            holder.execute("BEGIN")
            holder.execute(lock)
            try:
                error = _restore_behind_a_lock(pg, holder.info.backend_pid, env, 30)
            finally:
                holder.close()
            assert "another session held a lock" in error and "more than 1 s" in error, error
            assert "pg_stat_activity" in error and "run the restore again" in error, error
            assert pg.query(db, "SELECT count(*) FROM t") == [(0,)]  # nothing changed
            pg.sql(db, "INSERT INTO t VALUES (1, 'agent_a')")
    finally:
        pg.drop_database(db)


def test_a_lock_held_shorter_than_the_bound_only_delays_the_restore(
    sandbox: Sandbox, pg_server: PgServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The lock watch must end only a wait longer than the bound: a session that holds the table
    for 1 s (bound 4 s here) delays the restore, which then restores (exit 0)."""
    from phoenix_backup.sources import postgres as pg_source

    monkeypatch.setattr(pg_source, "LOCK_WAIT_S", 4)
    pg = pg_server
    db = pg.create_database("shortlock")
    pg.sql(db, "CREATE TABLE t (id int PRIMARY KEY); INSERT INTO t VALUES (1)")
    sandbox.write_config(databases={"postgres": [postgres_entry(pg, db)]})
    env = sandbox.env_with(PHX_TEST_PGPASSWORD=pg.password)
    try:
        with _backed_up_then_read_in_a_transaction(pg, db, env) as holder:
            done, waited = threading.Event(), list[bool]()

            def release() -> None:
                # Once the restore waits for the lock, the holder's transaction ends 1 s later.
                with pg.connect(db) as probe:
                    waiting = "SELECT 1 FROM pg_locks WHERE NOT granted AND relation = 't'::regclass"
                    while not done.is_set() and probe.execute(waiting).fetchone() is None:
                        done.wait(0.05)
                waited.append(not done.is_set())
                done.wait(1)
                holder.execute("ROLLBACK")

            releaser = threading.Thread(target=release)
            releaser.start()
            try:
                run_phx_here(["restore", "--latest", "--databases-only", "--yes", "--no-safety-snapshot"], env)
            finally:
                done.set()
                releaser.join()
        assert waited == [True]  # the restore did wait for the lock
        assert pg.query(db, "SELECT id FROM t") == [(1,)]
    finally:
        pg.drop_database(db)


def test_the_lock_watch_never_cancels_another_roles_session_that_took_the_restores_name(
    pg_server: PgServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The restore's session name is in pg_stat_activity for every role to see. A session of
    another role that took it and waited for a lock longer than the bound had its statement
    cancelled by the (superuser's) lock watch, which then counted that cancel as the restore's.
    Now only a session of the restoring role is watched."""
    import psycopg

    from phoenix_backup.sinks import postgres as sink
    from phoenix_backup.sources import postgres as pg_source

    monkeypatch.setattr(pg_source, "LOCK_WAIT_S", 0.01)
    monkeypatch.setattr(sink._LockWatch, "POLL_S", 0.02)
    name = "phoenix-restore-0123456789abcdef"
    pg = pg_server
    db = pg.create_database("impostor")
    role = f"imp{db[-8:]}"
    pg.sql("postgres", f"CREATE ROLE {role} LOGIN PASSWORD '{pg.password}'")
    pg.sql(db, f"CREATE TABLE x (id int); ALTER TABLE x OWNER TO {role}")
    conninfo = f"host={pg.host} port={pg.port} dbname={db} user={services.PG_SUPERUSER}"
    conn = pg_source.PgConn("main", conninfo, pg.password, {})
    errors: list[str] = []
    try:
        with pg.connect(db) as holder:
            holder.execute("BEGIN")
            holder.execute("LOCK TABLE x")
            imp = psycopg.connect(
                host=pg.host, port=pg.port, dbname=db, user=role, password=pg.password, application_name=name
            )

            def wait_for_x() -> None:
                try:
                    imp.execute("LOCK TABLE x")
                except psycopg.Error as exc:
                    errors.append(str(exc))

            waiter = threading.Thread(target=wait_for_x)
            waiter.start()
            try:
                with pg.connect(db) as probe:
                    waiting = "SELECT 1 FROM pg_stat_activity WHERE application_name = %s AND wait_event_type = 'Lock'"
                    while probe.execute(waiting, (name,)).fetchone() is None:
                        threading.Event().wait(0.02)
                    with sink._LockWatch(conn, name) as watch:
                        threading.Event().wait(0.3)  # 15 looks
                    assert not watch.cancelled
                    assert probe.execute(waiting, (name,)).fetchone() == (1,)  # it waits on
            finally:
                holder.execute("ROLLBACK")
                waiter.join()
                imp.close()
        assert errors == [], errors
    finally:
        pg.drop_database(db)
        pg.sql("postgres", f"DROP ROLE IF EXISTS {role}")


def test_on_a_server_without_lock_waitstart_a_restore_behind_a_lock_still_fails(
    sandbox: Sandbox, pg_server: PgServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before PostgreSQL 14 pg_locks has no `waitstart`: the lock watch's query failed at once and
    the watch ended without a word, so a restore behind another session's lock waited for as long
    as that session lived. Here such a server is what the watch sees (a version below 14, and a
    pg_locks without waitstart ahead of pg_catalog on its role's search_path); the restore now
    fails after the bound all the same. (The other session is ended after 20 s for the old code.)"""
    from phoenix_backup.sinks import postgres as sink
    from phoenix_backup.sources import postgres as pg_source

    monkeypatch.setattr(pg_source, "LOCK_WAIT_S", 1)
    monkeypatch.setattr(sink, "_WAITSTART_SINCE", 10**9, raising=False)
    pg = pg_server
    db = pg.create_database("oldlocks")
    tag = db[-8:]
    role, shadow = f"lk{tag}", f"shadow{tag}"
    pg.sql("postgres", f"CREATE ROLE {role} LOGIN SUPERUSER PASSWORD '{pg.password}'")
    pg.sql(
        "postgres",
        f"CREATE SCHEMA {shadow}; CREATE VIEW {shadow}.pg_locks AS SELECT locktype, pid, mode, granted "
        f"FROM pg_catalog.pg_locks; ALTER ROLE {role} IN DATABASE postgres SET search_path = {shadow}, pg_catalog",
    )
    pg.sql(db, "CREATE TABLE t (id int PRIMARY KEY); INSERT INTO t VALUES (1)")
    sandbox.write_config(databases={"postgres": [postgres_entry(pg, db, user=role)]})
    env = sandbox.env_with(PHX_TEST_PGPASSWORD=pg.password)
    try:
        with _backed_up_then_read_in_a_transaction(pg, db, env) as holder:
            error = _restore_behind_a_lock(pg, holder.info.backend_pid, env, 20)
        assert "another session held a lock" in error and "more than 1 s" in error, error
        assert pg.query(db, "SELECT count(*) FROM t") == [(0,)]  # nothing changed
    finally:
        pg.drop_database(db)
        pg.sql("postgres", f"DROP SCHEMA {shadow} CASCADE; DROP ROLE IF EXISTS {role}")


_TRANSACTION_IGNORES = "transaction\nignore_startup_parameters = options\ndefault_pool_size = 2"


# Idle server sessions handed out oldest first: the next client gets another session than the last one's.
_ROUND_ROBIN = "transaction\nignore_startup_parameters = options\ndefault_pool_size = 3\nserver_round_robin = 1"


@pytest.mark.parametrize("pgbouncer", ["transaction", _TRANSACTION_IGNORES, _ROUND_ROBIN], indirect=True)
def test_a_whole_database_through_a_transaction_pooler_is_refused_naming_it(
    sandbox: Sandbox, pg_server: PgServer, pgbouncer: int, request: pytest.FixtureRequest
) -> None:
    """Through pgbouncer (pool_mode=transaction) a whole-database restore ran, and pg_restore's
    plain SETs stayed on the pooled server session: the next client got `search_path = ''`,
    `row_security = off`, `check_function_bodies = off`. The backup failed with pgbouncer's words
    only (`unsupported startup parameter: options`); told `ignore_startup_parameters = options`,
    pgbouncer refused nothing and backup and restore ran (exit 0). Now a server session handed to a
    second client while the first is connected gives the pooler away: both fail naming the pooler
    and the fix, the restore before it changes anything, and the next client gets a clean session."""
    pg = pg_server
    db = pg.create_database("pooled")
    pg.sql(db, "CREATE TABLE t (id int PRIMARY KEY); INSERT INTO t VALUES (1), (2)")
    env = sandbox.env_with(PHX_TEST_PGPASSWORD=pg.password)
    sandbox.write_config(databases={"postgres": [postgres_entry(pg, db)]})
    run_phx_here(["backup", "--json"], env)
    pg.sql(db, "DELETE FROM t WHERE id = 2")
    sandbox.write_config(databases={"postgres": [postgres_entry(pg, db, port=pgbouncer)]})
    # Told by the session handed to a second client (`transaction_pooled`), before pgbouncer's refusal
    # of `options` (`pooler_fix`).
    fix = "a connection pooler in transaction mode (pgbouncer pool_mode = transaction) is in between"
    import psycopg

    if request.node.callspec.params["pgbouncer"] == _ROUND_ROBIN:
        # Three idle server sessions in the pool, handed out in turn: a second client was given
        # another than phx's first, so the probe took the pool for a session pool and backup and
        # restore ran through it (exit 0).
        clients = [
            psycopg.connect(host="127.0.0.1", port=pgbouncer, dbname=db, user="postgres", password=pg.password)
            for _ in range(3)
        ]
        for c in clients:
            c.execute("SELECT 1")  # each holds a server session in its open transaction
        for c in clients:
            c.commit()  # its session goes back to the pool (closed in a transaction, it would be closed)
            c.close()
    try:
        backup = run_phx_here(["backup"], env, code=3).out
        assert fix in backup and "point the entry at the PostgreSQL server itself" in backup, backup
        args = ["restore", "--latest", "--databases-only", "--yes", "--no-safety-snapshot"]
        restore = run_phx_here(args, env, code=3)
        assert f"{fix}: a whole-database restore needs a server session of its own" in restore.out, restore.out
        assert "nothing was changed" in restore.out, restore.out
        assert pg.query(db, "SELECT id FROM t") == [(1,)]
        with psycopg.connect(
            host="127.0.0.1", port=pgbouncer, dbname=db, user="postgres", password=pg.password, autocommit=True
        ) as con:
            settings = "SELECT current_setting('search_path'), current_setting('row_security')"
            assert con.execute(settings).fetchone() == ('"$user", public', "on")
    finally:
        pg.drop_database(db)


@pytest.fixture
def redis_cluster(tmp_path: Path) -> Iterator[int]:
    """Three redis-server nodes on loopback made one Redis Cluster (`redis-cli --cluster create`);
    the first node's port."""
    import shutil
    import subprocess

    exe, cli = shutil.which("redis-server"), shutil.which("redis-cli")
    if exe is None or cli is None:
        pytest.skip("redis-server and redis-cli are not installed (Debian package redis-server)")
    ports: list[int] = []
    procs: list[subprocess.Popen[bytes]] = []
    try:
        # A port (or its cluster bus port, port + 10000) taken meanwhile: another is tried.
        for _ in range(15):
            if len(ports) == 3:
                break
            port = services.free_port()
            if port >= 55000:
                continue
            folder = tmp_path / str(port)
            folder.mkdir()
            argv = [exe, "--port", str(port), "--bind", "127.0.0.1", "--cluster-enabled", "yes", "--save", ""]
            proc = subprocess.Popen(
                [*argv, "--appendonly", "no", "--dir", str(folder)],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            procs.append(proc)
            if services._wait_port(port, 10) and proc.poll() is None:
                ports.append(port)
        assert len(ports) == 3, "the cluster's nodes did not start"
        nodes = [f"127.0.0.1:{p}" for p in ports]
        subprocess.run(
            [cli, "--cluster", "create", *nodes, "--cluster-replicas", "0", "--cluster-yes"],
            capture_output=True,
            check=True,
            timeout=60,
        )
        yield ports[0]
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()


def test_a_redis_cluster_node_is_refused_naming_the_cluster(
    sandbox: Sandbox, redis_cluster: int, redis_server: Any
) -> None:
    """A url naming a node of a Redis Cluster (three nodes, for real): the backup failed midway
    with Redis's words only (`Keys in request don't hash to the same slot`); a node holds only its
    slots' keys, so nothing of Phoenix's standalone reads and writes (SCAN, a restore's temporary
    key renamed onto the key) fits it. Now backup and restore refuse at once, naming the cluster
    and the fix, and the restore writes nothing."""
    import redis

    live = redis.RedisCluster(host="127.0.0.1", port=redis_cluster)
    for i in range(30):
        live.set(f"agent:k{i}", b"v")
    hot = {"name": "hot", "url": f"redis://127.0.0.1:{redis_cluster}/0", "match": "agent:*"}
    sandbox.write_config(databases={"redis": [hot]})
    env = sandbox.env_with()
    cause = "is a node of a Redis Cluster (cluster_enabled:1)"
    out = run_phx_here(["backup"], env, code=3).out
    assert cause in out and "redis-cli --cluster backup" in out, out
    # A snapshot of a standalone Redis, restored onto the cluster's node.
    redis_server.client(13).set(b"agent:solo", b"1")
    sandbox.write_config(databases={"redis": [dict(hot, url=redis_server.url(13))]})
    snapshot = run_phx_here(["backup", "--json"], env).json()["id"]
    for i in range(30):
        live.delete(f"agent:k{i}")
    sandbox.write_config(databases={"redis": [hot]})
    args = ["restore", "--backup", snapshot, "--databases-only", "--yes", "--no-safety-snapshot"]
    out = run_phx_here(args, env, code=3).out
    assert cause in out, out
    assert live.get("agent:solo") is None
    live.close()


def test_a_redis_sentinel_and_a_read_only_replica_are_refused_naming_them(
    sandbox: Sandbox, redis_server: Any, tmp_path: Path
) -> None:
    """A url naming a Redis Sentinel: the backup failed midway with `unknown command 'SCAN'`, the
    restore with `unknown command 'TIME'`, Redis's words only. A url naming a read-only replica
    (backed up fine): the restore refused every key on its own, one warning per key, no word of
    what to do. Now each is refused at once, naming what the server is and where to point the url;
    a replica is still backed up."""
    import shutil
    import subprocess

    exe = shutil.which("redis-server")
    if exe is None:
        pytest.skip("redis-server is not installed (Debian package redis-server)")
    replica_port, sentinel_port = services.free_port(), services.free_port()
    conf = tmp_path / "sentinel.conf"  # a Sentinel rewrites its file: one of its own
    conf.write_text(f"port {sentinel_port}\nbind 127.0.0.1\nsentinel monitor gone 127.0.0.1 1 1\n")
    common = ["--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", str(tmp_path)]
    procs = [
        subprocess.Popen(
            [exe, "--port", str(replica_port), *common, "--replicaof", "127.0.0.1", str(redis_server.port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        ),
        subprocess.Popen([exe, str(conf), "--sentinel"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL),
    ]
    try:
        assert services._wait_port(replica_port, 10) and services._wait_port(sentinel_port, 10)
        redis_server.client(14).set(b"agent:solo", b"1")
        hot = {"name": "hot", "url": redis_server.url(14), "match": "agent:*"}
        sandbox.write_config(databases={"redis": [hot]})
        env = sandbox.env_with()
        snapshot = run_phx_here(["backup", "--json"], env).json()["id"]
        restore = ["restore", "--backup", snapshot, "--databases-only", "--yes", "--no-safety-snapshot"]
        sandbox.write_config(databases={"redis": [dict(hot, url=f"redis://127.0.0.1:{sentinel_port}/0")]})
        sentinel = "is a Redis Sentinel (redis_mode:sentinel)"
        for args in (["backup"], restore):
            out = run_phx_here(args, env, code=3).out
            assert sentinel in out and "SENTINEL get-master-addr-by-name" in out and "unknown command" not in out, out
        sandbox.write_config(databases={"redis": [dict(hot, url=f"redis://127.0.0.1:{replica_port}/14")]})
        out = run_phx_here(restore, env, code=3).out
        master = "is a read-only replica (role:slave, slave_read_only:1) "
        master += f"of the master at 127.0.0.1:{redis_server.port}"
        assert master in out and "point the url at the master" in out and "key 'agent:solo'" not in out, out
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()
        redis_server.client(14).flushdb()


_IGNORES_OPTIONS = "session\nignore_startup_parameters = options\ndefault_pool_size = 2"


@pytest.mark.parametrize("pgbouncer", ["session", _IGNORES_OPTIONS], indirect=True)
def test_a_whole_database_through_a_session_pool_works_or_the_error_says_how(
    sandbox: Sandbox, pg_server: PgServer, pgbouncer: int, request: pytest.FixtureRequest
) -> None:
    """A pool in session mode gives each client a server session of its own, and the refusal of a
    transaction pooler said to use one; but pgbouncer refuses pg_dump's and pg_restore's startup
    parameter `options` in session mode too, so following the advice gave the same error again.
    Now the error says the session pool must ignore `options`, and through one that does, a
    whole-database backup and restore work."""
    pg = pg_server
    ignores = request.node.callspec.params["pgbouncer"] == _IGNORES_OPTIONS
    db = pg.create_database("sessionpool")
    pg.sql(db, "CREATE TABLE t (id int PRIMARY KEY); INSERT INTO t VALUES (1), (2)")
    env = sandbox.env_with(PHX_TEST_PGPASSWORD=pg.password)
    sandbox.write_config(databases={"postgres": [postgres_entry(pg, db, port=pgbouncer)]})
    try:
        if not ignores:
            out = run_phx_here(["backup"], env, code=3).out
            assert "session mode that ignores that parameter" in out, out
            assert "`ignore_startup_parameters = options`" in out, out
            return
        run_phx_here(["backup", "--json"], env)
        pg.sql(db, "DELETE FROM t WHERE id = 2")
        run_phx_here(["restore", "--latest", "--databases-only", "--yes", "--no-safety-snapshot"], env)
        assert pg.query(db, "SELECT id FROM t ORDER BY 1") == [(1,), (2,)]
    finally:
        pg.drop_database(db)


# `phx` whose step `STEP` of sinks/postgres.py SIGKILLs the process: the restore killed exactly there.
_KILLED_AT = """
import os, signal, sys
from phoenix_backup.sinks import postgres as sink
setattr(sink, sys.argv[1], lambda *a, **k: os.kill(os.getpid(), signal.SIGKILL))
from phoenix_backup.cli.main import main
sys.argv = ["phx", *sys.argv[2:]]
main()
"""


@pytest.mark.parametrize(("step", "command"), [("_feed", "restore"), ("_analyze", "restore"), ("_analyze", "drill")])
def test_roles_of_a_killed_restore_are_dropped_by_the_next_drill_unless_it_committed(
    sandbox: Sandbox, pg_server: PgServer, monkeypatch: pytest.MonkeyPatch, step: str, command: str
) -> None:
    """A restore SIGKILLed after it created the snapshot's roles (as pg_restore was to start,
    `_feed`) left them on the server for ever, with LOGIN and the snapshot's password: a killed
    process drops nothing. Now its journal lets the next drill against that server drop them, but never
    a role the user created again under that name since, and none when the killed restore's
    pg_restore had committed (`_analyze` runs after it: the restored database needs its roles).
    A drill killed so left its scratch database too: it goes, then the roles."""
    import subprocess

    pg = pg_server
    db = pg.create_database("killroles")
    tag = db[-8:]
    owner, lone, again = (f"{p}{tag}" for p in ("own", "lone", "again"))
    pg.sql("postgres", f"CREATE ROLE {owner} LOGIN PASSWORD 'pw'; CREATE ROLE {lone} LOGIN; CREATE ROLE {again}")
    pg.sql(db, f"CREATE TABLE t (id int); INSERT INTO t VALUES (1); ALTER TABLE t OWNER TO {owner}")
    env, snap = _backed_up(sandbox, pg, db)
    pg.sql(db, "ALTER TABLE t OWNER TO postgres")
    pg.sql("postgres", f"DROP ROLE {owner}; DROP ROLE {lone}; DROP ROLE {again}")
    roles = "SELECT rolname FROM pg_roles WHERE rolname = ANY(%s) ORDER BY 1"
    try:
        args = ["restore", "--latest", "--databases-only", "--yes", "--no-safety-snapshot"]
        if command == "drill":
            args = ["drill", "--backup", snap]
        scratch = "SELECT count(*) FROM pg_database WHERE datname LIKE 'phx\\_drill\\_%'"
        killed = subprocess.run(
            [sys.executable, "-c", _KILLED_AT, step, *args], env=env, capture_output=True, text=True, check=False
        )
        assert killed.returncode == -9, killed.stderr
        assert pg.query("postgres", scratch) == [(1 if command == "drill" else 0,)]
        assert pg.query("postgres", roles, ([owner, lone, again],)) == sorted((r,) for r in (again, lone, owner))
        pg.sql("postgres", f"DROP ROLE {again}; CREATE ROLE {again}")  # the user's own role now
        monkeypatch.setenv("PHX_CACHE_DIR", env["PHX_CACHE_DIR"])
        drill = services.drill(sandbox, env, snap, "postgres/main", f"{db}_drill")
        assert drill.ok, drill
        left = pg.query("postgres", roles, ([owner, lone, again],))
        assert pg.query("postgres", scratch) == [(0,)], drill.warnings
        if step == "_feed" or command == "drill":
            assert left == [(again,)], drill.warnings
            assert any("a killed restore or drill" in w and lone in w and owner in w for w in drill.warnings)
        else:
            assert left == sorted((r,) for r in (again, lone, owner)), drill.warnings
            assert pg.query(db, "SELECT pg_get_userbyid(relowner) FROM pg_class WHERE relname = 't'") == [(owner,)]
        assert not list((Path(env["PHX_CACHE_DIR"]) / "pg-roles-journal").iterdir())
    finally:
        pg.drop_database(db)
        for role in (owner, lone, again):
            pg.sql("postgres", f"DROP ROLE IF EXISTS {role}")


def test_a_role_a_failed_restore_created_stays_once_made_a_member_meanwhile(
    sandbox: Sandbox, pg_server: PgServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A role a failed restore created, then made a member of another role by another session
    while the restore ran (that session starts relying on it): DROP ROLE does not refuse it, and
    the membership went with it, silently. Now the role stays, named in a warning."""
    from phoenix_backup.sinks import postgres as sink

    pg = pg_server
    db = pg.create_database("rolesmember")
    tag = db[-8:]
    role, group = f"joined{tag}", f"grp{tag}"
    pg.sql("postgres", f"CREATE ROLE {role} LOGIN; CREATE ROLE {group}")
    pg.sql(db, "CREATE TABLE t (id int)")
    env, _ = _backed_up(sandbox, pg, db)
    pg.sql(db, "CREATE VIEW v AS SELECT id FROM t")  # pg_restore --clean then fails
    pg.sql("postgres", f"DROP ROLE {role}")
    feed = sink._feed

    def granted_then_fed(*args: Any, **kwargs: Any) -> Any:
        pg.sql("postgres", f"GRANT {group} TO {role}")  # another session, once the role was created
        return feed(*args, **kwargs)

    monkeypatch.setattr(sink, "_feed", granted_then_fed)
    try:
        out = run_phx_here(
            ["restore", "--latest", "--databases-only", "--yes", "--no-safety-snapshot"], env, code=3
        ).out
        members = "SELECT pg_has_role(%s, %s, 'MEMBER') FROM pg_roles WHERE rolname = %s"
        assert pg.query("postgres", members, (role, group, role)) == [(True,)], out
        assert "a membership was granted to it or of it meanwhile" in out, out
    finally:
        pg.drop_database(db)
        pg.sql("postgres", f"DROP ROLE IF EXISTS {role}; DROP ROLE IF EXISTS {group}")


def test_a_restore_whose_server_goes_away_keeps_its_roles_journal_for_the_next_drill(
    sandbox: Sandbox, pg_server: PgServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A whole-database restore whose server goes away while pg_restore runs: pg_restore fails
    (exit 3, its words), its transaction is rolled back, and the roles it created cannot be dropped
    then. They were left for good, and the warning told the user to drop them by hand. Now the
    journal naming them is kept, and the next drill against that server drops them."""
    from phoenix_backup.errors import SourceError
    from phoenix_backup.sinks import postgres as sink
    from phoenix_backup.sources import postgres as source

    pg = pg_server
    db = pg.create_database("goneaway")
    role = f"gone{db[-8:]}"
    pg.sql("postgres", f"CREATE ROLE {role} LOGIN PASSWORD 'pw'")
    pg.sql(db, f"CREATE TABLE t (id int); INSERT INTO t VALUES (1); GRANT SELECT ON t TO {role}")
    env, snap = _backed_up(sandbox, pg, db)
    pg.sql(db, f"REVOKE ALL ON t FROM {role}; DELETE FROM t")
    pg.sql("postgres", f"DROP ROLE {role}")
    connect_server = source.PgConn.connect_server

    def gone(self: Any) -> Any:
        raise SourceError(f"cannot connect to PostgreSQL ({self.where}): server closed the connection unexpectedly")

    def server_gone(args: list[str], *_: Any, **__: Any) -> None:
        monkeypatch.setattr(source.PgConn, "connect_server", gone)  # from here on
        raise sink.RestoreError("pg_restore of postgres/main failed (exit 1): server closed the connection")

    monkeypatch.setattr(sink, "_feed", server_gone)
    roles = "SELECT rolname FROM pg_roles WHERE rolname = %s"
    try:
        out = run_phx_here(["restore", "--latest", "--databases-only", "--yes", "--no-safety-snapshot"], env, code=3)
        assert "server closed the connection" in out.out and "next restore or drill against this server" in out.out
        assert pg.query("postgres", roles, (role,)) == [(role,)]
        assert pg.query(db, "SELECT count(*) FROM t") == [(0,)]
        journals = Path(env["PHX_CACHE_DIR"]) / "pg-roles-journal"
        assert len(list(journals.iterdir())) == 1
        monkeypatch.setattr(source.PgConn, "connect_server", connect_server)
        monkeypatch.undo()
        monkeypatch.setenv("PHX_CACHE_DIR", env["PHX_CACHE_DIR"])
        drill = services.drill(sandbox, env, snap, "postgres/main", f"{db}_drill")
        assert drill.ok, drill
        assert pg.query("postgres", roles, (role,)) == [], drill.warnings
        assert not list(journals.iterdir())
    finally:
        pg.drop_database(db)
        pg.sql("postgres", f"DROP ROLE IF EXISTS {role}")


def test_without_lock_waitstart_a_long_statement_in_a_short_lock_wait_is_not_cancelled(
    pg_server: PgServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before PostgreSQL 14 (no pg_locks.waitstart) the lock watch took a statement's start for the
    start of its lock wait: a pg_restore statement that had run longer than the bound (a big COPY,
    a CREATE INDEX) and was then seen in a short lock wait was cancelled at once, and the restore
    failed blaming another session's lock. Now the watch measures the wait itself. (Such a server
    is what the watch sees here: a version below 14.)"""
    import psycopg

    from phoenix_backup.sinks import postgres as sink
    from phoenix_backup.sources import postgres as pg_source

    monkeypatch.setattr(pg_source, "LOCK_WAIT_S", 1)
    monkeypatch.setattr(sink._LockWatch, "POLL_S", 0.05)
    monkeypatch.setattr(sink, "_WAITSTART_SINCE", 10**9)
    name = "phoenix-restore-00000000long0000"
    pg = pg_server
    db = pg.create_database("longstmt")
    pg.sql(db, "CREATE TABLE x (id int)")
    conn = pg_source.PgConn(
        "main", f"host={pg.host} port={pg.port} dbname={db} user={services.PG_SUPERUSER}", pg.password, {}
    )
    errors: list[str] = []
    try:
        with pg.connect(db) as holder, pg.connect(db) as probe:
            holder.execute("BEGIN")
            holder.execute("LOCK TABLE x")
            restore = psycopg.connect(conn.conninfo, password=pg.password, application_name=name, autocommit=True)

            def long_then_lock() -> None:
                try:  # one statement message: its query_start is before the sleep
                    restore.execute("SELECT pg_sleep(1.2); LOCK TABLE x")
                except psycopg.Error as exc:
                    errors.append(str(exc))

            with sink._LockWatch(conn, name) as watch:
                waiter = threading.Thread(target=long_then_lock)
                waiter.start()
                waiting = "SELECT 1 FROM pg_stat_activity WHERE application_name = %s AND wait_event_type = 'Lock'"
                while probe.execute(waiting, (name,)).fetchone() is None:
                    threading.Event().wait(0.02)
                threading.Event().wait(0.3)  # a short wait: 6 looks of the watch
                holder.execute("ROLLBACK")
                waiter.join()
            restore.close()
        assert errors == [] and not watch.cancelled, errors
    finally:
        pg.drop_database(db)


def test_a_killed_runs_journal_that_cannot_be_looked_at_fails_no_restore(
    sandbox: Sandbox, pg_server: PgServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The journal of a killed restore names a database no one may connect to now (whether its
    pg_restore committed cannot be told): the next restore goes on, says so, and keeps the journal
    (and the role it names) for a later run."""
    from phoenix_backup.sinks import postgres_roles

    pg = pg_server
    db = pg.create_database("journalok")
    shut = pg.create_database("shut")
    role = f"kept{db[-8:]}"
    pg.sql(db, "CREATE TABLE t (id int); INSERT INTO t VALUES (1)")
    env, _ = _backed_up(sandbox, pg, db)
    monkeypatch.setenv("PHX_CACHE_DIR", env["PHX_CACHE_DIR"])
    pg.sql("postgres", f"CREATE ROLE {role}")
    oid = pg.query("postgres", "SELECT oid FROM pg_roles WHERE rolname = %s", (role,))[0][0]
    server = pg.query("postgres", "SELECT system_identifier::text FROM pg_control_system()")[0][0]
    journal = postgres_roles.RolesJournal()
    journal.server = server
    journal.note({"role": role, "oid": oid})
    journal.note({"restoring": 1, "database": shut})
    journal.keep()
    journal.close()
    pg.sql("postgres", f"ALTER DATABASE {shut} ALLOW_CONNECTIONS false")
    try:
        out = run_phx_here(["restore", "--latest", "--databases-only", "--yes", "--no-safety-snapshot"], env).out
        assert f"what a killed restore or drill left on this server (roles {role}) could not be looked at" in out, out
        assert pg.query("postgres", "SELECT count(*) FROM pg_roles WHERE rolname = %s", (role,)) == [(1,)]
        assert len(list((Path(env["PHX_CACHE_DIR"]) / "pg-roles-journal").iterdir())) == 1
    finally:
        pg.sql("postgres", f"ALTER DATABASE {shut} ALLOW_CONNECTIONS true")
        pg.drop_database(shut)
        pg.drop_database(db)
        pg.sql("postgres", f"DROP ROLE IF EXISTS {role}")


def _killed_runs_journal(pg: PgServer, lines: list[dict[str, Any]]) -> Path:
    """The journal a killed restore left (marked ended: its process is over), as RolesJournal writes it."""
    from phoenix_backup.sinks import postgres_roles

    journal = postgres_roles.RolesJournal()
    journal.server = pg.query("postgres", "SELECT system_identifier::text FROM pg_control_system()")[0][0]
    for line in lines:
        journal.note(line)
    journal.keep()
    journal.close()
    return journal.path


@pytest.mark.parametrize("created", [False, True])
def test_a_killed_restore_whose_database_was_renamed_since_keeps_its_roles(
    sandbox: Sandbox, pg_server: PgServer, monkeypatch: pytest.MonkeyPatch, created: bool
) -> None:
    """A restore killed once its pg_restore had committed (the restored database needs its roles),
    whose database the user renamed since (restored under a scratch name, then put in place): the
    next restore looked for the journal's database by its name, found none, took it that nothing
    was committed and dropped the roles, such as the LOGIN role the applications connect as, which
    nothing in the catalogs ties to the database. The database is found by its oid now: they stay."""
    pg = pg_server
    db = pg.create_database("renamesrc")
    killed = pg.create_database("renamed")  # the killed restore's database
    renamed = f"{killed}_live"
    role = f"app{db[-8:]}"
    pg.sql(db, "CREATE TABLE t (id int); INSERT INTO t VALUES (1)")
    env, _ = _backed_up(sandbox, pg, db)
    monkeypatch.setenv("PHX_CACHE_DIR", env["PHX_CACHE_DIR"])
    pg.sql("postgres", f"CREATE ROLE {role} LOGIN")
    oid = pg.query("postgres", "SELECT oid FROM pg_roles WHERE rolname = %s", (role,))[0][0]
    mark, db_oid = pg.query(
        "postgres", "SELECT txid_current(), (SELECT oid FROM pg_database WHERE datname = %s)", (killed,)
    )[0]
    # `created`: the journal of a restore that created that database (it names it before, and its oid).
    creating = [{"creating": killed}, {"created": killed, "oid": db_oid}] if created else []
    journal = _killed_runs_journal(
        pg,
        [
            {"role": role, "oid": oid},
            {"memberships": []},
            *creating,
            {"restoring": mark, "database": killed, "databaseOid": db_oid},
        ],
    )
    pg.sql(killed, "CREATE TABLE restored (id int); INSERT INTO restored VALUES (1)")  # pg_restore committed
    pg.sql("postgres", f'ALTER DATABASE "{killed}" RENAME TO "{renamed}"')
    try:
        out = run_phx_here(["restore", "--latest", "--databases-only", "--yes", "--no-safety-snapshot"], env).out
        assert pg.query("postgres", "SELECT count(*) FROM pg_roles WHERE rolname = %s", (role,)) == [(1,)], out
        assert not journal.exists()  # handled: the roles are the restored database's
    finally:
        pg.drop_database(renamed)
        pg.drop_database(killed)
        pg.drop_database(db)
        pg.sql("postgres", f"DROP ROLE IF EXISTS {role}")


def test_a_damaged_or_planted_roles_journal_fails_no_restore_and_drops_nothing(
    sandbox: Sandbox, pg_server: PgServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The journals of killed runs as a disk or a hand may leave them: a folder under a journal's
    name ended the next restore as an internal error (IsADirectoryError), so did a line whose oid
    is Infinity (OverflowError); a role name that is a lone surrogate went on to the server's
    queries; a damaged line in the middle (it may have been the pg_restore mark) was skipped, and
    the roles the journal named were dropped as if pg_restore never began. Now the restore runs
    (exit 0), and a journal that cannot be read whole drops nothing and is kept."""
    pg = pg_server
    db = pg.create_database("planted")
    role = f"plant{db[-8:]}"
    pg.sql(db, "CREATE TABLE t (id int); INSERT INTO t VALUES (1)")
    env, _ = _backed_up(sandbox, pg, db)
    monkeypatch.setenv("PHX_CACHE_DIR", env["PHX_CACHE_DIR"])
    pg.sql("postgres", f"CREATE ROLE {role} LOGIN")
    oid = pg.query("postgres", "SELECT oid FROM pg_roles WHERE rolname = %s", (role,))[0][0]
    damaged = _killed_runs_journal(pg, [{"role": role, "oid": oid}])
    (damaged.parent / "0-0-folder").mkdir()
    text = damaged.read_text().splitlines()
    # A role line, a damaged line where the pg_restore mark was, then the end.
    damaged.write_text("\n".join([*text[:2], '{"restoring": 1X', *text[2:]]) + "\n")
    for bad in ('{"role": "x", "oid": Infinity}', '{"role": "\\udc80", "oid": 5}', '{"memberships": [[1e400, 1]]}'):
        path = _killed_runs_journal(pg, [{"memberships": []}])
        lines = path.read_text().splitlines()
        path.write_text("\n".join([lines[0], bad, *lines[1:]]) + "\n")
    try:
        out = run_phx_here(["restore", "--latest", "--databases-only", "--yes", "--no-safety-snapshot"], env).out
        assert pg.query("postgres", "SELECT count(*) FROM pg_roles WHERE rolname = %s", (role,)) == [(1,)], out
        assert damaged.exists()
        assert pg.query(db, "SELECT id FROM t") == [(1,)]
    finally:
        pg.drop_database(db)
        pg.sql("postgres", f"DROP ROLE IF EXISTS {role}")


def test_a_restore_failing_after_pg_restore_committed_keeps_the_roles_of_the_restored_database(
    sandbox: Sandbox, pg_server: PgServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A whole-database restore in place whose pg_restore had committed (the database there is now
    the snapshot's) but that failed after it, in ANALYZE or the row counts (or was stopped with
    Ctrl-C there, a long step on a big database): the roles it created were dropped as after a
    rolled-back pg_restore. DROP ROLE refused the owner of the tables, but the LOGIN role the
    applications connect as (a member of that owner, nothing else) went: the restored database
    was left without it. Now roles go only while pg_restore's work is undone too."""
    from phoenix_backup.sinks import postgres as sink

    pg = pg_server
    db = pg.create_database("aftercommit")
    tag = db[-8:]
    owner, login = f"own{tag}", f"login{tag}"
    pg.sql("postgres", f"CREATE ROLE {owner}; CREATE ROLE {login} LOGIN; GRANT {owner} TO {login}")
    pg.sql(db, f"CREATE TABLE t (id int); INSERT INTO t VALUES (1); ALTER TABLE t OWNER TO {owner}")
    env, _ = _backed_up(sandbox, pg, db)
    pg.sql(db, "ALTER TABLE t OWNER TO postgres")
    pg.sql("postgres", f"DROP ROLE {login}; DROP ROLE {owner}")

    def analyze_fails(*_: Any, **__: Any) -> list[str]:
        raise sink.RestoreError("ANALYZE failed: canceling statement due to statement timeout")

    monkeypatch.setattr(sink, "_analyze", analyze_fails)
    roles = "SELECT rolname FROM pg_roles WHERE rolname = ANY(%s) ORDER BY 1"
    try:
        out = run_phx_here(
            ["restore", "--latest", "--databases-only", "--yes", "--no-safety-snapshot"], env, code=3
        ).out
        assert "ANALYZE failed" in out, out
        assert pg.query(db, "SELECT pg_get_userbyid(relowner) FROM pg_class WHERE relname = 't'") == [(owner,)]
        assert pg.query("postgres", roles, ([owner, login],)) == sorted([(login,), (owner,)]), out
        assert pg.query("postgres", "SELECT pg_has_role(%s, %s, 'MEMBER')", (login, owner)) == [(True,)]
        assert not list((Path(env["PHX_CACHE_DIR"]) / "pg-roles-journal").iterdir())
    finally:
        pg.drop_database(db)
        pg.sql("postgres", f"DROP ROLE IF EXISTS {login}; DROP ROLE IF EXISTS {owner}")


# `phx` killed (SIGKILL) while pg_restore reads the dump: it is fed all but the dump's last bytes,
# then the process dies, and pg_restore, left reading a dump cut short, fails and rolls back.
_KILLED_MID_DUMP = """
import os, signal, sys
from phoenix_backup.sinks import postgres as sink
blocks = sink.stream_blocks
def cut_short(*a, **k):
    data = b"".join(blocks(*a, **k))
    yield data[: len(data) - 16]
    os.kill(os.getpid(), signal.SIGKILL)
sink.stream_blocks = cut_short
from phoenix_backup.cli.main import main
sys.argv = ["phx", *sys.argv[1:]]
main()
"""
# `phx` killed once it fed pg_restore the whole dump, as it waits for it: pg_restore, on its own,
# goes on and commits.
_KILLED_WAITING = """
import os, signal, subprocess, sys
wait = subprocess.Popen.wait
def killed(self, *a, **k):
    if "pg_restore" in str(self.args[0]):
        os.kill(os.getpid(), signal.SIGKILL)
    return wait(self, *a, **k)
subprocess.Popen.wait = killed
from phoenix_backup.cli.main import main
sys.argv = ["phx", *sys.argv[1:]]
main()
"""


def _processes_naming(word: str) -> list[int]:
    """The pids of the processes whose command line holds `word`."""
    pids = []
    for proc in Path("/proc").iterdir():
        with contextlib.suppress(OSError):
            if proc.name.isdigit() and word.encode() in (proc / "cmdline").read_bytes():
                pids.append(int(proc.name))
    return pids


@pytest.mark.parametrize("step", ["_feed", "mid-dump", "waiting", "_analyze"])
def test_a_killed_restore_to_a_new_database_leaves_none_half_restored(
    sandbox: Sandbox, pg_server: PgServer, step: str
) -> None:
    """`phx restore --to-database NAME` SIGKILLed once it created NAME (as pg_restore was to start,
    `_feed`; while pg_restore read the dump; after pg_restore committed, `_analyze`): the new
    database stayed, empty yet looking like a real one, and running the same command again only
    said it already exists. Now the run's journal names it (and its oid) before it is created: the
    next restore drops it when its pg_restore never committed (nobody connected, same oid) and
    restores it whole; one whose pg_restore committed is complete, stays, and the re-run's error
    says so with the exact DROP DATABASE."""
    import subprocess

    pg = pg_server
    db = pg.create_database("killnew")
    copy = f"{db}_copy"
    pg.sql(db, "CREATE TABLE t (id int); INSERT INTO t VALUES (1), (2)")
    env, _ = _backed_up(sandbox, pg, db)
    args = ["restore", "--latest", "--databases-only", "--to-database", copy]
    try:
        script = {"mid-dump": [_KILLED_MID_DUMP], "waiting": [_KILLED_WAITING]}.get(step)
        killed = subprocess.run(
            [sys.executable, "-c", *(script or [_KILLED_AT, step]), *args],
            env=env,
            capture_output=True,
            text=True,
            check=False,
        )
        assert killed.returncode == -9, killed.stderr
        assert pg.query("postgres", "SELECT count(*) FROM pg_database WHERE datname = %s", (copy,)) == [(1,)]
        complete = step in ("waiting", "_analyze")
        if step == "waiting":
            # pg_restore, left with the whole dump, commits once phx is gone: its end is awaited.
            for pid in _processes_naming(copy):
                for _ in range(300):
                    if not Path(f"/proc/{pid}").exists():
                        break
                    threading.Event().wait(0.1)
        else:
            # pg_restore, which the kill left reading the rest of the dump, ends (and rolls back).
            pg.sql("postgres", f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{copy}'")
        tables = "SELECT count(*) FROM pg_tables WHERE schemaname = 'public'"
        assert pg.query(copy, tables) == [(1 if complete else 0,)]  # empty, yet a database like any
        if complete:
            again = run_phx_here(args, env, code=2)
            assert "pg_restore committed" in again.out + again.err, again
            assert f'DROP DATABASE "{copy}";' in again.out + again.err, again
            assert pg.query(copy, "SELECT id FROM t ORDER BY 1") == [(1,), (2,)]
        else:
            again = run_phx_here(args, env)
            assert "which a killed restore had created and whose pg_restore never committed, was dropped" in again.out
            assert pg.query(copy, "SELECT id FROM t ORDER BY 1") == [(1,), (2,)]
        assert not list((Path(env["PHX_CACHE_DIR"]) / "pg-roles-journal").iterdir())
    finally:
        pg.drop_database(copy)
        pg.drop_database(db)


@pytest.mark.parametrize("case", ["in use", "unproven", "written since"])
def test_a_rerun_into_a_killed_restores_database_that_stays_names_it_and_the_fix(
    sandbox: Sandbox, pg_server: PgServer, monkeypatch: pytest.MonkeyPatch, case: str
) -> None:
    """A killed restore's new database that cannot be dropped (a session is connected to it; the
    run was killed before it noted the database's oid, so it is not provably that run's; or killed
    before pg_restore, and written to since by something else): a re-run into it said only that it
    exists. Now it is refused in one error naming what a killed restore left and the exact DROP
    DATABASE; nothing is dropped, and the journal stays (doctor names it)."""
    pg = pg_server
    db = pg.create_database("leftnew")
    copy = pg.create_database("lefthalf")  # the killed restore's database, empty
    pg.sql(db, "CREATE TABLE t (id int)")
    env, _ = _backed_up(sandbox, pg, db)
    monkeypatch.setenv("PHX_CACHE_DIR", env["PHX_CACHE_DIR"])
    oid = pg.query("postgres", "SELECT oid FROM pg_database WHERE datname = %s", (copy,))[0][0]
    lines: list[dict[str, Any]] = [{"creating": copy}]
    if case != "unproven":
        lines.append({"created": copy, "oid": oid})
    if case == "written since":
        pg.sql(copy, "CREATE TABLE mine (id int)")  # an application's, once the killed restore was gone
    journal = _killed_runs_journal(pg, lines)
    holder = pg.connect(copy) if case == "in use" else contextlib.nullcontext()
    try:
        with holder:
            out = run_phx_here(["restore", "--latest", "--databases-only", "--to-database", copy], env, code=2)
        text = out.out + out.err
        assert f"database {copy} already exists" in text and "a restore into it was killed" in text, text
        assert f'DROP DATABASE "{copy}";' in text, text
        why = {"in use": "session is connected", "unproven": "cannot prove", "written since": "wrote to it since"}
        assert why[case] in text, text
        assert pg.query("postgres", "SELECT count(*) FROM pg_database WHERE oid = %s", (oid,)) == [(1,)]
        assert journal.exists()  # looked at again by the next run, named by doctor
    finally:
        pg.drop_database(copy)
        pg.drop_database(db)


def test_a_killed_restores_complete_database_without_tables_is_kept(
    sandbox: Sandbox, pg_server: PgServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A restore --to-database killed once its pg_restore had committed: whether it committed was
    told by tables written since pg_restore's start mark. A database holding a schema of functions
    (or types) and no table looked never committed, and the next restore dropped it complete, with
    what the user had added to it since. The run created that database empty from template0:
    anything in it now (an object of a user oid) was written by its pg_restore or by someone since,
    so it stays."""
    pg = pg_server
    db = pg.create_database("notabsrc")
    copy = f"notabcopy_{db[-8:]}"
    pg.sql(db, "CREATE TABLE t (id int)")
    env, _ = _backed_up(sandbox, pg, db)
    monkeypatch.setenv("PHX_CACHE_DIR", env["PHX_CACHE_DIR"])
    pg.sql("postgres", f'CREATE DATABASE "{copy}" TEMPLATE template0')  # as the killed restore did
    mark, oid = pg.query(
        "postgres", "SELECT txid_current(), (SELECT oid FROM pg_database WHERE datname = %s)", (copy,)
    )[0]
    journal = _killed_runs_journal(
        pg,
        [
            {"creating": copy},
            {"created": copy, "oid": oid},
            {"restoring": mark, "database": copy, "databaseOid": oid},
        ],
    )
    # What its pg_restore committed, or the user wrote since: no table.
    pg.sql(copy, "CREATE SCHEMA app; CREATE FUNCTION app.answer() RETURNS int LANGUAGE sql AS 'SELECT 42'")
    try:
        out = run_phx_here(["restore", "--latest", "--databases-only", "--to-database", copy], env, code=2)
        text = out.out + out.err
        assert "pg_restore committed" in text and f'DROP DATABASE "{copy}";' in text, text
        assert pg.query(copy, "SELECT app.answer()") == [(42,)]
        assert not journal.exists()  # complete: its roles are the restored database's
    finally:
        pg.drop_database(copy)
        pg.drop_database(db)


def test_a_killed_restore_in_place_that_committed_only_functions_keeps_its_roles(
    sandbox: Sandbox, pg_server: PgServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A restore in place killed once its pg_restore had committed a database of functions (no
    table): whether it committed was told by tables written since the mark, so the next restore
    took it as never committed and dropped the roles it had created, such as the LOGIN role the
    applications connect as. Any object written since the mark (a function too) says so now."""
    pg = pg_server
    db = pg.create_database("fnsrc")
    killed = pg.create_database("fnonly")  # the killed restore's database
    role = f"fn{db[-8:]}"
    pg.sql(db, "CREATE TABLE t (id int)")
    env, _ = _backed_up(sandbox, pg, db)
    monkeypatch.setenv("PHX_CACHE_DIR", env["PHX_CACHE_DIR"])
    pg.sql("postgres", f"CREATE ROLE {role} LOGIN")
    oid = pg.query("postgres", "SELECT oid FROM pg_roles WHERE rolname = %s", (role,))[0][0]
    mark, db_oid = pg.query(
        "postgres", "SELECT txid_current(), (SELECT oid FROM pg_database WHERE datname = %s)", (killed,)
    )[0]
    journal = _killed_runs_journal(
        pg,
        [
            {"role": role, "oid": oid},
            {"memberships": []},
            {"restoring": mark, "database": killed, "databaseOid": db_oid},
        ],
    )
    pg.sql(killed, "CREATE FUNCTION answer() RETURNS int LANGUAGE sql AS 'SELECT 42'")  # pg_restore committed
    try:
        out = run_phx_here(["restore", "--latest", "--databases-only", "--yes", "--no-safety-snapshot"], env).out
        assert pg.query("postgres", "SELECT count(*) FROM pg_roles WHERE rolname = %s", (role,)) == [(1,)], out
        assert not journal.exists()  # handled: the roles are the restored database's
    finally:
        pg.drop_database(killed)
        pg.drop_database(db)
        pg.sql("postgres", f"DROP ROLE IF EXISTS {role}")
