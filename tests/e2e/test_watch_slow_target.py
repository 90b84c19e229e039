"""`phx watch` whose first target is slow (docs/continuous.md, "Recovery point"): an S3 API server
(moto) behind a proxy on loopback that holds every write of a capture segment 6 s (and of a lock
3 s) before forwarding it. The segments are written by a thread of their own, so the poll loop
goes on polling every half second while a write is in flight: under a writer committing all the
time, a restore at a random second gives the writer's state of about a second before, not a gap
after each write nor the commits of the write's seconds collapsed into one state; a SIGKILL of the
watch while a write is in flight loses no segment it had sealed (they wait in the spool), and the
restarted watch writes them first and goes on with the chain."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from e2e_support import Sandbox
from faulty_proxy import FaultyProxy, Plan, Request
from moto_support import ACCESS_KEY_ID, SECRET_ACCESS_KEY, MotoServer
from test_watch import _kill, _log, _start_watch, _timeline
from test_watch_adversary import _restored, _table, _wait_covered

SEGMENT_WRITE_SECONDS = 6.0
HEAVY = os.environ.get("PHX_TEST_HEAVY") == "1"
LOCK_WRITE_SECONDS = 3.0
RECOVERY_POINT = 1.0  # a restore at T holds every commit that ended by T - this

# Commits row k (after 0) every ~0.1 s and logs "k begin end" once COMMIT returned.
WRITER = textwrap.dedent(
    """
    import sqlite3, sys, time
    db, log = sys.argv[1], sys.argv[2]
    con = sqlite3.connect(db, timeout=30, isolation_level=None)
    k = con.execute("SELECT max(k) FROM log").fetchone()[0]
    out = open(log, "a")
    print("ready", flush=True)
    while True:
        k += 1
        begin = time.time()
        con.execute("INSERT INTO log VALUES (?, randomblob(3000))", (k,))
        out.write(f"{k} {begin} {time.time()}\\n")
        out.flush()
        time.sleep(0.1)
    """
)


def _slow(req: Request) -> float:
    if req.method != "PUT":
        return 0.0
    if "/captures/" in req.target:
        return SEGMENT_WRITE_SECONDS
    return LOCK_WRITE_SECONDS if "/locks/" in req.target else 0.0


@pytest.fixture
def slow_s3(sandbox: Sandbox, moto: MotoServer) -> Iterator[tuple[Sandbox, FaultyProxy, str]]:
    """The sandbox with one target, S3 through the slow proxy; its repository made there."""
    sb = sandbox
    proxy = FaultyProxy(moto.port, Plan(slow=_slow))
    bucket = moto.make_bucket("slow")
    sb.env["AWS_EC2_METADATA_DISABLED"] = "true"
    s3 = {
        "enabled": True,
        "bucket": bucket,
        "prefix": "argent/",
        "endpoint": proxy.endpoint,
        "accessKeyId": ACCESS_KEY_ID,
        "secretAccessKey": SECRET_ACCESS_KEY,
    }
    sb.write_config(targets={"local": {"enabled": False}, "s3": s3}, retention={"prune": False})
    sb.config_path.chmod(0o600)
    sb.init_repository()
    try:
        yield sb, proxy, bucket
    finally:
        proxy.stop()


def _resume(
    sb: Sandbox, plog: Path, writer: subprocess.Popen[str], since: float
) -> tuple[subprocess.Popen[str], float]:
    """A new watch, waited for until it covers three seconds past `since`; then the writer stops.
    Returns the watch (stopped here if the wait fails) and the time the writer was stopped."""
    watch = _start_watch(sb, plog)
    try:
        _wait_covered(sb, watch, since + 3, plog)
        end = time.time()
        _kill(writer, signal.SIGTERM)
    except BaseException:
        _stop_running(watch)
        raise
    return watch, end


def _stop_running(*procs: subprocess.Popen[str]) -> None:
    for proc in procs:
        if proc.poll() is None:
            _kill(proc, signal.SIGTERM)


def _start_writer(db: Path, log: Path) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(db), str(log)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    return proc


def _wait_in_flight(proxy: FaultyProxy) -> None:
    """Until the proxy holds a segment's write (one is in flight)."""
    deadline = time.monotonic() + 60
    while not any("/captures/" in key for key in proxy.plan.held):
        assert time.monotonic() < deadline, "no segment write in flight"
        time.sleep(0.05)


def _check_at(sb: Sandbox, at: float, record: list[tuple[int, float, float]], dest: Path) -> float:
    """The restore at `at` holds exactly rows 0..m: every commit that ended by `at` - RECOVERY_POINT,
    none that began after `at`. Returns its recovery point: how long before `at` the first commit
    it misses ended (0 when it misses none that ended by then)."""
    rows = _restored(sb, datetime.fromtimestamp(at, UTC).isoformat(), dest)
    assert rows == list(range(len(rows))), f"at {at}: not a state the writer committed"
    top = rows[-1]
    must = max((k for k, _b, end in record if end <= at - RECOVERY_POINT), default=0)
    began = max((k for k, begin, _e in record if begin <= at), default=0)
    assert must <= top <= began, f"at {at}: rows up to {top}, expected from {must} to {began}"
    return max((at - end for k, _b, end in record if k > top and end <= at), default=0.0)


def test_a_slow_target_keeps_every_second_restorable_under_a_writer(
    slow_s3: tuple[Sandbox, FaultyProxy, str], tmp_path: Path
) -> None:
    """Each segment write takes 6 s: the poll loop still looks every half second, so a restore at any
    second of the writer's run holds what was committed a second before. Before, the loop waited on
    each write: the seconds of a write were a gap (the poll after it came more than 5 s late) and
    their commits were seen only as one state after it."""
    sb, proxy, _bucket = slow_s3
    db = sb.layout.dashboard_db
    _table(db)
    wlog, plog = tmp_path / "writer.log", tmp_path / "watch.log"
    watch = _start_watch(sb, plog)
    writer = None
    try:
        _wait_covered(sb, watch, 0.0, plog)  # the base and the first segment are on the target
        writer = _start_writer(db, wlog)
        start = time.time()
        time.sleep((3 if HEAVY else 2) * SEGMENT_WRITE_SECONDS)  # writes of 6 s under the writer
        assert proxy.plan.held, "no write was in flight: the target is not slow"
        end = time.time()
        _kill(writer, signal.SIGTERM)
        writer = None
        _wait_covered(sb, watch, end, plog)
    finally:
        if writer is not None:
            _kill(writer, signal.SIGTERM)
        _kill(watch, signal.SIGTERM)
    code = watch.returncode
    assert code == 0, plog.read_text()
    covered = _timeline(sb)
    assert any(s <= start and e >= end for s, e in covered), f"the writer's run is not one covered range: {covered}"
    record = _log(wlog)
    # The writer was at work through the slow writes (a commit, then 0.1 s of sleep: at most ten a
    # second, fewer on a loaded machine: 99 in those 12 s at load average 10).
    assert len(record) > 20, len(record)
    rng = random.Random(int.from_bytes(os.urandom(4), "big"))
    count = 6 if HEAVY else 3
    points = [_check_at(sb, rng.uniform(start + 1.5, end), record, tmp_path / f"at-{i}") for i in range(count)]
    print(f"recovery points at random seconds: {', '.join(f'{p:.2f}' for p in points)} s")


@pytest.mark.skipif(not HEAVY, reason="a minute of slow writes; PHX_TEST_HEAVY=1 (the default run's time budget)")
def test_a_kill_while_a_segment_is_written_loses_no_sealed_segment(
    slow_s3: tuple[Sandbox, FaultyProxy, str], moto: MotoServer, tmp_path: Path
) -> None:
    """SIGKILL of the watch while a segment's write is in flight and others wait: every segment it
    had sealed is in the spool; the restarted watch writes them first and goes on with the chain,
    so a restore at a second before the kill holds what was committed a second before it."""
    sb, proxy, bucket = slow_s3
    db = sb.layout.dashboard_db
    _table(db)
    wlog, plog = tmp_path / "writer.log", tmp_path / "watch.log"
    watch = _start_watch(sb, plog)
    writer = _start_writer(db, wlog)
    try:
        _wait_covered(sb, watch, time.time() + 1, plog)  # past the base: segments follow the writer
        time.sleep(SEGMENT_WRITE_SECONDS + 2.5)
        _wait_in_flight(proxy)
        os.kill(watch.pid, signal.SIGSTOP)  # a still picture of the spool, then the kill
        spool = next((sb.cache / "watch").glob("*/spool"))
        waiting: dict[str, set[str]] = {}  # two files of one number: a tail sealed again, and the one it replaces
        for p in spool.iterdir():
            if not p.name.startswith("."):
                waiting.setdefault(p.name.split("-", 1)[0], set()).add(p.name.split("-", 1)[1])
        killed = time.time()
        _kill(watch)
        assert waiting, "no segment waited in the spool while a write was in flight"

        watch, end = _resume(sb, plog, writer, killed)
    finally:
        _stop_running(writer, watch)
    code = watch.returncode
    assert code == 0, plog.read_text()
    stored = {k.rsplit("/", 1)[-1] for k in moto.keys(bucket, "argent/captures/")}
    lost = [names for names in waiting.values() if not names & stored]
    assert not lost, f"sealed segments lost by the kill: {lost}"
    assert "left waiting in" in plog.read_text() and "are written first" in plog.read_text()
    assert "a new chain starts" not in plog.read_text(), plog.read_text()
    record = _log(wlog)
    # The chain went on: one covered range up to the last segment sealed before the kill, then
    # (after the gap of the restart) one to the end.
    _check_at(sb, killed - 2.0, record, tmp_path / "before-kill")
    _check_at(sb, end - 0.5, record, tmp_path / "end")
    assert not list(spool.iterdir()), "the spool is empty once written"


@pytest.mark.skipif(not HEAVY, reason="a minute of slow writes; PHX_TEST_HEAVY=1 (the default run's time budget)")
def test_a_second_signal_during_a_slow_write_leaves_the_rest_in_the_spool_and_the_chain_goes_on(
    slow_s3: tuple[Sandbox, FaultyProxy, str], tmp_path: Path
) -> None:
    """SIGTERM while a segment's write is in flight and others wait, then a second signal: the
    watch ends once the write in flight is over (it does not write what waits behind it), saying
    where those wait; the next watch writes them first and goes on with the chain, so a restore
    before the stop holds what was committed a second before it."""
    sb, proxy, _bucket = slow_s3
    db = sb.layout.dashboard_db
    _table(db)
    wlog, plog = tmp_path / "writer.log", tmp_path / "watch.log"
    watch = _start_watch(sb, plog)
    writer = _start_writer(db, wlog)
    try:
        _wait_covered(sb, watch, time.time() + 1, plog)
        time.sleep(2.5)
        _wait_in_flight(proxy)
        stopped = time.time()
        watch.send_signal(signal.SIGTERM)
        time.sleep(1.0)
        watch.send_signal(signal.SIGINT)
        watch.wait(timeout=SEGMENT_WRITE_SECONDS + 30)
        assert watch.returncode != 0 and "wait in" in plog.read_text(), plog.read_text()
        watch, end = _resume(sb, plog, writer, stopped)
    finally:
        _stop_running(writer, watch)
    assert watch.returncode == 0, plog.read_text()
    assert "a new chain starts" not in plog.read_text(), plog.read_text()
    record = _log(wlog)
    _check_at(sb, stopped - 1.5, record, tmp_path / "before-stop")
    _check_at(sb, end - 0.5, record, tmp_path / "end")
