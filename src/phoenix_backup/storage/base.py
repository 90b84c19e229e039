"""The one small interface every object store implements (local disk, S3/R2, Git).

Object names are relative, slash-separated and fixed by the repository format: `config`,
`keys/<id>`, `runkeys/<16 hex>`, `data/<2 hex>/<64 hex>`, `index/<64 hex>`, `snapshots/<64 hex>`,
`captures/<64 hex>`, `checks/<64 hex>`, `retired/<64 hex>`, `locks/<id>`.
Every backend stores the same objects under the same names below its prefix, so any target can
serve a restore on its own. Behaviour every backend needs (retries, a concurrency limit) wraps a
backend instead of living inside it (storage/wrappers.py).
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass

from phoenix_backup.errors import CorruptObject, StorageError

# Why so strict: names become file paths and object keys. Rejecting anything but the format's own
# shapes means a hostile or corrupt listing can never make a backend touch `..`, an absolute
# path, or a key outside the repository's prefix.
_NAME = re.compile(
    r"^(config|(keys|locks|index|snapshots)/[0-9a-f]{8,64}|runkeys/[0-9a-f]{16}|data/[0-9a-f]{2}/[0-9a-f]{64}"
    r"|(captures|checks|retired)/[0-9a-f]{64})$"
)
TEMP_MARKER = ".tmp-"
# The config's temporary file before its rename (local disk and a Git clone): what an `init` killed
# right then leaves beside its folders, so `create` may start over there.
CONFIG_TEMP = f"{TEMP_MARKER}config."
# The folders of the format, in the order replication fills them (config and keys first, so a
# half-copied target is already a valid, openable repository; the run keys of a write-only
# repository before the objects sealed under them; snapshots last: the commit point; then the
# capture segments of `phx watch`, which name snapshots; the integrity check records, which do too;
# the records of key rotations, which name retired objects).
FOLDERS = ("keys", "runkeys", "data", "index", "snapshots", "captures", "checks", "retired", "locks")


def validate_name(name: str) -> str:
    if not _NAME.fullmatch(name):
        raise StorageError(f"invalid object name {name!r}; this is a bug or a corrupt listing")
    return name


def is_valid_name(name: str) -> bool:
    return _NAME.fullmatch(name) is not None


_MiB = 1 << 20
# The largest object of each kind Phoenix can have written, with room to spare. Every object is
# read whole into memory, so a read refuses anything larger before it reads a byte: a sparse
# 40 GB file planted under `snapshots/` cost no disk and stopped every command with a
# MemoryError; a 2 GB one cost every `phx list` 2 GB of memory. The bounds follow from the
# format's own: an index body inflates to at most 2 GiB (repo/index.py MAX_INDEX_SIZE), and a
# write-only cover repeats at most as much again; a pack holds its 8 MiB target plus one blob of
# at most 256 MiB and a header of at most 64 MiB; a capture segment inflates to at most 1 GiB;
# a snapshot is metadata (its writer refuses one beyond this bound); config, slots, run keys,
# locks and check records are a few kilobytes.
MAX_OBJECT_SIZE = {
    "config": _MiB,
    "keys": _MiB,
    "runkeys": _MiB,
    "locks": _MiB,
    "checks": _MiB,
    "snapshots": 256 * _MiB,
    "index": 2 * (2048 * _MiB) + _MiB,
    "data": 512 * _MiB,
    "captures": 2048 * _MiB,
    # A key rotation's record: the names of the old objects it retired (~75 bytes each).
    "retired": 256 * _MiB,
}


def max_object_size(name: str) -> int:
    return MAX_OBJECT_SIZE[name.split("/", 1)[0]]


def refuse_oversized(name: str, size: int, where: str) -> None:
    """Refuse to read object `name` of `size` bytes when no object of its kind is that large."""
    limit = max_object_size(name)
    if size > limit:
        raise CorruptObject(
            f"{name} in {where} is {size:,} bytes, more than any object of its kind ({limit:,} bytes): "
            "damaged or planted; Phoenix did not read it; delete it from the storage, or copy a good one "
            "back with `phx repair objects --from TARGET`"
        )


def is_slot_of(slots: Mapping[str, bytes] | None, name: str, read: Callable[[str], bytes]) -> bool:
    """Whether the key slot `name` a store holds has the bytes `slots` gives it (`Backend.create`)."""
    if not slots or name not in slots:
        return False
    try:
        return read(name) == slots[name]
    except StorageError:
        return False  # gone meanwhile, or unreadable: nothing to keep


# The fix's words for a diagnosis's "no answer" (`phx doctor`, `phx status`, `answer_seconds`): a
# link that works, slowly, is given its own deadline.
SLOW_LINK = "a slow link that works: raise the deadline with --answer-timeout SECONDS"


@dataclass(frozen=True)
class Protection:
    """What keeps the objects of a store from being deleted or overwritten by whoever holds the
    credentials Phoenix uses there (`phx doctor` shows it for append-only targets). `enforced` is
    True when the store itself refuses (S3 Object Lock, a Git remote refusing force pushes),
    False when nothing but Phoenix's own restraint does, None when Phoenix cannot tell."""

    enforced: bool | None
    message: str
    fix: str | None = None


@dataclass(frozen=True)
class ObjectInfo:
    name: str
    size: int
    # Where the store knows them: the storage class (S3: "STANDARD", "GLACIER", ...) and the
    # time of the last write (Unix seconds), so prune can respect minimum storage periods.
    storage_class: str | None = None
    modified: float | None = None


class Backend(ABC):
    """A flat store of immutable objects. Writes are atomic: an object is wholly there or absent."""

    #: short kind for messages and decisions that depend on the store ("local", "s3", "git")
    kind: str = "local"
    #: Phoenix never deletes or overwrites objects here, locks aside (storage/appendonly.py)
    append_only: bool = False
    #: `publish` may merge others' commits, which may delete objects here (Git): a replication
    #: lists what it relies on before and after (a listing of the local clone)
    merges_on_publish: bool = False

    @property
    @abstractmethod
    def location(self) -> str:
        """Where the objects live, for messages (never containing credentials)."""

    @abstractmethod
    def exists(self) -> bool:
        """Whether the store holds a repository (its `config` object)."""

    @abstractmethod
    def create(self, slots: Mapping[str, bytes] | None = None) -> None:
        """Prepare an empty store (folders, bucket prefix); fails if a repository is already there.
        The key slots an interrupted init left are deleted, except those whose bytes are `slots`'
        (the repository being copied there): another copy racing this one wrote them, and may
        have written its `config` since (deleted, they would leave it a repository nothing opens)."""

    @abstractmethod
    def read(self, name: str) -> bytes: ...

    @abstractmethod
    def read_range(self, name: str, offset: int, length: int) -> bytes: ...

    def read_range_into(self, name: str, offset: int, buf: memoryview) -> int:
        """Read `len(buf)` bytes of `name` from `offset` into `buf`, as `read_range` would read
        them; return how many were read. A restore reads gigabytes of packs this way into buffers
        it reuses (a new buffer of megabytes is new pages for the kernel to map and zero, once per
        range). A store that cannot read into a buffer copies what `read_range` returned."""
        data = self.read_range(name, offset, len(buf))
        buf[: len(data)] = data
        return len(data)

    @abstractmethod
    def write(self, name: str, data: bytes, *, exclusive: bool = False, cold: bool = False) -> None:
        """Store `data` under `name` atomically. With `exclusive`, fail with ObjectExists if `name`
        exists. `cold` marks a data pack: a store with storage classes may put it in the configured
        cold class; everything else (config, keys, index, snapshots, tree packs) stays readable
        at once, so listing, browsing and structural checks never wait for a thaw. `data` may be
        a pack's buffer (a bytearray), which the repository fills with a later pack once this
        returns unless something still holds it (`Repository._write_pack`, by its reference
        count): a store that keeps `data`, or a view of it, past the call keeps it as written."""

    @abstractmethod
    def delete(self, name: str) -> None: ...

    @abstractmethod
    def stat(self, name: str) -> ObjectInfo | None:
        """The object's size, or None when it does not exist."""

    @abstractmethod
    def list(self, prefix: str) -> Iterator[ObjectInfo]:
        """Objects whose name starts with `prefix` (`data/`, `index/`, ...), in no given order."""

    def list_temporary(self) -> Iterator[ObjectInfo]:
        """Leftover temporary files of interrupted writes, with their age (backends with atomic
        PUTs have none)."""
        return iter(())

    def delete_temporary(self, name: str) -> None:
        """Delete a temporary file `list_temporary` named (gone already: nothing to do)."""
        return None

    def checkpoint(self, message: str) -> bool:
        """Record what was written so far as one unit named `message` (Git: a commit); True when
        something was recorded. Stores whose writes are final at once do nothing."""
        return False

    def publish(self) -> bool:
        """Send recorded units to where they are meant to live (Git: push when autoCommit).
        True when what others published meanwhile was merged first (Git: another clone pushed):
        the store may then lack objects it held before (a commit of theirs deleted them)."""
        return False

    def prepare_read(self, names: Iterable[str]) -> None:  # noqa: B027 - optional hook
        """A hint that `names` will be read soon: a cold store requests their thaw in one go."""

    def abort_abandoned_uploads(self, *, everything: bool) -> int:
        """Remove what interrupted uploads left behind on the store (S3: multipart uploads);
        `everything` when no other writer can be active. Returns how many were removed."""
        return 0

    def protection(self) -> Protection:
        """What, besides Phoenix, keeps objects here from being deleted or overwritten."""
        return Protection(
            False,
            f"nothing but file permissions protects {self.location}: whoever can write it can delete objects",
            "keep a second target the backing-up user cannot change (an S3 bucket with Object Lock, a Git "
            "host that refuses force pushes, a folder of another user)",
        )

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections."""

    def close_readers(self) -> None:  # noqa: B027 - optional hook
        """Close the descriptors kept open for reads (a local store's packs), which would hold the
        space of a pack deleted since; the backend stays usable (they are opened again on demand),
        unlike after `close`. `Repository.close` calls it."""
