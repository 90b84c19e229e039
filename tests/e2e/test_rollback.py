"""An older copy of the whole repository put back (by whoever can write the storage, or a restore
of the backup disk from an older image) is noticed by the machine that saw the newer snapshots:
one warning naming them, and `phx forget`/`phx prune` refuse until the newest copy is back or the
owner accepts the repository as it is (`phx key trust`). A forget on another machine is no alarm
when the newest snapshot is still there, and is cleared by that acceptance when it is not."""

from __future__ import annotations

import shutil
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

from e2e_support import Result, Sandbox, run_phx_here

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "integration"))
import pytest
from moto_support import MotoServer, bare_repo

# The repositories the commands leave are the point, not the process: the sandboxes' helpers run phx
# in this process (tests/e2e/conftest.py).
pytestmark = pytest.mark.phx_in_process

WARNING = "no longer holds snapshot"


def _hours_ago(hours: float) -> str:
    return (datetime.now(UTC) - timedelta(hours=hours)).isoformat(timespec="seconds")


def _warnings(res: Result) -> list[str]:
    return [line for line in res.stderr_lines() if WARNING in line]


def _fingerprint(sb: Sandbox) -> str:
    fingerprint: str = sb.phx_here("key", "list", "--json").json()[0]["fingerprint"]
    return fingerprint


def test_an_older_copy_put_back_is_named_and_prune_waits_for_the_owner(make_sandbox, tmp_path: Path) -> None:
    sb: Sandbox = make_sandbox()
    old = sb.backup("--time", _hours_ago(3))["id"]
    kept = tmp_path / "kept"
    shutil.copytree(sb.repo, kept)
    newer = [sb.backup("--time", _hours_ago(h))["id"] for h in (2, 1)]
    shutil.rmtree(sb.repo)
    shutil.copytree(kept, sb.repo)  # the backup disk restored from an older image

    res = sb.phx_here("list", "--json")  # what it lists is there: exit 0, with the warning
    assert [s["id"] for s in res.json()] == [old]
    (line,) = _warnings(res)
    for needle in (newer[0][:8], newer[1][:8], "rolled back", "phx forget", "phx verify", "phx key trust"):
        assert needle in line, line
    assert len(_warnings(sb.phx_here("restore", "--latest", "--to", tmp_path / "out", "--json"))) == 1
    assert len(_warnings(sb.phx_here("verify", "--json"))) == 1

    res = sb.phx_here("prune", code=1)  # a target's failure, reported as prune reports each target's
    assert "prune refused" in res.out and newer[1][:8] in res.out and "phx key trust" in res.out, res
    res = sb.phx_here("forget", old, code=1)
    assert "forget refused" in res.out and old in [s["id"] for s in sb.snapshots()], res
    # A backup on top of the rollback is taken (it loses nothing), but its retention is refused.
    top = sb.backup("--time", _hours_ago(0.5), check=3)
    assert "forget refused" in str(top["retention"]), top
    assert "prune refused" in sb.phx_here("prune", code=1).out

    # The owner checked and accepts the repository as it is: no warning, prune runs.
    sb.phx_here("key", "trust", _fingerprint(sb))
    res = sb.phx_here("prune")
    assert not _warnings(res) and not _warnings(sb.phx_here("list")), res


def test_the_newest_copy_put_forward_again_clears_the_alarm(make_sandbox, tmp_path: Path) -> None:
    sb: Sandbox = make_sandbox()
    sb.backup("--time", _hours_ago(2))
    old, new = tmp_path / "old", tmp_path / "new"
    shutil.copytree(sb.repo, old)
    sb.backup("--time", _hours_ago(1))
    shutil.move(sb.repo, new)
    shutil.copytree(old, sb.repo)
    assert len(_warnings(sb.phx_here("list"))) == 1
    shutil.rmtree(sb.repo)
    shutil.move(new, sb.repo)
    res = sb.phx_here("prune")
    assert not _warnings(res), res


def test_a_forget_on_another_machine_is_no_false_alarm(make_sandbox, tmp_path: Path) -> None:
    sb: Sandbox = make_sandbox()
    ids = [sb.backup("--time", _hours_ago(h))["id"] for h in (3, 2, 1)]
    other = sb.env_with(XDG_DATA_HOME=str(tmp_path / "other-data"), PHX_CACHE_DIR=str(tmp_path / "other-cache"))
    # Another machine forgets an older snapshot: the newest is still there, so no alarm here.
    sb.phx("forget", ids[0], env=other)
    res = sb.phx_here("prune")
    assert not _warnings(res), res
    # It forgets the newest: from here that cannot be told from a rollback, until the owner says so.
    sb.phx("forget", ids[2], env=other)
    assert len(_warnings(sb.phx_here("list"))) == 1
    assert "prune refused" in sb.phx_here("prune", code=1).out
    sb.phx_here("key", "trust", _fingerprint(sb))
    res = sb.phx_here("prune")
    assert not _warnings(res) and not _warnings(sb.phx_here("list")), res
    # What this machine forgets itself is never an alarm.
    sb.phx_here("forget", ids[1])
    res = sb.phx_here("list", "--json")
    assert res.json() == [] and not _warnings(res), res


def test_a_rolled_back_replica_is_the_target_named(make_sandbox, moto: MotoServer) -> None:
    """Backups reach every target; one replica's storage put back from before the newest backup is
    named alone (the first target is whole), and `phx sync` brings the snapshot back there."""
    sb: Sandbox = make_sandbox()
    bucket = moto.make_bucket("rollback")
    sb.env.update(AWS_EC2_METADATA_DISABLED="true")
    sb.write_config(targets={"local": {"enabled": True}, "s3": moto.target(bucket)})
    sb.config_path.chmod(0o600)
    ids = [sb.backup("--time", _hours_ago(h))["id"] for h in (2, 1)]
    moto.client().delete_object(Bucket=bucket, Key=f"argent/snapshots/{ids[1]}")
    (line,) = _warnings(sb.phx_here("list"))
    assert "target s3" in line and ids[1][:8] in line and str(sb.repo) not in line, line
    assert "prune refused" in sb.phx_here("prune", "--target", "s3", code=1).out
    sb.phx_here("sync")
    res = sb.phx_here("list", "--json")
    assert not _warnings(res) and res.json()[-1]["targets"] == ["local", "s3"], res


def test_a_snapshot_dated_ahead_forgotten_on_its_machine_is_no_false_alarm(make_sandbox, tmp_path: Path) -> None:
    """Another machine's clock is a day ahead: its backup is the newest by date. Retention's notice
    says to forget it; forgotten on that machine, it must not stop this machine's retention."""
    sb: Sandbox = make_sandbox()
    sb.backup("--time", _hours_ago(2))
    ahead = sb.backup("--time", _hours_ago(-24))["id"]
    sb.phx_here("list")  # this machine saw it
    other = sb.env_with(XDG_DATA_HOME=str(tmp_path / "other-data"), PHX_CACHE_DIR=str(tmp_path / "other-cache"))
    sb.phx("forget", ahead, env=other)
    res = sb.phx_here("prune")
    assert not _warnings(res), res


def test_a_pin_file_that_cannot_be_written_does_not_stop_a_restore(make_sandbox, tmp_path: Path) -> None:
    """The data dir cannot be written (its disk full, a read-only home on a recovery boot; here its
    lock file cannot be opened for writing): listing and restoring still work, with one warning."""
    sb: Sandbox = make_sandbox()
    sb.backup()
    other = sb.env_with(XDG_DATA_HOME=str(tmp_path / "other-data"), PHX_CACHE_DIR=str(tmp_path / "other-cache"))
    sb.phx("backup", env=other)  # a snapshot this machine has not seen: its listing has something to record
    lock = Path(sb.env["XDG_DATA_HOME"]) / "phoenix" / ".pins.lock"
    lock.unlink()
    lock.mkdir()
    res = sb.phx_here("restore", "--latest", "--to", tmp_path / "out")
    (line,) = [x for x in res.stderr_lines() if "cannot write the pin file" in x]
    assert "PHX_DATA_DIR" in line and (tmp_path / "out").is_dir(), res


def test_a_sync_from_an_older_copy_put_back_leaves_the_replicas_alone(make_sandbox, tmp_path: Path) -> None:
    """The first target's storage put back from before a `phx key add` and two backups. `phx sync`
    no longer read the first target's snapshots (only those a replica lacks), so it ran without a
    word and deleted the new key slot from the Git replica (a slot the first target lacks, wrapping
    the current key): the new passphrase then opened no target (a backup's replication did the
    same, after its warning). Both now refuse to copy, naming the snapshot gone, and the replica
    keeps what it holds."""
    sb: Sandbox = make_sandbox()
    remote = bare_repo(sb.root / "remote.git")
    sb.write_config(targets={"local": {"enabled": True}, "git": {"enabled": True, "repo": str(remote)}})
    sb.backup("--time", _hours_ago(3))
    kept = tmp_path / "kept"
    shutil.copytree(sb.repo, kept)
    sb.env.update(PHX_NEW_PASSPHRASE="second")
    sb.phx_here("key", "add", "--method", "passphrase")
    newer = [sb.backup("--time", _hours_ago(h))["id"] for h in (2, 1)]
    second = sb.env_with(PHX_PASSPHRASE="second")
    assert len(run_phx_here(["list", "--target", "git", "--json"], second).json()) == 3
    shutil.rmtree(sb.repo)
    shutil.copytree(kept, sb.repo)  # the backup disk restored from an older image

    res = sb.phx_here("sync", code=1)
    assert "copying to the replicas refused" in res.out and newer[1][:8] in res.out, res
    assert "key slots" in res.out and "phx key trust" in res.out, res
    res = sb.phx_here("backup", "--json", code=3)  # its snapshot is written (that loses nothing)
    assert "copying to the replicas refused" in res.json()["targets"]["git"]["error"], res
    listed = run_phx_here(["list", "--target", "git", "--json"], second).json()
    assert newer[1] in [s["id"] for s in listed]
