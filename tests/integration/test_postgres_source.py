"""The PostgreSQL source against a real server: connection settings, finding a pg_dump that is new
enough, and a dump whose manifest row counts are exactly the rows in it while the agent writes."""

from __future__ import annotations

import glob
import subprocess
import threading
from pathlib import Path
from typing import Any

import pytest

from phoenix_backup.config.model import PostgresDb
from phoenix_backup.errors import SourceError, ToolMissing
from phoenix_backup.sources import postgres as pg


def _entry(server: Any, database: str, **kw: Any) -> PostgresDb:
    base: dict[str, Any] = {
        "name": "main",
        "host": server.host,
        "port": server.port,
        "database": database,
        "user": "postgres",
        "password_env": "PGPW_TEST",
        "pg_dump": server.tool("pg_dump"),
    }
    base.update(kw)
    return PostgresDb(**base)


def test_connection_keeps_the_password_out_of_the_command_line(pg_server: Any) -> None:
    conn = pg.connection_for(_entry(pg_server, "postgres"), {"PGPW_TEST": pg_server.password})
    assert pg_server.password not in conn.conninfo
    assert conn.tool_env()["PGPASSWORD"] == pg_server.password
    with conn.connect() as con:
        assert pg.server_version(con)[1] >= 180000
    dsn = f"postgresql://postgres:{pg_server.password}@{pg_server.host}:{pg_server.port}/postgres"
    from_dsn = pg.connection_for(PostgresDb(name="d", dsn=dsn), {})
    assert pg_server.password not in from_dsn.conninfo and from_dsn.password == pg_server.password
    with pytest.raises(SourceError, match=r"\$PGPW_TEST, which is not set"):
        pg.connection_for(_entry(pg_server, "postgres"), {})


def test_pg_dump_must_exist_and_be_new_enough(pg_server: Any) -> None:
    with pytest.raises(ToolMissing, match=r"/nope/pg_dump: No such file or directory.*pgDump"):
        pg.find_pg_tool("pg_dump", "main", (18,), {"PATH": "/usr/bin"}, Path("/nope/pg_dump"))
    tool = pg.find_pg_tool("pg_dump", "main", (18,), {"PATH": str(pg_server.bin)}, None)
    assert tool.path == pg_server.tool("pg_dump") and tool.major >= (18,)
    older = [p for p in glob.glob("/usr/lib/postgresql/*/bin/pg_dump") if int(p.split("/")[4]) < 18]
    if older:
        with pytest.raises(ToolMissing, match=r"older than the server .*PostgreSQL 18"):
            pg.find_pg_tool("pg_dump", "main", (18,), {"PATH": "/usr/bin:/bin"}, Path(older[0]))


def test_manifest_counts_are_the_rows_in_the_dump_while_the_agent_writes(pg_server: Any) -> None:
    db = pg_server.create_database("live")
    pg_server.sql(db, "CREATE TABLE notes (id bigserial PRIMARY KEY, body text)")
    pg_server.sql(db, "INSERT INTO notes (body) SELECT repeat('x', 200) FROM generate_series(1, 20000)")
    stop = threading.Event()

    def write() -> None:
        with pg_server.connect(db) as con:
            while not stop.is_set():
                con.execute("INSERT INTO notes (body) VALUES ('written during the dump')")

    writer = threading.Thread(target=write)
    writer.start()
    try:
        with pg.PostgresDump(_entry(pg_server, db), {"PGPW_TEST": pg_server.password}) as src:
            streams = src.streams()
            dump = next(streams)
            data = dump.reader.read()
            dump.finish()
            rest = {s.name: s.reader.read() for s in streams}
            summary = src.summary
    finally:
        stop.set()
        writer.join()
    assert summary is not None and set(rest) == {"globals.sql", "manifest.json"}
    copy = pg_server.create_database("copy")
    restored = subprocess.run(
        [str(pg_server.tool("pg_restore")), "--dbname", pg_server.dsn(copy)], input=data, capture_output=True
    )
    assert restored.returncode == 0, restored.stderr
    (rows,) = pg_server.query(copy, "SELECT count(*) FROM notes")[0]
    assert summary.tables == {"public.notes": rows}
    assert rows >= 20000
    pg_server.drop_database(copy)
    pg_server.drop_database(db)
