"""Redis: the keys matching a pattern, read live as one record file (docs/repository-format.md §12).

Redis has no point-in-time read of a whole keyspace: `SCAN` walks the keys while the agent keeps
writing. Each key is read atomically (its `DUMP` payload, its expiry and, for the fallback, its
value through ordinary commands, in one MULTI/EXEC per batch), so every key is consistent, but two
keys may come from different moments. A key deleted between SCAN and its read is simply absent.

Each record holds the `DUMP` payload (restored with `RESTORE`, exact: encodings, stream consumer
groups and pending entries included) and the same value in a logical form, which restore writes
back with ordinary commands when the target server refuses the payload (a payload from a newer
Redis: its RDB version is too high for an older server).
"""

from __future__ import annotations

import contextlib
import io
import json
import struct
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, BinaryIO

import redis as redis_lib
from redis.backoff import ExponentialBackoff, NoBackoff
from redis.retry import Retry

from phoenix_backup.config.model import RedisDb
from phoenix_backup.errors import CorruptObject, SourceError
from phoenix_backup.redaction import redact_quoted
from phoenix_backup.shell import StopScope
from phoenix_backup.sources.streams import Stream, bytes_stream, iter_stream

RECORDS = "keys.phxr"
MANIFEST = "manifest.json"
MAGIC = b"PHXREDIS"
FORMAT_VERSION = 1
BATCH = 500
CONNECT_TIMEOUT = 10.0

TYPES = ("string", "list", "set", "zset", "hash", "stream")
OTHER_TYPE = 255  # module types: DUMP only, no logical fallback
TYPE_CODES = {name: i for i, name in enumerate(TYPES)}
NO_EXPIRY = -1


# -- the value codec: b bytes, i int, l list, n none ---------------------------------------------


def encode_value(value: Any, out: bytearray) -> None:
    if value is None:
        out += b"n"
    elif isinstance(value, bool):
        raise TypeError("booleans are not a Redis value")
    elif isinstance(value, int):
        out += b"i" + struct.pack("<q", value)
    elif isinstance(value, bytes | bytearray | memoryview):
        out += b"b" + struct.pack("<I", len(value)) + bytes(value)
    elif isinstance(value, str):
        encode_value(value.encode(), out)
    elif isinstance(value, list | tuple):
        out += b"l" + struct.pack("<I", len(value))
        for v in value:
            encode_value(v, out)
    else:
        raise TypeError(f"cannot encode {type(value).__name__}")


def decode_value(data: bytes, pos: int = 0) -> tuple[Any, int]:
    tag = data[pos : pos + 1]
    pos += 1
    if tag == b"n":
        return None, pos
    if tag == b"i":
        return struct.unpack_from("<q", data, pos)[0], pos + 8
    if tag == b"b":
        (n,) = struct.unpack_from("<I", data, pos)
        pos += 4
        if pos + n > len(data):
            raise CorruptObject("a Redis record's value is truncated")
        return data[pos : pos + n], pos + n
    if tag == b"l":
        (n,) = struct.unpack_from("<I", data, pos)
        pos += 4
        items = []
        for _ in range(n):
            item, pos = decode_value(data, pos)
            items.append(item)
        return items, pos
    raise CorruptObject(f"a Redis record holds an unknown value tag {tag!r}")


# -- records -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Record:
    key: bytes
    type: str  # one of TYPES, or "other"
    expire_at_ms: int  # absolute Unix time in ms, or NO_EXPIRY
    payload: bytes  # the DUMP payload
    logical: Any  # the value in logical form (None for module types)

    def encode(self) -> bytes:
        logical = bytearray()
        encode_value(self.logical, logical)
        code = TYPE_CODES.get(self.type, OTHER_TYPE)
        return b"".join(
            (
                b"K",
                struct.pack("<I", len(self.key)),
                self.key,
                struct.pack("<qB", self.expire_at_ms, code),
                struct.pack("<I", len(self.payload)),
                self.payload,
                struct.pack("<I", len(logical)),
                bytes(logical),
            )
        )


def header_bytes(header: dict[str, Any]) -> bytes:
    doc = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
    return MAGIC + struct.pack("<BI", FORMAT_VERSION, len(doc)) + doc


def trailer_bytes(count: int) -> bytes:
    return b"E" + struct.pack("<Q", count)


def _read_exact(f: BinaryIO, n: int, what: str) -> bytes:
    data = f.read(n)
    if len(data) != n:
        raise CorruptObject(f"the Redis record file is truncated ({what})")
    return data


def read_records(f: BinaryIO) -> tuple[dict[str, Any], Iterator[Record]]:
    """The header, and an iterator of records that checks the trailer's count at the end."""
    if _read_exact(f, len(MAGIC), "magic") != MAGIC:
        raise CorruptObject("not a Phoenix Redis record file (bad magic)")
    version, hlen = struct.unpack("<BI", _read_exact(f, 5, "header"))
    if version > FORMAT_VERSION:
        raise CorruptObject(f"the Redis record file has format {version}, newer than this Phoenix reads; upgrade")
    header = json.loads(_read_exact(f, hlen, "header"))

    def records() -> Iterator[Record]:
        count = 0
        while True:
            tag = _read_exact(f, 1, "record tag")
            if tag == b"E":
                (expected,) = struct.unpack("<Q", _read_exact(f, 8, "trailer"))
                if expected != count:
                    raise CorruptObject(f"the Redis record file holds {count} records, its trailer says {expected}")
                return
            if tag != b"K":
                raise CorruptObject(f"the Redis record file holds an unknown record tag {tag!r}")
            (klen,) = struct.unpack("<I", _read_exact(f, 4, "key length"))
            key = _read_exact(f, klen, "key")
            expire, code = struct.unpack("<qB", _read_exact(f, 9, "expiry"))
            (plen,) = struct.unpack("<I", _read_exact(f, 4, "payload length"))
            payload = _read_exact(f, plen, "payload")
            (llen,) = struct.unpack("<I", _read_exact(f, 4, "value length"))
            raw = _read_exact(f, llen, "value")
            logical, _ = decode_value(raw) if raw else (None, 0)
            kind = TYPES[code] if code < len(TYPES) else "other"
            count += 1
            yield Record(key, kind, expire, payload, logical)

    return header, records()


# -- connecting ----------------------------------------------------------------------------------


class _Backoff(ExponentialBackoff):
    """redis-py's wait between the retries of a command whose connection failed, which ends the
    retries once `stopped` is set: a stop hangs up the connections (`RedisReader`), and a retry
    would connect again and wait, on a server that does not answer, for the whole read timeout.
    Shared by every connection of a client (redis-py copies the retry policy into each)."""

    def __init__(self, stopped: threading.Event) -> None:
        super().__init__(cap=10, base=1)  # redis-py's own bounds (1 s, doubling, 10 s at most)
        self.stopped = stopped

    def __deepcopy__(self, memo: dict[int, object]) -> _Backoff:
        return self

    def compute(self, failures: int) -> float:
        # The wait itself is here, where a stop ends it: redis-py's sleep would not see it.
        if self.stopped.wait(float(super().compute(failures))):
            raise redis_lib.ConnectionError("the read was stopped")
        return 0.0


def connect(entry: RedisDb, stopped: threading.Event | None = None) -> redis_lib.Redis:
    """A client speaking RESP2 with raw replies (no parsing callbacks): every reply is bytes, an
    int or a list, whatever the redis-py version, so the codec below sees one shape only. The
    first connection is not tried again (a server that is not there, a refused password: said at
    once, not after 14 s of waits); once it answered, a command whose connection fails is tried
    again (3 times), until `stopped` is set."""
    try:
        client: redis_lib.Redis = redis_lib.Redis.from_url(
            entry.url,
            socket_connect_timeout=CONNECT_TIMEOUT,
            socket_timeout=120,
            decode_responses=False,
            protocol=2,
            retry=Retry(NoBackoff(), 0),
        )
        client.response_callbacks.clear()
        command(client, "PING")
        try:
            cluster = bytes(command(client, "INFO", "cluster") or b"")
            mode = bytes(command(client, "INFO", "server") or b"")
        except redis_lib.ResponseError:
            cluster = mode = b""  # a proxy or a server that refuses INFO: nothing said of a cluster
        client.set_retry(Retry(_Backoff(stopped or threading.Event()), 3))
    except redis_lib.RedisError as exc:
        raise SourceError(
            f"cannot connect to Redis database `{entry.name}` ({where(entry.url)}): {_reason(exc)}; check that the "
            "server runs and the url (and its password) in databases.redis"
        ) from exc
    except ValueError as exc:
        raise SourceError(
            f"the url of Redis database `{entry.name}` is malformed ({redact_quoted(str(exc))}); fix it"
        ) from None
    if b"cluster_enabled:1" in cluster:
        # A node of a cluster holds the keys of its slots only: a backup of it held part of the
        # keys (or failed on a multi-key command, "don't hash to the same slot"), a restore's
        # writes of other slots' keys were refused (MOVED) and its temporary keys could not be
        # renamed onto keys of another slot.
        client.close()
        raise SourceError(
            f"Redis database `{entry.name}` ({where(entry.url)}) is a node of a Redis Cluster (cluster_enabled:1), "
            "which holds only the keys of its own slots, and Phoenix reads and restores a standalone Redis only; "
            "point the url at a standalone server (or a replica of one), or back the cluster up with "
            "`redis-cli --cluster backup`"
        )
    if b"redis_mode:sentinel" in mode:
        # A Sentinel answers PING and INFO but holds no keys: a backup failed midway on SCAN, a
        # restore on TIME, with Redis's words only ("unknown command").
        client.close()
        raise SourceError(
            f"Redis database `{entry.name}` ({where(entry.url)}) is a Redis Sentinel (redis_mode:sentinel), which "
            "watches Redis servers and holds no keys; point the url at the master it watches (`redis-cli -p PORT "
            "SENTINEL get-master-addr-by-name NAME` says where it is) or at a replica of it"
        )
    return client


def read_only_replica(client: redis_lib.Redis) -> str | None:
    """`host:port` of the master when the server is a replica that refuses writes (the default,
    `replica-read-only yes`); None otherwise (or when INFO is refused)."""
    try:
        text = bytes(command(client, "INFO", "replication") or b"").decode("utf-8", "replace")
    except redis_lib.RedisError:
        return None  # refused, or the server went: the restore's own writes say what is wrong
    info = dict(ln.strip().split(":", 1) for ln in text.splitlines() if ":" in ln and not ln.startswith("#"))
    if info.get("role") != "slave" or info.get("slave_read_only", "1") != "1":
        return None
    return f"{info.get('master_host', '?')}:{info.get('master_port', '?')}"


def where(url: str) -> str:
    """host:port/db of a Redis URL (a unix socket's path), for messages: never its user info or
    query (`?password=`)."""
    from urllib.parse import urlsplit

    try:
        u = urlsplit(url)
        if u.scheme == "unix":
            return u.path
        return f"{u.hostname or 'localhost'}:{u.port or 6379}{u.path or ''}"
    except ValueError:
        return "?"


def _reason(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def server_info(client: redis_lib.Redis) -> dict[str, str]:
    text = command(client, "INFO", "server")
    out: dict[str, str] = {}
    for line in bytes(text).decode("utf-8", "replace").splitlines():
        if ":" in line and not line.startswith("#"):
            k, v = line.split(":", 1)
            out[k.strip()] = v.strip()
    return out


def rdb_version(payload: bytes) -> int | None:
    """A DUMP payload ends with its RDB version (2 bytes, little-endian) and a CRC64 (8 bytes)."""
    if len(payload) < 10:
        return None
    return int.from_bytes(payload[-10:-8], "little")


# -- reading -------------------------------------------------------------------------------------


def _logical_commands(pipe: Any, key: bytes, kind: str, groups: list[bytes]) -> int:
    """Queue the commands that read a value; return how many replies they give."""
    simple = {
        "string": ("GET", key),
        "list": ("LRANGE", key, 0, -1),
        "set": ("SMEMBERS", key),
        "zset": ("ZRANGE", key, 0, -1, "WITHSCORES"),
        "hash": ("HGETALL", key),
    }
    if kind in simple:
        command(pipe, *simple[kind])
        return 1
    if kind == "stream":
        command(pipe, "XRANGE", key, "-", "+")
        command(pipe, "XINFO", "STREAM", key)
        for g in groups:
            command(pipe, "XPENDING", key, g, "-", "+", 1 << 31)
            command(pipe, "XINFO", "CONSUMERS", key, g)
        command(pipe, "XINFO", "GROUPS", key)
        return 3 + 2 * len(groups)
    return 0


def command(target: Any, *args: Any) -> Any:
    """One raw command on a client or pipeline (redis-py leaves `execute_command` untyped)."""
    return target.execute_command(*args)


def pairs(flat: list[Any]) -> dict[bytes, Any]:
    """RESP2 maps are flat [name, value, name, value…] lists."""
    return {flat[i]: flat[i + 1] for i in range(0, len(flat) - 1, 2)}


def _logical_value(kind: str, replies: list[Any], groups: list[bytes]) -> Any:
    """The value as the record stores it: bytes for a string; a list of items, of set members
    (sorted), of alternating member/score or field/value; for a stream [entries, [last id,
    entries added, max deleted id], groups [name, last delivered id, entries read, consumers,
    pending [id, consumer, deliveries]]]."""
    if kind == "set":
        return sorted(replies[0])
    if kind in ("string", "list", "zset", "hash"):
        return replies[0]
    if kind == "stream":
        entries = [[eid, list(fields or [])] for eid, fields in replies[0]]
        info = pairs(replies[1])
        group_info = {pairs(g)[b"name"]: pairs(g) for g in replies[2 + 2 * len(groups)]}
        out_groups = []
        for i, g in enumerate(groups):
            pending = [[p[0], p[1], int(p[3])] for p in replies[2 + 2 * i]]
            consumers = [pairs(c)[b"name"] for c in replies[3 + 2 * i]]
            gi = group_info.get(g, {})
            entries_read = gi.get(b"entries-read")
            last_id = gi.get(b"last-delivered-id", b"0-0")
            read = int(entries_read) if entries_read is not None else None
            out_groups.append([g, last_id, read, consumers, pending])
        meta = [
            info.get(b"last-generated-id", b"0-0"),
            int(info.get(b"entries-added", len(entries))),
            info.get(b"max-deleted-entry-id", b"0-0"),
        ]
        return [entries, meta, out_groups]
    return None


@dataclass
class RedisSummary:
    server_version: str
    types: dict[str, int] = field(default_factory=dict)
    keys: int = 0
    rdb_version: int | None = None
    warnings: list[str] = field(default_factory=list)
    manifest: dict[str, Any] = field(default_factory=dict)


class RedisReader:
    """The keys of one `databases.redis[]` entry; use as a context manager, then iterate `streams()`."""

    def __init__(self, entry: RedisDb, stops: StopScope | None = None) -> None:
        self.entry = entry
        self.client: redis_lib.Redis | None = None
        self.summary: RedisSummary | None = None
        self.db = 0
        # The backup's: its stop ends the connect and every read under way (`_hang_up`).
        self.stops = stops
        self.stopped = threading.Event()
        self._ending = contextlib.ExitStack()

    def __enter__(self) -> RedisReader:
        if self.stops is not None:  # a stop does not wait for a server that does not answer
            self.client = self.stops.connecting(lambda: connect(self.entry, self.stopped), lambda c: c.close())
            client = self.client
            self._ending.enter_context(self.stops.ending(lambda: self._hang_up(client)))
        else:
            self.client = connect(self.entry)
        self.db = int(self.client.connection_pool.connection_kwargs.get("db", 0) or 0)
        try:
            info = server_info(self.client)
        except redis_lib.RedisError as exc:
            self.close()
            raise SourceError(f"reading Redis database `{self.entry.name}` failed: {_reason(exc)}") from exc
        self.summary = RedisSummary(str(info.get("redis_version", "")))
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _hang_up(self, client: redis_lib.Redis) -> None:
        """End every read on `client` at once, from another thread: its connections are shut
        (a read waiting on a server that stopped answering returns) and no command is retried."""
        self.stopped.set()
        with contextlib.suppress(OSError, redis_lib.RedisError):
            client.connection_pool.disconnect(inuse_connections=True)

    def close(self) -> None:
        self._ending.close()  # before the client closes: its connections are not ended after
        if self.client is not None:
            self.client.close()
            self.client = None

    def streams(self) -> Iterator[Stream]:
        assert self.client is not None and self.summary is not None
        summary, client = self.summary, self.client
        failed: list[BaseException] = []
        started = time.time()

        def blocks() -> Iterator[bytes]:
            yield header_bytes(
                {
                    "serverVersion": summary.server_version,
                    "db": self.db,
                    "match": self.entry.match,
                    "started": round(started, 3),
                }
            )
            count = 0
            try:
                cursor = 0
                while True:
                    reply = command(client, "SCAN", cursor, "MATCH", self.entry.match, "COUNT", BATCH)
                    cursor, keys = int(reply[0]), reply[1]
                    if keys:
                        buf = io.BytesIO()
                        for rec in self._read_batch(client, list(keys)):
                            buf.write(rec.encode())
                            count += 1
                            summary.types[rec.type] = summary.types.get(rec.type, 0) + 1
                            if summary.rdb_version is None:
                                summary.rdb_version = rdb_version(rec.payload)
                        yield buf.getvalue()
                    if cursor == 0:
                        break
            except redis_lib.RedisError as exc:
                failed.append(exc)
                return
            summary.keys = count
            yield trailer_bytes(count)

        def finish() -> None:
            if failed:
                raise SourceError(
                    f"reading Redis database `{self.entry.name}` failed midway: {_reason(failed[0])}; "
                    "nothing of it was kept in this snapshot"
                )

        yield iter_stream(RECORDS, blocks(), finish)
        summary.manifest = {
            "format": "phoenix-redis",
            "version": FORMAT_VERSION,
            "name": self.entry.name,
            "serverVersion": summary.server_version,
            "rdbVersion": summary.rdb_version,
            "db": self.db,
            "match": self.entry.match,
            "keys": summary.keys,
            "types": dict(sorted(summary.types.items())),
            "files": [RECORDS],
            "consistency": "per key: Redis has no point-in-time read of a whole keyspace",
            "warnings": summary.warnings,
        }
        yield bytes_stream(MANIFEST, (json.dumps(summary.manifest, indent=2, sort_keys=True) + "\n").encode())

    def _read_batch(self, client: redis_lib.Redis, keys: list[bytes]) -> Iterator[Record]:
        # First the types (and a stream's consumer groups), so the second, atomic round can ask
        # each key for its value with the right commands.
        pipe = client.pipeline(transaction=False)
        for k in keys:
            command(pipe, "TYPE", k)
        kinds = [bytes(k).decode() for k in pipe.execute()]
        streams = [k for k, kind in zip(keys, kinds, strict=True) if kind == "stream"]
        groups: dict[bytes, list[bytes]] = {}
        if streams:
            pipe = client.pipeline(transaction=False)
            for k in streams:
                command(pipe, "XINFO", "GROUPS", k)
            for k, reply in zip(streams, pipe.execute(raise_on_error=False), strict=True):
                groups[k] = [] if isinstance(reply, Exception) else [pairs(g)[b"name"] for g in reply]
        pipe = client.pipeline(transaction=True)
        command(pipe, "TIME")
        plan: list[tuple[bytes, str, int]] = []
        for k, kind in zip(keys, kinds, strict=True):
            if kind == "none":
                continue  # deleted since SCAN
            command(pipe, "TYPE", k)
            command(pipe, "DUMP", k)
            command(pipe, "PTTL", k)
            plan.append((k, kind, _logical_commands(pipe, k, kind, groups.get(k, []))))
        replies = pipe.execute(raise_on_error=False)
        seconds, micros = replies[0]
        now_ms = int(seconds) * 1000 + int(micros) // 1000
        pos = 1
        retry: list[bytes] = []
        for k, kind, n in plan:
            now_type, payload, pttl = replies[pos : pos + 3]
            values = replies[pos + 3 : pos + 3 + n]
            pos += 3 + n
            now_kind = bytes(now_type).decode() if isinstance(now_type, bytes) else str(now_type)
            if now_kind == "none" or payload is None:
                continue  # deleted in between: a key is saved whole or not at all
            if now_kind != kind or any(isinstance(v, Exception) for v in values):
                retry.append(k)  # replaced by another type in between: read it again
                continue
            if isinstance(payload, Exception) or isinstance(pttl, Exception):
                raise payload if isinstance(payload, Exception) else pttl
            expire = now_ms + int(pttl) if int(pttl) >= 0 else NO_EXPIRY
            logical = _logical_value(kind, list(values), groups.get(k, [])) if kind in TYPES else None
            yield Record(k, kind if kind in TYPES else "other", expire, bytes(payload), logical)
        if retry:
            yield from self._read_batch(client, retry)
