"""The moment of loss, done carelessly: on a new machine (an empty HOME, no config file, no
cache, no pins), a stressed user names the repository a little wrong with `--repo` or gives the
wrong kind of secret. Each mistake is one error naming the cause and the fix, nothing is written
where it should not be, and the right spelling then restores (docs/recipes.md, docs/troubleshooting.md).
"""

from __future__ import annotations

import json
import shutil
import socket
import tarfile
from pathlib import Path

import pyrage
import pytest
from e2e_support import (
    PASSPHRASE,
    Sandbox,
    assert_error,
    assert_restored,
    damage_blob,
    file_manifest,
    new_machine,
    run_phx,
    run_phx_here,
)
from moto_support import ACCESS_KEY_ID, SECRET_ACCESS_KEY, MotoServer, bare_repo

pytestmark = pytest.mark.phx_in_process


def _age_identity(sb: Sandbox, tmp_path: Path) -> tuple[pyrage.x25519.Identity, Path]:
    """A new age identity in `tmp_path/identity.txt` (mode 600), and no passphrase in `sb`'s
    environment: the machine opens the repository with the identity alone."""
    identity = pyrage.x25519.Identity.generate()
    key = tmp_path / "identity.txt"
    key.write_text(f"{identity}\n")
    key.chmod(0o600)
    sb.env.pop("PHX_PASSPHRASE")
    return identity, key


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
    identity, key = _age_identity(sb, tmp_path)
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
    shutil.rmtree(sb.repo)  # gone with the old machine
    # The restore from the USB disk warns that the config it brings back names a folder not here.
    doc = run_phx_here(["restore", "--repo", usb, "--latest", "--to", tmp_path / "restored", "--json"], env).json()
    said = [w for w in doc["warnings"] if "`backupDir`" in w]
    assert len(said) == 1 and str(sb.repo) in said[0] and doc["phoenixConfig"] in said[0], doc["warnings"]
    old = tmp_path / "old-machine" / "backups" / "argent"  # the config's backupDir, gone with the machine
    config = Path(env["HOME"]) / ".argentos" / "backup.json"
    config.parent.mkdir()
    config.write_text(json.dumps({**sb.config, "backupDir": str(old)}))
    config.chmod(0o600)
    res = run_phx_here(["list"], env, code=1)
    assert_error(res, 1, f"no repository at {old}", "not mounted", str(config), "`backupDir`")
    config.write_text(json.dumps({**sb.config, "backupDir": str(usb)}))
    assert len(run_phx_here(["list", "--json"], env).json()) == 1


@pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")
def test_a_first_target_continued_from_a_replica_sends_reads_to_the_replica(sandbox: Sandbox, tmp_path: Path) -> None:
    """The local disk is lost, the Git replica survives: with the restored config in place, `phx
    init` makes the new local folder continue the repository the replica holds (docs/targets.md),
    but without its snapshots. `phx restore --latest` then said "the repository holds no
    snapshots yet; run `phx backup` first" (and `phx list` "no snapshots yet"), at the moment of
    loss, while target git held them all. Now it names the replica and `--target git`, which restores."""
    sb = sandbox
    remote = bare_repo(tmp_path / "remote.git")
    sb.write_config(targets={"git": {"enabled": True, "repo": str(remote), "branch": "main", "autoCommit": True}})
    state = sb.state()
    snap = sb.backup()
    assert snap["targets"]["git"]["ok"], snap["targets"]
    shutil.rmtree(sb.repo)  # the local disk is gone
    missing = run_phx_here(["list"], sb.env, code=1)
    assert_error(missing, 1, f"no repository at {sb.repo}", "add `--target git`", "`phx init` continues it")
    assert "continues it" in run_phx_here(["init"], sb.env).err

    dest = tmp_path / "restored"
    res = run_phx(["restore", "--latest", "--to", dest], sb.env, check=None)
    line = assert_error(res, 2, "target local holds no snapshots yet", "target git holds 1", "--target git")
    assert "run `phx backup`" not in line, line
    assert not dest.exists()
    listed = run_phx_here(["list"], sb.env)
    assert "target git holds 1" in listed.err and "--target git" in listed.err, listed
    doc = run_phx_here(["restore", "--latest", "--target", "git", "--to", dest, "--json"], sb.env).json()
    assert doc["snapshot"] == snap["id"] and doc["errors"] == [], doc
    assert_restored(state, dest, "restore --target git after init continued the replica")


def test_a_restored_age_config_whose_identity_file_is_missing_never_says_make_a_new_identity(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    """The restored config of an age repository, copied to a new machine, names the old machine's
    identity file. The error said "does not exist; create it with `age-keygen -o PATH`": a new
    identity, which opens no backup. Now it says to copy the identity that opens the repository
    there (or point identityFile/PHX_IDENTITY_FILE at it), and never to make one."""
    sb = sandbox
    identity, key = _age_identity(sb, tmp_path)
    recipient = str(identity.to_public())
    sb.reinit(encryption={"enabled": True, "method": "age", "recipients": [recipient], "identityFile": str(key)})
    snap = sb.backup()
    env = new_machine(tmp_path)
    config = Path(env["HOME"]) / ".argentos" / "backup.json"
    config.parent.mkdir()
    config.write_text(json.dumps({**sb.config, "workspace": str(tmp_path / "argent")}))
    config.chmod(0o600)
    key.rename(tmp_path / "saved-identity.txt")  # the old machine's path is gone; the user kept a copy
    res = run_phx(["list"], env, check=None)
    line = assert_error(res, 2, f"age identity file {key} does not exist", "copy the identity", "PHX_IDENTITY_FILE")
    assert "age-keygen -o" not in line, line
    fixed = {**env, "PHX_IDENTITY_FILE": str(tmp_path / "saved-identity.txt")}
    assert [s["id"] for s in run_phx_here(["list", "--json"], fixed).json()] == [snap["id"]]


@pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")
def test_a_git_remote_named_with_the_wrong_branch_lists_its_branches(sandbox: Sandbox, tmp_path: Path) -> None:
    """The surviving target is a Git remote. `--repo FOLDER#BRANCH` for a bare repository's
    folder (docs/recipes.md: "#BRANCH picks a branch", "a bare repository's folder") was taken for
    a local folder named `remote.git#main` ("the folder does not exist"), and a branch that the
    remote lacks (`#master` for `main`) said "create it with `phx init`". Now the folder with
    `#BRANCH` reads that branch, and a missing branch lists the remote's branches."""
    sb = sandbox
    remote = bare_repo(tmp_path / "remote.git")
    sb.write_config(targets={"git": {"enabled": True, "repo": str(remote), "branch": "main", "autoCommit": True}})
    snap = sb.backup()
    env = new_machine(tmp_path, PHX_PASSPHRASE=PASSPHRASE)
    listed = run_phx_here(["list", "--repo", f"{remote}#main", "--json"], env).json()
    assert [s["id"] for s in listed] == [snap["id"]] and listed[0]["targets"] == ["git"]
    for location in (f"{remote}#master", f"file://{remote}#master"):
        line = assert_error(run_phx_here(["list", "--repo", location], env, code=1), 1, "no branch master", "`#main`")
        assert "phx init" not in line, line
    empty = bare_repo(tmp_path / "empty.git")
    assert_error(run_phx_here(["list", "--repo", empty], env, code=1), 1, "empty Git repository", "check the URL")


def test_a_bucket_prefix_inside_or_above_the_repository_names_its_prefix(
    sandbox: Sandbox, moto: MotoServer, tmp_path: Path
) -> None:
    """The S3 bucket survives. `--repo s3://BUCKET` (the prefix forgotten) or
    `s3://BUCKET/argent/snapshots` said "create it with `phx init`"; now each names the
    repository's location, and an unrelated prefix still says `phx init`."""
    sb = sandbox
    bucket = moto.make_bucket()
    sb.write_config(targets={"s3": moto.target(bucket)})
    snap = sb.backup()
    assert snap["targets"]["s3"]["ok"], snap["targets"]
    env = new_machine(
        tmp_path,
        PHX_PASSPHRASE=PASSPHRASE,
        AWS_ACCESS_KEY_ID=ACCESS_KEY_ID,
        AWS_SECRET_ACCESS_KEY=SECRET_ACCESS_KEY,
        AWS_ENDPOINT_URL=moto.endpoint,
        AWS_EC2_METADATA_DISABLED="true",
    )
    right = f"s3://{bucket}/argent/"
    for location, needle in ((f"s3://{bucket}", "below it"), (f"{right}snapshots", "inside the repository")):
        line = assert_error(run_phx_here(["list", "--repo", location], env, code=1), 1, needle, right, "give that")
        assert "phx init" not in line, line
    assert_error(run_phx_here(["list", "--repo", f"s3://{bucket}/other"], env, code=1), 1, "phx init")
    listed = run_phx_here(["list", "--repo", right, "--json"], env).json()
    assert [s["id"] for s in listed] == [snap["id"]]
    # A bucket holding two machines' repositories: each is named, none picked (it named the first).
    moto.client().put_object(Bucket=bucket, Key="laptop/config", Body=b"{}")
    line = assert_error(
        run_phx_here(["list", "--repo", f"s3://{bucket}"], env, code=1), 1, f"{right}, s3://{bucket}/laptop/"
    )
    assert "give the one to read" in line and "the repository is at" not in line, line


def test_latest_among_several_other_hosts_names_them(
    sandbox: Sandbox, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A repository two machines backed up to, read from a third (new) machine: `latest` has no
    host to take and said "select with ... --host" without naming one host but the newest's. Now
    the error lists the hosts that have such a snapshot, and `--host` with one of them restores."""
    sb = sandbox
    for host in ("old-laptop", "old-desktop"):
        monkeypatch.setattr(socket, "gethostname", lambda host=host: host)
        sb.phx_here("backup", "--json")
    monkeypatch.undo()
    env = new_machine(tmp_path, PHX_PASSPHRASE=PASSPHRASE)
    res = run_phx(["restore", "--repo", sb.repo, "--latest", "--to", tmp_path / "out"], env, check=None)
    assert_error(res, 2, "hosts that have one: old-desktop, old-laptop", "--host")
    doc = run_phx_here(
        ["restore", "--repo", sb.repo, "--latest", "--host", "old-laptop", "--to", tmp_path / "out", "--json"], env
    ).json()
    assert doc["errors"] == [], doc


def test_a_copy_that_lacks_a_files_newest_data_names_the_older_snapshot_that_holds_it(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    """A copy that stopped midway holds the newest snapshot and its folders, but not the pack of
    a file changed in it: the restore gave back everything else, exit 1, and for that file said
    "no other target holds its data" only. The older version was there, in the snapshot before:
    now the output names that snapshot and the `--backup ID --path` that restores it."""
    sb = sandbox
    first = sb.backup()
    old_memory = (sb.workspace / "MEMORY.md").read_bytes()
    (sb.workspace / "MEMORY.md").write_bytes(old_memory + b"\n- written after the first backup\n" * 400)
    sb.backup()
    pack = damage_blob(sb, "workspace/MEMORY.md")  # (the pack of its new data, damaged in the original)
    copy = tmp_path / "usb"
    shutil.copytree(sb.repo, copy, symlinks=True)
    (copy / pack.relative_to(sb.repo)).unlink()  # the copy lacks it

    env = new_machine(tmp_path, PHX_PASSPHRASE=PASSPHRASE)
    doc = run_phx_here(["restore", "--repo", copy, "--latest", "--to", tmp_path / "new", "--json"], env, code=1).json()
    [error] = doc["errors"]
    assert error["path"] == "workspace/MEMORY.md", doc["errors"]
    fix = f"`phx restore --backup {first['id'][:8]} --path 'workspace/MEMORY.md'`"
    assert f"snapshot {first['name']} ({first['id'][:8]}) holds an older version" in error["error"], error
    assert fix in error["error"], error
    out = tmp_path / "older"
    run_phx_here(
        ["restore", "--repo", copy, "--backup", first["id"][:8], "--path", "workspace/MEMORY.md", "--to", out], env
    )
    assert (out / "workspace" / "MEMORY.md").read_bytes() == old_memory


def test_an_in_place_restore_with_the_old_machines_workspace_path_is_refused(sandbox: Sandbox, tmp_path: Path) -> None:
    """The restored config copied as it is to a new machine names the old machine's workspace
    (`/home/olduser/argent`). `phx restore --latest --yes` made that whole path here and put the
    agent there, exit 0. Now, when neither the workspace nor the folder above it exists, it is
    refused before anything is written, naming `workspace` in the config file; fixed, it restores."""
    sb = sandbox
    state = sb.state()
    sb.backup()
    env = new_machine(tmp_path, PHX_PASSPHRASE=PASSPHRASE)
    old = tmp_path / "old-machine" / "home" / "olduser" / "argent"
    config = Path(env["HOME"]) / ".argentos" / "backup.json"
    config.parent.mkdir()
    config.write_text(json.dumps({**sb.config, "workspace": str(old)}))
    config.chmod(0o600)
    res = run_phx(["restore", "--latest", "--yes"], env, check=None)
    assert_error(res, 2, f"the workspace {old} does not exist", str(config), "`workspace`")
    assert not (tmp_path / "old-machine").exists()
    assert sorted(p.name for p in Path(env["HOME"]).iterdir()) == [".argentos"]

    here = Path(env["HOME"]) / "argent"
    config.write_text(json.dumps({**sb.config, "workspace": str(here)}))
    run_phx_here(["restore", "--latest", "--yes"], env)
    assert file_manifest(here) == state["workspace"]


def test_a_new_machine_checks_the_fingerprint_before_the_first_use_with_repo(sandbox: Sandbox, tmp_path: Path) -> None:
    """docs/keys.md and docs/security.md: on a new machine, run `phx key trust FINGERPRINT` before
    anything else. With nothing but the repository there is no config file, and `phx key trust
    --repo LOCATION` said "does not take --repo; ... give a config with --config" (exit 2): the
    check could not be made when it matters. Now it takes --repo: a wrong fingerprint trusts
    nothing (exit 1), the right one is pinned, and the first read is then no first use."""
    sb = sandbox
    sb.backup()
    fingerprint = sb.phx_here("key", "list", "--json").json()[0]["fingerprint"]
    wrong = fingerprint[:-1] + ("0" if fingerprint[-1] != "0" else "1")
    env = new_machine(tmp_path, PHX_PASSPHRASE=PASSPHRASE)
    res = run_phx_here(["key", "trust", wrong, "--repo", sb.repo], env, code=1)
    assert_error(res, 1, f"does not have the key {wrong}", "nothing was trusted")
    assert not (Path(env["XDG_DATA_HOME"]) / "phoenix" / "pins.json").exists()
    run_phx_here(["key", "trust", fingerprint, "--repo", sb.repo], env)
    listed = run_phx_here(["list", "--repo", sb.repo], env)
    assert "first use" not in listed.err, listed


def test_the_older_snapshot_named_for_a_files_missing_data_is_one_whose_data_reads(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    """The hint for a file whose newest data the copy lacks named the older snapshot whose packs
    were listed, "whose data is all here", though its version was damaged in its pack: the
    `--backup ID --path` given then failed too. Now a snapshot is named only when its version
    reads (decrypts and matches); otherwise the error says no copy here holds it."""
    sb = sandbox
    first = sb.backup()
    old_memory = (sb.workspace / "MEMORY.md").read_bytes()
    (sb.workspace / "MEMORY.md").write_bytes(old_memory + b"\n- written after the first backup\n" * 400)
    sb.backup()
    damage_blob(sb, "workspace/MEMORY.md", snapshot=first["id"])  # the older version, damaged in its pack
    pack = damage_blob(sb, "workspace/MEMORY.md")
    copy = tmp_path / "usb"
    shutil.copytree(sb.repo, copy, symlinks=True)
    (copy / pack.relative_to(sb.repo)).unlink()  # the copy lacks the newest version's pack

    env = new_machine(tmp_path, PHX_PASSPHRASE=PASSPHRASE)
    doc = run_phx_here(["restore", "--repo", copy, "--latest", "--to", tmp_path / "new", "--json"], env, code=1).json()
    [error] = doc["errors"]
    assert error["path"] == "workspace/MEMORY.md", doc["errors"]
    assert first["id"][:8] not in error["error"], error
    assert "no other target holds its data" in error["error"], error


def test_files_missing_from_a_copy_read_the_snapshot_list_once_not_once_each(
    sandbox: Sandbox, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each file whose data a copy lacks looked for an older snapshot holding it by listing (and
    reading, decrypting) every snapshot of the repository again: on a repository of 10,000
    snapshots, a copy lacking 1,000 files read 10 million snapshot objects. Now the list is read
    once for the whole restore: the snapshots read do not grow with the files missing."""
    from phoenix_backup.repo.repository import Repository

    sb = sandbox
    sb.backup()
    (sb.workspace / "notes").mkdir(exist_ok=True)
    for i in range(6):
        (sb.workspace / "notes" / f"new-{i}.md").write_text(f"note {i}, written after the first backup\n" * 50)
    sb.backup()
    pack = damage_blob(sb, "workspace/notes/new-0.md")
    copy = tmp_path / "usb"
    shutil.copytree(sb.repo, copy, symlinks=True)
    (copy / pack.relative_to(sb.repo)).unlink()  # the copy lacks the pack of the new notes

    reads: list[str] = []
    load = Repository.load_snapshot

    def counting(self: Repository, sid: str) -> object:
        reads.append(sid)
        return load(self, sid)

    monkeypatch.setattr(Repository, "load_snapshot", counting)
    env = new_machine(tmp_path, PHX_PASSPHRASE=PASSPHRASE)
    doc = run_phx_here(["restore", "--repo", copy, "--latest", "--to", tmp_path / "new", "--json"], env, code=1).json()
    missing = [e["path"] for e in doc["errors"]]
    assert len(missing) >= 4, doc["errors"]
    assert len(reads) <= 2 * 2, f"{len(reads)} snapshot reads for {len(missing)} files missing: {reads}"


def test_an_in_place_restore_to_a_workspace_in_this_home_whose_folder_is_not_made_yet_restores(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    """The same user on a new machine, with the config as it was (`~/agents/argent`): the home is
    here, `~/agents` is not made yet. The guard against the old machine's path refused it (exit 2,
    "may come from another machine"), though nothing is more this machine's than its own home.
    Now a workspace in this home restores; another machine's home is still refused, and a folder
    above that is a link to where nothing is (a disk not mounted) is said to be one."""
    sb = sandbox
    state = sb.state()
    sb.backup()
    env = new_machine(tmp_path, PHX_PASSPHRASE=PASSPHRASE)
    config = Path(env["HOME"]) / ".argentos" / "backup.json"
    config.parent.mkdir()
    config.touch(mode=0o600)
    # `restore --repo --to` bringing back such a config did not warn it is "not on this machine" either.
    from phoenix_backup.ops.restore import _paths_not_here

    config.write_text(json.dumps({**sb.config, "workspace": str(tmp_path / "old-machine" / "argent")}))
    [said] = _paths_not_here(config, Path(env["HOME"]))
    assert "`workspace`" in said and "not on this machine" in said, said
    config.write_text(json.dumps({**sb.config, "workspace": "~/agents/argent"}))
    assert _paths_not_here(config, Path(env["HOME"])) == []
    run_phx_here(["restore", "--latest", "--yes"], env)
    assert file_manifest(Path(env["HOME"]) / "agents" / "argent") == state["workspace"]

    config.write_text(json.dumps({**sb.config, "workspace": "~/../olduser/argent"}))  # another's home
    assert_error(run_phx_here(["restore", "--latest", "--yes"], env, code=2), 2, "does not exist", "`workspace`")
    assert not (tmp_path / "olduser").exists()

    disk = tmp_path / "media" / "disk"  # not mounted: the link points at nothing
    (Path(env["HOME"]) / "data").symlink_to(disk)
    config.write_text(json.dumps({**sb.config, "workspace": str(Path(env["HOME"]) / "data" / "agents" / "argent")}))
    res = run_phx_here(["restore", "--latest", "--yes"], env, code=2)
    assert_error(res, 2, f"{Path(env['HOME']) / 'data'} is a link to {disk}", "not mounted")
    assert not disk.exists()


def test_a_planted_passphrase_slot_in_an_age_repository_still_asks_for_the_identity(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    """Anyone who can write the storage can add a key slot. An age repository with a planted
    passphrase slot, read with `--repo` on a new machine with a passphrase in PHX_PASSPHRASE and
    no identity: the passphrase was tried on the planted slot alone and the error said "wrong
    passphrase" (exit 1), and without any secret "set PHX_PASSPHRASE": the user retypes a
    passphrase the repository never had, and "give --identity" is never said. Now the error
    names the repository's age slots and --identity (a passphrase slot may be the owner's too,
    so it still says to check the passphrase)."""
    import os

    from attack_support import slot_document, write_slot

    sb = sandbox
    identity, key = _age_identity(sb, tmp_path)
    recipients = [str(identity.to_public())]
    sb.reinit(encryption={"enabled": True, "method": "age", "recipients": recipients, "identityFile": str(key)})
    sb.backup()
    params = {"kdf": "scrypt", "n": 2, "r": 1, "p": 1, "salt": "AAAAAAAAAAAAAAAAAAAAAA=="}
    write_slot(sb.repo, slot_document("passphrase", os.urandom(60), **params))

    env = new_machine(tmp_path, PHX_PASSPHRASE=PASSPHRASE)
    res = run_phx_here(["list", "--repo", sb.repo], env, code=1)
    line = assert_error(res, 1, "it has age key slots", "--identity FILE", "PHX_IDENTITY_FILE")
    assert "wrong passphrase" not in line.lower(), line
    # Without any secret it said "encrypted (passphrase); set PHX_PASSPHRASE", naming the planted slot only.
    (tmp_path / "bare").mkdir()
    res = run_phx_here(["list", "--repo", sb.repo], new_machine(tmp_path / "bare"), code=2)
    assert_error(res, 2, "it also has age key slots", "--identity FILE", "PHX_IDENTITY_FILE")


def test_a_missing_repository_is_looked_for_nearby_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Where a missing repository may be (a folder below `--repo`, a Git remote's branches, a
    bucket's prefixes: requests on the network) was looked for twice in each failed opening, once
    to decide and once more for the message. Now once."""
    from phoenix_backup.storage import local

    looked: list[Path] = []
    below = local.repositories_below

    def counting(folder: Path, **kwargs: int) -> list[Path]:
        looked.append(folder)
        return below(folder, **kwargs)

    monkeypatch.setattr(local, "repositories_below", counting)
    env = new_machine(tmp_path, PHX_PASSPHRASE=PASSPHRASE)
    (tmp_path / "empty").mkdir()
    assert_error(run_phx_here(["list", "--repo", tmp_path / "empty"], env, code=1), 1, "phx init")
    assert looked == [tmp_path / "empty"], looked


def test_a_folder_holding_the_repositories_of_several_machines_names_each(sandbox: Sandbox, tmp_path: Path) -> None:
    """A backup disk holding two machines' repositories, `--repo` at the disk: the error named
    one of them, the first the folder listing gave, as "the repository": the user who follows it
    may restore the other machine's agent. Now each is named, and none is picked."""
    sb = sandbox
    sb.backup()
    usb = tmp_path / "usb"
    for machine in ("argent-server", "argent-laptop"):
        shutil.copytree(sb.repo, usb / machine, symlinks=True)
    env = new_machine(tmp_path, PHX_PASSPHRASE=PASSPHRASE)
    res = run_phx_here(["list", "--repo", usb], env, code=1)
    line = assert_error(res, 1, f"{usb / 'argent-laptop'}, {usb / 'argent-server'}", "give the one to read")
    assert "the repository is the folder" not in line, line


def test_key_trust_with_repo_a_little_wrong_says_where_the_repository_is(sandbox: Sandbox, tmp_path: Path) -> None:
    """`phx key trust FINGERPRINT --repo` is the first command on a new machine (docs/keys.md),
    but named at the folder the repository was copied into it said "create one with `phx init`"
    (exit 1): none of the disaster-recovery messages of the other commands. Now it names the
    repository inside, as `phx list --repo` does, and nothing is trusted."""
    sb = sandbox
    sb.backup()
    fingerprint = sb.phx_here("key", "list", "--json").json()[0]["fingerprint"]
    usb = tmp_path / "usb"
    shutil.copytree(sb.repo, usb / "argent", symlinks=True)
    env = new_machine(tmp_path, PHX_PASSPHRASE=PASSPHRASE)
    res = run_phx_here(["key", "trust", fingerprint, "--repo", usb], env, code=1)
    line = assert_error(res, 1, f"the repository is the folder {usb / 'argent'}", "give that folder")
    assert "phx init" not in line, line
    assert not (Path(env["XDG_DATA_HOME"]) / "phoenix" / "pins.json").exists()
    run_phx_here(["key", "trust", fingerprint, "--repo", usb / "argent"], env)


def test_key_trust_pins_the_id_of_the_config_its_key_authenticated(
    sandbox: Sandbox, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`key trust` read the repository's config once for its id, then opened the repository
    (which reads and authenticates it again), and pinned the fingerprint under the first id. A
    hostile store answering the first read with another repository's id (this user's other
    repository) moved that repository's pin to this key. Now the id pinned is the one the key
    authenticated, and a store that answers so is refused."""
    from phoenix_backup.storage.local import LocalBackend

    sb = sandbox
    sb.backup()
    fingerprint = sb.phx_here("key", "list", "--json").json()[0]["fingerprint"]
    real = json.loads((sb.repo / "config").read_bytes())
    forged = json.dumps({**real, "id": "f" * 32}).encode()
    read = LocalBackend.read
    answered: list[str] = []

    def hostile(self: LocalBackend, name: str) -> bytes:
        if name == "config" and not answered:
            answered.append(name)
            return forged
        return read(self, name)

    monkeypatch.setattr(LocalBackend, "read", hostile)
    env = new_machine(tmp_path, PHX_PASSPHRASE=PASSPHRASE)
    res = run_phx_here(["key", "trust", fingerprint, "--repo", sb.repo], env, code=1)
    assert_error(res, 1, "not authenticated by this key", "nothing was read or written")
    pins = Path(env["XDG_DATA_HOME"]) / "phoenix" / "pins.json"
    assert not pins.exists() or "f" * 32 not in pins.read_text(), pins.read_text()
