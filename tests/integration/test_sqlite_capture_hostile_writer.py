"""Capture under a writer process that also VACUUMs, switches WAL -> DELETE -> WAL, turns
synchronous off, checkpoints with every mode and is SIGKILLed: every captured state is one it
committed, or the capture fails with a clear error (never other bytes).

The writer is `sqlite_states.WRITER` plus those operations between transactions (a switch out of
WAL mode succeeds only while the capture's connection is closed, as between two backups, which it
is now and then). Frames are read by their headers only (sources/sqlite_wal.py): this trial is what says
that reading the frames up to the wal-index's last one, as SQLite's readers do, holds under
them. `PHX_TEST_HEAVY=1` runs longer trials and more seeds."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from phoenix_backup.sources.sqlite_capture import CaptureError, SqliteCapture
from sqlite_states import Simulation, create_schema, logged, pages_differing, start_writer, state_of

HEAVY = os.environ.get("PHX_TEST_HEAVY") == "1"
TRIALS = [(seed, 30.0) for seed in range(4)] if HEAVY else [(7, 4.0)]

# Between transactions, after the writer's own checkpoints and reconnections (`roll` is its draw).
HOSTILE = textwrap.indent(
    textwrap.dedent(
        """
        if roll > 0.85:
            con.execute("PRAGMA busy_timeout=200")
            try:
                what = rng.random()
                if what < 0.4:
                    con.execute("VACUUM")
                elif what < 0.8:
                    con.execute("PRAGMA journal_mode=DELETE").fetchall()
                    con.execute("PRAGMA journal_mode=WAL").fetchall()
                else:
                    con.execute(f"PRAGMA synchronous={rng.choice(['OFF', 'NORMAL', 'FULL'])}")
            except sqlite3.OperationalError:
                pass  # the capture holds its read transaction
            con.execute("PRAGMA journal_mode=WAL").fetchall()
            con.execute("PRAGMA busy_timeout=30000")
        """
    ),
    "    ",
)


def _start(db: Path, log: Path, seed: int) -> subprocess.Popen[str]:
    return start_writer(db, log, seed, slow=0.002, more=HOSTILE)


@pytest.mark.parametrize(("seed", "seconds"), TRIALS)
def test_every_state_captured_under_vacuum_and_journal_switches_is_committed(
    tmp_path: Path, seed: int, seconds: float
) -> None:
    rng = random.Random(seed)
    db, log = tmp_path / "agent.db", tmp_path / "committed.log"
    create_schema(db, "wal", 4096)
    simulation = Simulation()
    writer = _start(db, log, seed)
    capture = SqliteCapture(db)
    states: set[int] = set()
    previous: bytes | None = None
    started = time.monotonic()
    try:
        while time.monotonic() - started < seconds:
            if rng.random() < 0.01:
                os.kill(writer.pid, signal.SIGKILL)
                writer.wait()
                writer = _start(db, log, rng.randrange(1 << 30))
            low = logged(log)
            try:
                image = capture.capture()
                data = image[0 : len(image)]
            except CaptureError as exc:
                assert "Traceback" not in str(exc) and str(db) in str(exc), exc
                capture.close()
                capture = SqliteCapture(db)
                previous = None
                continue
            high = logged(log)
            check, k, rows = state_of(data, tmp_path / "scratch")
            assert check == ["ok"], check
            assert low <= k <= high + 1, (low, k, high)
            assert rows == simulation.items_at(k), f"the state captured at k={k} is not the writer's"
            if image.changed is not None and previous is not None:
                missed = pages_differing(previous, data, image.page_size) - image.changed
                assert not missed, f"pages {sorted(missed)} changed but were not named"
            states.add(k)
            previous = data
            if image.wal_frames > 200:
                capture.checkpoint()
            if rng.random() < 0.1:
                # As between two backups (the position kept): with the capture's connection
                # closed, the writer's switch out of WAL mode gets through.
                capture.close()
                time.sleep(rng.uniform(0, 0.3))
    finally:
        capture.close()
        writer.kill()
        writer.wait()
    assert len(states) >= 10, f"only {len(states)} distinct states were captured"
