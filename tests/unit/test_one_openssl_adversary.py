"""The SHA-256 of `repo/crypto.py` (through `cryptography`) against hashlib's, which it replaced,
and the one-OpenSSL promise of `phx watch` against the modules a watch may load later."""

from __future__ import annotations

import array
import hashlib

import pytest

from phoenix_backup.repo.crypto import BackgroundSha256, Sha256, sha256_hex

DATA = bytes(range(256)) * 64


def _typed_buffers() -> list[object]:
    """Buffers hashlib hashes by their bytes whatever their item format."""
    return [
        memoryview(DATA).cast("I"),
        memoryview(DATA).cast("d"),
        memoryview(bytearray(DATA)).cast("H")[3:700],
        array.array("f", [1.5, -2.0, 3.25]),
        memoryview(b""),
    ]


@pytest.mark.parametrize("buffer", _typed_buffers(), ids=["uint32", "double", "uint16-slice", "array", "empty"])
def test_sha256_hashes_every_buffer_hashlib_hashes_to_the_same_digest(buffer: object) -> None:
    expected = hashlib.sha256(buffer).hexdigest()  # type: ignore[arg-type]
    assert sha256_hex(buffer) == expected  # type: ignore[arg-type]
    fed = Sha256()
    fed.update(buffer)  # type: ignore[arg-type]
    assert fed.hexdigest() == expected and fed.digest().hex() == expected
    with BackgroundSha256() as background:
        background.update(buffer)  # type: ignore[arg-type]
        assert background.hexdigest() == expected


@pytest.mark.parametrize("bad", [None, "text", 5])
def test_sha256_refuses_what_hashlib_refuses(bad: object) -> None:
    with pytest.raises(TypeError):
        hashlib.sha256(bad)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        Sha256(bad)  # type: ignore[arg-type]


def test_a_non_contiguous_view_is_refused_not_hashed_in_part() -> None:
    with pytest.raises(BufferError):
        Sha256(memoryview(DATA)[::2])
