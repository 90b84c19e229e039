"""Issue 20, attacked: the background SHA-256 thread and the pack writer thread of a backup.

Whatever goes wrong in a helper thread must end the backup with that error, at once: never a
main thread waiting for ever on a thread that is gone, never a digest of other bytes than those
stored.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable
from typing import Any

import pytest

from phoenix_backup.repo import crypto
from phoenix_backup.repo.crypto import BackgroundSha256


def _within(seconds: float, call: Callable[[], Any]) -> tuple[bool, Any]:
    """(True, result or exception) when `call` ended within `seconds`; (False, None) when it hung."""
    out: list[Any] = []

    def run() -> None:
        try:
            out.append(call())
        except BaseException as exc:
            out.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    return (not thread.is_alive(), out[0] if out else None)


def test_a_view_with_gaps_is_hashed_as_its_bytes_not_a_dead_thread() -> None:
    """A strided view of bytes (every other byte) is a valid buffer for the caller; hashlib refuses
    it as not contiguous. The digest must be the SHA-256 of the view's bytes, and hexdigest must
    return: before, the hashing thread died on the view and hexdigest waited for ever."""
    data = bytes(range(256)) * 64
    view = memoryview(data)[::2]

    def run() -> str:
        with BackgroundSha256() as digest:
            digest.update(b"head")
            digest.update(view)
            return digest.hexdigest()

    ended, result = _within(10, run)
    assert ended, "hexdigest hung: the hashing thread died and nothing told the feeder"
    assert result == hashlib.sha256(b"head" + view.tobytes()).hexdigest()


_SHA256 = hashlib.sha256


class _FailingHash:
    """A SHA-256 whose second `update` fails the way a thread can fail on its own (out of memory)."""

    def __init__(self) -> None:
        self.inner = _SHA256()
        self.fed = 0

    def update(self, data: Any) -> None:
        self.fed += 1
        if self.fed == 2:
            raise MemoryError("the hashing thread ran out of memory")
        self.inner.update(data)

    def hexdigest(self) -> str:
        return self.inner.hexdigest()


def test_an_error_in_the_hashing_thread_reaches_the_feeder_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """The feeder learns of the hashing thread's error from its next `update` (or `hexdigest`), as
    that error, instead of waiting for room a dead thread never makes."""
    monkeypatch.setattr(crypto.hashlib, "sha256", _FailingHash)

    def run() -> str:
        with BackgroundSha256(limit=1024) as digest:
            for _ in range(50):
                digest.update(bytes(1000))  # the limit lets one buffer wait at a time
            return digest.hexdigest()

    ended, result = _within(10, run)
    assert ended, "the feeder hung on a hashing thread that had died"
    assert isinstance(result, MemoryError), result
