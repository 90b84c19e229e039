"""A replica's storage written by someone else, and what a sync costs: a Git remote whose history
deleted the snapshots (a junk commit pushed on top), and each sync reading every snapshot."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from test_retention_prune import KB, contents, take_snapshot

from phoenix_backup.repo import keys
from phoenix_backup.repo.replicate import replicate
from phoenix_backup.repo.repository import Repository
from phoenix_backup.storage.git import GitBackend
from phoenix_backup.storage.local import LocalBackend

ENV = {
    "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
    "GIT_CONFIG_NOSYSTEM": "1",
    "GIT_AUTHOR_NAME": "someone",
    "GIT_AUTHOR_EMAIL": "someone@example.invalid",
    "GIT_COMMITTER_NAME": "someone",
    "GIT_COMMITTER_EMAIL": "someone@example.invalid",
}


def _git(*args: str, cwd: Path) -> str:
    env = {**ENV, "HOME": str(cwd)}
    return subprocess.run(["git", *args], cwd=cwd, env=env, capture_output=True, text=True, check=True).stdout


def git_replica(tmp_path: Path) -> tuple[Path, Callable[[], GitBackend]]:
    """A bare Git remote and a maker of the Git target that syncs to it (a clone of its own)."""
    remote = tmp_path / "remote.git"
    (tmp_path / "home").mkdir()
    _git("init", "-q", "--bare", str(remote), cwd=tmp_path)

    def backend() -> GitBackend:
        return GitBackend(str(remote), "main", True, tmp_path / "clone", {**ENV, "HOME": str(tmp_path / "home")})

    return remote, backend


def _remote_snapshots(remote: Path) -> set[str]:
    return set(_git("ls-tree", "-r", "--name-only", "main", "snapshots/", cwd=remote).split())


@pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")
def test_a_commit_pushed_on_top_deleting_the_snapshots_does_not_leave_the_remote_without_them(tmp_path: Path) -> None:
    """Someone with push access committed the deletion of `snapshots/` on top of the remote. The
    next sync (nothing to copy but a new backup's objects) merged that commit when its push was
    refused and pushed: exit 0, and a remote without the snapshots the first target holds (and
    Phoenix wrote there), until the sync after it copied them again."""
    first = Repository.init(LocalBackend(tmp_path / "first"), keys.wrap_none, False)
    take_snapshot(first, {"a.bin": os.urandom(8 * KB)}, "2026-03-01T02:00:00+00:00")
    remote, backend = git_replica(tmp_path)
    assert replicate(first, "git", backend(), print).ok
    assert len(_remote_snapshots(remote)) == 1
    other = tmp_path / "other"
    _git("clone", "-q", "-b", "main", str(remote), str(other), cwd=tmp_path)
    _git("rm", "-q", "-r", "snapshots", cwd=other)
    _git("commit", "-q", "-m", "cleanup", cwd=other)
    _git("push", "-q", "origin", "main", cwd=other)
    assert _remote_snapshots(remote) == set()

    take_snapshot(first, {"b.bin": os.urandom(8 * KB)}, "2026-03-02T02:00:00+00:00")
    said: list[str] = []
    report = replicate(first, "git", backend(), said.append)
    ours = {info.name for info in first.backend.list("snapshots/")}
    assert _remote_snapshots(remote) == ours, report
    assert report.ok, report.error
    assert any("1 snapshot(s)" in s and "deleted" in s for s in said), said

    # A `phx forget` of another machine deletes on every target, the first one too: no warning,
    # and the snapshot is not brought back.
    forgotten = sorted(ours)[0]
    _git("pull", "-q", "origin", "main", cwd=other)
    _git("rm", "-q", forgotten, cwd=other)
    _git("commit", "-q", "-m", "phoenix forget", cwd=other)
    _git("push", "-q", "origin", "main", cwd=other)
    first.backend.delete(forgotten)
    take_snapshot(first, {"c.bin": os.urandom(8 * KB)}, "2026-03-03T02:00:00+00:00")
    said.clear()
    report = replicate(first, "git", backend(), said.append)
    assert report.ok, report.error
    assert _remote_snapshots(remote) == {info.name for info in first.backend.list("snapshots/")}
    assert forgotten not in _remote_snapshots(remote)
    assert not [s for s in said if "deleted" in s], said


def test_a_sync_with_nothing_new_reads_no_snapshot(tmp_path: Path) -> None:
    """Each sync (each backup's replication) read every snapshot of the first target, to know the
    order to copy them in: 21 reads with 20 backups, with nothing to copy. Only those the replica
    lacks are read now."""
    first = Repository.init(LocalBackend(tmp_path / "first"), keys.wrap_none, False)
    for day in range(1, 6):
        take_snapshot(first, {f"{day}.bin": os.urandom(KB)}, f"2026-03-0{day}T02:00:00+00:00")
    assert replicate(first, "x", LocalBackend(tmp_path / "x"), print).ok
    read: list[str] = []

    class Counting(LocalBackend):
        def read(self, name: str) -> bytes:
            read.append(name)
            return super().read(name)

    again = Repository.open(Counting(tmp_path / "first"), keys.Credentials(passphrase=None))
    report = replicate(again, "x", LocalBackend(tmp_path / "x"), print)
    assert report.ok, report.error
    assert [n for n in read if n.startswith("snapshots/")] == []

    take_snapshot(again, {"6.bin": os.urandom(KB)}, "2026-03-06T02:00:00+00:00")
    shutil.rmtree(tmp_path / "x" / "snapshots")  # all gone there: copied oldest first
    read.clear()
    report = replicate(again, "x", LocalBackend(tmp_path / "x"), print)
    assert report.ok, report.error
    assert report.snapshots == 6
    assert len([n for n in read if n.startswith("snapshots/")]) == 12  # each read to order it, then copied
    replica = Repository.open(LocalBackend(tmp_path / "x"), keys.Credentials(passphrase=None))
    assert [s.name for s in replica.list_snapshots()] == [s.name for s in again.list_snapshots()]


def test_a_pack_the_first_target_lost_is_taken_from_another_replica_that_holds_it(tmp_path: Path) -> None:
    """The first target lost a pack that replica `y` holds. A sync to a new replica `z` copied
    the snapshots needing it without it (exit 3, naming the pack): restoring them from `z` failed
    ("not found") though the repository's other target held the pack. It is taken from `y` now
    (checked against its name), so `z` restores everything; the sync still fails for the first
    target's loss, naming the target that holds a copy for `phx repair objects --from`."""
    first = Repository.init(LocalBackend(tmp_path / "first"), keys.wrap_none, False)
    take_snapshot(first, {"a.bin": os.urandom(8 * KB)}, "2026-03-01T02:00:00+00:00")
    take_snapshot(first, {"b.bin": os.urandom(8 * KB)}, "2026-03-02T02:00:00+00:00")
    whole = contents(first)
    assert replicate(first, "y", LocalBackend(tmp_path / "y"), print).ok
    lost = sorted(info.name for info in first.backend.list("data/"))[0]
    first.backend.delete(lost)

    others = {"y": LocalBackend(tmp_path / "y")}
    report = replicate(first, "z", LocalBackend(tmp_path / "z"), print, others=others)
    assert not report.ok
    assert lost in (report.error or "") and "target y holds a copy" in (report.error or ""), report.error
    replica = Repository.open(LocalBackend(tmp_path / "z"), keys.Credentials(passphrase=None))
    assert contents(replica) == whole


def test_the_sync_output_says_what_it_did_not_read_back() -> None:
    """`phx sync` said "ok, already up to date" for a replica holding a pack of the right size with
    other bytes (or one its listing names that it answers "not found" for): a sync takes what a
    replica holds from its listing. The output says so, and how to read it back."""
    from phoenix_backup.cli import render
    from phoenix_backup.ops.sync import SyncResult
    from phoenix_backup.repo.replicate import TargetReport

    text = render.sync(SyncResult("local", {"s3": TargetReport("s3")}))
    assert "target s3: ok, already up to date" in text
    assert "not read back" in text and "phx verify --target NAME --read-data" in text
