"""`phx key rotate` and replicas: a replica deletes only the old objects the rotation retired
(named in its record, repo/retired.py). A snapshot the first target had lost before the rotation
stays on the replica that holds the only copy (before, the next sync deleted it: lost on every
target); an ordinary rotation still leaves nothing the old key opens on the replica."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import pytest
from attack_support import restored
from e2e_support import Sandbox
from killpoint import run_killed
from moto_support import bare_repo, git
from test_key_rotate_history import _repo

from phoenix_backup.repo.crypto import Sealer
from phoenix_backup.repo.replicate import TargetReport, replicate
from phoenix_backup.repo.repository import sealed_with
from phoenix_backup.storage.local import LocalBackend

# The sandboxes' helpers (the backups that set a test up, the checks after) run phx in this process;
# the commands under test stay real `phx` processes (tests/e2e/conftest.py).
pytestmark = pytest.mark.phx_in_process

HEAVY = os.environ.get("PHX_TEST_HEAVY") == "1"
PREFIXES = ("captures/", "snapshots/", "index/", "data/", "retired/")


def _objects(root: Path) -> set[str]:
    return {
        f.relative_to(root).as_posix()
        for p in PREFIXES
        if (root / p).is_dir()
        for f in (root / p).rglob("*")
        if f.is_file()
    }


def _sync(sb: Sandbox, replica: Path) -> tuple[TargetReport, list[str]]:
    said: list[str] = []
    with _repo(sb) as repo:
        return replicate(repo, "replica", LocalBackend(replica), said.append), said


def _setup(make_sandbox, tmp_path: Path) -> tuple[Sandbox, Path, list[str], Sealer]:
    sb: Sandbox = make_sandbox()
    sb.backup()
    (sb.workspace / "MEMORY.md").write_text("# Memory\nsomething new the agent learned\n")
    sb.backup()
    replica = tmp_path / "replica"
    with _repo(sb) as repo:
        old = repo.sealer
        assert _sync(sb, replica)[0].ok
    return sb, replica, [s["name"] for s in sb.snapshots()], old


def test_a_replica_keeps_the_snapshot_the_first_target_lost_across_a_rotation(make_sandbox, tmp_path: Path) -> None:
    sb, replica, names, _old = _setup(make_sandbox, tmp_path)
    lost = sb.snapshots()[0]
    expected = restored(sb, names[0], tmp_path / "before")
    obj = f"snapshots/{lost['id']}"
    kept = (replica / obj).read_bytes()
    (sb.repo / obj).unlink()  # lost on the first target only
    sb.phx("key", "rotate")
    report, _said = _sync(sb, replica)
    assert (replica / obj).exists(), report  # the only copy is still there (before, the sync deleted it)
    assert (replica / obj).read_bytes() == kept
    assert not report.ok and report.error is not None
    assert "1 snapshot(s) and 0 capture segment(s)" in report.error and obj in report.error, report.error
    assert "phx restore" in report.error and "PHX_DATA_DIR" in report.error, report.error
    # ... and restores from the replica, with its old key, as the message says.
    sb.write_config(targets={"local": {"enabled": True, "path": str(replica)}})
    fresh = sb.env_with(PHX_DATA_DIR=str(tmp_path / "fresh-data"))
    assert restored(sb, names[0], tmp_path / "after", env=fresh) == expected
    # Deleted from the replica as the message says, the next sync brings it over.
    (replica / obj).unlink()
    sb.write_config(targets={"local": {"enabled": True}})
    report, _said = _sync(sb, replica)
    assert report.ok, report.error
    assert _objects(replica) == _objects(sb.repo)


def test_an_ordinary_rotation_leaves_nothing_the_old_key_opens_on_a_replica(make_sandbox, tmp_path: Path) -> None:
    sb, replica, _names, old = _setup(make_sandbox, tmp_path)
    sb.phx("key", "rotate")
    report, _said = _sync(sb, replica)
    assert report.ok and report.retired > 0, report
    assert _objects(replica) == _objects(sb.repo)
    backend = LocalBackend(replica)
    assert not [n for n in _objects(replica) if sealed_with(backend, n, old)]
    assert [n for n in _objects(replica) if n.startswith("retired/")]  # the record, copied


def test_a_rotation_killed_between_its_record_and_the_deletions(make_sandbox, tmp_path: Path) -> None:
    """Killed after the record and the switch, before the first old object goes: the repository
    restores everything, a sync keeps the replica whole, the re-run finishes, and the replica then
    holds nothing of the old key."""
    sb, replica, names, old = _setup(make_sandbox, tmp_path)
    expected = {n: restored(sb, n, tmp_path / "before") for n in names}
    env = sb.env_with(PHX_KILL_AT="1", PHX_KILL_MATCH="store.delete(snapshots/", PHX_KILL_ONLY="changes")
    kind, _n, call = run_killed(["key", "rotate"], env, tmp_path / "kill-report")
    assert kind == "killed", call
    assert [n for n in _objects(sb.repo) if n.startswith("retired/")], call  # the record came first
    assert {n: restored(sb, n, tmp_path / "killed") for n in names} == expected
    sb.phx("key", "rotate")
    report, _said = _sync(sb, replica)
    assert report.ok, report.error
    assert _objects(replica) == _objects(sb.repo)
    assert not [n for n in _objects(replica) if sealed_with(LocalBackend(replica), n, old)]
    shutil.rmtree(replica)


def git_replica_ahead(make_sandbox, tmp_path: Path) -> tuple[Sandbox, Path, dict[str, Any], str, dict[str, Any]]:
    """Two backups replicated to a Git target, then the first deleted from the first target only:
    the sandbox, the remote, that snapshot, its object name and what it restored before."""
    sb: Sandbox = make_sandbox()
    remote = bare_repo(sb.root / "remote.git")
    sb.env["PHX_DATA_DIR"] = str(sb.root / "data")
    sb.write_config(targets={"local": {"enabled": True}, "git": {"enabled": True, "repo": str(remote)}})
    sb.backup()
    (sb.workspace / "MEMORY.md").write_text("# Memory\nsomething new the agent learned\n")
    sb.backup()
    lost = sb.snapshots()[0]
    expected = restored(sb, lost["name"], tmp_path / "before")
    obj = f"snapshots/{lost['id']}"
    (sb.repo / obj).unlink()  # lost on the first target only
    return sb, remote, lost, obj, expected


@pytest.mark.skipif(not HEAVY or shutil.which("git") is None, reason="heavy (PHX_TEST_HEAVY=1), with git")
def test_a_git_replica_keeps_the_snapshot_the_first_target_lost(make_sandbox, tmp_path: Path) -> None:
    """The same through the commands, with a Git replica: `phx key rotate` refuses before it
    changes anything, naming the snapshot (it used to rotate, and every sync after it kept the
    replica on the old key); a sync then keeps the replica's copy in its tree, and it restores
    from there."""
    sb, remote, lost, obj, expected = git_replica_ahead(make_sandbox, tmp_path)
    res = sb.phx("key", "rotate", check=None)
    assert res.code == 1 and "re-seal" in res.out + res.err and obj in res.out + res.err, res
    sb.phx("sync")
    assert obj in git("ls-tree", "-r", "--name-only", "main", cwd=remote).split()
    fresh = sb.env_with(PHX_DATA_DIR=str(tmp_path / "fresh-data"))
    assert restored(sb, lost["name"], tmp_path / "after", "--target", "git", env=fresh) == expected


def _lose_resealed(sb: Sandbox, name: str) -> None:
    """Delete, on the first target only, the current copy of snapshot `name` (re-sealed by a rotation)."""
    (sb.repo / f"snapshots/{next(s['id'] for s in sb.snapshots() if s['name'] == name)}").unlink()


@pytest.mark.parametrize("rotations", [1, 2])
def test_a_replica_keeps_its_old_snapshot_when_the_resealed_copy_is_lost(
    make_sandbox, tmp_path: Path, rotations: int
) -> None:
    """A replica that missed the rotation(s) holds the old copy of a snapshot whose re-sealed copy
    the first target lost afterwards (before a second rotation, or before the replica's sync):
    the record names the old copy, but its copy is now the only one, so the replica keeps it
    (before, the sync deleted it: lost on every target)."""
    sb, replica, names, _old = _setup(make_sandbox, tmp_path)
    obj = f"snapshots/{sb.snapshots()[0]['id']}"
    kept = (replica / obj).read_bytes()
    expected = restored(sb, names[0], tmp_path / "before")
    sb.phx("key", "rotate")
    _lose_resealed(sb, names[0])
    if rotations == 2:
        sb.phx("key", "rotate")
    report, _said = _sync(sb, replica)
    assert (replica / obj).exists(), report
    assert (replica / obj).read_bytes() == kept
    assert not report.ok and report.error is not None and obj in report.error, report.error
    assert "1 snapshot(s) and 0 capture segment(s)" in report.error, report.error
    if rotations == 1:
        return  # the recovery, once (under 2 s each)
    # Restored from the replica with its old key as the message says; then, with the snapshots the
    # first target lacks deleted there, the next sync brings it over.
    sb.write_config(targets={"local": {"enabled": True, "path": str(replica)}})
    fresh = sb.env_with(PHX_DATA_DIR=str(tmp_path / "fresh-data"))
    assert restored(sb, names[0], tmp_path / "after", env=fresh) == expected
    sb.write_config(targets={"local": {"enabled": True}})
    for snap in (replica / "snapshots").iterdir():
        if not (sb.repo / "snapshots" / snap.name).exists():
            snap.unlink()
    report, _said = _sync(sb, replica)
    assert report.ok, report.error
    assert _objects(replica) == _objects(sb.repo)
