"""Acceptance 4: no plaintext of workspace content, no file or folder name and no database row
appears anywhere in an encrypted repository (every byte of every file, and every name, scanned).

The canary content is random bytes around the literal string, so compression cannot be what hides
it: the control run (encryption off, compression off) proves the scan finds it when it is there."""

from __future__ import annotations

import json
import os
import random
import sqlite3
import stat
import subprocess
import tarfile
from pathlib import Path

import pytest
from e2e_support import PASSPHRASE, PHX, Sandbox, run_phx_here, scan_for

CONTENT = b"PHOENIX-CANARY-7f3a"
FILE_NAME = "canary-name-91bd.md"
DIR_NAME = "canary-dir-c4e2"
ROW = "PHOENIX-ROW-CANARY-5d0e"


def plant(sb: Sandbox) -> None:
    rng = random.Random(1234)
    blob = rng.randbytes(20_000) + CONTENT + rng.randbytes(20_000) + CONTENT + b"\n"
    (sb.workspace / FILE_NAME).write_bytes(blob)
    (sb.workspace / DIR_NAME).mkdir()
    (sb.workspace / DIR_NAME / "note.md").write_bytes(rng.randbytes(4096) + CONTENT)
    con = sqlite3.connect(sb.layout.memory_db)
    try:
        con.execute("CREATE TABLE canary (id INTEGER PRIMARY KEY, secret TEXT NOT NULL, noise BLOB)")
        con.execute("INSERT INTO canary(secret, noise) VALUES (?, ?)", (ROW, rng.randbytes(2000)))
        con.commit()
    finally:
        con.close()


NEEDLES = (CONTENT, FILE_NAME.encode(), DIR_NAME.encode(), ROW.encode())


@pytest.mark.parametrize("compression", [True, False], ids=["compressed", "uncompressed"])
def test_encrypted_repository_holds_no_plaintext(sandbox: Sandbox, compression: bool) -> None:
    sb = sandbox
    sb.write_config(compression=compression)
    plant(sb)
    doc = sb.backup()
    assert doc["incomplete"] == []
    sb.backup()  # a second snapshot: parents, incremental trees and a second index too

    assert json.loads((sb.repo / "config").read_bytes())["encryption"] != "none", "repository is not encrypted"
    hits = scan_for(sb.repo, NEEDLES)
    assert hits == [], "plaintext found in the encrypted repository:\n" + "\n".join(hits)
    # Also no workspace or database path and no host-specific names in object names.
    for _dirpath, dirnames, filenames in os.walk(sb.repo):
        for name in dirnames + filenames:
            assert "canary" not in name and ".md" not in name and ".db" not in name, name


def test_control_unencrypted_repository_shows_the_canaries(make_sandbox) -> None:
    """Proves the scan works: with encryption (and compression) off the plaintext is found."""
    sb = make_sandbox(encryption=False)
    sb.write_config(compression=False)
    plant(sb)
    sb.backup()
    hits = scan_for(sb.repo, (CONTENT, ROW.encode()))
    assert any(repr(CONTENT) in h for h in hits), hits
    assert any(repr(ROW.encode()) in h for h in hits), hits


def test_a_key_file_inside_the_workspace_is_never_saved(sandbox: Sandbox, tmp_path: Path) -> None:
    """PHX_PASSPHRASE_FILE inside the workspace was saved in every snapshot, and `phx archive`
    of one snapshot then handed out the passphrase to all of them: it is left out, with a
    warning in the backup and in `phx doctor` naming it and the fix."""
    sb = sandbox
    key = sb.workspace / "secrets" / "phx-passphrase"
    key.parent.mkdir()
    key.write_text(PASSPHRASE + "\n")
    key.chmod(0o600)
    env = sb.env_with(PHX_PASSPHRASE=None, PHX_PASSPHRASE_FILE=str(key))
    doc = sb.phx("backup", "--json", env=env).json()
    said = [w for w in doc["warnings"] if str(key) in w]
    assert len(said) == 1 and "left out of every backup" in said[0] and "move it outside the workspace" in said[0]
    listed = sb.phx("ls", "latest", env=env).out
    assert "workspace/secrets" in listed and "phx-passphrase" not in listed
    archive = tmp_path / "one-snapshot.tar.gz"
    sb.phx("archive", "latest", "--output", archive, env=env)
    with tarfile.open(archive) as tar:
        held = b"".join(f.read() for m in tar.getmembers() if m.isfile() and (f := tar.extractfile(m)) is not None)
    assert PASSPHRASE.encode() not in held
    checks = sb.phx("doctor", "--json", env=env, check=False).json()["checks"]
    assert any(c["name"] == "key file" and c["status"] == "warn" and str(key) in c["message"] for c in checks)


def test_a_key_folder_that_is_the_workspace_itself_leaves_nothing_out(sandbox: Sandbox) -> None:
    """GNUPGHOME set to the workspace itself (or a link to it) is no key file below it: leaving it
    out would leave the whole workspace out of every backup."""
    sb = sandbox
    link = sb.home / "gnupg-link"
    link.symlink_to(sb.workspace)
    for home in (sb.workspace, link):
        doc = sb.phx("backup", "--json", env=sb.env_with(GNUPGHOME=str(home))).json()
        assert not [w for w in doc["warnings"] if "left out of every backup" in w], doc["warnings"]
        assert "workspace/MEMORY.md" in sb.phx("ls", "latest").out


def test_what_a_backup_writes_in_the_data_folder_is_private_under_umask_000(sandbox: Sandbox) -> None:
    """The data folder may be older than Phoenix and open to others (`~/.argentos/backup`, mode
    0755): under umask 000, the state file and the prune record were written mode 0666, for any
    user to change (a state file claiming a fresh integrity check, say). Each file is 0600."""
    sb = sandbox
    data = sb.home / ".argentos" / "backup"
    data.mkdir(parents=True, exist_ok=True)
    data.chmod(0o755)

    def no_umask() -> None:
        os.umask(0)

    res = subprocess.run([PHX, "backup"], env=sb.env, capture_output=True, text=True, preexec_fn=no_umask)
    assert res.returncode == 0, res
    written = {p.name: stat.S_IMODE(p.stat().st_mode) for p in data.rglob("*") if p.is_file() and not p.is_symlink()}
    assert {".last-backup", "prune.json"} <= set(written)
    assert {name: oct(mode) for name, mode in written.items() if mode & 0o077} == {}


def test_a_restore_in_place_never_replaces_the_live_key_file(sandbox: Sandbox) -> None:
    """A snapshot taken before the key file was named (PHX_PASSPHRASE set, the file an ordinary
    workspace file then) holds an old copy of it: a restore in place wrote that copy over the live
    key file (the passphrase that opens the repository lost) and its safety snapshot saved the
    live key. In place, the key file is left as it is, as the config file in use is, and said."""
    sb = sandbox
    key = sb.workspace / "secrets" / "phx-passphrase"
    key.parent.mkdir()
    key.write_text("an-old-passphrase\n")
    sb.phx_here("backup")
    (old,) = (s["id"] for s in json.loads(sb.phx_here("list", "--json").out))
    key.write_text(PASSPHRASE + "\n")
    key.chmod(0o600)
    (sb.workspace / "MEMORY.md").write_text("changed since\n")  # something to restore
    env = sb.env_with(PHX_PASSPHRASE=None, PHX_PASSPHRASE_FILE=str(key))
    res = run_phx_here(["restore", "--backup", old, "--yes"], env)
    assert key.read_text() == PASSPHRASE + "\n"
    assert f"the key file in use ({key}) is not restored in place" in res.err
    snaps = json.loads(run_phx_here(["list", "--json"], env).out)
    safety = [s["id"] for s in snaps if s["id"] != old]
    assert len(safety) == 1
    assert "phx-passphrase" not in run_phx_here(["ls", safety[0]], env).out


def test_an_export_of_the_live_workspace_leaves_the_key_file_out(sandbox: Sandbox, tmp_path: Path) -> None:
    """`phx export` reads the live components (config/ among them) with its own walk, which did not
    leave out a key file a backup leaves out: a passphrase file in config/ was in the export."""
    sb = sandbox
    key = sb.workspace / "config" / "phx-passphrase"
    key.parent.mkdir(exist_ok=True)
    key.write_text(PASSPHRASE + "\n")
    key.chmod(0o600)
    env = sb.env_with(PHX_PASSPHRASE=None, PHX_PASSPHRASE_FILE=str(key))
    out = tmp_path / "export"
    run_phx_here(["export", "--format", "markdown", "--output", str(out)], env)
    assert scan_for(out, (PASSPHRASE.encode(),)) == []
    assert any(p.is_file() for p in out.rglob("*"))


def test_a_key_path_through_a_link_and_dot_dot_leaves_out_no_workspace_file(sandbox: Sandbox) -> None:
    """`ws/vault/../key` with `vault` a link to a folder outside names a key outside the workspace
    (the system follows the link, then `..`), but the rule cut `..` off first (`abspath`) and left
    the user's own `ws/key` out of every backup, with a warning naming a file not in it."""
    sb = sandbox
    outside = sb.home / "private" / "sub"
    outside.mkdir(parents=True)
    (outside.parent / "key").write_text(PASSPHRASE + "\n")
    (sb.workspace / "vault").symlink_to(outside)
    (sb.workspace / "key").write_text("the agent's notes on keys, not a key\n")
    env = sb.env_with(PHX_PASSPHRASE=None, PHX_PASSPHRASE_FILE=f"{sb.workspace}/vault/../key")
    doc = json.loads(run_phx_here(["backup", "--json"], env).out)
    assert not [w for w in doc["warnings"] if "left out of every backup" in w], doc["warnings"]
    listed = run_phx_here(["ls", "latest"], env).out.split()
    assert "workspace/key" in listed, listed


def test_a_hard_link_to_the_key_file_in_the_workspace_is_left_out_too(sandbox: Sandbox) -> None:
    """The key file was left out by its path only: a hard link to it elsewhere in the workspace
    (`ln secrets/key notes/key`) was saved, and the key with it. Every name of it is left out, each
    said."""
    sb = sandbox
    key = sb.workspace / "secrets" / "phx-passphrase"
    key.parent.mkdir()
    key.write_text(PASSPHRASE + "\n")
    key.chmod(0o600)
    other = sb.workspace / "memory" / "notes-on-keys.md"
    os.link(key, other)
    env = sb.env_with(PHX_PASSPHRASE=None, PHX_PASSPHRASE_FILE=str(key))
    doc = json.loads(run_phx_here(["backup", "--json"], env).out)
    assert [w for w in doc["warnings"] if f"{other} is another name (a hard link) of the key file {key}" in w]
    listed = run_phx_here(["ls", doc["id"]], env).out
    assert "workspace/memory/" in listed and "notes-on-keys.md" not in listed
