"""Named streams: what the database sources yield (a dump, a table's rows, a Redis record file).

A source produces its content as it reads the server, so nothing is staged in a temporary copy:
the consumer (the backup op) reads each stream to its end, then calls `finish()`, which raises a
`SourceError` if the producer failed on the way (pg_dump exiting non-zero, a dropped connection).
Only then may the consumer treat the bytes it read as the whole content.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import BinaryIO


def _nothing() -> None:
    pass


@dataclass
class Stream:
    """One named stream: `name` is a file name below the source's folder (`postgres/<name>/`)."""

    name: str
    reader: BinaryIO
    finish: Callable[[], None] = _nothing
    meta: dict[str, object] = field(default_factory=dict)


class IterReader(io.RawIOBase):
    """A read-only binary file over an iterator of byte blocks (COPY output, generated records)."""

    def __init__(self, blocks: Iterable[bytes | bytearray | memoryview]) -> None:
        super().__init__()
        self._blocks: Iterator[bytes | bytearray | memoryview] = iter(blocks)
        self._current = memoryview(b"")

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        out = memoryview(buffer).cast("B")
        while not self._current:
            try:
                self._current = memoryview(next(self._blocks)).cast("B")
            except StopIteration:
                return 0
        n = min(len(out), len(self._current))
        out[:n] = self._current[:n]
        self._current = self._current[n:]
        return n


def bytes_stream(name: str, data: bytes) -> Stream:
    return Stream(name, io.BytesIO(data))


def iter_stream(
    name: str, blocks: Iterable[bytes | bytearray | memoryview], finish: Callable[[], None] = _nothing
) -> Stream:
    return Stream(name, io.BufferedReader(IterReader(blocks), buffer_size=1 << 20), finish)
