"""Blob ids, sealing (AEAD or checksum) and compression: the byte-level primitives of the format.

All heavy work is in native code (blake3, cryptography's OpenSSL AES-GCM and SHA-256, zstd), which
releases the GIL, so several threads can seal blobs at once.

SHA-256 and constant-time comparison come from here (SHA-256 through `cryptography`), not from
the standard library's `hashlib`, `hmac` or `secrets`: those load the system's own OpenSSL
(libcrypto, 3.4 MiB resident) beside the one `cryptography` carries, and `phx watch` would hold
both for weeks (docs/benchmarks.md, "One OpenSSL in `phx watch`"); the modules it loads take
random names from `os.urandom`. A passphrase slot's scrypt may use `hashlib` (repo/keys.py
`_derive_kek`), as may a Git clone's name (storage/git.py `clone_dir`); argentos/ hashes names with it.
"""

from __future__ import annotations

import importlib
import os
import threading
import zlib
from _operator import _compare_digest
from collections import deque
from enum import IntEnum
from typing import TYPE_CHECKING

import blake3

from phoenix_backup.errors import CorruptObject, ToolMissing

if TYPE_CHECKING:
    from types import ModuleType

    from cryptography.hazmat.primitives.ciphers.aead import AESGCM
    from cryptography.hazmat.primitives.hashes import SHA256, Hash

NONCE_SIZE = 12
TAG_SIZE = 16
CHECKSUM_SIZE = 16
ID_SIZE = 32
# The largest plaintext any blob may have. The largest a Phoenix writes is a run of changed SQLite
# pages: at most 4096 pages (the `sqliteRunPages` ceiling) of 64 KiB; file chunks stop at 16 MiB.
# A pack header or index entry is repository data, so its raw length is checked against this
# before anything is allocated for it.
MAX_BLOB_SIZE = 4096 * 65536


class BlobType(IntEnum):
    DATA = 0
    TREE = 1


class Compression(IntEnum):
    NONE = 0
    ZSTD = 1
    GZIP = 2  # deflate (zlib), for configs that ask for the seed's "gzip"


def _cryptography(module: str) -> ModuleType:
    """A module of `cryptography` (9 MB of memory: its own OpenSSL), imported on first use, not
    with this module: a command opening a passphrase slot runs scrypt (32 MiB) before it is
    loaded, so the two do not add up in its peak memory (docs/benchmarks.md)."""
    return _package(f"cryptography.hazmat.primitives.{module}", "cryptography", "encrypts the repository")


def zstandard_module() -> ModuleType:
    """`zstandard` (2 MB resident with its library), imported at its first use, not with the
    modules that compress: a command's scrypt (32 MiB) runs without it in memory. That first use
    may be on a writer thread in the middle of a backup: a package that cannot be loaded is
    ToolMissing, one sentence, not an internal error."""
    return _package("zstandard", "zstandard", "compresses the repository's data")


def _package(module: str, package: str, role: str) -> ModuleType:
    try:
        return importlib.import_module(module)
    except ImportError as exc:  # first seen here, in the middle of a command, not at its start
        raise ToolMissing(
            f"the Python package {package}, which {role}, cannot be loaded ({exc}); reinstall Phoenix with its "
            f"dependencies (`pipx reinstall phoenix-backup`, or `pip install --force-reinstall {package}` in its "
            "environment)"
        ) from None


def load_cryptography() -> None:
    """Load `cryptography` now (ToolMissing when it cannot be): a passphrase slot's scrypt opened
    afterwards runs in its OpenSSL, and the process never maps the standard library's
    (repo/keys.py `_derive_kek`)."""
    _cryptography("hashes")


class Sha256:
    """SHA-256 through `cryptography`'s OpenSSL, with hashlib's interface (`update`, `digest`,
    `hexdigest`, the last two as often as wanted). `update` releases the GIL. One thread at a time:
    unlike hashlib's object, which locks, a second thread's call meanwhile raises RuntimeError
    (`BackgroundSha256` is how a second thread hashes)."""

    __slots__ = ("_hash",)

    def __init__(self, data: bytes | bytearray | memoryview = b"") -> None:
        self._hash = _new_sha256()
        self.update(data)

    def update(self, data: bytes | bytearray | memoryview) -> None:
        self._hash.update(_as_bytes(data))

    def digest(self) -> bytes:
        return self._hash.copy().finalize()

    def hexdigest(self) -> str:
        return self.digest().hex()


_sha256: tuple[type[Hash], SHA256] | None = None


def _new_sha256() -> Hash:
    """A new `cryptography` SHA-256 context. The module and the (stateless) algorithm object are
    looked up once: per call they cost more than hashing 4 KiB (docs/benchmarks.md)."""
    global _sha256
    if _sha256 is None:
        hashes = _cryptography("hashes")
        _sha256 = (hashes.Hash, hashes.SHA256())
    new, algorithm = _sha256
    return new(algorithm)


def _as_bytes(data: bytes | bytearray | memoryview) -> memoryview:
    """hashlib hashes the bytes of any contiguous buffer; `cryptography` takes bytes only: a view
    of 4-byte items (a cast, an array) is hashed as its bytes here too, not refused."""
    view = memoryview(data)
    if view.format != "B" and view.c_contiguous:
        view = view.cast("B")
    return view


def sha256_hex(data: bytes | bytearray | memoryview) -> str:
    context = _new_sha256()
    context.update(_as_bytes(data))
    return context.finalize().hex()


FILE_BLOCK = 64 * 1024


def sha256_file(path: str | os.PathLike[str]) -> str:
    """SHA-256 of a file's bytes, read in blocks."""
    digest = Sha256()
    with open(path, "rb", buffering=0) as f:
        # A buffer no larger than the file (a small note needs no 64 KiB of zeroes), and under
        # glibc's mmap threshold (cli/main.py): a 1 MiB one was mapped and unmapped for each file.
        buffer = bytearray(min(FILE_BLOCK, max(os.fstat(f.fileno()).st_size, 4096)))
        view = memoryview(buffer)
        while n := f.readinto(buffer):
            digest.update(view[:n])
    return digest.hexdigest()


def same_bytes(a: bytes | memoryview, b: bytes | memoryview) -> bool:
    """Whether two MACs or tags are equal, in a time that does not tell where they differ: the C
    function that `hmac.compare_digest` (and `cryptography`'s `bytes_eq`, `secrets.compare_digest`)
    is, taken from where they take it, as importing `hmac` maps the system's libcrypto."""
    return _compare_digest(a, b)


class BackgroundSha256:
    """The SHA-256 of bytes fed in order, computed in a thread of its own: `Sha256` releases the
    GIL, so the feeding thread goes on (reading, cutting, hashing blob ids) while the second core
    hashes the same buffers, instead of a pass of its own. At most `limit` bytes wait (memory
    stays flat); a feeder ahead of the hashing waits. Bytes objects (and views of them) are
    hashed as they are; anything mutable (or not contiguous) is copied first, as its owner may
    reuse it. An error of the hashing thread is raised by the next `update` or `hexdigest`.

    `hexdigest` waits for every byte fed; `close` lets go of the thread (what is still waiting
    is dropped: the run is ending). Use it as a context manager so the thread always ends."""

    def __init__(self, limit: int = 1024 * 1024) -> None:
        self._digest = Sha256()
        self._limit = limit
        self._cond = threading.Condition()
        self._queue: deque[memoryview] = deque()
        self._queued = 0
        self._ended = False
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="phx-sha256", daemon=True)
        self._thread.start()

    def update(self, data: bytes | memoryview) -> None:
        view = memoryview(data)
        if not (isinstance(view.obj, bytes) and view.c_contiguous):
            view = memoryview(view.tobytes())
        size = view.nbytes
        with self._cond:
            self._raise_error()
            if self._ended:
                raise ValueError("a closed digest cannot be fed")
            while not self._ended and self._queued and self._queued + size > self._limit:
                self._cond.wait()
            self._raise_error()
            if self._ended:  # `close` from another thread while this one waited for room
                raise ValueError("a closed digest cannot be fed")
            self._queue.append(view)
            self._queued += size
            self._cond.notify_all()

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._ended:
                    self._cond.wait()
                if not self._queue:
                    return
                view = self._queue[0]
            try:
                self._digest.update(view)  # outside the lock: the feeder goes on meanwhile
            except BaseException as exc:
                # The feeder waits for this thread: it must learn of the error, not wait for ever.
                with self._cond:
                    self._error = exc
                    self._queue.clear()
                    self._queued = 0
                    self._cond.notify_all()
                return
            with self._cond:
                if self._queue and self._queue[0] is view:  # else `close` dropped the queue
                    self._queue.popleft()
                    self._queued -= view.nbytes
                self._cond.notify_all()

    def hexdigest(self) -> str:
        """The SHA-256 of everything fed (the digest takes no more bytes afterwards)."""
        with self._cond:
            while self._queue:
                self._cond.wait()
        self.close()
        self._raise_error()
        return self._digest.hexdigest()

    def _raise_error(self) -> None:
        """The hashing thread's error, in the feeder's thread."""
        if self._error is not None:
            raise self._error

    def close(self) -> None:
        with self._cond:
            self._ended = True
            self._queue.clear()
            self._queued = 0
            self._cond.notify_all()
        self._thread.join()

    def __enter__(self) -> BackgroundSha256:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class BlobIds:
    """Keyed BLAKE3 ids, one key per blob type so a data blob and a tree blob never share an id."""

    def __init__(self, id_key: bytes) -> None:
        self._keys = {
            BlobType.DATA: blake3.blake3(b"phoenix v1 data blob id", key=id_key).digest(),
            BlobType.TREE: blake3.blake3(b"phoenix v1 tree blob id", key=id_key).digest(),
        }
        # Page hashes in the local cache are keyed too: the cache then reveals nothing about the
        # plaintext to someone without the repository key.
        self.page_key = blake3.blake3(b"phoenix v1 page hash", key=id_key).digest()

    def blob_id(self, kind: BlobType, data: bytes | memoryview) -> bytes:
        return blake3.blake3(data, key=self._keys[kind]).digest()


class _NotLoaded(Exception):
    """What `InvalidTag` is until `aead` loads `cryptography`: nothing raises it."""


# What an AEAD's decrypt raises for damaged or tampered bytes: `cryptography`'s InvalidTag, set
# by `aead` when it loads `cryptography` (so it is loaded once, not at every decrypt, and not
# with this module). Read it as `crypto.InvalidTag` where the exception is caught, never import
# it by name: whoever holds an AEAD from `aead` finds the real class there.
InvalidTag: type[Exception] = _NotLoaded


def aead(key: bytes) -> AESGCM:
    """AES-256-GCM under `key` (`cryptography` loaded on first use, see `_cryptography`; the
    first call also sets `InvalidTag`)."""
    global InvalidTag
    aesgcm: type[AESGCM] = _cryptography("ciphers.aead").AESGCM
    if InvalidTag is _NotLoaded:
        from cryptography.exceptions import InvalidTag as tag

        InvalidTag = tag
    return aesgcm(key)


class Sealer:
    """Seals a payload: AES-256-GCM with a random nonce, or (unencrypted) a BLAKE3 checksum.

    `aad` binds a sealed payload to its place (a blob to its type and id, a header to its pack),
    so a valid ciphertext moved elsewhere fails to open.
    """

    def __init__(self, key: bytes | None) -> None:
        self._aead = aead(key) if key is not None else None

    @property
    def encrypted(self) -> bool:
        return self._aead is not None

    @property
    def overhead(self) -> int:
        return NONCE_SIZE + TAG_SIZE if self._aead else CHECKSUM_SIZE

    def seal(self, payload: bytes | memoryview, aad: bytes) -> bytes:
        if self._aead is None:
            return bytes(payload) + _checksum(payload, aad)
        # Random 96-bit nonces: safe up to ~2**32 seals per key (NIST SP 800-38D), far more
        # blobs than a workspace repository holds.
        nonce = os.urandom(NONCE_SIZE)
        return nonce + self._aead.encrypt(nonce, payload, aad)

    def open(self, sealed: bytes | memoryview, aad: bytes, what: str) -> bytes:
        if len(sealed) < self.overhead:
            raise CorruptObject(f"{what} is truncated")
        if self._aead is None:
            payload, check = sealed[:-CHECKSUM_SIZE], sealed[-CHECKSUM_SIZE:]
            if _checksum(payload, aad) != bytes(check):
                raise CorruptObject(f"{what} fails its checksum")
            return bytes(payload)
        try:
            return self._aead.decrypt(sealed[:NONCE_SIZE], sealed[NONCE_SIZE:], aad)
        except InvalidTag as exc:
            raise CorruptObject(f"{what} fails authentication (damaged or tampered)") from exc


def _checksum(payload: bytes | memoryview, aad: bytes) -> bytes:
    h = blake3.blake3(aad)
    h.update(payload)
    return h.digest(length=CHECKSUM_SIZE)


_local = threading.local()


class Compressor:
    """zstd per blob; a blob that does not shrink is stored as it is (embeddings barely compress)."""

    def __init__(self, enabled: bool, level: int | None = None, algorithm: str = "zstd") -> None:
        self.enabled = enabled
        self.method = Compression.GZIP if algorithm == "gzip" else Compression.ZSTD
        # zstd's fast level -1 by default. Embeddings are float32 noise that barely compresses: on
        # the medium sample's databases level -1 runs 2.3x faster than level 1 (1.6 vs 0.7 GB/s
        # on one core) and the repository after a full backup is 8% larger (443 vs 411 MB).
        # Configs may ask for any level from -7 to 22.
        self.level = level if level is not None else (6 if self.method == Compression.GZIP else -1)

    def compress(self, data: bytes | memoryview) -> tuple[Compression, bytes | memoryview]:
        if not self.enabled or len(data) < 64:
            return Compression.NONE, data
        if self.method == Compression.GZIP:
            out = zlib.compress(data, self.level)
        else:
            # One compression context per thread and level: they are not thread-safe, and
            # reusing one avoids allocating its tables for every blob.
            key = f"cctx{self.level}"
            cctx = getattr(_local, key, None)
            if cctx is None:
                cctx = zstandard_module().ZstdCompressor(level=self.level)
                setattr(_local, key, cctx)
            out = cctx.compress(data)
        if len(out) >= len(data) - len(data) // 32:
            return Compression.NONE, data
        return self.method, out


def decompress(method: int, data: bytes, raw_length: int, what: str) -> bytes:
    """The plaintext of a stored blob, never more than `raw_length` bytes (which the pack header or
    index declares, at most MAX_BLOB_SIZE): a blob that would inflate further is refused before the
    memory is allocated."""
    if not 0 <= raw_length <= MAX_BLOB_SIZE:
        raise CorruptObject(f"{what} claims {raw_length} bytes, more than any blob holds (damaged or hostile)")
    if method == Compression.NONE:
        return data
    if method == Compression.ZSTD:
        zstandard = zstandard_module()  # loaded at the first use

        # A frame that records its size is decompressed into a buffer of that size whatever
        # `max_output_size` says: check the recorded size first.
        try:
            declared = zstandard.frame_content_size(data)
        except zstandard.ZstdError as exc:
            raise CorruptObject(f"{what} does not decompress: {exc}") from exc
        if declared > raw_length:
            raise CorruptObject(f"{what} would inflate to {declared} bytes, more than the {raw_length} it claims")
        # One decompression context per thread: they are not thread-safe, and reusing one
        # avoids allocating its window for every blob.
        dctx = getattr(_local, "dctx", None)
        if dctx is None:
            dctx = _local.dctx = zstandard.ZstdDecompressor()
        try:
            plain: bytes = dctx.decompress(data, max_output_size=raw_length)
        except zstandard.ZstdError as exc:
            raise CorruptObject(f"{what} does not decompress: {exc}") from exc
        return plain
    if method == Compression.GZIP:
        inflater = zlib.decompressobj()
        try:
            out = inflater.decompress(data, raw_length + 1)
        except zlib.error as exc:
            raise CorruptObject(f"{what} does not decompress: {exc}") from exc
        if len(out) > raw_length or inflater.unconsumed_tail:
            raise CorruptObject(f"{what} inflates to more than the {raw_length} bytes it claims")
        return out
    raise CorruptObject(f"{what} uses unknown compression {method}")
