"""`phx ls` and `phx dump`: browse a snapshot without restoring it.

`ls` lists exactly the snapshot's paths with their sizes, modes and modification times; `dump`
writes one file's exact bytes to stdout (a database as its consistent copy), including an older
version of a file ("MEMORY.md as of last Tuesday"), and writes nothing when the data is damaged.
"""

from __future__ import annotations

import base64
import hashlib
import os
import sqlite3
import stat
import subprocess
from pathlib import Path

from e2e_support import DATABASES, HOME_CONFIG_FILES, PHX, Sandbox, assert_error, assert_same_db, damage_blob, db_dump


def dump_bytes(sb: Sandbox, *args: str) -> tuple[int, bytes, str]:
    """`phx dump ARGS` with stdout captured as bytes (the files are binary)."""
    proc = subprocess.run([PHX, "dump", *args], env=sb.env, stdin=subprocess.DEVNULL, capture_output=True, timeout=120)
    return proc.returncode, proc.stdout, proc.stderr.decode()


def test_ls_lists_every_path_with_size_mode_and_mtime(backed_up: Sandbox) -> None:
    sb = backed_up
    doc = sb.phx("ls", "latest", "--json").json()
    entries = {e["path"]: e for e in doc["entries"]}
    expected = {f"workspace/{k}": v for k, v in sb.state()["workspace"].items()}
    for logical in expected:
        assert logical in entries, f"ls does not list {logical}"
    for logical in DATABASES:
        assert entries[logical]["type"] == "sqlite"
    listed = {p for p, e in entries.items() if e["type"] != "dir" or p.startswith("workspace/")}
    want = set(expected) | set(DATABASES) | set(HOME_CONFIG_FILES)
    assert listed == want, sorted(listed ^ want)
    for logical, value in expected.items():
        e = entries[logical]
        path = sb.workspace / logical.removeprefix("workspace/")
        st = path.lstat()
        assert e["mode"] == stat.S_IMODE(st.st_mode) and e["mtimeNs"] == st.st_mtime_ns, (logical, e)
        if value[0] == "file":
            assert e["size"] == st.st_size and e["sha256"] == value[4], (logical, e)
            assert e["permissions"] == stat.filemode(st.st_mode)

    # A path inside the workspace, given as the user would type it, lists only what is below it.
    sub = sb.phx("ls", "latest", "memory", "--json").json()
    assert sub["path"] == "workspace/memory"
    assert sub["entries"] and all(e["path"].startswith("workspace/memory") for e in sub["entries"])
    names = sorted(p.name for p in (sb.workspace / "memory").iterdir())
    flat = sb.phx("ls", "latest", "workspace/memory", "--no-recursive", "--json").json()
    assert sorted(e["name"] for e in flat["entries"][1:]) == names

    # Plain text: one line per entry with mode, size, time and path.
    text = sb.phx("ls", "latest", "MEMORY.md").out.strip()
    size = (sb.workspace / "MEMORY.md").stat().st_size
    assert text.startswith("-rw") and f" {size} " in text and text.endswith("workspace/MEMORY.md"), text

    res = sb.phx("ls", "latest", "no/such/file.md", check=None)
    assert_error(res, 2, "workspace/no/such/file.md")


def test_dump_writes_the_exact_bytes_of_a_file_and_a_database(backed_up: Sandbox, tmp_path: Path) -> None:
    sb = backed_up
    code, out, err = dump_bytes(sb, "latest", "MEMORY.md")
    assert code == 0, err
    assert out == (sb.workspace / "MEMORY.md").read_bytes()

    logical = "home/.argentos/memory.db"
    code, out, err = dump_bytes(sb, "latest", "~/.argentos/memory.db")
    assert code == 0, err
    entry = next(e for e in sb.phx("ls", "latest", logical, "--json").json()["entries"] if e["path"] == logical)
    assert hashlib.sha256(out).hexdigest() == entry["sha256"] and len(out) == entry["size"]
    copy = tmp_path / "memory.db"
    copy.write_bytes(out)
    con = sqlite3.connect(copy)
    assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    con.close()
    assert_same_db(db_dump(sb.db_path(logical)), db_dump(copy), "dumped memory.db")

    doc = sb.phx("dump", "latest", "MEMORY.md", "--json").json()
    assert base64.b64decode(doc["contentBase64"]) == (sb.workspace / "MEMORY.md").read_bytes()
    assert doc["path"] == "workspace/MEMORY.md" and doc["size"] == (sb.workspace / "MEMORY.md").stat().st_size

    assert_error(sb.phx("dump", "latest", "memory", check=None), 2, "folder")
    assert_error(sb.phx("dump", "latest", "nothing-here.md", check=None), 2, "nothing-here.md")
    # A home folder's path as `backup --dry-run` shows it (`.argentos/memory.db`) is read as the
    # workspace's: the error names the path the snapshot holds (before: only `see phx ls`).
    assert_error(
        sb.phx("dump", "latest", ".argentos/memory.db", check=None),
        2,
        "holds no workspace/.argentos/memory.db, but it holds home/.argentos/memory.db",
        "~/.argentos/memory.db",
    )


def test_restore_path_takes_the_home_folder_as_dump_does(backed_up: Sandbox, tmp_path: Path) -> None:
    """`phx dump latest ~/.argentos/memory.db` worked, `phx restore --path ~/.argentos/memory.db`
    matched nothing (exit 2): the same path is the same file for both now (docs/concepts.md)."""
    doc = backed_up.restore_to("latest", tmp_path / "dest", "--path", "~/.argentos/memory.db", "--dry-run")
    assert {i["path"] for i in doc["items"]} == {"home/.argentos/memory.db"}, doc["items"]


def test_restore_path_from_the_home_folder_is_not_a_workspace_folder_named_home(
    backed_up: Sandbox, tmp_path: Path
) -> None:
    """`--path` globs also match inside a root (`notes.md` is `workspace/notes.md`), so `~/.argentos`,
    read as `home/.argentos`, also took a workspace's folder `home/.argentos`: the wrong files
    restored beside the right ones. `~/…` and `~` (the whole home folder, as `phx dump` reads it)
    name the snapshot's home folder only (docs/restore.md)."""
    sb = backed_up
    (sb.workspace / "home" / ".argentos").mkdir(parents=True)
    (sb.workspace / "home" / ".argentos" / "notes.md").write_text("the workspace's, not the home folder's\n")
    (sb.workspace / "~").write_text("a file named ~\n")
    sb.backup()
    for path in ("~/.argentos", "~/.argentos/*", "~", "~/"):
        doc = sb.restore_to("latest", tmp_path / "dest", "--path", path, "--dry-run")
        paths = {i["path"] for i in doc["items"]}
        assert "home/.argentos/memory.db" in paths and all(p.startswith("home/") for p in paths), (path, paths)
    doc = sb.restore_to("latest", tmp_path / "dest", "--path", "home/.argentos", "--dry-run")
    assert "workspace/home/.argentos/notes.md" in {i["path"] for i in doc["items"]}, "a plain glob is unchanged"


def test_home_paths_name_the_workspace_where_it_lies_in_the_home_folder(sandbox: Sandbox, tmp_path: Path) -> None:
    """With the workspace below the home folder (`~/argent`, the default), the snapshot holds its
    files as `workspace/…`; `~/argent/MEMORY.md` was read as `home/argent/MEMORY.md`, which it
    never holds: `restore --path` matched nothing and `dump` and `ls` said the snapshot held no
    such path (exit 2). `~/…` is read through the snapshot's recorded home and workspace."""
    sb = sandbox
    inside = sb.home / "argent"
    sb.workspace.rename(inside)
    sb.write_config(workspace=str(inside))
    sb.backup()
    doc = sb.restore_to("latest", tmp_path / "dest", "--path", "~/argent/MEMORY.md", "--dry-run")
    assert {i["path"] for i in doc["items"]} == {"workspace/MEMORY.md"}, doc["items"]
    doc = sb.restore_to("latest", tmp_path / "dest", "--path", "~/argent/memory/*.md", "--dry-run")
    assert doc["items"] and all(i["path"].startswith("workspace/memory/") for i in doc["items"]), doc["items"]
    assert sb.phx_here("dump", "latest", "~/argent/MEMORY.md").out == (inside / "MEMORY.md").read_text()


def test_dump_gives_an_older_version_of_a_file(backed_up: Sandbox) -> None:
    sb = backed_up
    before = (sb.workspace / "MEMORY.md").read_bytes()
    first = sb.snapshots()[0]
    (sb.workspace / "MEMORY.md").write_text("# MEMORY\n\nrewritten on Wednesday\n")
    sb.backup()
    code, out, err = dump_bytes(sb, first["name"], "MEMORY.md")
    assert code == 0 and out == before, err
    code, out, err = dump_bytes(sb, "latest", "MEMORY.md")
    assert code == 0 and out == b"# MEMORY\n\nrewritten on Wednesday\n", err


def test_dump_writes_nothing_when_the_data_is_damaged(backed_up: Sandbox) -> None:
    sb = backed_up
    damage_blob(sb, "workspace/MEMORY.md")
    code, out, err = dump_bytes(sb, "latest", "MEMORY.md")
    assert code == 1 and out == b"", (code, out[:100], err)
    assert err.startswith("phx: error:") and "Traceback" not in err, err
    assert not any(name.startswith(".") for name in os.listdir(sb.workspace.parent)), "no leftovers"
