"""`phx export` in each format, from the live stores and from a snapshot: every file listed in
checksums.json with its SHA-256, rows complete, embeddings decoded to the exact float32 values,
derived FTS tables left out, `--no-vectors` at most half the size, and a Markdown export a
person can read (categories, heat indicators, a Mermaid graph, reflections, lessons, identity)."""

from __future__ import annotations

import base64
import contextlib
import csv
import hashlib
import json
import os
import sqlite3
import struct
import subprocess
import unicodedata
import zlib
from pathlib import Path
from typing import Any

import pytest
from e2e_support import Sandbox, assert_error, mount, row_count, run_phx

from phoenix_backup.config.defaults import DEFAULT_SQLITE

STORES = {"memory": "home/.argentos/memory.db", "observations": "home/.argentos/observations.db"}


def dir_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def assert_checksums(export: Path) -> dict[str, Any]:
    """checksums.json lists every other file with its SHA-256, and the combined digest is the
    SHA-256 of the sha256sum-style listing."""
    doc: dict[str, Any] = json.loads((export / "checksums.json").read_text())
    assert doc["algorithm"] == "sha256"
    on_disk = sorted(
        p.relative_to(export).as_posix() for p in export.rglob("*") if p.is_file() and p.name != "checksums.json"
    )
    assert sorted(doc["files"]) == on_disk
    for rel, digest in doc["files"].items():
        assert hashlib.sha256((export / rel).read_bytes()).hexdigest() == digest, rel
    listing = "".join(f"{doc['files'][p]}  {p}\n" for p in sorted(doc["files"]))
    assert doc["combined"] == hashlib.sha256(listing.encode()).hexdigest()
    return doc


def test_json_export_is_complete_and_checksummed(sandbox: Sandbox, tmp_path: Path) -> None:
    (sandbox.workspace / "config" / ".netrc").write_text("machine example.com login me password pw\n")
    out = tmp_path / "export-json"
    res = sandbox.phx("export", "--format", "json", "--output", out, "--json")
    doc = res.json()
    assert doc["format"] == "json" and doc["vectors"] is True and doc["source"]["kind"] == "live"
    checks = assert_checksums(out)
    assert checks["combined"] == doc["checksums"]["combined"]
    meta = json.loads((out / "metadata.json").read_text())
    assert meta["format"] == "phoenix-memory-export" and meta["exportFormat"] == "json"
    # Every table of every store, with its row count; FTS shadow tables are left out.
    memory_db = sandbox.db_path(STORES["memory"])
    counts = meta["counts"][STORES["memory"]]
    assert set(counts) == {
        "categories",
        "memory_items",
        "item_categories",
        "entities",
        "relations",
        "reflections",
        "lessons",
    }
    for table, rows in counts.items():
        assert rows == row_count(memory_db, table), table
        rows_in_file = json.loads((out / "databases" / "memory" / f"{table}.json").read_text())
        assert len(rows_in_file) == rows
    assert not list((out / "databases" / "memory").glob("memory_fts*"))
    mem_meta = next(d for d in meta["databases"] if d["path"] == STORES["memory"])
    assert "memory_fts_data" in mem_meta["derived"] and mem_meta["ftsRebuild"] == ["memory_fts"]
    assert mem_meta["vectorColumns"] == {"memory_items": ["embedding"], "entities": ["embedding"]}
    # Embeddings are arrays holding exactly the stored float32 values.
    items = json.loads((out / "databases" / "memory" / "memory_items.json").read_text())
    con = sqlite3.connect(memory_db)
    try:
        for item in items[:25]:
            (blob,) = con.execute("SELECT embedding FROM memory_items WHERE id = ?", (item["id"],)).fetchone()
            assert len(item["embedding"]) == 768
            assert struct.pack("<768f", *item["embedding"]) == blob
    finally:
        con.close()
    # The identity, memory notes and config files come along.
    for rel in ("files/workspace/SOUL.md", "files/workspace/MEMORY.md", "files/home/.argentos/argent.json"):
        assert (out / rel).is_file(), rel
    assert (out / "files/workspace/SOUL.md").read_bytes() == (sandbox.workspace / "SOUL.md").read_bytes()
    assert not (out / "files/workspace/debug.log").exists()  # not part of identity, memory or config
    # Not sanitized: the sample's fake API key and a credential file are exported as they are,
    # and the user is told.
    assert "--sanitize" in res.err
    assert (out / "files/workspace/config/.netrc").is_file()
    assert "credential file(s) files/workspace/config/.netrc were exported as they are" in res.err


def test_no_vectors_is_at_most_half_the_size(sandbox: Sandbox, tmp_path: Path) -> None:
    full, lean = tmp_path / "full", tmp_path / "lean"
    sandbox.phx("export", "--output", full)
    sandbox.phx("export", "--no-vectors", "--output", lean)
    assert_checksums(lean)
    assert dir_size(lean) * 2 <= dir_size(full), (dir_size(lean), dir_size(full))
    item = json.loads((lean / "databases/memory/memory_items.json").read_text())[0]
    assert "embedding" not in item and "content" in item
    meta = json.loads((lean / "metadata.json").read_text())
    tables = next(d for d in meta["databases"] if d["path"] == STORES["memory"])["tableFiles"]
    assert next(t for t in tables if t["name"] == "memory_items")["omittedColumns"] == ["embedding"]


def test_csv_export_one_file_per_table(sandbox: Sandbox, tmp_path: Path) -> None:
    out = tmp_path / "csv"
    sandbox.phx("export", "--format", "csv", "--output", out)
    assert_checksums(out)
    memory_db = sandbox.db_path(STORES["memory"])
    files = sorted(p.name for p in (out / "databases" / "memory").iterdir())
    assert files == sorted(
        f"{t}.csv"
        for t in ("categories", "memory_items", "item_categories", "entities", "relations", "reflections", "lessons")
    )
    with open(out / "databases/memory/memory_items.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == row_count(memory_db, "memory_items")
    con = sqlite3.connect(memory_db)
    try:
        row = rows[0]
        content, blob = con.execute("SELECT content, embedding FROM memory_items WHERE id = ?", (row["id"],)).fetchone()
    finally:
        con.close()
    assert row["content"] == content
    assert struct.pack("<768f", *json.loads(row["embedding"])) == blob  # vectors as JSON arrays
    obs = out / "databases" / "observations" / "observations.csv"
    with open(obs, newline="", encoding="utf-8") as f:
        assert sum(1 for _ in csv.reader(f)) == 1 + row_count(sandbox.db_path(STORES["observations"]), "observations")


def test_markdown_export_for_a_person(sandbox: Sandbox, tmp_path: Path) -> None:
    out = tmp_path / "md"
    doc = sandbox.phx("export", "--format", "markdown", "--output", out, "--json").json()
    assert doc["format"] == "markdown"
    assert_checksums(out)
    assert {"memories.md", "observations.md", "dashboard.md", "identity.md"} <= {p.name for p in out.iterdir()}
    text = (out / "memories.md").read_text()
    con = sqlite3.connect(sandbox.db_path(STORES["memory"]))
    try:
        categories = [r[0] for r in con.execute("SELECT DISTINCT category FROM memory_items")]
        hot = con.execute("SELECT count(*) FROM memory_items WHERE heat > 0.7").fetchone()[0]
        cold = con.execute("SELECT count(*) FROM memory_items WHERE heat < 0.3").fetchone()[0]
        warm = con.execute("SELECT count(*) FROM memory_items WHERE heat BETWEEN 0.3 AND 0.7").fetchone()[0]
        lesson = con.execute("SELECT lesson FROM lessons LIMIT 1").fetchone()[0]
        entity = con.execute("SELECT name FROM entities e JOIN relations r ON r.source_id = e.id LIMIT 1").fetchone()[0]
    finally:
        con.close()
    for category in categories:
        assert f"\n### {category} (" in text, category
    bullets = [line for line in text.splitlines() if line.startswith("- ") and "_(heat " in line]
    assert sum(line.startswith("- 🔥 ") for line in bullets) == hot
    assert sum(line.startswith("- ❄️ ") for line in bullets) == cold
    assert sum(line.startswith("- • ") for line in bullets) == warm
    assert "```mermaid\ngraph LR\n" in text and entity.split(" ")[0] in text
    assert "## Reflections" in text and "## Lessons" in text and lesson in text
    identity = (out / "identity.md").read_text()
    assert "\n## SOUL.md\n" in identity and "\n### SOUL\n" in identity  # headings moved below the file's own
    assert "## Tasks: " in (out / "dashboard.md").read_text()
    assert "### Session sess-" in (out / "observations.md").read_text()


def test_snapshot_export_matches_live_export(backed_up: Sandbox, tmp_path: Path) -> None:
    sb = backed_up
    snap = sb.snapshots()[0]
    live, from_snap = tmp_path / "live", tmp_path / "snap"
    sb.phx("export", "--output", live)
    doc = sb.phx("export", "--backup", snap["name"], "--output", from_snap, "--json").json()
    assert doc["source"]["kind"] == "snapshot" and doc["source"]["snapshot"] == snap["id"]
    assert_checksums(from_snap)
    # Rows are written in key order, so the same data gives the same bytes.
    for path in sorted((live / "databases").rglob("*.json")):
        rel = path.relative_to(live)
        assert (from_snap / rel).read_bytes() == path.read_bytes(), rel
    # The sandbox backs up the whole workspace (not ~/.argentos/argent.json): the same files come out.
    assert sorted(p.relative_to(live).as_posix() for p in (live / "files/workspace").rglob("*")) == sorted(
        p.relative_to(from_snap).as_posix() for p in (from_snap / "files/workspace").rglob("*")
    )


def test_output_must_be_new_or_empty(sandbox: Sandbox, tmp_path: Path) -> None:
    out = tmp_path / "busy"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    res = sandbox.phx("export", "--output", out, check=2)
    assert_error(res, 2, str(out), "--output")
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    empty = tmp_path / "empty"
    empty.mkdir()
    sandbox.phx("export", "--format", "markdown", "--output", empty)
    assert (empty / "checksums.json").is_file()
    assert not [p for p in tmp_path.iterdir() if ".phx-tmp-" in p.name]  # no temporary folder left


def test_output_dash_is_not_a_folder_named_dash(sandbox: Sandbox, tmp_path: Path) -> None:
    # `--output -` (stdout, by habit) wrote the export into a new folder named `-` in the
    # current folder, and said so among its other output.
    here = tmp_path / "here"
    here.mkdir()
    res = run_phx(["export", "--output", "-"], sandbox.env, check=None, cwd=here)
    assert_error(res, 2, "never written to stdout", "--output DIR")
    assert list(here.iterdir()) == []


def test_output_a_link_to_an_empty_folder_exports_into_that_folder(sandbox: Sandbox, tmp_path: Path) -> None:
    folder = tmp_path / "folder"
    folder.mkdir()
    (tmp_path / "link").symlink_to(folder)
    sandbox.phx("export", "--format", "markdown", "--output", tmp_path / "link")
    assert (folder / "checksums.json").is_file() and (tmp_path / "link").is_symlink()
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")
    res = sandbox.phx("export", "--output", tmp_path / "dangling", check=2)
    assert_error(res, 2, str(tmp_path / "dangling"), "not a folder", "--output")
    assert not (tmp_path / "nowhere").exists()


PLANTED = {
    "openai": "sk-proj-Zz9Yy8Xx7Ww6Vv5Uu4Tt3Ss2Rr1Qq0Pp",
    "github": "ghp_AbCdEfGhIjKlMnOpQrStUvWxYz0123456789",
    "slack": "xoxb-2222222222-3333333333333-aBcDeFgHiJkLmNoPqRsTuVwX",
    "aws": "AKIAZZZZZZZZZZZZZZZZ",
    "jwt": "eyJhbGciOiJIUzI1NiJ9.eyJhZ2VudCI6ImFyZ2VudCJ9.c2lnbmF0dXJlLXNpZ25hdHVyZS1zaWc",
    "password": "tr0ub4dor&3-plus-more",
    "bearer": "YmVhcmVyLXRva2VuLWZvci10ZXN0cw",
}


def test_sanitize_removes_planted_secrets_and_nothing_else(sandbox: Sandbox, tmp_path: Path) -> None:
    ws = sandbox.workspace
    (ws / "config" / "secrets.env").write_text(
        f"OPENAI_API_KEY={PLANTED['openai']}\nAWS_ACCESS_KEY_ID={PLANTED['aws']}\nLOG_LEVEL=info\n"
    )
    (ws / "config" / "providers.yaml").write_text(
        f"github:\n  token: {PLANTED['github']}\n  org: example\nslack:\n  hook_note: uses {PLANTED['slack']}\n"
        f'db:\n  password: "{PLANTED["password"]}"\n  passwordEnv: PG_PASSWORD\n'
    )
    (ws / "config" / "http.json").write_text(
        json.dumps({"headers": {"X-Debug": f"Bearer {PLANTED['bearer']}"}, "session": PLANTED["jwt"], "retries": 3})
    )
    # The same token in a memory note goes too: any text loses the tokens of a known shape.
    (ws / "memory" / "2026-09-30.md").write_text(f"note: rotate {PLANTED['github']} soon\n")
    out = tmp_path / "migrate"
    doc = sandbox.phx("export", "--sanitize", "--no-vectors", "--output", out, "--json").json()
    assert doc["sanitized"] is True
    assert_checksums(out)
    configs = [p for p in (out / "files").rglob("*") if p.is_file() and p.suffix in (".json", ".env", ".yaml")]
    for path in configs:
        for name, secret in PLANTED.items():
            assert secret not in path.read_text(), (name, path)
    # Nothing else changed: each exported config equals its source with the secrets replaced.
    apikey = json.loads((sandbox.home / ".argentos" / "argent.json").read_text())["providers"]["anthropic"]["apiKey"]
    for path in configs:
        source = sandbox.root / "sample" / path.relative_to(out / "files")
        expected = source.read_text().replace(apikey, "REDACTED")
        for secret in PLANTED.values():
            expected = expected.replace(secret, "REDACTED")
        assert path.read_text() == expected, path
    assert (out / "files/workspace/memory/2026-09-30.md").read_text() == "note: rotate REDACTED soon\n"
    report = json.loads((out / "redactions.json").read_text())
    assert report["count"] == len(doc["redactions"]) == 9  # the seven planted, the note's + the sample's apiKey
    assert {r["file"] for r in report["redactions"]} == {
        "files/workspace/memory/2026-09-30.md",
        "files/workspace/config/secrets.env",
        "files/workspace/config/providers.yaml",
        "files/workspace/config/http.json",
        "files/home/.argentos/argent.json",
    }
    text = (out / "redactions.json").read_text() + (out / "MIGRATION.md").read_text()
    assert not any(secret in text for secret in [*PLANTED.values(), apikey])
    migration = (out / "MIGRATION.md").read_text()
    assert "`files/workspace/config/providers.yaml`" in migration and "phx import" in migration


def test_live_export_takes_the_components_as_a_full_backup_does(sandbox: Sandbox, tmp_path: Path) -> None:
    """An exclude that matches identity and memory files does not drop them (components win), and a
    memory folder kept on another disk behind a symbolic link is exported with its notes."""
    sb = sandbox
    elsewhere = sb.root / "other-disk" / "memory"
    elsewhere.parent.mkdir()
    (sb.workspace / "memory").rename(elsewhere)
    (sb.workspace / "memory").symlink_to(elsewhere, target_is_directory=True)
    notes = {p.name: p.read_bytes() for p in elsewhere.glob("*.md")}
    assert notes, "the sample has memory notes"
    sb.write_config(exclude=["*.md"])
    out = tmp_path / "export"
    doc = sb.phx("export", "--format", "json", "--output", out, "--json").json()
    assert_checksums(out)
    exported = {p.name: p.read_bytes() for p in (out / "files").rglob("*") if p.is_file()}
    for name in ("MEMORY.md", "SOUL.md"):
        assert exported.get(name) == (sb.workspace / name).read_bytes(), name
    for name, data in notes.items():
        assert exported.get(name) == data, name
    assert not any(name.endswith(("-wal", "-shm")) for name in exported)
    assert all(not f.endswith(".db") for f in doc["files"])
    # The same files come out of a snapshot of that workspace.
    sb.backup()
    snap_out = tmp_path / "export-snap"
    sb.phx("export", "--format", "json", "--backup", "latest", "--output", snap_out)
    from_snap = {p.name: p.read_bytes() for p in (snap_out / "files").rglob("*") if p.is_file()}
    assert from_snap == exported


def test_output_a_link_to_an_empty_mount_point_is_refused_before_any_work(
    sandbox: Sandbox, tmp_path: Path, tmpfs: Any
) -> None:
    """An empty mount point (a USB drive, a share) cannot be replaced by the export's folder: it
    is refused before the export is written, naming the fix, whether given or linked to."""
    drive = tmpfs("64m")
    (tmp_path / "link").symlink_to(drive)
    for output in (drive, tmp_path / "link"):
        res = sandbox.phx("export", "--output", output, check=None)
        assert_error(res, 2, str(drive), "mount point", str(drive / "export"))
    assert not any(drive.iterdir())
    assert not [p for p in tmp_path.iterdir() if ".phx-tmp-" in p.name]
    sandbox.phx("export", "--output", tmp_path / "link" / "export")
    assert (drive / "export" / "checksums.json").is_file()


def test_output_a_bind_mount_of_the_same_disk_is_refused_before_any_work(sandbox: Sandbox, tmp_path: Path) -> None:
    """A folder bind-mounted onto an empty folder of the same file system (as containers and
    `mount --bind` do) is a mount point `os.path.ismount` does not see (same device, another
    inode). Before, the whole export was written and then failed with "Device or resource busy
    while writing the export" (exit 1, no fix named); now it is refused first, as any mount point."""
    if os.geteuid() != 0:
        pytest.skip("a bind mount needs root")
    shared, out = tmp_path / "shared", tmp_path / "bound"
    shared.mkdir()
    out.mkdir()
    proc = mount("--bind", str(shared), str(out))
    if proc.returncode != 0:
        pytest.skip(f"cannot bind-mount here: {proc.stderr.strip() or proc.returncode}")
    try:
        res = sandbox.phx("export", "--output", out, check=None)
        assert_error(res, 2, str(out), "mount point", str(out / "export"))
        assert not any(out.iterdir()) and not any(shared.iterdir())
        assert not [p for p in tmp_path.iterdir() if ".phx-tmp-" in p.name]
        sandbox.phx("export", "--output", out / "export")
        assert (shared / "export" / "checksums.json").is_file()
    finally:
        subprocess.run(["umount", str(out)], check=False, capture_output=True)


def test_an_immutable_empty_output_folder_names_the_attribute(sandbox: Sandbox, tmp_path: Path) -> None:
    """An empty --output folder made immutable (`chattr +i`) cannot be replaced by the export's
    folder: its removal fails with EPERM although owner and mode allow it. Before: "permission
    denied … check the owner and mode of …", which are fine; now the sentence names the immutable
    or append-only attribute too. Exit 1, the folder as it was, no temporary folder left."""
    if os.geteuid() != 0:
        pytest.skip("chattr +i needs root")
    out = tmp_path / "locked"
    out.mkdir()
    proc = subprocess.run(["chattr", "+i", str(out)], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        pytest.skip(f"chattr +i is not supported here: {proc.stderr.strip() or proc.returncode}")
    try:
        res = sandbox.phx("export", "--output", out, check=None)
        assert_error(res, 1, "permission denied", str(out), "immutable or append-only attribute")
        assert out.is_dir() and not any(out.iterdir())
        assert not [p for p in tmp_path.iterdir() if ".phx-tmp-" in p.name]
    finally:
        subprocess.run(["chattr", "-i", str(out)], check=False, capture_output=True)


def test_two_tables_whose_names_once_made_one_file_export_each_whole(sandbox: Sandbox, tmp_path: Path) -> None:
    """A table's file name was %XX of each code point: `é0` and U+0E90 were both `%E90.json`, so
    the second table's rows were written over the first's, and the metadata named one file for
    both (an import restored one table's rows into the other). The empty name and `_` were both
    `_.json`. A 40-character CJK name, %XX of its 120 bytes, was too long for a file name and the
    export failed. Each table has a file of its own, its name at most 255 bytes."""
    long_name = "\u8a18" * 40
    tables = {"é0": ["first", "second"], "\u0e90": ["other"], "": ["empty"], "_": ["underscore"], long_name: ["long"]}
    memory_db = sandbox.db_path(STORES["memory"])
    with sqlite3.connect(memory_db) as con:
        for name, values in tables.items():
            con.execute(f'CREATE TABLE "{name}" (v TEXT)')
            con.executemany(f'INSERT INTO "{name}" VALUES (?)', [(v,) for v in values])
    con.close()
    out = tmp_path / "export"
    sandbox.phx_here("export", "--format", "json", "--output", out, "--json")
    meta = json.loads((out / "metadata.json").read_text())
    files = {
        t["name"]: t["file"] for db in meta["databases"] if db["path"] == STORES["memory"] for t in db["tableFiles"]
    }
    assert len({files[name] for name in tables}) == len(tables), files
    for name, values in tables.items():
        assert [r["v"] for r in json.loads((out / files[name]).read_text())] == values, name
        assert len(Path(files[name]).name.encode()) <= 255


@pytest.mark.phx_in_process
def test_names_differing_only_in_case_or_normal_form_are_separate_files_of_the_export(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    """An export is carried to macOS or a USB stick, whose file systems take `Memory` and `memory`,
    or `café` in NFC and NFD, for one name. Before, stores `a/Memory.db` and `b/memory.db` were
    exported to `databases/Memory` and `databases/memory` (one folder there: the second store's
    tables over the first's), notes `memory/Note.md` and `memory/note.md` to two such files, and a
    store `Identity` to `Identity.md` beside `identity.md`. Now every name differs folded."""
    ws = sandbox.workspace
    for rel in ("a/Memory.db", "b/memory.db", "c/Identity.db"):
        (ws / rel).parent.mkdir(parents=True, exist_ok=True)
        with contextlib.closing(sqlite3.connect(ws / rel)) as con:
            con.execute("CREATE TABLE t (k TEXT)")
            con.execute("INSERT INTO t VALUES (?)", (rel,))
            con.commit()
    sandbox.write_config(databases={"sqlite": [*DEFAULT_SQLITE, "a/Memory.db", "b/memory.db", "c/Identity.db"]})
    notes = {"Note.md": b"upper\n", "note.md": b"lower\n", "caf\u00e9.md": b"nfc\n", "cafe\u0301.md": b"nfd\n"}
    for name, data in notes.items():
        (ws / "memory" / name).write_bytes(data)
    for fmt in ("json", "markdown"):
        out = tmp_path / fmt
        doc = sandbox.phx_here("export", "--format", fmt, "--no-vectors", "--output", out, "--json").json()
        everything = [str(p.relative_to(out)) for p in out.rglob("*")]
        folded = [unicodedata.normalize("NFD", unicodedata.normalize("NFD", p).casefold()) for p in everything]
        assert len(set(folded)) == len(folded), sorted(everything)
        kept = sorted(p.read_bytes() for p in (out / "files/workspace/memory").iterdir() if p.suffix == ".md")
        assert [b for b in kept if b in notes.values()] == sorted(notes.values())
        assert sum("only in case or Unicode form" in w for w in doc["warnings"]) == 2, doc["warnings"]
        if fmt == "json":
            rows = sorted(
                json.loads((out / t["file"]).read_text())[0]["k"]
                for db in json.loads((out / "metadata.json").read_text())["databases"]
                if db["path"].startswith("workspace/")
                for t in db["tableFiles"]
            )
            assert rows == ["a/Memory.db", "b/memory.db", "c/Identity.db"]


@pytest.mark.phx_in_process
def test_a_longest_name_differing_only_in_case_is_shortened_not_too_long(sandbox: Sandbox, tmp_path: Path) -> None:
    """Notes of 255 bytes (the most a file name holds) differing only in case: the second was
    exported as `...~2.md`, 257 bytes, and the export failed with File name too long (adv27)."""
    names = ["N" * 252 + ".md", "n" * 252 + ".md", "n" * 250 + "~2.md"]
    for i, name in enumerate(names):
        (sandbox.workspace / "memory" / name).write_bytes(b"note %d\n" % i)
    out = tmp_path / "out"
    sandbox.phx_here("export", "--format", "json", "--no-vectors", "--output", out, "--json").json()
    notes = [p for p in (out / "files/workspace/memory").iterdir() if p.name not in ("MEMORY.md",)]
    got = sorted(p.read_bytes() for p in notes if p.read_bytes().startswith(b"note "))
    assert got == [b"note 0\n", b"note 1\n", b"note 2\n"], sorted(p.name for p in notes)
    folded = [unicodedata.normalize("NFD", unicodedata.normalize("NFD", p.name).casefold()) for p in notes]
    assert len(set(folded)) == len(folded) and all(len(p.name.encode()) <= 255 for p in notes)


# Each credential file a workspace may hold, and a secret in it that no key name or token shape
# gives away: a sanitized export leaves the file out (red23: every one was copied as it was).
CREDENTIAL_FILES = {
    "config/.npmrc": "//registry.npmjs.org/:_authToken=npm-secret-npmrc-0001\n",
    "config/.netrc": "machine api.example.com login me password secret-netrc-0002\n",
    "config/.pgpass": "db.example.com:5432:*:me:secret-pgpass-0003\n",
    "config/.git-credentials": "https://me:secret-gitcred-0004@github.com\n",
    "config/.aws/credentials": "[default]\naws_access_key_id = AKIAYYYYYYYYYYYYYYYY\n"
    "aws_secret_access_key = secret-aws-0005\n",
    "config/.aws/config": "[default]\nregion = eu-west-1\naws_secret_access_key = secret-awsconfig-0006\n",
    "config/.ssh/id_ed25519": "-----BEGIN OPENSSH PRIVATE KEY-----\nsecret-ssh-0007\n"
    "-----END OPENSSH PRIVATE KEY-----\n",
    "config/tls.pem": "-----BEGIN CERTIFICATE-----\nsecret-pem-0008\n-----END CERTIFICATE-----\n",
    "config/server.key": "secret-key-0009\n",
    "config/.docker/config.json": '{"auths": {"ghcr.io": {"identitytoken": "x", "email": "secret-docker-0010"}}}\n',
    "config/.kube/config": "users:\n- name: me\n  user:\n    client-key-data: secret-kube-0011\n",
    "config/gcloud/application_default_credentials.json": '{"type": "authorized_user", "x": "secret-adc-0012"}\n',
    # by what it holds: a file of another name
    "config/backup-notes.txt": "[backup]\naws_secret_access_key = secret-awsnotes-0013\n",
    "config/hosts": "machine db.example.com\n  login me\n  password secret-netrcnamed-0014\n",
    "config/.my.cnf": "[client]\nuser = me\npassword = secret-mycnf-0020\n",
    "config/.s3cfg": "[default]\nsecret_key = secret-s3cfg-0021\n",
    "config/.vault-token": "hvs.secret-vault-0022\n",
    "config/registry-login": "//npm.example.com/:_authToken=secret-npmlogin-0019\n",
    "config/ftp.conf": "machine ftp.example.com login me password secret-netrcconf-0024\n",
    "config/deploy-key": "-----BEGIN RSA PRIVATE KEY-----\nsecret-rsa-0015\n-----END RSA PRIVATE KEY-----\n",
    # a copy keeps what the file held: by the name it was copied from
    "config/.pgpass~": "db.example.com:5432:*:me:secret-pgpasscopy-0025\n",
    "config/.vault-token.bak": "hvs.secret-vaultcopy-0026\n",
    "memory/Credentials.OLD": "[default]\ntoken = secret-credcopy-0027\n",
    "config/#.my.cnf#": "[client]\npassword = secret-mycnfcopy-0028\n",
    # .pgpass entries under another name: Windows's pgpass.conf, a hard link or copy in the notes
    "config/pgpass.conf": "localhost:5432:*:postgres:secret-pgpassconf-0032\n",
    "memory/db-access.txt": "# prod\ndb.example.com:*:app:me:secret-pgpassnamed-0033\n",
}


def png(*chunks: tuple[bytes, bytes]) -> bytes:
    body = b"".join(
        len(data).to_bytes(4, "big") + kind + data + zlib.crc32(kind + data).to_bytes(4, "big") for kind, data in chunks
    )
    return b"\x89PNG\r\n\x1a\n" + body


def test_sanitize_leaves_out_credential_files_and_redacts_tokens_in_any_text(sandbox: Sandbox, tmp_path: Path) -> None:
    ws = sandbox.workspace
    for rel, text in CREDENTIAL_FILES.items():
        (ws / rel).parent.mkdir(parents=True, exist_ok=True)
        (ws / rel).write_text(text)
    (ws / "config/cert.p12").write_bytes(b"\x30\x82\x01\x00secret-p12-0016\xff")
    (ws / "config/blob.bin").write_bytes(b"\x00\xffsecret-binary-0017")
    image = png((b"IHDR", bytes(13)), (b"IDAT", bytes(range(256))), (b"IEND", b""))
    (ws / "memory/diagram.png").write_bytes(image)
    (ws / "memory/screenshot.png").write_bytes(image + b"aws_secret_access_key = secret-afteriend-0029\n")
    # a key's base64 (a kubeconfig's client-key-data, `base64 id_rsa`) in a note, wrapped or not
    key64 = base64.b64encode(b"-----BEGIN OPENSSH PRIVATE KEY-----\nsecret-keyb64-0030\n" + bytes(60)).decode()
    wrapped = "\n".join(key64[i : i + 76] for i in range(0, len(key64), 76))
    (ws / "memory/2026-10-02.md").write_text(f"client-key-data {key64}\n\n{wrapped}\nend\n")
    # a PEM key after a comment line, inside JSON with `\n` escapes, with CRLF line ends
    pem = "-----BEGIN EC PRIVATE KEY-----\nsecret-pemlater-0031\n-----END EC PRIVATE KEY-----"
    crlf = pem.replace("\n", "\r\n")
    (ws / "memory/keys.txt").write_text(f"# deploy\n{pem}\n{json.dumps({'k': pem})}\n{crlf}\n")
    (ws / "config/k3s.yaml").write_text("users:\n- name: me\n  user:\n    client-key-data: secret-k3s-0023\n")
    (ws / "config/.env.production").write_text("DB_PASSWORD=secret-envprod-0018\nLOG=info\n")
    (ws / "config/deploy.sh").write_text(f"#!/bin/sh\nexport OPENAI_API_KEY={PLANTED['openai']}\necho deploy\n")
    (ws / "memory/2026-10-01.md").write_text(f"# Keys\nrotate {PLANTED['github']} and {PLANTED['slack']} soon\n")
    out = tmp_path / "export"
    doc = sandbox.phx_here("export", "--sanitize", "--no-vectors", "--output", out, "--json").json()
    assert_checksums(out)
    exported = b"".join(p.read_bytes() for p in out.rglob("*") if p.is_file())
    assert b"secret-" not in exported and PLANTED["openai"].encode() not in exported
    assert PLANTED["github"].encode() not in exported and PLANTED["slack"].encode() not in exported
    # Left out, each listed with its reason in the result, redactions.json and MIGRATION.md.
    gone = {
        f"files/workspace/{rel}"
        for rel in [*CREDENTIAL_FILES, "config/cert.p12", "config/blob.bin", "memory/screenshot.png"]
    }
    assert {x["file"] for x in doc["leftOut"]} == gone
    assert {x["file"] for x in json.loads((out / "redactions.json").read_text())["leftOut"]} == gone
    migration = (out / "MIGRATION.md").read_text()
    assert all(f"`{f}`" in migration for f in gone) and "not UTF-8" in migration
    assert not any((out / f).exists() for f in gone)
    assert all(any(f.split("/")[-1] in w for w in doc["warnings"]) for f in gone)
    # Kept: an image, a script and a note lose their tokens and keep every other line.
    assert (out / "files/workspace/memory/diagram.png").read_bytes() == image
    assert (out / "files/workspace/memory/2026-10-02.md").read_text() == "client-key-data REDACTED\n\nREDACTED\nend\n"
    assert (
        out / "files/workspace/config/deploy.sh"
    ).read_text() == "#!/bin/sh\nexport OPENAI_API_KEY=REDACTED\necho deploy\n"
    assert (out / "files/workspace/memory/2026-10-01.md").read_text() == "# Keys\nrotate REDACTED and REDACTED soon\n"
    assert (out / "files/workspace/config/.env.production").read_text() == "DB_PASSWORD=REDACTED\nLOG=info\n"
    assert {"files/workspace/config/deploy.sh", "files/workspace/memory/2026-10-01.md"} <= {
        r["file"] for r in doc["redactions"]
    }


@pytest.mark.phx_in_process
def test_live_and_snapshot_exports_take_the_same_databases_and_files(sandbox: Sandbox, tmp_path: Path) -> None:
    """Only the configured stores are exported as databases, from the live workspace and from a
    snapshot alike: any other SQLite file (a cache in the memory folder, a tool's database outside
    the components) is a file, its bytes, which --sanitize leaves out and lists as not UTF-8 text.
    A snapshot exported every SQLite file it held as rows (a cache's secret came out); the live
    export left the cache out unsaid."""
    ws = sandbox.workspace
    # A configured store named as another is (memory.db), listed first: each export names the
    # stores' folders in the same order, so `databases/memory/` is the same store in both.
    sandbox.write_config(databases={"sqlite": ["agent[s]/memory.db", *DEFAULT_SQLITE]})
    for rel in ("memory/cache.sqlite", "tools/state.db", "agents/memory.db"):
        (ws / rel).parent.mkdir(parents=True, exist_ok=True)
        con = sqlite3.connect(ws / rel)
        con.execute("CREATE TABLE t (k TEXT)")
        con.execute("INSERT INTO t VALUES ('secret-cache-0040')")
        con.commit()
        con.close()
    # A store kept elsewhere behind a link is exported under the link's path from both.
    home = Path(sandbox.env["HOME"])
    (home / "elsewhere").mkdir()
    (home / ".argentos/observations.db").rename(home / "elsewhere/observations.db")
    (home / ".argentos/observations.db").symlink_to(home / "elsewhere/observations.db")
    sandbox.backup()
    docs = {}
    for kind, extra in (("snapshot", ("--backup", "latest")), ("live", ())):
        out = tmp_path / kind
        docs[kind] = sandbox.phx_here("export", "--sanitize", "--no-vectors", *extra, "--output", out, "--json").json()
        exported = b"".join(p.read_bytes() for p in out.rglob("*") if p.is_file())
        assert exported.count(b"secret-cache") == 1, kind  # the configured store's row only
        assert {x["file"]: x["reason"] for x in docs[kind]["leftOut"]} == {
            "files/workspace/memory/cache.sqlite": "not UTF-8 text, so it could not be read for secrets"
        }, kind
    live, snap = docs["live"], docs["snapshot"]
    stores = [(d["path"], d["name"]) for d in live["databases"]]
    assert stores == [(d["path"], d["name"]) for d in snap["databases"]]
    assert [p for p, _name in stores if p.startswith("workspace/")] == ["workspace/agents/memory.db"]
    assert "home/.argentos/observations.db" in dict(stores) and "home/elsewhere/observations.db" not in dict(stores)
    # A SQLite file SQLite cannot read is a file all the same: its bytes, the export not failed.
    damaged = b"SQLite format 3\0" + bytes(range(256)) * 8
    (ws / "memory/damaged.db").write_bytes(damaged)
    sandbox.phx_here("export", "--no-vectors", "--output", tmp_path / "damaged")
    assert (tmp_path / "damaged/files/workspace/memory/damaged.db").read_bytes() == damaged
    assert live["files"] == snap["files"] and live["redactions"] == snap["redactions"]


@pytest.mark.phx_in_process
def test_a_store_named_through_dot_dot_or_twice_is_one_store(sandbox: Sandbox, tmp_path: Path) -> None:
    """`databases.sqlite` naming a store through `..` (`memory/../cache.sqlite`) put a name `..` in
    the snapshot: the backup exited 3 (retention: 'unsafe name ..') and no command could read that
    snapshot again, while the live export took the store as `workspace/memory/../cache.sqlite`. A
    store named twice (relative and absolute) was exported twice live (`memory-2`, `memory-3`) and
    once from the snapshot. Now each is the file it names, once, and both exports agree."""
    ws = sandbox.workspace
    entries = ["memory/../cache.sqlite", "agents/memory.db", str(ws / "agents/memory.db")]
    sandbox.write_config(databases={"sqlite": [*entries, *DEFAULT_SQLITE]})
    for rel in ("cache.sqlite", "agents/memory.db"):
        (ws / rel).parent.mkdir(parents=True, exist_ok=True)
        con = sqlite3.connect(ws / rel)
        con.execute("CREATE TABLE t (k TEXT)")
        con.execute("INSERT INTO t VALUES (?)", (rel,))
        con.commit()
        con.close()
    sandbox.phx_here("backup")
    stores = {}
    for kind, extra in (("snapshot", ("--backup", "latest")), ("live", ())):
        doc = sandbox.phx_here("export", "--no-vectors", *extra, "--output", tmp_path / kind, "--json").json()
        stores[kind] = [(d["path"], d["name"]) for d in doc["databases"] if d["path"].startswith("workspace/")]
    assert (
        stores["live"]
        == stores["snapshot"]
        == [
            ("workspace/agents/memory.db", "memory-2"),
            ("workspace/cache.sqlite", "cache"),
        ]
    )


@pytest.mark.phx_in_process
def test_a_configured_store_behind_a_link_outside_the_components_is_saved(sandbox: Sandbox, tmp_path: Path) -> None:
    """A configured store named by a link (`~/dbs/agent.db -> ~/disk/agent.db`, a database kept on
    another disk) is saved as the database it is, at the target's path, the link kept: restored
    with its rows and exported. Only the link was saved (exit 0, no warning: the database in no
    backup). A link to no database is one warning, the run not failed."""
    home = Path(sandbox.env["HOME"])
    (home / "disk").mkdir()
    (home / "dbs").mkdir()
    con = sqlite3.connect(home / "disk/agent.db")
    con.execute("CREATE TABLE t (k TEXT)")
    con.execute("INSERT INTO t VALUES ('kept-on-another-disk')")
    con.commit()
    con.close()
    (home / "dbs/agent.db").symlink_to(home / "disk/agent.db")
    (home / "disk/notes.txt").write_text("no database\n")
    (home / "dbs/notes.db").symlink_to(home / "disk/notes.txt")
    sandbox.write_config(databases={"sqlite": [*DEFAULT_SQLITE, "~/dbs/agent.db", "~/dbs/notes.db"]})
    doc = sandbox.backup()
    assert "home/disk/agent.db" in {d["path"] for d in doc["databases"]}
    assert [w for w in doc["warnings"] if "dbs/" in w] == [
        f"{home}/dbs/notes.db in databases.sqlite is a symbolic link to {home}/disk/notes.txt, which is no "
        "SQLite database: only the link is saved; fix the path in databases.sqlite in the config"
    ]
    sandbox.restore_to("latest", tmp_path / "r")
    assert os.readlink(tmp_path / "r/home/dbs/agent.db") == str(home / "disk/agent.db")
    restored = sqlite3.connect(tmp_path / "r/home/disk/agent.db")
    assert restored.execute("SELECT k FROM t").fetchall() == [("kept-on-another-disk",)]
    restored.close()
    out = tmp_path / "export"
    exported = sandbox.phx_here("export", "--no-vectors", "--backup", "latest", "--output", out, "--json").json()
    assert "home/dbs/agent.db" in {d["path"] for d in exported["databases"]}
