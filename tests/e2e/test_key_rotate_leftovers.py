"""What `phx key rotate` used to leave behind (task rotrep):

- a replica holding snapshots the first target lacks: the rotation went on (exit 0) and that
  replica stayed on the old key at every later sync, so a revocation after a leak silently left it
  under the leaked key; now the rotation refuses before it changes anything, naming them and the
  way out (a replica out of reach is said, and brought over at its next sync);
- junk planted on a replica (bytes no key opens, under `snapshots/` or `captures/`) kept that
  replica on its old key for ever; now it is named, left in place, and the replica is brought over;
- the integrity check records (`checks/`) were not re-sealed: after a rotation every restore ran
  every check again; now they are re-sealed (naming the snapshots' new ids), also across a kill
  before or after the commit point;
- the rotation record named every pack and index object at each rotation (and carried them into
  the next): it now names only the snapshots and segments replication checks against it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from attack_support import restored
from e2e_support import Sandbox, assert_error
from killpoint import run_killed
from moto_support import git
from test_key_rotate_history import _repo
from test_key_rotate_replica import _objects, _setup, git_replica_ahead

from phoenix_backup.repo import checks, retired
from phoenix_backup.repo.crypto import sha256_hex
from phoenix_backup.repo.replicate import TargetReport, replicate
from phoenix_backup.repo.repository import RETIRED_AAD, sealed_with
from phoenix_backup.storage.local import LocalBackend

# The sandboxes' helpers (the backups that set a test up, the checks after) run phx in this process;
# the commands under test stay real `phx` processes (tests/e2e/conftest.py).
pytestmark = pytest.mark.phx_in_process

HEAVY = os.environ.get("PHX_TEST_HEAVY") == "1"
needs_git = pytest.mark.skipif(shutil.which("git") is None, reason="needs git")


def _stored(root: Path) -> dict[Path, bytes]:
    return {p: p.read_bytes() for p in root.rglob("*") if p.is_file() and "locks" not in p.parts}


# (a) a replica ahead of the first target


@needs_git
def test_a_rotation_refuses_while_a_replica_holds_snapshots_the_first_target_lacks(
    make_sandbox, tmp_path: Path
) -> None:
    """Before: exit 0, and every later sync kept the Git replica on the old key ("did not
    re-seal"). Now: exit 1 before anything changes, naming the snapshot and the way out
    (*heavy*: followed, the way out gives a rotation that reaches the replica, and the snapshot
    restores the same)."""
    sb, remote, lost, obj, expected = git_replica_ahead(make_sandbox, tmp_path)
    here, there = _stored(sb.repo), git("rev-parse", "main", cwd=remote)
    res = sb.phx_here("key", "rotate", code=1)
    assert_error(
        res,
        1,
        "target git",
        "1 snapshot(s)",
        obj,
        "nothing was changed",
        "phx repair objects --from git",
        "phx list --target git",
        "planted",
    )
    assert _stored(sb.repo) == here and git("rev-parse", "main", cwd=remote) == there
    if not HEAVY:
        return
    # The way out the message names: the object copied back, its data repaired, the rotation again.
    (sb.repo / obj).write_bytes(
        subprocess.run(["git", "--git-dir", str(remote), "show", f"main:{obj}"], capture_output=True, check=True).stdout
    )
    sb.phx("repair", "objects", "--from", "git")
    doc = sb.phx("key", "rotate", "--json").json()
    assert doc["targets"]["git"]["ok"], doc
    assert obj not in git("ls-tree", "-r", "--name-only", "main", cwd=remote).split()  # re-sealed there too
    assert restored(sb, lost["name"], tmp_path / "after", "--target", "git") == expected


@needs_git
def test_a_replica_out_of_reach_is_said_and_does_not_stop_the_rotation(make_sandbox) -> None:
    sb: Sandbox = make_sandbox()
    sb.backup()
    sb.env["PHX_DATA_DIR"] = str(sb.root / "data")
    gone = sb.root / "no-such-remote.git"
    sb.write_config(targets={"local": {"enabled": True}, "git": {"enabled": True, "repo": str(gone)}})
    res = sb.phx("key", "rotate", check=None)
    assert res.code != 1, res  # the first target was rotated; the replica's failure is its outcome
    assert "target git could not be reached" in res.err and "next `phx sync`" in res.err, res.err
    with _repo(sb) as repo:
        assert retired.load(repo).names  # rotated


# (b) junk on a replica


def test_junk_on_a_replica_does_not_keep_it_on_the_old_key(make_sandbox, tmp_path: Path) -> None:
    """Bytes no key opens, planted under snapshots/ and captures/ of a replica: before, every sync
    after the rotation refused the replica ("1 snapshot(s) and 1 capture segment(s)"), which kept
    the old key. Now the sync brings it over, names the junk, and leaves it in place."""
    sb, replica, _names, old = _setup(make_sandbox, tmp_path)
    planted = []
    for prefix in ("snapshots", "captures"):
        raw = os.urandom(300)
        (replica / prefix).mkdir(exist_ok=True)
        (replica / prefix / sha256_hex(raw)).write_bytes(raw)
        planted.append(f"{prefix}/{sha256_hex(raw)}")
    sb.phx_here("key", "rotate")
    said: list[str] = []
    with _repo(sb) as repo:
        report = replicate(repo, "replica", LocalBackend(replica), said.append)
    assert report.ok, report.error
    assert sorted(report.junk) == sorted(planted), report
    assert [n for n in said if "neither the current key nor the key a rotation retired opens" in n], said
    assert (replica / "config").read_bytes() == (sb.repo / "config").read_bytes()  # brought over
    assert _objects(replica) == _objects(sb.repo) | set(planted)  # the junk left in place, said
    assert not [n for n in _objects(replica) if sealed_with(LocalBackend(replica), n, old)]


def test_without_the_owners_credentials_junk_still_keeps_the_old_key(make_sandbox, tmp_path: Path) -> None:
    """Nothing can tell junk from the retired key's objects without the key: the replica is kept."""
    sb, replica, _names, _old = _setup(make_sandbox, tmp_path)
    raw = os.urandom(300)
    (replica / "snapshots" / sha256_hex(raw)).write_bytes(raw)
    sb.phx_here("key", "rotate")
    with _repo(sb) as repo:
        repo.credentials = None  # as a machine without them
        report = replicate(repo, "replica", LocalBackend(replica), print)
    assert not report.ok and "1 snapshot(s)" in (report.error or ""), report
    assert (replica / "config").read_bytes() != (sb.repo / "config").read_bytes()


# (c) integrity check records


def _with_record(sb: Sandbox) -> tuple[str, int]:
    sb.backup()
    snap = sb.snapshots()[0]["id"]
    sha, size = "ab" * 32, 4096
    with _repo(sb) as repo:
        checks.write(repo, [checks.record(sha, size, "ok", "restore", snap, "memory/x.db", "3.45.0")])
    return sha, size


def _passed(sb: Sandbox, sha: str, size: int) -> checks.CheckRecord | None:
    with _repo(sb) as repo:
        return checks.CheckBook(repo).passed(sha, size)


def _records(sb: Sandbox) -> set[str]:
    return {p.name for p in (sb.repo / "checks").iterdir()}


def _resealed(sb: Sandbox, sha: str, size: int, before: set[str]) -> None:
    """Our record passes under the current key, naming the snapshot's current id, and every record
    (the backup's own too) was re-sealed once: as many as before, none of the old ones left."""
    rec = _passed(sb, sha, size)
    assert rec is not None  # before: None (the record stayed under the old key): the check ran again
    assert rec.snapshot == sb.snapshots()[0]["id"]  # the snapshot's new id: prune keeps the record
    after = _records(sb)
    assert len(after) == len(before) and not after & before, (before, after)


def test_a_rotation_reseals_the_integrity_check_records(sandbox: Sandbox) -> None:
    sb = sandbox
    sha, size = _with_record(sb)
    before = _records(sb)
    doc = sb.phx_here("key", "rotate", "--json").json()
    _resealed(sb, sha, size, before)
    assert doc["checks"] == len(before) > 1, doc  # the backup's own records and ours
    verified = sb.phx_here("verify", "--json").json()
    assert verified["ok"] and verified["errors"] == [], verified


@pytest.mark.parametrize(
    "match",
    [
        "store.write(config",  # the record re-sealed, the config not switched yet
        "store.delete(checks/",  # switched; the old record not deleted yet
        *(["store.write(checks/"] if HEAVY else []),
    ],
)
def test_a_rotation_killed_around_its_commit_point_keeps_the_check_records(
    sandbox: Sandbox, tmp_path: Path, match: str
) -> None:
    sb = sandbox
    sha, size = _with_record(sb)
    before = _records(sb)
    env = sb.env_with(PHX_KILL_AT="1", PHX_KILL_MATCH=match, PHX_KILL_ONLY="changes")
    kind, _n, call = run_killed(["key", "rotate"], env, tmp_path / "kill-report")
    assert kind == "killed", f"the rotation was not killed before {match}"
    rec = _passed(sb, sha, size)
    assert rec is not None and rec.snapshot == sb.snapshots()[0]["id"], call
    assert sb.phx_here("verify", "--json").json()["ok"], call
    sb.phx_here("key", "rotate")
    _resealed(sb, sha, size, before)


def test_a_replica_gets_the_resealed_records_and_loses_the_old_ones(make_sandbox, tmp_path: Path) -> None:
    sb, replica, _names, _old = _setup(make_sandbox, tmp_path)
    snap = sb.snapshots()[0]["id"]
    with _repo(sb) as repo:
        checks.write(repo, [checks.record("cd" * 32, 8192, "ok", "restore", snap, "memory/x.db", "3.45.0")])
        assert replicate(repo, "replica", LocalBackend(replica), print).ok
    sb.phx_here("key", "rotate")
    with _repo(sb) as repo:
        report: TargetReport = replicate(repo, "replica", LocalBackend(replica), print)
    assert report.ok, report.error
    assert sorted(p.name for p in (replica / "checks").iterdir()) == sorted(
        p.name for p in (sb.repo / "checks").iterdir()
    )
    with _repo(sb) as repo:
        there = repo.sibling(LocalBackend(replica))
        try:
            assert checks.CheckBook(there).passed("cd" * 32, 8192) is not None  # before: None there too
        finally:
            there.close()


# (d) the rotation record's size


def test_the_rotation_record_names_only_snapshots_and_segments(sandbox: Sandbox) -> None:
    """Before, each record named every pack and index object too, and carried them into the next
    rotation's: it grew with the repository's history of packs."""
    sb = sandbox
    for k in range(3):
        (sb.workspace / f"note{k}.md").write_bytes(os.urandom(2000))
        sb.backup()
    count = len(sb.snapshots())
    for rotation in (1, 2):
        sb.phx_here("key", "rotate")
        with _repo(sb) as repo:
            records = list(repo.backend.list(retired.PREFIX))
            assert len(records) == 1
            raw = repo.backend.read(records[0].name)
            doc = json.loads(repo.sealer.open(raw, RETIRED_AAD, records[0].name))
            packs = len(list(repo.backend.list("data/"))) + len(list(repo.backend.list("index/")))
        assert packs >= count
        assert all(n.startswith(("snapshots/", "captures/")) for n in doc["names"]), doc["names"]
        assert len(doc["names"]) == rotation * count  # each rotation's old names, carried
        assert len(doc["keys"]) == rotation
        # Bound: per old snapshot its name, and its successor under `moved` (about 250 bytes in
        # all), and a fingerprint per rotation; nothing per pack or index object.
        assert len(raw) <= 256 + rotation * (count * 250 + 50), len(raw)
