"""Reading a file's or a database's bytes back out of the repository: the one node reader every
command uses (restore, dump, archive, export, diff, the database sinks), as restic's dump code
serves tar and zip alike.

A node's content is a list of extents, each a slice of one data blob. The reader loads each blob
once while it is in use, keeps the recent ones (a database's extents come back to the same blobs
again and again), hashes the bytes as they go and checks them against the snapshot's SHA-256 and
size: a consumer that commits only after `finish` (or reads `blocks`, which checks before the last
block) never commits damaged data.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from collections import OrderedDict
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from phoenix_backup.errors import CorruptObject, NoSpace, ObjectNotFound, PhoenixError
from phoenix_backup.repo.crypto import BlobType
from phoenix_backup.repo.pack import pack_name
from phoenix_backup.repo.repository import Repository
from phoenix_backup.repo.tree import Extent, Node

# A database's extents come back to the same page-run blobs again and again (the pages that did
# not change since it was first stored): recent blobs are kept instead of being opened anew. On the
# 7-day benchmark repository 2 MiB already avoids all but 8 of 5,839 loads of memory.db.
BLOB_CACHE_BYTES = 4 * 1024 * 1024
# A scratch copy of a database (diff, export, restore --merge) needs this much room besides.
COPY_MARGIN = 16 * 1024 * 1024


def extent_ranges(repo: Repository, logical: str, extents: list[Extent]) -> Iterator[tuple[bytes, int, int]]:
    """(blob, start, end) of each extent in order: its bytes are blob[start:end]."""
    cache: OrderedDict[bytes, bytes] = OrderedDict()
    cached = 0
    for ext in extents:
        blob = cache.get(ext.blob)
        if blob is None:
            blob = repo.load_blob(BlobType.DATA, ext.blob)
            cache[ext.blob] = blob
            cached += len(blob)
            while cached > BLOB_CACHE_BYTES and len(cache) > 1:
                cached -= len(cache.popitem(last=False)[1])
        else:
            cache.move_to_end(ext.blob)
        if ext.offset + ext.length > len(blob):
            raise CorruptObject(f"data of {logical} is shorter than the snapshot says (damaged)")
        yield blob, ext.offset, ext.offset + ext.length


def extent_bytes(repo: Repository, logical: str, extents: list[Extent]) -> Iterator[memoryview]:
    """The bytes of each extent in order; each is valid until the next one is asked for."""
    for blob, start, end in extent_ranges(repo, logical, extents):
        yield memoryview(blob)[start:end]


class NodeReader:
    """A file's or database's bytes, read extent by extent from the repository, hashed as they go.

    `ranges` gives (blob, start, end) for writers that look into the blob (sparse files); `chunks`
    the bytes; `read` is a file-like read (for tarfile); `blocks` holds back the last block until
    the whole node matched. `finish` raises when the bytes did not match the snapshot's SHA-256 or
    size, naming the path.
    """

    def __init__(self, repo: Repository, logical: str, node: Node) -> None:
        self.repo = repo
        self.logical = logical
        self.node = node
        self.digest = hashlib.sha256()
        self.total = 0
        self._chunks = self.chunks()
        self._buffer = b""

    def ranges(self) -> Iterator[tuple[bytes, int, int]]:
        for blob, start, end in extent_ranges(self.repo, self.logical, self.node.content):
            self.digest.update(memoryview(blob)[start:end])
            self.total += end - start
            yield blob, start, end

    def chunks(self) -> Iterator[memoryview]:
        for blob, start, end in self.ranges():
            yield memoryview(blob)[start:end]

    def read(self, n: int = -1) -> bytes:
        out = bytearray(self._buffer)
        self._buffer = b""
        while n < 0 or len(out) < n:
            data = next(self._chunks, None)
            if data is None:
                break
            out += data
        if n >= 0 and len(out) > n:
            self._buffer = bytes(out[n:])
            del out[n:]
        return bytes(out)

    def blocks(self) -> Iterator[bytes]:
        """The bytes block by block, the last one only once everything matched (`finish`)."""
        pending: bytes | None = None
        for chunk in self.chunks():
            if pending is not None:
                yield pending
            pending = bytes(chunk)
        self.finish()
        if pending is not None:
            yield pending

    def finish(self) -> None:
        if self.total != self.node.size or self.digest.hexdigest() != self.node.sha256:
            raise CorruptObject(
                f"{self.logical} read from the repository does not match its SHA-256 in the snapshot (damaged); "
                "run `phx verify --read-data` and use another snapshot or target"
            )


def read_node(repo: Repository, logical: str, node: Node) -> bytes:
    """A node's whole content, checked."""
    return b"".join(NodeReader(repo, logical, node).blocks())


def copy_snapshot_database(repo: Repository, logical: str, node: Node, dest: Path) -> Path:
    """Write a snapshot's copy of a database to `dest`, checked against its SHA-256."""
    need = node.size + COPY_MARGIN
    free = shutil.disk_usage(dest.parent).free
    if free < need:
        raise NoSpace(
            f"not enough free space in {dest.parent} for a copy of {logical} ({node.size // 2**20} MiB); "
            "free some space or set TMPDIR to a larger disk"
        )
    reader = NodeReader(repo, logical, node)
    with open(dest, "wb") as f:
        for chunk in reader.chunks():
            f.write(chunk)
    reader.finish()
    return dest


def damaged_pack(repo: Repository, node: Node) -> str | None:
    """The pack holding the first blob of `node` that cannot be read, to name the damaged object."""
    for ext in node.content:
        loc = repo.index.get(ext.blob)
        if loc is None:
            return f"blob {ext.blob.hex()[:16]}"
        try:
            repo.load_blob(BlobType.DATA, ext.blob)
        except CorruptObject:
            return pack_name(loc.pack_id)
        except Exception:  # a storage error names the pack just as well
            return pack_name(loc.pack_id)
    return None


def damage_text(exc: PhoenixError) -> str:
    return f"its data is damaged or missing in the repository ({exc})"


def check_data(
    repo: Repository, nodes: list[tuple[str, Node]], progress: Callable[[int, int], None] | None = None
) -> dict[str, str]:
    """Read, decrypt and authenticate every blob the nodes need; return the paths whose data is
    damaged or missing, each with the reason.

    The AEAD tag (or, unencrypted, the checksum) binds each blob to its id, so a damaged or
    substituted blob is found here, before a restore touches anything. Every path that needs a
    bad blob is named, not only the first.
    """
    needed: dict[bytes, tuple[list[str], int]] = {}  # blob -> (the paths using it, the end of its furthest extent)
    for logical, node in nodes:
        for ext in node.content:
            end = ext.offset + ext.length
            users, prev = needed.get(ext.blob, ([], 0))
            if not users or users[-1] != logical:
                users.append(logical)
            needed[ext.blob] = (users, max(prev, end))
    damaged: dict[str, str] = {}
    for blob, (users, _end) in needed.items():
        if not repo.index.has(blob):
            for logical in users:
                damaged.setdefault(logical, f"its data is missing from the repository (blob {blob.hex()[:16]})")

    def check(item: tuple[bytes, tuple[list[str], int]]) -> None:
        blob, (users, end) = item
        try:
            data = repo.load_blob(BlobType.DATA, blob)
        except (CorruptObject, ObjectNotFound) as exc:
            for logical in users:
                damaged.setdefault(logical, damage_text(exc))
            return
        if len(data) < end:
            for logical in users:
                damaged.setdefault(logical, "its data is shorter than the snapshot says (damaged)")

    present = [(b, u) for b, u in needed.items() if repo.index.has(b)]
    workers = max(2, os.cpu_count() or 2)
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="phx-check") as pool:
        for done, _ in enumerate(pool.map(check, present), 1):
            if progress is not None:
                progress(done, len(present))
    return damaged
