"""The moment of loss, done carelessly: on a new machine (an empty HOME, no config file, no
cache, no pins), a stressed user names the repository a little wrong with `--repo` or gives the
wrong kind of secret. Each mistake is one error naming the cause and the fix, nothing is written
where it should not be, and the right spelling then restores (docs/recipes.md, docs/troubleshooting.md).
"""

from __future__ import annotations

import json
import shutil
import tarfile
from pathlib import Path

import pyrage
import pytest
from e2e_support import PASSPHRASE, Sandbox, assert_error, assert_restored, run_phx, run_phx_here

pytestmark = pytest.mark.phx_in_process


def new_machine(tmp_path: Path, **secrets: str) -> dict[str, str]:
    """A machine that never ran Phoenix: its own HOME and data dirs, and only `secrets`."""
    home = tmp_path / "new-machine"
    home.mkdir()
    return {
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "LANG": "C.UTF-8",
        "HOME": str(home),
        "XDG_CACHE_HOME": str(home / ".cache"),
        "XDG_CONFIG_HOME": str(home / ".config"),
        "XDG_DATA_HOME": str(home / ".local" / "share"),
        **secrets,
    }


def test_repo_naming_a_folder_inside_the_repository_its_parent_or_an_archive_says_where_it_is(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    """`--repo` at `snapshots/` of the repository, at the folder the repository was copied into, or
    at a tarball of it said "create it with `phx init`" (a new, empty repository next to the
    backups) or "is a file, not a folder, while listing index/ …; move it away": now each names
    where the repository is and what to give instead."""
    sb = sandbox
    snap = sb.backup()
    env = new_machine(tmp_path, PHX_PASSPHRASE=PASSPHRASE)
    usb = tmp_path / "usb"
    shutil.copytree(sb.repo, usb / "argent", symlinks=True)
    with tarfile.open(tmp_path / "argent.tar.gz", "w:gz") as tar:
        tar.add(sb.repo, arcname="argent")

    inside = run_phx_here(["list", "--repo", usb / "argent" / "snapshots"], env, code=1)
    line = assert_error(inside, 1, "inside the repository at", str(usb / "argent"), "give that folder")
    assert "phx init" not in line, line
    above = run_phx_here(["list", "--repo", usb], env, code=1)
    line = assert_error(above, 1, f"the repository is the folder {usb / 'argent'}", "give that folder")
    assert "phx init" not in line, line
    dest = tmp_path / "restored"
    archive = run_phx_here(["restore", "--repo", tmp_path / "argent.tar.gz", "--latest", "--to", dest], env, code=1)
    assert_error(archive, 1, "is a file, not a repository folder", "unpack it")
    assert not dest.exists()
    assert not (usb / "config").exists() and not (usb / "argent" / "snapshots" / "config").exists()

    # The right folder then restores, and an empty folder still says `phx init`.
    listed = run_phx_here(["list", "--repo", usb / "argent", "--json"], env).json()
    assert [s["id"] for s in listed] == [snap["id"]]
    (tmp_path / "empty").mkdir()
    assert_error(run_phx_here(["list", "--repo", tmp_path / "empty"], env, code=1), 1, "phx init")


def test_an_age_repository_read_by_repo_without_the_identity_asks_for_the_identity(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    """An age repository on a new machine, `--repo` and no identity: the error said "fix
    encryption.enabled/encryption.method in the config" (there is no config), exit 1, or, with a
    passphrase in PHX_PASSPHRASE, "wrong passphrase" (the repository has no passphrase slot). Now:
    exit 2, the repository is encrypted with age, give --identity FILE or PHX_IDENTITY_FILE."""
    sb = sandbox
    identity = pyrage.x25519.Identity.generate()
    key = tmp_path / "identity.txt"
    key.write_text(f"{identity}\n")
    key.chmod(0o600)
    sb.env.pop("PHX_PASSPHRASE")
    sb.reinit(
        encryption={
            "enabled": True,
            "method": "age",
            "recipients": [str(identity.to_public())],
            "identityFile": str(key),
        }
    )
    snap = sb.backup()

    env = new_machine(tmp_path)
    for secrets in ({}, {"PHX_PASSPHRASE": PASSPHRASE}):
        res = run_phx(["list", "--repo", sb.repo], {**env, **secrets}, check=None)
        line = assert_error(res, 2, "encrypted with age", "--identity FILE", "PHX_IDENTITY_FILE")
        assert "wrong passphrase" not in line and "in the config" not in line, line
    listed = run_phx_here(["list", "--repo", sb.repo, "--json"], {**env, "PHX_IDENTITY_FILE": str(key)}).json()
    assert [s["id"] for s in listed] == [snap["id"]]

    # With a config file that says passphrase, the config is what to fix, and a passphrase in the
    # environment is not called wrong: no passphrase slot was tried.
    config = Path(env["HOME"]) / "backup.json"
    config.write_text(f'{{"workspace": "{sb.workspace}", "backupDir": "{sb.repo}"}}')
    res = run_phx_here(["list", "--config", config], {**env, "PHX_PASSPHRASE": PASSPHRASE}, code=1)
    line = assert_error(res, 1, "no key slot of the configured encryption", "only age", "in the config")
    assert "wrong passphrase" not in line, line


def test_a_copy_that_lacks_the_newest_snapshots_folders_names_the_older_one_to_restore(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    """A copy of the repository made by a tool that stopped midway (`cp -r` killed, a bucket sync
    that copies in parallel) holds the newest snapshot's object but not the pack of its trees:
    `restore --latest` failed with "object data/… is missing from …" alone, no snapshot named,
    no fix. Now: the snapshot, that its folders cannot be read from this copy, and the newest
    older snapshot whose folders read, with `--backup ID`, which then restores whole."""
    sb = sandbox
    first = sb.backup()
    state = sb.state()
    (sb.workspace / "notes").mkdir(exist_ok=True)
    (sb.workspace / "notes" / "after-the-copy.md").write_text("only in the newest snapshot\n")
    before = {p.name for p in (sb.repo / "data").rglob("*") if p.is_file()}
    second = sb.backup()
    copy = tmp_path / "usb"
    shutil.copytree(sb.repo, copy, symlinks=True)
    added = [p for p in (copy / "data").rglob("*") if p.is_file() and p.name not in before]
    assert added, "the second backup wrote no pack"
    for pack in added:  # the copy stopped before the packs the second backup wrote
        pack.unlink()

    env = new_machine(tmp_path, PHX_PASSPHRASE=PASSPHRASE)
    dest = tmp_path / "restored"
    res = run_phx_here(["restore", "--repo", copy, "--latest", "--to", dest], env, code=1)
    assert_error(
        res, 1, f"snapshot {second['name']} ({second['id'][:8]})", "cannot be read", f"--backup {first['id'][:8]}"
    )
    assert not dest.exists()
    doc = run_phx_here(["restore", "--repo", copy, "--backup", first["id"][:8], "--to", dest, "--json"], env).json()
    assert doc["snapshot"] == first["id"] and doc["errors"] == [], doc
    assert_restored(state, dest, "the older snapshot of the copy")


def test_the_restored_config_copied_to_a_new_machine_names_backup_dir_when_the_repository_moved(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    """The restore says: check the config's paths, then copy it to ~/.argentos/backup.json. A user
    who copies it unchanged, with the repository now on a USB disk at another path, got "the folder
    does not exist; … mount it …, or create a new repository there with `phx init`": nothing
    named the config or its `backupDir`. Now the error names both."""
    sb = sandbox
    sb.backup()
    env = new_machine(tmp_path, PHX_PASSPHRASE=PASSPHRASE)
    usb = tmp_path / "usb" / "argent"
    shutil.copytree(sb.repo, usb, symlinks=True)
    old = tmp_path / "old-machine" / "backups" / "argent"  # the config's backupDir, gone with the machine
    config = Path(env["HOME"]) / ".argentos" / "backup.json"
    config.parent.mkdir()
    config.write_text(json.dumps({**sb.config, "backupDir": str(old)}))
    config.chmod(0o600)
    res = run_phx_here(["list"], env, code=1)
    assert_error(res, 1, f"no repository at {old}", "not mounted", str(config), "`backupDir`")
    config.write_text(json.dumps({**sb.config, "backupDir": str(usb)}))
    assert len(run_phx_here(["list", "--json"], env).json()) == 1
