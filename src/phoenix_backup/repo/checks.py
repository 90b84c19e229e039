"""Integrity check records: a full `PRAGMA integrity_check` that passed or failed on bytes proven
equal to a snapshot's SHA-256 of a database, kept in the repository (`checks/<sha256>`,
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

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from phoenix_backup.errors import CorruptObject, PhoenixError
from phoenix_backup.repo.crypto import NONCE_SIZE, sha256_hex
from phoenix_backup.repo.repository import Repository
from phoenix_backup.repo.walker import walk_tree

PREFIX = "checks/"
VERSION = 1
KEY_CONTEXT = "phoenix v1 integrity check record key"
AAD = b"phoenix v1 integrity check "
# Who ran a check (`by`): a record from anyone else is refused as malformed.
BY = ("drill", "restore", "watch", "compaction")
# A record is a few hundred bytes; a hostile listing cannot make a reader load a large object.
MAX_RECORD_SIZE = 64 << 10
_HEX = frozenset("0123456789abcdef")


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

    @property
    def passed(self) -> bool:
        return self.result == "ok"

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
        }


def _is_hex(value: object, length: int) -> bool:
    return isinstance(value, str) and len(value) == length and set(value) <= _HEX


def _key(repo: Repository) -> AESGCM:
    return AESGCM(repo.secrets.derive(KEY_CONTEXT))


def _aad(repo: Repository) -> bytes:
    return AAD + repo.config.id.encode("ascii")


def seal(repo: Repository, record: CheckRecord) -> bytes:
    document = {**record.to_json(), "repository": repo.config.id}
    plain = json.dumps(document, sort_keys=True, separators=(",", ":")).encode()
    nonce = os.urandom(NONCE_SIZE)
    return nonce + _key(repo).encrypt(nonce, plain, _aad(repo))


def open_record(repo: Repository, name: str, raw: bytes) -> CheckRecord:
    """The record stored as `name`; CorruptObject when it is not one this repository's owner made."""
    if len(raw) > MAX_RECORD_SIZE or len(raw) <= NONCE_SIZE or sha256_hex(raw) != name.removeprefix(PREFIX):
        raise CorruptObject(f"{name} is not an integrity check record of this repository (its name or size)")
    try:
        plain = _key(repo).decrypt(raw[:NONCE_SIZE], raw[NONCE_SIZE:], _aad(repo))
        d = json.loads(plain)
    except (InvalidTag, ValueError) as exc:
        raise CorruptObject(f"{name} does not authenticate as an integrity check record of this repository") from exc
    fields = ("sha256", "size", "result", "by", "checkedAt", "snapshot", "path", "sqlite")
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
    ):
        raise CorruptObject(f"{name} is a malformed integrity check record")
    return CheckRecord(
        d[fields[0]], d[fields[1]], d[fields[2]], d[fields[3]], d[fields[4]], d[fields[5]], d[fields[6]], d[fields[7]]
    )


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
    for record in records:
        raw = seal(repo, record)
        name = PREFIX + sha256_hex(raw)
        repo.backend.write(name, raw)
        names.append(name)
    return names


def record(sha256: str, size: int, result: str, by: str, snapshot: str, path: str, sqlite_version: str) -> CheckRecord:
    return CheckRecord(
        sha256, size, result, by, datetime.now(UTC).isoformat(timespec="seconds"), snapshot, path, sqlite_version
    )


class CheckBook:
    """The records of one repository, read once, on first use (a restore asks from several threads).
    Records that do not open are left out, as if absent: they can only have said less."""

    def __init__(self, repo: Repository) -> None:
        self.repo = repo
        self._lock = threading.Lock()
        self._by_sha: dict[str, list[CheckRecord]] | None = None
        self.unreadable: dict[str, str] = {}  # object name -> why

    def load(self) -> dict[str, list[CheckRecord]]:
        with self._lock:
            if self._by_sha is None:
                by_sha: dict[str, list[CheckRecord]] = {}
                if can_record(self.repo):
                    for _name, rec in self._read_all():
                        by_sha.setdefault(rec.sha256, []).append(rec)
                self._by_sha = by_sha
            return self._by_sha

    def _read_all(self) -> Iterable[tuple[str, CheckRecord]]:
        for info in self.repo.backend.list(PREFIX):
            if info.size > MAX_RECORD_SIZE:
                self.unreadable[info.name] = "too large"
                continue
            try:
                yield info.name, open_record(self.repo, info.name, self.repo.backend.read(info.name))
            except PhoenixError as exc:
                self.unreadable[info.name] = str(exc)

    def passed(self, sha256: str, size: int) -> CheckRecord | None:
        """The newest record that these bytes passed the check, unless any record says they failed it."""
        found = [r for r in self.load().get(sha256, []) if r.size == size]
        if not found or any(not r.passed for r in found):
            return None
        return max(found, key=lambda r: r.checked_at)

    def add(self, records: Iterable[CheckRecord]) -> None:
        """Store new records, and count them from now on. A store that refuses them (read-only
        credentials, a full disk) costs only the record: the check is run again next time."""
        records = list(records)
        try:
            write(self.repo, records)
        except PhoenixError as exc:
            self.repo.notice(f"the integrity check was not recorded in the repository ({exc}); it runs again next time")
        with self._lock:
            known = self._by_sha
            if known is not None:  # else not read yet: read later, with these records in it
                for rec in records:
                    known.setdefault(rec.sha256, []).append(rec)


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
    book = CheckBook(repo)
    gone = []
    for name, rec in book._read_all():
        if rec.snapshot not in snapshots:
            gone.append(name)
    return gone, book.unreadable
