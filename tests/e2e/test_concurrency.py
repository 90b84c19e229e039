"""Concurrency (issue 15, suite 3): two backups; backup with prune; backup with sync; key commands;
each from the same PID namespace and from another one (`unshare --pid --fork --mount-proc`, as a
container that shares the host name would run).

A run is held still at a chosen I/O call (pause_support) while the other acts, so every race is
reproduced exactly, not hoped for. After each, nothing committed is lost: `verify --read-data`
passes, and a snapshot either restores exactly or was never written (its run exited non-zero).
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from e2e_support import Sandbox, assert_error, assert_restored, retention_only
from pause_support import Paused, can_unshare_pid

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "integration"))
from moto_support import ACCESS_KEY_ID, SECRET_ACCESS_KEY, MotoServer

# The sandboxes' helpers (the backups that set a test up, the checks after) run phx in this process;
# the commands under test stay real `phx` processes (tests/e2e/conftest.py).
pytestmark = pytest.mark.phx_in_process

NO_UNSHARE = can_unshare_pid()
HEAVY = os.environ.get("PHX_TEST_HEAVY") == "1"


def namespaces(default: str = "other-pid-ns") -> pytest.MarkDecorator:
    """Both variants (`other_ns`: the first process in the same PID namespace as the second, or in
    its own) with PHX_TEST_HEAVY=1; the default run takes `default` alone (CI time budget)."""
    params = [
        pytest.param(False, id="same-pid-ns"),
        pytest.param(
            True, id="other-pid-ns", marks=pytest.mark.skipif(NO_UNSHARE is not None, reason=NO_UNSHARE or "")
        ),
    ]
    return pytest.mark.parametrize("other_ns", [p for p in params if HEAVY or p.id == default])


def new_data(sb: Sandbox, name: str = "notes/fresh.md", size: int = 300_000) -> None:
    """Content the repository does not hold yet, so the next backup writes new packs."""
    path = sb.workspace / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(os.urandom(size // 2).hex())


def backup_doc(run: Paused) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(run.out)
    return doc


def s3_target(moto: MotoServer, bucket: str) -> dict[str, Any]:
    return {
        "enabled": True,
        "bucket": bucket,
        "prefix": "argent/",
        "endpoint": moto.endpoint,
        "accessKeyId": ACCESS_KEY_ID,
        "secretAccessKey": SECRET_ACCESS_KEY,
    }


def assert_whole(sb: Sandbox) -> None:
    doc = sb.verify("--read-data")
    assert doc["ok"], doc


@namespaces()
def test_prune_beside_a_running_backup_loses_nothing(sandbox: Sandbox, tmp_path: Path, other_ns: bool) -> None:
    """Issue 15, failure 1, end to end: a backup (in a container sharing the host name: another
    PID namespace, where its pid names an unrelated process here) has written and indexed its packs
    but not yet its snapshot; a prune runs. The prune must not take the backup's lock for dead,
    nor delete its packs; the backup then commits a snapshot that restores exactly. With `last: 1`
    the previous snapshot goes only once the new one is whole."""
    sb = sandbox
    sb.write_config(retention=retention_only(last=1))
    first = sb.backup()
    new_data(sb)
    expected = sb.state()
    with Paused(["backup", "--json"], sb.env, tmp_path / "pause", at="after:write:index/", namespace=other_ns) as run:
        pid = run.wait_paused()
        assert other_ns is (pid <= 2), pid
        prune = sb.phx("prune", "--json", check=None)
        assert prune.code == 1, prune
        report = prune.json()["targets"]["local"]
        assert not report["ok"] and "locked" in report["error"] and "backup" in report["error"], report
        assert "no longer runs" not in prune.err, prune.err
        code = run.finish()
    assert code == 0, run.err
    doc = backup_doc(run)
    assert [s["id"] for s in sb.snapshots()] == [doc["id"]], "last: 1 keeps the new snapshot only"
    assert doc["id"] != first["id"]
    assert_whole(sb)
    sb.restore_to(doc["id"], tmp_path / "out")
    assert_restored(expected, tmp_path / "out", "the snapshot taken beside a prune")


@namespaces("same-pid-ns")
def test_a_backup_whose_lock_was_removed_does_not_commit(sandbox: Sandbox, tmp_path: Path, other_ns: bool) -> None:
    """`phx unlock --all` by mistake while a backup runs, then a prune: the prune keeps the young
    packs, and the backup, finding its lock gone, commits nothing (exit 1); what was committed
    before still restores."""
    sb = sandbox
    first = sb.backup()
    before = sb.state()
    new_data(sb)
    with Paused(["backup", "--json"], sb.env, tmp_path / "pause", at="after:write:index/", namespace=other_ns) as run:
        run.wait_paused()
        removed = sb.phx("unlock", "--all", "--json").json()
        assert len(removed) == 1, removed
        pruned = sb.phx("prune", "--json").json()["targets"]["local"]
        assert run.finish() == 1, "the backup committed although its lock was gone"
    assert "lock is gone" in run.err and "nothing was committed" in run.err, run.err
    assert pruned["packs"]["youngUnusedKept"] >= 1, pruned
    assert [s["id"] for s in sb.snapshots()] == [first["id"]]
    assert_whole(sb)
    sb.restore_to(first["id"], tmp_path / "out")
    assert_restored(before, tmp_path / "out", "the snapshot taken before")
    # The next backup stores everything again and is whole.
    again = sb.backup()
    assert_whole(sb)
    sb.restore_to(again["id"], tmp_path / "again")


CLOCK_AHEAD = """
import os, socket, time
_ahead = float(os.environ["PHX_TEST_CLOCK_AHEAD"])
_time, _time_ns = time.time, time.time_ns
time.time = lambda: _time() + _ahead
time.time_ns = lambda: _time_ns() + int(_ahead * 1e9)
socket.gethostname = lambda: "clock-ahead"
"""


def another_machine_ahead(sb: Sandbox, tmp_path: Path, seconds: float) -> dict[str, str]:
    """The environment of a second machine (another host name) whose clock is `seconds` ahead of
    the store's and this one's: a `sitecustomize` module on its PYTHONPATH shifts its clock."""
    site = tmp_path / "clock-ahead-site"
    site.mkdir(exist_ok=True)
    (site / "sitecustomize.py").write_text(CLOCK_AHEAD)
    pythonpath = os.pathsep.join(filter(None, [str(site), sb.env.get("PYTHONPATH")]))
    return {**sb.env, "PYTHONPATH": pythonpath, "PHX_TEST_CLOCK_AHEAD": str(seconds)}


def test_a_machine_whose_clock_is_ahead_never_takes_a_live_lock_for_stale(sandbox: Sandbox, tmp_path: Path) -> None:
    """Two machines, one repository; the second's clock is an hour ahead of the store's and the
    first's. While a backup runs on the first, the second took its lock for stale (both its time
    and its object's looked an hour old): its prune said `phx unlock` removes it, and `phx unlock`
    did, so the backup, finding its lock gone, committed nothing (exit 1). Now the object's age is
    read on the store's clock: prune is told to wait, unlock keeps the lock, the backup commits."""
    sb = sandbox
    sb.backup()
    new_data(sb)
    before = sb.state()
    ahead = another_machine_ahead(sb, tmp_path, 3600)
    with Paused(["backup", "--json"], sb.env, tmp_path / "pause", at="after:write:index/") as run:
        run.wait_paused()
        refused = sb.phx("prune", env=ahead, check=1)
        said = refused.out + refused.err
        assert "wait for it to finish" in said and "stale" not in said, said
        assert sb.phx("unlock", "--json", env=ahead).json() == [], "a lock being refreshed is kept"
        assert run.finish() == 0, run.err
    doc = backup_doc(run)
    assert_whole(sb)
    sb.restore_to(doc["id"], tmp_path / "out")
    assert_restored(before, tmp_path / "out", "the backup the machine ahead let run")
    # Once no lock is held, that machine prunes as ever.
    assert sb.phx("prune", "--json", env=ahead).json()["ok"]
    assert_whole(sb)


def test_a_machine_whose_clock_is_ahead_keeps_another_machines_temporary_file(sandbox: Sandbox, tmp_path: Path) -> None:
    """A repository shared over NFS: this machine is writing a pack (its `.tmp-` file, written a
    moment ago); the second machine's clock is an hour ahead. Its prune deleted the file as an hour
    old under the writer. It reads the file's age on the store's clock now, as a pack's: the file
    stays, and one old by both clocks goes."""
    sb = sandbox
    sb.backup()
    ahead = another_machine_ahead(sb, tmp_path, 3600)
    folder = next(p for p in (sb.repo / "data").iterdir() if p.is_dir())
    live = folder / ".tmp-being-written.0a1b2c3d"
    live.write_bytes(b"half a pack, still growing")
    dead = folder / ".tmp-interrupted.4e5f6a7b"
    dead.write_bytes(b"half a pack")
    os.utime(dead, (time.time() - 7200, time.time() - 7200))
    (report,) = sb.phx("prune", "--json", env=ahead).json()["targets"].values()
    assert live.read_bytes() == b"half a pack, still growing", "written a moment ago by the store's clock: kept"
    assert not dead.exists() and report["temporaryFiles"] == 1, report
    assert_whole(sb)


def test_a_backup_whose_packs_vanish_does_not_commit(sandbox: Sandbox, tmp_path: Path) -> None:
    """A pack the running backup wrote disappears before it commits (an older Phoenix pruning, a
    hand): the backup names it and commits nothing."""
    sb = sandbox
    sb.backup()
    new_data(sb)
    with Paused(["backup", "--json"], sb.env, tmp_path / "pause", at="after:write:index/") as run:
        run.wait_paused()
        newest = max((p for p in (sb.repo / "data").rglob("*") if p.is_file()), key=lambda p: p.stat().st_mtime_ns)
        newest.unlink()
        assert run.finish() == 1
    assert "snapshot was not written" in run.err and "vanished" in run.err, run.err
    assert len(sb.snapshots()) == 1
    # The next backup finds the lost pack, stores its data again, and is whole.
    again = sb.backup()
    assert_whole(sb)
    sb.restore_to(again["id"], tmp_path / "out")


def test_a_backup_whose_index_object_vanishes_does_not_commit(sandbox: Sandbox, tmp_path: Path) -> None:
    """The index object a running backup wrote disappears before it commits (an older Phoenix
    pruning, a hand): the backup used to exit 0 with a snapshot whose trees no index lists, which
    could not be restored. It names the object and commits nothing."""
    sb = sandbox
    sb.backup()
    new_data(sb)
    before = set((sb.repo / "index").iterdir())
    with Paused(["backup", "--json"], sb.env, tmp_path / "pause", at="after:write:index/") as run:
        run.wait_paused()
        for index in set((sb.repo / "index").iterdir()) - before:
            index.unlink()
        assert run.finish() == 1, run.out
    assert "snapshot was not written" in run.err and "index object(s) listing its data vanished" in run.err, run.err
    assert len(sb.snapshots()) == 1
    assert_whole(sb)
    again = sb.backup()
    assert_whole(sb)
    sb.restore_to(again["id"], tmp_path / "out")


@namespaces()
def test_two_backups_at_once(sandbox: Sandbox, tmp_path: Path, other_ns: bool) -> None:
    sb = sandbox
    sb.backup()
    new_data(sb, "a.md")
    with Paused(["backup", "--json"], sb.env, tmp_path / "pause", at="after:write:index/", namespace=other_ns) as run:
        run.wait_paused()
        new_data(sb, "b.md")
        expected = sb.state()
        second = sb.backup()
        assert run.finish() == 0, run.err
    first = backup_doc(run)
    assert {s["id"] for s in sb.snapshots()} >= {first["id"], second["id"]}
    assert_whole(sb)
    sb.restore_to(second["id"], tmp_path / "out")
    assert_restored(expected, tmp_path / "out", "the second of two backups at once")


@namespaces()
def test_a_backup_waits_for_nothing_while_prune_holds_the_lock(
    sandbox: Sandbox, tmp_path: Path, other_ns: bool
) -> None:
    """Prune (exclusive) is deleting; a backup at that moment is refused with the prune named, and
    the prune, finishing, leaves a whole repository."""
    sb = sandbox
    sb.write_config(retention=retention_only(last=1, prune=False))
    scratch = sb.workspace / "memory" / "scratch.bin"
    scratch.write_bytes(os.urandom(12 * 1024 * 1024))  # most of the first backup's data
    sb.backup()
    scratch.unlink()
    sb.backup()  # forgets the first: prune has packs to delete or repack
    for pack in (sb.repo / "data").rglob("*"):  # ...written long enough ago to be deleted
        if pack.is_file():
            os.utime(pack, (pack.stat().st_mtime - 7200,) * 2)
    with Paused(["prune", "--json"], sb.env, tmp_path / "pause", at="before:delete:data/", namespace=other_ns) as run:
        run.wait_paused()
        refused = sb.phx("backup", check=None)
        assert_error(refused, 1, "locked", "prune")
        assert run.finish() == 0, run.err
    packs = json.loads(run.out)["targets"]["local"]["packs"]
    assert packs["deleted"] + packs["repacked"] >= 1, packs
    assert_whole(sb)
    sb.backup()
    assert_whole(sb)


def test_sync_beside_a_running_backup_copies_only_what_is_committed(
    make_sandbox: Callable[..., Sandbox], moto: MotoServer, tmp_path: Path
) -> None:
    """A replica never holds a snapshot without its data: sync while a backup is between its
    index and its snapshot copies the committed snapshots only; the next sync the rest."""
    sb = make_sandbox()
    bucket = moto.make_bucket("conc")
    sb.env["AWS_EC2_METADATA_DISABLED"] = "true"
    sb.write_config(targets={"local": {"enabled": True}, "s3": s3_target(moto, bucket)})
    sb.config_path.chmod(0o600)
    first = sb.backup()
    new_data(sb)
    with Paused(["backup", "--json"], sb.env, tmp_path / "pause", at="after:write:index/") as run:
        run.wait_paused()
        synced = sb.phx("sync", "--json").json()
        assert synced["ok"] and synced["targets"]["s3"]["snapshots"] == 0, synced
        replica = sb.phx("verify", "--target", "s3", "--read-data", "--json").json()
        assert replica["ok"] and replica["checked"]["snapshots"] == 1, replica
        assert run.finish() == 0, run.err
    second = backup_doc(run)
    assert second["targets"]["s3"]["ok"], second
    replica = sb.phx("verify", "--target", "s3", "--read-data", "--json").json()
    assert replica["ok"] and replica["checked"]["snapshots"] == 2, replica
    held = {s["id"] for s in sb.phx("list", "--target", "s3", "--json").json()}
    assert held == {first["id"], second["id"]}


@namespaces()
def test_two_key_removes_at_once_never_leave_no_slot(sandbox: Sandbox, tmp_path: Path, other_ns: bool) -> None:
    """Issue 15, failure 2: two `phx key remove` at once (slots A and B of two) used to both
    succeed and leave `keys/` empty. Under the exclusive lock the second is refused."""
    sb = sandbox
    sb.backup()
    other = "a second passphrase for slot b"
    added = sb.phx("key", "add", "--method", "passphrase", "--json", env=sb.env_with(PHX_NEW_PASSPHRASE=other)).json()
    slots = {s["id"]: s for s in sb.phx("key", "list", "--json").json()}
    (slot_a,) = [sid for sid in slots if sid != added["id"]]
    slot_b = added["id"]
    env_b = sb.env_with(PHX_PASSPHRASE=other)
    with Paused(
        ["key", "remove", slot_a], sb.env, tmp_path / "pause", at="before:delete:keys/", namespace=other_ns
    ) as run:
        run.wait_paused()
        second = sb.phx("key", "remove", slot_b, env=env_b, check=None)
        assert_error(second, 1, "locked", "key remove")
        assert run.finish() == 0, run.err
    assert sorted(p.name for p in (sb.repo / "keys").iterdir()) == [slot_b]
    # The repository still opens, with the slot that is left.
    assert len(sb.phx("list", "--json", env=env_b).json()) == 1
    last = sb.phx("key", "remove", slot_b, env=env_b, check=None)
    assert_error(last, 1, "last key slot")


def test_a_key_rotation_elsewhere_never_loses_a_backup(sandbox: Sandbox, tmp_path: Path) -> None:
    """`phx key rotate` moves its lock under the new key before its commit point; on another
    machine (the old key) it is an unreadable lock. `phx unlock` there removed it at once, a
    backup there then wrote its snapshot under the old key, the rotation committed and deleted
    the old key: the backup had exited 0, its snapshot could not be read, and prune refused to run
    for ever. Now `phx unlock` keeps a fresh unreadable lock, and a rotation whose lock was removed
    anyway (`--all`) commits nothing."""
    sb = sandbox
    sb.backup()
    machine_b = sb.env_with(XDG_DATA_HOME=str(tmp_path / "machine-b"))
    sb.phx("list", env=machine_b)  # machine B has used the repository (its pin)
    new_data(sb)
    with Paused(["key", "rotate", "--json"], sb.env, tmp_path / "rotate", at="after:delete:locks/") as rotate:
        rotate.wait_paused()  # its lock is under the new key; the config is not written yet
        kept = sb.phx("unlock", "--json", env=machine_b)
        assert kept.json() == [] and "kept the unreadable lock" in kept.err, kept
        assert_error(sb.phx("backup", env=machine_b, check=None), 1, "unreadable lock", "phx unlock --all")
        sb.phx("unlock", "--all", env=machine_b)  # by mistake
        with Paused(["backup", "--json"], machine_b, tmp_path / "b", at="after:write:snapshots/") as backup:
            backup.wait_paused()
            assert rotate.finish() == 1, rotate.out
            assert backup.finish() == 0, backup.err
    assert "lock is gone" in rotate.err and "nothing was committed" in rotate.err, rotate.err
    written_on_b = backup_doc(backup)["id"]
    expected = sb.state()
    sb.phx("key", "rotate")  # run again: removes what the stopped rotation wrote, then rotates
    assert_whole(sb)
    (renamed,) = [s for s in sb.snapshots() if s["time"] == backup_doc(backup)["time"]]
    sb.restore_to(renamed["id"], tmp_path / "out")
    assert_restored(expected, tmp_path / "out", f"the snapshot machine B wrote ({written_on_b[:8]})")


def test_an_unreadable_lock_is_named_and_phx_unlock_removes_it(backed_up: Sandbox) -> None:
    """Issue 15, failure 6: an empty lock object blocked every command for ever ("exclusive lock
    by unknown (pid 0) ... refreshed <now>") and `phx unlock` said there were no stale locks."""
    sb = backed_up
    lock = sb.repo / "locks" / ("0f" * 16)
    lock.write_bytes(b"")
    line = assert_error(sb.phx("backup", check=None), 1, f"locks/{lock.name}", "empty", "phx unlock")
    assert "refreshed" not in line
    old = lock.stat().st_mtime - 3600
    os.utime(lock, (old, old))
    assert_error(sb.phx("backup", check=None), 1, "stale unreadable lock", f"locks/{lock.name}", "phx unlock")
    res = sb.phx("unlock")
    assert f"removed unreadable lock locks/{lock.name} (empty)" in res.out, res
    assert not lock.exists()
    sb.backup()
