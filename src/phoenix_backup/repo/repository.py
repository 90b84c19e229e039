"""The repository: config, key slots, packs, index and snapshots on one storage backend.

Write order is what makes a crash harmless: packs are durable before the index object that lists
them, and the index before the snapshot object that needs it. The snapshot object is the commit
point; anything written before a crash and never committed is an unreferenced leftover that
`verify` reports as a notice and prune removes.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import socket
import struct
import sys
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal, cast, overload

import blake3

from phoenix_backup.errors import (
    ConfigNotAuthenticated,
    CorruptObject,
    IdentityRequired,
    KeyChanged,
    KeySlotNotFound,
    ObjectNotFound,
    PhoenixError,
    ReadOnlyStorage,
    RepositoryError,
    RepositoryNotFound,
    SnapshotNotFound,
    UnsupportedFormat,
    UsageError,
)
from phoenix_backup.repo import keys as keyslots
from phoenix_backup.repo import tree as tree_module
from phoenix_backup.repo import writeonly
from phoenix_backup.repo.crypto import (
    BlobIds,
    BlobType,
    Compression,
    Compressor,
    Sealer,
    decompress,
    same_bytes,
    sha256_hex,
)
from phoenix_backup.repo.index import INDEX_AAD, BlobLocation, Index, decode_index_records, encode_index, entries_of
from phoenix_backup.repo.locks import COMMITTED, DELETED, MORE_COMMITTED, HeldLock, LockManager
from phoenix_backup.repo.pack import (
    DATA_PACK_TARGET,
    HEADER_AAD,
    MAX_HEADER,
    ORIGIN_AAD,
    TREE_PACK_TARGET,
    PackBuilder,
    PackEntry,
    PackIds,
    PackOrigin,
    blob_aad,
    decode_header,
    decode_origin,
    origin_length,
    pack_name,
)
from phoenix_backup.repo.pins import Pin, Pins
from phoenix_backup.repo.snapshot import SNAPSHOT_AAD, Latest, Snapshot, choose_latest, is_future
from phoenix_backup.repo.tree import Extents, ListedExtents, ListRef, Node, cut_lists, decode_tree, encode_tree
from phoenix_backup.repo.writeonly import KeyedSealer, Keyring, WriteKey, cover_index, uncover_index
from phoenix_backup.storage.base import Backend, max_object_size
from phoenix_backup.units import human_size

if TYPE_CHECKING:
    # Loaded at the first pack written (with `logging`, 0.6 MB): not while a passphrase slot's
    # scrypt runs at the start of a command (docs/benchmarks.md, "Start-up").
    from concurrent.futures import ThreadPoolExecutor

# The newest format this Phoenix reads. Format 3 is format 2 with a `writeOnly` section
# (repo/writeonly.py); format 4 is format 2 or 3 whose new packs are named by BLAKE3 instead of
# SHA-256 (`packIds`, repo/pack.py). `phx init` writes format 4; a repository of format 2 or 3
# keeps its format and its SHA-256 pack names, so a Phoenix that reads only those still reads it.
# Format 5 is any of those that may hold capture segments of `phx watch` (repo/captures.py): the
# watch writes it before its first segment reaches a target, so a Phoenix from before segments
# were re-sealed by `phx key rotate` refuses it as newer instead of rotating them away.
# Format 6 is format 5 (BLAKE3 pack names, may hold capture segments) whose database nodes may keep
# their extents in extent-list blobs (repo/tree.py `ListedExtents`): only `phx init` writes it, so
# a Phoenix that reads only up to 5 refuses it as newer and never misses the blobs those lists name.
FORMAT_VERSION = 6
BASE_FORMAT_VERSION = 2
WRITE_ONLY_FORMAT_VERSION = 3
PACK_IDS_FORMAT_VERSION = 4
CAPTURES_FORMAT_VERSION = 5
EXTENT_LISTS_FORMAT_VERSION = 6
FORMAT_NAME = "phoenix-repository"

# FastCDC parameters for files: restic's proven sizes. Small agent notes are one chunk each.
CHUNK_MIN = 512 * 1024
CHUNK_AVG = 1024 * 1024
CHUNK_MAX = 8 * 1024 * 1024
# SQLite copies: a new blob holds a run of at most this many pages (256 KiB at 4 KiB pages).
SQLITE_RUN_PAGES = 64
# Plaintext bytes waiting for the sealing threads at most (bounds memory on fast reads). 8 MiB
# (32 database regions, 8 average file chunks) keeps both sealing threads fed: against 16 MiB,
# 11 MB less peak memory on the 3 GB sample at the same CPU time (docs/benchmarks.md).
MAX_INFLIGHT_BYTES = 8 * 1024 * 1024
# Full packs handed to the pack writer threads and not yet written, each written by a thread of
# its own: a remote store's latency is paid for two packs at once, as when each sealing thread
# wrote the pack it filled. The sealing threads wait while both are there, so no more packs are
# held than then (one written by each, one filling).
MAX_PACKS_WRITING = 2


# Trees are JSON and always compress well, whatever the config says about file data; they are a
# small part of each backup, so they get zstd level 3 rather than the data's fast default.
_TREE_COMPRESSOR = Compressor(True, 3)


# Format 2 authenticates the config (its `mac`) and seals key slot metadata; format 1
# repositories are read, and upgraded by the first backup with the owner's secret (`upgrade`).
_ID = re.compile(r"[0-9a-f]{32}")
_CONFIG_MAC_CONTEXT = "phoenix v2 config mac key"


@dataclass(frozen=True)
class RepoConfig:
    id: str
    version: int
    created: str
    encrypted: bool
    chunker: dict[str, int]
    sqlite_run_pages: int
    mac: bytes | None = field(default=None, repr=False)  # format 2: BLAKE3 MAC of everything else
    raw: bytes = field(default=b"", repr=False, compare=False)  # the bytes it was read from
    # Format 3, a write-only repository: the age recipients every run key is wrapped to.
    write_only: tuple[str, ...] | None = None
    # How packs written now are named: SHA-256 (formats 1 to 3) or BLAKE3 (format 4) of their bytes.
    pack_ids: PackIds = PackIds.SHA256
    # Format 5: `phx watch` may have written capture segments here (`Repository.mark_captures`).
    captures: bool = False
    # Format 6: database nodes may keep their extents in extent-list blobs (implies `captures`).
    extent_lists: bool = False

    def document(self) -> dict[str, Any]:
        """The config without its MAC: what the MAC authenticates."""
        doc: dict[str, Any] = {
            "format": FORMAT_NAME,
            "version": self.version,
            "id": self.id,
            "created": self.created,
            "encryption": "aes-256-gcm" if self.encrypted else "none",
            "chunker": {"algorithm": "fastcdc-2020", **self.chunker},
            "sqliteRunPages": self.sqlite_run_pages,
        }
        if self.write_only is not None:
            doc["writeOnly"] = {"recipients": list(self.write_only)}
        if self.pack_ids != PackIds.SHA256 or self.captures:
            doc["packIds"] = self.pack_ids.value  # format 5 says it always, "sha256" too
        return doc

    def to_bytes(self) -> bytes:
        doc = self.document()
        if self.mac is not None:
            doc["mac"] = self.mac.hex()
        return (json.dumps(doc, indent=2, sort_keys=True) + "\n").encode()

    def _mac(self, secrets_: keyslots.MasterSecrets | WriteKey) -> bytes:
        """A write-only config is authenticated by the write key (so the machine that backs up can
        check it), any other by the master secrets."""
        canonical = json.dumps(self.document(), sort_keys=True, separators=(",", ":")).encode()
        if self.write_only is not None:
            write_key = secrets_ if isinstance(secrets_, WriteKey) else WriteKey.of(secrets_)
            return blake3.blake3(canonical, key=write_key.derive(writeonly.CONFIG_MAC_CONTEXT)).digest()
        assert isinstance(secrets_, keyslots.MasterSecrets)
        return blake3.blake3(canonical, key=secrets_.derive(_CONFIG_MAC_CONTEXT)).digest()

    def signed(self, secrets_: keyslots.MasterSecrets | WriteKey) -> RepoConfig:
        """This config in the current format, authenticated by `secrets_` (a write-only one by its
        write key). Format 5 stays format 5: `captures` is never dropped here, nor format 6's
        `extent_lists`."""
        if self.extent_lists:
            version = EXTENT_LISTS_FORMAT_VERSION
        elif self.captures:
            version = CAPTURES_FORMAT_VERSION
        elif self.pack_ids != PackIds.SHA256:
            version = PACK_IDS_FORMAT_VERSION
        elif self.write_only is not None:
            version = WRITE_ONLY_FORMAT_VERSION
        else:
            version = BASE_FORMAT_VERSION
        config = replace(self, version=version, captures=self.captures or self.extent_lists)
        config = replace(config, mac=config._mac(secrets_))
        return replace(config, raw=config.to_bytes())

    def same_but_captures(self, other: RepoConfig) -> bool:
        """Whether `other` holds the same parameters, whatever its format 5 mark, version and MAC
        (a format 6 config is never the same as one of a lower format: `extent_lists` differs)."""
        return replace(self, captures=False, version=0, mac=None) == replace(other, captures=False, version=0, mac=None)

    def fields_digest(self) -> str:
        """A digest of what `same_but_captures` compares (every field but the format 5 mark, the
        version and the MAC): the pin keeps it for the config a watch marked (repo/pins.py `before`)."""
        doc = replace(self, captures=False, version=0, mac=None).document()
        return blake3.blake3(json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()).hexdigest()

    def writer_problem(self, write_key: WriteKey) -> str | None:
        """Why this config is not the write-only repository of `write_key`, or None."""
        if self.write_only is None:
            return "the repository is not write-only"
        if self.mac is None or not same_bytes(self.mac, self._mac(write_key)):
            return "the repository config is not authenticated by this machine's write key"
        return None

    def problem(self, secrets_: keyslots.MasterSecrets, slot_type: str) -> str | None:
        """Why these secrets (from a slot of `slot_type`) are not this repository's, or None.

        Format 2: the MAC must verify, so no parameter (encryption on or off, chunker sizes, id)
        can be changed, and no slot planted, by anyone without the secrets. Format 1 has no MAC:
        at least a `none` slot and an encrypted config (or the reverse) must not go together."""
        if self.version >= 2:
            if self.mac is None or not same_bytes(self.mac, self._mac(secrets_)):
                return "the repository config is not authenticated by this key"
            if self.encrypted == (slot_type == "none"):
                return "a none key slot in an encrypted repository (or the reverse)"
            return None
        if self.encrypted == (slot_type == "none"):
            return (
                "the repository config says it is unencrypted but it opened through an encrypted key slot"
                if not self.encrypted
                else "a none key slot in an encrypted repository"
            )
        return None

    @classmethod
    def from_bytes(cls, data: bytes, where: str) -> RepoConfig:
        try:
            d = json.loads(data)
            if not isinstance(d, dict) or d.get("format") != FORMAT_NAME:
                raise CorruptObject(f"{where} does not hold a Phoenix repository config")
            version = d["version"]
            if not isinstance(version, int) or isinstance(version, bool) or version < 1:
                raise CorruptObject(f"the repository config at {where} is malformed")
            if version > FORMAT_VERSION:
                raise UnsupportedFormat(
                    f"the repository at {where} uses format version {version}, newer than this "
                    f"Phoenix reads ({FORMAT_VERSION}); upgrade phoenix-backup (pip install -U phoenix-backup)"
                )
            repo_id = d["id"]
            # The id names the cache folder and the temporary database copies: a hostile one
            # ("/home/victim", "../..") must never reach the file system.
            if not isinstance(repo_id, str) or not _ID.fullmatch(repo_id):
                raise CorruptObject(
                    f"the repository config at {where} has an invalid id (not 32 lowercase hex digits); "
                    "it is damaged or hostile, restore the config object from another target"
                )
            ch = d["chunker"]
            chunker = {"min": _int(ch["min"]), "avg": _int(ch["avg"]), "max": _int(ch["max"])}
            # The ranges pyfastcdc accepts (its effective average is avg_size + min_size).
            lo, avg, hi = chunker["min"], chunker["avg"], chunker["max"]
            if not (64 <= lo <= 1024 * 1024 and 1024 <= hi <= 16 * 1024 * 1024 and lo <= avg <= hi):
                raise CorruptObject(f"the repository config at {where} has impossible chunker sizes")
            if not 256 <= avg - lo <= 4 * 1024 * 1024:
                raise CorruptObject(f"the repository config at {where} has impossible chunker sizes")
            run = _int(d["sqliteRunPages"])
            if not 1 <= run <= 4096:
                raise CorruptObject(f"the repository config at {where} has an impossible sqliteRunPages")
            if not isinstance(d["created"], str):
                raise CorruptObject(f"the repository config at {where} has no creation time")
            encryption = d["encryption"]
            if encryption not in ("aes-256-gcm", "none"):
                raise CorruptObject(f"the repository config at {where} names unknown encryption {encryption!r}")
            mac = None
            if version >= 2:
                mac = bytes.fromhex(d["mac"])
                if len(mac) != 32:
                    raise ValueError("mac is not 32 bytes")
            write_only = _write_only(d, version, where)
            pack_ids = PackIds.SHA256
            # Format 4 names packs by BLAKE3; format 5 says which, either (the format it came from).
            known = (PackIds.BLAKE3.value, PackIds.SHA256.value) if version >= CAPTURES_FORMAT_VERSION else ("blake3",)
            if version >= PACK_IDS_FORMAT_VERSION:
                if d["packIds"] not in known:
                    raise CorruptObject(f"the repository config at {where} names unknown pack ids {d['packIds']!r}")
                pack_ids = PackIds(d["packIds"])
            config = cls(
                id=repo_id,
                version=version,
                created=str(d["created"]),
                encrypted=encryption != "none",
                chunker=chunker,
                sqlite_run_pages=run,
                mac=mac,
                raw=bytes(data),
                write_only=write_only,
                pack_ids=pack_ids,
                captures=version >= CAPTURES_FORMAT_VERSION,
                extent_lists=version >= EXTENT_LISTS_FORMAT_VERSION,
            )
            if version >= 2 and set(d) - {"mac"} != set(config.document()):
                raise CorruptObject(f"the repository config at {where} has unknown or missing fields")
            return config
        except (KeyError, TypeError, ValueError, AttributeError, OverflowError, RecursionError) as exc:
            # json.loads's own words would send the user to sys.set_int_max_str_digits() or speak of recursion.
            why = "nested too deep" if isinstance(exc, RecursionError) else str(exc)
            why = "a number too long to read" if "sys.set_int_max_str_digits" in why else why
            raise CorruptObject(
                f"the repository config at {where} is malformed ({why}); restore the config object from another target"
            ) from exc


def _int(value: object) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise ValueError(f"{value!r} is not an integer")
    return value


def _write_only(d: dict[str, Any], version: int, where: str) -> tuple[str, ...] | None:
    """A write-only config's recipients: format 3 is the write-only format and nothing else, and a
    format 4 or 5 config may have them (a write-only repository with BLAKE3 pack names, or one that
    may hold capture segments)."""
    if version < WRITE_ONLY_FORMAT_VERSION or (version >= PACK_IDS_FORMAT_VERSION and "writeOnly" not in d):
        if "writeOnly" in d:
            raise CorruptObject(f"the repository config at {where} has unknown or missing fields")
        return None
    section = d["writeOnly"]
    recipients = section["recipients"] if isinstance(section, dict) and set(section) == {"recipients"} else None
    if not isinstance(recipients, list) or not 1 <= len(recipients) <= keyslots.MAX_AGE_RECIPIENTS:
        raise CorruptObject(f"the repository config at {where} has malformed writeOnly recipients")
    try:
        writeonly.parse_recipients([r if isinstance(r, str) else "" for r in recipients])
    except UsageError:
        raise CorruptObject(f"the repository config at {where} has a writeOnly recipient that is no age key") from None
    return tuple(recipients)


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
    # The snapshots of `snapshots` that are damaged (or planted), not merely sealed for an identity
    # this machine lacks: one of them may be the newest backup.
    damaged_snapshots: set[str] = field(default_factory=set)
    # The snapshots of `snapshots` deleted between the listing and their read (another machine's
    # `phx forget`): forgotten, not damaged, but prune and key rotate still wait for a new listing.
    gone_snapshots: set[str] = field(default_factory=set)
    # Index and snapshot objects sealed with the other key of this machine's unfinished `phx key
    # rotate` (not damage: the next rotation removes them); prune refuses while there are any.
    rotation: dict[str, str] = field(default_factory=dict)
    # Write-only repositories: index objects whose claim to supersede others is ignored (no valid
    # owner's MAC), with the index ids they claim; packs where a blob failed its check while
    # another pack held it whole (object -> why).
    claims: dict[str, list[str]] = field(default_factory=dict)
    blobs: dict[str, str] = field(default_factory=dict)


# The most blobs one index object that replaces others lists (`write_index_parts`): its plaintext
# (46 bytes a blob) is about 750 KB, decoded at once when it is loaded. One object of 48,000 blobs
# left the loading process 4-5 MB more resident than the same blobs in 62 objects.
INDEX_PART_BLOBS = 16384


def index_parts(packs: dict[str, list[PackEntry]]) -> list[dict[str, list[PackEntry]]]:
    """`packs` in the objects `Repository.write_index_parts` writes, in order: at most
    INDEX_PART_BLOBS entries each, a pack's entries never split (one pack holding more fills a
    part alone), so there may be up to twice as many as the blobs divided by INDEX_PART_BLOBS."""
    parts: list[dict[str, list[PackEntry]]] = [{}]
    count = 0
    for pack_id, entries in packs.items():
        if parts[-1] and count + len(entries) > INDEX_PART_BLOBS:
            parts.append({})
            count = 0
        parts[-1][pack_id] = entries
        count += len(entries)
    return parts


@dataclass
class RemovedPacks:
    """What `Repository.remove_unindexed` did: packs deleted, their bytes, packs kept and why."""

    removed: int = 0
    size: int = 0
    kept: int = 0
    why: str = ""

    def sentence(self) -> str:
        """The clause the failed run's error gets ("" when there were none)."""
        said = []
        if self.removed:
            said.append(
                f"the {self.removed} pack(s) this run wrote, {human_size(self.size)}, were removed: no index names them"
            )
        if self.kept:
            said.append(f"{self.kept} pack(s) this run wrote were kept: {self.why}")
        return "; ".join(said)


class Repository:
    def __init__(
        self,
        backend: Backend,
        config: RepoConfig,
        secrets_: keyslots.MasterSecrets | None,
        compression: Compressor | None = None,
        notice: Callable[[str], None] | None = None,
        also: Iterable[keyslots.MasterSecrets] = (),
        *,
        write_key: WriteKey | None = None,
        identities: Sequence[str] = (),
        keyring: Keyring | None = None,
    ) -> None:
        """`secrets_` are the master secrets; a machine that backs up a write-only repository has
        only its `write_key` (repo/writer.py). A write-only repository's data is read with age
        `identities` (or the `keyring` of another target's copy)."""
        self.backend = backend
        self.config = config
        self._secrets = secrets_
        if write_key is None and secrets_ is not None:
            write_key = WriteKey.of(secrets_)
        assert write_key is not None, "a repository needs its master secrets or its write key"
        self.write_key = write_key
        self.ids = BlobIds(write_key.id_key)
        self.keyring: Keyring | None = None
        legacy = secrets_.encryption_key if secrets_ is not None else None
        if config.write_only is not None:
            # Everything under run keys, locks under a key of the write key (a machine that backs up
            # must tell its own running lock from another's, and remove a dead one): repo/writeonly.py.
            self.keyring = keyring or Keyring(backend, write_key, config.write_only, identities, legacy)
            self.sealer: Sealer = KeyedSealer(self.keyring)
            lock_sealer = Sealer(write_key.derive(writeonly.LOCK_KEY_CONTEXT))
        else:
            self.sealer = lock_sealer = Sealer(legacy if config.encrypted else None)
        self.compressor = compression or Compressor(True)
        self.notice: Callable[[str], None] = notice or (lambda _msg: None)
        self.index = Index()
        self.problems = LoadProblems()
        self.stats = WriteStats()
        self._index_loaded = False
        self._lock = threading.Lock()
        self._pending: set[bytes] = set()
        self.pack_origin = PackOrigin.BACKUP  # what new packs record as their origin
        self._packers = {t: PackBuilder(t, self.pack_origin, self.sealer) for t in BlobType}
        self._spare_buffers: list[bytearray] = []  # written data packs' buffers (`_next_packer`)
        self._new_packs: dict[str, list[PackEntry]] = {}
        self._workers: ThreadPoolExecutor | None = None
        # Full packs are named (SHA-256), written and fsynced by threads of their own, so the
        # sealing threads go on compressing and sealing while a pack waits for the disk.
        self._pack_writer: ThreadPoolExecutor | None = None
        self._packs_writing = 0
        # Blobs handed to the worker threads and not yet packed: a count, not a future per blob
        # (a 3 GB backup hands over some 12,000, whose futures alone held ~15 MB until `wait`).
        self._tasks = 0
        self._worker_error: BaseException | None = None
        self._inflight = threading.Condition()
        self._inflight_bytes = 0
        # `also`: the other secrets of an unfinished `phx key rotate` on this machine. Only the
        # locks its killed run left are read with them (so they can be cleaned up), and the
        # objects it left are told from damage (`left_by_rotation`); no data.
        self._rotation_sealers = [Sealer(m.encryption_key) for m in also if config.encrypted]
        self.locks = LockManager(backend, lock_sealer, self.notice, also=self._rotation_sealers)
        # Before each object a command deletes or copies in (forget, prune, repair): paced
        # confirmation of the locks held (`Confirmer.step`).
        self.confirmer = self.locks.confirmer()
        self.opened_with: str | None = None  # the key slot that opened the repository
        # The credentials that opened it (`open`): replication opens a replica's old slots with
        # them after a key rotation, without asking for a passphrase again.
        self.credentials: keyslots.Credentials | None = None
        self.unindexed_packs: set[str] = set()  # packs known only from their own headers
        # Packs that only index objects superseded by a prune list: a prune that stopped between
        # writing its new index and deleting them left them (they are garbage).
        self.retired_packs: set[str] = set()
        self.index_objects: list[str] = []  # the index objects `load_index` found, readable or not
        # The index objects the index in memory comes from: the live ones loaded and those written
        # here. A new snapshot relies on them being in the store (`confirm_present`).
        self.relied_on: set[str] = set()
        # This user's pins, when the repository was opened against them: each listing of the
        # snapshots is checked against the newest this machine saw here (`check_rollback`).
        self.pins: Pins | None = None
        self.lost_snapshots: list[tuple[str, str]] = []
        self._rollback_said = False
        self._unrecorded_said = False

    @property
    def secrets(self) -> keyslots.MasterSecrets:
        """The master secrets; a machine that backs up a write-only repository has none."""
        if self._secrets is None:
            raise IdentityRequired(self.backend.location, "its key slots and master secrets")
        return self._secrets

    @property
    def chunker_seed(self) -> int:
        return self.write_key.chunker_seed

    @property
    def fingerprint(self) -> str:
        """The fingerprint this machine trusts: the master key's, or a writer's write key's."""
        return self._secrets.fingerprint if self._secrets is not None else self.write_key.fingerprint

    @property
    def can_read(self) -> bool:
        """False on a machine that backs up a write-only repository without its identity."""
        return self.keyring is None or self.keyring.can_read

    def sibling(self, backend: Backend, config: RepoConfig | None = None) -> Repository:
        """The copy of this repository on another target, opened with the same keys."""
        copy = Repository(
            backend,
            config or self.config,
            self._secrets,
            notice=self.notice,
            write_key=self.write_key,
            keyring=self.keyring.with_backend(backend) if self.keyring is not None else None,
        )
        copy.pins = self.pins
        return copy

    # -- creation and opening -------------------------------------------------------------

    @classmethod
    def init(
        cls,
        backend: Backend,
        slot_factory: Callable[[keyslots.MasterSecrets], keyslots.KeySlot],
        encrypted: bool,
        *,
        pins: Pins | None = None,
        write_only: tuple[str, ...] | None = None,
        pack_ids: PackIds = PackIds.BLAKE3,
        extent_lists: bool = True,
        **kwargs: Any,
    ) -> Repository:
        """Create a new repository; its first key slot comes from `slot_factory`. With `pins`,
        this user trusts its key from now on (it made it). `write_only`: the age recipients of a
        write-only repository (the slot must be an age slot to them). `pack_ids`: how its packs
        are named (BLAKE3, format 4; SHA-256 makes a format 2 or 3 repository, as older Phoenix
        versions did). `extent_lists` (with BLAKE3): format 6, database extents kept in list blobs;
        without it, format 4 as Phoenix wrote before format 6 (tests make old repositories so)."""
        backend.create()
        master = keyslots.MasterSecrets.generate()
        slot = slot_factory(master)
        config = RepoConfig(
            id=os.urandom(16).hex(),
            version=BASE_FORMAT_VERSION,
            created=datetime.now(UTC).isoformat(timespec="seconds"),
            encrypted=encrypted,
            chunker={"min": CHUNK_MIN, "avg": CHUNK_AVG, "max": CHUNK_MAX},
            sqlite_run_pages=SQLITE_RUN_PAGES,
            write_only=write_only,
            pack_ids=pack_ids,
            extent_lists=extent_lists and pack_ids == PackIds.BLAKE3,
        ).signed(master)
        backend.write(f"keys/{slot.id}", slot.to_json(), exclusive=True)
        # The config is written last: a repository is "there" only once it is complete.
        backend.write("config", config.to_bytes(), exclusive=True)
        if pins is not None:
            pins.record(
                config.id,
                backend.location,
                master.fingerprint,
                format=config.version,
                write_only=write_only is not None,
                retrust=True,
            )
        repo = cls(backend, config, master, **kwargs)
        repo.opened_with = slot.id
        return repo

    @staticmethod
    def read_config(backend: Backend) -> RepoConfig:
        if not backend.exists():
            Repository.refuse_lost_config(backend)
            raise RepositoryNotFound(
                f"no repository at {backend.location}; create one with `phx init` or check targets.local.path"
            )
        return RepoConfig.from_bytes(backend.read("config"), backend.location)

    @staticmethod
    def refuse_lost_config(backend: Backend) -> None:
        """A store without `config` that holds index or snapshot objects is a repository that
        lost its config (an interrupted `init` leaves a key slot at most): say so, never start a
        new repository there."""
        if any(next(iter(backend.list(folder)), None) is not None for folder in ("index/", "snapshots/")):
            raise CorruptObject(
                f"the repository at {backend.location} has lost its config object (its other objects are "
                "there); copy it back from another target with `phx repair objects --from TARGET`"
            )

    @classmethod
    def open(
        cls,
        backend: Backend,
        creds: keyslots.Credentials,
        *,
        pins: Pins | None = None,
        expect: str | None = None,
        **kwargs: Any,
    ) -> Repository:
        """Open with the slot that holds the repository's secrets: a slot of an allowed method
        (`creds.methods`) that these credentials open, whose secrets authenticate the config and,
        with `pins`, have the fingerprint this user pinned (pinned now if this is a first use).
        `expect` checks against that fingerprint instead of a pin (for `phx key trust`)."""
        config = cls.read_config(backend)
        if config.write_only is not None and not creds.age_identities and expect is None:
            # The machine that backs up: it holds the write key, never a slot's secrets. Else
            # (a terminal, no write key here) the identity is asked for.
            from phoenix_backup.repo.writer import WriterRepository, WriterStore

            has_key = creds.write_keys is not None and WriterStore(creds.write_keys, config.id).key_path.exists()
            if has_key or creds.ask_identity is None:
                return WriterRepository.open_writer(backend, config, creds.write_keys, **kwargs)
            creds = replace(creds, age_identities=creds.ask_identity(), methods=(creds.allowed() | {"age"}))
        slots = cls.read_key_slots(backend)
        notice = kwargs.get("notice") or (lambda _m: None)
        slot, master, also = _choose_secrets(backend.location, config, slots, creds, pins, notice, expect)
        repo = cls(backend, config, master, also=also, identities=creds.age_identities, **kwargs)
        repo.opened_with = slot.id
        repo.credentials = creds
        if expect is None:
            repo.pins = pins
        return repo

    @staticmethod
    def read_key_slots(backend: Backend) -> list[keyslots.KeySlot]:
        slots = []
        newer: UnsupportedFormat | None = None
        damaged: list[str] = []
        for info in backend.list("keys/"):
            try:
                slot = keyslots.KeySlot.from_json(backend.read(info.name))
                # A slot is removed, replaced and copied by its name: one stored under another
                # slot's id (a copy that outlives a rotation, or a planted slot whose removal
                # would remove the owner's) is not a slot.
                if info.name != f"keys/{slot.id}":
                    continue
                slots.append(slot)
            except CorruptObject:
                damaged.append(info.name)  # another slot may still open the repository
            except UnsupportedFormat as exc:
                newer = exc  # a slot type of a newer Phoenix: fine if another slot opens
        if not slots:
            if newer is not None:
                raise newer
            which = f" ({', '.join(sorted(damaged))} cannot be read)" if damaged else ""
            raise RepositoryError(
                f"the repository at {backend.location} has no readable key slot{which}; it cannot be opened; "
                "copy the slots back from another target with `phx repair objects --from TARGET`"
            )
        return slots

    def add_key_slot(self, slot: keyslots.KeySlot) -> None:
        self.locks.confirm_held()
        self.backend.write(f"keys/{slot.id}", slot.to_json(), exclusive=True)

    def remove_key_slot(self, slot_id: str) -> None:
        slots = self.read_key_slots(self.backend)
        present = {info.name.split("/")[-1] for info in self.backend.list("keys/")}
        if slot_id not in present:
            raise KeySlotNotFound(f"no key slot {slot_id}; see `phx key list` for the slot ids")
        # A damaged slot may always go; a readable one never when it is the last readable one.
        if len(slots) == 1 and slots[0].id == slot_id:
            raise RepositoryError("refusing to remove the last key slot: the repository could never be opened again")
        self.locks.confirm_held("nothing was deleted")
        self.backend.delete(f"keys/{slot_id}")

    @overload
    def lock(self, exclusive: Literal[True], command: str, *, ran: str | None = None) -> HeldLock: ...
    @overload
    def lock(
        self, exclusive: bool, command: str, *, ran: str | None = None
    ) -> HeldLock | contextlib.nullcontext[None]: ...
    def lock(self, exclusive: bool, command: str, *, ran: str | None = None) -> HeldLock | contextlib.nullcontext[None]:
        """Take a lock; then check that the config is still the one this process opened: a
        `phx key rotate` (or a format upgrade) that finished between opening and locking would
        otherwise have this process write objects sealed under the retired key.

        On a read-only store a shared lock cannot be written and is not needed: this process
        cannot change the repository there, and what it reads is authenticated (a concurrent prune
        elsewhere makes a read fail, never lie). So it reads without one, saying so; its writes, if
        any, fail with the read-only error."""
        try:
            held = self.locks.acquire(exclusive, command, ran=ran)
        except ReadOnlyStorage:
            if exclusive:
                raise
            self.notice(
                f"{self.backend.location} is read-only: reading it without a lock (should a prune run elsewhere "
                "meanwhile, data it moves shows as missing: run again)"
            )
            return contextlib.nullcontext()
        try:
            current = self.backend.read("config")
        except BaseException:
            held.release_after_error()
            raise
        if self.config.raw and current != self.config.raw and self._marked_meanwhile(current):
            pass  # a `phx watch` made it format 5 meanwhile: nothing else changed
        elif self.config.raw and current != self.config.raw:
            held.release_after_error()
            raise RepositoryError(
                f"the repository at {self.backend.location} changed while this command was starting "
                "(its key was rotated or its format upgraded); run the command again"
            )
        return held

    def _marked_meanwhile(self, current: bytes) -> bool:
        """Adopt `current` when it is this config made format 5 by a watch (`mark_captures`) after
        this process opened the repository: the same key and parameters, so what it writes stays
        valid (a backup starting with a first watch must not fail for it)."""
        try:
            theirs = RepoConfig.from_bytes(current, self.backend.location)
        except PhoenixError:
            return False
        if not self.marked(theirs):
            return False
        self.config = theirs
        return True

    def upgrade(self) -> bool:
        """Bring a format 1 repository to format 2 under an exclusive lock: authenticate the
        config and seal the key slots' metadata (their wrapped secrets stay as they are). True
        when something was written. Each object is replaced atomically, so a crash leaves a
        repository of either format, both readable."""
        # A format 2 config is written after every slot was upgraded: a format 1 slot beside it
        # was put there by someone else, and sealing its metadata under this key would make it
        # look like one of the owner's.
        if self.config.version >= BASE_FORMAT_VERSION:
            return False
        slots = self.read_key_slots(self.backend)
        # It runs inside whichever command opened the repository (`phx backup`, `phx key rotate`):
        # its errors say "run the command again", never "the upgrade", which no one can run.
        with self.lock(exclusive=True, command="upgrade", ran="command"):
            # Each write confirms the lock first (docs/reliability.md, Locks): a suspend right
            # after taking it, or a lock removed meanwhile, stops the upgrade before it writes.
            self.confirmer.now(COMMITTED)
            self._seal_slots(slots)
            config = self.config.signed(self.secrets)
            self.confirmer.now(MORE_COMMITTED)
            self.backend.write("config", config.to_bytes())
            self.config = config
        self.notice(f"upgraded the repository at {self.backend.location} to format {BASE_FORMAT_VERSION}")
        return True

    def _seal_slots(self, slots: list[keyslots.KeySlot]) -> None:
        """Format 1 to 2 (`upgrade`): seal each format 1 slot's metadata, before the config."""
        for slot in slots:
            if slot.version < 2:
                self.confirmer.step(MORE_COMMITTED)
                self.backend.write(f"keys/{slot.id}", slot.upgraded(self.secrets).to_json())

    def authenticates(self, config: RepoConfig) -> bool:
        """Whether `config` (another target's, or this one's read again) is authenticated by this
        repository's key: by the write key when it is write-only, else by the master secrets."""
        if config.mac is None:
            return False
        if config.write_only is not None:
            return same_bytes(config.mac, config._mac(self.write_key))
        return self._secrets is not None and same_bytes(config.mac, config._mac(self._secrets))

    def marked(self, config: RepoConfig) -> bool:
        """Whether `config` is this repository's config made format 5 (`mark_captures`) and
        nothing else: the same fields, the same key."""
        return (
            config.captures
            and not self.config.captures
            and config.same_but_captures(self.config)
            and self.authenticates(config)
        )

    def mark_captures(self) -> bool:
        """Make the config format 5, "this repository may hold capture segments", before `phx watch`
        writes one (docs/repository-format.md §2): a Phoenix that would rotate the key without
        re-sealing them refuses the repository as newer. True when it was written.

        Under the lock the caller holds, confirmed first: the watch's shared lease. Every other
        command that replaces the config (a rotation, a format 1 upgrade, a write-only conversion)
        holds an exclusive lock, so none runs meanwhile; a second watch writes the same bytes (the
        MAC and the JSON are deterministic), and each object is replaced atomically."""
        if self.config.captures:
            return False
        before = self.config
        key: keyslots.MasterSecrets | WriteKey = self.write_key if self.config.write_only is not None else self.secrets
        config = replace(self.config, captures=True).signed(key)
        self.locks.confirm_held("no capture segment was written")
        if self.config.version < BASE_FORMAT_VERSION:
            # A format 1 repository whose upgrade waited (another command held it at the open):
            # its slots are sealed first, as the upgrade does; left format 1 beside a format 5
            # config they would stay unsealed for good, looking planted (`upgrade`).
            self._seal_slots(self.read_key_slots(self.backend))
        self.backend.write("config", config.to_bytes())
        self.config = config
        if self.pins is not None and self._secrets is not None:
            # From now on this machine refuses a config of a lower format put back (a downgrade),
            # but the one just marked (`before`): a replica the watch never reached.
            self.pins.record(
                config.id,
                self.backend.location,
                self._secrets.fingerprint,
                format=config.version,
                before=(before.version, before.fields_digest()),
                write_only=config.write_only is not None,
                keep_next=True,
            )
        self.notice(
            f"the repository at {self.backend.location} is now format {CAPTURES_FORMAT_VERSION} (it may hold capture "
            "segments of `phx watch`): Phoenix versions that would lose them in a key rotation refuse it"
        )
        return True

    # -- index -------------------------------------------------------------------------

    def load_index(self) -> None:
        if self._index_loaded:
            return
        # One index object at a time, its entry records straight into the index: what it costs
        # is the index's own size, not that plus every object's entries decoded at once.
        skip: set[str] = set()
        while True:
            names, superseded, retired = self._add_index_objects(skip)
            # An index that a prune superseded may survive a crash between writing its replacement
            # and deleting it; it may name packs that are already gone, so only the live ones count.
            # Rare (a prune stopped midway): found after it was added, the index is read again.
            if superseded & set(names) <= skip:
                break
            skip = superseded
            self.index = Index()
            self.relied_on -= set(names)
            self.problems.index.clear()
        self.index_objects = sorted(names) + sorted(self.problems.index)
        self.retired_packs = retired - set(self.index.pack_ids())
        self._index_loaded = True
        if self.problems.index:
            # A damaged index object must not make intact packs unreachable: their own headers
            # say what they hold, so restores keep working. `verify` still reports the damage.
            self.add_unindexed_packs()
            self.notice(
                f"{len(self.problems.index)} index object(s) are damaged; read the headers of "
                f"{len(self.unindexed_packs)} pack(s) instead (run `phx verify --read-data` to see what is affected)"
            )

    def _add_index_objects(self, skip: set[str]) -> tuple[list[str], set[str], set[str]]:
        """Add every readable index object but those in `skip` to the index, in name order (which
        location of a blob held twice is tried first does not depend on the backend); returns
        the names read, the names they supersede and the packs of those skipped."""
        names: list[str] = []
        superseded: set[str] = set()
        retired: set[str] = set()
        for name in sorted(info.name for info in self.backend.list("index/")):
            try:
                packs, sup = self.read_index_records(name)
            except (CorruptObject, ObjectNotFound) as exc:
                self._unreadable(name, str(exc), self.problems.index)
                continue
            names.append(name)
            superseded.update(f"index/{s}" for s in sup)
            if name in skip:
                retired.update(packs)
                continue
            self.relied_on.add(name)
            for pack_id, records in packs.items():
                self.index.add_records(pack_id, records)
        return names, superseded, retired

    def reload_index(self) -> None:
        """Load the index again from the store (after it was rebuilt or objects were copied back)."""
        self.index = Index()
        self._index_loaded = False
        self.problems.index.clear()
        self.problems.claims.clear()
        self.unindexed_packs.clear()
        self.retired_packs = set()
        self.relied_on = set()
        self.load_index()

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

    def write_packs_as(self, origin: PackOrigin) -> None:
        """Record `origin` in the packs written from now on (before any blob is saved)."""
        with self._lock:
            self.pack_origin = origin
            for kind, packer in self._packers.items():
                if not packer.entries:
                    self._packers[kind] = PackBuilder(kind, origin, self.sealer)

    def drop_missing_packs(self) -> list[str]:
        """Forget the blobs of indexed packs the store no longer holds (or holds shorter than the
        index says), so that a backup stores them again instead of referring to lost data. One
        listing of `data/`; returns the names of the missing packs.

        When some are missing, an index without them is written (in parts, `write_index_parts`),
        superseding every index object loaded: a blob stored again then has one location, not a
        lost one that readers might find first. Index objects written meanwhile by other backups
        are not superseded."""
        listing = {info.name: info.size for info in self.backend.list("data/")}
        missing = self.lost_packs(listing)
        if missing:
            # A pack another backup has just written and indexed must not be taken for lost.
            self._look_up(listing, [pack_name(p) for p in missing])
            missing = self.lost_packs(listing)
        if missing:
            self.index.remove_packs(missing)
            self.write_index_parts(self.index.by_pack(), [name.split("/")[-1] for name in self.index_objects])
        return sorted(pack_name(p) for p in missing)

    def _look_up(self, listing: dict[str, int], names: Iterable[str]) -> None:
        """Ask for each of `names` by name and add those that exist to `listing` (name -> size):
        a listing may lag behind writes (an eventually consistent store)."""
        for name in names:
            info = self.backend.stat(name)
            if info is not None:
                listing[name] = info.size

    def lost_packs(self, sizes: dict[str, int]) -> set[str]:
        """The ids of indexed packs that `sizes` (object name -> size, a listing of `data/`) lacks
        or holds shorter than the index says."""
        lost = set()
        for pack_id, end in self.index.pack_ends().items():
            size = sizes.get(pack_name(pack_id))
            if size is None or end > size:
                lost.add(pack_id)
        return lost

    def confirm_present(self, blob_ids: Iterable[bytes]) -> None:
        """Raise unless every blob of `blob_ids` is indexed in a pack the store holds, long
        enough (one listing of `data/`), and every index object the index in memory comes from
        is still in the store (one listing of `index/`): what a new snapshot refers to must be
        there, and findable. (No command deletes index objects while a shared lock is held.)"""
        listing = {info.name: info.size for info in self.backend.list("data/")}
        indexes = {info.name: info.size for info in self.backend.list("index/")}
        self._look_up(indexes, self.relied_on - indexes.keys())
        vanished = sorted(self.relied_on - indexes.keys())
        where = [self.index.end_in_pack(b) for b in set(blob_ids)]
        unknown = where.count(None)
        ends: dict[str, int] = {}  # pack name -> the furthest end of a blob the snapshot needs there
        for found in where:
            if found is not None:
                name = pack_name(found[0])
                ends[name] = max(ends.get(name, 0), found[1])
        self._look_up(listing, ends.keys() - listing.keys())
        lost = {name for name, end in ends.items() if (size := listing.get(name)) is None or end > size}
        if lost or unknown or vanished:
            parts = [f"{len(lost)} pack(s) it refers to vanished (e.g. {sorted(lost)[0]})"] if lost else []
            parts += [f"{unknown} blob(s) are in no index"] if unknown else []
            if vanished:
                parts.append(f"{len(vanished)} index object(s) listing its data vanished (e.g. {vanished[0]})")
            what = ", and ".join(parts)
            raise RepositoryError(
                f"the snapshot was not written: {what} while this run wrote it, probably removed by a "
                "prune or by hand; the repository is unchanged and the next backup stores the data again"
            )

    def read_pack_origin(self, pack_id: str, entries: list[PackEntry]) -> tuple[PackOrigin, float] | None:
        """What wrote a pack and when, from its origin record; None for a pack without one
        (written by an older Phoenix). Raises CorruptObject for a damaged record."""
        length = origin_length(entries)
        if not length:
            return None
        name = pack_name(pack_id)
        plain = self.sealer.open(self.backend.read_range(name, 0, length), ORIGIN_AAD, f"{name} origin record")
        return decode_origin(plain, name)

    def read_index_objects(self) -> dict[str, tuple[dict[str, list[PackEntry]], list[str]]]:
        """Every readable index object: name -> (packs, superseded index ids); the unreadable ones
        go to `problems.index`."""
        out = {}
        for info in self.backend.list("index/"):
            try:
                out[info.name] = self.read_index_object(info.name)
            except (CorruptObject, ObjectNotFound) as exc:
                self._unreadable(info.name, str(exc), self.problems.index)
        return out

    def left_by_rotation(self, name: str) -> bool:
        """Whether object `name` (a pack, index, snapshot or segment) is sealed with the other key of this
        machine's unfinished `phx key rotate`: its leftover, not damage."""
        return any(sealed_with(self.backend, name, sealer) for sealer in self._rotation_sealers)

    def _unreadable(self, name: str, problem: str, problems: dict[str, str]) -> None:
        (self.problems.rotation if self.left_by_rotation(name) else problems)[name] = problem

    # -- prune: the only code that deletes packs, index objects and snapshots ---------------

    def delete_snapshot(self, sid: str) -> None:
        """Forget one snapshot: its data stays until prune finds it unreferenced."""
        if self.pins is not None:  # before: its absence is then never taken for a loss
            self.pins.forgetting(self.config.id, [sid])
        self.confirmer.step(DELETED)
        self.backend.delete(f"snapshots/{sid}")

    def repack(
        self, blobs: Iterable[tuple[PackEntry, bytes]], origin: PackOrigin = PackOrigin.PRUNE
    ) -> dict[str, list[PackEntry]]:
        """Write sealed blobs, copied as they are, into new packs (written by `origin`); return the
        new packs' entries.

        A seal binds a blob to its type and id, not to its pack, so copying needs no decryption.
        The packs are durable when this returns but listed in no index until `write_index`:
        a crash before that leaves unreferenced leftovers, never a dangling reference. They are
        this run's packs until then: a failure inside `removing_unindexed` removes them, as it
        removes a backup's."""
        packers = {t: PackBuilder(t, origin, self.sealer) for t in BlobType}
        written: dict[str, list[PackEntry]] = {}

        def put(kind: BlobType) -> None:
            pack_id, data, entries = packers[kind].finish(self.sealer, self.config.pack_ids)
            self.backend.write(pack_name(pack_id), data, cold=kind == BlobType.DATA)
            written[pack_id] = entries
            with self._lock:  # this run's pack, no index names it yet (`remove_unindexed`)
                self._new_packs[pack_id] = entries
            packers[kind] = PackBuilder(kind, origin, self.sealer)

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
        be deleted once this returns. Every writer of the index goes through `write_index_parts`,
        which bounds an object's size; this alone is its primitive."""
        raw = self.seal_index(packs, superseded)
        name = f"index/{sha256_hex(raw)}"
        if not self.config.encrypted and self.backend.stat(name) is not None:
            # Unsealed, the name follows from what it lists: an object of this name may be one a
            # prune stopped before deleting, superseded with what it listed then (a backup storing
            # a forgotten snapshot's packs again), which would hide this one too. Another name:
            # the same list, superseding also an id no object has.
            raw = self.seal_index(packs, [*superseded, os.urandom(32).hex()])
            name = f"index/{sha256_hex(raw)}"
        # A commit point: the index makes packs live (a backup's flush, a merge, `repair index`),
        # and a prune that ran while the lock was lost may have deleted them as leftovers.
        self.locks.confirm_held(MORE_COMMITTED)
        self.backend.write(name, raw)
        self.relied_on.add(name)
        self.stats.bytes_added += len(raw)
        return name

    def write_index_parts(self, packs: dict[str, list[PackEntry]], superseded: list[str]) -> list[str]:
        """Like `write_index`, in objects of at most INDEX_PART_BLOBS blobs (a pack's entries are
        never split), so that loading one costs a bounded buffer: only the last supersedes the
        old objects. A crash before it leaves those live and complete, and the parts written so
        far list the same entries again (a location held twice counts once; the next prune merges
        them); after it, the parts list everything."""
        with self._lock:  # their index write is attempted: `remove_unindexed` never deletes them
            for pack_id in packs:
                self._new_packs.pop(pack_id, None)
        parts = index_parts(packs)
        names = [self.write_index(part, []) for part in parts[:-1]]
        # Unencrypted, a part has the very bytes, so the name, of one an interrupted merge wrote:
        # the last part must not supersede it (the caller must not delete it either).
        written = {name.split("/")[-1] for name in names}
        return [*names, self.write_index(parts[-1], [s for s in superseded if s not in written])]

    def read_index_object(self, name: str) -> tuple[dict[str, list[PackEntry]], list[str]]:
        packs, superseded = self.read_index_records(name)
        return {pack_id: entries_of(records) for pack_id, records in packs.items()}, superseded

    def read_index_records(self, name: str) -> tuple[dict[str, bytes], list[str]]:
        """An index object's packs with their entry records (index.py `decode_index_records`)."""
        raw = self.backend.read(name)
        if sha256_hex(raw) != name.split("/")[-1]:
            raise CorruptObject(f"{name} does not match its name (damaged)")
        return self.open_index(raw, name)

    def seal_index(self, packs: dict[str, list[PackEntry]], superseded: Iterable[str] = ()) -> bytes:
        """An index object's bytes: sealed, and in a write-only repository under its cover (with
        the owner's MAC when it supersedes others and this machine holds the master secrets)."""
        sup = list(superseded)
        sealed = self.sealer.seal(encode_index(packs, sup), INDEX_AAD)
        if self.config.write_only is None:
            return sealed
        owner = self._secrets if sup else None
        return cover_index(sealed, list(packs), sup, self.write_key, owner)

    def open_index(self, raw: bytes, name: str) -> tuple[dict[str, bytes], list[str]]:
        """An index object's packs and the index objects it supersedes. In a write-only repository
        the write key, which the machine that backs up holds, may only add to the index: a claim
        to supersede counts only under the owner's MAC (repo/writeonly.py `cover_index`); any
        other is dropped here and kept in `problems.claims` for `verify`."""
        if self.config.write_only is None:
            return decode_index_records(self.sealer.open(raw, INDEX_AAD, name), name)
        cover = uncover_index(raw, self.write_key, name)
        sealed = raw if cover is None else cover.sealed
        packs, superseded = decode_index_records(self.sealer.open(sealed, INDEX_AAD, name), name)
        if cover is not None and (
            sorted(packs) != sorted(cover.packs) or sorted(superseded) != sorted(cover.superseded)
        ):
            raise CorruptObject(f"{name} lists other packs than its cover says (damaged or tampered)")
        owned = cover is not None and self._secrets is not None and cover.owned_by(self._secrets)
        if superseded and not owned:
            self.problems.claims[name] = superseded
            superseded = []
        return packs, superseded

    # -- blobs -------------------------------------------------------------------------

    def has_blob(self, blob_id: bytes) -> bool:
        return self._indexed(blob_id) or blob_id in self._pending

    def _indexed(self, blob_id: bytes) -> bool:
        """Whether an index object names a pack holding the blob: only such a pack may be deduplicated
        against. A pack known only from its header (`unindexed_packs`, read when an index object is
        damaged) may be a running backup's, which deletes it if it fails (`remove_unindexed`), or
        a leftover that prune deletes: a snapshot referring to it would lose the blob."""
        if not self.unindexed_packs:
            return self.index.has(blob_id)
        return any(loc.pack_id not in self.unindexed_packs for loc in self.index.locations(blob_id))

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
        payload = _owned(data)  # the caller may reuse its buffer
        with self._inflight:
            while self._inflight_bytes > 0 and self._inflight_bytes + len(payload) > MAX_INFLIGHT_BYTES:
                self._inflight.wait()
            self._inflight_bytes += len(payload)
            self._tasks += 1
        if self._workers is None:
            from concurrent.futures import ThreadPoolExecutor

            self._workers = ThreadPoolExecutor(max_workers=max(2, os.cpu_count() or 2), thread_name_prefix="phx-seal")
        try:
            self._workers.submit(self._seal_task, kind, bid, payload)
        except BaseException:
            self._task_done(len(payload))
            raise
        return bid

    def _seal_task(self, kind: BlobType, bid: bytes, payload: bytes) -> None:
        try:
            with self._inflight:  # the disk is behind: wait rather than fill another pack
                while self._packs_writing >= MAX_PACKS_WRITING:
                    self._inflight.wait()
            self._seal_and_pack(kind, bid, payload, hand_over=True)
        except BaseException as exc:
            with self._lock:
                if self._worker_error is None:
                    self._worker_error = exc
        finally:
            self._task_done(len(payload))

    def _task_done(self, size: int) -> None:
        with self._inflight:
            self._inflight_bytes -= size
            self._tasks -= 1
            self._inflight.notify_all()

    def _raise_worker_error(self) -> None:
        if self._worker_error is not None:
            raise self._worker_error

    def _claim(self, bid: bytes) -> bool:
        """True when this caller must store the blob (no one has it or is storing it)."""
        with self._lock:
            if self._indexed(bid) or bid in self._pending:
                return False
            self._pending.add(bid)
            return True

    def _seal_and_pack(self, kind: BlobType, bid: bytes, data: bytes | memoryview, hand_over: bool = False) -> int:
        """Compress, seal and pack one blob; a pack it fills is written here, or with `hand_over`
        (the sealing threads) by the pack writer threads."""
        if kind == BlobType.TREE:
            method, payload = _TREE_COMPRESSOR.compress(data)
        else:
            method, payload = self.compressor.compress(data)
        sealed = self.sealer.seal(payload, blob_aad(kind, bid))
        # The compressed bytes go before the sealed ones are copied into the pack: a blob is then
        # held twice at most (its plaintext and its sealed bytes), not three times.
        del payload
        full: PackBuilder | None = None
        with self._lock:
            packer = self._packers[kind]
            packer.add(bid, method, sealed, len(data))
            self.stats.blobs_added += 1
            self.stats.raw_added += len(data)
            target = DATA_PACK_TARGET if kind == BlobType.DATA else TREE_PACK_TARGET
            if packer.size >= target:
                full = packer
                self._packers[kind] = self._next_packer(kind)
        if full is not None:
            if hand_over:
                self._hand_over(full)
            else:
                self._write_pack(full)
        return len(sealed)

    def _hand_over(self, packer: PackBuilder) -> None:
        """Have a pack writer thread write a full pack: its blobs stay pending (nothing stores
        them twice) until it is written."""
        with self._inflight:
            self._packs_writing += 1
        if self._pack_writer is None:
            with self._lock:
                if self._pack_writer is None:
                    from concurrent.futures import ThreadPoolExecutor

                    self._pack_writer = ThreadPoolExecutor(MAX_PACKS_WRITING, thread_name_prefix="phx-write")
        try:
            self._pack_writer.submit(self._pack_task, packer)
        except BaseException:
            self._pack_written()
            raise

    def _pack_task(self, packer: PackBuilder) -> None:
        try:
            self._write_pack(packer)
        except BaseException as exc:
            with self._lock:
                if self._worker_error is None:
                    self._worker_error = exc
        finally:
            self._pack_written()

    def _pack_written(self) -> None:
        with self._inflight:
            self._packs_writing -= 1
            self._inflight.notify_all()

    def wait(self) -> None:
        """Wait for every blob handed to the worker threads and every full pack to be written;
        raise the first error they met."""
        with self._inflight:
            while self._tasks or self._packs_writing:
                self._inflight.wait()
        self._raise_worker_error()

    def close(self) -> None:
        """Done with this repository object: its threads end, and the pack descriptors its store
        keeps for reads are closed (a long-lived caller, `phx watch` or a program using Phoenix as
        a library, held up to OPEN_PACKS of them: a pack a prune deleted kept its space). The
        backend itself stays open: an S3 client is reused by whoever opened it."""
        if self._workers is not None:
            self._workers.shutdown(wait=True)
            self._workers = None
        if self._pack_writer is not None:
            self._pack_writer.shutdown(wait=True)
            self._pack_writer = None
        self.backend.close_readers()

    def publish_changes(self, message: str) -> None:
        """Record deletions (forget, prune) as one unit and send it on (Git: a commit, then a push
        when autoCommit); stores whose writes are final at once do nothing."""
        if self.backend.checkpoint(message):
            self.backend.publish()

    def _next_packer(self, kind: BlobType) -> PackBuilder:
        """A new pack builder (the caller holds `_lock`): a data pack in the buffer of one written."""
        spare = self._spare_buffers.pop() if kind == BlobType.DATA and self._spare_buffers else None
        return PackBuilder(kind, self.pack_origin, self.sealer, reuse=spare)

    def _write_pack(self, packer: PackBuilder) -> None:
        pack_id, data, entries = packer.finish(self.sealer, self.config.pack_ids)
        try:
            # Only data packs may go to a cold storage class: trees must stay readable for list/ls/verify.
            self.backend.write(pack_name(pack_id), data, cold=packer.kind == BlobType.DATA)
        except BaseException:
            with self._lock:  # not stored: a later save of these blobs must store them
                for e in entries:
                    self._pending.discard(e.id)
            raise
        with self._lock:
            self.index.add_pack(pack_id, entries)
            self._new_packs[pack_id] = entries
            for e in entries:
                self._pending.discard(e.id)
            self.stats.bytes_added += len(data)
            # The buffer is kept to build a later pack in only when nothing else holds it (a store
            # that kept it, or a view of it, would see its bytes change), and only while no more
            # pack buffers are alive than without keeping any: the packs being written (this one
            # among them) and the one filling. "Nothing else" is `data`'s count equal to that of
            # `alone`, which one name of this frame holds, counted the same way: what the count
            # of a name's object is depends on the interpreter (CPython 3.11 to 3.13 count the
            # call's argument too, 2; 3.14 lends it, 1). Without a count, no buffer is kept.
            alone = bytearray()
            count = getattr(sys, "getrefcount", None)
            if (
                packer.kind == BlobType.DATA
                and isinstance(cast(object, data), bytearray)  # what `PackBuilder.finish` hands over
                and count is not None
                and count(data) == count(alone)
                and len(self._spare_buffers) + self._packs_writing <= MAX_PACKS_WRITING
            ):
                self._spare_buffers.append(cast(bytearray, data))

    def flush(self) -> None:
        """Write partial packs, then the index of every pack written since the last flush (in
        parts of at most INDEX_PART_BLOBS blobs, `write_index_parts`)."""
        self.wait()
        for kind in BlobType:
            with self._lock:
                packer = self._packers[kind]
                self._packers[kind] = PackBuilder(kind, self.pack_origin, self.sealer)
            if packer.entries:
                self._write_pack(packer)
        with self._lock:
            new, self._new_packs = self._new_packs, {}
            self._spare_buffers.clear()  # the run's packs are written: their memory goes back
        if new:
            self.write_index_parts(new, [])

    @contextlib.contextmanager
    def removing_unindexed(self) -> Iterator[None]:
        """A run that fails (or is stopped) inside this block removes the packs it wrote that no
        index names (`remove_unindexed`), and its error says how much: otherwise they hold the
        space of a full disk for LEFTOVER_MIN_AGE, as a running backup's might, and the next run
        fails the same way."""
        try:
            yield
        except BaseException as exc:
            said = self.remove_unindexed().sentence()
            if said and isinstance(exc, PhoenixError) and len(exc.args) == 1 and str(exc) == exc.args[0]:
                exc.args = (f"{exc.args[0]} ({said})",)
            elif said:  # a stop, or a bug: said beside its own line
                self.notice(said)
            raise

    def remove_unindexed(self) -> RemovedPacks:
        """After a failure: delete the packs this process wrote that no index object names, and
        forget their blobs.

        The rules (docs/reliability.md, "A failed run's packs"):
        - the run's pack writing and sealing threads are waited for first; a pack that finishes
          later is left as before (a leftover prune removes);
        - only packs whose write returned success, still in `_new_packs` (a backup's, or a
          prune's repacked ones, `repack`): `flush` and `write_index_parts` take them out before
          their index is written, so a pack whose index write was attempted, even one that failed
          (it may have landed on a remote store), is never deleted;
        - not one an index object names that this process did not read or write (another
          process's pack of the very same bytes): the store's index objects are listed and the
          new ones read; when that fails, nothing is deleted;
        - no snapshot refers to them: a run flushes the index before it saves its snapshot, and
          no other process deduplicates against a pack until an index object names it.
        What was being packed and never written is forgotten too, so this repository object
        stores it again if it is used on."""
        with self._inflight:
            while self._tasks or self._packs_writing:
                self._inflight.wait()
        with self._lock:
            for kind in BlobType:
                for e in self._packers[kind].entries:
                    self._pending.discard(e.id)
                self._packers[kind] = PackBuilder(kind, self.pack_origin, self.sealer)
            new, self._new_packs = self._new_packs, {}
            self._spare_buffers.clear()
        out = RemovedPacks()
        if not new:
            return out
        self.index.remove_packs(new)
        if not self.config.encrypted:
            # Unsealed, a pack's bytes (its origin time in seconds included), so its name, follow
            # from what it holds: another run storing the same blobs writes this very object, and
            # its index may name it only after the listing below. Deleting it would lose its blobs.
            out.kept, out.why = len(new), "the repository is unencrypted: another run may have written the same pack"
            return out
        try:
            named = self._packs_named_elsewhere()
        except Exception as exc:  # a store that fails now: keep them all (prune removes them later)
            out.kept, out.why = len(new), f"the index objects could not be read to check them ({exc})"
            return out
        for pack_id in new:
            if pack_id in named:
                out.kept, out.why = out.kept + 1, "an index object of another process names them"
                continue
            try:
                info = self.backend.stat(pack_name(pack_id))
                self.backend.delete(pack_name(pack_id))
            except Exception as exc:
                out.kept, out.why = out.kept + 1, f"deleting one failed ({exc}); `phx prune` removes them later"
                continue
            out.removed += 1
            out.size += info.size if info is not None else 0
        return out

    def _packs_named_elsewhere(self) -> set[str]:
        """The packs that index objects this process neither read nor wrote name."""
        known = set(self.index_objects) | self.relied_on
        named: set[str] = set()
        for info in self.backend.list("index/"):
            if info.name not in known:
                named.update(self.read_index_object(info.name)[0])
        return named

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
        # Of the blob's kind only: a location of another kind listed first (an index object of
        # the machine that backs up) must not hide the genuine one.
        locations = [loc for loc in self.index.locations(blob_id) if loc.type == kind]
        if not locations:
            raise CorruptObject(f"{kind.name.lower()} blob {blob_id.hex()[:16]} is not in the index (missing data)")
        return self._load_from(kind, blob_id, locations, None)

    def load_blob_elsewhere(
        self, kind: BlobType, blob_id: bytes, failed: BlobLocation, error: CorruptObject | ObjectNotFound
    ) -> bytes:
        """A blob whose read at `failed` raised `error`, from another location listed for it (in
        another pack, or elsewhere in the same one); `error` again when none holds it. A pack
        listed first with other bytes sealed under a blob's id, or a wrong entry for it in the
        genuine pack (a compromised machine that backs up holds the write key and may add index
        objects), then blocks no restore."""
        others = [loc for loc in self.index.locations(blob_id) if loc != failed and loc.type == kind]
        if not others:
            raise error
        self._bad_location(failed, blob_id, error)
        return self._load_from(kind, blob_id, others, error)

    def prove_blob(self, kind: BlobType, blob_id: bytes) -> BlobLocation | None:
        """For a reader whose bytes failed their SHA-256 (`read_blobs` opens blobs without the id
        check, for speed): the first location listed for the blob that opens and whose plaintext
        hashes to its id (read again on its turn, `load_proven`: a file of a thousand such blobs
        never holds them all at once); None when that is the first one listed (the copy a reader
        takes first proves). The locations before it (a copy whose tag is valid but whose plaintext
        is not the blob, sealed by a key holder or a bug) are noted and said (`_bad_location`).
        CorruptObject naming the blob and every pack tried when no copy proves."""
        loc, first, _data = self.load_proving(kind, blob_id)
        return None if first else loc

    def load_proving(
        self, kind: BlobType, blob_id: bytes, failed: tuple[BlobLocation, CorruptObject | ObjectNotFound] | None = None
    ) -> tuple[BlobLocation, bool, bytes]:
        """The blob from the first location listed for it that opens and whose plaintext hashes to
        its id: (that location, whether it is the first listed, the plaintext). The one fallback of
        every reader that proves blobs by their ids (`prove_blob`; a streaming `NodeReader`, which
        emits no byte it has not proven). `failed`: a location already read that did not prove, and
        why (not read again). The locations that fail before one proves are noted and said
        (`_bad_location`). CorruptObject naming the blob and every pack tried when none proves."""
        tried: list[tuple[BlobLocation, CorruptObject | ObjectNotFound]] = [failed] if failed is not None else []
        for loc in self.index.locations(blob_id):
            if loc.type != kind or (failed is not None and loc == failed[0]):
                continue
            try:
                data = self.load_proven(kind, blob_id, loc)
            except (CorruptObject, ObjectNotFound) as exc:
                # Without its traceback: its frames hold the copy's bytes, sealed and opened, and
                # `tried` the error (a cycle): a file of a thousand wrong blobs held them all.
                tried.append((loc, exc.with_traceback(None)))
                continue
            for bad, why in tried:
                self._bad_location(bad, blob_id, why)
            return loc, not tried, data
        # Each pack with why its copy failed (missing, cut short, failing authentication, other
        # bytes): a pack that is gone is not said to hold a wrong copy.
        reasons: dict[str, str] = {}  # the first failure of each pack, in the order tried
        for bad, why in tried:
            reasons.setdefault(pack_name(bad.pack_id), str(why))
        packs = "; ".join(f"{name}: {text}" for name, text in reasons.items()) or "none: it is not in the index"
        raise CorruptObject(
            f"{kind.name.lower()} blob {blob_id.hex()[:16]} has no copy that can be read and matches its id "
            f"(packs tried: {packs})"
        )

    def load_proven(self, kind: BlobType, blob_id: bytes, loc: BlobLocation) -> bytes:
        """The blob at `loc`, its plaintext hashed against its id (`prove_blob`)."""
        sealed = self.backend.read_range(pack_name(loc.pack_id), loc.offset, loc.stored)
        what = f"blob {blob_id.hex()[:16]} in pack {loc.pack_id[:16]}"
        return self.open_blob(kind, blob_id, loc.compression, sealed, loc.raw, what, check_id=True)

    def _load_from(
        self,
        kind: BlobType,
        blob_id: bytes,
        locations: list[BlobLocation],
        error: CorruptObject | ObjectNotFound | None,
    ) -> bytes:
        """The blob from the first of `locations` that opens and matches its id."""
        for loc in locations:
            if loc.type != kind:
                continue
            what = f"blob {blob_id.hex()[:16]} in pack {loc.pack_id[:16]}"
            try:
                sealed = self.backend.read_range(pack_name(loc.pack_id), loc.offset, loc.stored)
                return self.open_blob(kind, blob_id, loc.compression, sealed, loc.raw, what, check_id=False)
            except (CorruptObject, ObjectNotFound) as exc:
                if len(locations) == 1 and error is None:
                    raise  # the blob's only copy
                self._bad_location(loc, blob_id, exc)
                error = error or exc
        assert error is not None
        raise error

    def _bad_location(self, loc: BlobLocation, blob_id: bytes, error: PhoenixError) -> None:
        """Remember (for `verify`) and say once that a pack failed a blob another pack may hold."""
        name = pack_name(loc.pack_id)
        with self._lock:
            known = name in self.problems.blobs
            self.problems.blobs.setdefault(name, f"blob {blob_id.hex()[:16]}: {error}")
        if not known:
            self.notice(f"{name} fails blob {blob_id.hex()[:16]} ({error}); reading it from another pack that holds it")

    def open_blob(
        self,
        kind: BlobType,
        blob_id: bytes,
        method: Compression,
        sealed: bytes | memoryview,
        raw: int,
        what: str,
        *,
        check_id: bool = True,
    ) -> bytes:
        """Open a sealed blob. The AEAD tag (or checksum) binds the stored bytes to the blob's type
        and id, so ordinary reads skip re-hashing the plaintext; `verify --read-data` does it. In a
        write-only repository every read does: the machine that backs up seals under its own run
        key and names blobs with its write key, so a tag proves nothing against it, and a
        compromised one could otherwise seal other bytes under the id of a tree or chunk that
        older snapshots hold (docs/write-only.md)."""
        payload = self.sealer.open(sealed, blob_aad(kind, blob_id), what)
        data = decompress(method, payload, raw, what)
        check_id = check_id or self.config.write_only is not None
        if len(data) != raw or (check_id and self.ids.blob_id(kind, data) != blob_id):
            raise CorruptObject(f"{what} does not match its id (damaged)")
        return data

    # -- trees -------------------------------------------------------------------------

    def save_tree(self, nodes: list[Node]) -> tuple[bytes, int]:
        return self.save_blob(BlobType.TREE, encode_tree(self.listed(nodes)))

    def load_tree(self, tree_id: bytes) -> list[Node]:
        return decode_tree(self.load_blob(BlobType.TREE, tree_id), f"tree {tree_id.hex()[:16]}", self.load_list)

    def load_list(self, list_id: bytes) -> bytes:
        """An extent-list blob (format 6): stored as a tree blob, so sealed, packed and named as
        trees are; `ListedExtents` checks what it holds against its node."""
        return self.load_blob(BlobType.TREE, list_id)

    def save_list(self, data: bytes) -> bytes:
        return self.save_blob(BlobType.TREE, data)[0]

    def listed(self, nodes: list[Node]) -> list[Node]:
        """The nodes as this repository stores them: in format 6 a database node of more than
        INLINE_EXTENTS extents keeps them in list blobs, written here one at a time (`cut_lists`);
        a node already listed keeps its lists. Below format 6 every node is inline (a listed one,
        which only a format 6 repository gives, is read whole), so an older Phoenix reads it."""
        out = []
        for node in nodes:
            content = node.content
            if node.type in ("file", "sqlite") and isinstance(content, ListedExtents) and not self.config.extent_lists:
                node = replace(node, content=content.whole())
            elif (
                node.type == "sqlite"
                and self.config.extent_lists
                and not isinstance(content, ListedExtents)
                and len(content) > tree_module.INLINE_EXTENTS
            ):
                refs = tuple(
                    ListRef(self.save_list(data), size, count)
                    for data, size, count in cut_lists(Extents.of(content).records())
                )
                node = replace(node, content=ListedExtents(refs, self.load_list, node.name))
            out.append(node)
        return out

    # -- snapshots ---------------------------------------------------------------------

    def save_snapshot(self, snap: Snapshot) -> str:
        raw = self.sealer.seal(snap.to_json_bytes(), SNAPSHOT_AAD)
        limit = max_object_size("snapshots/")
        failed = snap.incomplete
        while len(raw) > limit and len(snap.incomplete) > 1:
            # Millions of paths that failed: list what fits and count the rest, rather than lose
            # the backup of every file that was read (readers refuse a larger record).
            keep = min(len(snap.incomplete) - 2, int(len(snap.incomplete) * limit / len(raw) * 0.9))
            more = {
                "path": failed[keep]["path"],
                "error": f"this and {len(failed) - keep - 1:,} more paths could not be saved; "
                "they are not listed (a snapshot's record has a size limit)",
            }
            snap = replace(snap, incomplete=(*failed[:keep], more))
            raw = self.sealer.seal(snap.to_json_bytes(), SNAPSHOT_AAD)
        sid = sha256_hex(raw)
        if len(raw) > limit:
            # Readers refuse a snapshot object this large unread (storage/base.py MAX_OBJECT_SIZE).
            raise RepositoryError(
                f"the snapshot's record would be {len(raw):,} bytes, more than a snapshot may hold "
                f"({max_object_size('snapshots/'):,} bytes; it lists too many paths that failed or are new); "
                "nothing was committed; back up or restore fewer paths at once"
            )
        # The commit point of every command that writes a snapshot (backup, repair snapshots, key
        # rotate): each lock held here is still in the store, ours, and was refreshed within
        # LOST_AFTER_SECONDS (`HeldLock.confirm`): had another process removed it or judged it
        # stale, a prune may have deleted what the snapshot refers to.
        self.locks.confirm_held()
        self.backend.write(f"snapshots/{sid}", raw)
        self.stats.bytes_added += len(raw)
        if self.pins is not None:
            self.pins.remember(self.config.id, self.backend.location, sid, snap.time)
            self._unrecorded_notice()
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
            except (CorruptObject, ObjectNotFound, IdentityRequired) as exc:
                # IdentityRequired: a write-only repository's snapshot sealed for recipients whose
                # identity this machine does not have (one added later reads from then on).
                self._unreadable(info.name, str(exc), self.problems.snapshots)
                # ObjectNotFound: deleted since it was listed (another machine's `phx forget`, or a
                # listing of an eventually consistent store that still names it): forgotten, not
                # damaged. It stays a problem: prune and key rotate still refuse to go on without it.
                if isinstance(exc, ObjectNotFound):
                    self.problems.gone_snapshots.add(info.name)
                elif not isinstance(exc, IdentityRequired) and info.name in self.problems.snapshots:
                    self.problems.damaged_snapshots.add(info.name)
        self._confirm_gone()
        # Equal recorded times (whole seconds, or the same --time) keep the order they were
        # taken in: `started` has microseconds.
        out.sort(key=snapshot_order)
        present: dict[str, str | None] = {s.id: s.time for s in out}
        # There, though unreadable (not those gone since the listing: the next listing lacks them too).
        present |= {
            name.split("/")[-1]: None for name in self.problems.snapshots if name not in self.problems.gone_snapshots
        }
        self.check_rollback(present)
        return out

    def _confirm_gone(self) -> None:
        """A snapshot read as "not found" is gone (forgotten elsewhere) only if a second listing
        lacks it too: storage that lists an object but answers "not found" to its read (a lagging or
        hostile store, a proxy) withholds a backup, which is damage, not a forget."""
        if not self.problems.gone_snapshots:
            return
        listed = {info.name for info in self.backend.list("snapshots/")}
        for name in sorted(self.problems.gone_snapshots & listed):
            self.problems.gone_snapshots.discard(name)
            if name in self.problems.snapshots:
                self.problems.snapshots[name] = (
                    f"{name} is listed, but its storage answers that it does not exist when it is read "
                    "(damaged or withheld storage)"
                )
                self.problems.damaged_snapshots.add(name)

    def check_rollback(self, present: Mapping[str, str | None]) -> None:
        """Compare a listing of this repository's snapshots (id: time) with the newest this
        machine saw here (repo/pins.py): snapshots gone without a forget of this machine, while
        the newest left is older than them, are said once, and `refuse_if_rolled_back` refuses."""
        if self.pins is None:
            return
        self.lost_snapshots = self.pins.observe(
            self.config.id, self.backend.location, present, still_there(self.backend)
        )
        self._unrecorded_notice()
        if self.lost_snapshots and not self._rollback_said:
            self._rollback_said = True
            self.notice(f"warning: {rollback_warning(self.backend.location, self.lost_snapshots, self.fingerprint)}")

    def check_rollback_listed(self) -> None:
        """`check_rollback` at the cost of one listing (`phx sync`, which reads only the snapshots
        a replica lacks): the snapshots are read (`list_snapshots`) only when one this machine saw
        here is not listed, or one was found lost here before."""
        pin = self.pins.get(self.config.id) if self.pins is not None else None
        if pin is None:
            return
        where = self.backend.location
        listed = {info.name.rsplit("/", 1)[-1] for info in self.backend.list("snapshots/")}
        gone = [sid for sid, _t in pin.seen.get(where, []) if sid not in listed and sid not in pin.forgot]
        if gone or pin.lost.get(where):
            self.list_snapshots()

    def _unrecorded_notice(self) -> None:
        """Said once: the pin file could not be written, so what this machine sees is not recorded
        (the command goes on: a listing or a restore needs no record)."""
        if self.pins is not None and self.pins.unwritable is not None and not self._unrecorded_said:
            self._unrecorded_said = True
            self.notice(f"warning: {self.pins.unwritable} (until then a rolled-back repository may go unnoticed)")

    def refuse_if_rolled_back(self, command: str, harm: str = "could delete data that snapshot needs") -> None:
        """`phx forget` and `phx prune` on a repository that lost snapshots it should hold: the
        data only they use looks unused, and deleting it loses them for good once the newest copy
        of the storage is put back. (`phx sync`: the replicas' newer key slots would go.)"""
        if self.lost_snapshots:
            newest = self.lost_snapshots[0]
            raise RepositoryError(
                f"{command} refused: the repository at {self.backend.location} no longer holds snapshot "
                f"{newest[0][:8]} ({newest[1]}) this machine saw there, so it may be an older copy put back, and "
                f"{command} {harm}; put the newest copy of the storage back, or, if "
                f"another machine forgot it, accept the repository as it is with `phx key trust {self.fingerprint}`"
            )

    def damaged_snapshots_notice(self, latest: Snapshot | None = None) -> None:
        """Say that snapshot objects cannot be read: their times cannot either, so the newest
        backup may be among them, and a listing or `latest` would pass over it in silence."""
        damaged = sorted(self.problems.damaged_snapshots)
        if not damaged:
            return
        count = f"{len(damaged)} snapshot{'s' if len(damaged) > 1 else ''} cannot"
        first = f"{damaged[0]}: {self.problems.snapshots[damaged[0]]}"
        which = "" if latest is None else f"; `latest` is {latest.id[:8]} ({latest.name}), the newest readable one"
        self.notice(
            f"{count} be read ({first}){which}; a damaged or planted snapshot may be newer than every readable one: "
            "run `phx verify`, and copy a good copy back with `phx repair objects --from TARGET`"
        )

    def find_snapshot(
        self, ref: str, snapshots: list[Snapshot] | None = None, latest: Latest | None = None
    ) -> Snapshot:
        """A snapshot by id, unique id prefix (4+ characters) or timestamp name; `latest` is the
        newest snapshot `latest` selects (by default: complete, full scope, this host)."""
        snaps = snapshots if snapshots is not None else self.list_snapshots()
        if not snaps:
            if self.problems.damaged_snapshots:
                # Backups were made: none can be read. "No snapshots yet" would say they never were.
                self.damaged_snapshots_notice()
                raise CorruptObject(
                    "no snapshot of the repository can be read; run `phx verify`, and copy a good copy "
                    "back with `phx repair objects --from TARGET`"
                )
            raise SnapshotNotFound("the repository holds no snapshots yet; run `phx backup` first")
        if ref == "latest":
            found = self._latest(snaps, latest or Latest())
            self.damaged_snapshots_notice(found)
            return found
        by_name = [s for s in snaps if s.name == ref]
        if len(by_name) > 1:
            ids = ", ".join(s.id[:12] for s in by_name)
            raise SnapshotNotFound(
                f"the name {ref!r} is ambiguous: it names {len(by_name)} snapshots ({ids}); give the id"
            )
        if by_name:
            return by_name[0]
        if len(ref) < 4:
            raise SnapshotNotFound(
                f"no snapshot named {ref!r}, and an id prefix needs at least 4 characters; "
                "give 4 or more characters of the id (see `phx list`)"
            )
        matches = [s for s in snaps if s.id.startswith(ref.lower())]
        if len(matches) == 1:
            return matches[0]
        if len(matches) > 1:
            raise SnapshotNotFound(f"snapshot prefix {ref!r} is ambiguous; give more characters of the id")
        raise SnapshotNotFound(f"no snapshot named {ref!r}; see `phx list` for ids and names")

    def _latest(self, snaps: list[Snapshot], rule: Latest) -> Snapshot:
        this_host = socket.gethostname()
        now = datetime.now().astimezone()
        found, host = choose_latest(snaps, rule, this_host, now)
        if found is None:
            newest = snaps[-1]
            what = "partial " if newest.incomplete else ""
            # A new machine reading a repository several hosts back up to: which names --host takes.
            hosts = sorted({s.host for s in snaps if s.host != host and rule.matches(s, s.host)})
            others = f"; hosts that have one: {', '.join(hosts[:10])} (--host NAME)" if hosts else ""
            raise SnapshotNotFound(
                f"no {rule.describe(host)} for `latest` (the newest snapshot, {newest.name} {newest.id[:8]}, "
                f"is a {what}{newest.scope} snapshot of host {newest.host}{others}); name one with --backup ID, "
                "or select with --scope, --tag or --host"
            )
        if host != this_host and rule.host is None:
            self.notice(f"this host ({this_host}) has no snapshot of its own here; `latest` is host {host}'s")
        for ahead in (s for s in snaps if rule.matches(s, host) and s.datetime > found.datetime and is_future(s, now)):
            self.notice(
                f"snapshot {ahead.name} ({ahead.id[:8]}) is dated {ahead.time}, ahead of this clock; `latest` is "
                f"{found.name} ({found.id[:8]}), the newest of the present; name the other with its id, or remove "
                f"it with `phx forget {ahead.id[:8]}` if its date is wrong"
            )
        return found


def still_there(backend: Backend) -> Callable[[str], bool]:
    """Whether snapshot `sid` is in `backend` after all (a look that fails counts as yes: no alarm
    on a doubt)."""

    def look(sid: str) -> bool:
        try:
            return backend.stat(f"snapshots/{sid}") is not None
        except PhoenixError:
            return True

    return look


def rollback_warning(location: str, lost: list[tuple[str, str]], fingerprint: str, target: str | None = None) -> str:
    """The warning about snapshots gone from `location` (newest first)."""
    shown = ", ".join(f"{sid[:8]} ({when})" for sid, when in lost[:3]) + (
        f" and {len(lost) - 3} more" if len(lost) > 3 else ""
    )
    where = f"target {target} ({location})" if target else f"the repository at {location}"
    return (
        f"{where} no longer holds snapshot{'s' if len(lost) > 1 else ''} {shown} that this machine saw there, and "
        "what it holds now is older: an older copy of its storage was put back (rolled back), or another machine "
        "ran `phx forget`; run `phx verify`, put the newest copy of the storage back (a replica gets them again "
        f"from the first target with `phx sync`); `phx forget` and `phx prune` refuse until then, or until you "
        f"accept the repository as it is with `phx key trust {fingerprint}`"
    )


def _owned(data: bytes | memoryview) -> bytes:
    """`data` as bytes nobody can change: itself, or the bytes object a view spans whole (a
    database region, 256 KiB each: copying them all cost a pass over every byte); else a copy."""
    if isinstance(data, bytes):
        return data
    obj = data.obj
    if type(obj) is bytes and data.c_contiguous and data.nbytes == len(obj):
        return obj
    return bytes(data)


def snapshot_order(snap: Snapshot) -> tuple[float, float, str, str]:
    """The key snapshots are listed oldest first by: equal recorded times (whole seconds, or the
    same --time) keep the order they were taken in (`started` has microseconds)."""
    return (snap.datetime.timestamp(), _started(snap), snap.name, snap.id)


def _started(snap: Snapshot) -> float:
    try:
        return datetime.fromisoformat(snap.started).timestamp()
    except (ValueError, OverflowError):
        return 0.0


# A capture segment's seal (repo/captures.py); here so that `sealed_with` can tell a rotation's.
CAPTURE_AAD = b"phoenix v1 capture segment"
# The seal of a key rotation's record of the objects it retired (repo/retired.py).
RETIRED_AAD = b"phoenix v1 retired objects"
# Where a watch's capture segments (repo/captures.py), the check records (repo/checks.py) and a
# rotation's records of retired objects (repo/retired.py) are stored; here so that `phx status`
# sums a target's size without importing those modules.
CAPTURES_PREFIX = "captures/"
CHECKS_PREFIX = "checks/"
RETIRED_PREFIX = "retired/"


def sealed_with(backend: Backend, name: str, sealer: Sealer) -> bool:
    """Whether object `name` (a pack, index, snapshot, capture segment or rotation record) authenticates under
    `sealer`: how a key rotation tells the objects of one key from those of another. An index,
    snapshot or segment object must also be whole under its name: a copy under another name,
    which anyone who can write the storage can make, is damage, never the rotation's leftover."""
    try:
        if name.startswith("data/"):
            info = backend.stat(name)
            if info is None or info.size < 4:
                return False
            (hlen,) = struct.unpack("<I", backend.read_range(name, info.size - 4, 4))
            if hlen > min(MAX_HEADER, info.size - 4):
                return False
            sealer.open(backend.read_range(name, info.size - 4 - hlen, hlen), HEADER_AAD, name)
        elif name.startswith(("index/", "snapshots/", "captures/", "retired/")):
            raw = backend.read(name)
            if sha256_hex(raw) != name.split("/")[-1]:
                return False
            aad = {"index": INDEX_AAD, "snapshots": SNAPSHOT_AAD, "captures": CAPTURE_AAD, "retired": RETIRED_AAD}[
                name.split("/")[0]
            ]
            sealer.open(raw, aad, name)
        else:
            return False
    except (CorruptObject, ObjectNotFound):
        return False
    return True


# -- which secrets are the repository's ----------------------------------------------------


def _choose_secrets(
    location: str,
    config: RepoConfig,
    slots: list[keyslots.KeySlot],
    creds: keyslots.Credentials,
    pins: Pins | None,
    notice: Callable[[str], None],
    expect: str | None = None,
) -> tuple[keyslots.KeySlot, keyslots.MasterSecrets, list[keyslots.MasterSecrets]]:
    """The slot and secrets that open the repository, and the other secrets of an unfinished
    rotation (for its leftover locks).

    A slot that opens proves little by itself: anyone who can write the storage can add a `none`
    slot, or an age or GPG slot encrypted to the owner's public key. So the secrets must also
    authenticate the config (format 2), and have the fingerprint this user pinned. Without a pin
    (first use on this machine) every slot that opens is looked at: two different keys are
    refused rather than guessed between."""
    pin = pins.get(config.id) if pins is not None else None
    if expect is not None:
        # `phx key trust` replaces the fingerprint, never the format this machine saw: a config
        # downgraded to format 1 (no MAC) stays refused.
        seen = pin.format if pin is not None else config.version
        write_only = pin.write_only if pin is not None else config.write_only is not None
        before = pin.before if pin is not None else None
        pin, pins = Pin(config.id, expect, format=seen, before=before, write_only=write_only), None
    if pins is not None:
        # A location holds one repository: another one there (new, or one this machine knows from
        # elsewhere, such as a copy of the owner's other repository) is refused alike.
        other = pins.id_at(location)
        if other is not None and other != config.id:
            raise KeyChanged(
                f"the repository at {location} is not the one this machine used before (its id was "
                f"{other[:8]}, now {config.id[:8]}): someone who can write the storage may have replaced it; "
                "use it only if you re-created it yourself, after checking its key fingerprint (`phx key "
                "trust FINGERPRINT`, with the fingerprint `phx key list` shows on a machine you trust)"
            )
    # A config from before is authenticated too (the same key signed it), so only the pin tells it:
    # format 1 has no MAC, format 2 is a write-only (format 3) repository from before its conversion,
    # and a format 4 one without `writeOnly` the same when it was format 4 already.
    if pin is not None and config.version < pin.format and config.version < BASE_FORMAT_VERSION:
        raise ConfigNotAuthenticated(
            f"the repository config at {location} is format {config.version} without authentication, but "
            f"this machine saw it authenticated (format {pin.format}): someone may have downgraded it to "
            "change how data is written; restore the config object from another target or a copy"
        )
    # Format 5 says only "may hold capture segments" (`mark_captures`): the config it was made from,
    # signed by this key, is a replica no watch or sync has reached since (the first target may be
    # lost), or one put back. This Phoenix reads and writes it as it is (its rotation re-seals
    # segments, its watch marks it again), saying so below; the pin keeps 5, so an older Phoenix
    # here still refuses it. Which config that is, the pin says when this machine's watch marked it
    # (`before`: its format, 2, 3 or 4, and a digest of its fields); a pin from before that says
    # nothing and takes format 4 alone, which only `phx init` writes (a 5 made from a 2 says
    # "sha256"). Any other lower format stays refused: a format 2 or 3 config may be a format 1 one
    # planted without the key (other chunker sizes, say) that another machine's upgrade signed, and
    # its fields then differ from those pinned. Format 1 never (refused above: no MAC).
    unmarked = (
        pin is not None
        and pin.format == CAPTURES_FORMAT_VERSION
        and (
            config.version == PACK_IDS_FORMAT_VERSION
            if pin.before is None
            else config.version == pin.before[0] and config.fields_digest() == pin.before[1]
        )
    )
    lowered = pin is not None and config.version < pin.format and not unmarked
    if pin is not None and (lowered or (pin.write_only and config.write_only is None)):
        was = "write-only" if pin.write_only and config.write_only is None else f"format {pin.format}"
        raise ConfigNotAuthenticated(
            f"the repository config at {location} is format {config.version}"
            f"{'' if config.write_only is not None else ' and not write-only'}, but this machine saw it {was}: "
            "someone who can write the storage may have downgraded it to a config from before, so nothing was "
            "read or written; restore the config object from another target or a copy"
        )
    unauthenticated: list[tuple[keyslots.KeySlot, str]] = []
    mismatched: list[keyslots.MasterSecrets] = []
    found: list[tuple[keyslots.KeySlot, keyslots.MasterSecrets]] = []
    also: dict[str, keyslots.MasterSecrets] = {}
    for slot, master in keyslots.open_slots(slots, creds):
        problem = config.problem(master, slot.type)
        if pin is not None and pin.next is not None and pin.accepts(master.fingerprint):
            also[master.fingerprint] = master  # both keys of this machine's unfinished rotation
        elif pin is not None and pin.next == pin.fingerprint and pin.retired[-1:] == [master.fingerprint]:
            also[master.fingerprint] = master  # past its commit point: the key it moved away from
        if problem is not None:
            unauthenticated.append((slot, problem))
            continue
        if pin is not None and not pin.accepts(master.fingerprint):
            mismatched.append(master)
            continue
        found.append((slot, master))
        if pin is not None and pin.next is None:
            break  # pinned, and no rotation to look for: the first match is the one
    distinct = {m.fingerprint for _s, m in found}
    # Without a pin, an age or gpg slot that opens but does not authenticate the config may be the
    # owner's, beside a config the attacker replaced: refuse rather than guess. (Anyone can write
    # such a slot; nobody but the owner can write a passphrase slot the owner's passphrase opens.)
    public_key = any(s.type in ("age", "gpg") for s, _p in unauthenticated)
    if found and pin is None and (len(distinct) > 1 or public_key):
        raise KeyChanged(
            f"the key slots of the repository at {location} open different keys and this machine has not "
            "used it before: someone who can write the storage may have added slots of their own; check "
            "the key fingerprint on a machine you trust (`phx key list`) and run `phx key trust FINGERPRINT`"
        )
    if not found:
        if mismatched:
            shown = mismatched[0].fingerprint
            assert pin is not None
            if shown in pin.retired:
                raise KeyChanged(
                    f"the repository at {location} has the key {shown}, which this machine retired (`phx key "
                    f"rotate`, or `phx key trust` of {pin.fingerprint}): it is a copy that missed the rotation, or "
                    "someone who can write the storage put an old copy back; nothing was read or written. If it is "
                    "a target that was unreachable during the rotation, `phx sync` brings the rotation there"
                )
            raise KeyChanged(
                f"the key of the repository at {location} changed: it is {shown}, but this machine pinned "
                f"{pin.fingerprint}; someone who can write the storage may have replaced it, so nothing was "
                "read or written; if you rotated the key yourself (`phx key rotate` on another machine), check "
                f"the fingerprint it printed and run `phx key trust {shown}`"
            )
        slot, problem = unauthenticated[0]
        raise ConfigNotAuthenticated(
            f"the repository at {location} cannot be trusted: {problem} (key slot {slot.id}); its config or key "
            "slots were changed by someone without the key (for example to turn encryption off), so nothing "
            "was read or written; restore the config and keys/ objects from another target or a copy"
        )
    slot, master = found[0]
    if unmarked:
        notice(
            f"the repository config at {location} is format {config.version}, but this machine saw it format "
            f"{CAPTURES_FORMAT_VERSION} (it may hold capture segments of `phx watch`): a replica no watch or sync "
            "reached since, or a config put back; it is used as it is. `phx sync` (from the first target) or "
            f"`phx watch` makes it format {CAPTURES_FORMAT_VERSION} again; until then a Phoenix from before "
            "format 5 on another machine could rotate its capture segments away"
        )
    if pins is not None:
        fingerprint = master.fingerprint
        seen_write_only = config.write_only is not None
        if pin is None:
            pins.record(config.id, location, fingerprint, format=config.version, write_only=seen_write_only, first=True)
            notice(
                f"first use of repository {config.id[:8]} at {location} on this machine: its key fingerprint "
                f"{fingerprint} is now trusted here (compare it with `phx key list` on a machine you trust)"
            )
        elif (
            fingerprint != pin.fingerprint
            or location not in pin.locations
            or config.version > pin.format
            or seen_write_only > pin.write_only
        ):
            # A rotation reached its commit point (the config is authenticated by the new key):
            # from now on only the new key is accepted, but `next` still says it is unfinished.
            # A format 5 config this key signs, over a pin of 2 to 4: another machine's watch marked
            # a config of the pin's format or higher with these fields (a higher one, 3 after a
            # conversion, fails the check of `before` safely: refused as before).
            marked = config.version == CAPTURES_FORMAT_VERSION and pin.format >= BASE_FORMAT_VERSION
            pins.record(
                config.id,
                location,
                fingerprint,
                format=config.version,
                before=(pin.format, config.fields_digest()) if marked else None,
                write_only=seen_write_only,
                keep_next=True,
            )
        if pin is not None and pin.next is not None:
            notice("a `phx key rotate` on this machine did not finish; run `phx key rotate` again to finish it")
    return slot, master, [m for fp, m in also.items() if fp != master.fingerprint]
