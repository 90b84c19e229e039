"""The sample workspace generator and the simulated agent days."""

from __future__ import annotations

import hashlib
import json
import math
import shutil
import sqlite3
from array import array
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path

import pytest

from phoenix_backup.sample import (
    ALIGNMENT_FILES,
    ALIGNMENT_MANIFEST,
    EMBEDDING_BYTES,
    SIZES,
    DayStats,
    SampleLayout,
    generate_workspace,
    resolve_size,
    simulate_day,
    write_alignment_manifest,
)

SIZE = 2_000_000
FTS_TABLES = {
    "memory.db": ("memory_fts", "Lisbon OR Phoenix OR backup"),
    "observations.db": ("observations_fts", "called OR timeout OR Phoenix"),
    "dashboard.db": ("tasks_fts", "review OR phoenix"),
}
EMBEDDED = {
    "memory.db": ("memory_items", "entities"),
    "observations.db": ("observations",),
}


def _connect(path: Path) -> sqlite3.Connection:
    return sqlite3.connect(path)


def _real_tables(conn: sqlite3.Connection) -> list[str]:
    """Ordinary tables, skipping FTS5 virtual tables and their shadow tables."""
    virtual = [
        name
        for (name,) in conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND sql LIKE 'CREATE VIRTUAL%'"
        )
    ]
    return sorted(
        name
        for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
        if name not in virtual and not any(name.startswith(v + "_") for v in virtual)
    )


def _rows(layout: SampleLayout) -> dict[str, list[tuple[object, ...]]]:
    out: dict[str, list[tuple[object, ...]]] = {}
    for db in layout.databases:
        with closing(_connect(db)) as conn:
            for table in _real_tables(conn):
                out[f"{db.name}:{table}"] = conn.execute(f"SELECT * FROM {table} ORDER BY rowid").fetchall()
    return out


def _files(layout: SampleLayout) -> dict[str, bytes]:
    databases = {db.name for db in layout.databases}
    out: dict[str, bytes] = {}
    for base in (layout.workspace, layout.argentos):
        for path in sorted(base.rglob("*")):
            if path.is_file() and path.name.split("-")[0] not in databases:
                out[path.relative_to(layout.root).as_posix()] = path.read_bytes()
    return out


def _count(db: Path, table: str) -> int:
    with closing(_connect(db)) as conn:
        (n,) = conn.execute(f"SELECT count(*) FROM {table}").fetchone()
    return int(n)


@pytest.fixture(scope="module")
def sample(tmp_path_factory: pytest.TempPathFactory) -> SampleLayout:
    """One read-only sample shared by the tests that do not modify it."""
    return generate_workspace(tmp_path_factory.mktemp("sample"), size=SIZE, seed=42)


@pytest.fixture
def fresh(tmp_path: Path) -> Iterator[SampleLayout]:
    layout = generate_workspace(tmp_path / "s", size=SIZE, seed=42)
    yield layout
    shutil.rmtree(tmp_path / "s", ignore_errors=True)


# --------------------------------------------------------------------------------------------
# Generation
# --------------------------------------------------------------------------------------------


def test_layout(sample: SampleLayout) -> None:
    root = sample.root
    assert sample.workspace == root / "workspace"
    assert sample.argentos == root / "home" / ".argentos"
    assert sample.databases == (
        sample.argentos / "memory.db",
        sample.argentos / "observations.db",
        sample.argentos / "data" / "dashboard.db",
    )
    for name in (*ALIGNMENT_FILES, ALIGNMENT_MANIFEST):
        assert (sample.workspace / name).is_file(), name
    notes = sorted((sample.workspace / "memory").glob("2026-*.md"))
    assert len(notes) >= 14
    assert all(1000 <= n.stat().st_size <= 11000 for n in notes)
    assert list((sample.workspace / "config").glob("*.json"))
    assert list((sample.workspace / "scripts").glob("*.sh"))
    assert list((sample.workspace / "scripts").glob("*.py"))
    # Noise the default excludes drop.
    assert (sample.workspace / "node_modules").is_dir()
    assert any((sample.workspace / "node_modules").rglob("*.js"))
    for noise in ("debug.log", ".DS_Store", "scratch.tmp"):
        assert (sample.workspace / noise).is_file()
    config = json.loads((sample.argentos / "argent.json").read_text())
    assert config["providers"]["anthropic"]["apiKey"].startswith("sk-test-")


def test_same_seed_same_content(tmp_path: Path, sample: SampleLayout) -> None:
    again = generate_workspace(tmp_path / "again", size=SIZE, seed=42)
    assert _files(again) == _files(sample)
    assert _rows(again) == _rows(sample)


def test_other_seed_other_content(tmp_path: Path, sample: SampleLayout) -> None:
    other = generate_workspace(tmp_path / "other", size=SIZE, seed=7)
    assert (other.workspace / "SOUL.md").read_bytes() != (sample.workspace / "SOUL.md").read_bytes()
    assert _rows(other)["memory.db:memory_items"] != _rows(sample)["memory.db:memory_items"]


def test_databases_are_wal_and_intact(sample: SampleLayout) -> None:
    for db in sample.databases:
        with closing(_connect(db)) as conn:
            assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
            assert conn.execute("PRAGMA page_size").fetchone()[0] == 4096
            assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]


def test_expected_tables(sample: SampleLayout) -> None:
    with closing(_connect(sample.argentos / "memory.db")) as conn:
        tables = set(_real_tables(conn))
    assert {
        "memory_items",
        "categories",
        "item_categories",
        "entities",
        "relations",
        "reflections",
        "lessons",
    } <= tables
    with closing(_connect(sample.argentos / "observations.db")) as conn:
        assert "observations" in _real_tables(conn)
    with closing(_connect(sample.argentos / "data" / "dashboard.db")) as conn:
        assert {"tasks", "projects"} <= set(_real_tables(conn))
    assert _count(sample.argentos / "memory.db", "memory_items") > 100
    assert _count(sample.argentos / "observations.db", "observations") > 50


def test_embeddings_are_finite_float32(sample: SampleLayout) -> None:
    for db in sample.databases:
        for table in EMBEDDED.get(db.name, ()):
            with closing(_connect(db)) as conn:
                blobs = [b for (b,) in conn.execute(f"SELECT embedding FROM {table} LIMIT 200")]
            assert blobs, table
            for blob in blobs:
                assert isinstance(blob, bytes) and len(blob) == EMBEDDING_BYTES
                values = array("f")
                values.frombytes(blob)
                assert all(math.isfinite(v) and 1e-6 < abs(v) < 1.0 for v in values)
                norm = math.sqrt(sum(v * v for v in values))
                assert 0.7 < norm < 1.4
            assert len(set(blobs)) == len(blobs)


def _check_fts(layout: SampleLayout) -> None:
    for db in layout.databases:
        table, query = FTS_TABLES[db.name]
        with closing(_connect(db)) as conn:
            hits = conn.execute(f"SELECT count(*) FROM {table} WHERE {table} MATCH ?", (query,)).fetchone()[0]
            assert hits > 0, (db.name, query)
            conn.execute(f"INSERT INTO {table}({table}) VALUES ('integrity-check')")


def test_fts_tables_work(sample: SampleLayout) -> None:
    _check_fts(sample)
    with closing(_connect(sample.argentos / "memory.db")) as conn:
        (content,) = conn.execute(
            "SELECT m.content FROM memory_fts JOIN memory_items m ON m.rowid = memory_fts.rowid "
            "WHERE memory_fts MATCH 'Lisbon' LIMIT 1"
        ).fetchone()
    assert "Lisbon" in content


def test_alignment_manifest_matches(sample: SampleLayout) -> None:
    _check_manifest(sample.workspace)


def _check_manifest(workspace: Path) -> None:
    manifest = json.loads((workspace / ALIGNMENT_MANIFEST).read_text())
    assert manifest["version"] == 1
    assert manifest["algorithm"] == "sha256"
    assert set(manifest["files"]) == set(ALIGNMENT_FILES)
    for name, digest in manifest["files"].items():
        assert hashlib.sha256((workspace / name).read_bytes()).hexdigest() == digest, name


def test_write_alignment_manifest_recomputes(fresh: SampleLayout) -> None:
    soul = fresh.workspace / "SOUL.md"
    soul.write_text(soul.read_text() + "\nA new value.\n")
    with pytest.raises(AssertionError):
        _check_manifest(fresh.workspace)
    write_alignment_manifest(fresh.workspace)
    _check_manifest(fresh.workspace)


def test_size_names_and_totals(tmp_path: Path) -> None:
    assert resolve_size("small") == SIZES["small"]
    assert resolve_size(1234) == 1234
    assert SIZES["tiny"] < SIZES["small"] < SIZES["medium"] < SIZES["large"]
    with pytest.raises(ValueError):
        resolve_size("huge")
    with pytest.raises(ValueError):
        resolve_size(0)
    layout = generate_workspace(tmp_path / "tiny", size="tiny")
    total = sum(
        p.stat().st_size for base in (layout.workspace, layout.argentos) for p in base.rglob("*") if p.is_file()
    )
    assert 0.75 * SIZES["tiny"] < total < 1.25 * SIZES["tiny"]
    db_share = layout.databases[0].stat().st_size / total
    assert 0.45 < db_share < 0.75


def test_existing_sample_is_refused_unless_overwrite(fresh: SampleLayout) -> None:
    with pytest.raises(FileExistsError):
        generate_workspace(fresh.root, size=SIZE)
    (fresh.workspace / "extra.md").write_text("left over\n")
    layout = generate_workspace(fresh.root, size=SIZE, overwrite=True)
    assert not (layout.workspace / "extra.md").exists()
    assert _count(layout.argentos / "memory.db", "memory_items") > 0


# --------------------------------------------------------------------------------------------
# Simulated days
# --------------------------------------------------------------------------------------------


def test_a_day_simulated_twice_is_one_clear_error_that_changes_nothing(fresh: SampleLayout) -> None:
    """`simulate_day` run again for a day it already applied stopped with sqlite3's bare "UNIQUE
    constraint failed: memory_items.id"; now a ValueError names the day and the way out, and no
    store changed (the memories' transaction, the first, rolled back)."""
    simulate_day(fresh, 0, seed=42)
    files = _files(fresh)
    stores = [(fresh.argentos / "observations.db", "observations"), (fresh.memory_db, "memory_items")]
    counts = [_count(db, table) for db, table in stores]
    with pytest.raises(ValueError, match=r"day 0 \(2026-10-01\) was already simulated .* nothing was changed"):
        simulate_day(fresh, 0, seed=42)
    assert _files(fresh) == files
    assert [_count(db, table) for db, table in stores] == counts


def test_simulate_day_changes_what_it_reports(fresh: SampleLayout) -> None:
    memory_db = fresh.argentos / "memory.db"
    observations_db = fresh.argentos / "observations.db"
    dashboard_db = fresh.argentos / "data" / "dashboard.db"
    items_before = _count(memory_db, "memory_items")
    observations_before = _count(observations_db, "observations")
    with closing(_connect(dashboard_db)) as conn:
        tasks_before = conn.execute("SELECT id, status FROM tasks ORDER BY id").fetchall()
    with closing(_connect(memory_db)) as conn:
        heat_before = dict(conn.execute("SELECT id, heat || '/' || access_count FROM memory_items"))
    memory_md = (fresh.workspace / "MEMORY.md").read_bytes()
    files_before = _files(fresh)

    stats = simulate_day(fresh, 0, seed=42)

    assert isinstance(stats, DayStats)
    assert stats.memories_added > 0 and stats.memories_updated > 0
    assert stats.memories_deleted > 0 and stats.observations_added > 0
    assert _count(memory_db, "memory_items") == (items_before + stats.memories_added - stats.memories_deleted)
    assert _count(observations_db, "observations") == (observations_before + stats.observations_added)
    with closing(_connect(memory_db)) as conn:
        heat_after = dict(conn.execute("SELECT id, heat || '/' || access_count FROM memory_items"))
    changed = sum(1 for k, v in heat_before.items() if k in heat_after and heat_after[k] != v)
    assert changed == stats.memories_updated
    assert len(set(heat_before) - set(heat_after)) == stats.memories_deleted
    assert len(set(heat_after) - set(heat_before)) == stats.memories_added
    touched = stats.memories_added + stats.memories_updated + stats.memories_deleted
    assert touched <= 0.05 * items_before  # tiny samples hit the per-day minimums

    with closing(_connect(dashboard_db)) as conn:
        tasks_after = conn.execute("SELECT id, status FROM tasks ORDER BY id").fetchall()
    assert len(tasks_after) > len(tasks_before)
    assert sum(a != b for a, b in zip(tasks_before, tasks_after, strict=False)) >= 1

    assert (fresh.workspace / "MEMORY.md").read_bytes() != memory_md
    assert "workspace/memory/2026-10-01.md" in stats.files_changed
    assert "workspace/memory/2026-10-01.md" not in files_before
    assert {
        "workspace/MEMORY.md",
        f"workspace/{ALIGNMENT_MANIFEST}",
        "home/.argentos/memory.db",
        "home/.argentos/observations.db",
        "home/.argentos/data/dashboard.db",
    } <= set(stats.files_changed)
    for rel in stats.files_changed:
        assert (fresh.root / rel).is_file()
    files_after = _files(fresh)
    changed_files = {k for k in files_after if files_before.get(k) != files_after[k]}
    assert changed_files == {p for p in stats.files_changed if p.startswith("workspace/")}

    _check_manifest(fresh.workspace)
    _check_fts(fresh)
    for db in fresh.databases:
        with closing(_connect(db)) as conn:
            assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
            assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]


def test_simulate_day_is_deterministic(tmp_path: Path) -> None:
    a = generate_workspace(tmp_path / "a", size=SIZE, seed=5)
    b = generate_workspace(tmp_path / "b", size=SIZE, seed=5)
    stats_a = [simulate_day(a, day, seed=5) for day in range(3)]
    stats_b = [simulate_day(b, day, seed=5) for day in range(3)]
    assert stats_a == stats_b
    assert _files(a) == _files(b)
    assert _rows(a) == _rows(b)
    assert len({s.files_changed for s in stats_a}) == 3  # one new note per day


def test_simulate_day_depends_on_day(tmp_path: Path) -> None:
    a = generate_workspace(tmp_path / "a", size=SIZE, seed=5)
    b = generate_workspace(tmp_path / "b", size=SIZE, seed=5)
    simulate_day(a, 3, seed=5)
    simulate_day(b, 4, seed=5)
    assert _rows(a)["memory.db:memory_items"] != _rows(b)["memory.db:memory_items"]


def test_memory_md_consolidates_over_many_days(fresh: SampleLayout) -> None:
    for day in range(15):
        simulate_day(fresh, day, seed=42)
    text = (fresh.workspace / "MEMORY.md").read_text()
    recent = text.split("## Recent", 1)[1]
    assert 0 < recent.count("\n- ") <= 30
    assert "_Last updated: 2026-10-15_" in text
    assert "2026-10-01:" in text.split("## Recent", 1)[0]  # promoted out of Recent
    _check_manifest(fresh.workspace)


def test_simulate_day_rejects_negative_day(sample: SampleLayout) -> None:
    with pytest.raises(ValueError):
        simulate_day(sample, -1)


def test_a_day_scaled_down_on_a_larger_sample_changes_as_many_rows(tmp_path: Path) -> None:
    """`bench/run.py --daily-change`: ten times the data with the smaller sample's daily change
    (issue 19's shape), where an unscaled day changes more rows on the larger sample."""
    small = generate_workspace(tmp_path / "small", size=2 * SIZE, seed=5)
    large = generate_workspace(tmp_path / "large", size=20 * SIZE, seed=5)
    usual = simulate_day(small, 0, seed=5)
    scaled = simulate_day(large, 0, seed=5, scale=0.1)
    unscaled = simulate_day(large, 1, seed=5)
    for name in ("memories_added", "memories_updated", "observations_added"):
        assert getattr(scaled, name) == getattr(usual, name), name
        assert getattr(unscaled, name) > 2 * getattr(usual, name), name
