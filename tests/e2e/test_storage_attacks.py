"""An attacker with write access to the repository's storage but not the passphrase (red team,
DESIGN §5): huge objects planted where Phoenix reads objects whole.

Before the fix, a sparse 64 GiB file under `snapshots/`, `index/` or `keys/` (it costs the
attacker no disk) stopped `phx list`, `backup` and `restore` with "unexpected internal error
(MemoryError): a bug in Phoenix", and a 2 GB one made every `phx list` take 2 GB of memory.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from e2e_support import Sandbox, assert_error, assert_restored, new_sandbox, run_phx
from moto_support import bare_repo, git

from phoenix_backup.storage.base import ObjectInfo
from phoenix_backup.storage.git import clone_dir

# The sandboxes' helpers (the backups that set a test up, the checks after) run phx in this process;
# the commands under test stay real `phx` processes (tests/e2e/conftest.py).
pytestmark = pytest.mark.phx_in_process

GiB = 1 << 30
# Address space for each `phx` run: far above what these commands need, far below 64 GiB.
LIMITED = ["prlimit", f"--as={4 * GiB}", "--"]


def plant_sparse(path: Path, size: int = 64 * GiB) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        f.truncate(size)


def limited(sb: Sandbox, *args: str | Path, check: bool | int | None = True) -> str:
    res = run_phx([str(a) for a in args], sb.env, check=check, prefix=LIMITED, timeout=120)
    return res.out + res.err


def test_huge_planted_objects_are_refused_unread_and_lose_nothing(tmp_path: Path) -> None:
    sb = new_sandbox(tmp_path)
    sid = sb.backup()["id"]
    state = sb.state()
    planted = ["snapshots/" + "ab" * 32, "index/" + "cd" * 32, "keys/" + "ef" * 8]
    for name in planted:
        plant_sparse(sb.repo / name)

    assert sid[:8] in limited(sb, "list")
    limited(sb, "restore", "--latest", "--to", tmp_path / "out", "--yes")
    assert_restored(state, tmp_path / "out", "restore beside the planted objects")
    limited(sb, "backup")
    report = limited(sb, "verify", check=1)
    for name in planted:
        assert f"{name} in {sb.repo} is 68,719,476,736 bytes, more than any object of its kind" in report, report
    assert "MemoryError" not in report

    # A planted config is the repository's only config: one clear error, nothing read.
    os.unlink(sb.repo / "config")
    plant_sparse(sb.repo / "config")
    res = run_phx(["list"], sb.env, check=1, prefix=LIMITED)
    assert_error(res, 1, "config in", "more than any object of its kind", "phx repair objects --from")


def tree_of(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def swap_for_link(folder: Path, outside: Path) -> None:
    """Move `folder` out of the repository to `outside` and leave a link to it in its place."""
    shutil.move(folder, outside)
    folder.symlink_to(outside, target_is_directory=True)


def test_a_folder_of_the_repository_swapped_for_a_link_is_never_followed(tmp_path: Path) -> None:
    """Before the fix, `locks`, `snapshots` or `index` replaced with a link made `phx backup`
    write its lock, index and snapshot into the folder the link names (as root: any folder), and
    `data` made it write its packs there; a prune deletes through it too."""
    sb = new_sandbox(tmp_path)
    sb.backup()
    for folder in ("locks", "snapshots", "index", "data"):
        outside = tmp_path / f"outside-{folder}"
        if not (sb.repo / folder).exists():
            (sb.repo / folder).mkdir()
        swap_for_link(sb.repo / folder, outside)
        before = tree_of(outside)
        (sb.workspace / "memory" / f"after-{folder}.md").write_text(f"written with {folder} a link\n")
        res = sb.phx("backup", check=1)
        assert_error(res, 1, f"{sb.repo / folder} is a symbolic link to {outside}, not a folder", "nothing was")
        assert tree_of(outside) == before, f"phx wrote through the link {folder}"
        sb.phx("prune", check=1)
        assert tree_of(outside) == before, f"phx deleted through the link {folder}"
        (sb.repo / folder).unlink()
        shutil.move(outside, sb.repo / folder)
    sb.backup()
    sb.verify("--read-data")


def test_an_object_that_is_a_link_is_skipped_and_never_read(tmp_path: Path) -> None:
    sb = new_sandbox(tmp_path)
    sid = sb.backup()["id"]
    secret = tmp_path / "secret.txt"
    secret.write_text("not the repository's\n")
    (sb.repo / "snapshots" / ("ab" * 32)).symlink_to(secret)
    res = sb.phx("list")
    assert sid[:8] in res.out
    assert f"skipped snapshots/{'ab' * 32} in {sb.repo}: it is not a file" in res.err


def test_a_link_pushed_to_a_git_remote_is_never_followed(tmp_path: Path) -> None:
    """Someone with the Git host account pushes (no force needed) a commit that makes `snapshots`
    and `data/00` links to folders of the owner's machine. Before the fix, the owner's next backup
    checked them out in its clone and wrote its snapshot and packs into those folders."""
    if shutil.which("git") is None:
        pytest.skip("git is not installed")
    sb = new_sandbox(tmp_path)
    sb.env["PHX_DATA_DIR"] = str(sb.root / "data")
    remote = bare_repo(tmp_path / "remote.git")
    sb.write_config(
        targets={
            "local": {"enabled": True},
            "git": {"enabled": True, "repo": str(remote), "branch": "main", "autoCommit": True},
        }
    )
    sb.backup()
    outside = tmp_path / "owners-folder"
    outside.mkdir()
    attacker = tmp_path / "attacker"
    git("clone", "-q", "-b", "main", str(remote), str(attacker))
    for folder in ("snapshots", "data/00"):
        shutil.rmtree(attacker / folder, ignore_errors=True)
        (attacker / folder).symlink_to(outside, target_is_directory=True)
    git("add", "-A", cwd=attacker)
    git("commit", "-q", "-m", "links", cwd=attacker)
    git("push", "-q", "origin", "main", cwd=attacker)
    # The owner's clone is lost (a new machine, a cleaned data dir): the next run clones again.
    shutil.rmtree(clone_dir(sb.env, str(remote), "main"))

    (sb.workspace / "memory" / "after.md").write_text("written after the links were pushed\n")
    res = sb.phx("backup", "--json", check=3)
    targets = res.json()["targets"]
    assert targets["local"]["ok"] and not targets["git"]["ok"], targets
    assert "snapshots is a symbolic link to" in targets["git"]["error"], targets["git"]
    assert list(outside.iterdir()) == [], "phx wrote through a link in its Git clone"
    res = sb.phx("restore", "--target", "git", "--latest", "--to", tmp_path / "out", check=1)
    assert "snapshots is a symbolic link to" in res.err
    assert list(outside.iterdir()) == []


def test_a_damaged_newest_snapshot_is_never_passed_over_in_silence(tmp_path: Path) -> None:
    """The newest snapshot's object damaged (or replaced by one of another repository with the same
    passphrase): its time cannot be read, so `latest` is the one before. Before the fix, `list`
    showed the older snapshots and `restore --latest` restored the older state, both without a
    word: the owner believed they had the newest backup back."""
    sb = new_sandbox(tmp_path)
    older = sb.backup()["id"]
    older_state = sb.state()
    (sb.workspace / "memory" / "newest.md").write_text("only in the newest snapshot\n")
    newest = sb.backup()["id"]
    (sb.repo / "snapshots" / newest).write_bytes(os.urandom(600))

    res = sb.phx("list")
    assert older[:8] in res.out and newest[:8] not in res.out
    assert f"1 snapshot cannot be read (snapshots/{newest}" in res.err, res.err
    assert "phx verify" in res.err
    res = sb.phx("restore", "--latest", "--to", tmp_path / "out")
    assert f"1 snapshot cannot be read (snapshots/{newest}" in res.err, res.err
    assert f"`latest` is {older[:8]}" in res.err, res.err
    assert_restored(older_state, tmp_path / "out", "the older snapshot, said to be so")
    report = sb.phx("verify", check=1).out
    assert f"error: snapshots/{newest} (snapshot {newest[:8]}): " in report, report
    assert "None" not in report, report
    # With no snapshot left that can be read, a command resolving one says so, never that no
    # backup was ever made.
    (sb.repo / "snapshots" / older).write_bytes(os.urandom(600))
    res = sb.phx("restore", "--latest", "--to", tmp_path / "out2", check=None)
    assert_error(res, 1, "no snapshot of the repository can be read", "phx verify")
    assert "no snapshots yet" not in res.out + res.err, res
    assert not (tmp_path / "out2").exists()


def test_init_over_a_planted_keys_link_deletes_nothing_outside(tmp_path: Path) -> None:
    """Someone who can write the storage folder leaves what an interrupted `init` leaves, but with
    `keys` a link to a folder of the owner's. Before the fix, `phx init` there took it for an
    interrupted init and deleted every file of the folder the link names (as root: any folder)."""
    sb = new_sandbox(tmp_path)
    shutil.rmtree(sb.repo)
    outside = tmp_path / "owners-folder"
    outside.mkdir()
    (outside / "thesis.md").write_text("years of work\n")
    sb.repo.mkdir()
    (sb.repo / "keys").symlink_to(outside, target_is_directory=True)
    (sb.repo / "data").mkdir()

    with pytest.raises(Exception, match="keys is a symbolic link to"):
        sb.init_repository()
    assert tree_of(outside) == {"thesis.md": b"years of work\n"}


def test_the_only_snapshot_damaged_is_not_called_no_snapshot_at_all(tmp_path: Path) -> None:
    """Every snapshot object damaged (a repository of one backup, say). Before the fix,
    `restore --latest` said "the repository holds no snapshots yet; run `phx backup` first", with
    no word of the damaged one: the owner believed the backup had never been made."""
    sb = new_sandbox(tmp_path)
    sid = sb.backup()["id"]
    (sb.repo / "snapshots" / sid).write_bytes(os.urandom(600))
    res = sb.phx("restore", "--latest", "--to", tmp_path / "out", check=1)
    assert "holds no snapshots yet" not in res.err, res.err
    assert f"1 snapshot cannot be read (snapshots/{sid}" in res.err, res.err
    assert "phx verify" in res.err
    assert not (tmp_path / "out").exists()


def test_a_snapshot_forgotten_while_listing_is_no_damaged_snapshot(tmp_path: Path) -> None:
    """Another machine's `phx forget` deletes a snapshot after this machine listed `snapshots/` and
    before it read that object (or an S3 listing still names a deleted object). Before the fix,
    `phx list` and `restore --latest` then warned that a damaged or planted snapshot may be newer
    than every readable one, and sent the owner to `phx verify` and `phx repair` for nothing."""
    from phoenix_backup.config import load_config
    from phoenix_backup.ops.context import Environment, open_repository

    sb = new_sandbox(tmp_path)
    kept = sb.backup()["id"]
    (sb.workspace / "memory" / "second.md").write_text("second\n")
    forgotten = sb.backup()["id"]
    notices: list[str] = []
    repo = open_repository(load_config(sb.config_path, sb.env), Environment(env=sb.env))
    try:
        repo.notice = notices.append
        listing = repo.backend.list

        def forget_meanwhile(prefix: str) -> Iterator[ObjectInfo]:
            names = list(listing(prefix))
            (sb.repo / "snapshots" / forgotten).unlink(missing_ok=True)  # the other machine's forget, now
            yield from names

        repo.backend.list = forget_meanwhile  # type: ignore[method-assign]
        snaps = repo.list_snapshots()
        assert [s.id for s in snaps] == [kept]
        repo.damaged_snapshots_notice()
        assert repo.find_snapshot("latest", snaps).id == kept
    finally:
        repo.close()
    assert not [n for n in notices if "cannot be read" in n], notices


def test_verify_takes_a_snapshot_forgotten_meanwhile_for_no_damage(tmp_path: Path) -> None:
    """`phx verify` lists `snapshots/`, and another machine's `phx forget` deletes one of them
    before verify reads it. Before the fix, verify reported that snapshot as damaged (an error:
    exit 1) though the repository was whole. A snapshot there but unreadable is still an error."""
    from phoenix_backup.config import load_config
    from phoenix_backup.ops.context import Environment, open_repository
    from phoenix_backup.repo.checker import verify_repository

    sb = new_sandbox(tmp_path)
    sb.backup()
    (sb.workspace / "memory" / "second.md").write_text("second\n")
    forgotten = sb.backup()["id"]
    planted = "ab" * 32

    def verify_while_forgetting() -> tuple[list[str], list[str]]:
        repo = open_repository(load_config(sb.config_path, sb.env), Environment(env=sb.env))
        try:
            listing = repo.backend.list

            def forget_meanwhile(prefix: str) -> Iterator[ObjectInfo]:
                names = list(listing(prefix))
                if prefix == "snapshots/":
                    (sb.repo / "snapshots" / forgotten).unlink(missing_ok=True)  # the other machine's forget
                yield from names

            repo.backend.list = forget_meanwhile  # type: ignore[method-assign]
            result = verify_repository(repo)
        finally:
            repo.close()
        return [e.object for e in result.errors], result.notices

    errors, notices = verify_while_forgetting()
    assert errors == [], errors
    assert any(f"snapshots/{forgotten} was deleted while verify ran" in n for n in notices), notices

    # Present but unreadable is damage, as before.
    (sb.repo / "snapshots" / planted).write_bytes(b"not a snapshot")
    errors, notices = verify_while_forgetting()
    assert errors == [f"snapshots/{planted}"], errors


def test_a_snapshot_the_storage_lists_but_answers_not_found_for_is_damage(tmp_path: Path) -> None:
    """Adversary of the fix above: storage (or a proxy in front of it) that still lists the newest
    snapshot but answers "not found" to every read of it, so that backup is lost. Before, verify
    took it for one forgotten meanwhile (a notice, exit 0) and the rollback check counted it as
    there. A second listing tells the two apart: a snapshot forgotten elsewhere is no longer listed."""
    from phoenix_backup.config import load_config
    from phoenix_backup.errors import ObjectNotFound
    from phoenix_backup.ops.context import Environment, open_repository
    from phoenix_backup.repo.checker import verify_repository

    sb = new_sandbox(tmp_path)
    sb.backup()
    (sb.workspace / "memory" / "second.md").write_text("second\n")
    withheld = sb.backup()["id"]
    repo = open_repository(load_config(sb.config_path, sb.env), Environment(env=sb.env))
    try:
        reading = repo.backend.read

        def not_found(name: str) -> bytes:
            if name == f"snapshots/{withheld}":
                raise ObjectNotFound(f"{name} does not exist")
            return reading(name)

        repo.backend.read = not_found  # type: ignore[method-assign]
        result = verify_repository(repo)
        assert repo.problems.damaged_snapshots == {f"snapshots/{withheld}"}
    finally:
        repo.close()
    assert [e.object for e in result.errors] == [f"snapshots/{withheld}"], (result.errors, result.notices)
    assert not [n for n in result.notices if "deleted while verify ran" in n], result.notices
