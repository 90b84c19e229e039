"""Trees: one directory's entries, stored as a tree blob (canonical JSON, so equal trees dedupe).

A file's or database's content is a list of extents `(blob id, offset, length)`: the bytes
`blob[offset:offset+length]`, concatenated in order. Files use whole blobs (offset 0); SQLite copies
reference the unchanged pages of earlier blobs, so a changed page costs one page, not a block.
Extents are packed in binary (32-byte id, varint offset, varint length) and base64'd in the JSON.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass, field
from typing import Any, Literal

from phoenix_backup.errors import CorruptObject, UnsafePath

NodeType = Literal["dir", "file", "symlink", "sqlite"]
TREE_VERSION = 1


@dataclass(frozen=True, slots=True)
class Extent:
    blob: bytes
    offset: int
    length: int


def encode_extents(extents: list[Extent]) -> str:
    out = bytearray()
    for e in extents:
        out += e.blob
        _varint(out, e.offset)
        _varint(out, e.length)
    return base64.b64encode(bytes(out)).decode("ascii")


def decode_extents(text: str) -> list[Extent]:
    try:
        data = base64.b64decode(text, validate=True)
    except ValueError as exc:
        raise CorruptObject("a tree holds malformed content extents") from exc
    out: list[Extent] = []
    pos = 0
    while pos < len(data):
        if pos + 32 > len(data):
            raise CorruptObject("a tree holds truncated content extents")
        blob = data[pos : pos + 32]
        offset, pos = _read_varint(data, pos + 32)
        length, pos = _read_varint(data, pos)
        out.append(Extent(blob, offset, length))
    return out


def _varint(out: bytearray, value: int) -> None:
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)


def _read_varint(data: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= len(data) or shift > 63:
            raise CorruptObject("a tree holds a malformed varint")
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


@dataclass
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
    content: list[Extent] = field(default_factory=list)  # file, sqlite
    sha256: str | None = None  # file, sqlite (of the consistent copy)
    link_target: str | None = None  # symlink
    # file: the logical path of the first file (in path order) of its hard-link group in this
    # snapshot, on every other member; a restore links it to that file instead of copying.
    hardlink: str | None = None
    sqlite: dict[str, Any] | None = None  # sqlite: pageSize, integrity, tables, source stats

    def to_json(self) -> dict[str, Any]:
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
            d["content"] = encode_extents(self.content)
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
        try:
            t = d["type"]
            if t not in ("dir", "file", "symlink", "sqlite"):
                raise CorruptObject(f"a tree holds a node of unknown type {t!r}")
            node = cls(
                name=check_name(str(d["name"])),
                type=t,
                mode=int(d["mode"]) & 0o7777,
                mtime_ns=int(d["mtimeNs"]),
                uid=int(d.get("uid", 0)),
                gid=int(d.get("gid", 0)),
            )
            if t in ("file", "sqlite"):
                node.size = int(d["size"])
                node.inode = int(d.get("inode", 0))
                node.ctime_ns = int(d.get("ctimeNs", 0))
                node.content = decode_extents(d["content"])
                node.sha256 = d["sha256"]
            if t == "dir":
                node.subtree = bytes.fromhex(d["subtree"])
            if t == "symlink":
                node.link_target = str(d["linkTarget"])
            if t == "file" and d.get("hardlink") is not None:
                node.hardlink = "/".join(check_name(part) for part in str(d["hardlink"]).split("/"))
            if "sqlite" in d:
                node.sqlite = dict(d["sqlite"])
            return node
        except (KeyError, TypeError, ValueError, AttributeError, OverflowError) as exc:
            raise CorruptObject(f"a tree holds a malformed node: {exc}") from exc


def encode_tree(nodes: list[Node]) -> bytes:
    ordered = sorted(nodes, key=lambda n: n.name)
    doc = {"version": TREE_VERSION, "nodes": [n.to_json() for n in ordered]}
    return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()


def decode_tree(data: bytes) -> list[Node]:
    try:
        doc = json.loads(data)
    except ValueError as exc:
        raise CorruptObject("a tree is not valid JSON") from exc
    if not isinstance(doc, dict) or doc.get("version") != TREE_VERSION:
        raise CorruptObject("a tree has an unknown version")
    raw_nodes = doc.get("nodes", [])
    if not isinstance(raw_nodes, list) or not all(isinstance(d, dict) for d in raw_nodes):
        raise CorruptObject("a tree's nodes are not a list of objects")
    nodes = [Node.from_json(d) for d in raw_nodes]
    names = [n.name for n in nodes]
    if len(set(names)) != len(names):
        raise CorruptObject("a tree holds the same name twice")
    return nodes
