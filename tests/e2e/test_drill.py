"""`phx drill`: restore into scratch space and prove it.

- A good snapshot passes: every file's SHA-256, every database's integrity_check, FTS5
  integrity-check and row counts; Markdown and JSON reports are written; the scratch space is gone.
- Damage is named: a byte flipped inside the stored blob of a file, or of a database's stored copy
  (repository-level damage: the pack's bytes on disk), fails the drill naming that path and pack.
- A database whose *content* is broken while its blob is intact (an FTS5 index out of step with
  its external content table, backed up as it is) fails naming the database and the FTS5 table.
- Row counts are compared with the snapshot's manifest: a snapshot object whose recorded count
  disagrees with the data (crafted through the Python API, as a buggy or tampered backup would
  leave it) fails naming the table.
"""

from __future__ import annotations

import dataclasses
import json
import sqlite3
from pathlib import Path
from typing import Any

from e2e_support import DATABASES, HOME_CONFIG_FILES, Sandbox, assert_error, flip_byte
from killpoint import run_killed

from phoenix_backup.config import load_config
from phoenix_backup.ops.context import Environment, open_repository
from phoenix_backup.repo.pack import pack_name
from phoenix_backup.repo.repository import Repository
from phoenix_backup.repo.walker import find_node

MEMORY_DB = "home/.argentos/memory.db"


def open_repo(sb: Sandbox) -> Repository:
    repo = open_repository(load_config(sb.config_path, sb.env), Environment(env=sb.env))
    repo.load_index()
    return repo


def flip_inside_blob_of(sb: Sandbox, logical: str) -> str:
    """Flip one byte in the middle of the stored (sealed) first blob of `logical`; return its pack."""
    repo = open_repo(sb)
    snap = repo.find_snapshot("latest")
    node = find_node(repo, snap, logical)
    assert node is not None and node.content, f"{logical} has no content in the snapshot"
    loc = repo.index.get(node.content[0].blob)
    assert loc is not None
    name = pack_name(loc.pack_id)
    flip_byte(sb.repo / name, loc.offset + loc.stored // 2)
    return name


def run_drill(sb: Sandbox, scratch: Path, *args: str, check: int | bool = True) -> dict[str, Any]:
    scratch.mkdir(exist_ok=True)
    res = sb.phx("drill", "--json", "--scratch", scratch, *args, check=check)
    doc: dict[str, Any] = res.json()
    assert list(scratch.iterdir()) == [], f"the scratch space was left behind: {list(scratch.iterdir())}"
    return doc


def test_drill_passes_on_a_good_snapshot(backed_up: Sandbox, tmp_path: Path) -> None:
    sb = backed_up
    doc = run_drill(sb, tmp_path / "scratch")
    assert doc["ok"] is True and doc["errors"] == [], doc["errors"]
    files = [k for k, v in sb.state()["workspace"].items() if v[0] == "file"]
    # The workspace's files and the config component's argent.json and backup.json below HOME.
    assert doc["checked"]["files"] == len(files) + len(HOME_CONFIG_FILES), doc["checked"]
    assert doc["checked"]["databases"] == len(DATABASES)
    assert doc["checked"]["fts5"] == 3, "each sample database has one FTS5 table"
    by_path = {d["path"]: d for d in doc["databases"]}
    assert sorted(by_path) == sorted(DATABASES)
    for logical, db in by_path.items():
        assert db["ok"] and db["integrity"] == "ok", db
        assert all(status == "ok" for status in db["fts5"].values()), db["fts5"]
        live = sqlite3.connect(sb.db_path(logical))
        try:
            for table, counts in db["tables"].items():
                rows = live.execute(f'SELECT COUNT(*) FROM "{table}"').fetchone()[0]
                assert counts == {"recorded": rows, "restored": rows}, (logical, table, counts, rows)
        finally:
            live.close()

    # The reports, Markdown and JSON, in ~/.argentos/backup/drills/.
    md, js = Path(doc["report"]["markdown"]), Path(doc["report"]["json"])
    assert md.parent == sb.home / ".argentos" / "backup" / "drills" and md.is_file() and js.is_file()
    assert json.loads(js.read_text())["ok"] is True
    text = md.read_text()
    assert text.startswith("# Phoenix restore drill: PASSED"), text[:200]
    for logical in DATABASES:
        assert logical in text

    # Plain text: one line per database, and the verdict.
    out = sb.phx("drill", "--scratch", tmp_path / "scratch").out
    assert "drill passed" in out and all(f"✓ {logical}: integrity ok" in out for logical in DATABASES), out


def test_the_next_drill_removes_a_killed_drills_scratch_folder(backed_up: Sandbox, tmp_path: Path) -> None:
    """Before, a drill killed while it restored left its scratch folder (`phx-drill-…`: plain copies
    of the snapshot's files and databases) in the temporary folder for good; the next drill removes
    it now, as its process is provably gone, and passes."""
    sb = backed_up
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    env = sb.env_with(TMPDIR=str(scratch), PHX_KILL_AT="5", PHX_KILL_MATCH="fsync(*/phx-drill-*")
    kind, _n, call = run_killed(["drill"], env, tmp_path / "report")
    assert kind == "killed", "the drill was not killed"
    assert len(list(scratch.iterdir())) == 1, f"no scratch folder after the kill at {call}"
    res = sb.phx("drill", "--json", env=sb.env_with(TMPDIR=str(scratch)))
    assert res.json()["ok"] is True
    assert list(scratch.iterdir()) == [], f"the killed drill (at {call}) left {list(scratch.iterdir())}"


def test_drill_names_the_file_when_a_byte_of_its_data_pack_is_flipped(backed_up: Sandbox, tmp_path: Path) -> None:
    sb = backed_up
    pack = flip_inside_blob_of(sb, "workspace/MEMORY.md")
    doc = run_drill(sb, tmp_path / "scratch", check=1)
    assert doc["ok"] is False
    named = [e for e in doc["errors"] if e["path"] == "workspace/MEMORY.md"]
    assert named, f"no error names workspace/MEMORY.md: {doc['errors']}"
    assert named[0]["object"] == pack and named[0]["snapshot"] == sb.snapshots()[0]["id"], named
    # The rest was still restored and checked.
    assert doc["checked"]["files"] > 0 and doc["checked"]["databases"] == len(DATABASES), doc["checked"]
    assert json.loads(Path(doc["report"]["json"]).read_text())["ok"] is False
    assert "FAILED" in Path(doc["report"]["markdown"]).read_text().splitlines()[0]

    text = sb.phx("drill", "--scratch", tmp_path / "scratch", check=1).out
    assert "workspace/MEMORY.md" in text and "drill FAILED" in text, text


def test_drill_names_the_database_when_its_stored_copy_is_damaged(backed_up: Sandbox, tmp_path: Path) -> None:
    sb = backed_up
    pack = flip_inside_blob_of(sb, MEMORY_DB)
    doc = run_drill(sb, tmp_path / "scratch", check=1)
    named = [e for e in doc["errors"] if e["path"] == MEMORY_DB]
    assert named and named[0]["object"] == pack, f"no error names {MEMORY_DB} and {pack}: {doc['errors']}"
    assert "cannot be restored" in named[0]["message"], named


def test_drill_names_the_folder_whose_tree_is_damaged(backed_up: Sandbox, tmp_path: Path) -> None:
    sb = backed_up
    repo = open_repo(sb)
    node = find_node(repo, repo.find_snapshot("latest"), "workspace/memory")
    assert node is not None and node.subtree is not None
    loc = repo.index.get(node.subtree)
    assert loc is not None
    flip_byte(sb.repo / pack_name(loc.pack_id), loc.offset + loc.stored // 2)
    doc = run_drill(sb, tmp_path / "scratch", check=1)
    named = [e for e in doc["errors"] if e["path"] == "workspace/memory"]
    assert named and named[0]["object"] == pack_name(loc.pack_id), doc["errors"]
    assert doc["checked"]["files"] > 0, "what the damage does not touch is still restored and checked"


def test_drill_names_an_fts5_table_out_of_step_with_its_content(sandbox: Sandbox, tmp_path: Path) -> None:
    """The blob is intact; the database content is wrong: memory_fts (an external-content FTS5
    table) no longer matches memory_items, as when a trigger was lost. PRAGMA integrity_check of
    SQLite before 3.44 does not look inside FTS5; the drill's `integrity-check` does."""
    sb = sandbox
    con = sqlite3.connect(sb.db_path(MEMORY_DB))
    con.executescript(
        "DROP TRIGGER memory_items_au;"
        "UPDATE memory_items SET content = 'rewritten without telling the index' "
        "WHERE rowid IN (SELECT rowid FROM memory_items LIMIT 3);"
    )
    con.close()
    backup = sb.phx("backup", "--json", check=None)
    assert backup.code in (0, 3), backup  # 3 where this SQLite's integrity_check already sees it
    doc = run_drill(sb, tmp_path / "scratch", check=1)
    named = [e for e in doc["errors"] if e["path"] == MEMORY_DB]
    assert named, f"no error names {MEMORY_DB}: {doc['errors']}"
    if backup.code == 0:
        fts = [e for e in named if e["object"] == "fts5:memory_fts"]
        assert fts and "integrity-check" in fts[0]["message"], named
    others = [e for e in doc["errors"] if e["path"] != MEMORY_DB]
    assert others == [], f"only memory.db is damaged: {others}"


def test_drill_compares_row_counts_with_the_manifest(backed_up: Sandbox, tmp_path: Path) -> None:
    sb = backed_up
    repo = open_repo(sb)
    snap = repo.find_snapshot("latest")
    info = next(d for d in snap.databases if d.path == MEMORY_DB)
    recorded = info.tables["memory_items"]
    wrong = dataclasses.replace(info, tables={**info.tables, "memory_items": recorded + 1})
    crafted = dataclasses.replace(
        snap, databases=tuple(wrong if d.path == MEMORY_DB else d for d in snap.databases), name="crafted"
    )
    crafted_id = repo.save_snapshot(crafted)

    doc = run_drill(sb, tmp_path / "scratch", "--backup", crafted_id[:12], check=1)
    assert doc["snapshot"] == crafted_id
    assert len(doc["errors"]) == 1, doc["errors"]
    error = doc["errors"][0]
    assert error["path"] == MEMORY_DB and error["object"] == "table:memory_items", error
    assert f"{recorded} rows, the snapshot recorded {recorded + 1}" in error["message"], error
    table = next(d for d in doc["databases"] if d["path"] == MEMORY_DB)["tables"]["memory_items"]
    assert table == {"recorded": recorded + 1, "restored": recorded}

    # The original snapshot still passes.
    assert run_drill(sb, tmp_path / "scratch", "--backup", snap.id)["ok"] is True


def test_drill_of_an_unknown_snapshot_is_a_usage_error(backed_up: Sandbox, tmp_path: Path) -> None:
    res = backed_up.phx("drill", "--backup", "2001-01-01-00-00", check=None)
    assert_error(res, 2, "no snapshot named")
    res = backed_up.phx("drill", "--target", "s3", check=None)
    assert_error(res, 2, "s3")
