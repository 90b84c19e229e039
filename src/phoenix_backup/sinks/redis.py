"""Restoring a Redis database from a snapshot into its server (the sink of sources/redis.py).

`RESTORE … ABSTTL` per key (`REPLACE` unless `--conflict-mode skip`); a key whose expiry has passed
is not restored; a payload the server refuses (from a newer Redis) is written back with ordinary
commands. Afterwards every restored key must exist.
"""

from __future__ import annotations

import contextlib
import re
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import redis as redis_lib

from phoenix_backup.config.model import RedisDb
from phoenix_backup.errors import CorruptObject, PhoenixError, RestoreError, SourceError
from phoenix_backup.repo.reader import stream_blocks
from phoenix_backup.repo.repository import Repository
from phoenix_backup.repo.tree import Node
from phoenix_backup.sinks import ConflictMode
from phoenix_backup.sinks.streams import (
    DbRestoreOutcome,
    node_reader,
    read_manifest,
)
from phoenix_backup.sources import redis as rds

REDIS_BATCH = 200
# How many keys not restored are named one by one in the warnings (all are in --json).
SHOWN_KEYS = 50
_UNKNOWN_REDIS = (99,)  # a server that does not say its version: every command is tried
# How long the fallback's temporary key outlives a restore that dies before renaming it.
TEMP_KEY_TTL_MS = 3_600_000


def _is_payload_refused(exc: BaseException) -> bool:
    text = str(exc)
    return "payload version or checksum" in text or "Bad data format" in text


@dataclass(frozen=True)
class RedisFeatures:
    """What the server restored into can do, by its version (INFO server's redis_version), so the
    fallback sends only commands it has: XSETID's ENTRIESADDED/MAXDELETEDID and XGROUP CREATE's
    ENTRIESREAD came with 7.0, XGROUP CREATECONSUMER with 6.2, streams and RESTORE ... ABSTTL
    with 5.0, HSET of several fields with 4.0."""

    version: tuple[int, ...]

    @classmethod
    def of(cls, text: str) -> RedisFeatures:
        """From a version text; a server that does not say is taken to have every command."""
        parts = tuple(int(p) for p in re.findall(r"\d+", text)[:3])
        return cls(parts or _UNKNOWN_REDIS)

    @property
    def text(self) -> str:
        return "of an unknown version" if self.version == _UNKNOWN_REDIS else ".".join(map(str, self.version))

    def has(self, *version: int) -> bool:
        return self.version >= version


class RedisWriter:
    """Writes records into one server: `RESTORE` (exact), or the logical form when the server
    refuses the payload. One key that cannot be written is recorded in `failed` and the others
    carry on."""

    def __init__(self, client: redis_lib.Redis, mode: ConflictMode, features: RedisFeatures) -> None:
        self.client = client
        self.mode = mode
        self.features = features
        self.stats = {"restored": 0, "skipped": 0, "expired": 0, "fallback": 0}
        self.failed: list[tuple[bytes, str]] = []
        self.done: list[tuple[bytes, int]] = []  # (key, saved expiry): restored, or kept (skip mode)

    def now_ms(self) -> int:
        """The server's clock, which decides when a key expires (this host's may differ)."""
        seconds, micros = rds.command(self.client, "TIME")
        return int(seconds) * 1000 + int(micros) // 1000

    def restore(self, batch: list[rds.Record]) -> list[bytes]:
        """Write a batch; the keys restored, or kept as they were (skip mode)."""
        now_ms = self.now_ms()
        live = [r for r in batch if r.expire_at_ms == rds.NO_EXPIRY or r.expire_at_ms > now_ms]
        self.stats["expired"] += len(batch) - len(live)
        pipe = self.client.pipeline(transaction=False)
        for r in live:
            rds.command(pipe, *self._restore_args(r, now_ms))
        replies = pipe.execute(raise_on_error=False)
        done: list[bytes] = []
        for r, reply in zip(live, replies, strict=True):
            if not isinstance(reply, Exception):
                self.stats["restored"] += 1
                done.append(r.key)
            elif "BUSYKEY" in str(reply):
                self.stats["skipped"] += 1  # --conflict-mode skip: the live key stays
                done.append(r.key)
            elif _is_payload_refused(reply) and r.type in rds.TYPES:
                if self._fallback(r):
                    done.append(r.key)
            elif _is_payload_refused(reply):
                self.failed.append(
                    (r.key, f"Redis {self.features.text} refuses its payload and a module type has no other form")
                )
            else:
                self.failed.append((r.key, _redis_reason(reply)))
        expiry = {r.key: r.expire_at_ms for r in live}
        self.done += [(k, expiry[k]) for k in done]
        return done

    def check(self) -> tuple[int, int]:
        """(keys there, keys missing) of those written or kept: each must exist now, unless its
        saved expiry has passed since on the server's clock (it expired as it would have; counted
        in `expired`)."""
        missing: list[tuple[bytes, int]] = []
        for i in range(0, len(self.done), 1000):
            chunk = self.done[i : i + 1000]
            if int(rds.command(self.client, "EXISTS", *(k for k, _ in chunk))) == len(chunk):
                continue
            pipe = self.client.pipeline(transaction=False)
            for k, _ in chunk:
                rds.command(pipe, "EXISTS", k)
            missing += [c for c, there in zip(chunk, pipe.execute(), strict=True) if not int(there)]
        now = self.now_ms()
        expired = sum(1 for _, at in missing if at != rds.NO_EXPIRY and at <= now)
        self.stats["expired"] += expired
        return len(self.done) - len(missing), len(missing) - expired

    def _restore_args(self, r: rds.Record, now_ms: int) -> list[Any]:
        expires = r.expire_at_ms != rds.NO_EXPIRY
        if not expires:
            ttl = 0
        elif self.features.has(5, 0):
            ttl = r.expire_at_ms
        else:
            ttl = max(1, r.expire_at_ms - now_ms)  # no ABSTTL before 5.0: the time left
        args: list[Any] = ["RESTORE", r.key, ttl, r.payload]
        if expires and self.features.has(5, 0):
            args.append("ABSTTL")
        if self.mode == "update":
            args.append("REPLACE")
        return args

    def _fallback(self, r: rds.Record) -> bool:
        """The logical form of a refused payload; False when it could not be written."""
        try:
            if self.mode == "skip" and int(rds.command(self.client, "EXISTS", r.key)):
                self.stats["skipped"] += 1
                return True
            write_logical(self.client, r, self.features)
        except (RestoreError, redis_lib.RedisError) as exc:
            self.failed.append((r.key, _redis_reason(exc)))
            return False
        self.stats["fallback"] += 1
        self.stats["restored"] += 1
        return True


def _redis_reason(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def _key_text(key: bytes) -> str:
    return key.decode("utf-8", "backslashreplace")


def restore_redis(
    repo: Repository, entry: RedisDb, path: str, files: dict[str, Node], mode: ConflictMode = "update"
) -> DbRestoreOutcome:
    node = files.get(rds.RECORDS)
    outcome = DbRestoreOutcome(path, "redis", rds.where(entry.url))
    if node is None:
        outcome.error = f"{path} has no {rds.RECORDS} in the snapshot"
        return outcome
    try:
        client = rds.connect(entry)
        master = rds.read_only_replica(client)
    except SourceError as exc:
        outcome.error = str(exc)
        return outcome
    if master is not None:
        # Each key was refused on its own ("You can't write against a read only replica"), one
        # warning per key, and no word of what to do.
        client.close()
        outcome.error = (
            f"Redis database `{entry.name}` ({rds.where(entry.url)}) is a read-only replica (role:slave, "
            f"slave_read_only:1) of the master at {master}, and refuses writes; nothing was restored; point the url "
            "at the master to restore (a replica is fine to back up)"
        )
        return outcome
    writer: RedisWriter | None = None
    try:
        features = RedisFeatures.of(rds.server_info(client).get("redis_version", ""))
        writer = RedisWriter(client, mode, features)
        # Redis restores key by key, not in one transaction: the record file is checked whole
        # (SHA-256) before the first key is written.
        for _ in stream_blocks(repo, f"{path}/{rds.RECORDS}", node):
            pass
        header, records = rds.read_records(node_reader(repo, f"{path}/{rds.RECORDS}", node))
        batch: list[rds.Record] = []
        count = 0
        for rec in records:
            count += 1
            batch.append(rec)
            if len(batch) >= REDIS_BATCH:
                writer.restore(batch)
                batch = []
        if batch:
            writer.restore(batch)
        present, missing = writer.check()
        outcome.expected = {"keys": count - writer.stats["expired"]}
        outcome.found = {"keys": present}
        outcome.stats = {
            **writer.stats,
            "notRestored": len(writer.failed),
            "sourceServerVersion": str(header.get("serverVersion")),
            "serverVersion": features.text,
        }
    except (PhoenixError, redis_lib.RedisError) as exc:
        outcome.stats = dict(writer.stats) if writer else {}
        return outcome.fail(exc, str(exc))
    finally:
        client.close()
    failed = writer.failed
    outcome.not_restored = [{"key": _key_text(k), "error": e} for k, e in failed]
    outcome.warnings += [f"{path}: key {_key_text(k)!r} not restored: {e}" for k, e in failed[:SHOWN_KEYS]]
    if len(failed) > SHOWN_KEYS:
        outcome.warnings.append(f"{path}: {len(failed) - SHOWN_KEYS} more keys not restored (all in --json)")
    if failed:
        first = f"{_key_text(failed[0][0])!r}: {failed[0][1]}"
        outcome.error = (
            f"{len(failed)} of {outcome.expected['keys']} keys were not restored (the first, {first}); the others were"
        )
        return outcome
    if missing:
        outcome.error = f"{missing} restored key(s) are missing right after the restore"
        return outcome
    outcome.ok = True
    return outcome


def write_logical(client: redis_lib.Redis, r: rds.Record, features: RedisFeatures) -> None:
    """Write a key back with ordinary commands that `features` has. The value is built under a
    temporary name and renamed onto the key only when every command succeeded, so a key is
    replaced whole or not at all. The temporary key expires on its own (TEMP_KEY_TTL_MS) should
    this process die before the rename, and is deleted when the rename is refused."""
    if r.type == "stream" and not features.has(5, 0):
        raise RestoreError(f"streams need Redis 5.0 or newer, and this server is {features.text}")
    tmp = r.key + b".phx-restore." + secrets.token_hex(4).encode()
    pipe = client.pipeline(transaction=True)
    value = r.logical
    if r.type == "string":
        rds.command(pipe, "SET", tmp, value)
    elif r.type == "list":
        for part in _chunks(value):
            rds.command(pipe, "RPUSH", tmp, *part)
    elif r.type == "set":
        for part in _chunks(value):
            rds.command(pipe, "SADD", tmp, *part)
    elif r.type == "zset":
        flat = [x for i in range(0, len(value), 2) for x in (value[i + 1], value[i])]  # score, member
        for part in _chunks(flat, 2000):
            rds.command(pipe, "ZADD", tmp, *part)
    elif r.type == "hash":
        for part in _chunks(value, 2000):
            rds.command(pipe, "HSET" if features.has(4, 0) else "HMSET", tmp, *part)
    elif r.type == "stream":
        _stream_commands(pipe, tmp, value, features)
    rds.command(pipe, "PEXPIRE", tmp, TEMP_KEY_TTL_MS)
    try:
        replies = pipe.execute(raise_on_error=False)
        problem = next((x for x in replies if isinstance(x, Exception)), None)
    except redis_lib.RedisError as exc:  # refused when queued (EXECABORT): nothing was written
        problem = exc
    if problem is not None:
        rds.command(client, "DEL", tmp)
        raise RestoreError(_redis_reason(problem))
    pipe = client.pipeline(transaction=True)
    rds.command(pipe, "RENAME", tmp, r.key)
    if r.expire_at_ms != rds.NO_EXPIRY:
        rds.command(pipe, "PEXPIREAT", r.key, r.expire_at_ms)
    else:
        rds.command(pipe, "PERSIST", r.key)  # RENAME kept the temporary key's expiry
    try:
        pipe.execute()
    except redis_lib.RedisError:
        with contextlib.suppress(redis_lib.RedisError):
            rds.command(client, "DEL", tmp)
        raise


def _chunks(items: list[Any], size: int = 1000) -> Iterator[list[Any]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


def _stream_commands(pipe: Any, key: bytes, value: list[Any], features: RedisFeatures) -> None:
    entries, meta, groups = value
    for eid, fields in entries:
        rds.command(pipe, "XADD", key, eid, *fields)
    last_id, entries_added, max_deleted = meta
    if not entries:
        # An empty stream exists only through a group: MKSTREAM makes it, then the group is dropped
        # and made again below with its own position.
        rds.command(pipe, "XGROUP", "CREATE", key, "phx-restore-tmp", "$", "MKSTREAM")
        rds.command(pipe, "XGROUP", "DESTROY", key, "phx-restore-tmp")
    if features.has(7, 0):
        rds.command(pipe, "XSETID", key, last_id, "ENTRIESADDED", entries_added, "MAXDELETEDID", max_deleted)
    else:
        rds.command(pipe, "XSETID", key, last_id)  # before 7.0 a stream keeps neither counter
    for name, last_delivered, entries_read, consumers, pending in groups:
        args: list[Any] = ["XGROUP", "CREATE", key, name, last_delivered]
        if entries_read is not None and features.has(7, 0):
            args += ["ENTRIESREAD", entries_read]
        rds.command(pipe, *args)
        for consumer in consumers:
            if features.has(6, 2):
                rds.command(pipe, "XGROUP", "CREATECONSUMER", key, name, consumer)
            else:
                # Before 6.2 a consumer is made by naming it; reading its own (still empty)
                # history delivers nothing.
                rds.command(pipe, "XREADGROUP", "GROUP", name, consumer, "COUNT", 1, "STREAMS", key, "0")
        for eid, consumer, deliveries in pending:
            rds.command(pipe, "XCLAIM", key, name, consumer, 0, eid, "FORCE", "JUSTID", "RETRYCOUNT", deliveries)


def count_matching(client: redis_lib.Redis, match: str) -> int:
    count, cursor = 0, 0
    while True:
        reply = rds.command(client, "SCAN", cursor, "MATCH", match, "COUNT", 1000)
        cursor = int(reply[0])
        count += len(reply[1])
        if cursor == 0:
            return count


def drill_redis(repo: Repository, path: str, files: dict[str, Node]) -> DbRestoreOutcome:
    """Every record parsed and counted against the manifest (a drill never writes into a shared
    server)."""
    outcome = DbRestoreOutcome(path, "redis", "(records parsed)")
    node = files.get(rds.RECORDS)
    try:
        manifest = read_manifest(repo, path, files)
        if node is None:
            raise CorruptObject(f"{path} has no {rds.RECORDS} in the snapshot")
        _header, records = rds.read_records(node_reader(repo, f"{path}/{rds.RECORDS}", node))
        outcome.expected = {"keys": int(manifest.get("keys", -1))}
        outcome.found = {"keys": sum(1 for _ in records)}
    except PhoenixError as exc:
        return outcome.fail(exc, str(exc))
    outcome.ok = outcome.found == outcome.expected
    if not outcome.ok:
        outcome.error = "the record file's key count differs from the manifest"
    return outcome
