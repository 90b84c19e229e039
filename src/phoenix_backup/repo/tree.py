"""Trees: one directory's entries, stored as a tree blob (canonical JSON, so equal trees dedupe).

A file's or database's content is a list of extents `(blob id, offset, length)`: the bytes
`blob[offset:offset+length]`, concatenated in order. Files use whole blobs (offset 0); SQLite copies
reference the unchanged pages of earlier blobs, so a changed page costs one page, not a block.
Extents are packed in binary (32-byte id, varint offset, varint length) and base64'd in the JSON.
In memory a node's extents are `Extents`, fixed 48-byte records in one `bytes` (issue 20: a
parent's fragmented database is tens of thousands of extents, held for the whole backup).
"""

from __future__ import annotations

import base64
import itertools
import json
import operator
import os
import struct
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, overload

from phoenix_backup.errors import CorruptObject, IdentityRequired, ObjectNotFound, UnsafePath
from phoenix_backup.repo.crypto import ID_SIZE, MAX_BLOB_SIZE

NodeType = Literal["dir", "file", "symlink", "sqlite"]
TREE_VERSION = 1


@dataclass(frozen=True, slots=True)
class Extent:
    blob: bytes
    offset: int
    length: int


# An extent held in memory: its blob id and its offset and length as two 64-bit integers, one
# fixed-size record after another in one `bytes` (stored trees use varints; see encode_extents).
_RECORD = struct.Struct("<32sQQ")
RECORD_SIZE = _RECORD.size
_MAX_FIELD = 2**64 - 1
_FIRST = operator.itemgetter(0)


class Extents(Sequence[Extent]):
    """A content's extents held packed: 48 bytes an extent in one `bytes`, instead of an `Extent`
    object with its own 32-byte `bytes` and integers (~200 bytes), so that a parent's fragmented
    database costs a small constant an extent (issue 20). `Extent` objects are made only while
    iterated or indexed (by position, at once: the records are of one size). Immutable."""

    __slots__ = ("_data", "size")

    def __init__(self, data: bytes = b"", size: int = 0) -> None:
        # Trusted: made by ExtentsBuilder (from `Extent`s, or a stored tree's checked varints).
        self._data = data
        self.size = size  # the bytes the extents describe: the sum of their lengths

    @classmethod
    def of(cls, extents: Iterable[Extent]) -> Extents:
        """Extents packed from `Extent` objects, in order, as given (not merged); a node's
        `ListedExtents` read whole from its list blobs."""
        if isinstance(extents, Extents):
            return extents
        if isinstance(extents, ListedExtents):
            return extents.whole()
        out = ExtentsBuilder(merge=False)
        for e in extents:
            out.add(e.blob, e.offset, e.length)
        return out.build()

    def records(self) -> Iterator[tuple[bytes, int, int]]:
        """(blob id, offset, length) of each extent, in order."""
        return _RECORD.iter_unpack(self._data)

    def record(self, index: int) -> tuple[bytes, int, int]:
        return _RECORD.unpack_from(self._data, index * RECORD_SIZE)

    def blob(self, index: int) -> bytes:
        """The blob id of extent `index` (0 <= index < len), without making an `Extent`."""
        start = index * RECORD_SIZE
        if index < 0 or start >= len(self._data):
            raise IndexError("extent index out of range")
        return self._data[start : start + ID_SIZE]

    def blobs(self) -> Iterator[bytes]:
        """The blob id of each extent, in order."""
        return map(_FIRST, _RECORD.iter_unpack(self._data))

    def lengths(self) -> Iterator[int]:
        return (length for _blob, _offset, length in _RECORD.iter_unpack(self._data))

    def __len__(self) -> int:
        return len(self._data) // RECORD_SIZE

    def __iter__(self) -> Iterator[Extent]:
        return itertools.starmap(Extent, _RECORD.iter_unpack(self._data))

    @overload
    def __getitem__(self, index: int) -> Extent: ...

    @overload
    def __getitem__(self, index: slice) -> list[Extent]: ...

    def __getitem__(self, index: int | slice) -> Extent | list[Extent]:
        count = len(self)
        if isinstance(index, slice):
            return [Extent(*self.record(i)) for i in range(*index.indices(count))]
        if index < 0:
            index += count
        if not 0 <= index < count:
            raise IndexError("extent index out of range")
        return Extent(*self.record(index))

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Extents):
            return self._data == other._data
        if isinstance(other, list):
            return len(other) == len(self) and list(self) == other
        return NotImplemented

    def __hash__(self) -> int:
        return hash(self._data)

    def __reduce__(self) -> tuple[type[Extents], tuple[bytes, int]]:
        # Pickled (and copied) as its records and size, at any protocol, as a list of `Extent` was.
        return Extents, (self._data, self.size)

    def __repr__(self) -> str:
        return f"Extents({list(self)!r})"


class ExtentsBuilder:
    """Packed extents appended one by one; with `merge` (the default) an extent that continues
    the last one in the same blob lengthens it instead (as `merge_extents` does)."""

    def __init__(self, *, merge: bool = True) -> None:
        self._out = bytearray()
        self._merge = merge
        self._size = 0

    def add(self, blob: bytes, offset: int, length: int) -> None:
        out = self._out
        self._size += length
        if self._merge and out:
            last_blob, last_offset, last_length = _RECORD.unpack_from(out, len(out) - RECORD_SIZE)
            if last_offset + last_length == offset and last_blob == blob:
                _RECORD.pack_into(out, len(out) - RECORD_SIZE, blob, last_offset, last_length + length)
                return
        out += _RECORD.pack(blob, offset, length)

    def extend(self, extents: Extents) -> None:
        for blob, offset, length in extents.records():
            self.add(blob, offset, length)

    def build(self) -> Extents:
        return Extents(bytes(self._out), self._size)


def encode_extents(extents: Iterable[Extent]) -> str:
    """Extents as stored: each a 32-byte id, a varint offset and a varint length, in base64."""
    return _extents_base64(extents).decode("ascii")


def _extents_base64(extents: Iterable[Extent]) -> bytes:
    """`encode_extents` as ASCII bytes, encoded from the varints' buffer without a copy of it."""
    if isinstance(extents, ListedExtents):
        return b""  # stored in its list blobs; the node names them (`contentLists`)
    out = bytearray()
    _encode_records(out, Extents.of(extents).records())
    return base64.b64encode(out)


def _encode_records(out: bytearray, records: Iterable[tuple[bytes, int, int]]) -> None:
    for blob, offset, length in records:
        out += blob
        _varint(out, offset)
        _varint(out, length)


def decode_extents(text: str) -> Extents:
    """A node's `content` decoded straight into packed `Extents` (no `Extent` objects)."""
    extents, reach = _decode_extents(text)
    if reach > _MAX_FIELD:
        raise CorruptObject("an extent larger than any blob in content extents")
    return extents


def _decode_extents(text: str) -> tuple[Extents, int]:
    """The extents, each record whole and each varint well formed (or CorruptObject), and the
    furthest any of them reaches into its blob (the caller refuses one beyond MAX_BLOB_SIZE)."""
    try:
        data = base64.b64decode(text, validate=True)
    except ValueError as exc:
        raise CorruptObject("malformed content extents") from exc
    return _decode_records(data, 0, None)


def _decode_records(data: bytes, pos: int, most: int | None) -> tuple[Extents, int]:
    """The binary extents of `data` from `pos`: `_decode_extents` without the base64; more than
    `most` of them is CorruptObject as soon as it is seen (a list blob says how many it holds)."""
    out = ExtentsBuilder(merge=False)
    count = 0
    reach = 0
    end = len(data)
    while pos < end:
        if pos + ID_SIZE > end:
            raise CorruptObject("truncated content extents")
        blob = data[pos : pos + ID_SIZE]
        offset, pos = _read_varint(data, pos + ID_SIZE)
        length, pos = _read_varint(data, pos)
        reach = max(reach, offset + length)
        count += 1
        if most is not None and count > most:
            raise CorruptObject("more extents than its node says")
        # Beyond 64 bits (10-byte varints) the node is refused for its reach: kept clamped till then.
        out.add(blob, min(offset, _MAX_FIELD), min(length, _MAX_FIELD))
    return out.build(), reach


# -- extent lists (repository format 6) ------------------------------------------------------
#
# In a version 6 repository a database node of more than INLINE_EXTENTS extents keeps its extents
# in extent-list blobs: tree blobs (sealed, packed and named like trees) holding LIST_MAGIC and
# then the extents in the binary encoding of `content` (before base64). The node's
# `contentLists` names each list blob with the bytes of the database it covers and its extent
# count, so a reader knows both before loading it. A list is cut at every multiple of LIST_SPAN
# bytes of the database (an extent crossing one is split there) and after MAX_LIST_EXTENTS
# extents, so a day that changes one region of a database rewrites the list blobs of that region
# only; the others keep their ids (docs/repository-format.md, "Version 6").

LIST_MAGIC = b"phoenix extent list 1\n"
# Module constants (tests set them small); what they are when a list is written only decides
# where it is cut: a reader takes any cut within the bounds below.
INLINE_EXTENTS = 4096
LIST_SPAN = 64 * 2**20
MAX_LIST_EXTENTS = 65536
# The bound a reader enforces on one list blob's extent count (whatever a writer was set to).
LIST_EXTENTS_LIMIT = 1 << 20
# The extents the lists of one tree's nodes may name together: as many as one tree blob could hold
# inline (34 bytes the shortest). Lists are stored once and may be named by many nodes; without it
# a small hostile tree naming one huge list from thousands of nodes made a walk read it as often.
TREE_LIST_EXTENTS_LIMIT = MAX_BLOB_SIZE // (ID_SIZE + 2)

LoadList = Callable[[bytes], bytes]


@dataclass(frozen=True, slots=True)
class ListRef:
    """One extent-list blob of a node: its id, the bytes of the content it covers, its extents."""

    blob: bytes
    size: int
    count: int

    def to_json(self) -> dict[str, Any]:
        return {"count": self.count, "id": self.blob.hex(), "size": self.size}


class ListedExtents(Sequence[Extent]):
    """A node's extents kept in list blobs (format 6): held as the list blobs' `ListRef`s, read
    one list blob at a time through `load` (the repository's, bound when its tree was loaded) as
    they are iterated. Every list blob is checked as it is read against what the node says of it
    (`read_list`): other bytes, another count, a reach beyond any blob or a blob that is no list
    is a CorruptObject naming the node. The one way every caller reads a node's extents: it is
    the node's `content`, so whatever iterates, indexes or packs (`Extents.of`) it reads them."""

    __slots__ = ("_count", "_last", "_load", "name", "refs", "size")

    def __init__(self, refs: tuple[ListRef, ...], load: LoadList | None, name: str = "") -> None:
        self.refs = refs
        self.size = sum(r.size for r in refs)
        self._count = sum(r.count for r in refs)
        self._load = load
        self.name = name
        self._last: tuple[int, Extents] | None = None  # the list blob indexed last

    def bind(self, load: LoadList | None, name: str) -> ListedExtents:
        return ListedExtents(self.refs, load, name)

    def read(self, index: int) -> Extents:
        """The extents of list blob `index`, checked against its `ListRef` (read each time: a node
        held by a walk keeps none of them)."""
        ref = self.refs[index]
        what = f"the extent list {ref.blob.hex()[:16]} of {self.name!r}"
        if self._load is None:
            raise CorruptObject(f"{what} cannot be read here")
        try:
            data = self._load(ref.blob)
        except (CorruptObject, ObjectNotFound, IdentityRequired) as exc:
            # IdentityRequired: a write-only machine's tree cache without it (the machine then reads
            # the database again, as for any parent node it cannot use).
            raise CorruptObject(
                f"{what} cannot be read ({exc}); the database cannot be read from this copy of the repository"
            ) from exc
        return read_list(data, ref, what)

    def whole(self) -> Extents:
        out = ExtentsBuilder(merge=False)
        for i in range(len(self.refs)):
            out.extend(self.read(i))
        return out.build()

    def records(self) -> Iterator[tuple[bytes, int, int]]:
        for i in range(len(self.refs)):
            yield from self.read(i).records()

    def blobs(self) -> Iterator[bytes]:
        return map(_FIRST, self.records())

    def lengths(self) -> Iterator[int]:
        return (length for _blob, _offset, length in self.records())

    def __len__(self) -> int:
        return self._count

    def __iter__(self) -> Iterator[Extent]:
        return itertools.starmap(Extent, self.records())

    @overload
    def __getitem__(self, index: int) -> Extent: ...

    @overload
    def __getitem__(self, index: slice) -> list[Extent]: ...

    def __getitem__(self, index: int | slice) -> Extent | list[Extent]:
        if isinstance(index, slice):
            return self.whole()[index]
        if index < 0:
            index += self._count
        if not 0 <= index < self._count:
            raise IndexError("extent index out of range")
        for i, ref in enumerate(self.refs):
            if index < ref.count:
                last = self._last  # the list blob indexed last, for a caller walking by index
                if last is None or last[0] != i:
                    last = self._last = (i, self.read(i))
                return last[1][index]
            index -= ref.count
        raise IndexError("extent index out of range")  # pragma: no cover - counts sum to _count

    def __eq__(self, other: object) -> bool:
        if isinstance(other, ListedExtents) and self.refs == other.refs:
            return True
        if not isinstance(other, (ListedExtents, Extents, list)):
            return NotImplemented
        # Equal when they name the same bytes of the same blobs, however stored: a list splits
        # an extent at its cuts, which the same database captured again (an inline node, or its
        # next backup's) does not, so both are compared merged (a daily backup that finds a
        # database unchanged keeps its parent's node and tree).
        theirs = other.records() if isinstance(other, (ListedExtents, Extents)) else Extents.of(other).records()
        try:  # list blob by list blob: neither is held whole
            pairs = itertools.zip_longest(_merged_records(self.records()), _merged_records(theirs))
            return all(a == b for a, b in pairs)
        except CorruptObject:
            return False  # a list blob that cannot be read equals nothing

    def __hash__(self) -> int:
        return hash(_merged(self.records()))  # as equality compares

    def __reduce__(self) -> tuple[type[Extents], tuple[bytes, int]]:
        return Extents, (self.whole()._data, self.size)

    def __repr__(self) -> str:
        return f"ListedExtents({list(self.refs)!r})"


def _merged(records: Iterable[tuple[bytes, int, int]]) -> Extents:
    out = ExtentsBuilder()
    for record in records:
        out.add(*record)
    return out.build()


def _merged_records(records: Iterable[tuple[bytes, int, int]]) -> Iterator[tuple[bytes, int, int]]:
    """The records with each one that continues the last in the same blob joined to it, as they come."""
    last: tuple[bytes, int, int] | None = None
    for blob, offset, length in records:
        if last is not None and last[0] == blob and last[1] + last[2] == offset:
            last = (blob, last[1], last[2] + length)
            continue
        if last is not None:
            yield last
        last = (blob, offset, length)
    if last is not None:
        yield last


def encode_list(records: Iterable[tuple[bytes, int, int]]) -> bytes:
    """A list blob's bytes: LIST_MAGIC, then each extent as `content` encodes it (no base64)."""
    out = bytearray(LIST_MAGIC)
    _encode_records(out, records)
    return bytes(out)


def read_list(data: bytes, ref: ListRef, what: str) -> Extents:
    """A list blob's extents, refused (CorruptObject naming `what`) unless they are exactly what
    the node says: its count and bytes, none reaching beyond a blob."""
    if not data.startswith(LIST_MAGIC):
        raise CorruptObject(f"{what} is not an extent list")
    try:
        extents, reach = _decode_records(data, len(LIST_MAGIC), ref.count)
    except CorruptObject as exc:
        raise CorruptObject(f"{what} is damaged: {exc}") from exc
    if reach > MAX_BLOB_SIZE:
        raise CorruptObject(f"{what} points beyond the end of a blob")
    if len(extents) != ref.count or extents.size != ref.size:
        raise CorruptObject(f"{what} holds {len(extents)} extents of {extents.size} bytes, not the node's")
    return extents


def cut_lists(records: Iterable[tuple[bytes, int, int]]) -> Iterator[tuple[bytes, int, int]]:
    """(list blob bytes, bytes covered, extent count) of each list blob of a content, in order:
    cut at every multiple of LIST_SPAN bytes of the content (an extent crossing one is split
    there) and after MAX_LIST_EXTENTS extents. One list blob is held at a time, encoded as it
    fills (no object an extent)."""
    span, most = LIST_SPAN, MAX_LIST_EXTENTS
    part = bytearray(LIST_MAGIC)
    count = size = pos = 0
    for blob, offset, length in records:
        while True:
            take = min(length, span - pos % span)
            part += blob
            _varint(part, offset)
            _varint(part, take)
            count += 1
            size += take
            pos += take
            if pos % span == 0 or count >= most:
                yield bytes(part), size, count
                part = bytearray(LIST_MAGIC)
                count = size = 0
            if take == length:
                break
            offset += take
            length -= take
    if count:
        yield bytes(part), size, count


def _lists_json(d: dict[str, Any], name: str) -> tuple[ListRef, ...]:
    raw = d["contentLists"]
    if not isinstance(raw, list) or not raw:
        raise CorruptObject(f"{name!r} has malformed extent lists")
    refs = []
    for item in raw:
        if not isinstance(item, dict):
            raise CorruptObject(f"{name!r} has malformed extent lists")
        blob = bytes.fromhex(_str(item, "id"))
        if len(blob) != ID_SIZE:
            raise CorruptObject(f"{name!r} has a malformed extent list id")
        refs.append(ListRef(blob, _int(item, "size", 0, 2**63 - 1), _int(item, "count", 1, LIST_EXTENTS_LIMIT)))
    return tuple(refs)


def _varint(out: bytearray, value: int) -> None:
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)


def _read_varint(data: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= len(data) or shift > 63:
            raise CorruptObject("a malformed varint in content extents")
        b = data[pos]
        pos += 1
        value |= (b & 0x7F) << shift
        if b < 0x80:
            return value, pos
        shift += 7


def check_name(name: str) -> str:
    """A node name is one path component: never empty, `.`, `..`, or containing `/` or NUL."""
    if name in ("", ".", "..") or "/" in name or "\0" in name:
        raise UnsafePath(f"snapshot holds an unsafe name {name!r}; it was not restored")
    return name


def name_problem(name: str) -> str | None:
    """Why `name` cannot be one node's name (what a restore refuses, so no snapshot may hold it),
    as the end of a sentence about the path holding it; None when it can."""
    if name in ("", ".", "..") or "\0" in name or "/" in name:
        return f"holds the name {name!r}, which no snapshot may hold"
    try:
        too_long = len(os.fsencode(name)) > NAME_MAX
    except UnicodeEncodeError:
        return "holds a name that is not text a file system takes"
    if too_long:
        return f"holds a name longer than {NAME_MAX} bytes, which no file system takes"
    return None


class TreePaths:
    """The paths of the files one source adds to a snapshot, checked as they come, so that no
    snapshot is written that a restore would refuse whole: a part `..`, `.` or empty, or holding
    NUL or longer than a name may be (a restore refuses every tree holding one), or a name that
    would be a file and a folder at once (a tree holding one name twice cannot be read)."""

    def __init__(self) -> None:
        self.files: set[str] = set()
        self.folders: set[str] = set()

    def problem(self, path: str) -> str | None:
        """Why the file `path` (parts joined by `/`) may not be added; None (and recorded) if it may."""
        parts = path.split("/")
        for part in parts:
            bad = name_problem(part)
            if bad is not None:
                return f"{path!r} {bad}"
        above = ["/".join(parts[:i]) for i in range(1, len(parts))]
        clash = path if path in self.folders else next((p for p in above if p in self.files), None)
        if clash is not None:
            return f"{clash} would be both a file and a folder"
        if path in self.files:
            return f"{path} would be saved twice"
        self.files.add(path)
        self.folders.update(above)
        return None


@dataclass(slots=True)  # no per-node __dict__: a snapshot of 200,000 files holds that many
class Node:
    name: str
    type: NodeType
    mode: int = 0o644
    mtime_ns: int = 0
    size: int = 0
    # Identity of the source file, for the "unchanged since the parent" shortcut.
    inode: int = 0
    ctime_ns: int = 0
    uid: int = 0
    gid: int = 0
    subtree: bytes | None = None  # dir
    # file, sqlite: packed `Extents` (decoded, or as a backup builds them), or a list (tests,
    # tools); both encode to the same bytes.
    content: Sequence[Extent] = field(default_factory=list)
    sha256: str | None = None  # file, sqlite (of the consistent copy)
    link_target: str | None = None  # symlink
    # file: the logical path of the first file (in path order) of its hard-link group in this
    # snapshot, on every other member; a restore links it to that file instead of copying.
    hardlink: str | None = None
    sqlite: dict[str, Any] | None = None  # sqlite: pageSize, integrity, tables, source stats

    # Its state for pickle and copy: a class with slots and no state of its own is refused at
    # pickle protocols 0 and 1 (a node with a __dict__ pickled at every protocol).
    def __getstate__(self) -> tuple[Any, ...]:
        return tuple(getattr(self, name) for name in self.__slots__)

    def __setstate__(self, state: tuple[Any, ...]) -> None:
        for name, value in zip(self.__slots__, state, strict=True):
            setattr(self, name, value)

    def blobs(self) -> Iterator[bytes]:
        """The blob id of each extent of the content, in order (no `Extent` made when packed);
        a listed content's list blobs are read one at a time (`list_blobs` names them)."""
        if isinstance(self.content, (Extents, ListedExtents)):
            return self.content.blobs()
        return (e.blob for e in self.content)

    def needed_blobs(self) -> list[bytes] | None:
        """Every blob the node's content needs, each once: its extent-list blobs (format 6), then
        the blobs of its extents (a fragmented database names each in many extents: a list of
        one id an extent was 14 MB at 200,000 extents); None when a list blob cannot be read (the
        node's content is lost)."""
        try:
            return list(dict.fromkeys(itertools.chain(self.list_blobs(), self.blobs())))
        except CorruptObject:
            return None

    def blobs_present(self, has: Callable[[bytes], bool]) -> bool:
        """Whether `has` every blob the content needs (`needed_blobs`, streamed: a listed
        database's ids are not collected); False when a list blob cannot be read."""
        try:
            return all(map(has, itertools.chain(self.list_blobs(), self.blobs())))
        except CorruptObject:
            return False

    def list_blobs(self) -> tuple[bytes, ...]:
        """The ids of the extent-list blobs that hold the content's extents (format 6), or ()."""
        if isinstance(self.content, ListedExtents):
            return tuple(r.blob for r in self.content.refs)
        return ()

    def to_json(self, *, content: bool = True) -> dict[str, Any]:
        """The node as stored; `content=False`: its extents left out (`"content": ""`), for
        `encode_tree`, which writes them into the tree's bytes itself."""
        d: dict[str, Any] = {
            "name": self.name,
            "type": self.type,
            "mode": self.mode,
            "mtimeNs": self.mtime_ns,
            "uid": self.uid,
            "gid": self.gid,
        }
        if self.type in ("file", "sqlite"):
            d["size"] = self.size
            d["inode"] = self.inode
            d["ctimeNs"] = self.ctime_ns
            d["content"] = encode_extents(self.content) if content else ""
            if isinstance(self.content, ListedExtents):
                d["contentLists"] = [r.to_json() for r in self.content.refs]
            d["sha256"] = self.sha256
        if self.type == "dir":
            assert self.subtree is not None
            d["subtree"] = self.subtree.hex()
        if self.type == "symlink":
            d["linkTarget"] = self.link_target
        if self.hardlink is not None:
            d["hardlink"] = self.hardlink  # only when set: other trees keep their bytes and ids
        if self.sqlite is not None:
            d["sqlite"] = self.sqlite
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any], load_list: LoadList | None = None) -> Node:
        """A node from its JSON, every field checked against what a restore, an archive or a
        dump can take: ids, hashes and owners of the right shape, times within 64 bits, a size
        that is exactly its content. Raises CorruptObject (or UnsafePath for a bad name)."""
        try:
            t = d["type"]
            if t not in ("dir", "file", "symlink", "sqlite"):
                raise CorruptObject(f"a node of unknown type {t!r}")
            node = cls(
                name=_name(d["name"]),
                type=t,
                mode=_int(d, "mode", 0, 2**32 - 1) & 0o7777,
                mtime_ns=_int(d, "mtimeNs", TIME_NS_MIN, TIME_NS_MAX),
                uid=_int(d, "uid", 0, MAX_ID, 0),
                gid=_int(d, "gid", 0, MAX_ID, 0),
            )
            if t in ("file", "sqlite"):
                node.size = _int(d, "size", 0, 2**63 - 1)
                node.inode = _int(d, "inode", 0, 2**64 - 1, 0)
                node.ctime_ns = _int(d, "ctimeNs", TIME_NS_MIN, TIME_NS_MAX, 0)
                content, reach = _decode_extents(_str(d, "content"))
                node.content = content
                if "contentLists" in d:
                    if len(content):
                        raise CorruptObject(f"{node.name!r} has both extents and extent lists")
                    node.content = ListedExtents(_lists_json(d, node.name), load_list, node.name)
                node.sha256 = _str(d, "sha256")
                if len(node.sha256) != 64 or node.sha256.strip("0123456789abcdef"):
                    raise CorruptObject(f"{node.name!r} has a malformed sha256")
                if reach > MAX_BLOB_SIZE:
                    raise CorruptObject(f"{node.name!r} points beyond the end of a blob")
                if node.content.size != node.size:
                    raise CorruptObject(f"{node.name!r} claims {node.size} bytes but its content differs")
            if t == "dir":
                subtree = bytes.fromhex(_str(d, "subtree"))
                if len(subtree) != ID_SIZE:
                    raise CorruptObject(f"{node.name!r} has a malformed subtree id")
                node.subtree = subtree
            if t == "symlink":
                target = _str(d, "linkTarget")
                if not target or "\0" in target or len(target) > 4095:
                    raise CorruptObject(f"{node.name!r} has an impossible link target")
                node.link_target = target
            if t == "file" and d.get("hardlink") is not None:
                node.hardlink = "/".join(check_name(part) for part in _str(d, "hardlink").split("/"))
            if "sqlite" in d:
                if not isinstance(d["sqlite"], dict):
                    raise CorruptObject(f"{node.name!r} has malformed database details")
                node.sqlite = dict(d["sqlite"])
            return node
        except (KeyError, TypeError, ValueError, AttributeError, OverflowError) as exc:
            raise CorruptObject(f"a malformed node: {exc}") from exc


# A node's times, in nanoseconds, are 64-bit (the years 1677 to 2262); ext4 and XFS keep files
# dated up to 2446 and 2486, which a backup records as the nearest time it can (ops/backup.py).
TIME_NS_MIN, TIME_NS_MAX = -(2**63), 2**63 - 1
# uid_t and gid_t are 32 bits, and (uid_t)-1 means "leave unchanged" to chown.
MAX_ID = 2**32 - 2
# NAME_MAX: no file system takes a longer name.
NAME_MAX = 255


def _name(value: object) -> str:
    if not isinstance(value, str):
        raise CorruptObject("a node name that is not a string")
    name = check_name(value)
    if len(os.fsencode(name)) > NAME_MAX:
        raise CorruptObject(f"a node name longer than {NAME_MAX} bytes")
    return name


def _int(d: dict[str, Any], key: str, low: int, high: int, default: int | None = None) -> int:
    value = d.get(key, default)
    # JSON true/false load as bool, a subclass of int: never numbers here.
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise CorruptObject(f"{key} is not an integer between {low} and {high}")
    return value


def _str(d: dict[str, Any], key: str) -> str:
    value = d[key]
    if not isinstance(value, str):
        raise CorruptObject(f"{key} is not a string")
    os.fsencode(value)  # a lone surrogate (JSON's \ud800) reaches no system call: UnicodeEncodeError
    return value


class TreeTooLarge(ValueError):
    """A folder whose tree would be larger than any blob may be (MAX_BLOB_SIZE), or whose databases'
    extent lists name more than TREE_LIST_EXTENTS_LIMIT extents: no reader takes it."""


def encode_tree(nodes: list[Node]) -> bytes:
    """The tree's bytes: `{"nodes": [each node's JSON, by name], "version": 1}`, keys sorted, no
    spaces. Written node by node, each node's extents spliced in as the base64 bytes they are
    encoded to: a database of 25,000 extents (1.3 MB of base64) was held five times over as text
    (the extents' string, the document's string, its parts, its bytes), now about twice (the
    base64 and the tree's bytes; docs/benchmarks.md, "The daily backup's peak over 30 days").
    Base64 needs no JSON escape, so the bytes are those of the whole document dumped at once."""
    listed = sum(len(n.content) for n in nodes if isinstance(n.content, ListedExtents))
    if listed > TREE_LIST_EXTENTS_LIMIT:
        # Every reader refuses such a tree (`decode_tree`): never write one.
        raise TreeTooLarge(
            f"holds databases whose extent lists name {listed:,} extents together, more than the "
            f"{TREE_LIST_EXTENTS_LIMIT:,} one folder's databases may name"
        )
    parts: list[bytes] = [b'{"nodes":[']
    for i, node in enumerate(sorted(nodes, key=lambda n: n.name)):
        if i:
            parts.append(b",")
        text = json.dumps(node.to_json(content=False), sort_keys=True, separators=(",", ":")).encode()
        if node.type in ("file", "sqlite"):
            # "content" sorts first among a node's keys.
            assert text.startswith(_EMPTY_CONTENT)
            parts += [_CONTENT, _extents_base64(node.content), text[len(_EMPTY_CONTENT) - 1 :]]
        else:
            parts.append(text)
    parts.append(b'],"version":' + json.dumps(TREE_VERSION).encode() + b"}")
    data = b"".join(parts)
    if len(data) > MAX_BLOB_SIZE:
        # Every reader refuses a blob this large (repo/pack.py, repo/index.py): never write one.
        raise TreeTooLarge(
            f"holds {len(nodes):,} entries, whose list takes {-(-len(data) >> 20):,} MiB, more than the "
            f"{MAX_BLOB_SIZE >> 20} MiB a folder's list may take in the repository"
        )
    return data


_CONTENT = b'{"content":"'
_EMPTY_CONTENT = b'{"content":""'


def decode_tree(data: bytes, what: str = "a tree", load_list: LoadList | None = None) -> list[Node]:
    """The nodes of a tree blob; any fault is one CorruptObject (or UnsafePath) naming `what`.
    `load_list` loads a node's extent-list blob when its extents are read (format 6)."""
    try:
        doc = json.loads(data)
    except (ValueError, RecursionError) as exc:
        raise CorruptObject(f"{what} is not valid JSON") from exc
    if not isinstance(doc, dict) or doc.get("version") != TREE_VERSION:
        raise CorruptObject(f"{what} has an unknown version")
    raw_nodes = doc.get("nodes", [])
    if not isinstance(raw_nodes, list) or not all(isinstance(d, dict) for d in raw_nodes):
        raise CorruptObject(f"{what}'s nodes are not a list of objects")
    nodes: list[Node] = []
    try:
        for i, d in enumerate(raw_nodes):
            nodes.append(Node.from_json(d, load_list))
            raw_nodes[i] = None  # its `content` text goes now, not with the whole document
    except CorruptObject as exc:
        raise CorruptObject(f"{what} holds {exc}") from exc
    except UnsafePath as exc:
        raise UnsafePath(f"{what}: {exc}") from exc
    names = [n.name for n in nodes]
    if len(set(names)) != len(names):
        raise CorruptObject(f"{what} holds the same name twice")
    if sum(len(n.content) for n in nodes if isinstance(n.content, ListedExtents)) > TREE_LIST_EXTENTS_LIMIT:
        raise CorruptObject(f"{what} names more extents in extent lists than a tree may ({TREE_LIST_EXTENTS_LIMIT:,})")
    return nodes
