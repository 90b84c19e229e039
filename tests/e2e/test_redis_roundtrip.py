"""Redis through `phx backup` and `phx restore`: every type and TTL back in place, keys outside
`match` untouched, `--conflict-mode skip` keeping live keys, and `--to DIR` writing the record file."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from e2e_support import Sandbox

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


import services

redis_server = services.redis_server  # the session's Redis server (a fixture)


def _values(r: Any, pattern: str) -> dict[bytes, Any]:
    """Each key's type, value (read with ordinary commands: a set's DUMP order may differ between
    equal sets) and TTL in minutes."""
    read = {
        b"string": r.get,
        b"hash": r.hgetall,
        b"list": lambda k: r.lrange(k, 0, -1),
        b"set": lambda k: sorted(r.smembers(k)),
        b"zset": lambda k: r.zrange(k, 0, -1, withscores=True),
        b"stream": lambda k: (r.xrange(k), r.xinfo_groups(k), r.xpending_range(k, "workers", "-", "+", 10)),
    }
    out: dict[bytes, Any] = {}
    for k in sorted(r.keys(pattern)):
        kind = r.type(k)
        value = read[kind](k)
        if kind == b"stream":
            value = (
                value[0],
                [{**g, "lag": None} for g in value[1]],
                [(p["message_id"], p["consumer"]) for p in value[2]],
            )
        out[k] = (kind, value, -1 if r.pttl(k) < 0 else round(r.pttl(k) / 60_000))
    return out


def test_redis_keys_round_trip_in_place_and_others_stay_untouched(
    sandbox: Sandbox, redis_server: Any, tmp_path: Path
) -> None:
    r = redis_server.client(9)
    r.flushdb()
    r.set("agent:state", "thinking")
    r.set("agent:presence", "online", ex=3600)
    r.hset("agent:profile", mapping={"name": "Argent", "mood": "curious"})
    r.rpush("agent:inbox", "a", "b", "c")
    r.sadd("agent:skills", "python", "sql")
    r.zadd("agent:ranking", {"alpha": 1.0, "beta": 2.5})
    r.xadd("agent:events", {"kind": "start"})
    r.xgroup_create("agent:events", "workers", "0")
    r.xreadgroup("workers", "alice", {"agent:events": ">"})
    r.set("dashboard:theme", "dark")
    sandbox.write_config(databases={"redis": [{"name": "hot", "url": redis_server.url(9), "match": "agent:*"}]})
    saved = _values(r, "agent:*")

    doc = sandbox.backup()
    info = next(d for d in doc["databases"] if d["path"] == "redis/hot")
    assert info["engine"] == "redis" and info["version"] == redis_server.version
    assert info["tables"] == {"keys": 7}
    drill = services.drill(sandbox, sandbox.env, doc["id"], "redis/hot", "unused")
    assert drill.ok and drill.found == {"keys": 7}, drill

    r.delete("agent:profile", "agent:inbox")
    r.set("agent:state", "crashed")
    r.set("dashboard:theme", "light")
    r.set("agent:new", "since the backup")

    res = sandbox.phx("restore", "--latest", "--databases-only", "--yes", "--conflict-mode", "skip", "--json").json()
    out = next(d for d in res["databases"] if d["path"] == "redis/hot")
    assert out["ok"] and out["stats"]["restored"] == 2 and out["stats"]["skipped"] == 5, out
    assert r.get("agent:state") == b"crashed"  # skip: the live key stays

    res = sandbox.phx("restore", "--latest", "--databases-only", "--yes", "--json").json()
    out = next(d for d in res["databases"] if d["path"] == "redis/hot")
    assert out["ok"] and out["found"] == {"keys": 7}, out
    now = _values(r, "agent:*")
    assert now.pop(b"agent:new")[0] == b"string"  # not in the snapshot: left alone
    assert now == saved
    assert r.get("dashboard:theme") == b"light"  # outside match: never touched

    dest = tmp_path / "out"
    sandbox.phx("restore", "--latest", "--databases-only", "--to", dest)
    assert (dest / "redis" / "hot" / "keys.phxr").read_bytes().startswith(b"PHXREDIS")
    assert '"keys": 7' in (dest / "redis" / "hot" / "manifest.json").read_text()
    _safety_snapshot_holds_the_database(sandbox)
    r.flushdb()


def _safety_snapshot_holds_the_database(sandbox: Sandbox) -> None:
    """`snapshot_entries(..., databases=...)`: what a pre-restore safety snapshot uses to save a
    server database before an in-place restore overwrites it."""
    from phoenix_backup import Environment, load_config
    from phoenix_backup.ops.backup import snapshot_entries
    from phoenix_backup.ops.context import open_repository
    from phoenix_backup.sources.scope import SCOPES

    cfg = load_config(sandbox.config_path)
    envx = Environment(env=sandbox.env)
    repo = open_repository(cfg, envx)
    try:
        with repo.lock(exclusive=False, command="test"):
            result = snapshot_entries(
                repo,
                cfg,
                envx,
                [],
                absent=(),
                scope="pre-restore",
                tags=("pre-restore",),
                parent_scopes=SCOPES,
                databases=("redis/hot",),
            )
    finally:
        repo.close()
    assert [d.path for d in result.databases] == ["redis/hot"]
    assert result.databases[0].tables == {"keys": 8}


def test_a_password_in_the_urls_query_is_never_shown(sandbox: Sandbox, redis_server: Any) -> None:
    # redis-py takes the password from `?password=` as well as from the user info.
    r = redis_server.client(10)
    r.flushdb()
    r.set("agent:state", "thinking")
    sandbox.write_config(databases={"redis": [{"name": "hot", "url": redis_server.url(10), "match": "agent:*"}]})
    sandbox.backup()
    secret = "CANARYredispw"
    url = redis_server.url(10) + f"?password={secret}"  # a server without a password refuses AUTH
    sandbox.write_config(databases={"redis": [{"name": "hot", "url": url, "match": "agent:*"}]})
    for args in (("--dry-run",), ("--yes",)):
        for fmt in ((), ("--json",)):
            res = sandbox.phx("restore", "--latest", "--databases-only", *args, *fmt, check=None)
            assert "redis/hot" in res.out + res.err, res
            assert secret not in res.out + res.err, res


def test_doctor_checks_a_configured_redis(sandbox: Sandbox, redis_server: Any) -> None:
    """`phx doctor` said "not checked: this version does not back up Redis yet" for every Redis
    entry: it now connects as a backup does, and a server that is not there fails the check with
    the fix."""
    sandbox.write_config(
        databases={
            "redis": [
                {"name": "cache", "url": redis_server.url(3)},
                {"name": "gone", "url": f"redis://127.0.0.1:{services.free_port()}/0"},
            ]
        }
    )
    doc = json.loads(sandbox.phx("doctor", "--json", check=None).out)
    by_name = {c["name"]: c for c in doc["checks"]}
    assert by_name["redis cache"]["status"] == "ok", by_name["redis cache"]
    assert redis_server.version in by_name["redis cache"]["message"], by_name["redis cache"]
    gone = by_name["redis gone"]
    assert gone["status"] == "fail" and "cannot connect" in gone["message"], gone
    assert "databases.redis" in gone["fix"], gone


def test_a_refused_password_is_said_at_once_without_retries(sandbox: Sandbox, redis_server: Any) -> None:
    """The first connection to a Redis server is not tried again: a refused password (or a server
    not there) was retried three times with waits of 2, 4 and 8 s before phx said so (a restore
    through such an entry took 14 s a command). Counted on the server: one connection."""
    r = redis_server.client(11)
    before = int(r.info("stats")["total_connections_received"])
    url = redis_server.url(11) + "?password=CANARYwrong"  # a server without a password refuses AUTH
    sandbox.write_config(databases={"redis": [{"name": "hot", "url": url}]})
    doc = json.loads(sandbox.phx("doctor", "--json", check=None).out)
    after = int(r.info("stats")["total_connections_received"])
    hot = next(c for c in doc["checks"] if c["name"] == "redis hot")
    assert hot["status"] == "fail" and "cannot connect" in hot["message"], hot
    assert "CANARYwrong" not in json.dumps(doc)
    assert after - before == 1, f"{after - before} connections for one refused password"
