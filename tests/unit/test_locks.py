"""Locks (issue 15, failures 1 and 6): a lock is judged dead only when that is provable (same host,
boot and PID namespace); an unreadable lock ages by its object's time, is named, and `unlock`
removes it; a holder learns that its lock was removed or overwritten and never recreates it."""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
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


def test_an_unreadable_lock_dated_in_the_future_is_said_to_need_unlock_all(tmp_path: Path) -> None:
    """An unreadable lock whose object's time on the store lies in the future (a time planted by
    whoever can write the storage: `touch -d 2100`) never grows old enough to be judged stale; every
    command said it blocked "until it is 30 minutes old", which it never is. Now every command,
    `phx unlock` and its notice name the time ahead, when it will be stale (watched unchanged for 30
    minutes, `test_a_lock_dated_ahead_of_every_clock_goes_once_watched_unchanged`) and `phx unlock
    --all`, which removes it now."""
    notices: list[str] = []
    repo = new_repo(tmp_path / "repo", notices)
    name = f"locks/{secrets.token_hex(16)}"
    repo.backend.write(name, os.urandom(300))
    ahead = time.time() + 3 * 3600
    os.utime(tmp_path / "repo" / name, (ahead, ahead))
    with pytest.raises(RepositoryLocked) as blocked:
        repo.lock(False, "backup")
    said = str(blocked.value)
    assert f"unreadable lock {name}" in said and "minutes ahead of this machine's clock" in said, said
    assert "phx unlock --all" in said and "minutes old" not in said, said
    assert repo.locks.unlock() == [] and lock_names(repo) == {name}
    assert len(notices) == 1 and "ahead" in notices[0] and "minutes old" not in notices[0], notices
    (removed,) = repo.locks.unlock(remove_all=True)
    assert removed.name == name
    repo.lock(True, "prune").release()


# 2100-01-01: a time planted on a lock and on its object by whoever can write the storage.
YEAR_2100 = 4_102_444_800.0


class NoTimes(LocalBackend):
    """The real local backend on a store that gives its objects no time."""

    def stat(self, name: str) -> ObjectInfo | None:
        info = super().stat(name)
        return None if info is None else replace(info, modified=None)

    def list(self, prefix: str) -> Iterator[ObjectInfo]:
        for info in super().list(prefix):
            yield replace(info, modified=None)


def plant_dated_2100(repo: Repository, readable: bool, **changes: object) -> str:
    """A lock dated 2100 by its own time and (where the store gives one) its object's time."""
    if readable:
        name = plant_lock(repo, **{"host": "elsewhere", "time": YEAR_2100, "created": YEAR_2100, **changes})
    else:
        name = f"locks/{secrets.token_hex(16)}"
        repo.backend.write(name, os.urandom(300))
    if isinstance(repo.backend, LocalBackend) and not isinstance(repo.backend, NoTimes):
        age_lock(repo, name, YEAR_2100)
    return name


@pytest.mark.parametrize(
    ("readable", "times"),
    [(True, True), (False, True), (True, False), (False, False)],
    ids=["readable", "unreadable", "no-store-time", "unreadable-no-store-time"],
)
def test_a_lock_dated_ahead_of_every_clock_goes_once_watched_unchanged(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, readable: bool, times: bool
) -> None:
    """A lock dated 2100 by its own time and by its object's time on the store (or on a store that
    gives no time: planted by whoever can write the storage, or a dead host's whose clock was
    years ahead; or unreadable on a store that gives no time, which the listing dated "now") was
    never stale: no clock ages it, so every backup, prune and key change was
    refused until a human ran `phx unlock --all`. It is now watched like a lock on a store whose
    times never advance: seen unchanged for 30 minutes on this machine's boot clock, it is stale
    (the next backup says so, `phx unlock` removes it); one dated the same whose holder refreshes
    it (its bytes change every 5 minutes) never is."""
    monkeypatch.setenv("PHX_CACHE_DIR", str(tmp_path / "cache"))
    notices: list[str] = []
    new_repo(tmp_path / "repo")
    backend = LocalBackend(tmp_path / "repo") if times else NoTimes(tmp_path / "repo")
    repo = Repository.open(backend, keys.Credentials(passphrase=None), notice=notices.append)
    dead = plant_dated_2100(repo, readable, exclusive=True)
    live = plant_dated_2100(repo, True, host="ahead")  # shared: a backup is not refused by it
    with pytest.raises(RepositoryLocked) as first:
        repo.lock(False, "backup")
    said = str(first.value)
    assert (dead if not readable else "exclusive lock by backup (pid") in said, said
    assert "no clock can tell how long ago it was written" in said, said
    assert "seen it unchanged for 30 minutes (0 so far)" in said and "`phx unlock --all` removes it now" in said, said
    assert repo.locks.unlock() == [] and lock_names(repo) == {dead, live}
    assert any(f"kept the {'exclusive' if readable else 'unreadable'} lock" in n and "(0 so far)" in n for n in notices)
    boot = locks._boot_clock()
    assert boot is not None
    for minutes in (5, 10, 15, 20, 25, 29):  # the live holder refreshes (its clock still ahead)
        refresh(repo, live, YEAR_2100 + minutes * 60)
        if times:  # its object's time as planted again: a store whose clock is far ahead
            age_lock(repo, live, YEAR_2100)
        monkeypatch.setattr(locks, "_boot_clock", lambda m=minutes: boot + m * 60)
        assert repo.locks.unlock() == [], f"a lock removed after {minutes} minutes"
    monkeypatch.setattr(locks, "_boot_clock", lambda: boot + STALE_SECONDS + 60)
    with pytest.raises(RepositoryLocked, match="the repository has a stale") as later:
        repo.lock(False, "backup")
    assert (dead if not readable else "on elsewhere") in str(later.value)
    assert [i.name for i in repo.locks.unlock()] == [dead], "watched unchanged for 31 minutes: stale"
    assert lock_names(repo) == {live}, "refreshed meanwhile: live"
    repo.lock(False, "backup").release()


@needs_proc
def test_a_lock_dated_ahead_whose_process_runs_here_is_never_stale(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A lock dated 2100 naming a process that runs here (this very test's, its start time
    included) is never judged stale, however long it is watched unchanged: a holder stopped here
    resumes and writes on. Every message says so and names `phx unlock --all`."""
    monkeypatch.setenv("PHX_CACHE_DIR", str(tmp_path / "cache"))
    notices: list[str] = []
    repo = new_repo(tmp_path / "repo", notices)
    # This process's host, boot, namespaces, pid and start time (`plant_lock`'s defaults).
    planted = plant_dated_2100(repo, True, host=socket.gethostname(), exclusive=True)
    boot = locks._boot_clock()
    assert boot is not None
    for minutes in (0, 31, 24 * 60):
        monkeypatch.setattr(locks, "_boot_clock", lambda m=minutes: boot + m * 60)
        notices.clear()
        assert repo.locks.unlock() == []
        assert len(notices) == 1 and "runs on this machine, so it is never judged stale" in notices[0], notices
        with pytest.raises(RepositoryLocked, match=r"never judged stale while that process runs.*unlock --all"):
            repo.lock(False, "backup")
    assert lock_names(repo) == {planted}


def test_the_sightings_note_keeps_only_locks_that_exist_and_is_bounded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The note of locks watched unchanged (`lock-sightings.json`) kept an entry for every lock
    seen on this boot, removed or not: on a store whose times never advance (or with locks dated
    ahead of every clock), every `phx watch` lease (a new lock each minute) added one for good.
    Now a note drops the locks of its store that the listing no longer gives, and holds at most
    MAX_SIGHTINGS entries (the locks seen last wait: their verdicts are only delayed,
    `test_more_planted_locks_than_the_note_holds_still_go_once_watched_unchanged`)."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("PHX_CACHE_DIR", str(cache))
    repo = on_frozen_store(tmp_path)
    then = time.time() - 7200
    for _ in range(5):  # five leases of a watch on a host whose clock is 2 hours behind, one after another
        lease = plant_lock(repo, host="behind", exclusive=True, time=then, created=then)
        assert repo.locks.unlock() == []
        repo.backend.delete(lease)
    (only,) = json.loads((cache / locks.SIGHTINGS).read_text())  # one sighting per lock ever seen, before
    assert only == f"{repo.backend.location} {lease}"
    monkeypatch.setattr(locks, "MAX_SIGHTINGS", 3)
    present = [plant_lock(repo, host="behind", exclusive=True, time=then, created=then) for _ in range(5)]
    assert repo.locks.unlock() == []
    noted = json.loads((cache / locks.SIGHTINGS).read_text())
    assert len(noted) == 3 and {key.split(" ")[-1] for key in noted} <= set(present), noted


def test_more_planted_locks_than_the_note_holds_still_go_once_watched_unchanged(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """More undated locks than the note of sightings holds (MAX_SIGHTINGS, planted by whoever can
    write the storage) never went stale: each new sighting pushed out the one seen longest ago, so
    at every `phx unlock` each lock in turn found its note gone and was watched from 0 again, and
    none was ever seen unchanged for 30 minutes (messages promising it would be). Now the locks
    watched longest stay noted: they go stale, `phx unlock` removes them, and the rest are watched
    next; the messages of a lock left out say why, and a full note is not written again for it."""
    monkeypatch.setenv("PHX_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(locks, "MAX_SIGHTINGS", 3)
    notices: list[str] = []
    new_repo(tmp_path / "repo")
    repo = Repository.open(NoTimes(tmp_path / "repo"), keys.Credentials(passphrase=None), notice=notices.append)
    planted = {plant_dated_2100(repo, True, exclusive=True) for _ in range(4)}
    boot = locks._boot_clock()
    assert boot is not None
    ticks = iter(range(10_000))  # the boot clock advances between two looks, as it does
    minutes = 0
    monkeypatch.setattr(locks, "_boot_clock", lambda: boot + minutes * 60 + next(ticks) / 1000)
    assert repo.locks.unlock() == []
    assert sum("it will stay 0: this machine already watches 3 other locks" in n for n in notices) == 1, notices
    note = tmp_path / "cache" / locks.SIGHTINGS
    written = note.stat().st_ino
    minutes = 1
    assert repo.locks.unlock() == []
    assert note.stat().st_ino == written, "a full note left as it was is not written again (one write per lock)"
    minutes = 31
    first = {info.name for info in repo.locks.unlock()}
    assert len(first) == 3 and first < planted, "the three watched longest are stale"
    assert repo.locks.unlock() == []  # the fourth is watched from now
    minutes = 62
    assert {info.name for info in repo.locks.unlock()} == planted - first
    assert lock_names(repo) == set()


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


def test_a_store_that_takes_no_write_never_lets_our_clock_alone_judge(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The store's clock is measured with a shared lock written and removed at once. A store that
    takes no write (a full disk) gave no measurement and our clock judged alone: on a machine an
    hour ahead, `phx unlock` removed a live backup's lock from another host. Now no lock is judged
    stale on our clock alone: the error, `phx unlock` and `phx doctor` say why and what removes it;
    once the store takes a write, a lock stale by both clocks goes."""
    path = tmp_path / "repo"
    repo = new_repo(path)
    real = time.time
    live = plant_lock(repo, host="elsewhere", exclusive=True, time=real() - 7200, created=real() - 7200)
    monkeypatch.setattr(locks.time, "time", lambda: real() + 3600)
    notices: list[str] = []
    full = Repository.open(FullDisk(path), keys.Credentials(passphrase=None), notice=notices.append)
    with pytest.raises(RepositoryLocked, match=r"store's clock cannot be read \(it takes no write: no space left"):
        full.lock(False, "backup")
    assert full.locks.unlock() == []
    assert lock_names(repo) == {live}, "a live lock stays"
    assert any("kept the exclusive lock" in n and "`phx unlock --all` removes it now" in n for n in notices), notices
    result = DoctorResult()
    _locks(full, result)
    warned = [c.message for c in result.checks if c.status == "warn"]
    assert len(warned) == 1 and "store's clock cannot be read" in warned[0], result.checks
    monkeypatch.setattr(locks.time, "time", real)
    age_lock(repo, live, real() - 7200)  # its holder stopped: stale by every clock
    ok = Repository.open(LocalBackend(path), keys.Credentials(passphrase=None))
    assert [i.name for i in ok.locks.unlock()] == [live]


def test_a_lock_ahead_of_our_clock_on_a_store_that_takes_no_write_is_not_said_ahead_of_the_stores(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A live lock of another host, written now, met by a machine whose clock is an hour behind on
    a store that takes no write (a full disk): its time and its object's are an hour ahead of our
    clock, and the store's clock cannot be read. Every message said "its object's time ahead of the
    store's clock", which no one measured (our clock was the one behind). Now they say the store's
    clock cannot be read, and why; the lock is kept (only a watch of 30 minutes unchanged judges it)."""
    monkeypatch.setenv("PHX_CACHE_DIR", str(tmp_path / "cache"))
    path = tmp_path / "repo"
    repo = new_repo(path)
    real = time.time
    live = plant_lock(repo, host="elsewhere", exclusive=True, time=real(), created=real())
    monkeypatch.setattr(locks.time, "time", lambda: real() - 3600)
    notices: list[str] = []
    full = Repository.open(FullDisk(path), keys.Credentials(passphrase=None), notice=notices.append)
    with pytest.raises(RepositoryLocked) as refused:
        full.lock(False, "backup")
    assert full.locks.unlock() == [] and lock_names(repo) == {live}
    result = DoctorResult()
    _locks(full, result)
    said = [str(refused.value), *notices, *(f"{c.message} {c.fix}" for c in result.checks if c.status == "warn")]
    assert len(said) == 3, said
    for text in said:
        assert "the store's clock cannot be read (it takes no write: no space left" in text, text
        assert "ahead of the store's clock" not in text, text


class ShiftedClock(LocalBackend):
    """The real local backend, its store's clock `shift` seconds ahead of the machine's."""

    shift = 0.0

    def stat(self, name: str) -> ObjectInfo | None:
        info = super().stat(name)
        return info if info is None or info.modified is None else replace(info, modified=info.modified + self.shift)

    def list(self, prefix: str) -> Iterator[ObjectInfo]:
        for info in super().list(prefix):
            yield info if info.modified is None else replace(info, modified=info.modified + self.shift)


def test_the_stores_clock_is_measured_again_when_it_may_have_changed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`phx watch` runs for days, and the store's clock was measured once per process. Once the
    store's clock was set an hour back, the old measurement made a live lock (its holder an hour
    behind, its object rewritten a minute ago) look an hour old by both clocks, and it was judged
    stale. A stale verdict is now never given on a measurement older than a moment; the clock is
    measured again when ours was set, and once the measurement is `SKEW_MAX_AGE` old (a verdict
    the old measurement only delayed comes then)."""
    path = tmp_path / "repo"
    new_repo(path)
    store = ShiftedClock(path)
    repo = Repository.open(store, keys.Credentials(passphrase=None))
    real, mono = time.time, time.monotonic
    dead = age_lock(repo, plant_lock(repo, host="far", time=real() - 9000, created=real() - 9000), real() - 9000)
    live = age_lock(repo, plant_lock(repo, host="behind", time=real() - 3600, created=real() - 3600), real() - 60)
    quiet = age_lock(repo, plant_lock(repo, host="behind", time=real() - 3600, created=real() - 3600), real() - 2400)
    monkeypatch.setattr(locks.time, "time", lambda: real() - 3600)  # our clock an hour behind
    infos = {i.name: i for i in repo.locks.all()}
    assert repo.locks.stale(infos[dead], time.time())  # measured: the store is an hour ahead
    monkeypatch.setattr(locks.time, "time", real)  # our clock set right
    assert not repo.locks.stale(infos[live], real()), "refreshed a minute ago by the store's clock"
    assert repo.locks.stale(infos[dead], real())
    # Then the store's clock is set an hour back (here: every time it gives is an hour earlier):
    # the live lock, read with the old measurement, looks an hour old; a stale verdict is never
    # given on a measurement older than a moment.
    store.shift = -3600.0
    time.sleep(2.5)  # longer than locks.SKEW_CONFIRM
    infos = {i.name: i for i in repo.locks.all()}
    assert not repo.locks.stale(infos[live], real()), "measured again before a stale verdict"
    assert repo.locks.stale(infos[dead], real())
    # Then the store's clock is set right again: with the old measurement, a lock its holder (an
    # hour behind) stopped refreshing 40 minutes ago looks 20 minutes old (a delayed verdict, no
    # harm), until the measurement is SKEW_MAX_AGE old and is taken again.
    store.shift = 0.0
    infos = {i.name: i for i in repo.locks.all()}
    assert not repo.locks.stale(infos[quiet], real())
    later = 320  # both clocks go on, longer than locks.SKEW_MAX_AGE
    monkeypatch.setattr(locks.time, "monotonic", lambda: mono() + later)
    monkeypatch.setattr(locks.time, "time", lambda: real() + later)
    assert repo.locks.stale(infos[quiet], real() + later), "measured again"


class FrozenTimes(LocalBackend):
    """The real local backend on a store whose times never advance: every object has one time (a
    FUSE mount that reports a constant mtime)."""

    when = 1_700_000_000.0

    def stat(self, name: str) -> ObjectInfo | None:
        info = super().stat(name)
        return None if info is None else replace(info, modified=self.when)

    def list(self, prefix: str) -> Iterator[ObjectInfo]:
        for info in super().list(prefix):
            yield replace(info, modified=self.when)


def on_frozen_store(tmp_path: Path, notice: Callable[[str], None] = lambda _: None) -> Repository:
    """A new repository in tmp_path/repo, opened through FrozenTimes."""
    path = tmp_path / "repo"
    new_repo(path)
    return Repository.open(FrozenTimes(path), keys.Credentials(passphrase=None), notice=notice)


def refresh(repo: Repository, name: str, when: float) -> None:
    """Rewrite a planted lock as its holder's refresh does (its time changes, so do its bytes)."""
    doc = json.loads(repo.locks.sealer.open(repo.backend.read(name), locks.LOCK_AAD, name))
    repo.backend.write(name, repo.sealer.seal(json.dumps({**doc, "time": when}).encode(), locks.LOCK_AAD))


def test_a_dead_lock_on_a_store_whose_times_never_advance_goes_once_watched_unchanged(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A store whose times never advance gives the clock probe the time of every lock: each
    looked written this instant by the store's clock, so a dead lock of another host never went
    stale and only `phx unlock --all` removed it. A lock stale by our clock but not by the store's
    is now watched: seen with the same bytes for 30 minutes (on this machine's boot clock, by this
    user's processes), it is stale; a live one, whose every refresh changes its bytes, never is."""
    monkeypatch.setenv("PHX_CACHE_DIR", str(tmp_path / "cache"))
    notices: list[str] = []
    repo = on_frozen_store(tmp_path, notices.append)
    then = time.time() - 7200
    dead = plant_lock(repo, host="gone", exclusive=True, time=then, created=then)
    behind = plant_lock(repo, host="behind", time=then, created=then)  # live, its clock 2 hours behind
    assert repo.locks.unlock() == []
    assert any("kept the exclusive lock" in n and "30 minutes: 0 so far" in n for n in notices), notices
    with pytest.raises(RepositoryLocked, match=r"written 0 minutes ago; if the store's times do not advance.*removes"):
        repo.lock(True, "prune")
    boot = locks._boot_clock()
    assert boot is not None
    refresh(repo, behind, then + 300)
    monkeypatch.setattr(locks, "_boot_clock", lambda: boot + STALE_SECONDS + 60)
    assert [i.name for i in repo.locks.unlock()] == [dead], "watched unchanged for 31 minutes: stale"
    assert lock_names(repo) == {behind}, "refreshed meanwhile: live"


def test_a_holder_whose_clock_stands_still_is_not_taken_for_gone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Sightings count a lock's bytes unchanged for 30 minutes as a stopped holder. In a repository
    without encryption nothing random is sealed in, so a holder whose clock stands still (a frozen
    VM clock, faketime) rewrote the very same bytes at every refresh: on a store whose times never
    advance, `phx unlock` removed its live lock. Every refresh now changes the bytes."""
    monkeypatch.setenv("PHX_CACHE_DIR", str(tmp_path / "cache"))
    path = tmp_path / "repo"
    new_repo(path)
    holder = Repository.open(FrozenTimes(path), keys.Credentials(passphrase=None))
    judge = Repository.open(FrozenTimes(path), keys.Credentials(passphrase=None), notice=lambda _: None)
    real, frozen = time.time, time.time() - 7200
    lock = locks.HeldLock(holder.locks, f"locks/{secrets.token_hex(16)}", True, "backup")
    monkeypatch.setattr(locks.time, "time", lambda: frozen)
    lock.write()
    monkeypatch.setattr(locks.time, "time", real)
    assert judge.locks.unlock() == [], "first seen"
    boot = locks._boot_clock()
    assert boot is not None
    for minutes in (5, 10, 15, 20, 25, 30, 31):  # the holder refreshes every 5 minutes, its clock still
        monkeypatch.setattr(locks.time, "time", lambda: frozen)
        lock.write()
        monkeypatch.setattr(locks.time, "time", real)
        monkeypatch.setattr(locks, "_boot_clock", lambda m=minutes: boot + m * 60)
        assert judge.locks.unlock() == [], f"a live lock removed after {minutes} minutes"
    assert lock_names(holder) == {lock.name}
    lock.confirm()


def plant_sightings(tmp_path: Path, repo: Repository, name: str, **entry: object) -> None:
    """A sightings note that says `name`'s current bytes were first seen at boot time 0."""
    digest = hashlib.sha256(repo.backend.read(name)).hexdigest()
    doc = {f"{repo.backend.location} {name}": {"digest": digest, "since": 0.0, **entry}}
    (tmp_path / "hostile.json").write_text(json.dumps(doc))


def test_a_sightings_file_swapped_after_its_check_is_not_believed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The sightings file was judged by its name (lstat) and then read by its name again: a file
    swapped in meanwhile (a symlink to a note anyone could have written, in a cache folder others
    can write to) was believed, and a live lock seen once was stale at once. The file opened is now
    the one judged."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("PHX_CACHE_DIR", str(cache))
    repo = on_frozen_store(tmp_path)
    then = time.time() - 7200
    live = plant_lock(repo, host="behind", exclusive=True, time=then, created=then)  # its clock 2 h behind
    assert repo.locks.unlock() == [], "first seen: a note of this user's is written"
    plant_sightings(tmp_path, repo, live, boot=json.loads((cache / locks.SIGHTINGS).read_text()).popitem()[1]["boot"])
    (tmp_path / "hostile.json").chmod(0o666)  # anyone may have written it
    real_stat = os.stat

    def swap_after_check(target: object, *args: object, **kwargs: object) -> os.stat_result:
        st = real_stat(target, *args, **kwargs)  # type: ignore[arg-type]
        if str(target) == str(cache / locks.SIGHTINGS):
            os.replace(tmp_path / "hostile.json", str(target) + ".swap")
            (cache / "planted").symlink_to(str(target) + ".swap")
            os.replace(cache / "planted", target)  # type: ignore[arg-type]
        return st

    monkeypatch.setattr(locks.os, "stat", swap_after_check)
    assert repo.locks.unlock() == [], "a planted note hastened the verdict on a live lock"
    assert live in lock_names(repo)


def test_a_sightings_note_from_another_time_namespace_is_not_on_our_clock(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The boot clock is shifted by a time namespace's offset: a container restored on this host
    (CRIU) and a process outside it share the boot id and a cache folder, but not the boot clock.
    A note taken in one was read on the other's clock: a lock seen a minute ago looked watched for
    a day. Now a note counts only in the time namespace that took it."""
    monkeypatch.setenv("PHX_CACHE_DIR", str(tmp_path / "cache"))
    repo = on_frozen_store(tmp_path)
    then = time.time() - 7200
    live = plant_lock(repo, host="behind", exclusive=True, time=then, created=then)
    boot = locks._boot_clock()
    assert boot is not None
    assert repo.locks.unlock() == [], "first seen, in our time namespace"
    ns = time_namespace()
    monkeypatch.setattr(locks, "time_namespace", lambda: ns + 1)  # the restored container: a day ahead
    monkeypatch.setattr(locks, "_boot_clock", lambda: boot + 86400)
    assert repo.locks.unlock() == [], "another namespace's note read on a clock a day ahead"
    assert live in lock_names(repo)


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


def test_a_lock_the_watch_cannot_follow_names_unlock_all(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A dead lock on a store whose times never advance goes once watched unchanged for 30 minutes.
    Where the note cannot be kept (a cache folder that takes no write), the watch stays at 0 for
    ever: the lock was kept for ever with a message promising `phx unlock` would remove it after 30
    minutes, never naming what removes it. The message now says the watch cannot advance, and why,
    and names `phx unlock --all`, in `phx unlock` and in the error of a command that meets it."""
    (tmp_path / "file").write_text("")
    monkeypatch.setenv("PHX_CACHE_DIR", str(tmp_path / "file" / "cache"))  # below a file: never made
    notices: list[str] = []
    repo = on_frozen_store(tmp_path, notices.append)
    then = time.time() - 7200
    dead = plant_lock(repo, host="gone", exclusive=True, time=then, created=then)
    boot = locks._boot_clock()
    assert boot is not None
    for minutes in (0, 31, 600):
        monkeypatch.setattr(locks, "_boot_clock", lambda m=minutes: boot + m * 60)
        notices.clear()
        assert repo.locks.unlock() == []
        (kept,) = notices
        assert "it will stay 0: the note of it cannot be kept in" in kept, kept
        assert "`phx unlock --all` removes it now" in kept, kept
        with pytest.raises(RepositoryLocked, match=r"it will stay 0: .*`phx unlock --all` removes it now"):
            repo.lock(True, "prune")
    assert lock_names(repo) == {dead}


def test_our_clock_set_back_while_locks_are_judged_never_ages_a_live_lock(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`phx unlock` reads our clock once and judges every lock with it; the store's clock is
    measured again when ours was set. On a machine an hour ahead whose clock was set right in
    between, the measurement (now about 0) met the old reading an hour ahead: a lock refreshed 2
    minutes ago looked 62 minutes old by both clocks and was removed. The verdict now uses our
    clock as it is when the measurement is taken, if it reads earlier."""
    path = tmp_path / "repo"
    repo = new_repo(path)
    real = time.time
    live = plant_lock(repo, host="elsewhere", exclusive=True, time=real() - 120, created=real() - 7200)
    age_lock(repo, live, real() - 120)
    monkeypatch.setattr(locks.time, "time", lambda: real() + 3600)  # an hour ahead
    judge = Repository.open(LocalBackend(path), keys.Credentials(passphrase=None), notice=lambda _: None)
    now = locks.time.time()  # as `unlock` reads it, once
    (info,) = [i for i in judge.locks.all() if i.name == live]
    assert not judge.locks.stale(info, now), "measured on the clock an hour ahead: young"
    monkeypatch.setattr(locks.time, "time", real)  # set right (NTP) while the locks are judged
    assert not judge.locks.stale(info, now), "a lock refreshed 2 minutes ago judged stale"


class SlowWrites(LocalBackend):
    """The real local backend, whose writes take `delay` seconds before the object lands (a store
    under load): its clock is ours."""

    delay = 3.0

    def write(self, name: str, data: bytes) -> None:
        time.sleep(self.delay)
        super().write(name, data)


def test_a_slow_store_write_never_makes_its_clock_look_ahead(tmp_path: Path) -> None:
    """The store's clock was measured as the time it gives the probe lock less our time *before*
    writing it: a write that took 3 seconds made a store whose clock is ours look 3 seconds ahead,
    and a lock refreshed 29 minutes 58 seconds ago by the store's clock was stale. Our time is now
    taken once the store has the object: the latency can only delay a verdict."""
    path = tmp_path / "repo"
    new_repo(path)
    repo = Repository.open(SlowWrites(path), keys.Credentials(passphrase=None), notice=lambda _: None)
    now = time.time()
    live = age_lock(
        repo,
        plant_lock(repo, host="behind", exclusive=True, time=now - 7200, created=now - 7200),
        now - STALE_SECONDS + 2,
    )
    skew = repo.locks.store_skew("lock check")
    assert skew is not None and skew <= 0.01, f"the store looked {skew:.1f} s ahead of our clock, which it shares"
    assert not repo.locks.stale(replace(repo.locks.read(live), written=now - STALE_SECONDS + 2), now)


def test_the_suite_never_writes_in_the_users_own_cache(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Code that falls back on the user's cache folder (lock sightings, restore journals) wrote in
    the real `~/.cache/phoenix` of whoever ran the suite; tests/conftest.py now points it below the
    session's temporary folder."""
    from phoenix_backup.repo.cache import cache_root

    assert os.environ.get("PHX_CACHE_DIR") is None
    assert cache_root().is_relative_to(tmp_path_factory.getbasetemp())


@needs_proc
def test_unlock_keeps_the_lock_of_a_stopped_process_that_still_runs_here(tmp_path: Path) -> None:
    """A backup stopped (SIGSTOP, a suspended laptop, a debugger) stops refreshing its lock, which
    turns stale by every clock; `phx unlock` removed it, and a prune could then delete the packs
    the backup writes once it resumes. A holder that provably runs on this machine is kept."""
    notices: list[str] = []
    repo = new_repo(tmp_path / "repo", notices)
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    try:
        start = 0
        while not start:  # its start time, once /proc shows the exec'd interpreter
            start = locks.process_start_time(holder.pid) or 0
        os.kill(holder.pid, signal.SIGSTOP)
        while " T " not in Path(f"/proc/{holder.pid}/stat").read_text():  # the signal is delivered
            time.sleep(0.01)
        old = time.time() - STALE_SECONDS - 600
        planted = age_lock(repo, plant_lock(repo, pid=holder.pid, processStart=start, time=old), old)
        assert repo.locks.unlock() == [], "the stopped holder's lock stays"
        assert lock_names(repo) == {planted}
        assert len(notices) == 1 and "its process runs on this machine" in notices[0]
        assert f"kill -CONT {holder.pid}` lets it finish" in notices[0], notices
        with pytest.raises(RepositoryLocked, match="wait for it to finish") as locked:
            repo.lock(True, "prune")
        assert "stopped or suspended" in str(locked.value) and "FUSE" not in str(locked.value), locked.value
    finally:
        holder.kill()
        holder.wait()
    (removed,) = repo.locks.unlock()  # gone now: provably dead
    assert removed.name == planted and lock_names(repo) == set()


@needs_proc
def test_a_lock_naming_a_process_that_runs_and_is_not_stopped_names_unlock_all(tmp_path: Path) -> None:
    """A lock naming a live process of this machine that is not stopped (pid 1 and its start time,
    readable by anyone, in a lock planted with the key; or a hung holder) is never judged stale:
    every message said `kill -CONT` and 'stopped', none named the way out, `phx unlock --all`, and
    `phx doctor` said no stale locks while prune was refused for ever."""
    notices: list[str] = []
    repo = new_repo(tmp_path / "repo", notices)
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    try:
        start = 0
        while not start:
            start = locks.process_start_time(holder.pid) or 0
        old = time.time() - STALE_SECONDS - 600
        planted = age_lock(repo, plant_lock(repo, pid=holder.pid, processStart=start, time=old), old)
        assert repo.locks.unlock() == [] and lock_names(repo) == {planted}, "a holder that runs is kept"
        (kept,) = notices
        assert "is not stopped" in kept and "kill -CONT" not in kept, kept
        assert "`phx unlock --all` removes it" in kept, kept
        with pytest.raises(RepositoryLocked) as locked:
            repo.lock(True, "prune")
        assert "`phx unlock --all` removes it" in str(locked.value), locked.value
        result = DoctorResult()
        _locks(repo, result)
        (check,) = [c for c in result.checks if c.status == "warn"]
        assert "is not stopped" in check.message, result.checks
        assert check.fix is not None and "`phx unlock --all`" in check.fix, check
        os.kill(holder.pid, signal.SIGSTOP)
        while " T " not in Path(f"/proc/{holder.pid}/stat").read_text():
            time.sleep(0.01)
        notices.clear()
        assert repo.locks.unlock() == []
        (kept,) = notices
        assert f"kill -CONT {holder.pid}` lets it finish" in kept and "`phx unlock --all` removes it" in kept, kept
        (removed,) = repo.locks.unlock(remove_all=True)  # the way out, while it still runs
        assert removed.name == planted and lock_names(repo) == set()
    finally:
        holder.kill()
        holder.wait()
