"""Integrity check records: a full `PRAGMA integrity_check` that passed or failed on bytes proven
equal to a snapshot's SHA-256 of a database, kept in the repository (`checks/<64 hex>`,
docs/repository-format.md §16), so that any machine restoring those very bytes later knows the
check's answer without running it again.

A record is sealed with AES-256-GCM under a key derived from the master secrets (never from the
write key of a write-only repository), with the repository id in its associated data: only the
owner can make one, and none moves to other bytes (the database's SHA-256 and size are inside)
or to another repository. A reader takes the verdict of every record of a SHA-256 together: any
failure wins over every pass, whatever their times, so no record, older or newer, overrides a
failure. Records name the snapshot whose copy was checked, and prune deletes those whose snapshot
is gone.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from phoenix_backup.errors import CorruptObject, PhoenixError, StorageError
from phoenix_backup.repo import crypto
from phoenix_backup.repo.crypto import NONCE_SIZE, aead, sha256_hex
from phoenix_backup.repo.repository import CHECKS_PREFIX, Repository
from phoenix_backup.repo.walker import walk_tree
from phoenix_backup.storage.base import ObjectInfo

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

PREFIX = CHECKS_PREFIX
VERSION = 1
KEY_CONTEXT = "phoenix v1 integrity check record key"
AAD = b"phoenix v1 integrity check "
# Who ran a check (`by`): a record from anyone else is refused as malformed.
BY = ("drill", "restore", "watch", "compaction", "backup")
# What a record says was checked (`checks`): SQLite's `PRAGMA integrity_check`, and every FTS5
# table's `integrity-check` (a drill runs both; a restore, the watch's base and compaction run the
# first). A record without the field (written before it existed) names the first alone.
INTEGRITY_CHECK = "integrity_check"
FTS5_CHECK = "fts5_integrity_check"
OLD_CHECKS = (INTEGRITY_CHECK,)
# A record's name starts with this many hex digits of the SHA-256 of the bytes it is about.
NAME_SHA_HEX = 16
# A record is a few hundred bytes; a hostile listing cannot make a reader load a large object.
MAX_RECORD_SIZE = 64 << 10
# At most this many objects are read for one SHA-256: anyone who can write to the storage can put
# any number under its names (one request each on S3). Past it none is read and the check runs.
MAX_RECORDS_READ = 256
_HEX = frozenset("0123456789abcdef")
# SQLite's messages for a check that could not run (a result code other than CORRUPT or NOTADB):
# they say nothing of the bytes, so no record is made of them.
_COULD_NOT_RUN = frozenset(
    {
        "unable to open database file",
        "disk I/O error",
        "database or disk is full",
        "out of memory",
        "database is locked",
        "database table is locked",
        "attempt to write a readonly database",
        "interrupted",
        "access permission denied",
        "authorization denied",
    }
)


@dataclass(frozen=True)
class CheckRecord:
    sha256: str  # of the database's bytes that were checked
    size: int
    result: str  # "ok", or the first problems found
    by: str  # one of BY
    checked_at: str  # RFC 3339, UTC
    snapshot: str  # the snapshot whose copy was checked (prune deletes the record with it)
    path: str  # the database's logical path in that snapshot
    sqlite: str  # the SQLite version that ran the check
    checks: tuple[str, ...] = OLD_CHECKS  # what ran (INTEGRITY_CHECK, FTS5_CHECK): `result` is about these

    @property
    def passed(self) -> bool:
        return self.result == "ok"

    def covers(self, wanted: Iterable[str]) -> bool:
        """Whether the record names every check in `wanted` as run."""
        return set(wanted) <= set(self.checks)

    def to_json(self) -> dict[str, object]:
        return {
            "version": VERSION,
            "sha256": self.sha256,
            "size": self.size,
            "result": self.result,
            "by": self.by,
            "checkedAt": self.checked_at,
            "snapshot": self.snapshot,
            "path": self.path,
            "sqlite": self.sqlite,
            "checks": list(self.checks),
        }


def _is_hex(value: object, length: int) -> bool:
    return isinstance(value, str) and len(value) == length and set(value) <= _HEX


def _key(repo: Repository) -> AESGCM:
    return aead(repo.secrets.derive(KEY_CONTEXT))


def opens(repo: Repository, info: ObjectInfo) -> bool:
    """Whether the object listed as `info` is a record `repo`'s key opens (how a key rotation tells
    the records of one key from those of another)."""
    try:
        read_record(repo, info)
    except PhoenixError:
        return False
    return True


def _aad(repo: Repository) -> bytes:
    return AAD + repo.config.id.encode("ascii")


def seal(repo: Repository, record: CheckRecord) -> bytes:
    document = {**record.to_json(), "repository": repo.config.id}
    plain = json.dumps(document, sort_keys=True, separators=(",", ":")).encode()
    nonce = os.urandom(NONCE_SIZE)
    return nonce + _key(repo).encrypt(nonce, plain, _aad(repo))


def fits_name(name: str, raw: bytes) -> bool:
    """Whether `raw` fits the part of the name `name_of` takes from the object's own SHA-256."""
    tail = name.removeprefix(PREFIX)[NAME_SHA_HEX:]
    return len(tail) == 64 - NAME_SHA_HEX and sha256_hex(raw)[: len(tail)] == tail


def open_record(repo: Repository, name: str, raw: bytes) -> CheckRecord:
    """The record stored as `name`; CorruptObject when it is not one this repository's owner made."""
    if len(raw) > MAX_RECORD_SIZE or len(raw) <= NONCE_SIZE or not fits_name(name, raw):
        raise CorruptObject(f"{name} is not an integrity check record of this repository (its name or size)")
    key = _key(repo)
    try:
        plain = key.decrypt(raw[:NONCE_SIZE], raw[NONCE_SIZE:], _aad(repo))
        d = json.loads(plain)
    except (crypto.InvalidTag, ValueError, RecursionError) as exc:
        raise CorruptObject(f"{name} does not authenticate as an integrity check record of this repository") from exc
    if (
        not isinstance(d, dict)
        or d.get("version") != VERSION
        or d.get("repository") != repo.config.id
        or not _is_hex(d.get("sha256"), 64)
        or not _is_hex(d.get("snapshot"), 64)
        or type(d.get("size")) is not int
        or not 0 <= d["size"] < 2**63
        or d.get("by") not in BY
        or not all(isinstance(d.get(k), str) for k in ("result", "checkedAt", "path", "sqlite"))
        or not d["result"]
        or name_of(d["sha256"], raw) != name
    ):
        raise CorruptObject(f"{name} is a malformed integrity check record")
    ran = d.get("checks", list(OLD_CHECKS))
    if not isinstance(ran, list) or not ran or len(ran) > 16 or not all(isinstance(c, str) and c for c in ran):
        raise CorruptObject(f"{name} is a malformed integrity check record (its checks)")
    return CheckRecord(
        d["sha256"], d["size"], d["result"], d["by"], d["checkedAt"], d["snapshot"], d["path"], d["sqlite"], tuple(ran)
    )


def read_record(repo: Repository, info: ObjectInfo) -> CheckRecord:
    """The record listed as `info`; an object too large for one is refused before it is read."""
    if info.size > MAX_RECORD_SIZE:
        raise CorruptObject(f"{info.name} is too large for an integrity check record")
    if info.size <= NONCE_SIZE:
        raise CorruptObject(f"{info.name} is too small for an integrity check record")
    # No more than the listing said: an object replaced by a larger one since is not read whole
    # (what is read then does not fit the name, and is dropped).
    try:
        raw = repo.backend.read_range(info.name, 0, info.size)
    except StorageError as exc:
        raise CorruptObject(f"{info.name} could not be read as an integrity check record ({exc})") from exc
    return open_record(repo, info.name, raw)


def could_not_run(result: str) -> bool:
    """Whether a check's result is SQLite saying it could not run (a read-only file, a full disk, an
    interrupt) rather than a finding about the bytes: such a result is reported, never recorded."""
    return result.removeprefix("integrity_check failed: ") in _COULD_NOT_RUN


def can_record(repo: Repository) -> bool:
    """Whether this machine holds the master secrets that make a record (the machine that backs up a
    write-only repository does not: it writes none)."""
    try:
        repo.secrets  # noqa: B018 - raises IdentityRequired without them
    except PhoenixError:
        return False
    return True


def write(repo: Repository, records: Iterable[CheckRecord]) -> list[str]:
    """Store each record (one object each); return their names. Without the master secrets nothing
    is written."""
    if not can_record(repo):
        return []
    names = []
    for rec in records:
        raw = seal(repo, rec)
        name = name_of(rec.sha256, raw)
        repo.backend.write(name, raw)
        names.append(name)
    return names


def name_of(sha256: str, raw: bytes) -> str:
    """`checks/` ‖ the first NAME_SHA_HEX hex digits of the checked bytes' SHA-256 ‖ the first
    64 - NAME_SHA_HEX of the object's own SHA-256: a restore reads only the records of the bytes it
    restores, and the name still fits the object alone."""
    return PREFIX + sha256[:NAME_SHA_HEX] + sha256_hex(raw)[: 64 - NAME_SHA_HEX]


def record(
    sha256: str,
    size: int,
    result: str,
    by: str,
    snapshot: str,
    path: str,
    sqlite_version: str,
    ran: tuple[str, ...] = (INTEGRITY_CHECK,),
) -> CheckRecord:
    """A record of the checks `ran` (`integrity_check` alone unless said) on these bytes now."""
    return CheckRecord(
        sha256, size, result, by, datetime.now(UTC).isoformat(timespec="seconds"), snapshot, path, sqlite_version, ran
    )


class CheckBook:
    """The records of one repository, read on first use (a restore asks from several threads): the
    listing once, then only the records whose names start with the SHA-256 asked about. Records
    that do not open are left out, as if absent: they can only have said less.

    The book's lock guards only its dictionaries: the requests (the listing, each record's read)
    run outside it, so a slow store holds up only the threads that need the same records, never one
    asking about other bytes (each name prefix is read by one thread, which the others wait for)."""

    def __init__(self, repo: Repository) -> None:
        self.repo = repo
        self._lock = threading.Lock()
        self._listing = threading.Lock()  # the listing is taken once, by one thread
        self._reading: dict[str, threading.Event] = {}  # prefix -> set once its reader is done
        self._names: list[ObjectInfo] | None = None
        self._read: dict[str, list[CheckRecord]] = {}  # first NAME_SHA_HEX hex of a SHA-256 -> records
        self.unreadable: dict[str, str] = {}  # object name -> why

    def _records(self, lead: str) -> list[CheckRecord]:
        """The records whose names start with `lead` (NAME_SHA_HEX hex digits, or "" for all); called
        without the book's lock (it makes requests)."""
        with self._listing:
            if self._names is None:
                self._names = list(self.repo.backend.list(PREFIX)) if can_record(self.repo) else []
        out: list[CheckRecord] = []
        named = [info for info in self._names if info.name.startswith(PREFIX + lead)]
        if lead and len(named) > MAX_RECORDS_READ:
            # A record not read could be a failure: none counts, and the copy is checked.
            self.repo.notice(
                f"the repository holds {len(named)} objects under the integrity check records of one database's "
                f"bytes ({PREFIX}{lead}…); they were not read and the check runs — "
                "`phx prune` deletes those that are not records"
            )
            return out
        for info in named:
            try:
                out.append(read_record(self.repo, info))
            except PhoenixError as exc:
                with self._lock:
                    self.unreadable[info.name] = str(exc)
        return out

    def load(self) -> dict[str, list[CheckRecord]]:
        """Every record, by the SHA-256 of the bytes checked."""
        by_sha: dict[str, list[CheckRecord]] = {}
        for rec in self._records(""):
            by_sha.setdefault(rec.sha256, []).append(rec)
        return by_sha

    def of(self, sha256: str) -> list[CheckRecord]:
        lead = sha256[:NAME_SHA_HEX]
        while True:
            with self._lock:
                if lead in self._read:
                    return [r for r in self._read[lead] if r.sha256 == sha256]
                busy = self._reading.get(lead)
                if busy is None:
                    done = self._reading[lead] = threading.Event()
            if busy is not None:
                busy.wait()  # then read what it found; a reader that failed leaves it to us
                continue
            try:
                found = self._records(lead)
                with self._lock:
                    # With what `add` recorded meanwhile.
                    self._read[lead] = found + self._read.get(lead, [])
            finally:
                with self._lock:
                    del self._reading[lead]
                done.set()

    def passed(self, sha256: str, size: int, wanted: Iterable[str] = (INTEGRITY_CHECK,)) -> CheckRecord | None:
        """The newest record that these bytes passed every check in `wanted` (a record that names
        them all as run: `CheckRecord.checks`), unless any record says they failed a check."""
        found = [r for r in self.of(sha256) if r.size == size]
        if any(not r.passed for r in found):
            return None
        covering = [r for r in found if r.covers(wanted)]
        return max(covering, key=lambda r: r.checked_at) if covering else None

    def add(self, records: Iterable[CheckRecord]) -> None:
        """Store new records, and count them from now on. A store that refuses them (read-only
        credentials, a full disk) costs only the record: the check is run again next time."""
        # One record of each verdict on the same bytes in the same snapshot is enough (a scheduled
        # drill of an unchanged snapshot checks it every time; every restore of those bytes reads
        # all their records). Per snapshot: prune deletes a verdict only with its snapshot.
        records = [
            r
            for r in records
            if not any(
                (o.size, o.result, o.snapshot) == (r.size, r.result, r.snapshot) and o.covers(r.checks)
                for o in self.of(r.sha256)
            )
        ]
        if not records:
            return
        try:
            write(self.repo, records)
        except PhoenixError as exc:
            self.repo.notice(f"the integrity check was not recorded in the repository ({exc}); it runs again next time")
        with self._lock:
            for rec in records:
                self._read.setdefault(rec.sha256[:NAME_SHA_HEX], []).append(rec)


def record_snapshot(repo: Repository, snapshot_id: str, outcomes: Mapping[str, str], by: str) -> None:
    """Record the full checks a backup-like run made of the copies it stored (the watch's base when
    its cadence was due, compaction): `outcomes` maps a logical path to its check's result. The
    snapshot says the same of its own copies; the records say it of those bytes wherever they are
    (a later snapshot that holds them unchecked)."""
    if not outcomes or not can_record(repo):
        return
    try:
        nodes = list(walk_tree(repo, repo.load_snapshot(snapshot_id).tree))
    except PhoenixError as exc:
        repo.notice(f"the integrity checks of snapshot {snapshot_id[:8]} were not recorded in the repository ({exc})")
        return
    CheckBook(repo).add(
        record(node.sha256, node.size, outcomes[path], by, snapshot_id, path, sqlite3.sqlite_version)
        for path, node in nodes
        if path in outcomes and node.type == "sqlite" and node.sha256 is not None
    )


def names_of_forgotten(repo: Repository, snapshots: set[str]) -> tuple[list[str], dict[str, str]]:
    """The records whose snapshot is not among `snapshots` (prune deletes them), and the objects
    under `checks/` that do not open (left alone, reported)."""
    if not can_record(repo):
        return [], {}  # without the owner's key no record can be told from another
    gone = []
    unreadable: dict[str, str] = {}
    for info in repo.backend.list(PREFIX):
        try:
            rec = read_record(repo, info)
        except PhoenixError as exc:
            unreadable[info.name] = str(exc)
            continue
        if rec.snapshot not in snapshots:
            gone.append(info.name)
    return gone, unreadable
