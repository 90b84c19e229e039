"""A lock's holder across a suspend (docs/reliability.md): the monotonic clock stands still while the
machine sleeps, but other machines judge its lock by wall time and take it for stale after
STALE_SECONDS unrefreshed. The holder measures its own gaps on `locks.holder_clock` (it counts a
suspend): past LOST_AFTER_SECONDS unrefreshed it commits nothing under the lock, its refresh runs at
once after the resume, and the watch takes a fresh lease instead of writing on.

The suspend is simulated by making `locks.holder_clock` jump an hour while `time.monotonic` (not
touched) stands all but still, as it does across a real suspend."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import CliRunner
from e2e_support import Sandbox
from test_lost_data import lose_a_new_file
from test_watch_adversary import _commit, _table
from test_watch_bases import _watcher
from test_watch_lease import _bases_written

from phoenix_backup.cli.main import cli
from phoenix_backup.errors import RepositoryError, StorageError
from phoenix_backup.repo import keys, locks
from phoenix_backup.repo.repository import Repository
from phoenix_backup.storage.local import LocalBackend

HOUR = 3600.0


def _sleeping_clock(monkeypatch: pytest.MonkeyPatch) -> Callable[[float], None]:
    """`locks.holder_clock` from now on, read from the real one; the function returned makes it
    jump forward (a suspend of that many seconds, the monotonic clock standing still)."""
    real = locks._boot_clock
    jumped = [0.0]

    def clock() -> float:
        now = real()
        assert now is not None, "the test needs a boot clock"
        return now + jumped[0]

    monkeypatch.setattr(locks, "holder_clock", clock, raising=False)

    def sleep(seconds: float) -> None:
        jumped[0] += seconds

    return sleep


def test_a_holder_resumed_from_a_suspend_refreshes_at_once_and_commits_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before, the refresh thread waited out REFRESH_SECONDS of the monotonic clock after the
    resume, and `confirm` found the lock present and ours: the holder committed under a lock
    another machine had seen unrefreshed for an hour (and may be removing while it commits)."""
    suspend = _sleeping_clock(monkeypatch)
    monkeypatch.setattr(locks, "REFRESH_LOOK_SECONDS", 0.05, raising=False)
    repo = Repository.init(LocalBackend(tmp_path / "repo"), keys.wrap_none, False)
    held = repo.lock(False, "backup")
    try:
        held.confirm()
        before = repo.backend.read(held.name)
        suspend(HOUR)
        refreshed = threading.Event()
        for _ in range(60):  # up to 3 s
            if repo.backend.read(held.name) != before:
                refreshed.set()
                break
            refreshed.wait(0.05)
        assert refreshed.is_set(), "the lock was not refreshed at once after the resume"
        with pytest.raises(RepositoryError) as caught:
            repo.locks.confirm_held()
        message = str(caught.value)
        assert "slept or stalled for 60 min while holding the lock" in message, message
        assert "may have judged it stale" in message and "nothing was committed" in message, message
    finally:
        held.release()
    assert list(repo.backend.list("locks/")) == [], "the doubted lock is still removed at the end"


def test_a_backup_suspended_past_the_margin_commits_nothing(sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch) -> None:
    """`phx backup` sleeps an hour just before its commit point (a laptop's lid closed); another
    machine saw its lock unrefreshed for over STALE_SECONDS. It exits 1 naming the cause and writes
    no snapshot; the next backup commits. Before, it committed (exit 0)."""
    sb = sandbox
    first = sb.backup()
    (sb.layout.workspace / "after-the-resume.txt").write_text("new\n")
    suspend = _sleeping_clock(monkeypatch)
    real = Repository.confirm_present

    def sleep_then_confirm(self: Repository, blob_ids: object) -> None:
        suspend(HOUR)
        real(self, blob_ids)  # type: ignore[arg-type]

    monkeypatch.setattr(Repository, "confirm_present", sleep_then_confirm)
    saved = dict(os.environ)
    os.environ.clear()
    os.environ.update(sb.env)
    try:
        run = CliRunner().invoke(cli, ["backup"], prog_name="phx")
    finally:
        os.environ.clear()
        os.environ.update(saved)
    assert run.exit_code == 1, (run.exit_code, run.stdout, run.stderr)
    assert "this machine slept or stalled for 60 min while holding the lock" in run.stderr, run.stderr
    assert "nothing was committed; run the backup again" in run.stderr, run.stderr
    assert [s["id"] for s in sb.snapshots()] == [first["id"]], "a snapshot was committed under a doubted lock"
    monkeypatch.setattr(Repository, "confirm_present", real)
    assert sb.backup()["id"] != first["id"]


def test_the_watch_takes_a_fresh_lease_after_a_suspend(sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch) -> None:
    """The watch holds its lease, the machine sleeps an hour: the lease has ended (it runs on the
    clock that counts the suspend), and the next write takes a fresh lock, with a notice, instead of
    writing on under the old one. Before, `_leased` (on the monotonic clock) still said yes."""
    sb = sandbox
    db = sb.layout.dashboard_db
    _table(db)
    suspend = _sleeping_clock(monkeypatch)
    notices: list[str] = []
    with _watcher(sb, notices) as w:
        _bases_written(w)
        old = w.lock
        assert old is not None and w._leased()
        suspend(HOUR)
        assert not w._leased(), "the lease outlived an hour's suspend"
        w.lock_free_until = 0.0
        _commit(db, 1)
        w.poll()
        w.flush()
        w.lock_free_until = 0.0
        w._write_queue()
        if w.queue:  # the old lock was let go: the lease's gap first, as at every lease's end
            w.lock_free_until = 0.0
            w._write_queue()
        assert not w.queue, "the segment was not written under a fresh lease"
        assert w.lock is not None and w.lock is not old, "the watch wrote on under the lock it held asleep"
        names = {info.name for info in w.repo.backend.list("locks/")}
        assert names == {w.lock.name}, names
    assert any("slept or stalled for 60 min" in n and "takes a fresh lock" in n for n in notices), notices


def _refreshed_often(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, every: float
) -> tuple[Repository, locks.HeldLock, list[str]]:
    """A new repository and a lock held on it, refreshed every `every` seconds (looked at five
    times as often), and the list its notices go to."""
    monkeypatch.setattr(locks, "REFRESH_SECONDS", every)
    monkeypatch.setattr(locks, "REFRESH_LOOK_SECONDS", every / 5)
    repo = Repository.init(LocalBackend(tmp_path / "repo"), keys.wrap_none, False)
    notes: list[str] = []
    repo.locks.notice = notes.append
    return repo, repo.lock(False, "backup"), notes


def test_a_suspend_during_the_refresh_s_read_of_its_lock_is_not_hidden(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The refresh thread reads its lock back (`_check_present`), the machine sleeps an hour in that
    read (a network call: where the thread spends its time), and the refresh then writes. Before,
    the gap was measured only before that read, and the write moved `refreshed` past the hour:
    `confirm` found the lock fresh and committed, though another machine had seen it unrefreshed
    for an hour (and may have removed it and pruned before the write put it back)."""
    suspend = _sleeping_clock(monkeypatch)
    repo, held, notes = _refreshed_often(tmp_path, monkeypatch, 0.2)
    real_read = repo.locks.read
    slept = threading.Event()

    def read_then_sleep(name: str) -> locks.LockInfo:
        info = real_read(name)
        if threading.current_thread().name == "phx-lock-refresh" and not slept.is_set():
            suspend(HOUR)
            slept.set()
        return info

    monkeypatch.setattr(repo.locks, "read", read_then_sleep)
    try:
        before = repo.backend.read(held.name)
        for _ in range(60):  # up to 3 s: the suspend, then the refresh's write
            if slept.is_set() and repo.backend.read(held.name) != before:
                break
            time.sleep(0.05)
        assert slept.is_set() and repo.backend.read(held.name) != before, ("no refresh ran", notes)
        with pytest.raises(RepositoryError) as caught:
            held.confirm()
        assert "slept or stalled for 60 min" in str(caught.value), caught.value
    finally:
        held.release()


def test_repair_snapshots_suspended_before_its_commit_writes_no_copy(
    backed_up: Sandbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`phx repair snapshots --rewrite` writes the trees of its copy (unreferenced until the copy is
    saved: a prune that judged its lock stale deletes them), sleeps an hour, then saves the copy.
    Before, it never confirmed its lock and committed a copy (exit 0) under a lock another machine
    had seen unrefreshed for an hour; now every snapshot's commit point confirms (exit 1)."""
    sb = backed_up
    _before, snap, _pack = lose_a_new_file(sb)
    suspend = _sleeping_clock(monkeypatch)
    real = Repository.flush

    def flush_then_sleep(self: Repository) -> None:
        real(self)
        suspend(HOUR)

    monkeypatch.setattr(Repository, "flush", flush_then_sleep)
    saved = dict(os.environ)
    os.environ.clear()
    os.environ.update(sb.env)
    try:
        run = CliRunner().invoke(cli, ["repair", "snapshots", "--rewrite"], prog_name="phx")
    finally:
        os.environ.clear()
        os.environ.update(saved)
    assert run.exit_code == 1, (run.exit_code, run.stdout, run.stderr)
    assert "slept or stalled for 60 min" in run.stderr and "nothing was committed" in run.stderr, run.stderr
    assert len(sb.snapshots()) == 2 and snap["id"] in {s["id"] for s in sb.snapshots()}, "a copy was committed"


def test_a_lock_the_store_refused_to_refresh_is_doubted_with_that_cause(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The store refuses the lock's refreshes (an outage) past the margin, the machine awake: the
    holder commits nothing, and says why: the refreshes failed. Before, it said "this machine slept
    or stalled", which it had not: the user looked for a suspend instead of at the store."""
    monkeypatch.setattr(locks, "LOST_AFTER_SECONDS", 0.5)
    repo, held, notes = _refreshed_often(tmp_path, monkeypatch, 0.1)
    real_write = repo.backend.write

    def refuse_locks(name: str, data: bytes) -> None:
        if name.startswith("locks/"):
            raise StorageError("the store answered 503 Service Unavailable")
        real_write(name, data)

    monkeypatch.setattr(repo.backend, "write", refuse_locks)
    try:
        time.sleep(1.0)  # five refreshes refused, twice the margin
        assert any("could not refresh the repository lock" in n for n in notes), notes
        with pytest.raises(RepositoryError) as caught:
            held.confirm()
        message = str(caught.value)
        assert "slept" not in message, message
        assert "could not be refreshed" in message and "503 Service Unavailable" in message, message
        assert "nothing was committed" in message, message
    finally:
        monkeypatch.setattr(repo.backend, "write", real_write)
        held.release()
