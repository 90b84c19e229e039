"""The watch's lock around a slow first target (docs/reliability.md): `close` after an error lets go
of the repository lock only once no segment write of the watch can land any more, and a backlog
that takes longer than a lease to drain lets go at the lease's end, so that an exclusive command
waiting for the watch gets in (and no segment is written while it holds the repository).

The target is the sandbox's local repository whose writes of capture segments take a while (as
the slow S3 proxy of test_watch_slow_target.py holds them, in-process here: a few seconds a test)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from e2e_support import Sandbox
from test_watch_adversary import _commit, _table
from test_watch_bases import _watcher

from phoenix_backup.config import load_config
from phoenix_backup.ops import watch as watch_mod
from phoenix_backup.ops.context import Environment, open_repository
from phoenix_backup.ops.watch import Watcher
from phoenix_backup.repo.repository import Repository


def _slow_segments(w: Watcher, seconds: float, monkeypatch: pytest.MonkeyPatch) -> tuple[list[float], threading.Event]:
    """Each capture segment's write to the first target takes `seconds`; returns when each landed
    (monotonic) and an event set once the first one is in flight."""
    backend = w.repo.backend
    real: Callable[..., None] = backend.write
    landed: list[float] = []
    started = threading.Event()

    def slow(name: str, data: bytes, **kwargs: bool) -> None:
        if name.startswith("captures/"):
            started.set()
            time.sleep(seconds)
        real(name, data, **kwargs)
        if name.startswith("captures/"):
            landed.append(time.monotonic())

    monkeypatch.setattr(backend, "write", slow)
    return landed, started


def _bases_written(w: Watcher) -> None:
    """The bases taken and their first segment written, under the watch's lease."""
    w.poll()
    w.flush()
    w._write_queue()
    assert not w.queue


def _write_in_flight(w: Watcher, db: Path, monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """The bases written, then the writer thread started and a segment's write of 3 s in flight;
    returns when each segment write landed (`_slow_segments`)."""
    _bases_written(w)
    landed, started = _slow_segments(w, 3.0, monkeypatch)
    w.start_writer()
    _commit(db, 1)
    w.poll()
    w.flush()
    assert started.wait(30), "no segment write started"
    return landed


def _other(sb: Sandbox) -> Repository:
    return open_repository(load_config(sb.config_path, sb.env), Environment(env=sb.env))


def test_close_after_an_error_lets_go_of_the_lock_only_once_no_segment_write_can_land(
    sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An error ends the watch while a segment's write to a slow target is in flight; a prune
    takes the repository's lock right after `close`. Before, `close` waited half a second for the
    writer and let go of the lock: the prune held the repository while the segment was still
    being written, and the write landed under the prune's lock."""
    sb = sandbox
    db = sb.layout.dashboard_db
    _table(db)
    other = _other(sb)
    notices: list[str] = []
    try:
        with _watcher(sb, notices) as w:
            landed = _write_in_flight(w, db, monkeypatch)
            # An error ends the watch here: `watch` closes the watcher (leaving `_watcher`).
        with other.lock(exclusive=True, command="prune"):
            taken = time.monotonic()
        deadline = time.monotonic() + 30
        while not landed and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        other.close()
    assert landed, "the segment write never ended"
    late = [round(at - taken, 2) for at in landed if at >= taken]
    assert not late, f"a segment write landed {late} s after another process took the lock"
    assert any("before letting go of the repository lock" in n for n in notices), notices


def test_a_backlog_longer_than_a_lease_lets_go_at_the_leases_end_and_writes_nothing_under_another_lock(
    sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Eight segments wait in the spool (another command held the repository); each write takes
    half a second, the lease one second. The watch writes the backlog, lets go at the end of its
    lease (an exclusive command waiting for it gets in), writes nothing while that command holds
    the repository, then takes the lease again and writes the rest. Before, the whole backlog was
    written under one lease: the exclusive command got in only after it (behind a slow target,
    past its wait of WATCH_LEASE_SECONDS + 10 s)."""
    sb = sandbox
    db = sb.layout.dashboard_db
    _table(db)
    other = _other(sb)
    holds: list[tuple[float, float, int]] = []  # the exclusive lock: taken, let go, segments waiting then
    notices: list[str] = []
    try:
        with _watcher(sb, notices) as w:
            _bases_written(w)
            monkeypatch.setattr(watch_mod, "LEASE_SECONDS", 1.0)
            w._release()
            w.lock_free_until = time.monotonic() + 3600  # as under another command's lock: all to the spool
            w.queue_limit = 0
            for k in range(1, 9):
                _commit(db, k)
                w.poll()
                w.flush()
            assert len(w.queue) == 8 and len([p for p in w.spool.iterdir() if "-" in p.name]) == 8
            landed, started = _slow_segments(w, 0.5, monkeypatch)
            w.lock_free_until = 0.0
            w.start_writer()

            def prune() -> None:
                with other.lock(exclusive=True, command="prune"):
                    got, waiting = time.monotonic(), len(w.queue)
                    time.sleep(1.0)
                    holds.append((got, time.monotonic(), waiting))

            assert started.wait(30), "no segment write started"
            pruner = threading.Thread(target=prune)
            pruner.start()
            pruner.join(90)
            assert not pruner.is_alive()
            deadline = time.monotonic() + 60
            while w.queue and time.monotonic() < deadline:
                time.sleep(0.05)
            w.finish_writes()
            assert not w.queue
    finally:
        other.close()
    assert holds, "the exclusive command never got the repository"
    got, let_go, waiting = holds[0]
    assert waiting > 0, "the exclusive command got in only once the whole backlog was written"
    under = [round(at - got, 2) for at in landed if got <= at <= let_go]
    assert not under, f"segments landed while another command held the repository: {under}"
    assert len(landed) == 8


def test_a_second_ctrl_c_while_close_waits_for_a_write_leaves_the_lock_in_place(
    sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The wait of `close` for a slow write ends at a second Ctrl-C (the watch ends at once, as a
    kill would), and the lock is then not let go: the write may still land, so the lock stays in
    the store until this process ends (the next command removes a dead process's lock)."""
    sb = sandbox
    db = sb.layout.dashboard_db
    _table(db)
    notices: list[str] = []
    with _watcher(sb, notices) as w:
        landed = _write_in_flight(w, db, monkeypatch)
        w.abandon.set()  # a second Ctrl-C
        held = w.lock
        assert held is not None
        closing = time.monotonic()
        w.close()
        assert time.monotonic() - closing < 2.0, "close waited for the write after a second Ctrl-C"
        assert not landed
        assert {info.name for info in w.repo.backend.list("locks/")} == {held.name}
        deadline = time.monotonic() + 30
        while not landed and time.monotonic() < deadline:
            time.sleep(0.05)
        held.release()  # as the process's end would
    assert any("lock stays until this process ends" in n for n in notices), notices


def test_close_after_an_error_with_a_target_that_never_answers_ends_keeping_the_lock(
    sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A segment's write to a target that never answers (a hung network mount: no timeout of its
    own) is in flight when an error ends the watch. `close` waits for it only so long
    (`CLOSE_WAIT_SECONDS`, one second here), then ends leaving the lock in place until the process
    ends, as after a second Ctrl-C. Before, it waited for ever: an unattended watch ended by an
    error never ended (nor was restarted by its service manager)."""
    sb = sandbox
    db = sb.layout.dashboard_db
    _table(db)
    notices: list[str] = []
    monkeypatch.setattr(watch_mod, "CLOSE_WAIT_SECONDS", 1.0, raising=False)
    answer = threading.Event()
    with _watcher(sb, notices) as w:
        _bases_written(w)
        backend = w.repo.backend
        real: Callable[..., None] = backend.write
        started = threading.Event()

        def never_answers(name: str, data: bytes, **kwargs: bool) -> None:
            if name.startswith("captures/"):
                started.set()
                answer.wait(60)  # for ever, as far as `close` can tell (60 s: the test's own bound)
            real(name, data, **kwargs)

        monkeypatch.setattr(backend, "write", never_answers)
        w.start_writer()
        _commit(db, 1)
        w.poll()
        w.flush()
        assert started.wait(30), "no segment write started"
        held = w.lock
        assert held is not None
        closer = threading.Thread(target=w.close)
        closing = time.monotonic()
        closer.start()
        closer.join(10)
        waited = time.monotonic() - closing
        answer.set()  # the test's end: the write may go on now
        closer.join(30)
        assert waited < 10, "close waited for ever for a write that never answers"
        assert {info.name for info in w.repo.backend.list("locks/")} == {held.name}, "the lock was let go"
        held.release()  # as the process's end would
    assert any("lock stays until this process ends" in n for n in notices), notices
