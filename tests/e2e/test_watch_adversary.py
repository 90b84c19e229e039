"""`phx watch` against a careless user and a hostile machine (docs/continuous.md): the machine's
clock set back while it runs, a database replaced by one of another page size. Each time a
restore at a point in time holds exactly what the writer had committed then, or fails closed."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import sqlite3
import subprocess
import textwrap
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from e2e_support import PHX, Sandbox

LOGICAL = "home/.argentos/data/dashboard.db"
HEAVY = os.environ.get("PHX_TEST_HEAVY") == "1"

# Sets the process's wall clock back an hour once the real time passes PHX_TEST_CLOCK_BACK_AT (as
# `date -s` or a bad NTP server would); monotonic time is left alone, as the kernel does.
CLOCK_BACK = textwrap.dedent(
    """
    import os, time
    _at = float(os.environ["PHX_TEST_CLOCK_BACK_AT"])
    _ns, _s = time.time_ns, time.time
    def _time_ns():
        now = _ns()
        return now - 3600 * 10**9 if now >= _at * 1e9 else now
    time.time_ns = _time_ns
    time.time = lambda: _time_ns() / 1e9
    """
)


@contextlib.contextmanager
def _watching(env: dict[str, str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    """`phx watch --no-files` running with `env`, its output in `log`; stopped with SIGTERM (its
    clean stop) when the block ends, so the caller can check its exit code."""
    with open(log, "wb") as out:
        watch = subprocess.Popen(
            [PHX, "watch", "--no-files"], env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=out
        )
    try:
        yield watch
    finally:
        watch.send_signal(signal.SIGTERM)
        watch.wait(timeout=60)


def _table(db: Path, page_size: int = 4096, journal: str = "wal") -> None:
    for suffix in ("", "-wal", "-shm", "-journal"):
        Path(str(db) + suffix).unlink(missing_ok=True)
    con = sqlite3.connect(db, isolation_level=None)
    con.execute(f"PRAGMA page_size={page_size}")
    con.execute(f"PRAGMA journal_mode={journal}")
    con.execute("CREATE TABLE log(k INTEGER PRIMARY KEY, body BLOB)")
    con.execute("INSERT INTO log VALUES (0, randomblob(20000))")
    con.close()


def _commit(db: Path, k: int) -> None:
    con = sqlite3.connect(db, isolation_level=None)
    con.execute("INSERT INTO log VALUES (?, randomblob(3000))", (k,))
    con.close()


def _restored(sb: Sandbox, at: str, dest: Path) -> list[int]:
    doc = sb.phx_here("restore", "--at", at, "--to", dest, "--path", LOGICAL, "--json").json()
    assert not doc["errors"], doc
    con = sqlite3.connect(f"file:{dest / LOGICAL}?immutable=1", uri=True)
    try:
        assert [r[0] for r in con.execute("PRAGMA integrity_check")] == ["ok"]
        return [r[0] for r in con.execute("SELECT k FROM log ORDER BY k")]
    finally:
        con.close()


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat()


def _last_covered(sb: Sandbox) -> str:
    doc = sb.phx_here("list", "--timeline", "--json").json()
    assert not doc["problems"], doc["problems"]
    return str([r for r in doc["databases"][LOGICAL] if r["kind"] == "covered"][-1]["to"])


def _wait_covered(sb: Sandbox, watch: subprocess.Popen[bytes], after: float, log: Path, sleep: float = 1.0) -> None:
    """Until the target holds a segment whose coverage of the database reaches past `after`: the
    watch has taken its base and looked since `after` (a loaded machine may take seconds more
    than a quiet one to start a watch)."""
    deadline = time.monotonic() + 120
    while True:
        rows = sb.phx_here("list", "--timeline", "--json").json()["databases"].get(LOGICAL, [])
        if any(r["kind"] == "covered" and datetime.fromisoformat(r["to"]).timestamp() > after for r in rows):
            return
        assert watch.poll() is None, log.read_text()
        assert time.monotonic() < deadline, f"no coverage past {after} after 120 s: {log.read_text()}"
        time.sleep(sleep)


def test_a_clock_set_back_an_hour_neither_breaks_the_chain_nor_mixes_states(sandbox: Sandbox, tmp_path: Path) -> None:
    sb = sandbox
    db = sb.layout.dashboard_db
    _table(db)
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(CLOCK_BACK)
    step = time.time() + 5.0
    env = sb.env_with(PYTHONPATH=str(site), PHX_TEST_CLOCK_BACK_AT=str(step))
    plog = tmp_path / "watch.log"
    with _watching(env, plog) as watch:
        time.sleep(2.5)
        _commit(db, 1)
        one = time.time()
        time.sleep(max(0.0, step + 1.0 - time.time()))  # the clock is now an hour behind
        _commit(db, 2)
        time.sleep(2.5)
    assert watch.returncode == 0, plog.read_text()
    # The commit after the step is covered (the chain goes on), and a time before the step holds
    # the state of then, not a mixture with what came after.
    assert _restored(sb, _last_covered(sb), tmp_path / "end") == [0, 1, 2], plog.read_text()
    assert _restored(sb, _iso(one + 1.2), tmp_path / "one") == [0, 1]


@pytest.mark.skipif(not HEAVY, reason="PHX_TEST_HEAVY=1: the default run's budget (three replacements)")
def test_a_database_replaced_by_one_of_another_page_size_restores_both_sides(sandbox: Sandbox, tmp_path: Path) -> None:
    sb = sandbox
    db = sb.layout.dashboard_db
    _table(db, 4096)
    new = tmp_path / "new.db"
    plog = tmp_path / "watch.log"
    with _watching(sb.env, plog) as watch:
        time.sleep(2.5)
        for k in range(1, 5):
            _commit(db, k)
            time.sleep(0.3)
        time.sleep(1.0)  # the recovery point: commit 4 is then in every restore
        before = time.time()
        # The careless way to change a page size: a copy, renamed over the live file; three
        # times, half a second apart, so that one lands while commits of the other size wait.
        for r, size in enumerate((8192, 4096, 8192)):
            _table(new, size)
            _commit(new, 10 * r + 10)
            for suffix in ("-wal", "-shm"):
                Path(f"{db}{suffix}").unlink(missing_ok=True)
            os.replace(new, db)
            for k in range(10 * r + 11, 10 * r + 15):
                _commit(db, k)
                time.sleep(0.12)
        time.sleep(2.5)
    assert watch.returncode == 0, plog.read_text()
    assert _restored(sb, _iso(before), tmp_path / "before") == [0, 1, 2, 3, 4]
    assert _restored(sb, _last_covered(sb), tmp_path / "after") == [0, 30, 31, 32, 33, 34], plog.read_text()


def test_a_second_watch_of_the_same_repository_is_refused_and_the_first_goes_on(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    sb = sandbox
    db = sb.layout.dashboard_db
    _table(db)
    plog = tmp_path / "watch.log"
    with _watching(sb.env, plog) as first:
        time.sleep(2.5)
        _commit(db, 1)
        second = sb.phx("watch", "--no-files", "--duration", "3", check=False)
        _commit(db, 2)
        time.sleep(2.0)
    assert first.returncode == 0, plog.read_text()
    assert second.code == 2 and "another `phx watch`" in second.err, second
    assert _restored(sb, _last_covered(sb), tmp_path / "end") == [0, 1, 2]


def test_a_refused_second_watch_does_not_say_it_is_watching(sandbox: Sandbox) -> None:
    """A second `phx watch` printed "watching; SIGTERM or Ctrl-C stops after a last segment" and only
    then refused. The running watch is stood for by its lock on the watch state's `.lock` (taken as
    `ops/watch.py` `_only_watch` takes it), so the second runs in this process."""
    import fcntl

    from phoenix_backup.config import load_config
    from phoenix_backup.ops.context import Environment, open_repository
    from phoenix_backup.ops.watch import state_file

    sb = sandbox
    envx = Environment(env=sb.env)
    repo = open_repository(load_config(sb.config_path, sb.env), envx)
    try:
        lock = state_file(envx, repo.config.id).with_suffix(".lock")
    finally:
        repo.close()
    lock.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.pwrite(fd, b"4242\n", 0)
        second = sb.phx_here("watch", "--no-files", "--duration", "0", code=2)
    finally:
        os.close(fd)
    assert "another `phx watch` (pid 4242) already follows this repository" in second.err, second
    assert "watching" not in second.err, second
    alone = sb.phx_here("watch", "--no-files", "--duration", "0")  # the lock free: it runs, and says so
    assert "phx: watching; SIGTERM or Ctrl-C stops after a last segment" in alone.err, alone


@pytest.mark.skipif(not HEAVY, reason="PHX_TEST_HEAVY=1: the default run's budget (a claim that holds)")
def test_restore_at_of_one_database_leaves_the_files_alone(sandbox: Sandbox, tmp_path: Path) -> None:
    sb = sandbox
    db = sb.layout.dashboard_db
    _table(db)
    sb.phx("watch", "--duration", "3")
    _commit(db, 1)
    sb.phx("watch", "--duration", "2")
    at = _last_covered(sb)
    doc = sb.phx("restore", "--at", at, "--to", tmp_path / "out", "--path", LOGICAL, "--json").json()
    assert not doc["errors"], doc
    assert sorted(p.name for p in (tmp_path / "out").rglob("*") if p.is_file()) == ["dashboard.db"]


@pytest.mark.skipif(not HEAVY, reason="PHX_TEST_HEAVY=1: the default run's budget (a claim that holds)")
def test_vacuum_shrink_external_checkpoint_and_journal_switch_restore_each_state(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    sb = sandbox
    db = sb.layout.dashboard_db
    _table(db)
    plog = tmp_path / "watch.log"
    marks: list[tuple[float, list[int]]] = []
    with _watching(sb.env, plog) as watch:
        time.sleep(2.5)
        for k in range(1, 30):
            _commit(db, k)
        time.sleep(1.2)
        marks.append((time.time(), list(range(30))))
        con = sqlite3.connect(db, isolation_level=None)
        con.execute("DELETE FROM log WHERE k BETWEEN 1 AND 27")
        con.execute("VACUUM")  # the page count shrinks
        con.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
        con.close()
        time.sleep(1.2)
        marks.append((time.time(), [0, 28, 29]))
        # Leaving WAL mode needs the database to itself: the watch's read transaction refuses it
        # (docs/continuous.md, Limits), and the database stays as it was.
        con = sqlite3.connect(db, isolation_level=None, timeout=1)
        with pytest.raises(sqlite3.OperationalError, match="locked"):
            con.execute("PRAGMA journal_mode=DELETE")
        con.execute("INSERT INTO log VALUES (40, randomblob(100))")
        con.close()
        time.sleep(1.5)
        marks.append((time.time(), [0, 28, 29, 40]))
    assert watch.returncode == 0, plog.read_text()
    for i, (when, rows) in enumerate(marks):
        assert _restored(sb, _iso(when), tmp_path / f"m{i}") == rows, (i, plog.read_text())


@pytest.mark.skipif(not HEAVY, reason="PHX_TEST_HEAVY=1: waits out the lock's one-minute lease")
def test_a_full_repository_disk_is_waited_out_without_a_crash(sandbox: Sandbox, tmp_path: Path) -> None:
    sb = sandbox
    db = sb.layout.dashboard_db
    _table(db)
    saved = tmp_path / "saved-repo"
    shutil.copytree(sb.repo, saved)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(sb.repo)], capture_output=True)
    if mounted.returncode:
        pytest.skip(f"cannot mount a small file system here: {mounted.stderr!r}")
    try:
        shutil.copytree(saved, sb.repo, dirs_exist_ok=True)
        plog = tmp_path / "watch.log"
        with _watching(sb.env, plog) as watch:
            time.sleep(3.0)
            filler = sb.repo / "filler"
            with open(filler, "wb", buffering=0) as f:
                for block in (1 << 16, 1 << 12):  # to the last page: not even a lock file fits
                    with contextlib.suppress(OSError):
                        while True:
                            f.write(b"\0" * block)
            _commit(db, 1)
            time.sleep(70)  # past the lease: the lock is taken again while the disk is full
            assert watch.poll() is None, plog.read_text()
            filler.unlink()
            _commit(db, 2)
            time.sleep(3.0)
        text = plog.read_text()
        assert watch.returncode == 0, text
        assert text.count("no space left") <= 3, text
        assert _restored(sb, _last_covered(sb), tmp_path / "end") == [0, 1, 2]
    finally:
        subprocess.run(["umount", "-l", str(sb.repo)], check=False)


@pytest.mark.skipif(not HEAVY, reason="PHX_TEST_HEAVY=1: waits out the lock's one-minute lease")
def test_prune_gets_in_within_the_lease_while_the_watch_runs(sandbox: Sandbox, tmp_path: Path) -> None:
    sb = sandbox
    plog = tmp_path / "watch.log"
    with _watching(sb.env, plog):
        time.sleep(3.0)
        deadline, done = time.time() + 75, None
        while time.time() < deadline and done is None:
            res = sb.phx("prune", check=False)
            done = res if res.code == 0 else None
            time.sleep(0.5)
    assert done is not None, "no prune got in within 75 s of the watch's lease"


def _assert_a_gap(
    sb: Sandbox, tmp_path: Path, watch: subprocess.Popen[bytes], log: str, before: float, two: float
) -> None:
    """The watch, stalled from about `before` for 7 s while commit 2 was made at `two`, ended
    well and recorded the stall as a gap: a restore in it exits 2 writing nothing; the range
    before it ends by `before` (the last look, which had seen commit 1) and restores [0, 1]; the
    last state restores [0, 1, 2]."""
    assert watch.returncode == 0, log
    res = sb.phx("restore", "--at", _iso(two + 4), "--to", tmp_path / "mid", "--path", LOGICAL, check=2)
    assert "no capture covers" in res.err, res
    assert not (tmp_path / "mid").exists()
    rows = sb.phx_here("list", "--timeline", "--json").json()["databases"][LOGICAL]
    covered = [r for r in rows if r["kind"] == "covered"]
    assert len(covered) == 2 and datetime.fromisoformat(covered[0]["to"]).timestamp() <= before, (covered, log)
    assert _restored(sb, covered[0]["to"], tmp_path / "before") == [0, 1]
    assert _restored(sb, _last_covered(sb), tmp_path / "end") == [0, 1, 2]


def test_a_watch_stopped_for_seconds_records_a_gap_not_coverage_of_the_old_state(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    """A watch that does not poll for a while (SIGSTOP here; starved or blocked alike) sees the
    commits made meanwhile only when it looks again: the seconds in between are a gap. Before, the
    range ran on through them, and a restore there gave the state from before the stop, without
    commits made seconds earlier."""
    sb = sandbox
    db = sb.layout.dashboard_db
    _table(db)
    plog = tmp_path / "watch.log"
    with _watching(sb.env, plog) as watch:
        _wait_covered(sb, watch, 0.0, plog, 0.2)  # the watch follows the database (not still starting)
        _commit(db, 1)
        _wait_covered(sb, watch, time.time() + 0.5, plog, 0.2)  # and has seen commit 1
        before = time.time()
        os.kill(watch.pid, signal.SIGSTOP)
        try:
            time.sleep(0.5)
            _commit(db, 2)
            two = time.time()
            time.sleep(7)
        finally:
            os.kill(watch.pid, signal.SIGCONT)
        time.sleep(2)
    _assert_a_gap(sb, tmp_path, watch, plog.read_text(), before, two)


# Makes the watch's poll loop stall (7 s) inside one look, right after the capture read the
# database and before the look is timed, once the file PHX_TEST_STALL_FLAG names appears: what a
# SIGSTOP, a swap storm or the CPU starvation of a loaded machine does at that instant.
STALL_IN_LOOK = textwrap.dedent(
    """
    import os, time
    from pathlib import Path
    from phoenix_backup.sources import sqlite_capture
    _flag = Path(os.environ["PHX_TEST_STALL_FLAG"])
    _capture = sqlite_capture.SqliteCapture.capture
    def capture(self):
        image = _capture(self)
        if _flag.exists():
            _flag.unlink()
            _flag.with_suffix(".stalled").touch()
            time.sleep(7)
        return image
    sqlite_capture.SqliteCapture.capture = capture
    """
)


def test_a_stall_between_a_look_and_its_time_is_a_gap_not_coverage(sandbox: Sandbox, tmp_path: Path) -> None:
    """The poll loop stalls seconds right after a capture read the database, before the look is
    timed: that look's state (read before a commit made during the stall) must not be recorded as
    held until after the stall. Before, it was (the stall was inside the look, not between two),
    no gap was recorded, and a restore in the stall gave the old state without the commit made
    seconds earlier."""
    sb = sandbox
    db = sb.layout.dashboard_db
    _table(db)
    site = tmp_path / "stall-site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(STALL_IN_LOOK)
    flag = tmp_path / "stall.flag"
    env = {**sb.env, "PYTHONPATH": str(site), "PHX_TEST_STALL_FLAG": str(flag)}
    plog = tmp_path / "watch.log"
    with _watching(env, plog) as watch:
        _wait_covered(sb, watch, 0.0, plog, 0.2)
        _commit(db, 1)
        _wait_covered(sb, watch, time.time() + 0.5, plog, 0.2)
        flag.touch()
        deadline = time.time() + 10
        while not flag.with_suffix(".stalled").exists() and time.time() < deadline:
            time.sleep(0.05)
        assert flag.with_suffix(".stalled").exists(), plog.read_text()
        before = time.time()
        time.sleep(0.5)
        _commit(db, 2)
        two = time.time()
        time.sleep(8.5)  # the stall ends at before + 7
        assert watch.poll() is None, plog.read_text()
    _assert_a_gap(sb, tmp_path, watch, plog.read_text(), before, two)
