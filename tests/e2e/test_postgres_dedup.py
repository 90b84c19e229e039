"""Day-to-day deduplication of PostgreSQL dumps: back up a 100,000-row table, change 1% of its
rows, back up again, and compare the bytes the second backup added with the dump's size.

The dump is `pg_dump -Fc -Z0` streamed through content-defined chunking, so only the chunks around
changed rows are new. An UPDATE moves a row to the end of its table (a new row version), so a
change costs about one chunk where the row was, plus the row itself at the end. The figures are
printed (run with `-s`) for the issue's closing note.
"""

from __future__ import annotations

import random
import re
import sys
from pathlib import Path

from e2e_support import Sandbox

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import services
from services import PgServer, postgres_entry

pg_server = services.pg_server  # the session's PostgreSQL server (a fixture)

ROWS = 100_000


def _dump_size(sandbox: Sandbox, env: dict[str, str], snapshot: str) -> int:
    out = sandbox.phx("ls", snapshot, "postgres/main/database.dump", env=env).out
    m = re.search(r"\s(\d+)\s+\S+\s+postgres/main/database\.dump", out)
    assert m, out
    return int(m.group(1))


def test_one_percent_changed_rows_add_a_small_part_of_the_dump(sandbox: Sandbox, pg_server: PgServer) -> None:
    pg = pg_server
    db = pg.create_database("dedup")
    pg.sql(
        db,
        f"""
        CREATE EXTENSION vector;
        CREATE TABLE memory_items (
            id bigint PRIMARY KEY, agent_id text NOT NULL, content text NOT NULL,
            importance real NOT NULL, embedding vector(32)
        ) WITH (autovacuum_enabled = off);
        INSERT INTO memory_items
        SELECT i, 'agent-' || (i % 3), md5(i::text) || ' remembers ' || repeat(md5((i * 7)::text), 6),
               (i % 100) / 100.0, (SELECT array_agg(sin(i * j)::real) FROM generate_series(1, 32) j)::vector
        FROM generate_series(1, {ROWS}) i;
        """,
    )
    sandbox.write_config(databases={"sqlite": [], "postgres": [postgres_entry(pg, db)]})
    env = sandbox.env_with(PHX_TEST_PGPASSWORD=pg.password)

    first = sandbox.phx("backup", "--json", env=env).json()
    size = _dump_size(sandbox, env, first["id"])
    pg_info = next(d for d in first["databases"] if d["path"] == "postgres/main")
    assert pg_info["tables"] == {"public.memory_items": ROWS}

    # 1% of the rows, the way an agent revises its most recent memories: one block of ids.
    pg.sql(
        db,
        "UPDATE memory_items SET importance = importance + 1, content = content || ' (revised)' "
        f"WHERE id > {ROWS // 2} AND id <= {ROWS // 2 + ROWS // 100}",
    )
    second = sandbox.phx("backup", "--json", env=env).json()
    # 1% of the rows spread at random over the table (access counters, importance decay).
    ids = random.Random(4).sample(range(1, ROWS + 1), ROWS // 100)
    pg.sql(db, f"UPDATE memory_items SET importance = importance + 1 WHERE id IN ({','.join(map(str, ids))})")
    third = sandbox.phx("backup", "--json", env=env).json()

    print(
        f"\ndedup figure: dump {size:,} bytes ({ROWS:,} rows); first backup added {first['added']:,}; "
        f"1% of rows changed in one block: added {second['added']:,} "
        f"({100 * second['added'] / size:.1f}% of the dump); "
        f"1% changed at random: added {third['added']:,} ({100 * third['added'] / size:.1f}%)"
    )
    assert second["added"] < 0.05 * size
    assert third["added"] < size
    pg.drop_database(db)
