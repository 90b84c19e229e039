"""Locks (issue 15, failures 1 and 6): a lock is judged dead only when that is provable (same host,
boot and PID namespace); an unreadable lock ages by its object's time, is named, and `unlock`
removes it; a holder learns that its lock was removed or overwritten and never recreates it."""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from test_repository import age_lock, dead_pid, plant_lock

from phoenix_backup.errors import NoSpace, RepositoryError, RepositoryLocked, StorageError
from phoenix_backup.ops.doctor import DoctorResult, _locks
from phoenix_backup.repo import keys, locks
from phoenix_backup.repo.locks import (
    STALE_SECONDS,
    boot_id,
    own_start_time,
    pid_namespace,
    time_namespace,
)
from phoenix_backup.repo.repository import Repository
from phoenix_backup.storage.base import ObjectInfo
from phoenix_backup.storage.local import LocalBackend

needs_proc = pytest.mark.skipif(
    not boot_id() or not pid_namespace(), reason="no /proc boot id or PID namespace: death is never provable"
)


def new_repo(path: Path, notices: list[str] | None = None) -> Repository:
    sink = notices.append if notices is not None else None
    return Repository.init(LocalBackend(path), keys.wrap_none, False, notice=sink)


def lock_names(repo: Repository) -> set[str]:
    return {info.name for info in repo.backend.list("locks/")}


@needs_proc
@pytest.mark.parametrize(
    "changes",
    [
        {"pidNs": pid_namespace() + 1},  # a container sharing the host name: its pids are not ours
        {"pidNs": None},  # a lock of an older Phoenix: the namespace is unknown
    ],
    ids=["other-pid-namespace", "no-pid-namespace"],
)
def test_a_pid_that_means_nothing_here_proves_nothing(tmp_path: Path, changes: dict[str, object]) -> None:
    notices: list[str] = []
    repo = new_repo(tmp_path / "repo", notices)
    planted = plant_lock(repo, pid=dead_pid(), processStart=1, **changes)
    with pytest.raises(RepositoryLocked, match="wait for it to finish"):
        repo.lock(True, "prune")
    assert lock_names(repo) == {planted} and notices == []
    assert [i.name for i in repo.locks.unlock()] == [], "a fresh lock is not stale"


@needs_proc
def test_start_times_seen_through_another_time_namespace_prove_nothing(tmp_path: Path) -> None:
    repo = new_repo(tmp_path / "repo")
    planted = plant_lock(repo, exclusive=True, processStart=own_start_time() + 1000, timeNs=time_namespace() + 1)
    with pytest.raises(RepositoryLocked):
        repo.lock(False, "backup")
    assert lock_names(repo) == {planted}


@needs_proc
def test_a_dead_process_in_our_own_namespace_is_proved_dead(tmp_path: Path) -> None:
    notices: list[str] = []
    repo = new_repo(tmp_path / "repo", notices)
    plant_lock(repo, pid=dead_pid(), processStart=1, exclusive=True)
    with repo.lock(True, "prune") as held:
        assert lock_names(repo) == {held.name}
    assert len(notices) == 1 and "no longer runs" in notices[0]


@pytest.mark.parametrize("content", [b"", os.urandom(64)], ids=["empty", "random"])
def test_an_unreadable_lock_ages_by_its_object_time_and_unlock_removes_it(tmp_path: Path, content: bytes) -> None:
    repo = new_repo(tmp_path / "repo")
    name = f"locks/{secrets.token_hex(16)}"
    repo.backend.write(name, content)
    # Fresh: it blocks (it might be anything), named, with the way out.
    with pytest.raises(RepositoryLocked) as fresh:
        repo.lock(False, "backup")
    assert f"unreadable lock {name}" in str(fresh.value) and "phx unlock" in str(fresh.value)
    # Old: it is stale by the time the store gives its object, not "refreshed now".
    old = time.time() - STALE_SECONDS - 120
    os.utime(tmp_path / "repo" / name, (old, old))
    with pytest.raises(RepositoryLocked, match="stale unreadable lock") as stale:
        repo.lock(True, "prune")
    assert name in str(stale.value)
    (info,) = repo.locks.all()
    assert info.is_stale(time.time()) and abs(info.time - old) < 2
    # unlock removes it and says what it was.
    (removed,) = repo.locks.unlock()
    assert removed.name == name and not removed.readable
    assert name in removed.describe() and ("empty" in removed.describe()) == (content == b"")
    repo.lock(True, "prune").release()


def test_unlock_keeps_a_fresh_unreadable_lock_until_it_is_stale(tmp_path: Path) -> None:
    """A fresh unreadable lock may be live (a `phx key rotate` elsewhere moved its lock under the
    new key): `phx unlock` says so and keeps it; `--all` removes it."""
    notices: list[str] = []
    repo = new_repo(tmp_path / "repo", notices)
    unreadable = f"locks/{secrets.token_hex(16)}"
    repo.backend.write(unreadable, b"")
    live = plant_lock(repo, host="elsewhere")
    assert repo.locks.unlock() == []
    assert lock_names(repo) == {unreadable, live}
    assert len(notices) == 1 and unreadable in notices[0] and "phx unlock --all" in notices[0], notices
    assert {i.name for i in repo.locks.unlock(remove_all=True)} == {unreadable, live}


def test_a_lock_from_a_clock_ahead_blocks_only_while_it_is_refreshed(tmp_path: Path) -> None:
    """A host whose clock is a day ahead took a lock and died: the lock's time lies in the future,
    so it was never stale, `phx unlock` removed nothing and every prune was told to wait, for a
    day. Its time is not believed; the store's time of its object says when it was last
    refreshed."""
    repo = new_repo(tmp_path / "repo")
    ahead = time.time() + 86400
    planted = plant_lock(repo, host="elsewhere", exclusive=True, time=ahead, created=ahead)
    with pytest.raises(RepositoryLocked, match="1440 minutes ahead of this machine's clock"):
        repo.lock(False, "backup")
    assert repo.locks.unlock() == [], "refreshed a moment ago (by the store's clock): it may be live"
    age_lock(repo, planted, time.time() - STALE_SECONDS - 60)
    with pytest.raises(RepositoryLocked, match=r"stale .*phx unlock"):
        repo.lock(False, "backup")
    assert [i.name for i in repo.locks.unlock()] == [planted]
    repo.lock(True, "prune").release()


def test_a_lock_from_a_clock_behind_is_not_stale_while_it_is_refreshed(tmp_path: Path) -> None:
    """A live backup on a host whose clock is an hour behind: its lock's time looked an hour old,
    so `phx unlock` removed the live lock. The store's time of its object (rewritten by every
    refresh) says it is live."""
    repo = new_repo(tmp_path / "repo")
    behind = time.time() - 3600
    planted = plant_lock(repo, host="elsewhere", exclusive=True, time=behind, created=behind)
    assert repo.locks.unlock() == []
    with pytest.raises(RepositoryLocked, match="wait for it to finish"):
        repo.lock(False, "backup")
    age_lock(repo, planted, behind)  # no refresh since: every clock agrees it is stale
    assert [i.name for i in repo.locks.unlock()] == [planted]


def test_unlock_on_a_machine_whose_clock_is_ahead_keeps_a_lock_being_refreshed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two machines, one repository: the store and a live backup keep the right time, the machine
    that runs `phx unlock` is an hour ahead. Judged by its clock, the lock's time and its object's
    time both looked an hour old, so `phx unlock` removed the live lock. The object's age is now
    read on the store's clock (the time the store gives an object written for the purpose)."""
    repo = new_repo(tmp_path / "repo")
    live = plant_lock(repo, host="elsewhere", exclusive=False)
    real = time.time
    monkeypatch.setattr(locks.time, "time", lambda: real() + 3600)
    with pytest.raises(RepositoryLocked, match="wait for it to finish"):  # not "stale ... `phx unlock`"
        repo.lock(True, "prune")
    assert repo.locks.unlock() == []
    assert live in lock_names(repo), "a lock being refreshed stays"
    assert lock_names(repo) == {live}, "unlock leaves nothing of its own"
    age_lock(repo, live, real() - 3600)  # then it stops being refreshed: stale by every clock
    assert [i.name for i in repo.locks.unlock()] == [live]
    assert lock_names(repo) == set()


class FullDisk(LocalBackend):
    """The real local backend on a disk with no room left for a new object."""

    def write(self, name: str, data: bytes, *, exclusive: bool = False, cold: bool = False) -> None:
        raise NoSpace(f"no space left on the device while writing {name}; free some space and run again")


def test_a_store_that_takes_no_write_leaves_our_clock_to_judge(tmp_path: Path) -> None:
    """The store's clock is measured with a shared lock written and removed at once. A store that
    takes no write (a full disk, a read-only mount) gives no measurement: our clock judges, as
    before the store's clock was read, and `phx unlock` still removes a stale lock."""
    path = tmp_path / "repo"
    repo = new_repo(path)
    now = time.time()
    stale = age_lock(repo, plant_lock(repo, host="elsewhere", time=now - 7200, created=now - 7200), now - 7200)
    full = Repository.open(FullDisk(path), keys.Credentials(passphrase=None))
    with pytest.raises(RepositoryLocked, match=r"stale .*remove it with `phx unlock`"):
        full.lock(True, "prune")
    assert [i.name for i in full.locks.unlock()] == [stale]
    assert lock_names(repo) == set()


@needs_proc
def test_a_clock_probe_killed_before_its_removal_goes_with_the_next_command(tmp_path: Path) -> None:
    """A process killed (SIGKILL) between writing its clock probe and removing it leaves a shared
    lock of a dead process: the next command on this host removes it, saying so."""
    path = tmp_path / "repo"
    new_repo(path)
    child = (
        "import os, signal, sys\n"
        "from phoenix_backup.repo import keys, locks\n"
        "from phoenix_backup.repo.repository import Repository\n"
        "from phoenix_backup.storage.local import LocalBackend\n"
        "repo = Repository.open(LocalBackend(sys.argv[1]), keys.Credentials(passphrase=None))\n"
        "locks.HeldLock(repo.locks, 'locks/' + os.urandom(16).hex(), False, 'lock check').write()\n"
        "os.kill(os.getpid(), signal.SIGKILL)\n"
    )
    proc = subprocess.run([sys.executable, "-c", child, str(path)], check=False)
    assert proc.returncode == -signal.SIGKILL
    notices: list[str] = []
    repo = Repository.open(LocalBackend(path), keys.Credentials(passphrase=None), notice=notices.append)
    (left,) = lock_names(repo)
    with repo.lock(True, "prune"):
        assert lock_names(repo) - {left} and left not in lock_names(repo)
    assert any("no longer runs: shared lock by lock check" in n for n in notices), notices
    assert lock_names(repo) == set()


class NoStatOfLocks(LocalBackend):
    """The real local backend, except that asking for a lock object's metadata fails (an S3 HEAD
    that its retries never get through)."""

    def stat(self, name: str) -> ObjectInfo | None:
        if name.startswith("locks/"):
            raise StorageError(f"the service failed while reading {name}; check the network and run again")
        return super().stat(name)


def test_doctor_says_on_its_locks_line_when_it_cannot_read_the_stores_clock(tmp_path: Path) -> None:
    """Judging a lock on the store's clock takes requests now (write, stat, delete a probe lock),
    and they can fail: doctor stopped at once with the error, no locks line, none of the checks
    after it. It says so on the locks line, with the cause, and leaves no probe behind."""
    path = tmp_path / "repo"
    repo = new_repo(path)
    now = time.time()
    stale = age_lock(repo, plant_lock(repo, host="elsewhere", time=now - 7200, created=now - 7200), now - 7200)
    result = DoctorResult()
    _locks(Repository.open(NoStatOfLocks(path), keys.Credentials(passphrase=None)), result)
    (check,) = result.checks
    assert (check.name, check.status) == ("locks", "fail")
    assert "store's clock" in check.message and "the service failed while reading locks/" in check.message
    assert check.fix is not None and "run `phx doctor` again" in check.fix
    assert lock_names(repo) == {stale}, "the probe went, the lock is untouched"


def test_a_holder_learns_its_lock_was_removed_and_never_recreates_it(tmp_path: Path) -> None:
    repo = new_repo(tmp_path / "repo")
    held = repo.lock(False, "backup")
    held.confirm()  # present and ours
    repo.backend.delete(held.name)
    with pytest.raises(RepositoryError, match="removed by another process"):
        held.confirm()
    with pytest.raises(RepositoryError, match="nothing was committed"):
        repo.locks.confirm_held()
    held.release()
    assert lock_names(repo) == set()


def test_a_holder_learns_its_lock_was_overwritten(tmp_path: Path) -> None:
    repo = new_repo(tmp_path / "repo")
    other = new_repo(tmp_path / "other")
    held = repo.lock(False, "backup")
    foreign = plant_lock(other, host="elsewhere")
    repo.backend.write(held.name, other.backend.read(foreign))
    with pytest.raises(RepositoryError, match="lock is gone"):
        held.confirm()
    held.release()
    assert lock_names(repo) == {held.name}, "a lock that is not ours is not deleted by us"


def test_a_lock_records_where_and_when_it_was_taken(tmp_path: Path) -> None:
    repo = new_repo(tmp_path / "repo")
    before = time.time()
    with repo.lock(False, "backup"):
        (info,) = repo.locks.all()
        assert info.is_ours() and info.pid_ns == pid_namespace() and info.time_ns == time_namespace()
        assert before - 1 <= info.created <= time.time()


def test_a_refresh_held_up_by_a_slow_store_never_brings_back_a_released_lock(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The refresh reads the lock (is it still ours?), then writes it again. When the store
    answers that read slowly (longer than `release` waits for the refresh), the holder may have
    released the lock meanwhile (a retention that finished): writing it then would bring back a
    lock of a process that is about to end, which blocks every other machine's backup until it is
    stale and `phx unlock` removes it."""
    from phoenix_backup.repo import locks

    repo = new_repo(tmp_path / "repo")
    monkeypatch.setattr(locks, "REFRESH_SECONDS", 0.05)
    original = LocalBackend.read
    answered = threading.Event()

    def slow_read(self: LocalBackend, name: str) -> bytes:
        data = original(self, name)
        if threading.current_thread().name == "phx-lock-refresh" and not answered.is_set():
            answered.set()
            time.sleep(5.5)  # the answer arrives late: `release` waits 5 s for the refresh
        return data

    monkeypatch.setattr(LocalBackend, "read", slow_read)
    held = repo.lock(True, "forget and prune")
    assert answered.wait(10), "the lock was never refreshed"
    held.release()
    assert lock_names(repo) == set()
    assert held._thread is not None
    held._thread.join(10)
    assert lock_names(repo) == set(), "the released lock was written again by its refresh"
