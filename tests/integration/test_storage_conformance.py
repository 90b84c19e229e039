"""The one conformance suite every storage backend must pass: local disk, S3 (a real moto server
over HTTP) and Git (a working clone pushing to a bare repository on disk). A new backend is done
when this suite passes against it."""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Callable

import pytest
from storage_support import KINDS, require_git

from phoenix_backup.errors import ObjectExists, ObjectNotFound, RepositoryExists, StorageError
from phoenix_backup.storage.base import Backend

PACK = "data/ab/" + "ab" * 32
PACK2 = "data/cd/" + "cd" * 32
INDEX = "index/" + "11" * 32
SNAP = "snapshots/" + "22" * 32
KEY = "keys/" + "33" * 8
LOCK = "locks/" + "44" * 16


@pytest.fixture(params=KINDS)
def backend(request: pytest.FixtureRequest, make_backend: Callable[..., Backend]) -> Backend:
    if request.param == "git":
        require_git()
    b = make_backend(request.param)
    b.create()
    return b


def test_new_store_holds_no_repository_until_config_is_written(
    request: pytest.FixtureRequest, make_backend: Callable[..., Backend]
) -> None:
    for kind in KINDS:
        if kind == "git":
            require_git()
        b = make_backend(kind)
        assert not b.exists(), kind
        b.create()
        assert not b.exists(), kind
        b.write(KEY, b"slot", exclusive=True)
        assert not b.exists(), kind
        b.write("config", b"{}", exclusive=True)
        assert b.exists(), kind
        with pytest.raises(RepositoryExists):
            b.create()


def test_write_then_read_gives_the_same_bytes(backend: Backend) -> None:
    blobs = {name: os.urandom(1000 + i) for i, name in enumerate((PACK, INDEX, SNAP, KEY, "config"))}
    for name, data in blobs.items():
        backend.write(name, data)
    for name, data in blobs.items():
        assert backend.read(name) == data, name
        info = backend.stat(name)
        assert info is not None and info.name == name and info.size == len(data)


def test_empty_object_round_trips(backend: Backend) -> None:
    backend.write(SNAP, b"")
    assert backend.read(SNAP) == b""
    info = backend.stat(SNAP)
    assert info is not None and info.size == 0


def test_read_range_reads_exactly_the_slice(backend: Backend) -> None:
    data = bytes(range(256)) * 40
    backend.write(PACK, data)
    assert backend.read_range(PACK, 0, 10) == data[:10]
    assert backend.read_range(PACK, 1000, 333) == data[1000:1333]
    assert backend.read_range(PACK, len(data) - 4, 4) == data[-4:]
    with pytest.raises(ObjectNotFound):
        backend.read_range(PACK, len(data) - 4, 8)  # past the end: the index lied


def test_read_range_into_reads_the_same_slice_into_a_buffer(backend: Backend) -> None:
    data = bytes(range(256)) * 40
    backend.write(PACK, data)
    buf = bytearray(b"\xee" * 400)
    assert backend.read_range_into(PACK, 1000, memoryview(buf)[:333]) == 333
    assert buf[:333] == data[1000:1333] and buf[333:] == b"\xee" * 67  # nothing past the range
    with pytest.raises(ObjectNotFound):
        backend.read_range_into(PACK, len(data) - 4, memoryview(buf)[:8])  # past the end


def test_missing_objects(backend: Backend) -> None:
    with pytest.raises(ObjectNotFound):
        backend.read(PACK)
    with pytest.raises(ObjectNotFound):
        backend.read_range(PACK, 0, 1)
    assert backend.stat(PACK) is None
    backend.delete(PACK)  # deleting what is absent is not an error


def test_exclusive_write_refuses_an_existing_object_and_keeps_it(backend: Backend) -> None:
    backend.write(KEY, b"first", exclusive=True)
    with pytest.raises(ObjectExists):
        backend.write(KEY, b"second", exclusive=True)
    assert backend.read(KEY) == b"first"


def test_plain_write_replaces(backend: Backend) -> None:
    # Lock objects are rewritten in place when refreshed.
    backend.write(LOCK, b"one")
    backend.write(LOCK, b"two")
    assert backend.read(LOCK) == b"two"


def test_list_returns_the_names_of_the_format_per_folder(backend: Backend) -> None:
    names = {PACK: b"p", PACK2: b"pp", INDEX: b"i", SNAP: b"s", KEY: b"k", LOCK: b"l"}
    for name, data in names.items():
        backend.write(name, data)
    assert {(i.name, i.size) for i in backend.list("data/")} == {(PACK, 1), (PACK2, 2)}
    assert {i.name for i in backend.list("index/")} == {INDEX}
    assert {i.name for i in backend.list("snapshots/")} == {SNAP}
    assert {i.name for i in backend.list("keys/")} == {KEY}
    assert {i.name for i in backend.list("locks/")} == {LOCK}
    assert list(backend.list_temporary()) == []


def test_delete_removes(backend: Backend) -> None:
    backend.write(SNAP, b"x")
    backend.delete(SNAP)
    assert backend.stat(SNAP) is None
    assert [i.name for i in backend.list("snapshots/")] == []


@pytest.mark.parametrize("name", ["../config", "/etc/passwd", "data/zz/" + "ab" * 32, "keys/../../x", "data/ab/ab", ""])
def test_names_outside_the_format_are_refused(backend: Backend, name: str) -> None:
    with pytest.raises(StorageError):
        backend.write(name, b"x")
    with pytest.raises(StorageError):
        backend.read(name)


def test_cold_hint_is_accepted_and_reads_back(backend: Backend) -> None:
    backend.write(PACK, b"data pack", cold=True)
    assert backend.read(PACK) == b"data pack"


def test_large_object_round_trips(request: pytest.FixtureRequest, make_backend: Callable[..., Backend]) -> None:
    """11 MiB: on S3 (threshold lowered to 5 MiB) this takes the multipart path."""
    data = os.urandom(11 * 1024 * 1024)
    for kind in KINDS:
        if kind == "git":
            require_git()
        extra = {"multipart_threshold": 5 * 1024 * 1024, "part_size": 5 * 1024 * 1024} if kind == "s3" else {}
        b = make_backend(kind, **extra)
        b.create()
        b.write(PACK, data)
        got = b.read(PACK)
        assert hashlib.sha256(got).digest() == hashlib.sha256(data).digest(), kind
        assert b.read_range(PACK, 6 * 1024 * 1024, 100) == data[6 * 1024 * 1024 : 6 * 1024 * 1024 + 100]


def test_concurrent_writers_all_land(backend: Backend) -> None:
    names = [f"data/{i:02x}/{i:02x}" + "0" * 62 for i in range(24)]
    errors: list[BaseException] = []

    def put(name: str) -> None:
        try:
            backend.write(name, name.encode() * 100)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=put, args=(n,)) for n in names]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert {i.name for i in backend.list("data/")} == set(names)
    for n in names:
        assert backend.read(n) == n.encode() * 100


def test_checkpoint_and_publish_are_safe_to_call(backend: Backend) -> None:
    backend.write(SNAP, b"s")
    backend.checkpoint("phoenix snapshot test")
    backend.publish()
    assert backend.read(SNAP) == b"s"
    assert backend.checkpoint("nothing new") is False


def test_location_names_the_store(backend: Backend) -> None:
    assert backend.location
    assert "secret" not in backend.location.lower()
