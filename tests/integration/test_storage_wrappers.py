"""The wrappers every backend gets: retries on transient errors only (at most 5 attempts or 60 s)
and a concurrency limit. The faults are injected around a real local backend; the refused
connection against a real closed port is in test_storage_s3.py."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from phoenix_backup.errors import ObjectExists, ObjectNotFound, TargetAuthError, TransientStorageError
from phoenix_backup.storage import wrappers
from phoenix_backup.storage.local import LocalBackend
from phoenix_backup.storage.wrappers import LimitedBackend, RetryingBackend

SNAP = "snapshots/" + "22" * 32


class Flaky(LocalBackend):
    """A local backend whose next `failures` calls raise `error` before doing the real work."""

    def __init__(self, root: Path, failures: int, error: Exception, *, after: bool = False) -> None:
        super().__init__(root)
        self.failures = failures
        self.error = error
        self.after = after  # fail after the write happened (a lost answer)
        self.calls = 0

    def write(self, name: str, data: bytes, *, exclusive: bool = False, cold: bool = False) -> None:
        self.calls += 1
        if self.failures > 0 and not self.after:
            self.failures -= 1
            raise self.error
        super().write(name, data, exclusive=exclusive, cold=cold)
        if self.failures > 0 and self.after:
            self.failures -= 1
            raise self.error


def _retrying(inner: LocalBackend, sleeps: list[float]) -> RetryingBackend:
    return RetryingBackend(inner, sleep=sleeps.append)


def test_transient_errors_are_retried_with_backoff(tmp_path: Path) -> None:
    inner = Flaky(tmp_path, 3, TransientStorageError("503 SlowDown"))
    sleeps: list[float] = []
    _retrying(inner, sleeps).write(SNAP, b"x")
    assert inner.calls == 4
    assert inner.read(SNAP) == b"x"
    assert len(sleeps) == 3 and sleeps[0] < sleeps[1] < sleeps[2], sleeps


def test_the_retry_notice_names_the_location_once(tmp_path: Path) -> None:
    """An S3 error names its location already ("s3://b/p at URL answered SlowDown ..."): the
    notice said it twice."""
    inner = Flaky(tmp_path, 1, TransientStorageError("placeholder"))
    inner.error = TransientStorageError(f"{inner.location} answered SlowDown while writing {SNAP}")
    notices: list[str] = []
    RetryingBackend(inner, sleep=lambda s: None, notice=notices.append).write(SNAP, b"x")
    assert notices == [f"{inner.location} answered SlowDown while writing {SNAP}; retrying"]
    (tmp_path / "plain").mkdir()
    plain = Flaky(tmp_path / "plain", 1, TransientStorageError("503 SlowDown"))
    notices.clear()
    RetryingBackend(plain, sleep=lambda s: None, notice=notices.append).write(SNAP, b"x")
    assert notices == [f"{plain.location}: 503 SlowDown; retrying"]


def test_at_most_five_attempts(tmp_path: Path) -> None:
    inner = Flaky(tmp_path, 99, TransientStorageError("503"))
    with pytest.raises(TransientStorageError, match="gave up after 5 attempts"):
        _retrying(inner, []).write(SNAP, b"x")
    assert inner.calls == 5


def test_never_past_sixty_seconds(tmp_path: Path) -> None:
    inner = Flaky(tmp_path, 99, TransientStorageError("503"))
    backend = RetryingBackend(inner, max_seconds=0.05, sleep=lambda s: time.sleep(0.01))
    with pytest.raises(TransientStorageError):
        backend.write(SNAP, b"x")
    assert inner.calls == 1, "the first backoff would pass the time budget"


class Slow(Flaky):
    """Every write takes `seconds` and then fails (a request that times out); `starts` records
    when each attempt began."""

    def __init__(self, root: Path, seconds: float) -> None:
        super().__init__(root, 99, TransientStorageError("timed out"))
        self.seconds = seconds
        self.starts: list[float] = []

    def write(self, name: str, data: bytes, *, exclusive: bool = False, cold: bool = False) -> None:
        self.starts.append(time.monotonic())
        time.sleep(self.seconds)
        super().write(name, data, exclusive=exclusive, cold=cold)


def test_the_time_budget_bounds_when_a_retry_starts_not_its_end(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The budget (60 s; 0.1 s here) is checked before each backoff: no retry starts past it, but
    the last one started runs to its own end (an S3 request's 60 s read timeout, a Git command's
    own limit). A request therefore gives up within the budget plus one attempt, the bound
    docs/targets.md states."""
    monkeypatch.setattr(wrappers, "TRANSIENT_BACKOFF", 0.001)
    inner = Slow(tmp_path, 0.04)
    backend = RetryingBackend(inner, max_seconds=0.1, sleep=lambda s: None)
    start = time.monotonic()
    with pytest.raises(TransientStorageError, match="gave up"):
        backend.write(SNAP, b"x")
    took = time.monotonic() - start
    assert len(inner.starts) >= 2
    assert all(t - start <= 0.1 for t in inner.starts), [t - start for t in inner.starts]
    assert took > 0.1 or len(inner.starts) == 5, "the last attempt ran past the budget"


@pytest.mark.parametrize("error", [TargetAuthError("denied"), ObjectNotFound("gone")])
def test_permanent_errors_are_not_retried(tmp_path: Path, error: Exception) -> None:
    inner = Flaky(tmp_path, 1, error)
    with pytest.raises(type(error)):
        _retrying(inner, []).write(SNAP, b"x")
    assert inner.calls == 1


def test_an_exclusive_write_whose_answer_was_lost_succeeds(tmp_path: Path) -> None:
    inner = Flaky(tmp_path, 1, TransientStorageError("connection reset"), after=True)
    _retrying(inner, []).write(SNAP, b"mine", exclusive=True)
    assert inner.read(SNAP) == b"mine"
    with pytest.raises(ObjectExists):
        _retrying(inner, []).write(SNAP, b"other", exclusive=True)


def test_concurrency_limit(tmp_path: Path) -> None:
    active = 0
    peak = 0
    lock = threading.Lock()

    class Slow(LocalBackend):
        def write(self, name: str, data: bytes, *, exclusive: bool = False, cold: bool = False) -> None:
            nonlocal active, peak
            with lock:
                active += 1
                peak = max(peak, active)
            time.sleep(0.02)
            with lock:
                active -= 1
            super().write(name, data, exclusive=exclusive, cold=cold)

    backend = LimitedBackend(Slow(tmp_path), 3)
    threads = [threading.Thread(target=backend.write, args=(f"snapshots/{i:064x}", b"x")) for i in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert peak == 3
    assert len(list(backend.list("snapshots/"))) == 12
