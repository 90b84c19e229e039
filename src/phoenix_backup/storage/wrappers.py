"""Behaviour every backend needs, as wrappers around any backend (restic's layering): retries with
backoff on transient errors only, and a limit on concurrent requests.

Retry policy (DESIGN §8): a transient error (timeout, dropped connection, 5xx, throttling) is
retried with exponential backoff and jitter, at most 5 attempts, none started past 60 s (the one
under way then runs to its own end: a request gives up within 60 s plus one attempt). A refused
connection is retried on a shorter schedule so that a target that is down fails within 10 s; after
that the wrapper remembers the target is down and fails every later call at once, so a backup
does not spend 10 s per object on a dead target. Permanent errors (missing object, bad
credentials, full disk) are never retried.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import TypeVar

from phoenix_backup.errors import ObjectExists, TargetUnreachable, TransientStorageError
from phoenix_backup.storage.base import Backend, ObjectInfo, Protection

T = TypeVar("T")

MAX_ATTEMPTS = 5
MAX_SECONDS = 60.0
# A refused connection is retried briefly (a service restarting) and then fails the target:
# 4 attempts with 0.25 + 0.5 + 1 s of backoff, or fewer when connect timeouts (3 s each) eat the
# budget, stays inside the 10 s DESIGN §8 allows.
UNREACHABLE_ATTEMPTS = 4
UNREACHABLE_SECONDS = 10.0
TRANSIENT_BACKOFF = 1.0
UNREACHABLE_BACKOFF = 0.25


class WrappedBackend(Backend):
    """Forwards every call to `inner`; subclasses change how calls are made."""

    def __init__(self, inner: Backend) -> None:
        self.inner = inner
        self.kind = inner.kind
        self.append_only = inner.append_only
        self.merges_on_publish = inner.merges_on_publish

    def _call(self, fn: Callable[[], T]) -> T:
        return fn()

    @property
    def location(self) -> str:
        return self.inner.location

    def exists(self) -> bool:
        return self._call(self.inner.exists)

    def create(self, slots: Mapping[str, bytes] | None = None) -> None:
        self._call(lambda: self.inner.create(slots))

    def read(self, name: str) -> bytes:
        return self._call(lambda: self.inner.read(name))

    def read_range(self, name: str, offset: int, length: int) -> bytes:
        return self._call(lambda: self.inner.read_range(name, offset, length))

    def read_range_into(self, name: str, offset: int, buf: memoryview) -> int:
        return self._call(lambda: self.inner.read_range_into(name, offset, buf))

    def write(self, name: str, data: bytes, *, exclusive: bool = False, cold: bool = False) -> None:
        self._call(lambda: self.inner.write(name, data, exclusive=exclusive, cold=cold))

    def delete(self, name: str) -> None:
        self._call(lambda: self.inner.delete(name))

    def stat(self, name: str) -> ObjectInfo | None:
        return self._call(lambda: self.inner.stat(name))

    def list(self, prefix: str) -> Iterator[ObjectInfo]:
        # A listing is materialised inside the call, so a retry never yields an entry twice and
        # the concurrency slot is not held while the caller works through the entries.
        return iter(self._call(lambda: list(self.inner.list(prefix))))

    def list_temporary(self) -> Iterator[ObjectInfo]:
        return iter(self._call(lambda: list(self.inner.list_temporary())))

    def delete_temporary(self, name: str) -> None:
        self._call(lambda: self.inner.delete_temporary(name))

    def checkpoint(self, message: str) -> bool:
        return self._call(lambda: self.inner.checkpoint(message))

    def publish(self) -> bool:
        return self._call(self.inner.publish)

    def prepare_read(self, names: Iterable[str]) -> None:
        wanted = list(names)
        self._call(lambda: self.inner.prepare_read(wanted))

    def abort_abandoned_uploads(self, *, everything: bool) -> int:
        return self._call(lambda: self.inner.abort_abandoned_uploads(everything=everything))

    def protection(self) -> Protection:
        return self._call(self.inner.protection)

    def close(self) -> None:
        self.inner.close()

    def close_readers(self) -> None:
        self.inner.close_readers()

    def unwrap(self) -> Backend:
        inner = self.inner
        return inner.unwrap() if isinstance(inner, WrappedBackend) else inner


class RetryingBackend(WrappedBackend):
    def __init__(
        self,
        inner: Backend,
        *,
        attempts: int = MAX_ATTEMPTS,
        max_seconds: float = MAX_SECONDS,
        unreachable_seconds: float = UNREACHABLE_SECONDS,
        notice: Callable[[str], None] | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        super().__init__(inner)
        self.attempts = attempts
        self.max_seconds = max_seconds
        self.unreachable_seconds = unreachable_seconds
        self.notice = notice or (lambda _m: None)
        self._sleep = sleep
        self._down: TargetUnreachable | None = None
        self.retries = 0  # how many retries this wrapper made (reported by tests and sync)

    def _call(self, fn: Callable[[], T]) -> T:
        if self._down is not None:
            raise self._down
        start = time.monotonic()
        attempt = 0
        while True:
            attempt += 1
            try:
                return fn()
            except TargetUnreachable as exc:
                delay = UNREACHABLE_BACKOFF * 2 ** (attempt - 1)
                spent = time.monotonic() - start
                if attempt >= min(self.attempts, UNREACHABLE_ATTEMPTS) or spent + delay > self.unreachable_seconds:
                    self._down = exc
                    raise
            except TransientStorageError as exc:
                delay = TRANSIENT_BACKOFF * 2 ** (attempt - 1) * random.uniform(0.8, 1.2)
                if attempt >= self.attempts or time.monotonic() - start + delay > self.max_seconds:
                    raise TransientStorageError(f"{exc} (gave up after {attempt} attempts)") from exc
                if attempt == 1:  # the location once: an S3 or Git error names it already
                    where = "" if self.location in str(exc) else f"{self.location}: "
                    self.notice(f"{where}{exc}; retrying")
            self.retries += 1
            self._sleep(delay)

    def write(self, name: str, data: bytes, *, exclusive: bool = False, cold: bool = False) -> None:
        if not exclusive:
            return super().write(name, data, exclusive=False, cold=cold)
        # An exclusive write whose answer was lost may have succeeded: the retry then finds the
        # object. It is ours when its bytes are ours.
        first = [True]

        def attempt() -> None:
            try:
                self.inner.write(name, data, exclusive=True, cold=cold)
            except ObjectExists:
                if first[0] or self.inner.read(name) != data:
                    raise
            finally:
                first[0] = False

        self._call(attempt)


class LimitedBackend(WrappedBackend):
    """At most `limit` calls in flight at once (shared by every thread using this backend)."""

    def __init__(self, inner: Backend, limit: int) -> None:
        super().__init__(inner)
        self.limit = limit
        self._slots = threading.BoundedSemaphore(limit)

    def _call(self, fn: Callable[[], T]) -> T:
        with self._slots:
            return fn()


def wrap(
    backend: Backend, *, limit: int, notice: Callable[[str], None] | None = None, attempts: int = MAX_ATTEMPTS
) -> Backend:
    """The standard stack: a concurrency limit outside, retries inside (a retry keeps its slot, so
    backing off never lets more requests through than the limit). `attempts` 1: no retry (a
    diagnosis, which says what failed at once)."""
    return LimitedBackend(RetryingBackend(backend, notice=notice, attempts=attempts), limit)


def unwrap(backend: Backend) -> Backend:
    return backend.unwrap() if isinstance(backend, WrappedBackend) else backend


__all__ = ["LimitedBackend", "RetryingBackend", "WrappedBackend", "unwrap", "wrap"]
