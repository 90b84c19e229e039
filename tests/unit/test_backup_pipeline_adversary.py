"""Issue 20, attacked: the background SHA-256 thread and the pack writer thread of a backup.

Whatever goes wrong in a helper thread must end the backup with that error, at once: never a
main thread waiting for ever on a thread that is gone, never a digest of other bytes than those
stored.
"""

from __future__ import annotations

import hashlib
import random
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from phoenix_backup.repo import crypto, keys
from phoenix_backup.repo.crypto import BackgroundSha256, BlobType
from phoenix_backup.repo.pack import DATA_PACK_TARGET
from phoenix_backup.repo.repository import MAX_PACKS_WRITING, Repository
from phoenix_backup.storage.local import LocalBackend


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


_SHA256 = crypto.Sha256


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
    monkeypatch.setattr(crypto, "Sha256", _FailingHash)

    def run() -> str:
        with BackgroundSha256(limit=1024) as digest:
            for _ in range(50):
                digest.update(bytes(1000))  # the limit lets one buffer wait at a time
            return digest.hexdigest()

    ended, result = _within(10, run)
    assert ended, "the feeder hung on a hashing thread that had died"
    assert isinstance(result, MemoryError), result


class _GatedHash:
    """A SHA-256 whose `update` waits for `gate`: the hashing thread busy on a large buffer."""

    def __init__(self) -> None:
        self.inner = _SHA256()
        self.gate = threading.Event()
        self.entered = threading.Event()

    def update(self, data: Any) -> None:
        self.entered.set()
        self.gate.wait(30)
        self.inner.update(data)

    def hexdigest(self) -> str:
        return self.inner.hexdigest()


def test_a_feeder_waiting_for_room_notices_a_close_from_another_thread(monkeypatch: pytest.MonkeyPatch) -> None:
    """`close` from another thread (the run is ending) while the feeder waits for room: the
    feeder's `update` raises at once, as one after `close` does. Before, it woke, found the
    dropped queue empty and queued its buffer for a digest that had been let go."""
    gated = _GatedHash()
    monkeypatch.setattr(crypto, "Sha256", lambda: gated)
    digest = BackgroundSha256(limit=10)
    digest.update(bytes(10))
    assert gated.entered.wait(10)  # the hashing thread holds the first buffer: no room is left
    waiting: list[BaseException | None] = []

    def feed() -> None:
        try:
            digest.update(bytes(10))
            waiting.append(None)
        except BaseException as exc:
            waiting.append(exc)

    feeder = threading.Thread(target=feed, daemon=True)
    feeder.start()
    time.sleep(0.2)  # let it wait for room
    assert not waiting, "the second buffer found room it should not have"
    closer = threading.Thread(target=digest.close, daemon=True)
    closer.start()
    feeder.join(10)
    try:
        assert not feeder.is_alive(), "the feeder went on waiting after close"
        assert isinstance(waiting[0], ValueError) and "closed" in str(waiting[0]), waiting
    finally:
        gated.gate.set()
        closer.join(10)
    assert not closer.is_alive()


class _RemoteStore(LocalBackend):
    """A store whose every pack write takes LATENCY seconds (an S3 or R2 PUT far away); counts
    how many pack writes are under way at once."""

    LATENCY = 0.5

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.lock = threading.Lock()
        self.now = 0
        self.most = 0

    def write(self, name: str, data: bytes, *, exclusive: bool = False, cold: bool = False) -> None:
        if not name.startswith("data/"):
            super().write(name, data, exclusive=exclusive, cold=cold)
            return
        with self.lock:
            self.now += 1
            self.most = max(self.most, self.now)
        try:
            time.sleep(self.LATENCY)
            super().write(name, data, exclusive=exclusive, cold=cold)
        finally:
            with self.lock:
                self.now -= 1


def test_a_remote_store_gets_two_packs_at_once_as_before(tmp_path: Path) -> None:
    """Each sealing thread used to write the pack it filled, so a store far away had two PUTs under
    way at once; one pack writer thread halved that (a backup to S3 took twice as long on its
    writes). Two packs are written at once, and every blob reads back."""
    Repository.init(
        LocalBackend(tmp_path / "repo"),
        lambda m: keys.wrap_passphrase(m, "pw", kdf_params={"n": 2**10, "r": 8, "p": 1}),
        encrypted=True,
    )
    store = _RemoteStore(tmp_path / "repo")
    repo = Repository.open(store, keys.Credentials(passphrase="pw"))
    repo.load_index()
    rnd = random.Random(5)
    blobs = [rnd.randbytes(256 * 1024) for _ in range(4 * DATA_PACK_TARGET // (256 * 1024))]
    ids = [repo.save_blob_async(BlobType.DATA, b) for b in blobs]
    repo.flush()
    repo.close()
    assert store.most == MAX_PACKS_WRITING == 2, f"{store.most} pack write(s) at once"
    again = Repository.open(LocalBackend(tmp_path / "repo"), keys.Credentials(passphrase="pw"))
    again.load_index()
    assert [again.load_blob(BlobType.DATA, bid) for bid in ids] == blobs
