"""The Redis reader and restore against a real redis-server: every type, TTLs, streams with
consumer groups and pending entries, the record file format, and the fallback that rewrites a
value with ordinary commands when the server refuses a DUMP payload (one from a newer Redis)."""

from __future__ import annotations

import io
import time
from typing import Any

import pytest

from phoenix_backup.config.model import RedisDb
from phoenix_backup.errors import CorruptObject, SourceError
from phoenix_backup.sinks import ConflictMode
from phoenix_backup.sinks import redis as redis_sink
from phoenix_backup.sources import redis as rds


def _fill(r: Any, prefix: str = "agent:") -> None:
    r.set(f"{prefix}state", "thinking")
    r.set(f"{prefix}presence", "online", px=3_600_000)
    r.set(f"{prefix}bin", bytes(range(256)))
    r.hset(f"{prefix}profile", mapping={"name": "Argent", "mood": "curious", "n": "7"})
    r.expire(f"{prefix}profile", 7200)
    r.rpush(f"{prefix}inbox", "first", "second", "second", "third")
    r.sadd(f"{prefix}skills", "python", "sql", "redis")
    r.zadd(f"{prefix}ranking", {"alpha": 1.5, "beta": -2.25, "gamma": float("inf"), "delta": 0.1})
    for i in range(5):
        r.xadd(f"{prefix}events", {"kind": "heartbeat", "n": str(i)})
    r.xgroup_create(f"{prefix}events", "workers", "0")
    r.xreadgroup("workers", "alice", {f"{prefix}events": ">"}, count=2)
    r.xreadgroup("workers", "bob", {f"{prefix}events": ">"}, count=1)
    r.xgroup_create(f"{prefix}events", "auditors", "$")
    r.xgroup_createconsumer(f"{prefix}events", "auditors", "carol")


def _snapshot(r: Any, keys: list[bytes], counters: bool = True) -> dict[bytes, Any]:
    """Every key's value through ordinary commands, its TTL rounded to a minute, and stream groups
    (without `counters`: leaving out the entries-read and entries-added of Redis 7, which an older
    server does not keep)."""
    out: dict[bytes, Any] = {}
    for k in sorted(keys):
        kind = r.type(k).decode()
        ttl = r.pttl(k)
        value: Any
        if kind == "string":
            value = r.get(k)
        elif kind == "hash":
            value = r.hgetall(k)
        elif kind == "list":
            value = r.lrange(k, 0, -1)
        elif kind == "set":
            value = sorted(r.smembers(k))
        elif kind == "zset":
            value = r.zrange(k, 0, -1, withscores=True)
        else:
            groups = []
            for g in r.xinfo_groups(k):
                pending = [
                    (p["message_id"], p["consumer"], p["times_delivered"])
                    for p in r.xpending_range(k, g["name"], "-", "+", 100)
                ]
                consumers = sorted(c["name"] for c in r.xinfo_consumers(k, g["name"]))
                read = g.get("entries-read") if counters else None
                groups.append((g["name"], g["last-delivered-id"], read, consumers, pending))
            info = r.xinfo_stream(k)
            added = info.get("entries-added") if counters else None
            value = (r.xrange(k), sorted(groups), info["last-generated-id"], added)
        out[k] = (kind, value, -1 if ttl < 0 else round(ttl / 60_000))
    return out


def _read(entry: RedisDb) -> tuple[bytes, rds.RedisSummary]:
    with rds.RedisReader(entry) as reader:
        streams = list(reader.streams())
        data = streams[0].reader.read()
        streams[0].finish()
        assert reader.summary is not None
        return data, reader.summary


def _restore(client: Any, data: bytes, mode: ConflictMode = "update") -> dict[str, int]:
    _header, records = rds.read_records(io.BytesIO(data))
    writer = _writer(client, mode)
    writer.restore(list(records))
    assert writer.failed == []
    return writer.stats


def _writer(client: Any, mode: ConflictMode = "update", version: str | None = None) -> redis_sink.RedisWriter:
    """A writer for `client`'s server, or for a server of `version` (what the writer may send)."""
    features = redis_sink.RedisFeatures.of(version or rds.server_info(client)["redis_version"])
    return redis_sink.RedisWriter(client, mode, features)


def test_every_type_with_ttls_and_stream_groups_round_trips(redis_server: Any) -> None:
    src, dst = redis_server.client(1), redis_server.client(2)
    src.flushdb()
    dst.flushdb()
    _fill(src)
    src.set("other:untouched", "not mine")
    entry = RedisDb("hot", redis_server.url(1), "agent:*")
    data, summary = _read(entry)
    assert summary.keys == 8
    assert summary.types == {"hash": 1, "list": 1, "set": 1, "stream": 1, "string": 3, "zset": 1}
    assert summary.server_version == redis_server.version
    assert summary.rdb_version is not None and summary.rdb_version >= 9

    raw = rds.connect(RedisDb("x", redis_server.url(2)))
    stats = _restore(raw, data)
    assert stats == {"restored": 8, "skipped": 0, "expired": 0, "fallback": 0}
    keys = src.keys("agent:*")
    assert _snapshot(dst, keys) == _snapshot(src, keys)
    assert dst.get("other:untouched") is None  # outside `match`: never saved, never written


def test_refused_payloads_fall_back_to_ordinary_commands(redis_server: Any) -> None:
    """A payload whose RDB version is above the server's is what a newer Redis's DUMP gives an
    older server: RESTORE refuses it, and the value is written back from its logical form."""
    src, dst = redis_server.client(3), redis_server.client(4)
    src.flushdb()
    dst.flushdb()
    _fill(src)
    data, _ = _read(RedisDb("hot", redis_server.url(3), "agent:*"))
    _header, records = rds.read_records(io.BytesIO(data))
    newer = [_from_newer_redis(r) for r in records]
    with pytest.raises(Exception, match="payload version or checksum"):
        dst.restore("probe", 0, newer[0].payload)
    raw = rds.connect(RedisDb("x", redis_server.url(4)))
    writer = _writer(raw)
    writer.restore(newer)
    assert writer.failed == [] and writer.stats["fallback"] == writer.stats["restored"] == 8
    keys = src.keys("agent:*")
    assert _snapshot(dst, keys) == _snapshot(src, keys)


def test_the_fallback_sends_only_what_an_older_server_has(redis_server: Any) -> None:
    """Written as for Redis 6.0 (no XGROUP CREATECONSUMER, no stream counters) and for 4.0 (no
    streams, no ABSTTL, no multi-field HSET): only those servers' commands are sent, a key the
    server cannot hold is reported alone, and every other key is written."""
    src, dst = redis_server.client(7), redis_server.client(8)
    src.flushdb()
    _fill(src)
    data, _ = _read(RedisDb("hot", redis_server.url(7), "agent:*"))
    _header, records = rds.read_records(io.BytesIO(data))
    newer = [_from_newer_redis(r) for r in records]
    keys = src.keys("agent:*")
    raw = rds.connect(RedisDb("x", redis_server.url(8)))

    dst.flushdb()
    writer = _writer(raw, version="6.0.16")
    writer.restore(newer)
    assert writer.failed == [] and writer.stats["fallback"] == 8
    assert _snapshot(dst, keys, counters=False) == _snapshot(src, keys, counters=False)
    assert dst.xinfo_consumers("agent:events", "auditors")[0]["name"] == b"carol"  # made by XREADGROUP

    dst.flushdb()
    writer = _writer(raw, version="4.0.14")
    writer.restore(newer)
    assert writer.failed == [(b"agent:events", "streams need Redis 5.0 or newer, and this server is 4.0.14")]
    assert writer.stats["restored"] == 7
    streamless = [k for k in keys if k != b"agent:events"]
    assert _snapshot(dst, streamless) == _snapshot(src, streamless)
    assert dst.keys("*phx-restore*") == []  # no temporary key left behind


def test_the_fallback_leaves_no_temporary_key_behind(redis_server: Any) -> None:
    """A user the server lets build a key but not RENAME it: each key is reported and its
    temporary copy deleted; one that may not DEL either leaves copies that expire on their own."""
    src, dst = redis_server.client(10), redis_server.client(11)
    src.flushdb()
    dst.flushdb()
    _fill(src)
    data, _ = _read(RedisDb("hot", redis_server.url(10), "agent:*"))
    _header, records = rds.read_records(io.BytesIO(data))
    newer = [_from_newer_redis(r) for r in records]
    user = "phx-no-rename"
    dst.execute_command("ACL", "SETUSER", user, "on", ">pw", "+@all", "-rename", "~*")
    try:
        raw = rds.connect(RedisDb("x", f"redis://{user}:pw@127.0.0.1:{redis_server.port}/11"))
        writer = _writer(raw)
        writer.restore(newer)
        assert len(writer.failed) == 8 and all("'rename'" in e for _, e in writer.failed), writer.failed
        assert dst.keys("*") == []
        dst.execute_command("ACL", "SETUSER", user, "-del", "-unlink")
        writer.restore(newer)
        left = dst.keys("*phx-restore*")
        assert len(left) == 8 and all(0 < dst.pttl(k) <= redis_sink.TEMP_KEY_TTL_MS for k in left)
    finally:
        dst.execute_command("ACL", "DELUSER", user)
        dst.flushdb()


def test_skip_keeps_live_keys_and_expired_keys_are_not_restored(redis_server: Any) -> None:
    src, dst = redis_server.client(5), redis_server.client(6)
    src.flushdb()
    dst.flushdb()
    src.set("agent:a", "saved")
    src.set("agent:b", "saved")
    src.set("agent:lock", "heartbeat", px=300)
    data, _ = _read(RedisDb("hot", redis_server.url(5), "agent:*"))
    dst.set("agent:a", "live")
    time.sleep(0.4)  # the lock's expiry passes
    raw = rds.connect(RedisDb("x", redis_server.url(6)))
    assert _restore(raw, data, "skip") == {"restored": 1, "skipped": 1, "expired": 1, "fallback": 0}
    assert dst.get("agent:a") == b"live" and dst.get("agent:b") == b"saved" and dst.get("agent:lock") is None
    assert _restore(raw, data, "update")["restored"] == 2
    assert dst.get("agent:a") == b"saved"


def test_expiry_is_judged_on_the_servers_clock(redis_server: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """This host's clock a minute behind the server's: a key whose saved expiry has passed on the
    server is not restored (RESTORE would drop it silently), and one that expires while the
    restore runs is counted expired, not missing."""
    dst = redis_server.client(9)
    dst.flushdb()
    dst.set("payload", "v")
    payload = dst.dump("payload")
    dst.delete("payload")
    raw = rds.connect(RedisDb("x", redis_server.url(9)))
    writer = _writer(raw)
    seconds, micros = dst.time()
    now = seconds * 1000 + micros // 1000  # the server's clock
    late = time.time

    monkeypatch.setattr(time, "time", lambda: late() - 60)
    writer.restore(
        [
            rds.Record(b"agent:gone", "string", now - 1000, payload, b"v"),
            rds.Record(b"agent:soon", "string", now + 300, payload, b"v"),
            rds.Record(b"agent:kept", "string", rds.NO_EXPIRY, payload, b"v"),
        ]
    )
    assert writer.stats == {"restored": 2, "skipped": 0, "expired": 1, "fallback": 0}
    time.sleep(0.4)
    assert writer.check() == (1, 0) and writer.stats["expired"] == 2
    assert dst.keys("agent:*") == [b"agent:kept"]


def test_a_truncated_record_file_is_refused() -> None:
    rec = rds.Record(b"k", "string", rds.NO_EXPIRY, b"payload", b"v")
    whole = rds.header_bytes({"serverVersion": "7.0.0"}) + rec.encode() + rds.trailer_bytes(1)
    _, records = rds.read_records(io.BytesIO(whole))
    assert [r.key for r in records] == [b"k"]
    for cut in (len(whole) - 3, len(whole) - 12):
        _, records = rds.read_records(io.BytesIO(whole[:cut]))
        with pytest.raises(CorruptObject):
            list(records)
    _, records = rds.read_records(io.BytesIO(whole[:-9] + rds.trailer_bytes(2)))
    with pytest.raises(CorruptObject, match="trailer says 2"):
        list(records)


# -- a DUMP payload as a newer Redis writes it -------------------------------------------------------


def _crc64_jones(data: bytes) -> int:
    """Redis's CRC-64 (Jones polynomial, reflected), which ends every DUMP payload."""
    poly = 0x95AC9329AC4BC9B5  # 0xad93d23594c935a9, bit-reversed
    crc = 0
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ poly if crc & 1 else crc >> 1
    return crc


def test_crc64_matches_redis() -> None:
    assert _crc64_jones(b"123456789") == 0xE9C6D914C4B8D9CA


def _from_newer_redis(r: rds.Record) -> rds.Record:
    body = r.payload[:-10] + (99).to_bytes(2, "little")
    payload = body + _crc64_jones(body).to_bytes(8, "little")
    return rds.Record(r.key, r.type, r.expire_at_ms, payload, r.logical)


@pytest.mark.parametrize(
    "url", ["redis://:pa/CANARY@127.0.0.1:6380/0", "redis://:CANARY@127.0.0.1:CANARYport/0", "redis://:CANARY@[::1/0"]
)
def test_a_malformed_url_is_reported_without_its_password(url: str) -> None:
    # urllib quotes the part it cannot parse ("Port could not be cast ... as 'pa'"): a password
    # holding "/" showed its first part.
    with pytest.raises(SourceError, match="malformed") as err:
        rds.connect(RedisDb(name="hot", url=url))
    assert "CANARY" not in str(err.value) and "'pa'" not in str(err.value)
    assert err.value.__cause__ is None and err.value.__suppress_context__  # --verbose shows no chain
