"""The one small interface every object store implements (local disk, S3/R2, Git).

Object names are relative, slash-separated and fixed by the repository format: `config`,
`keys/<id>`, `data/<2 hex>/<64 hex>`, `index/<64 hex>`, `snapshots/<64 hex>`, `locks/<id>`.
Behaviour every backend needs (retries, a concurrency limit, caching) wraps a backend instead of
living inside it.
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass

from phoenix_backup.errors import StorageError

# Why so strict: names become file paths and object keys. Rejecting anything but the format's own
# shapes means a hostile or corrupt listing can never make a backend touch `..`, an absolute
# path, or a key outside the repository's prefix.
_NAME = re.compile(r"^(config|(keys|locks|index|snapshots)/[0-9a-f]{8,64}|data/[0-9a-f]{2}/[0-9a-f]{64})$")
TEMP_MARKER = ".tmp-"


def validate_name(name: str) -> str:
    if not _NAME.fullmatch(name):
        raise StorageError(f"invalid object name {name!r}; this is a bug or a corrupt listing")
    return name


@dataclass(frozen=True)
class ObjectInfo:
    name: str
    size: int


class Backend(ABC):
    """A flat store of immutable objects. Writes are atomic: an object is wholly there or absent."""

    @property
    @abstractmethod
    def location(self) -> str:
        """Where the objects live, for messages (never containing credentials)."""

    @abstractmethod
    def exists(self) -> bool:
        """Whether the store holds a repository (its `config` object)."""

    @abstractmethod
    def create(self) -> None:
        """Prepare an empty store (folders, bucket prefix); fails if a repository is already there."""

    @abstractmethod
    def read(self, name: str) -> bytes: ...

    @abstractmethod
    def read_range(self, name: str, offset: int, length: int) -> bytes: ...

    @abstractmethod
    def write(self, name: str, data: bytes, *, exclusive: bool = False) -> None:
        """Store `data` under `name` atomically. With `exclusive`, fail if `name` exists."""

    @abstractmethod
    def delete(self, name: str) -> None: ...

    @abstractmethod
    def stat(self, name: str) -> ObjectInfo | None:
        """The object's size, or None when it does not exist."""

    @abstractmethod
    def list(self, prefix: str) -> Iterator[ObjectInfo]:
        """Objects whose name starts with `prefix` (`data/`, `index/`, ...), in no given order."""

    def list_temporary(self) -> Iterator[str]:
        """Leftover temporary files of interrupted writes (backends with atomic PUTs have none)."""
        return iter(())

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections."""
