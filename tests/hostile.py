"""Hostile repository input, crafted as someone who can write a repository's storage would craft it.

An unencrypted repository carries unkeyed checksums and its id key in a `none` key slot, so whoever
can write its storage can forge any tree, snapshot, pack or index; an encrypted one can be damaged
the same way. Phoenix's decoders and walks must turn every such object into one clean error naming
it, with bounded time and memory.

- `decode(kind, data)` runs one decoder, the way `phx` reaches it, on the bytes under test;
- `CLEAN[kind]` are the only exceptions it may raise;
- `crafted()` are the attacks of issue 14 (and the inputs fuzzing found) as decoder inputs. They are
  kept in tests/corpus/<kind>/ as the regression corpus (`python tests/hostile.py` rewrites it);
- `Forger` writes crafted trees and snapshots into a real repository for the end-to-end attacks.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import socket
import struct
import sys
import threading
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import zstandard

from phoenix_backup.errors import CorruptObject, NotAnExport, UnsafePath, UnsupportedFormat
from phoenix_backup.repo.crypto import BlobType, Compression, Sealer, sha256_hex
from phoenix_backup.repo.index import decode_index
from phoenix_backup.repo.keys import Credentials
from phoenix_backup.repo.pack import HEADER_AAD, PackBuilder, blob_aad, pack_name, read_header
from phoenix_backup.repo.repository import Repository
from phoenix_backup.repo.snapshot import SNAPSHOT_AAD, Snapshot
from phoenix_backup.repo.tree import decode_tree
from phoenix_backup.storage.local import LocalBackend

CORPUS = Path(__file__).resolve().parent / "corpus"
KINDS = ("pack_header", "index", "tree", "snapshot", "lock", "export_metadata")
CLEAN: dict[str, tuple[type[Exception], ...]] = {
    "pack_header": (CorruptObject,),
    "index": (CorruptObject,),
    "tree": (CorruptObject, UnsafePath),
    "snapshot": (CorruptObject, UnsupportedFormat),
    "lock": (CorruptObject,),
    "export_metadata": (NotAnExport,),
}
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
_CHECKSUM = Sealer(None)


def cpu_seconds() -> float:
    """CPU seconds used so far by this process and the children it has waited for (gpg, age): a
    bound on the cost of a hostile input, meaningful on a loaded machine where wall time is not."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def decode(kind: str, data: bytes) -> None:
    """Decode `data` as `kind` arrives in a repository (or an export); raise only CLEAN[kind]."""
    from phoenix_backup.ops.import_ import ExportRowSource, parse_metadata
    from phoenix_backup.repo.locks import decode_lock

    if kind == "pack_header":
        # A plaintext pack header, sealed and appended to a body as a writer of the storage could.
        sealed = _CHECKSUM.seal(data, HEADER_AAD)
        read_header(b"\0" * 4096 + sealed + struct.pack("<I", len(sealed)), _CHECKSUM, "data/te/test")
    elif kind == "index":
        # The index's zstd frame as stored, or a plaintext body that a writer compressed.
        blob = data if data.startswith(ZSTD_MAGIC) else zstandard.ZstdCompressor().compress(data)
        decode_index(blob, "index/test")
    elif kind == "tree":
        decode_tree(data, "tree test")
    elif kind == "snapshot":
        Snapshot.from_json_bytes(data, "ab" * 32)
    elif kind == "lock":
        decode_lock(data, "locks/test")
    elif kind == "export_metadata":
        folder = Path("/nonexistent/phx-export")
        meta = parse_metadata(data.decode("utf-8", "replace"), folder)
        for db in meta.get("databases", []):
            ExportRowSource(folder, db)
    else:
        raise ValueError(kind)


def corpus() -> Iterator[tuple[str, str, bytes]]:
    """(kind, name, bytes) of every file of the regression corpus."""
    for kind in KINDS:
        for path in sorted((CORPUS / kind).glob("*")):
            yield kind, path.name, path.read_bytes()


# ---------------------------------------------------------------------------------------------
# The attacks, as decoder inputs


def canonical(doc: object) -> bytes:
    return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()


def extents(*items: tuple[bytes, int, int]) -> str:
    out = bytearray()
    for blob, offset, length in items:
        out += blob
        for value in (offset, length):
            while value >= 0x80:
                out.append((value & 0x7F) | 0x80)
                value >>= 7
            out.append(value)
    return base64.b64encode(bytes(out)).decode()


def file_node(name: str, data: bytes = b"hello\n", /, **changes: object) -> dict[str, Any]:
    """A well-formed file node for `data` stored as one blob of id sha256(data)."""
    node: dict[str, Any] = {
        "name": name,
        "type": "file",
        "mode": 0o644,
        "mtimeNs": 1_700_000_000_000_000_000,
        "uid": 1000,
        "gid": 1000,
        "size": len(data),
        "inode": 1,
        "ctimeNs": 1_700_000_000_000_000_000,
        "content": extents((hashlib.sha256(data).digest(), 0, len(data))),
        "sha256": hashlib.sha256(data).hexdigest(),
    }
    node.update(changes)
    return node


def dir_node(name: str, subtree: bytes, /, **changes: object) -> dict[str, Any]:
    node: dict[str, Any] = {"name": name, "type": "dir", "mode": 0o755, "mtimeNs": 0, "uid": 0, "gid": 0}
    node["subtree"] = subtree.hex()
    node.update(changes)
    return node


def tree(*nodes: dict[str, Any]) -> bytes:
    return canonical({"version": 1, "nodes": sorted(nodes, key=lambda n: str(n["name"]))})


def snapshot_doc(tree_id: bytes, **changes: object) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "version": 1,
        "time": "2026-03-15T14:30:00+00:00",
        "name": "2026-03-15-14-30",
        "host": "victim",
        "username": "agent",
        "scope": "full",
        "tags": [],
        "tree": tree_id.hex(),
        "parent": None,
        "sources": {"workspace": "/home/agent/argent", "home": "/home/agent"},
        "databases": [],
        "stats": {"files": 1, "dirs": 1, "size": 6, "added": 0, "blobsAdded": 0, "filesRead": 0, "duration": 0.1},
        "incomplete": [],
        "phoenixVersion": "0.1.0",
        "started": "2026-03-15T14:30:00+00:00",
    }
    doc.update(changes)
    return doc


def lock_doc(**changes: object) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "host": "victim",
        "bootId": "b" * 36,
        "pid": 4242,
        "processStart": 1000,
        "username": "agent",
        "exclusive": False,
        "time": 1_700_000_000.0,
        "command": "backup",
    }
    doc.update(changes)
    return doc


def header(*entries: tuple[int, int, bytes, int, int, int], count: int | None = None, version: int = 1) -> bytes:
    out = struct.pack("<4sBI", b"PHXH", version, len(entries) if count is None else count)
    return out + b"".join(struct.pack("<BB32sIII", *e) for e in entries)


def index_body(packs: list[tuple[bytes, list[tuple[int, int, bytes, int, int, int]]]], superseded: int = 0) -> bytes:
    out = struct.pack("<4sBI", b"PHXI", 1, len(packs))
    for pack_id, entries in packs:
        out += struct.pack("<32sI", pack_id, len(entries)) + b"".join(struct.pack("<BB32sIII", *e) for e in entries)
    return out + struct.pack("<I", superseded)


def export_meta(*databases: dict[str, Any], **changes: object) -> bytes:
    doc: dict[str, Any] = {
        "format": "phoenix-memory-export",
        "version": 1,
        "exportFormat": "json",
        "time": "2026-03-15T14:30:00+00:00",
        "vectors": True,
        "databases": list(databases),
    }
    doc.update(changes)
    return json.dumps(doc).encode()


def table_file(**changes: object) -> dict[str, Any]:
    doc: dict[str, Any] = {"name": "t", "columns": ["id"], "primaryKey": ["id"], "file": "t.json", "rows": 1}
    doc.update(changes)
    return doc


def export_db(path: object = "home/.argentos/memory.db", **changes: object) -> dict[str, Any]:
    db: dict[str, Any] = {
        "path": path,
        "schema": [{"type": "table", "name": "t", "table": "t", "sql": "CREATE TABLE t(id INTEGER PRIMARY KEY)"}],
        "tableFiles": [table_file()],
    }
    db.update(changes)
    return db


def nested(depth: int) -> str:
    return "[" * depth + "]" * depth


def crafted() -> dict[str, dict[str, bytes]]:
    """kind -> name -> bytes: the attacks of issue 14 and the faults fuzzing found, as decoder input."""
    sub = b"\x11" * 32
    big = 400 * 1024 * 1024
    return {
        "tree": {
            "uid-negative": tree(file_node("a", uid=-5)),
            "gid-above-32-bits": tree(file_node("a", gid=2**32)),
            "mtime-2-80": tree(file_node("a", mtimeNs=2**80)),
            "ctime-negative-2-70": tree(file_node("a", ctimeNs=-(2**70))),
            "size-2-50": tree(file_node("a", size=2**50)),
            "size-negative": tree(file_node("a", size=-1)),
            "extent-beyond-any-blob": tree(file_node("a", size=2**40, content=extents((b"\1" * 32, 2**40 - 1, 2**40)))),
            "mode-float": tree(file_node("a", mode=420.5)),
            "mode-bool": tree(file_node("a", mode=True)),
            "mtime-nan": tree(file_node("a")).replace(b'"mtimeNs":1700000000000000000', b'"mtimeNs":NaN'),
            "sha256-not-hex": tree(file_node("a", sha256="zz" * 32)),
            "sha256-missing": tree(file_node("a", sha256=None)),
            "name-dotdot": tree(file_node("..")),
            "name-slash": tree(file_node("etc/passwd")),
            "name-nul": tree(file_node("a\0b")),
            "name-256-bytes": tree(file_node("x" * 256)),
            "name-number": tree(file_node("a", name=7)),
            "subtree-short": tree(dir_node("d", b"\1" * 31)),
            "subtree-not-hex": tree(dir_node("d", sub, subtree="g" * 64)),
            "symlink-empty-target": tree({"name": "l", "type": "symlink", "mode": 0, "mtimeNs": 0, "linkTarget": ""}),
            "symlink-number-target": tree({"name": "l", "type": "symlink", "mode": 0, "mtimeNs": 0, "linkTarget": 5}),
            "sqlite-details-list": tree(file_node("m.db", type="sqlite", sqlite=[1, 2])),
            "duplicate-names": tree(file_node("a"), file_node("a", uid=7)),
            "nesting-100000": ('{"version":1,"nodes":' + nested(100_000) + "}").encode(),
            "nodes-not-list": canonical({"version": 1, "nodes": {"a": 1}}),
            "not-utf8": b'{"version":1,"nodes":[{"name":"\xff"}]}',
            # JSON's \ud800 escape decodes to a lone surrogate, which no file system call or
            # terminal takes (\udc80-\udcff are a non-UTF-8 name's bytes, and fine).
            "link-target-lone-surrogate": tree(
                {"name": "l", "type": "symlink", "mode": 0o777, "mtimeNs": 0, "linkTarget": "a\ud800b"}
            ),
        },
        "snapshot": {
            "name-path-traversal": canonical(snapshot_doc(sub, name="../../../../etc/cron.d/phx")),
            "name-control-chars": canonical(snapshot_doc(sub, name="2026\x1b[2J")),
            "time-no-offset": canonical(snapshot_doc(sub, time="2026-03-15T14:30:00")),
            "time-year-1-plus-offset": canonical(snapshot_doc(sub, time="0001-01-01T00:00:00+05:00")),
            "time-garbage": canonical(snapshot_doc(sub, time="yesterday")),
            "tree-short": canonical(snapshot_doc(b"\1" * 8)),
            "parent-not-hex": canonical(snapshot_doc(sub, parent="../x")),
            "stats-negative": canonical(snapshot_doc(sub, stats={"files": -1, "dirs": 0, "size": 0, "added": 0})),
            "stats-2-80": canonical(snapshot_doc(sub, stats={"files": 2**80, "dirs": 0, "size": 0, "added": 0})),
            "duration-infinite": canonical(snapshot_doc(sub)).replace(b'"duration":0.1', b'"duration":Infinity'),
            "tags-nested-100000": canonical(snapshot_doc(sub)).replace(
                b'"tags":[]', b'"tags":' + nested(100_000).encode()
            ),
            "tags-not-strings": canonical(snapshot_doc(sub, tags=[1, None])),
            "databases-not-objects": canonical(snapshot_doc(sub, databases=["x"])),
            "table-count-negative": canonical(
                snapshot_doc(
                    sub,
                    databases=[
                        {
                            "path": "home/m.db",
                            "engine": "sqlite",
                            "version": "3",
                            "integrity": "ok",
                            "tables": {"t": -3},
                        }
                    ],
                )
            ),
            "absent-not-paths": canonical(snapshot_doc(sub, absent=[1])),
            "version-bool": canonical(snapshot_doc(sub, version=True)),
            "not-an-object": b"[1,2,3]",
            "host-lone-surrogate": canonical(snapshot_doc(sub, host="h\ud800")),
            "tag-lone-surrogate": canonical(snapshot_doc(sub, tags=["t\udfff"])),
            "absent-lone-surrogate": canonical(snapshot_doc(sub, absent=["workspace/a\ud800"])),
        },
        "lock": {
            "pid-zero": canonical(lock_doc(pid=0)),
            "pid-negative": canonical(lock_doc(pid=-1)),
            "pid-2-40": canonical(lock_doc(pid=2**40)),
            "time-1e300": canonical(lock_doc(time=1e300)),
            "time-negative": canonical(lock_doc(time=-5)),
            "exclusive-string": canonical(lock_doc(exclusive="yes")),
            "host-number": canonical(lock_doc(host=5)),
            "nesting-100000": ('{"host":' + nested(100_000) + "}").encode(),
            "not-an-object": b"7",
            "host-lone-surrogate": canonical(lock_doc(host="h\ud800")),
        },
        "pack_header": {
            "count-2-32": header(count=2**32 - 1),
            "raw-4-gib": header((0, 1, b"\0" * 32, 0, 10, 2**32 - 1)),
            "unknown-compression": header((0, 9, b"\0" * 32, 0, 10, 10)),
            "beyond-the-body": header((0, 0, b"\0" * 32, 4000, 200, 200)),
            "version-2": header(version=2),
            "truncated": header((0, 0, b"\0" * 32, 0, 10, 10))[:-3],
        },
        "index": {
            "zstd-frame-claiming-400-mib": zstandard.ZstdCompressor().compress(b"\0" * big),
            "raw-4-gib": index_body([(b"\2" * 32, [(0, 1, b"\0" * 32, 0, 10, 2**32 - 1)])]),
            "entry-count-2-32": struct.pack("<4sBI32sI", b"PHXI", 1, 1, b"\2" * 32, 2**32 - 1),
            "superseded-2-16": index_body([], superseded=2**16),
            "unknown-type": index_body([(b"\2" * 32, [(7, 0, b"\0" * 32, 0, 10, 10)])]),
            "garbage-frame": ZSTD_MAGIC + b"\xff" * 20,
        },
        "export_metadata": {
            "databases-not-list": export_meta(databases={"a": 1}),
            "store-without-path": export_meta({"schema": []}),
            "store-path-number": export_meta(export_db(path=5)),
            "schema-not-create": export_meta(
                export_db(schema=[{"type": "table", "name": "t", "table": "t", "sql": "DROP TABLE t"}])
            ),
            "table-file-outside": export_meta(
                export_db(
                    tableFiles=[{"name": "t", "columns": ["id"], "primaryKey": ["id"], "file": "../../etc/passwd"}]
                )
            ),
            "table-file-number": export_meta(export_db(tableFiles=[table_file(file=5)])),
            "table-files-not-list": export_meta(export_db(tableFiles="t.json")),
            # An export by a phx that named `é0` and U+0E90 (or `` and `_`) both `%E90.json`: one
            # table's rows were written over the other's, and import put them in both.
            "two-tables-one-file": export_meta(
                export_db(
                    tableFiles=[
                        table_file(name="\u00e90", file="%E90.json"),
                        table_file(name="\u0e90", file="%E90.json"),
                    ]
                )
            ),
            "columns-not-list": export_meta(export_db(tableFiles=[table_file(columns=5)])),
            "rows-string": export_meta(
                export_db(
                    tableFiles=[{"name": "t", "columns": ["id"], "primaryKey": ["id"], "file": "t.json", "rows": "x"}]
                )
            ),
            "nesting-100000": ('{"format":' + nested(100_000) + "}").encode(),
            "not-json": b"\xff\xfe{",
        },
    }


def deflate_bomb(claimed: int, inflated: int) -> bytes:
    """A deflate stream of `inflated` zero bytes (a pack entry then claims `claimed`)."""
    out = zlib.compressobj(9)
    chunk = b"\0" * (1 << 20)
    parts = [out.compress(chunk) for _ in range(inflated >> 20)]
    return b"".join(parts) + out.flush()


# ---------------------------------------------------------------------------------------------
# Writing crafted objects into a real (unencrypted) repository


class Forger:
    """An attacker with write access to an unencrypted repository's storage: reads the `none` key
    slot, then writes blobs, packs and snapshots that every check accepts as the repository's own."""

    def __init__(self, repo: Path | Repository) -> None:
        self.repo = repo if isinstance(repo, Repository) else Repository.open(LocalBackend(repo), Credentials())
        assert not self.repo.config.encrypted, "forging needs an unencrypted repository"
        self.repo.load_index()

    def tree(self, *nodes: dict[str, Any]) -> bytes:
        raw = tree(*nodes)
        blob_id, _ = self.repo.save_blob(BlobType.TREE, raw)
        return blob_id

    def blob(self, data: bytes) -> bytes:
        blob_id, _ = self.repo.save_blob(BlobType.DATA, data)
        return blob_id

    def file_node(self, name: str, data: bytes, /, **changes: object) -> dict[str, Any]:
        """A file node whose content is really stored (one blob)."""
        return file_node(name, data, content=extents((self.blob(data), 0, len(data))), **changes)

    def raw_blob(
        self, blob_id: bytes, stored: bytes, compression: Compression, raw: int, kind: BlobType = BlobType.DATA
    ) -> None:
        """One blob whose id, stored bytes and claimed length are the attacker's choice: the
        checksum of an unencrypted repository is unkeyed, so it seals whatever it is given."""
        packer = PackBuilder(kind)
        packer.add(blob_id, compression, self.repo.sealer.seal(stored, blob_aad(kind, blob_id)), raw)
        pack_id, data, entries = packer.finish(self.repo.sealer)
        self.repo.backend.write(pack_name(pack_id), data)
        self.repo.write_index({pack_id: entries}, [])
        self.repo.index.add_pack(pack_id, entries)

    def snapshot(self, tree_id: bytes, **changes: object) -> str:
        self.repo.flush()
        raw = self.repo.sealer.seal(canonical(snapshot_doc(tree_id, **changes)), SNAPSHOT_AAD)
        sid = sha256_hex(raw)
        self.repo.backend.write(f"snapshots/{sid}", raw)
        return sid


def write_corpus() -> None:
    for kind, items in crafted().items():
        folder = CORPUS / kind
        folder.mkdir(parents=True, exist_ok=True)
        for name, data in items.items():
            (folder / name).write_bytes(data)


if __name__ == "__main__":
    write_corpus()
    print(f"wrote {sum(len(v) for v in crafted().values())} inputs below {CORPUS}", file=sys.stderr)


@contextlib.contextmanager
def folding_lookups(monkeypatch: Any, below: Path) -> Iterator[None]:
    """`os.lstat` of a name below `below` that is not there finds the entry whose name differs
    only in case or Unicode form, as on a case-insensitive file system (none mounts here): the
    restore's probe file and the dry run's look-ups of names already there see the same."""
    from phoenix_backup.sinks.files import fold_name

    real_lstat = os.lstat

    def folding(path: Any, *args: Any, **kwargs: Any) -> os.stat_result:
        try:
            return real_lstat(path, *args, **kwargs)
        except FileNotFoundError:
            p = Path(path)
            if kwargs.get("dir_fd") is not None or below not in p.parents:
                raise
            twins = [n for n in os.listdir(p.parent) if fold_name(n) == fold_name(p.name)]
            if not twins:
                raise
            return real_lstat(p.parent / twins[0])

    monkeypatch.setattr(os, "lstat", folding)
    yield
    monkeypatch.undo()


@contextlib.contextmanager
def silent_port(greeting: bytes = b"", most: int = 64) -> Iterator[int]:
    """A loopback port that accepts connections (up to `most`) and never answers beyond `greeting`
    (an ssh banner, say): a blackhole, as a network down past a proxy or a firewall holding the
    connection is. Yields the port; every connection is closed at the end."""
    server = socket.create_server(("127.0.0.1", 0))
    held: list[socket.socket] = []

    def accept() -> None:
        with contextlib.suppress(OSError):
            while len(held) < most:
                held.append(server.accept()[0])
                if greeting:
                    held[-1].sendall(greeting)

    threading.Thread(target=accept, daemon=True).start()
    try:
        yield int(server.getsockname()[1])
    finally:
        server.close()
        for conn in held:
            conn.close()
