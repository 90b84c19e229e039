"""The repository: config, key slots, packs, index and snapshots on one storage backend.

Write order is what makes a crash harmless: packs are durable before the index object that lists
them, and the index before the snapshot object that needs it. The snapshot object is the commit
point; anything written before a crash and never committed is an unreferenced leftover that
`verify` reports as a notice and prune removes.
"""

from __future__ import annotations

import json
import os
import secrets
import socket
import struct
import threading
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from phoenix_backup.errors import (
    CorruptObject,
    ObjectNotFound,
    RepositoryError,
    RepositoryNotFound,
    SnapshotNotFound,
    UnsupportedFormat,
)
from phoenix_backup.repo import keys as keyslots
from phoenix_backup.repo.crypto import (
    BlobIds,
    BlobType,
    Compression,
    Compressor,
    Sealer,
    decompress,
    sha256_hex,
)
from phoenix_backup.repo.index import INDEX_AAD, Index, decode_index, encode_index
from phoenix_backup.repo.locks import HeldLock, LockManager
from phoenix_backup.repo.pack import (
    DATA_PACK_TARGET,
    HEADER_AAD,
    MAX_HEADER,
    TREE_PACK_TARGET,
    PackBuilder,
    PackEntry,
    blob_aad,
    decode_header,
    pack_name,
)
from phoenix_backup.repo.snapshot import SNAPSHOT_AAD, Latest, Snapshot, choose_latest
from phoenix_backup.repo.tree import Node, decode_tree, encode_tree
from phoenix_backup.storage.base import Backend

FORMAT_VERSION = 1
FORMAT_NAME = "phoenix-repository"

# FastCDC parameters for files: restic's proven sizes. Small agent notes are one chunk each.
CHUNK_MIN = 512 * 1024
CHUNK_AVG = 1024 * 1024
CHUNK_MAX = 8 * 1024 * 1024
# SQLite copies: a new blob holds a run of at most this many pages (256 KiB at 4 KiB pages).
SQLITE_RUN_PAGES = 64
# Plaintext bytes waiting for the sealing threads at most (bounds memory on fast reads).
MAX_INFLIGHT_BYTES = 16 * 1024 * 1024


# Trees are JSON and always compress well, whatever the config says about file data; they are a
# small part of each backup, so they get zstd level 3 rather than the data's fast default.
_TREE_COMPRESSOR = Compressor(True, 3)


@dataclass(frozen=True)
class RepoConfig:
    id: str
    version: int
    created: str
    encrypted: bool
    chunker: dict[str, int]
    sqlite_run_pages: int

    def to_bytes(self) -> bytes:
        doc = {
            "format": FORMAT_NAME,
            "version": self.version,
            "id": self.id,
            "created": self.created,
            "encryption": "aes-256-gcm" if self.encrypted else "none",
            "chunker": {"algorithm": "fastcdc-2020", **self.chunker},
            "sqliteRunPages": self.sqlite_run_pages,
        }
        return (json.dumps(doc, indent=2, sort_keys=True) + "\n").encode()

    @classmethod
    def from_bytes(cls, data: bytes, where: str) -> RepoConfig:
        try:
            d = json.loads(data)
            if d.get("format") != FORMAT_NAME:
                raise CorruptObject(f"{where} does not hold a Phoenix repository config")
            version = d["version"]
            if not isinstance(version, int):
                raise CorruptObject(f"the repository config at {where} is malformed")
            if version > FORMAT_VERSION:
                raise UnsupportedFormat(
                    f"the repository at {where} uses format version {version}, newer than this "
                    f"Phoenix reads ({FORMAT_VERSION}); upgrade phoenix-backup (pip install -U phoenix-backup)"
                )
            ch = d["chunker"]
            chunker = {"min": int(ch["min"]), "avg": int(ch["avg"]), "max": int(ch["max"])}
            # The ranges pyfastcdc accepts (its effective average is avg_size + min_size).
            lo, avg, hi = chunker["min"], chunker["avg"], chunker["max"]
            if not (64 <= lo <= 1024 * 1024 and 1024 <= hi <= 16 * 1024 * 1024 and lo <= avg <= hi):
                raise CorruptObject(f"the repository config at {where} has impossible chunker sizes")
            if not 256 <= avg - lo <= 4 * 1024 * 1024:
                raise CorruptObject(f"the repository config at {where} has impossible chunker sizes")
            run = int(d["sqliteRunPages"])
            if not 1 <= run <= 4096:
                raise CorruptObject(f"the repository config at {where} has an impossible sqliteRunPages")
            return cls(
                id=str(d["id"]),
                version=version,
                created=str(d["created"]),
                encrypted=d["encryption"] != "none",
                chunker=chunker,
                sqlite_run_pages=run,
            )
        except (KeyError, TypeError, ValueError, AttributeError, OverflowError) as exc:
            raise CorruptObject(f"the repository config at {where} is malformed: {exc}") from exc


@dataclass
class WriteStats:
    blobs_added: int = 0
    bytes_added: int = 0  # sealed bytes in new packs, headers and index objects
    raw_added: int = 0


@dataclass
class LoadProblems:
    """Objects that could not be read while loading; verify reports them, others carry on."""

    index: dict[str, str] = field(default_factory=dict)
    snapshots: dict[str, str] = field(default_factory=dict)


class Repository:
    def __init__(
        self,
        backend: Backend,
        config: RepoConfig,
        secrets_: keyslots.MasterSecrets,
        compression: Compressor | None = None,
        notice: Callable[[str], None] | None = None,
    ) -> None:
        self.backend = backend
        self.config = config
        self.secrets = secrets_
        self.ids = BlobIds(secrets_.id_key)
        self.sealer = Sealer(secrets_.encryption_key if config.encrypted else None)
        self.compressor = compression or Compressor(True)
        self.notice: Callable[[str], None] = notice or (lambda _msg: None)
        self.index = Index()
        self.problems = LoadProblems()
        self.stats = WriteStats()
        self._index_loaded = False
        self._lock = threading.Lock()
        self._pending: set[bytes] = set()
        self._packers = {t: PackBuilder(t) for t in BlobType}
        self._new_packs: dict[str, list[PackEntry]] = {}
        self._workers: ThreadPoolExecutor | None = None
        self._futures: list[Future[None]] = []
        self._worker_error: BaseException | None = None
        self._inflight = threading.Condition()
        self._inflight_bytes = 0
        self.locks = LockManager(backend, self.sealer, self.notice)
        self.opened_with: str | None = None  # the key slot that opened the repository
        self.unindexed_packs: set[str] = set()  # packs known only from their own headers

    # -- creation and opening -------------------------------------------------------------

    @classmethod
    def init(
        cls,
        backend: Backend,
        slot_factory: Callable[[keyslots.MasterSecrets], keyslots.KeySlot],
        encrypted: bool,
        **kwargs: Any,
    ) -> Repository:
        """Create a new repository; its first key slot comes from `slot_factory`."""
        backend.create()
        master = keyslots.MasterSecrets.generate()
        slot = slot_factory(master)
        config = RepoConfig(
            id=secrets.token_hex(16),
            version=FORMAT_VERSION,
            created=datetime.now(UTC).isoformat(timespec="seconds"),
            encrypted=encrypted,
            chunker={"min": CHUNK_MIN, "avg": CHUNK_AVG, "max": CHUNK_MAX},
            sqlite_run_pages=SQLITE_RUN_PAGES,
        )
        backend.write(f"keys/{slot.id}", slot.to_json(), exclusive=True)
        # The config is written last: a repository is "there" only once it is complete.
        backend.write("config", config.to_bytes(), exclusive=True)
        repo = cls(backend, config, master, **kwargs)
        repo.opened_with = slot.id
        return repo

    @staticmethod
    def read_config(backend: Backend) -> RepoConfig:
        if not backend.exists():
            raise RepositoryNotFound(
                f"no repository at {backend.location}; create one with `phx init` or check targets.local.path"
            )
        return RepoConfig.from_bytes(backend.read("config"), backend.location)

    @classmethod
    def open(cls, backend: Backend, creds: keyslots.Credentials, **kwargs: Any) -> Repository:
        config = cls.read_config(backend)
        slots = cls.read_key_slots(backend)
        slot, master = keyslots.open_any(slots, creds)
        repo = cls(backend, config, master, **kwargs)
        repo.opened_with = slot.id
        return repo

    @staticmethod
    def read_key_slots(backend: Backend) -> list[keyslots.KeySlot]:
        slots = []
        newer: UnsupportedFormat | None = None
        for info in backend.list("keys/"):
            try:
                slots.append(keyslots.KeySlot.from_json(backend.read(info.name)))
            except CorruptObject:
                continue  # another slot may still open the repository
            except UnsupportedFormat as exc:
                newer = exc  # a slot type of a newer Phoenix: fine if another slot opens
        if not slots:
            if newer is not None:
                raise newer
            raise RepositoryError(f"the repository at {backend.location} has no readable key slot; it cannot be opened")
        return slots

    def add_key_slot(self, slot: keyslots.KeySlot) -> None:
        self.backend.write(f"keys/{slot.id}", slot.to_json(), exclusive=True)

    def remove_key_slot(self, slot_id: str) -> None:
        slots = self.read_key_slots(self.backend)
        if slot_id not in {s.id for s in slots}:
            raise RepositoryError(f"no key slot {slot_id}; see `phx key list`")
        if len(slots) == 1:
            raise RepositoryError("refusing to remove the last key slot: the repository could never be opened again")
        self.backend.delete(f"keys/{slot_id}")

    def lock(self, exclusive: bool, command: str) -> HeldLock:
        return self.locks.acquire(exclusive, command)

    # -- index -------------------------------------------------------------------------

    def load_index(self) -> None:
        if self._index_loaded:
            return
        objects = self.read_index_objects()
        # An index that a prune superseded may survive a crash between writing its replacement
        # and deleting it; it may name packs that are already gone, so only the live ones count.
        superseded = {f"index/{s}" for _packs, sup in objects.values() for s in sup}
        for name, (packs, _sup) in objects.items():
            if name in superseded:
                continue
            for pack_id, entries in packs.items():
                self.index.add_pack(pack_id, entries)
        self._index_loaded = True
        if self.problems.index:
            # A damaged index object must not make intact packs unreachable: their own headers
            # say what they hold, so restores keep working. `verify` still reports the damage.
            self.add_unindexed_packs()
            self.notice(
                f"{len(self.problems.index)} index object(s) are damaged; read the headers of "
                f"{len(self.unindexed_packs)} pack(s) instead (run `phx verify --read-data` to see what is affected)"
            )

    def add_unindexed_packs(self) -> dict[str, str]:
        """Add the packs no readable index lists, from their headers; return {pack: problem} for
        those whose header cannot be read."""
        indexed = set(self.index.pack_ids())
        unreadable: dict[str, str] = {}
        for info in self.backend.list("data/"):
            pack_id = info.name.split("/")[-1]
            if pack_id in indexed:
                continue
            try:
                self.index.add_pack(pack_id, self.read_pack_header(pack_id))
                self.unindexed_packs.add(pack_id)
            except (CorruptObject, ObjectNotFound) as exc:
                unreadable[info.name] = str(exc)
        return unreadable

    def read_index_objects(self) -> dict[str, tuple[dict[str, list[PackEntry]], list[str]]]:
        """Every readable index object: name -> (packs, superseded index ids); the unreadable ones
        go to `problems.index`."""
        out = {}
        for info in self.backend.list("index/"):
            try:
                out[info.name] = self._read_index_object(info.name)
            except (CorruptObject, ObjectNotFound) as exc:
                self.problems.index[info.name] = str(exc)
        return out

    # -- prune: the only code that deletes packs, index objects and snapshots ---------------

    def delete_snapshot(self, sid: str) -> None:
        """Forget one snapshot: its data stays until prune finds it unreferenced."""
        self.backend.delete(f"snapshots/{sid}")

    def repack(self, blobs: Iterable[tuple[PackEntry, bytes]]) -> dict[str, list[PackEntry]]:
        """Write sealed blobs, copied as they are, into new packs; return the new packs' entries.

        A seal binds a blob to its type and id, not to its pack, so copying needs no decryption.
        The packs are durable when this returns but listed in no index until `write_index`:
        a crash before that leaves unreferenced leftovers, never a dangling reference."""
        packers = {t: PackBuilder(t) for t in BlobType}
        written: dict[str, list[PackEntry]] = {}

        def put(kind: BlobType) -> None:
            pack_id, data, entries = packers[kind].finish(self.sealer)
            self.backend.write(pack_name(pack_id), data, cold=kind == BlobType.DATA)
            written[pack_id] = entries
            packers[kind] = PackBuilder(kind)

        for entry, sealed in blobs:
            packer = packers[entry.type]
            packer.add(entry.id, entry.compression, sealed, entry.raw)
            if packer.size >= (DATA_PACK_TARGET if entry.type == BlobType.DATA else TREE_PACK_TARGET):
                put(entry.type)
        for kind in BlobType:
            if packers[kind].entries:
                put(kind)
        return written

    def write_index(self, packs: dict[str, list[PackEntry]], superseded: list[str]) -> str:
        """One index object listing `packs` that supersedes the index objects `superseded`
        (bare ids); returns its name. It is written whole or not at all, so the old objects may
        be deleted once this returns."""
        raw = self.sealer.seal(encode_index(packs, superseded), INDEX_AAD)
        name = f"index/{sha256_hex(raw)}"
        self.backend.write(name, raw)
        return name

    def _read_index_object(self, name: str) -> tuple[dict[str, list[PackEntry]], list[str]]:
        raw = self.backend.read(name)
        if sha256_hex(raw) != name.split("/")[-1]:
            raise CorruptObject(f"{name} does not match its name (damaged)")
        return decode_index(self.sealer.open(raw, INDEX_AAD, name), name)

    # -- blobs -------------------------------------------------------------------------

    def has_blob(self, blob_id: bytes) -> bool:
        return self.index.has(blob_id) or blob_id in self._pending

    def save_blob(self, kind: BlobType, data: bytes | memoryview, blob_id: bytes | None = None) -> tuple[bytes, int]:
        """Store a blob unless the repository has it; return its id and the sealed bytes added."""
        bid = blob_id if blob_id is not None else self.ids.blob_id(kind, data)
        if not self._claim(bid):
            return bid, 0
        return bid, self._seal_and_pack(kind, bid, data)

    def save_blob_async(self, kind: BlobType, data: bytes | memoryview, blob_id: bytes | None = None) -> bytes:
        """Like `save_blob`, but compressing and sealing run in the repository's worker threads;
        returns the id at once. `flush` waits for them and raises the first error any of them met.
        In-flight bytes are bounded, so a fast reader waits instead of filling memory."""
        self._raise_worker_error()
        bid = blob_id if blob_id is not None else self.ids.blob_id(kind, data)
        if not self._claim(bid):
            return bid
        payload = bytes(data)  # the caller may reuse its buffer
        with self._inflight:
            while self._inflight_bytes > 0 and self._inflight_bytes + len(payload) > MAX_INFLIGHT_BYTES:
                self._inflight.wait()
            self._inflight_bytes += len(payload)
        if self._workers is None:
            self._workers = ThreadPoolExecutor(max_workers=max(2, os.cpu_count() or 2), thread_name_prefix="phx-seal")
        self._futures.append(self._workers.submit(self._seal_task, kind, bid, payload))
        return bid

    def _seal_task(self, kind: BlobType, bid: bytes, payload: bytes) -> None:
        try:
            self._seal_and_pack(kind, bid, payload)
        except BaseException as exc:
            with self._lock:
                if self._worker_error is None:
                    self._worker_error = exc
        finally:
            with self._inflight:
                self._inflight_bytes -= len(payload)
                self._inflight.notify_all()

    def _raise_worker_error(self) -> None:
        if self._worker_error is not None:
            raise self._worker_error

    def _claim(self, bid: bytes) -> bool:
        """True when this caller must store the blob (no one has it or is storing it)."""
        with self._lock:
            if self.index.has(bid) or bid in self._pending:
                return False
            self._pending.add(bid)
            return True

    def _seal_and_pack(self, kind: BlobType, bid: bytes, data: bytes | memoryview) -> int:
        if kind == BlobType.TREE:
            method, payload = _TREE_COMPRESSOR.compress(data)
        else:
            method, payload = self.compressor.compress(data)
        sealed = self.sealer.seal(payload, blob_aad(kind, bid))
        full: PackBuilder | None = None
        with self._lock:
            packer = self._packers[kind]
            packer.add(bid, method, sealed, len(data))
            self.stats.blobs_added += 1
            self.stats.raw_added += len(data)
            target = DATA_PACK_TARGET if kind == BlobType.DATA else TREE_PACK_TARGET
            if packer.size >= target:
                full = packer
                self._packers[kind] = PackBuilder(kind)
        if full is not None:
            self._write_pack(full)
        return len(sealed)

    def wait(self) -> None:
        """Wait for every blob handed to the worker threads; raise the first error they met."""
        futures, self._futures = self._futures, []
        for fut in futures:
            fut.result()
        self._raise_worker_error()

    def close(self) -> None:
        if self._workers is not None:
            self._workers.shutdown(wait=True)
            self._workers = None

    def _write_pack(self, packer: PackBuilder) -> None:
        pack_id, data, entries = packer.finish(self.sealer)
        # Only data packs may go to a cold storage class: trees must stay readable for list/ls/verify.
        self.backend.write(pack_name(pack_id), data, cold=packer.kind == BlobType.DATA)
        with self._lock:
            self.index.add_pack(pack_id, entries)
            self._new_packs[pack_id] = entries
            for e in entries:
                self._pending.discard(e.id)
            self.stats.bytes_added += len(data)

    def flush(self) -> None:
        """Write partial packs, then one index object listing every pack written since the last flush."""
        self.wait()
        for kind in BlobType:
            with self._lock:
                packer = self._packers[kind]
                self._packers[kind] = PackBuilder(kind)
            if packer.entries:
                self._write_pack(packer)
        with self._lock:
            new, self._new_packs = self._new_packs, {}
        if new:
            raw = self.sealer.seal(encode_index(new), INDEX_AAD)
            self.backend.write(f"index/{sha256_hex(raw)}", raw)
            self.stats.bytes_added += len(raw)

    def read_pack_header(self, pack_id: str) -> list[PackEntry]:
        """A pack's entries from its own header (two small reads), without the index."""
        name = pack_name(pack_id)
        info = self.backend.stat(name)
        if info is None or info.size < 4:
            raise CorruptObject(f"{name} is missing or truncated")
        (hlen,) = struct.unpack("<I", self.backend.read_range(name, info.size - 4, 4))
        if hlen > min(MAX_HEADER, info.size - 4):
            raise CorruptObject(f"{name} has an impossible header length")
        start = info.size - 4 - hlen
        header = self.sealer.open(self.backend.read_range(name, start, hlen), HEADER_AAD, f"{name} header")
        entries = decode_header(header, name)
        if any(e.offset + e.stored > start for e in entries):
            raise CorruptObject(f"{name} lists a blob beyond its end")
        return entries

    def load_blob(self, kind: BlobType, blob_id: bytes) -> bytes:
        loc = self.index.get(blob_id)
        if loc is None or loc.type != kind:
            raise CorruptObject(f"{kind.name.lower()} blob {blob_id.hex()[:16]} is not in the index (missing data)")
        what = f"blob {blob_id.hex()[:16]} in pack {loc.pack_id[:16]}"
        sealed = self.backend.read_range(pack_name(loc.pack_id), loc.offset, loc.stored)
        return self.open_blob(kind, blob_id, loc.compression, sealed, loc.raw, what, check_id=False)

    def open_blob(
        self,
        kind: BlobType,
        blob_id: bytes,
        method: Compression,
        sealed: bytes,
        raw: int,
        what: str,
        *,
        check_id: bool = True,
    ) -> bytes:
        """Open a sealed blob. The AEAD tag (or checksum) binds the stored bytes to the blob's type
        and id, so ordinary reads skip re-hashing the plaintext; `verify --read-data` does it."""
        payload = self.sealer.open(sealed, blob_aad(kind, blob_id), what)
        data = decompress(method, payload, raw, what)
        if len(data) != raw or (check_id and self.ids.blob_id(kind, data) != blob_id):
            raise CorruptObject(f"{what} does not match its id (damaged)")
        return data

    # -- trees -------------------------------------------------------------------------

    def save_tree(self, nodes: list[Node]) -> tuple[bytes, int]:
        return self.save_blob(BlobType.TREE, encode_tree(nodes))

    def load_tree(self, tree_id: bytes) -> list[Node]:
        return decode_tree(self.load_blob(BlobType.TREE, tree_id))

    # -- snapshots ---------------------------------------------------------------------

    def save_snapshot(self, snap: Snapshot) -> str:
        raw = self.sealer.seal(snap.to_json_bytes(), SNAPSHOT_AAD)
        sid = sha256_hex(raw)
        self.backend.write(f"snapshots/{sid}", raw)
        self.stats.bytes_added += len(raw)
        return sid

    def load_snapshot(self, sid: str) -> Snapshot:
        name = f"snapshots/{sid}"
        raw = self.backend.read(name)
        if sha256_hex(raw) != sid:
            raise CorruptObject(f"{name} does not match its name (damaged)")
        return Snapshot.from_json_bytes(self.sealer.open(raw, SNAPSHOT_AAD, name), sid)

    def list_snapshots(self) -> list[Snapshot]:
        """Every readable snapshot, oldest first; unreadable ones are recorded in `problems`."""
        out = []
        for info in self.backend.list("snapshots/"):
            sid = info.name.split("/")[-1]
            try:
                out.append(self.load_snapshot(sid))
            except (CorruptObject, ObjectNotFound) as exc:
                self.problems.snapshots[info.name] = str(exc)
        # Equal recorded times (whole seconds, or the same --time) keep the order they were
        # taken in: `started` has microseconds.
        out.sort(key=lambda s: (s.datetime.timestamp(), _started(s), s.name, s.id))
        return out

    def find_snapshot(
        self, ref: str, snapshots: list[Snapshot] | None = None, latest: Latest | None = None
    ) -> Snapshot:
        """A snapshot by id, unique id prefix (4+ characters) or timestamp name; `latest` is the
        newest snapshot `latest` selects (by default: complete, full scope, this host)."""
        snaps = snapshots if snapshots is not None else self.list_snapshots()
        if not snaps:
            raise SnapshotNotFound("the repository holds no snapshots yet; run `phx backup` first")
        if ref == "latest":
            return self._latest(snaps, latest or Latest())
        by_name = [s for s in snaps if s.name == ref]
        if len(by_name) > 1:
            ids = ", ".join(s.id[:12] for s in by_name)
            raise SnapshotNotFound(
                f"the name {ref!r} is ambiguous: it names {len(by_name)} snapshots ({ids}); give the id"
            )
        if by_name:
            return by_name[0]
        if len(ref) >= 4:
            matches = [s for s in snaps if s.id.startswith(ref.lower())]
            if len(matches) == 1:
                return matches[0]
            if len(matches) > 1:
                raise SnapshotNotFound(f"snapshot prefix {ref!r} is ambiguous; give more characters of the id")
        raise SnapshotNotFound(f"no snapshot named {ref!r}; see `phx list` for ids and names")

    def _latest(self, snaps: list[Snapshot], rule: Latest) -> Snapshot:
        this_host = socket.gethostname()
        found, host = choose_latest(snaps, rule, this_host)
        if found is None:
            newest = snaps[-1]
            what = "partial " if newest.incomplete else ""
            raise SnapshotNotFound(
                f"no {rule.describe(host)} for `latest` (the newest snapshot, {newest.name} {newest.id[:8]}, "
                f"is a {what}{newest.scope} snapshot of host {newest.host}); name one with --backup ID, "
                "or select with --scope, --tag or --host"
            )
        if host != this_host and rule.host is None:
            self.notice(f"this host ({this_host}) has no snapshot of its own here; `latest` is host {host}'s")
        return found


def _started(snap: Snapshot) -> float:
    try:
        return datetime.fromisoformat(snap.started).timestamp()
    except ValueError:
        return 0.0
