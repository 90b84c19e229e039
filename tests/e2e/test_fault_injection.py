"""Red team, faults and careless users on the commands the crash suites had not attacked: a key
rotation stopped half-way, an export onto a full disk.

After each fault the repository must open, `phx verify` must pass or name the real damage, the
next command must succeed or say what to do, and no snapshot reported saved may be lost.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import sqlite3
import stat
import struct
import subprocess
import sys
import tarfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from e2e_support import DATABASES, Result, Sandbox, assert_error, db_dump, mount, run_phx, tmpfs_at
from killpoint import run_killed

# The sandboxes' helpers (the backups that set a test up, the checks after) run phx in this process;
# the commands under test stay real `phx` processes (tests/e2e/conftest.py).
pytestmark = pytest.mark.phx_in_process


def _rotate_killed_at(sb: Sandbox, match: str) -> str:
    """`phx key rotate`, SIGKILLed just before its first store call whose description holds
    `match` (tests/e2e/killpoint.py); returns the call it was killed at."""
    env = sb.env_with(PHX_KILL_AT="1", PHX_KILL_MATCH=match, PHX_KILL_ONLY="changes")
    kind, _n, call = run_killed(["key", "rotate"], env, sb.root / "kill-report")
    assert kind == "killed", f"the rotation was not killed before {match}"
    return call


@pytest.mark.parametrize(
    "match",
    [
        "store.write(snapshots/",  # before its commit point: the new key's index is written
        "store.delete(snapshots/",  # after it: the old key's snapshots and index are still there
    ],
)
def test_an_unfinished_key_rotation_is_not_reported_as_damage(sandbox: Sandbox, match: str) -> None:
    """Before, `phx verify` after a rotation stopped half-way (killed, or an I/O error) failed with
    "index/… fails authentication (damaged or tampered)" on a repository that is whole, and `phx
    prune` refused with "run `phx verify` to see what is damaged": the objects are the other key's
    of this machine's own unfinished rotation, which `phx key rotate` run again removes."""
    sb = sandbox
    sb.backup()
    (sb.workspace / "MEMORY.md").write_text("a second state\n")
    sb.backup()
    names = sorted(s["name"] for s in sb.snapshots())
    _rotate_killed_at(sb, match)

    res = sb.phx("verify", "--read-data", "--json", check=None)
    doc = res.json()
    assert res.code == 0 and doc["ok"] is True, f"a whole repository fails verify after an unfinished rotation:\n{res}"
    assert any("phx key rotate" in n for n in doc["notices"]), doc["notices"]
    assert sorted(s["name"] for s in sb.snapshots()) == names

    res = sb.phx("prune", check=None)
    assert res.code == 1 and "`phx key rotate` on this machine did not finish" in res.out, res
    assert "run `phx key rotate` to finish it" in res.out and "damaged" not in res.out + res.err, res
    res = sb.phx("backup", "--json")  # backups go on, and say nothing of damage
    assert not [line for line in res.err.splitlines() if "damaged" in line], res
    names.append(res.json()["name"])

    sb.phx("key", "rotate")
    assert sb.verify("--read-data")["ok"] is True
    assert sorted(s["name"] for s in sb.snapshots()) == sorted(names)
    sb.phx("prune")


def test_an_export_onto_a_full_disk_names_the_cause_and_leaves_nothing(sandbox: Sandbox, tmp_path: Path) -> None:
    """Before: "unexpected internal error (OSError: [Errno 28] No space left on device): a bug in
    Phoenix; run the command again with --verbose and report the traceback"."""
    sb = sandbox
    with tmpfs_at(tmp_path / "small", "256k") as mnt:
        res = sb.phx("export", "--format", "json", "--output", mnt / "export", check=None)
        assert_error(res, 1, f"no space left on the disk of {mnt / 'export'}", "writing the export to")
        assert f"(the file system mounted at {mnt}, " in res.err and "free space there" in res.err
        assert "phx verify" not in res.err
        assert list(mnt.iterdir()) == []


def test_a_full_or_failing_restore_destination_is_named_and_the_repository_is_not_blamed(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    """A full disk or an I/O error on the restore's destination: before, "no space left on the
    device … free some space" (which device?) and "Input/output error … run `phx verify`" (which
    blames the repository, that is fine). Now the destination's path, its file system (and for a
    full disk the space free and the space the file needs) are named, and verify is not, unless
    that file system holds the repository too (then it is the repository's disk that failed)."""
    if shutil.which("strace") is None:
        pytest.skip("strace is not installed")
    sb = sandbox
    doc = sb.backup()

    def restore_with_eio(dest: Path) -> Result:
        # EIO from the destination's disk: every fsync of its workspace folder (strace -P: that folder only).
        inject = ["strace", "-f", "-qq", "-o", "/dev/null", "-P", str(dest / "workspace")]
        inject += ["-e", "trace=fsync", "-e", "inject=fsync:error=EIO"]
        res = run_phx(["restore", "--backup", doc["id"], "--to", str(dest)], sb.env, check=None, prefix=inject)
        if "PTRACE" in res.err or "Operation not permitted" in res.err:
            pytest.skip(f"strace cannot trace here: {res.err.strip()}")
        assert_error(res, 1, "input/output error", f"the disk of {dest / 'workspace'} (the file system mounted at ")
        return res

    # Adversary: on the file system that holds the repository too, the failing disk is the
    # repository's: before, "the repository is not involved" there as well.
    assert os.stat(tmp_path).st_dev == os.stat(sb.repo).st_dev
    res = restore_with_eio(tmp_path / "restored")
    assert f"it holds the repository at {sb.repo} too" in res.err and "run `phx verify`" in res.err, res.err
    assert "the repository is not involved" not in res.err
    assert sb.verify()["ok"] is True
    # A failing destination disk that is not the repository's.
    with tmpfs_at(tmp_path / "other", "64m") as other:
        res = restore_with_eio(other / "restored")
        assert "phx verify" not in res.err and "the repository is not involved" in res.err
    # A quota used up on a disk with room (EDQUOT): before, "no space left on … N GiB free".
    inject = ["strace", "-f", "-qq", "-o", "/dev/null", "-P", str(tmp_path / "quota" / "workspace")]
    inject += ["-e", "trace=fsync", "-e", "inject=fsync:error=EDQUOT"]
    args = ["restore", "--backup", doc["id"], "--to", str(tmp_path / "quota")]
    res = run_phx(args, sb.env, check=None, prefix=inject)
    assert_error(res, 1, f"disk quota exceeded on the disk of {tmp_path / 'quota' / 'workspace'} (the file system")
    assert "within your quota there" in res.err and "no space left" not in res.err and " free)" not in res.err
    # A full destination disk.
    with tmpfs_at(tmp_path / "small", "64k") as mnt:
        res = sb.phx("restore", "--backup", doc["id"], "--to", mnt / "restored", check=None)
        assert_error(res, 1, f"no space left on the disk of {mnt / 'restored'}/", f"mounted at {mnt}, ")
        assert "free space there or choose a destination on another disk" in res.err
        assert " alone needs " in res.err and "phx verify" not in res.err


@pytest.mark.parametrize("inside", [".", "data", "restored"])
def test_a_restore_into_the_repository_folder_is_refused(sandbox: Sandbox, inside: str) -> None:
    """A careless `--to`: before, a restore below the repository's own folder wrote plain copies of
    the workspace and its databases among the encrypted objects (exit 0), where anything that
    copies or syncs the repository folder took them along."""
    sb = sandbox
    doc = sb.backup()
    before = sorted(p.relative_to(sb.repo).as_posix() for p in sb.repo.rglob("*") if "locks" not in p.parts)
    res = sb.phx("restore", "--backup", doc["id"], "--to", sb.repo / inside, check=None)
    assert_error(res, 2, "is inside the repository", "choose a folder outside it")
    after = sorted(p.relative_to(sb.repo).as_posix() for p in sb.repo.rglob("*") if "locks" not in p.parts)
    assert after == before


def test_an_export_into_the_repository_folder_is_refused(sandbox: Sandbox) -> None:
    """The same careless folder for `phx export --output`: before, the plain export (memory rows,
    identity files) was written into the encrypted repository's folder with exit 0."""
    sb = sandbox
    sb.backup()
    before = sorted(p.name for p in sb.repo.iterdir())
    res = sb.phx("export", "--format", "json", "--output", sb.repo / "export", check=None)
    assert_error(res, 2, "is inside the repository", "choose a folder outside it")
    assert sorted(p.name for p in sb.repo.iterdir()) == before


def test_a_restore_into_the_repository_through_a_bind_mount_is_refused(sandbox: Sandbox, tmp_path: Path) -> None:
    """Adversary: the repository's folder reached under another path (a bind mount; the same holds
    for a case-insensitive file system) passed the path comparison, and the restore wrote plain
    copies among the encrypted objects with exit 0. The folder itself is compared now."""
    if os.geteuid() != 0 or not shutil.which("mount"):
        pytest.skip("a bind mount needs root and mount")
    sb = sandbox
    doc = sb.backup()
    alias = tmp_path / "alias"
    alias.mkdir()
    proc = mount("--bind", str(sb.repo), str(alias))
    if proc.returncode != 0:
        pytest.skip(f"cannot bind-mount here: {proc.stderr.strip() or proc.returncode}")
    try:
        before = sorted(p.name for p in sb.repo.iterdir())
        res = sb.phx("restore", "--backup", doc["id"], "--to", alias / "restored", check=None)
        assert_error(res, 2, "is inside the repository", "choose a folder outside it")
        res = sb.phx("export", "--format", "json", "--output", alias / "export", check=None)
        assert_error(res, 2, "is inside the repository", "choose a folder outside it")
        assert sorted(p.name for p in sb.repo.iterdir()) == before
    finally:
        subprocess.run(["umount", "-l", str(alias)], capture_output=True, stdin=subprocess.DEVNULL)


def test_an_io_error_of_the_repository_disk_names_the_disk_and_verify(sandbox: Sandbox) -> None:
    """EIO from the repository's disk (here the first rename of `phx key add`, injected with strace):
    before, "Input/output error while writing locks/… to …", with nothing to do about it."""
    if shutil.which("strace") is None:
        pytest.skip("strace is not installed")
    sb = sandbox
    sb.backup()
    slots = sb.phx("key", "list", "--json").json()
    # The repository's objects are renamed relative to their folder's handle (renameat2): the first
    # rename of either kind is the first object `phx key add` writes.
    renames = "rename,renameat,renameat2"
    inject = [
        "strace",
        "-f",
        "-qq",
        "-o",
        "/dev/null",
        "-e",
        f"trace={renames}",
        "-e",
        f"inject={renames}:error=EIO:when=1",
    ]
    env = sb.env_with(PHX_NEW_PASSPHRASE="another passphrase for the faults")
    res = run_phx(["key", "add", "--method", "passphrase"], env, check=None, prefix=inject)
    if "PTRACE" in res.err or "Operation not permitted" in res.err:
        pytest.skip(f"strace cannot trace here: {res.err.strip()}")
    assert_error(res, 1, "input/output error", "check the disk", "phx verify")
    assert sb.verify("--read-data")["ok"] is True
    assert sb.phx("key", "list", "--json").json() == slots


def test_the_next_command_removes_a_killed_exports_temporary_folder(sandbox: Sandbox, tmp_path: Path) -> None:
    """Before, an export killed while it wrote left `.NAME.phx-tmp-…` beside `--output` for good:
    a hidden folder holding plain copies of the memory stores and identity files."""
    sb = sandbox
    out = tmp_path / "exports" / "memory"
    env = sb.env_with(PHX_KILL_AT="5", PHX_KILL_MATCH=".phx-tmp-")
    kind, _n, call = run_killed(["export", "--format", "json", "--output", str(out)], env, tmp_path / "report")
    assert kind == "killed", "the export was not killed"
    assert [p.name for p in out.parent.iterdir()] != [], f"nothing to clean up after the kill at {call}"
    sb.phx("list")  # any command that loads the config
    assert list(out.parent.iterdir()) == [], f"the killed export (at {call}) left {list(out.parent.iterdir())}"
    sb.phx("export", "--format", "json", "--output", out)
    assert (out / "checksums.json").is_file() and [p.name for p in out.parent.iterdir()] == ["memory"]


def test_the_next_command_removes_a_killed_archives_temporary_file(backed_up: Sandbox, tmp_path: Path) -> None:
    """Before, `phx archive` killed before the rename of its archive left `.NAME.tmp-…` beside
    `--output` for good: a hidden file as large as the snapshot, holding plain copies of its files.
    It is journalled now, as an export's temporary folder is, and the next command removes it."""
    sb = backed_up
    out = tmp_path / "archives" / "agent.tar.gz"
    out.parent.mkdir()
    env = sb.env_with(PHX_KILL_AT="1", PHX_KILL_MATCH="fsync(*/archives/.*tmp-*")
    kind, _n, call = run_killed(["archive", "latest", "--output", str(out)], env, tmp_path / "report")
    assert kind == "killed", "the archive was not killed"
    assert list(out.parent.iterdir()) != [], f"nothing to clean up after the kill at {call}"
    sb.phx("list")  # any command that loads the config
    assert list(out.parent.iterdir()) == [], f"the killed archive (at {call}) left {list(out.parent.iterdir())}"
    sb.phx("archive", "latest", "--output", out)
    assert [p.name for p in out.parent.iterdir()] == ["agent.tar.gz"]


def test_an_archive_makes_its_rename_durable(backed_up: Sandbox, tmp_path: Path) -> None:
    """`phx archive` renamed its file into place and ended, its folder never synced (an export
    syncs it): a power cut right after could lose the archive the command said it wrote. Killed
    at the folder's sync, the archive is already whole under its name."""
    out = tmp_path / "archives" / "agent.tar.gz"
    out.parent.mkdir()
    env = backed_up.env_with(PHX_KILL_AT="1", PHX_KILL_MATCH=f"fsync({out.parent})")
    kind, _n, call = run_killed(["archive", "latest", "--output", str(out)], env, tmp_path / "report")
    assert kind == "killed", "the folder of the archive was never synced after its rename"
    assert [p.name for p in out.parent.iterdir()] == ["agent.tar.gz"], call
    with tarfile.open(out) as tar:
        assert any(n.endswith("/workspace/MEMORY.md") for n in tar.getnames())


def test_the_next_command_removes_a_killed_exports_folder_reached_through_a_symlink(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    """Adversary: `--output LINK/NAME`, LINK a symlink to a folder. The journal named LINK, which
    the clean-up (rightly) does not follow, so it dropped the journal and the killed export's
    plain copies stayed beside NAME for good. The folder the link leads to is journalled now."""
    sb = sandbox
    real = tmp_path / "exports"
    real.mkdir()
    (tmp_path / "link").symlink_to(real)
    out = tmp_path / "link" / "memory"
    env = sb.env_with(PHX_KILL_AT="5", PHX_KILL_MATCH=".phx-tmp-")
    kind, _n, call = run_killed(["export", "--format", "json", "--output", str(out)], env, tmp_path / "report")
    assert kind == "killed", "the export was not killed"
    assert list(real.iterdir()) != [], f"nothing to clean up after the kill at {call}"
    sb.phx("list")  # any command that loads the config
    assert list(real.iterdir()) == [], f"the killed export (at {call}) left {list(real.iterdir())}"


def test_a_copied_object_of_the_rotation_is_damage(sandbox: Sandbox) -> None:
    """Adversary: the index and snapshot objects of this machine's unfinished rotation, copied under
    other names by anyone who can write the storage (damage, "does not match its name", for an
    object of the repository's key), passed as "sealed with the other key of this machine's
    unfinished `phx key rotate` (not damage)" and verify exited 0: authenticating under that key was
    taken as proof, not being whole under its name."""
    sb = sandbox
    sb.backup()
    _rotate_killed_at(sb, "store.delete(snapshots/")  # both keys' snapshots and index are there
    left = [n.split()[0] for n in sb.verify()["notices"] if "other key of this machine's unfinished" in n]
    left = [n for n in left if not n.startswith("data/")]  # a pack is not read whole without --read-data
    assert any(n.startswith("index/") for n in left) and any(n.startswith("snapshots/") for n in left), left
    planted = []
    for name in left:
        copy = hashlib.sha256(name.encode()).hexdigest()
        shutil.copyfile(sb.repo / name, sb.repo / name.split("/")[0] / copy)
        planted.append(copy)
    res = sb.phx("verify", "--json", check=None)
    doc = res.json()
    assert res.code == 1 and doc["ok"] is False, f"planted objects passed as the rotation's leftovers:\n{res}"
    assert not [n for n in doc["notices"] if any(p in n for p in planted)], doc["notices"]
    assert all(p in res.out for p in planted), res


@pytest.mark.parametrize("command", ["forget", "backup"])
def test_a_lock_that_cannot_be_removed_after_the_work_is_a_partial_result(sandbox: Sandbox, command: str) -> None:
    """Everything done, but the lock object cannot be deleted (EIO on its unlink, injected with
    strace on the `locks/` folder alone): before, `phx forget` and `phx backup` exited 1 as if they
    had failed; now exit 3 (partial), one line naming the lock, the target and `phx unlock`."""
    if shutil.which("strace") is None:
        pytest.skip("strace is not installed")
    sb = sandbox
    first = sb.backup()["id"]
    unlinks = "unlink,unlinkat"
    inject = ["strace", "-f", "-qq", "-o", "/dev/null", "-P", str(sb.repo / "locks")]
    inject += ["-e", f"trace={unlinks}", "-e", f"inject={unlinks}:error=EIO"]
    res = run_phx([command], sb.env, check=None, prefix=inject)
    if "PTRACE" in res.err or "Operation not permitted" in res.err:
        pytest.skip(f"strace cannot trace here: {res.err.strip()}")
    left = [p.name for p in (sb.repo / "locks").iterdir()]
    assert len(left) == 1, left
    assert res.code == 3, res
    line = next(x for x in res.err.splitlines() if f"locks/{left[0]}" in x)
    assert f"target local: the {command} lock locks/{left[0]} in {sb.repo} could not be removed" in line, res.err
    assert "run `phx unlock`" in line
    assert "Traceback" not in res.err
    ids = [s["id"] for s in sb.phx("list", "--json").json()]
    assert first in ids and len(ids) == (2 if command == "backup" else 1), ids
    sb.phx("unlock")
    assert not list((sb.repo / "locks").iterdir())
    assert sb.verify()["ok"] is True


def test_an_export_syncs_its_files_and_folders_before_and_after_its_rename(sandbox: Sandbox, tmp_path: Path) -> None:
    """Before, `phx export` renamed its temporary folder into place with no fsync at all: a power
    cut could leave the renamed files empty. Traced with strace: every file and folder of the
    export is fsynced before the rename, and the folder that holds it after."""
    if shutil.which("strace") is None:
        pytest.skip("strace is not installed")
    sb = sandbox
    sb.backup()
    out = tmp_path / "exported"
    log = tmp_path / "strace.log"
    renames = "rename,renameat,renameat2"
    trace = ["strace", "-f", "-qq", "-y", "-o", str(log), "-e", f"trace=fsync,fdatasync,{renames}"]
    res = run_phx(["export", "--format", "json", "--output", str(out)], sb.env, check=None, prefix=trace)
    if "PTRACE" in res.err or "Operation not permitted" in res.err:
        pytest.skip(f"strace cannot trace here: {res.err.strip()}")
    assert res.code == 0, res
    lines = log.read_text().splitlines()
    at = next(i for i, x in enumerate(lines) if "rename" in x and f'"{out}"' in x)
    work = lines[at].split('"')[1]  # the temporary folder renamed into place
    synced = {x.split("<", 1)[1].split(">", 1)[0] for x in lines[:at] if "sync(" in x and "<" in x}
    exported = [p for p in out.rglob("*")]
    assert any(p.is_file() for p in exported)
    for p in exported:
        assert f"{work}/{p.relative_to(out)}" in synced, (p, sorted(synced))
    assert work in synced
    assert any("fsync(" in x and f"<{out.parent}>" in x for x in lines[at:]), lines[at:]


def _backed_up_to_local_and_git(sb: Sandbox) -> tuple[Path, dict[str, Any]]:
    """A local and a Git target (a bare repository beside the sandbox), and a backup to both."""
    from moto_support import bare_repo

    remote = bare_repo(sb.root / "remote.git")
    sb.write_config(
        targets={
            "local": {"enabled": True},
            "git": {"enabled": True, "repo": str(remote), "branch": "main", "autoCommit": True},
        }
    )
    return remote, sb.backup()


@pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")
def test_every_command_writing_plain_copies_refuses_the_repository_folder_alike(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    """`restore --to`, `restore --at … --to` and `export --output` follow one rule: a folder in the
    local repository (the folder itself, or one reached through a link) is refused whichever target
    is read; a sibling whose name merely starts the same is not. Before, `restore --target git
    --to REPO/x` wrote plain copies among the encrypted objects (exit 0), and so did `restore --at`
    as far as it got: they checked only the repository they read."""
    sb = sandbox
    _remote, doc = _backed_up_to_local_and_git(sb)
    assert all(t["ok"] for t in doc["targets"].values()), doc["targets"]
    link = tmp_path / "link-to-repo"
    link.symlink_to(sb.repo)
    before = sorted(p.relative_to(sb.repo).as_posix() for p in sb.repo.rglob("*") if "locks" not in p.parts)
    commands = {
        "restore": ["restore", "--backup", doc["id"], "--to"],
        "restore --target git": ["restore", "--target", "git", "--backup", doc["id"], "--to"],
        "restore --at": ["restore", "--at", datetime.now(UTC).isoformat(timespec="seconds"), "--yes", "--to"],
        "export": ["export", "--format", "json", "--output"],
    }
    for name, args in commands.items():
        for folder in (sb.repo, sb.repo / "x", link / "x"):
            res = sb.phx(*args, folder, check=None)
            assert res.code == 2 and "is inside the repository" in res.err, (name, folder, res)
    after = sorted(p.relative_to(sb.repo).as_posix() for p in sb.repo.rglob("*") if "locks" not in p.parts)
    assert after == before
    sibling = sb.repo.parent / f"{sb.repo.name}-sibling"
    sb.phx("restore", "--target", "git", "--backup", doc["id"], "--to", sibling / "restored")
    sb.phx("export", "--format", "json", "--output", sibling / "export")
    assert (sibling / "export" / "metadata.json").is_file() and any((sibling / "restored").iterdir())


@pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")
def test_a_repo_named_on_the_command_line_does_not_open_the_configured_repository_to_plain_copies(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    """Adversary of the rule above: `--repo LOCATION` replaces the config's targets with the one it
    names, so the configured local repository was no longer checked. Before, `restore --repo GIT
    --to REPO/x` and `export --repo GIT --output REPO/y` wrote plain copies among the configured
    repository's objects (exit 0). Now any local repository above the folder is refused."""
    sb = sandbox
    remote, doc = _backed_up_to_local_and_git(sb)
    other = tmp_path / "other-repo"  # another local repository (a copy of this one)
    shutil.copytree(sb.repo, other)
    before = sorted(p.relative_to(sb.repo).as_posix() for p in sb.repo.rglob("*") if "locks" not in p.parts)
    for args in (
        ["restore", "--repo", remote, "--backup", doc["id"], "--to", sb.repo / "x"],
        ["export", "--repo", remote, "--format", "json", "--output", sb.repo / "y"],
        ["restore", "--repo", remote, "--backup", doc["id"], "--to", other / "data" / "x"],
    ):
        res = sb.phx(*args, check=None)
        assert res.code == 2 and "is inside the repository" in res.err, (args, res)
    after = sorted(p.relative_to(sb.repo).as_posix() for p in sb.repo.rglob("*") if "locks" not in p.parts)
    assert after == before and not (other / "data" / "x").exists()
    sb.phx("restore", "--repo", remote, "--backup", doc["id"], "--to", tmp_path / "restored")
    assert any((tmp_path / "restored").iterdir())


def test_a_lock_left_after_a_failed_check_does_not_turn_the_failure_into_a_partial_result(sandbox: Sandbox) -> None:
    """Adversary of the lock left after the work (exit 3): for every command but backup and forget
    the sentence ended the command as an error whose code was 3 (partial success). Before, `phx
    verify` of a repository with a damaged snapshot whose lock could not be removed exited 3, which
    a monitor reads as "done, with warnings"; now exit 1, as any failure."""
    if shutil.which("strace") is None:
        pytest.skip("strace is not installed")
    sb = sandbox
    sid = sb.backup()["id"]
    (sb.repo / "snapshots" / sid).write_bytes(b"damaged")
    unlinks = "unlink,unlinkat"
    inject = ["strace", "-f", "-qq", "-o", "/dev/null", "-P", str(sb.repo / "locks")]
    inject += ["-e", f"trace={unlinks}", "-e", f"inject={unlinks}:error=EIO"]
    res = run_phx(["verify"], sb.env, check=None, prefix=inject)
    if "PTRACE" in res.err or "Operation not permitted" in res.err:
        pytest.skip(f"strace cannot trace here: {res.err.strip()}")
    assert res.code == 1, res
    assert "could not be removed" in res.err and "run `phx unlock`" in res.err, res.err


def test_an_export_into_the_workspace_is_refused(sandbox: Sandbox) -> None:
    """Before, `phx export --output` inside the workspace was accepted (exit 0): the export, with
    the secrets it holds unless `--sanitize`, landed among the agent's files and the next backup
    took it in. Refused now, as the repository's folder is."""
    sb = sandbox
    sb.backup()
    before = sorted(p.relative_to(sb.workspace).as_posix() for p in sb.workspace.rglob("*"))
    for folder in (sb.workspace / "export", sb.workspace / "memory" / "out"):
        res = sb.phx("export", "--format", "json", "--output", folder, check=None)
        assert_error(res, 2, f"--output {folder} is inside the workspace", "choose a folder outside the workspace")
    assert sorted(p.relative_to(sb.workspace).as_posix() for p in sb.workspace.rglob("*")) == before


def test_an_export_into_an_existing_empty_folder_keeps_its_mode_and_acl(sandbox: Sandbox, tmp_path: Path) -> None:
    """Before, the empty folder given as --output was replaced by a new one of mode 0700: its mode,
    its ACL (here: read for user 65534) and its other extended attributes were lost. The export's
    folder takes them on."""
    sb = sandbox
    sb.backup()
    out = tmp_path / "shared-export"
    out.mkdir()
    if os.geteuid() == 0:  # a folder prepared for another user, as root does
        os.chown(out, 65534, 65534)
    os.chmod(out, 0o2750)
    entry = lambda tag, perm, uid=0xFFFFFFFF: struct.pack("<HHI", tag, perm, uid)  # noqa: E731
    acl = struct.pack("<I", 2) + entry(1, 7) + entry(2, 5, 65534) + entry(4, 5) + entry(0x10, 5) + entry(0x20, 0)
    try:
        os.setxattr(out, "system.posix_acl_access", acl)  # what `setfacl -m u:65534:rx` writes
        os.setxattr(out, "user.note", b"kept")
    except OSError as exc:
        pytest.skip(f"no ACLs or user extended attributes here: {exc}")
    before = {n: os.getxattr(out, n) for n in os.listxattr(out)}
    mode = os.stat(out).st_mode
    owner = (os.stat(out).st_uid, os.stat(out).st_gid)
    res = sb.phx("export", "--format", "json", "--output", out, check=None)
    assert res.code == 0, res
    assert (out / "metadata.json").is_file()
    assert os.stat(out).st_mode == mode, oct(os.stat(out).st_mode)
    assert (os.stat(out).st_uid, os.stat(out).st_gid) == owner
    assert {n: os.getxattr(out, n) for n in os.listxattr(out)} == before
    assert set(before) == {"system.posix_acl_access", "user.note"}


def test_an_export_into_a_plain_empty_folder_is_not_readable_by_other_users(sandbox: Sandbox, tmp_path: Path) -> None:
    """`mkdir out && phx export --output out`: the folder mkdir made under the usual umask 022 is
    0755. Before the empty folder's mode was taken on, the export's folder was 0700; taking the
    mode on whole made the export (every store's rows, and the secrets it holds unless
    --sanitize, in files of mode 0644) readable by every user of the machine. Its owner and group
    bits are taken on; other users get nothing (an ACL entry names a user on purpose)."""
    sb = sandbox
    sb.backup()
    out = tmp_path / "plain"
    out.mkdir()
    os.chmod(out, 0o755)  # what `mkdir` gives under umask 022
    sb.phx("export", "--format", "json", "--output", out)
    assert (out / "metadata.json").is_file()
    assert stat.S_IMODE(os.stat(out).st_mode) == 0o750, oct(os.stat(out).st_mode)


def test_an_io_error_writing_an_export_names_its_disk_and_leaves_nothing(sandbox: Sandbox, tmp_path: Path) -> None:
    """EIO from the output's disk, on the fsync of the folder that receives the export (strace -P:
    that folder only): one sentence naming the destination's disk, exit 1, no temporary folder
    left, and the repository not blamed when the disk is not the repository's."""
    if shutil.which("strace") is None:
        pytest.skip("strace is not installed")
    sb = sandbox
    sb.backup()
    with tmpfs_at(tmp_path / "other", "64m") as mnt:
        parent = mnt / "exports"
        parent.mkdir()
        inject = ["strace", "-f", "-qq", "-o", "/dev/null", "-P", str(parent)]
        inject += ["-e", "trace=fsync", "-e", "inject=fsync:error=EIO"]
        out = parent / "export"
        res = run_phx(["export", "--format", "json", "--output", str(out)], sb.env, check=None, prefix=inject)
        if "PTRACE" in res.err or "Operation not permitted" in res.err:
            pytest.skip(f"strace cannot trace here: {res.err.strip()}")
        assert_error(res, 1, "input/output error", f"the disk of {out} (the file system mounted at {mnt}")
        assert "the repository is not involved" in res.err and "phx verify" not in res.err
        assert not [p for p in parent.iterdir() if p.name.startswith(".phx-tmp-")]
        # The fsync that failed came after the rename: the export is whole in place, and the
        # error says so (before: "while writing the export to …", as if nothing were there).
        assert f"syncing the folder that holds the export {out} (complete there" in res.err
        assert (out / "metadata.json").is_file()


@pytest.mark.parametrize("error", ["EINVAL", "EIO"])
def test_a_journal_that_cannot_be_synced_is_one_error_naming_it(sandbox: Sandbox, error: str) -> None:
    """Before, an fsync of the restore journal that failed (EINVAL: a file system without fsync)
    ended the export as "unexpected internal error (OSError …)"; now one sentence names the
    journal and PHX_CACHE_DIR, exit 1."""
    if shutil.which("strace") is None:
        pytest.skip("strace is not installed")
    sb = sandbox
    sb.backup()
    journals = Path(sb.env["PHX_CACHE_DIR"]) / "restore-journal"
    journals.mkdir(parents=True, exist_ok=True)
    os.chmod(journals, 0o700)
    inject = ["strace", "-f", "-qq", "-o", "/dev/null", "-P", str(journals)]
    inject += ["-e", "trace=fsync", "-e", f"inject=fsync:error={error}"]
    out = sb.root / "exported"
    res = run_phx(["export", "--format", "json", "--output", str(out)], sb.env, check=None, prefix=inject)
    if "PTRACE" in res.err or "Operation not permitted" in res.err:
        pytest.skip(f"strace cannot trace here: {res.err.strip()}")
    assert_error(res, 1, f"while writing the restore journal {journals}/", "PHX_CACHE_DIR")
    assert "internal error" not in res.err and not out.exists()


@pytest.mark.parametrize("error", ["EIO", "ENOSPC", "EXDEV", "EACCES"])
def test_a_failing_rename_of_a_restored_database_names_the_destination(
    sandbox: Sandbox, tmp_path: Path, error: str
) -> None:
    """The rename that puts a restored SQLite database in place fails (strace -P on its folder):
    before, EIO said "Input/output error … run `phx verify`" (the repository blamed), ENOSPC
    "no space left on the device" (which?) and EXDEV "Invalid cross-device link while restoring
    …" (no cause, no fix). Now the one destination message (EIO, ENOSPC), a sentence with the
    cause and the fix (EXDEV, EACCES), exit 1, and no temporary copy left where the database goes."""
    if shutil.which("strace") is None:
        pytest.skip("strace is not installed")
    sb = sandbox
    doc = sb.backup()
    with tmpfs_at(tmp_path / "other", "64m") as mnt:
        dest = mnt / "restored"
        res = run_phx(["restore", "--backup", doc["id"], "--to", str(dest)], sb.env, check=None)
        assert res.code == 0, res
        folder = next(p.parent for p in dest.rglob("memory.db"))
        shutil.rmtree(dest)
        folder.mkdir(parents=True)
        inject = ["strace", "-f", "-qq", "-o", "/dev/null", "-P", str(folder)]
        inject += ["-e", "trace=rename,renameat,renameat2", "-e", f"inject=rename,renameat,renameat2:error={error}"]
        args = ["restore", "--backup", doc["id"], "--databases-only", "--to", str(dest)]
        res = run_phx(args, sb.env, check=None, prefix=inject)
        if "PTRACE" in res.err or "Operation not permitted" in res.err:
            pytest.skip(f"strace cannot trace here: {res.err.strip()}")
        assert ".db" in res.err, res  # the database's rename failed, not a file's
        if error in ("EXDEV", "EACCES"):  # not the disk: what the folder or the file in place refuses
            needle = "permission denied" if error == "EACCES" else "refused the rename over it"
            assert_error(res, 1, needle, "home/.argentos/memory.db")
        else:
            needle = "input/output error" if error == "EIO" else "no space left on the disk of"
            assert_error(res, 1, needle, f"{folder}/", f"(the file system mounted at {mnt}")
        assert "phx verify" not in res.err and "internal error" not in res.err
        assert not [p.name for p in folder.iterdir() if p.name.startswith(".phx-tmp-") or p.name == "memory.db"]


@pytest.mark.parametrize(("call", "on"), [("unlinkat", "folder"), ("fchmod", "database"), ("fsync", "database")])
def test_a_failing_disk_around_a_live_database_restore_names_the_destination(
    sandbox: Sandbox, call: str, on: str
) -> None:
    """After the backup API wrote a live database, the restore sets its mode and owner and syncs
    it, and removes its temporary copy (strace -P: EIO on the database's fchmod or fsync, on the
    unlink in its folder). Before: "Input/output error while restoring in place: the device
    failed … run `phx verify`", which blames the repository and names no disk. Now the
    destination message naming the database's disk, exit 1."""
    if shutil.which("strace") is None:
        pytest.skip("strace is not installed")
    sb = sandbox
    doc = sb.backup()
    live = sb.db_path(DATABASES[0])
    con = sqlite3.connect(live)
    con.execute("CREATE TABLE later (x)")  # changed since: the restore writes it
    con.commit()
    con.close()
    inject = ["strace", "-f", "-qq", "-o", "/dev/null", "-P", str(live.parent if on == "folder" else live)]
    inject += ["-e", f"trace={call}", "-e", f"inject={call}:error=EIO"]
    args = ["restore", "--backup", doc["id"], "--databases-only", "--yes"]
    res = run_phx(args, sb.env, check=None, prefix=inject)
    if "PTRACE" in res.err or "Operation not permitted" in res.err:
        pytest.skip(f"strace cannot trace here: {res.err.strip()}")
    assert_error(res, 1, "input/output error", f"the disk of {live} (the file system mounted at ")
    assert "internal error" not in res.err and "while restoring in place" not in res.err


@pytest.mark.parametrize("call", ["pread64", "close"])
def test_an_io_error_reading_the_live_database_before_a_restore_is_no_internal_error(
    sandbox: Sandbox, call: str
) -> None:
    """Before writing, an in-place restore reads each live database's header (`sqlite_live.probe`,
    for its page size). EIO from that read or from closing it (strace -P on the database) ended
    the restore as "unexpected internal error (OSError: [Errno 5] …)"; now the database counts
    as unreadable, as when opening it fails. EIO on close: the restore goes on and stops with
    one sentence, exit 1, the live database as it was. EIO on every read of that path: the
    unreadable database is replaced whole by the restored one (as when it cannot be opened),
    whose check then cannot read it either: exit 3, the safety snapshot holding the old one."""
    if shutil.which("strace") is None:
        pytest.skip("strace is not installed")
    sb = sandbox
    live = sb.db_path(DATABASES[0])
    backed_up = db_dump(live)
    doc = sb.backup()
    con = sqlite3.connect(live)
    con.execute("CREATE TABLE later (x)")
    con.commit()
    con.close()
    before = live.read_bytes()
    inject = ["strace", "-f", "-qq", "-o", "/dev/null", "-P", str(live)]
    inject += ["-e", f"trace={call}", "-e", f"inject={call}:error=EIO"]
    args = ["restore", "--backup", doc["id"], "--databases-only", "--yes"]
    res = run_phx(args, sb.env, check=None, prefix=inject)
    if "PTRACE" in res.err or "Operation not permitted" in res.err:
        pytest.skip(f"strace cannot trace here: {res.err.strip()}")
    assert "internal error" not in res.out + res.err
    if call == "close":
        assert_error(res, 1, "home/.argentos/memory.db")
        assert live.read_bytes() == before
    else:
        assert res.code == 3, res
        assert "home/.argentos/memory.db: the restored database fails its checks" in res.out
        assert db_dump(live) == backed_up
    assert not [p.name for p in live.parent.iterdir() if p.name.startswith(".phx-tmp-")]


@pytest.mark.parametrize(
    ("error", "needle"), [("ENOSPC", "no space left on the disk of"), ("EIO", "input/output error")]
)
def test_a_full_or_failing_disk_under_a_live_database_names_the_destination(
    sandbox: Sandbox, error: str, needle: str
) -> None:
    """An in-place restore writes a database through SQLite's backup API; its writes to the live
    database (and its WAL) fail (strace -P). Before: "cannot write the restored … into the live
    database (database or disk is full) … stop the processes that use it (or configure
    gateway.stop) and restore again", exit 3 — advice that does not help. Now the destination
    message naming the database's disk, exit 1, and the live database as it was."""
    if shutil.which("strace") is None:
        pytest.skip("strace is not installed")
    sb = sandbox
    doc = sb.backup()
    live = sb.db_path(DATABASES[0])
    con = sqlite3.connect(live)
    con.execute("CREATE TABLE later (x)")
    con.execute("INSERT INTO later VALUES (randomblob(100000))")
    con.commit()
    con.close()
    before = db_dump(live)
    inject = ["strace", "-f", "-qq", "-o", "/dev/null", "-P", str(live), "-P", f"{live}-wal"]
    inject += ["-e", "trace=pwrite64,write", "-e", f"inject=pwrite64,write:error={error}"]
    args = ["restore", "--backup", doc["id"], "--databases-only", "--yes"]
    res = run_phx(args, sb.env, check=None, prefix=inject)
    if "PTRACE" in res.err or "Operation not permitted" in res.err:
        pytest.skip(f"strace cannot trace here: {res.err.strip()}")
    assert_error(res, 1, needle, f"the disk of {live} (the file system mounted at ")
    assert "gateway.stop" not in res.out + res.err and "internal error" not in res.err
    assert db_dump(live) == before
    assert not [p.name for p in live.parent.iterdir() if p.name.startswith(".phx-tmp-")]


# `phx export` run in a Python process that names its temporary folder (the journal's random part
# fixed: `.phx-tmp-PID-START-0badf00d`), attaches strace to itself, aimed at one file of the export
# (strace -P takes exact paths), and only then runs the command.
_EXPORT_AIMED = r"""
import os, subprocess, sys, time
from pathlib import Path
from phoenix_backup.repo.locks import own_start_time
from phoenix_backup.sinks import leftovers

syscall, error, output, name = sys.argv[1:5]
fixed = f"{os.getpid()}-{own_start_time()}-0badf00d"


class Aimed(leftovers.Journal):
    def __init__(self, notice=None):
        super().__init__(notice)
        self.name = fixed
        self.path = leftovers.journal_dir() / fixed


leftovers.Journal = Aimed
target = Path(output).parent / f".phx-tmp-{fixed}" / name
tracer = subprocess.Popen(
    ["strace", "-f", "-qq", "-o", "/dev/null", "-p", str(os.getpid()), "-P", str(target),
     "-e", f"trace={syscall}", "-e", f"inject={syscall}:error={error}"],
    stdin=subprocess.DEVNULL,
)
deadline = time.monotonic() + 30
while "TracerPid:\t0\n" in Path("/proc/self/status").read_text():
    if time.monotonic() > deadline or tracer.poll() is not None:
        sys.exit("strace could not attach (PTRACE)")
    time.sleep(0.05)
from phoenix_backup.cli.main import main

sys.argv = ["phx", "export", "--format", "json", "--output", output]
try:
    code = main()
finally:
    tracer.terminate()
    tracer.wait()
sys.exit(code)
"""


@pytest.mark.parametrize("syscall", ["write", "fsync"])
def test_an_io_error_on_an_exported_file_names_its_disk_and_leaves_nothing(
    sandbox: Sandbox, tmp_path: Path, syscall: str
) -> None:
    """EIO on the write, or on the fsync, of one file of the export (`metadata.json`, strace aimed
    at it): one error naming the output's disk, its file system and "the repository is not
    involved", exit 1, and nothing left: neither `--output` nor the temporary folder."""
    if shutil.which("strace") is None:
        pytest.skip("strace is not installed")
    sb = sandbox
    sb.backup()
    with tmpfs_at(tmp_path / "other", "64m") as mnt:
        out = mnt / "export"
        args = [sys.executable, "-c", _EXPORT_AIMED, syscall, "EIO", str(out), "metadata.json"]
        proc = subprocess.run(args, env=sb.env, capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=180)
        res = Result(proc.returncode, proc.stdout, proc.stderr, ["phx", "export", "--output", str(out)])
        if "PTRACE" in res.err or "Operation not permitted" in res.err:
            pytest.skip(f"strace cannot trace here: {res.err.strip()}")
        assert_error(
            res, 1, f"input/output error while writing the export to {out}", f"(the file system mounted at {mnt})"
        )
        assert "the repository is not involved" in res.err and "phx verify" not in res.err
        assert list(mnt.iterdir()) == []
