"""`phx watch` and point-in-time restore (docs/continuous.md): under a writer process that records
each committed transaction with its time, at 20+ commits a second, with the writer and `phx watch`
SIGKILLed at random points and restarted, a restore at a random second of the covered time holds
exactly a state the writer committed by then, misses nothing it committed more than a second
before, passes integrity_check and FTS5's check. A restarted watch resumes its chain without a
new base; a time outside the covered ranges is one clear error naming them (exit 2)."""

from __future__ import annotations

import json
import os
import plistlib
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from e2e_support import PHX, Sandbox, assert_error, wait_past_racy_window

from phoenix_backup.config import load_config
from phoenix_backup.ops import context
from phoenix_backup.ops.list import list_snapshots
from phoenix_backup.ops.pitr import files_as_of
from phoenix_backup.ops.watch_files import FILES_SCOPE

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from sqlite_states import TRANSACTION, Simulation, create_schema

HEAVY = os.environ.get("PHX_TEST_HEAVY") == "1"
TRIALS = 3 if HEAVY else 1
RESTORES = 12 if HEAVY else 3
LOGICAL = "home/.argentos/data/dashboard.db"
RECOVERY_POINT = 1.0

# Transaction k as in sqlite_states (so Simulation knows every state's rows), plus a row in an FTS5
# table; "k begin end" is logged after COMMIT returns: the commit happened between the two times.
WRITER = (
    textwrap.dedent(
        """
    import hashlib, os, random, sqlite3, sys, time
    db, log, seed, pause = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
    def value(k, tag=""):
        return hashlib.sha256(f"{k}{tag}".encode()).digest() * (1 + k % 40)
    """
    )
    + TRANSACTION
    + textwrap.dedent(
        """
    rng = random.Random(seed)
    con = sqlite3.connect(db, timeout=30, isolation_level=None)
    k = con.execute("SELECT k FROM meta").fetchone()[0]
    out = open(log, "a")
    print("ready", flush=True)
    while True:
        k += 1
        begin = time.time()
        con.execute("BEGIN IMMEDIATE")
        transaction(con, k)
        con.execute("INSERT INTO notes(body) VALUES (?)", (f"note {k} " + "lorem ipsum " * (k % 9),))
        con.execute("COMMIT")
        out.write(f"{k} {begin} {time.time()}\\n")
        out.flush()
        time.sleep(rng.uniform(0, pause))
        if rng.random() < 0.03:
            con.execute(f"PRAGMA wal_checkpoint({rng.choice(['PASSIVE', 'RESTART', 'TRUNCATE'])})").fetchall()
    """
    )
)


def _writer_db(sb: Sandbox) -> Path:
    db = sb.layout.dashboard_db
    for suffix in ("", "-wal", "-shm", "-journal"):
        Path(str(db) + suffix).unlink(missing_ok=True)
    create_schema(db, "wal")
    con = sqlite3.connect(db)
    con.execute("CREATE VIRTUAL TABLE notes USING fts5(body)")
    con.close()
    return db


def _start_writer(db: Path, log: Path, seed: int) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(db), str(log), str(seed), "0.02"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    return proc


def _start_watch(sb: Sandbox, log: Path) -> subprocess.Popen[bytes]:
    out = open(log, "ab")  # noqa: SIM115 - the child owns it
    return subprocess.Popen([PHX, "watch", "--no-files"], env=sb.env, stdin=subprocess.DEVNULL, stdout=out, stderr=out)


def _kill(proc: subprocess.Popen[object], sig: int = signal.SIGKILL) -> None:
    proc.send_signal(sig)
    proc.wait(timeout=60)


def _log(path: Path) -> list[tuple[int, float, float]]:
    rows = []
    for line in path.read_text().splitlines():
        parts = line.split()
        if len(parts) == 3:
            rows.append((int(parts[0]), float(parts[1]), float(parts[2])))
    return rows


def _timeline(sb: Sandbox, path: str = LOGICAL) -> list[tuple[float, float]]:
    doc = sb.phx("list", "--timeline", "--json").json()
    rows = doc["databases"].get(path, [])
    return [
        (datetime.fromisoformat(r["from"]).timestamp(), datetime.fromisoformat(r["to"]).timestamp())
        for r in rows
        if r["kind"] == "covered"
    ]


def _wait_for(found: Callable[[], list[Any]], proc: subprocess.Popen[str], timeout: float = 60) -> list[Any]:
    """What `found()` returns once it is not empty, while `proc` runs; fails after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not (items := found()):
        assert proc.poll() is None, f"phx watch ended early (exit {proc.returncode})"
        assert time.monotonic() < deadline, f"nothing after {timeout} s"
        time.sleep(0.2)
    return items


def _file_snapshots(sb: Sandbox, after: float) -> list[float]:
    """When the snapshots of the files `phx watch` took after `after` were made (whole seconds)."""
    listed = sb.phx("list", "--scope", "watch-files", "--json").json()
    return sorted(t for s in listed if (t := datetime.fromisoformat(s["time"]).timestamp()) > after)


def _files_ready(sb: Sandbox, after: float) -> list[tuple[float, float]]:
    """The snapshots of the files `phx watch` took after `after`: when each began (its time, in
    whole seconds) and when it had read every file (what `restore --at` goes by, `files_as_of`),
    in seconds, oldest first. A snapshot takes its time on a busy machine: a time a second after
    it began may lie before it holds the files."""
    envx = context.Environment(env=sb.env)
    out = []
    for summary in list_snapshots(load_config(sb.config_path, envx.env), envx):
        snap = summary.snapshot
        begun = datetime.fromisoformat(snap.time).timestamp()
        ready = files_as_of(snap)
        if snap.scope == FILES_SCOPE and begun > after and ready is not None:
            out.append((begun, ready / 1e6))
    return sorted(out)


def _check_restore(sb: Sandbox, at: float, record: list[tuple[int, float, float]], dest: Path, sim: Simulation) -> int:
    when = datetime.fromtimestamp(at, UTC).isoformat()
    doc = sb.phx("restore", "--at", when, "--to", dest, "--path", LOGICAL, "--json").json()
    assert not doc["errors"], doc
    db = dest / LOGICAL
    con = sqlite3.connect(f"file:{db}?immutable=1", uri=True)
    try:
        assert [r[0] for r in con.execute("PRAGMA integrity_check")] == ["ok"]
        k = int(con.execute("SELECT k FROM meta").fetchone()[0])
        rows = con.execute("SELECT id, v FROM items ORDER BY id").fetchall()
        notes = int(con.execute("SELECT count(*) FROM notes WHERE notes MATCH 'note'").fetchone()[0])
    finally:
        con.close()
    begins = {kk: b for kk, b, _e in record}
    # Nothing uncommitted: transaction k had begun by `at`.
    assert k == 0 or begins[k] <= at, f"state {k} began at {begins[k]}, after {at}"
    # Nothing committed more than the recovery point before `at` is missing.
    due = max((kk for kk, _b, e in record if e <= at - RECOVERY_POINT), default=0)
    assert k >= due, f"restored state {k} at {at}, but {due} was committed by {at - RECOVERY_POINT}"
    assert rows == sim.items_at(k) if k >= sim.k else rows == Simulation().items_at(k)
    assert notes == k
    return k


def test_watch_restores_every_second_under_a_writer_with_kills(sandbox: Sandbox, tmp_path: Path) -> None:
    sb = sandbox
    db = _writer_db(sb)
    wlog, plog = tmp_path / "writer.log", tmp_path / "watch.log"
    rng = random.Random(int(os.environ.get("PHX_TEST_SEED", "19")))
    watch = _start_watch(sb, plog)
    writer = _start_writer(db, wlog, rng.randrange(1 << 30))
    try:
        for trial in range(TRIALS):
            time.sleep(rng.uniform(3.0, 5.0) if HEAVY else rng.uniform(2.0, 3.0))
            if trial == TRIALS - 1 or rng.random() < 0.5:
                _kill(writer)  # mid-transaction or between two
                writer = _start_writer(db, wlog, rng.randrange(1 << 30))
            time.sleep(rng.uniform(0.2, 1.5))
            _kill(watch)
            time.sleep(rng.uniform(0.2, 1.0))
            watch = _start_watch(sb, plog)
        time.sleep(2.5)
    finally:
        _kill(writer)
        _kill(watch, signal.SIGTERM)
    assert watch.returncode == 0, plog.read_text()
    # SIGTERM released the lock (the killed runs' locks were removed by the next run as dead).
    assert not list((sb.repo / "locks").iterdir()), plog.read_text()
    record = _log(wlog)
    assert len(record) / (record[-1][2] - record[0][1]) >= 20, "the writer made fewer than 20 commits a second"
    covered = _timeline(sb)
    assert covered, plog.read_text()
    times = sorted(rng.uniform(a, b) for a, b in covered for _ in range(max(1, RESTORES // len(covered))))
    sim = Simulation()
    for i, at in enumerate(times):
        _check_restore(sb, at, record, tmp_path / f"r{i}", sim)


def test_restart_resumes_without_uploading_the_database_again(sandbox: Sandbox, tmp_path: Path) -> None:
    sb = sandbox
    db = sb.layout.memory_db
    plog = tmp_path / "watch.log"
    size = sum(p.stat().st_size for p in (sb.layout.memory_db, sb.layout.observations_db, sb.layout.dashboard_db))
    wait_past_racy_window()  # so that the base reuses the backup's copies instead of reading them again
    sb.backup()
    first = sb.phx("watch", "--duration", "1", "--no-files", "--json").json()
    # The base reuses the backup's unchanged copies, and the first segment holds no page of them.
    assert first["bases"] == 1 and first["bytes"] < size / 20, (first, size)
    con = sqlite3.connect(db)
    con.execute("PRAGMA journal_mode=wal")
    con.execute("CREATE TABLE IF NOT EXISTS t(x)")
    con.execute("INSERT INTO t VALUES (randomblob(100))")
    con.commit()
    con.close()
    # The second run also sees a file change within seconds (watchdog events, debounced).
    note = sb.workspace / "MEMORY.md"
    before = note.read_bytes()
    covered = _timeline(sb, "home/.argentos/memory.db")
    started = time.time()
    proc = subprocess.Popen([PHX, "watch", "--json"], env=sb.env, stdout=subprocess.PIPE, text=True)
    # The edit comes once the run covers time (its start takes seconds on a busy machine), seconds
    # into it, and the run ends once a snapshot of the files holds the edit (`--at` reads whole
    # seconds: the times restored below stay a second inside the run).
    begun = _wait_for(lambda: [a for a, b in _timeline(sb, "home/.argentos/memory.db") if (a, b) not in covered], proc)
    # ...and once the run's first snapshot of the files (what changed while none ran) is taken: a
    # time before it has no snapshot of the files (the notice that says so is tested below).
    # The times restored below go by when a snapshot had read the files, not by when it began.
    # Looked for from the run's start, not its first covered second: a watch restarted within 2 s
    # of the last one's end stamps its first looks up to 2 s ahead (the seconds before them a gap),
    # so its first snapshot of the files may begin before them (it did once in CI: never found).
    first_ready = _wait_for(lambda: _files_ready(sb, after=started - 1), proc)[0][1]
    time.sleep(max(0.0, begun[0] + 2.5 - time.time(), first_ready + 2.5 - time.time()))
    changed_at = time.time()
    note.write_bytes(before + b"\nwritten while phx watch runs\n")
    taken, ready = _wait_for(lambda: _files_ready(sb, after=changed_at), proc)[0]
    assert taken - changed_at < 10, "the watch saw the edit within seconds"
    time.sleep(max(0.0, ready + 2.5 - time.time()))
    proc.send_signal(signal.SIGTERM)
    out, _err = proc.communicate(timeout=120)
    second = json.loads(out)
    assert second["bases"] == 0, plog
    assert set(second["resumed"]) == {LOGICAL, "home/.argentos/memory.db", "home/.argentos/observations.db"}
    assert second["file_snapshots"] == 2, second  # what changed while none ran, then the edit
    for when, content in ((changed_at - 1.0, before), (ready + 1.0, note.read_bytes())):
        at = datetime.fromtimestamp(when, UTC).isoformat()
        dest = tmp_path / f"files-{when}"
        doc = sb.phx("restore", "--at", at, "--to", dest, "--json").json()
        assert (dest / "workspace" / "MEMORY.md").read_bytes() == content, doc
    # A --path naming one captured database exactly restores that database alone: no restore of
    # the files (which matched nothing, and opened the repository a second time).
    at = datetime.fromtimestamp(changed_at + 1.0, UTC).isoformat()
    doc = sb.phx("restore", "--at", at, "--to", tmp_path / "db-only", "--path", LOGICAL, "--json").json()
    assert doc["files"] is None and not doc["errors"], doc
    assert [d["path"] for d in doc["databases"]] == [LOGICAL]
    # What the restart added is its own change, not the databases again.
    assert second["bytes"] < size / 20, (second["bytes"], size)
    tl = sb.phx("list", "--timeline", "--json").json()
    assert set(tl["databases"]) >= {"home/.argentos/memory.db"}


def test_a_time_outside_the_covered_ranges_is_one_clear_error(sandbox: Sandbox, tmp_path: Path) -> None:
    sb = sandbox
    res = sb.phx("restore", "--at", "2026-01-01T00:00:00+00:00", "--to", tmp_path / "x", check=2)
    assert_error(res, 2, "no capture covers", "covered: none")
    sb.phx("watch", "--duration", "1", "--no-files")
    res = sb.phx("restore", "--at", "2001-01-01T00:00:00+00:00", "--to", tmp_path / "x", check=2)
    assert_error(res, 2, "no capture covers 2001-01-01", "covered: home/.argentos/data/dashboard.db: 2", "memory.db: 2")
    assert not (tmp_path / "x").exists()
    assert_error(sb.phx("restore", "--at", "yesterday", "--to", tmp_path / "x", check=2), 2, "RFC 3339")
    assert_error(sb.phx("restore", "--at", "2026-01-01T00:00:00", check=2), 2, "UTC offset")
    assert_error(sb.phx("list", "--at", "2001-01-01T00:00:00Z", check=2), 2, "no capture covers")
    assert_error(sb.phx("drill", "--at", "2001-01-01T00:00:00Z", check=2), 2, "no capture covers")
    assert_error(sb.phx("restore", "--at", "2001-01-01T00:00:00Z", "--latest", check=2), 2, "--at", "--latest")
    res = sb.phx("restore", "--at", "2001-01-01T00:00:00Z", "--path", "nothing*", "--to", tmp_path / "x", check=2)
    assert_error(res, 2, "--path nothing*", "names no database")
    # A damaged state file, then a last segment that does not authenticate (after `phx key
    # rotate`, or planted): each time a new chain from a new base, never a chain nobody can read.
    (state,) = (sb.root / "xdg-data" / "phoenix" / "watch").glob("*.json")
    state.write_text('{"chain": 7, "sequence": "x", "last": ["../../etc"]}')
    assert sb.phx("watch", "--duration", "0.5", "--no-files", "--json").json()["bases"] == 1
    last = json.loads(state.read_text())["last"]
    segment = sb.repo / "captures" / last
    segment.write_bytes(next(p for p in segment.parent.iterdir() if p.name != last).read_bytes())
    res = sb.phx("watch", "--duration", "0.5", "--no-files", "--json")
    assert res.json()["bases"] == 1 and "cannot be read" in res.err, res
    timeline = sb.phx("list", "--timeline", "--json", check=3).json()
    assert "captures/" + last in timeline["problems"]


def test_a_time_before_any_snapshot_of_the_files_restores_the_databases_and_says_where_the_files_are(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    sb = sandbox
    backup = sb.backup()
    sb.phx("watch", "--duration", "1", "--no-files")  # segments, and no snapshot of the files
    ((start, end),) = _timeline(sb, "home/.argentos/memory.db")
    # A time every captured database is covered at: the watch takes their bases one after the
    # other (a busy machine spreads them over most of its second), and a database not covered at
    # the time restored is an error of the restore.
    for path in ("home/.argentos/observations.db", LOGICAL):
        ((first, last),) = _timeline(sb, path)
        start, end = max(start, first), min(end, last)
    assert start < end
    at = datetime.fromtimestamp((start + end) / 2, UTC).isoformat()
    res = sb.phx("restore", "--at", at, "--to", tmp_path / "at", "--json")
    doc = res.json()
    assert doc["files"] is None and "home/.argentos/memory.db" in [d["path"] for d in doc["databases"]], doc
    assert not (tmp_path / "at" / "workspace").exists()
    (note,) = doc["notices"]
    assert "no file was restored" in note and f"phx restore --backup {backup['id'][:8]}" in note, note
    assert "no file was restored" in res.err


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="reads /proc/PID/maps (Linux)")
def test_a_running_watch_maps_no_library_only_a_backup_uses(sandbox: Sandbox, tmp_path: Path) -> None:
    """The watch runs for weeks: a library it never calls costs its resident memory all along
    (docs/benchmarks.md, "What `phx watch` holds in its steady state"). FastCDC cuts files into
    chunks, which only a snapshot of the files does, in a child process of its own. And one
    OpenSSL: `cryptography`'s, which seals; the system's libcrypto (`hashlib`, `hmac`, `secrets`,
    or the passphrase's scrypt through them) would be a second one, 3.4 MiB held for weeks."""
    sb = sandbox
    log = tmp_path / "watch.log"
    out = open(log, "ab")  # noqa: SIM115 - the child owns it
    proc = subprocess.Popen([PHX, "watch"], env=sb.env, stdin=subprocess.DEVNULL, stdout=out, stderr=out)
    try:
        _wait_for(lambda: _timeline(sb, "home/.argentos/memory.db"), proc)  # capturing: past its start-up
        _wait_for(lambda: _file_snapshots(sb, after=0), proc)  # the files' snapshot (in the child) taken
        maps = Path(f"/proc/{proc.pid}/maps").read_text()
    finally:
        _kill(proc, signal.SIGTERM)
    libraries = {line.split()[-1] for line in maps.splitlines() if line.endswith(".so")}
    assert libraries and not [lib for lib in libraries if "pyfastcdc" in lib], sorted(libraries)
    mapped = {Path(line.split()[-1]).name for line in maps.splitlines() if "/" in line}
    assert not [name for name in mapped if name.startswith("libcrypto.so")], sorted(mapped)


# -- phx schedule install --watch ------------------------------------------------------------


def _no_user_manager(sb: Sandbox, tmp_path: Path) -> dict[str, str]:
    runtime = tmp_path / "runtime"
    runtime.mkdir(mode=0o700)
    return sb.env_with(XDG_RUNTIME_DIR=str(runtime), DBUS_SESSION_BUS_ADDRESS=None, XDG_CONFIG_HOME=None)


def test_the_watch_service_is_written_for_systemd_and_launchd_and_refused_for_cron(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    sb = sandbox
    env = _no_user_manager(sb, tmp_path)
    if subprocess.run(["systemctl", "--user", "show-environment"], env=env, capture_output=True).returncode == 0:
        pytest.skip("a user systemd answers even without a session: not touching it")
    res = sb.phx("schedule", "install", "--watch", "--scheduler", "systemd", env=env, check=2)
    assert_error(res, 2, "systemctl --user", "enable --now phoenix-watch.service")
    unit = sb.home / ".config" / "systemd" / "user" / "phoenix-watch.service"
    text = unit.read_text()
    assert "Type=simple" in text and "Restart=always" in text and "KillSignal=SIGTERM" in text
    assert f"watch --config {sb.config_path}" in text and sb.env["PHX_PASSPHRASE"] not in text
    analyze = shutil.which("systemd-analyze")
    if analyze:
        check = subprocess.run([analyze, "verify", str(unit)], capture_output=True, text=True)
        assert check.returncode == 0, check.stderr
    assert sb.phx("schedule", "remove", "--watch", env=env).out.strip() == "removed the watch service from systemd"
    assert not unit.exists()
    if sys.platform != "darwin":
        res = sb.phx("schedule", "install", "--watch", "--scheduler", "launchd", env=env, check=2)
        assert_error(res, 2, "launchctl bootstrap")
        plist = plistlib.loads((sb.home / "Library/LaunchAgents/com.argentos.phoenix-watch.plist").read_bytes())
        assert plist["KeepAlive"] is True
        assert plist["ProgramArguments"][-3:] == ["watch", "--config", str(sb.config_path)]
        assert sb.phx("schedule", "remove", "--watch", env=env).out.strip() == "removed the watch service from launchd"
    res = sb.phx("schedule", "install", "--watch", "--scheduler", "cron", env=env, check=2)
    assert_error(res, 2, "cron", "cannot keep `phx watch` running")
    res = sb.phx("schedule", "install", "--watch", "--every", "daily", env=env, check=2)
    assert_error(res, 2, "--watch runs all the time")


@pytest.mark.skipif(not HEAVY, reason="PHX_TEST_HEAVY=1: the default run's budget")
def test_a_write_only_repository_takes_segments_that_only_the_identity_reads(make_sandbox: Any, tmp_path: Path) -> None:
    from test_write_only import Reader, writer

    sb, identity = writer(make_sandbox, tmp_path)
    doc = sb.phx("watch", "--duration", "1", "--no-files", "--json").json()
    assert doc["bases"] == 1 and doc["segments"] >= 1, doc
    # The machine that backs up cannot read what it wrote.
    assert_error(sb.phx("list", "--timeline", check=2), 2, "identity")
    reader = Reader(sb, tmp_path / "reader", identity)
    rows = reader.phx("list", "--timeline", "--json").json()["databases"]["home/.argentos/memory.db"]
    at = rows[-1]["to"]
    reader.phx("restore", "--at", at, "--to", tmp_path / "out", "--path", "home/.argentos/memory.db")
    con = sqlite3.connect(tmp_path / "out" / "home/.argentos/memory.db")
    assert [r[0] for r in con.execute("PRAGMA integrity_check")] == ["ok"]
    con.close()
