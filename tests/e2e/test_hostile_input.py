"""Hostile repository input through the `phx` command (issue 14, point 8), and `phx import` of a
tampered export (point 7).

The attacker can write the storage of an unencrypted repository: the checksums are unkeyed and the
id key sits in the `none` key slot, so every forged object below passes as the repository's own.
Every command that reads one ends in one clean error naming it, in bounded time and memory, and
`verify` reports the bad snapshots and checks the others. On the code before issue 14 the DAG bomb
kept `ls`, `restore --dry-run` and `archive` running past 25 s, the 5,000-level tree raised
RecursionError, the bad fields raised OverflowError/ValueError tracebacks and the deflate bomb
inflated to hundreds of MB.
"""

from __future__ import annotations

import json
import os
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from e2e_support import PHX, Result, Sandbox, assert_error, assert_restored

from phoenix_backup.memory.checksums import write_checksums
from phoenix_backup.repo.crypto import Compression
from phoenix_backup.sample import generate_workspace
from phoenix_backup.sql import quote
from phoenix_backup.users import username

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from hostile import Forger, deflate_bomb, dir_node, extents, file_node

# The repositories the commands leave are the point, not the process: the sandboxes' helpers run phx
# in this process (tests/e2e/conftest.py).
pytestmark = pytest.mark.phx_in_process

MB = 1024 * 1024


@pytest.fixture(scope="module")
def hostile(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """One unencrypted repository: a real backup, then forged snapshots of every kind of attack."""
    root = tmp_path_factory.mktemp("hostile")
    sb = Sandbox(root, generate_workspace(root / "sample", size="tiny", seed=5), encryption=False)
    good = sb.backup()["id"]
    forger = Forger(sb.repo)

    def in_workspace(*nodes: dict[str, Any]) -> bytes:
        return forger.tree(dir_node("workspace", forger.tree(*nodes)))

    below = forger.tree(file_node("leaf.md"))
    for _ in range(33):  # 2^33 paths in 34 small trees
        below = forger.tree(dir_node("a", below), dir_node("b", below))
    ids = {"good": good, "bomb": forger.snapshot(in_workspace(dir_node("memory", below)), name="bomb")}
    below = forger.tree(file_node("deep.md"))
    for _ in range(5000):
        below = forger.tree(dir_node("d", below))
    ids["deep"] = forger.snapshot(in_workspace(dir_node("memory", below)), name="deep")
    for name, changes in {"uid": {"uid": -5}, "mtime": {"mtimeNs": 2**80}, "size": {"size": 2**50}}.items():
        ids[name] = forger.snapshot(in_workspace(forger.file_node("MEMORY.md", b"hello\n", **changes)), name=name)
    # A file whose one blob claims 10 bytes and inflates to 256 MiB.
    blob = b"\x5a" * 32
    forger.raw_blob(blob, deflate_bomb(10, 256 * MB), Compression.GZIP, 10)
    node = file_node("bomb.bin", b"0123456789", content=extents((blob, 0, 10)))
    ids["inflate"] = forger.snapshot(in_workspace(node), name="inflate")
    yield {"sb": sb, "ids": ids, "root": root}


def timed(sb: Sandbox, *args: str | Path, limit: float = 20) -> Result:
    started = time.monotonic()
    res = sb.phx(*args, check=None, timeout=120)
    elapsed = time.monotonic() - started
    assert elapsed < limit, f"phx {' '.join(map(str, args))} took {elapsed:.1f} s:\n{res}"
    return res


@pytest.mark.parametrize("attack", ["bomb", "deep"])
def test_every_command_refuses_a_tree_bomb_quickly(hostile: dict[str, Any], attack: str, tmp_path: Path) -> None:
    sb, sid = hostile["sb"], hostile["ids"][attack]
    needle = "paths a walk allows" if attack == "bomb" else "2,048 deep"
    for args in (
        ("ls", sid),
        ("restore", "--backup", sid, "--to", tmp_path / "out", "--dry-run"),
        ("restore", "--backup", sid, "--to", tmp_path / "out"),
        ("archive", sid, "--output", tmp_path / "a.zip"),
        ("diff", hostile["ids"]["good"], sid),
        ("export", "--format", "json", "--backup", sid, "--output", tmp_path / "export"),
    ):
        assert_error(timed(sb, *args), 1, needle, "phx forget")
    assert not (tmp_path / "out" / "workspace" / "memory").exists()
    assert not (tmp_path / "a.zip").exists()


@pytest.mark.parametrize(("attack", "field"), [("uid", "uid"), ("mtime", "mtimeNs"), ("size", "claims")])
def test_a_node_with_an_impossible_field_is_one_clean_error(
    hostile: dict[str, Any], attack: str, field: str, tmp_path: Path
) -> None:
    sb, sid = hostile["sb"], hostile["ids"][attack]
    for args in (
        ("ls", sid),
        ("dump", sid, "MEMORY.md"),
        ("restore", "--backup", sid, "--to", tmp_path / "out"),
        ("archive", sid, "--output", tmp_path / "a.tar.gz"),
    ):
        assert_error(timed(sb, *args), 1, "tree", field)
    assert not (tmp_path / "out" / "workspace" / "MEMORY.md").exists()


def test_a_blob_inflating_past_its_claim_is_refused_in_little_memory(hostile: dict[str, Any], tmp_path: Path) -> None:
    sb, sid = hostile["sb"], hostile["ids"]["inflate"]
    # A wrapper whose only child is `phx`: its RUSAGE_CHILDREN peak is phx's own.
    measure = "import resource, subprocess, sys; r = subprocess.run(sys.argv[1:]); " + (
        "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, file=sys.stderr); sys.exit(r.returncode)"
    )
    proc = subprocess.run(
        [sys.executable, "-c", measure, PHX, "dump", sid, "bomb.bin"],
        env=sb.env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=120,
    )
    *messages, peak_kib = proc.stderr.splitlines()
    res = Result(proc.returncode, proc.stdout, "\n".join(messages), ["phx", "dump", sid, "bomb.bin"])
    assert_error(res, 1, "inflates to more than the 10 bytes")
    assert int(peak_kib) * 1024 < 150 * MB, f"phx dump peaked at {int(peak_kib) // 1024} MiB"
    restore = timed(sb, "restore", "--backup", sid, "--to", tmp_path / "out")
    assert_error(restore, 1, "inflates to more than the 10 bytes")


def test_verify_names_every_bad_snapshot_and_checks_the_good_one(hostile: dict[str, Any]) -> None:
    sb, ids = hostile["sb"], hostile["ids"]
    res = timed(sb, "verify", "--json", limit=60)
    assert res.code == 1, res
    doc = res.json()
    assert doc["checked"]["snapshots"] == len(ids)
    bad = {e["snapshot"] for e in doc["errors"]}
    assert bad == {ids[k] for k in ("bomb", "deep", "uid", "mtime", "size")}, doc["errors"]
    good = timed(sb, "verify", "--backup", ids["good"], "--read-data", "--json", limit=60)
    assert good.code == 0 and good.json()["ok"] is True, good


# ---------------------------------------------------------------------------------------------
# phx import (point 7)


def test_import_writes_only_into_the_configured_stores(sandbox: Sandbox, tmp_path: Path) -> None:
    sb = sandbox
    export = tmp_path / "export"
    sb.phx_here("export", "--format", "json", "--output", export)
    # The attacker moves a store to a path of their choosing and recomputes the unkeyed checksums.
    meta_path = export / "metadata.json"
    meta = json.loads(meta_path.read_text())
    victim = tmp_path / "outside" / "planted.db"
    meta["databases"][0]["path"] = "root" + str(victim)
    meta_path.write_text(json.dumps(meta))
    write_checksums(export)
    res = sb.phx("import", export, "--force", check=None)
    assert_error(res, 2, "root" + str(victim), "not one of the SQLite stores", "--to DIR")
    assert not victim.exists() and not victim.parent.exists()
    # With --to DIR the same export lands below DIR, and nowhere else.
    dest = tmp_path / "dest"
    sb.phx_here("import", export, "--force", "--to", dest)
    assert (dest / "root" / str(victim).lstrip("/")).is_file()
    assert not victim.exists()


@pytest.mark.parametrize("link", ["home", "home/.argentos"])
def test_import_to_a_folder_never_writes_through_a_link_in_it(sandbox: Sandbox, tmp_path: Path, link: str) -> None:
    # DIR may hold links: `restore --to DIR` writes a snapshot's symlinks as they were, and others
    # may be able to write there. A store path through one must not lead the import out of DIR.
    sb = sandbox
    export = tmp_path / "export"
    sb.phx_here("export", "--format", "json", "--output", export)
    store = json.loads((export / "metadata.json").read_text())["databases"][0]["path"]
    assert store.startswith("home/.argentos/"), store
    outside = tmp_path / "outside"
    outside.mkdir()
    dest = tmp_path / "dest"
    (dest / link).parent.mkdir(parents=True, exist_ok=True)
    (dest / link).symlink_to(outside)
    res = sb.phx("import", export, "--force", "--to", dest, check=None)
    assert_error(res, 1, link, "link")
    assert list(outside.iterdir()) == []


def test_a_lone_surrogate_in_a_snapshot_or_tree_is_one_clean_error(make_sandbox: Any, tmp_path: Path) -> None:
    # JSON's "\ud800" escape decodes to a character no terminal and no system call takes: `list`,
    # `ls`, `forget`, `restore`, `archive` and `drill` each ended in a UnicodeEncodeError traceback.
    sb = make_sandbox(encryption=False)
    good = sb.backup()["id"]
    forger = Forger(sb.repo)
    tree = forger.tree(forger.file_node("MEMORY.md", b"hello\n"))
    forger.snapshot(forger.tree(dir_node("workspace", tree)), name="host", host="h\ud800", tags=["t\ud800"])
    link = {"name": "link", "type": "symlink", "mode": 0o777, "mtimeNs": 0, "linkTarget": "a\ud800b"}
    sid = forger.snapshot(forger.tree(dir_node("workspace", forger.tree(link))), name="link")
    listed = sb.phx_here("list", "--json").json()
    assert {s["id"] for s in listed} == {good, sid}  # the snapshot with the bad host is left out
    sb.phx_here("forget", "--dry-run")
    for args in (
        ("ls", sid),
        ("restore", "--backup", sid, "--to", tmp_path / "out"),
        ("archive", sid, "--output", tmp_path / "a.tar.gz"),
        ("drill", "--backup", sid),
    ):
        res = timed(sb, *args)
        assert res.code != 0 and "Traceback" not in res.err, res


def test_an_export_with_a_lone_surrogate_is_imported_without_a_traceback(sandbox: Sandbox, tmp_path: Path) -> None:
    # A hostile export's names reach the terminal: a lone surrogate (JSON's "\ud800") in a table
    # name made `import` end in a UnicodeEncodeError traceback when it printed its table.
    sb = sandbox
    export = tmp_path / "export"
    sb.phx_here("export", "--format", "json", "--output", export)
    meta = json.loads((export / "metadata.json").read_text())
    meta["time"] = "2026\ud800"
    meta["databases"][0]["tableFiles"][0]["name"] = "notes\ud800"
    (export / "metadata.json").write_text(json.dumps(meta))
    write_checksums(export)
    res = sb.phx("import", export, "--dry-run", check=None)
    assert res.code in (0, 3) and "\\ud800" in res.out, res  # text: the escape, readable
    res = sb.phx("import", export, "--dry-run", "--json", check=None)
    assert res.code in (0, 3), res
    # --json: valid Unicode with U+FFFD in place of the surrogate (jsontext.portable)
    assert "notes\ufffd" in json.dumps(res.json(), ensure_ascii=False), res


def test_a_number_beyond_int64_in_the_last_store_imports_nothing(sandbox: Sandbox, tmp_path: Path) -> None:
    # json reads any integer; SQLite takes 64 bits. The rows were read ahead, but the number was
    # found only when the last store was merged: an internal error (OverflowError), exit 1, with
    # the stores before it already merged.
    sb = sandbox
    export = tmp_path / "export"
    sb.phx_here("export", "--format", "json", "--output", export)
    meta = json.loads((export / "metadata.json").read_text())
    last = meta["databases"][-1]["tableFiles"][0]
    table = export / last["file"]
    lines = table.read_text().splitlines()
    row = json.loads(lines[1].removesuffix(","))
    row[last["primaryKey"][0]] = 2**64  # a new key: the row would be inserted
    lines[1] = json.dumps(row) + ","
    table.write_text("\n".join(lines) + "\n")
    write_checksums(export)
    first = sb.db_path(meta["databases"][0]["path"])
    name = meta["databases"][0]["tableFiles"][-1]["name"]
    con = sqlite3.connect(first)
    try:
        con.execute(f"DELETE FROM {quote(name)}")
        con.commit()
    finally:
        con.close()
    res = sb.phx("import", export, "--force", "--conflict-mode", "update", check=None)
    assert_error(res, 2, Path(last["file"]).name, "18446744073709551616", "64-bit")
    con = sqlite3.connect(first)
    try:
        assert con.execute(f"SELECT count(*) FROM {quote(name)}").fetchone() == (0,)
    finally:
        con.close()


def _exported_lesson(sb: Sandbox, export: Path) -> tuple[Path, list[str], dict[str, Any], str]:
    """The sandbox's memory exported as JSON into `export`: its lessons.json, that file's lines,
    its first row and a text column of that row other than the key."""
    sb.phx_here("export", "--format", "json", "--output", export)
    table = export / "databases" / "memory" / "lessons.json"
    lines = table.read_text().splitlines()
    row = json.loads(lines[1].removesuffix(","))
    column = next(c for c, v in row.items() if isinstance(v, str) and c != "id")
    return table, lines, row, column


def _live_lesson(db: Path, column: str, row: dict[str, Any]) -> tuple[Any, ...] | None:
    """`column` of the live store's lesson of `row`'s id."""
    con = sqlite3.connect(db)
    try:
        found: tuple[Any, ...] | None = con.execute(
            f"SELECT {quote(column)} FROM lessons WHERE id = ?", (row["id"],)
        ).fetchone()
        return found
    finally:
        con.close()


def test_an_export_holding_one_key_twice_imports_nothing(sandbox: Sandbox, tmp_path: Path) -> None:
    # A hand-edited export with a row given twice, with other values: the second was counted
    # skipped, or with --conflict-mode update written over the live row (exit 0).
    sb = sandbox
    export = tmp_path / "export"
    table, lines, row, column = _exported_lesson(sb, export)
    lines.insert(2, json.dumps({**row, column: "written by whoever edited the export"}) + ",")
    table.write_text("\n".join(lines) + "\n")
    write_checksums(export)
    db = sb.db_path("home/.argentos/memory.db")
    res = sb.phx("import", export, "--force", "--conflict-mode", "update", check=None)
    assert_error(res, 2, "lessons.json", "two rows with the key", "row 2")
    assert _live_lesson(db, column, row) == (row[column],)


def test_an_export_naming_one_store_twice_imports_nothing(sandbox: Sandbox, tmp_path: Path) -> None:
    # The duplicate-key check reads one entry at a time: the same store given twice in
    # metadata.json, the second entry's file holding a row of other values, had that row written
    # over the live one with --conflict-mode update (exit 0).
    sb = sandbox
    export = tmp_path / "export"
    _, _, row, column = _exported_lesson(sb, export)
    (export / "again.json").write_text("[\n" + json.dumps({**row, column: "written by whoever edited it"}) + "\n]\n")
    meta = json.loads((export / "metadata.json").read_text())
    store = next(d for d in meta["databases"] if d["path"].endswith("memory.db"))
    lessons = next(t for t in store["tableFiles"] if t["file"].endswith("/lessons.json"))
    meta["databases"].append({**store, "tableFiles": [{**lessons, "file": "again.json", "rows": 1}]})
    (export / "metadata.json").write_text(json.dumps(meta))
    write_checksums(export)
    db = sb.db_path("home/.argentos/memory.db")
    res = sb.phx("import", export, "--force", "--conflict-mode", "update", check=None)
    assert_error(res, 2, "names the store", "twice", "nothing was imported")
    assert _live_lesson(db, column, row) == (row[column],)


@pytest.mark.parametrize("recorded", ["this agent", "no workspace"])
def test_a_planted_parent_snapshot_does_not_stop_backups(make_sandbox: Any, tmp_path: Path, recorded: str) -> None:
    # A bomb with this host's name and a later time is the next backup's parent: every backup
    # failed on it until someone forgot it. Now the backup reads every file and says why. The
    # parent is this agent's (user and workspace folder) or one recording no workspace (made
    # before it was recorded, any agent's): the bomb records either.
    sb = make_sandbox(encryption=False)
    sb.backup()
    forger = Forger(sb.repo)
    below = forger.tree(file_node("leaf.md"))
    for _ in range(33):
        below = forger.tree(dir_node("a", below), dir_node("b", below))
    later = "2099-01-01T00:00:00+00:00"
    agent = {"this agent": {"workspace": str(sb.workspace), "home": str(sb.home)}, "no workspace": {}}[recorded]
    bomb = forger.snapshot(
        forger.tree(dir_node("workspace", below)),
        name="bomb",
        host=socket.gethostname(),
        username=username(),
        sources=agent,
        time=later,
        started=later,
    )
    state = sb.state()
    doc = sb.backup()
    assert any(bomb[:8] in w and "every file was read" in w for w in doc["warnings"]), doc["warnings"]
    sb.restore_to(doc["id"], tmp_path / "out")
    assert_restored(state, tmp_path / "out", "the backup made after a planted parent")


def test_a_path_longer_than_a_zip_can_name_is_one_clean_error(make_sandbox: Any, tmp_path: Path) -> None:
    # 300 folders of 255-byte names: 77 KB, beyond the 65,535 bytes of a zip entry's name (a
    # struct.error traceback). tar names any length.
    sb = make_sandbox(encryption=False)
    sb.backup()
    forger = Forger(sb.repo)
    below = forger.tree(forger.file_node("leaf.md", b"deep\n"))
    for i in range(300):
        below = forger.tree(dir_node(f"d{i:03}" + "x" * 251, below))
    sid = forger.snapshot(forger.tree(dir_node("workspace", below)), name="long")
    assert_error(timed(sb, "archive", sid, "--output", tmp_path / "a.zip"), 2, "longer than a zip", ".tar.gz")
    assert not (tmp_path / "a.zip").exists()
    timed(sb, "archive", sid, "--output", tmp_path / "a.tar.gz")
    assert (tmp_path / "a.tar.gz").stat().st_size > 0


def test_folders_and_pipes_planted_under_object_names_fail_no_command(sandbox: Sandbox) -> None:
    """Someone with write access to the storage puts a folder or a pipe where objects live:
    verify (every byte), prune, backup and restore go on, each planted name one notice."""
    sandbox.backup()
    planted = [f"captures/{'ab' * 32}", f"data/cd/{'cd' * 32}", f"snapshots/{'ef' * 32}", f"checks/{'01' * 32}"]
    for i, name in enumerate(planted):
        (sandbox.repo / name).parent.mkdir(parents=True, exist_ok=True)
        os.mkfifo(sandbox.repo / name) if i % 2 else (sandbox.repo / name).mkdir()
    verified = sandbox.phx("verify", "--read-data", "--json", timeout=120).json()
    assert verified["ok"], verified
    sandbox.backup()
    res = sandbox.phx("prune", "--json", timeout=120)
    assert res.code == 0, res
    assert sum("captures/" + "ab" * 32 in line for line in res.err.splitlines()) <= 1, res.err
    assert all(os.path.lexists(sandbox.repo / name) for name in planted)
