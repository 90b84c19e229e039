"""An attacker who can write the storage plants an object far larger than any Phoenix writes.

Every object is read whole, so before the fix a read took whatever was there: a key slot of
1.5 MiB on S3 or Git was read like any other, a sparse 64 GiB file under `keys/` on local disk
(which costs the attacker no disk) ended in MemoryError. Now each backend refuses, before it
reads the body, an object larger than any of its kind (storage/base.py MAX_OBJECT_SIZE), with
one CorruptObject naming it, which every reader already treats as a damaged object.
"""

from __future__ import annotations

import os
from collections.abc import Callable

import pytest

from phoenix_backup.errors import CorruptObject
from phoenix_backup.storage.base import Backend
from phoenix_backup.storage.local import LocalBackend
from phoenix_backup.storage.wrappers import unwrap

SLOT = "keys/" + "5e" * 8


@pytest.mark.parametrize("kind", ["local", "s3", "git"])
def test_an_object_larger_than_its_kind_allows_is_refused_unread(
    kind: str, make_backend: Callable[..., Backend]
) -> None:
    b = make_backend(kind)
    b.create()
    limit = 1 << 20  # storage/base.py MAX_OBJECT_SIZE: a slot is a few hundred bytes
    b.write(SLOT, b"s" * limit)
    assert b.read(SLOT) == b"s" * limit  # the largest slot Phoenix could write is read
    b.write(SLOT, b"s" * (limit + 1))
    with pytest.raises(CorruptObject, match=r"more than any object of its kind .*did not read it"):
        b.read(SLOT)


def test_a_sparse_64_gib_snapshot_costs_no_memory(make_backend: Callable[..., Backend]) -> None:
    b = make_backend("local")
    b.create()
    inner = unwrap(b)
    assert isinstance(inner, LocalBackend)
    name = "snapshots/" + "ab" * 32
    path = inner.root / name
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        f.truncate(64 << 30)
    assert os.stat(path).st_blocks == 0
    with pytest.raises(CorruptObject, match="68,719,476,736 bytes"):
        b.read(name)
