"""`phx diff ID1 ID2 [--rows]` between two snapshots of the generated workspace around one
simulated day: the files that changed with their sizes, and per table the rows added, removed and
changed by primary key — checked against what the day did and against an independent comparison
of the two stores."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

from e2e_support import Sandbox, assert_error

from phoenix_backup.sample import day_date, simulate_day

TABLE_KEYS = {
    "home/.argentos/memory.db": {
        "categories": "id",
        "memory_items": "id",
        "item_categories": "item_id, category_id",
        "entities": "id",
        "relations": "id",
        "reflections": "id",
        "lessons": "id",
    },
    "home/.argentos/observations.db": {"sessions": "id", "observations": "id"},
    "home/.argentos/data/dashboard.db": {"projects": "id", "tasks": "id"},
}


def snapshot_rows(path: Path, table: str, key: str) -> dict[tuple[Any, ...], tuple[Any, ...]]:
    con = sqlite3.connect(path)
    try:
        n = key.count(",") + 1
        return {tuple(r[:n]): tuple(r) for r in con.execute(f"SELECT {key}, * FROM {table}")}
    finally:
        con.close()


def copy_db(src: Path, dest: Path) -> Path:
    a, b = sqlite3.connect(src), sqlite3.connect(dest)
    a.backup(b)
    a.close()
    b.close()
    return dest


def test_diff_rows_names_changed_tables_with_correct_counts(sandbox: Sandbox, tmp_path: Path) -> None:
    sb = sandbox
    before = {lg: copy_db(sb.db_path(lg), tmp_path / f"before-{i}.db") for i, lg in enumerate(TABLE_KEYS)}
    first = sb.backup("--time", "2026-10-01T06:00:00+00:00")
    day = simulate_day(sb.layout, 0, seed=7)
    (sb.workspace / "TOOLS.md").unlink()
    second = sb.backup("--time", "2026-10-02T06:00:00+00:00")

    # Files only.
    doc = sb.phx("diff", first["id"], second["id"], "--json").json()
    assert doc["from"]["id"] == first["id"] and doc["to"]["id"] == second["id"] and doc["rows"] is False
    added = {f["path"]: f for f in doc["files"]["added"]}
    changed = {f["path"]: f for f in doc["files"]["changed"]}
    removed = {f["path"]: f for f in doc["files"]["removed"]}
    note = f"workspace/memory/{day_date(0)}.md"
    assert set(added) == {note}
    assert added[note]["newSize"] == (sb.workspace / "memory" / f"{day_date(0)}.md").stat().st_size
    assert set(removed) == {"workspace/TOOLS.md"} and removed["workspace/TOOLS.md"]["newSize"] == 0
    assert {"workspace/MEMORY.md", "workspace/.argent-alignment-integrity.json", *TABLE_KEYS} == set(changed)
    assert changed["workspace/MEMORY.md"]["newSize"] == (sb.workspace / "MEMORY.md").stat().st_size
    assert doc["databases"] == []

    # With rows: every table, with counts equal to an independent comparison of the two stores.
    doc = sb.phx("diff", first["name"], second["name"], "--rows", "--json").json()
    dbs = {d["path"]: d for d in doc["databases"]}
    assert set(dbs) == set(TABLE_KEYS)
    for logical, tables in TABLE_KEYS.items():
        got = dbs[logical]["tables"]
        assert set(got) == set(tables), logical
        for table, key in tables.items():
            old = snapshot_rows(before[logical], table, key)
            new = snapshot_rows(sb.db_path(logical), table, key)
            expected = {
                "rowsBefore": len(old),
                "rowsAfter": len(new),
                "added": len(new.keys() - old.keys()),
                "removed": len(old.keys() - new.keys()),
                "changed": sum(1 for k in old.keys() & new.keys() if old[k] != new[k]),
                "byKey": True,
            }
            assert got[table] == expected, (logical, table)
    memories = dbs["home/.argentos/memory.db"]["tables"]["memory_items"]
    assert (memories["added"], memories["removed"], memories["changed"]) == (
        day.memories_added,
        day.memories_deleted,
        day.memories_updated,
    )
    assert dbs["home/.argentos/observations.db"]["tables"]["observations"]["added"] == day.observations_added
    untouched = [
        t
        for t, v in dbs["home/.argentos/memory.db"]["tables"].items()
        if not (v["added"] or v["removed"] or v["changed"])
    ]
    assert {"categories", "entities", "relations"} <= set(untouched)
    summary = f"+{day.memories_added} memories, −{day.memories_deleted}, {day.memories_updated} changed"
    assert summary in doc["summary"]
    assert f"+{day.observations_added} observations" in doc["summary"]

    # The plain text names the changed tables and ends with the one-line summary.
    text = sb.phx("diff", first["id"][:8], second["id"][:8], "--rows").out
    names = {line.split()[0] for line in text.splitlines() if line.startswith("  ") and line.strip()}
    assert {"memory_items", "item_categories", "observations", "tasks"} <= names
    assert not names & {"categories", "entities", "relations"}  # unchanged tables are not listed
    assert text.splitlines()[-1] == f"summary: {doc['summary']}"
    assert "workspace/TOOLS.md" in text and "removed" in text


def test_diff_of_a_snapshot_with_itself_and_unknown_ids(backed_up: Sandbox) -> None:
    snap = backed_up.snapshots()[0]
    doc = backed_up.phx("diff", snap["id"], snap["name"], "--rows", "--json").json()
    assert doc["counts"] == {"added": 0, "removed": 0, "changed": 0} and doc["databases"] == []
    assert doc["summary"] == "no file changed; no row changed"
    res = backed_up.phx("diff", snap["id"], "2001-01-01-00-00", check=2)
    assert_error(res, 2, "2001-01-01-00-00", "phx list")
