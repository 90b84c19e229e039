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
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, overload

from phoenix_backup.errors import CorruptObject, UnsafePath
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
        """Extents packed from `Extent` objects, in order, as given (not merged)."""
        if isinstance(extents, Extents):
            return extents
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
    out = bytearray()
    for blob, offset, length in Extents.of(extents).records():
        out += blob
        _varint(out, offset)
        _varint(out, length)
    return base64.b64encode(out)


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
    out = ExtentsBuilder(merge=False)
    reach = pos = 0
    end = len(data)
    while pos < end:
        if pos + ID_SIZE > end:
            raise CorruptObject("truncated content extents")
        blob = data[pos : pos + ID_SIZE]
        offset, pos = _read_varint(data, pos + ID_SIZE)
        length, pos = _read_varint(data, pos)
        reach = max(reach, offset + length)
        # Beyond 64 bits (10-byte varints) the node is refused for its reach: kept clamped till then.
        out.add(blob, min(offset, _MAX_FIELD), min(length, _MAX_FIELD))
    return out.build(), reach


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

    def blobs(self) -> Iterator[bytes]:
        """The blob id of each extent of the content, in order (no `Extent` made when packed)."""
        if isinstance(self.content, Extents):
            return self.content.blobs()
        return (e.blob for e in self.content)

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
    def from_json(cls, d: dict[str, Any]) -> Node:
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
                mtime_ns=_int(d, "mtimeNs", -(2**63), 2**63 - 1),
                uid=_int(d, "uid", 0, MAX_ID, 0),
                gid=_int(d, "gid", 0, MAX_ID, 0),
            )
            if t in ("file", "sqlite"):
                node.size = _int(d, "size", 0, 2**63 - 1)
                node.inode = _int(d, "inode", 0, 2**64 - 1, 0)
                node.ctime_ns = _int(d, "ctimeNs", -(2**63), 2**63 - 1, 0)
                content, reach = _decode_extents(_str(d, "content"))
                node.content = content
                node.sha256 = _str(d, "sha256")
                if len(node.sha256) != 64 or node.sha256.strip("0123456789abcdef"):
                    raise CorruptObject(f"{node.name!r} has a malformed sha256")
                if reach > MAX_BLOB_SIZE:
                    raise CorruptObject(f"{node.name!r} points beyond the end of a blob")
                if content.size != node.size:
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


def encode_tree(nodes: list[Node]) -> bytes:
    """The tree's bytes: `{"nodes": [each node's JSON, by name], "version": 1}`, keys sorted, no
    spaces. Written node by node, each node's extents spliced in as the base64 bytes they are
    encoded to: a database of 25,000 extents (1.3 MB of base64) was held five times over as text
    (the extents' string, the document's string, its parts, its bytes), now about twice (the
    base64 and the tree's bytes; docs/benchmarks.md, "The daily backup's peak over 30 days").
    Base64 needs no JSON escape, so the bytes are those of the whole document dumped at once."""
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
    return b"".join(parts)


_CONTENT = b'{"content":"'
_EMPTY_CONTENT = b'{"content":""'


def decode_tree(data: bytes, what: str = "a tree") -> list[Node]:
    """The nodes of a tree blob; any fault is one CorruptObject (or UnsafePath) naming `what`."""
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
            nodes.append(Node.from_json(d))
            raw_nodes[i] = None  # its `content` text goes now, not with the whole document
    except CorruptObject as exc:
        raise CorruptObject(f"{what} holds {exc}") from exc
    except UnsafePath as exc:
        raise UnsafePath(f"{what}: {exc}") from exc
    names = [n.name for n in nodes]
    if len(set(names)) != len(names):
        raise CorruptObject(f"{what} holds the same name twice")
    return nodes
