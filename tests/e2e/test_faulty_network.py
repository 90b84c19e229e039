"""Issue 15, suite 4: a faulty network between Phoenix and an S3 target.

The S3 API server (moto) sits behind a fault-injecting proxy on loopback (faulty_proxy.py):
dropped connections, HTTP 500 and 503, truncated bodies and delays. Then:

- transient faults are retried: backup, sync and a restore from the target succeed, and every
  byte read back is right;
- a target that keeps failing, or goes away in the middle of a backup, fails alone (exit 3, the
  local target has the snapshot) and never holds a snapshot whose data it lacks; `phx sync`
  catches it up once the network is back.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
from e2e_support import Sandbox, assert_restored
from faulty_proxy import FAULTS, FaultyProxy, Plan, Request
from moto_support import ACCESS_KEY_ID, SECRET_ACCESS_KEY, MotoServer

HEAVY = os.environ.get("PHX_TEST_HEAVY") == "1"


def use_s3(sb: Sandbox, moto: MotoServer, endpoint: str) -> str:
    bucket = moto.make_bucket("faulty")
    sb.env["AWS_EC2_METADATA_DISABLED"] = "true"
    set_endpoint(sb, bucket, endpoint)
    return bucket


def set_endpoint(sb: Sandbox, bucket: str, endpoint: str) -> None:
    s3 = {
        "enabled": True,
        "bucket": bucket,
        "prefix": "argent/",
        "endpoint": endpoint,
        "accessKeyId": ACCESS_KEY_ID,
        "secretAccessKey": SECRET_ACCESS_KEY,
    }
    sb.write_config(targets={"local": {"enabled": True}, "s3": s3}, retention={"prune": False})
    sb.config_path.chmod(0o600)


def s3_snapshots(moto: MotoServer, bucket: str) -> list[str]:
    return sorted(k.rsplit("/", 1)[-1] for k in moto.keys(bucket, "argent/snapshots/"))


def assert_target_sound(sb: Sandbox, moto: MotoServer, bucket: str, states: dict[str, Any], what: str) -> None:
    """Read straight from the server (no proxy): the target verifies, and every snapshot it holds
    restores exactly."""
    set_endpoint(sb, bucket, moto.endpoint)
    if moto.keys(bucket, "argent/config"):
        doc = sb.verify("--read-data", "--target", "s3")
        assert doc["ok"] is True and doc["errors"] == [], f"{what}: {doc}"
    for sid in s3_snapshots(moto, bucket):
        dest = sb.root / f"from-s3-{sid[:8]}"
        sb.restore_to(sid, dest, "--target", "s3")
        assert_restored(states[sid], dest, f"{what}: snapshot {sid[:8]} from s3")


def test_transient_faults_are_retried(sandbox: Sandbox, moto: MotoServer, tmp_path: Path) -> None:
    sb = sandbox
    # Every retry waits about a second (the retry policy's backoff): the default run keeps the
    # faults few; PHX_TEST_HEAVY=1 makes them dense. The count of distinct requests varies (the
    # restore's ranged reads follow its threads' timing; 84 seen): every 12th meets the fifth kind
    # at the 54th (every 15th met it at the 67th, which a loaded run did not reach: four kinds).
    plan = Plan(rate=0.3, max_faults=2, seed=15) if HEAVY else Plan(every=12)
    proxy = FaultyProxy(moto.port, plan)
    try:
        bucket = use_s3(sb, moto, proxy.endpoint)
        state = sb.state()
        doc = sb.backup()
        assert doc["targets"]["s3"] == {"ok": True, "error": None}, doc["targets"]
        assert sum(plan.injected.values()) > 0, "no fault was injected: the test proves nothing"

        # Reading through the same faults: truncated bodies must never become wrong bytes.
        dest = tmp_path / "restored"
        sb.restore_to(doc["id"], dest, "--target", "s3")
        assert_restored(state, dest, "restore from s3 through the faulty proxy")

        # A second snapshot, replicated by `phx sync` after a backup to the local target alone.
        sb.phx("backup", "--json", env=sb.env)  # same content: a cheap snapshot
        sb.phx("sync")
        print(f"faults injected: {dict(plan.injected)} in {proxy.requests} requests")
        assert set(plan.injected) == set(FAULTS), f"not every kind of fault was met: {dict(plan.injected)}"
    finally:
        proxy.stop()
    states = {s: state for s in s3_snapshots(moto, bucket)}
    assert len(states) == 2
    assert_target_sound(sb, moto, bucket, states, "after retried faults")


def test_a_target_that_goes_away_fails_alone(sandbox: Sandbox, moto: MotoServer) -> None:
    """The service disappears (connections refused) after part of the packs were uploaded."""
    sb = sandbox
    proxy = FaultyProxy(moto.port, Plan())
    puts = 0

    def stop_after_two_packs(req: Request) -> str | None:
        nonlocal puts
        if req.method == "PUT" and "/data/" in req.target:
            puts += 1
            if puts == 2:
                proxy.stop()  # from now on the port refuses connections
                return "drop"
        return None

    proxy.plan.fail = stop_after_two_packs
    bucket = use_s3(sb, moto, proxy.endpoint)
    sb.phx("sync", check=None)  # the target is initialised (config, keys) before the backup
    state = sb.state()
    res = sb.phx("backup", "--json", check=3)
    doc = res.json()
    assert doc["targets"]["local"]["ok"] is True and doc["targets"]["s3"]["ok"] is False, doc["targets"]
    assert "s3" in doc["targets"]["s3"]["error"]
    assert s3_snapshots(moto, bucket) == [], "a snapshot reached the target without its data"
    assert_target_sound(sb, moto, bucket, {}, "after the target went away")

    sb.phx("sync")  # the network is back (the direct endpoint)
    assert s3_snapshots(moto, bucket) == [doc["id"]]
    assert_target_sound(sb, moto, bucket, {doc["id"]: state}, "after sync")


@pytest.mark.skipif(not HEAVY, reason="a persistent 503 costs the full retry budget per object; PHX_TEST_HEAVY=1")
def test_a_target_that_keeps_failing_fails_alone(sandbox: Sandbox, moto: MotoServer) -> None:
    """Every upload of a data pack answers 503 (or drops), for good: the retries give up, the target
    fails alone, and its snapshots never appear."""
    sb = sandbox
    plan = Plan(fail=lambda r: "503" if r.method == "PUT" and "/data/" in r.target else None)
    proxy = FaultyProxy(moto.port, plan)
    try:
        bucket = use_s3(sb, moto, proxy.endpoint)
        state = sb.state()
        res = sb.phx("backup", "--json", check=3, timeout=300)
        doc = res.json()
        assert doc["targets"]["local"]["ok"] is True and doc["targets"]["s3"]["ok"] is False
        assert "gave up after" in doc["targets"]["s3"]["error"], doc["targets"]["s3"]
        assert s3_snapshots(moto, bucket) == []
        print(f"faults injected: {dict(plan.injected)}")
    finally:
        proxy.stop()
    assert_target_sound(sb, moto, bucket, {}, "after a persistent 503")
    sb.phx("sync")
    assert_target_sound(sb, moto, bucket, {doc["id"]: state}, "after sync")
