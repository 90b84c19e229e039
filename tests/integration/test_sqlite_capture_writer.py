"""Capture under a real writer process: every captured state is one the writer committed.

The writer (`sqlite_states.WRITER`) commits transaction after transaction, checkpoints with every
mode (so the WAL is reset under the capture), reconnects now and then, and records each k only
after its COMMIT returned; transactions of every 25th k spill into the WAL before they commit.
While it runs, the capture is polled again and again, takes over checkpoints at a threshold and
sometimes lets go of its read transaction. Each image must:
- pass `integrity_check` once written to a file;
- hold exactly the rows the writer's transactions 1..k produce, for a k between the last one
  logged before the capture and the one after the last logged after it (its COMMIT may have
  returned without being logged yet);
- when the capture claims continuity, differ from the previous image only in pages it names.
The writer is killed with SIGKILL at random points (often inside a transaction) and restarted;
the capture carries on. `PHX_TEST_HEAVY=1` runs longer trials, more seeds and more kills.
"""

from __future__ import annotations

import os
import random
import signal
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from phoenix_backup.sources.sqlite_capture import SqliteCapture
from sqlite_states import Simulation, create_schema, logged, pages_differing, start_writer, state_of

HEAVY = os.environ.get("PHX_TEST_HEAVY") == "1"
TRIALS = [(seed, 25.0, 6) for seed in range(6)] if HEAVY else [(1, 4.0, 2)]
PAGE_SIZES = [1024, 4096, 65536] if HEAVY else [4096]


@pytest.mark.parametrize(("seed", "seconds", "kills"), TRIALS)
@pytest.mark.parametrize("page_size", PAGE_SIZES)
def test_every_captured_state_is_a_committed_one(
    tmp_path: Path, seed: int, seconds: float, kills: int, page_size: int
) -> None:
    rng = random.Random(seed)
    db = tmp_path / "agent.db"
    log = tmp_path / "committed.log"
    create_schema(db, "wal", page_size)
    simulation = Simulation()
    # A slow writer sleeps inside its transactions, so that kills land mid-transaction.
    writer = start_writer(db, log, seed, slow=0.002)
    kill_times = sorted(rng.uniform(0.2, seconds * 0.8) for _ in range(kills))
    started = time.monotonic()
    states: set[int] = set()
    claims = checkpoints = attempts = 0
    previous: bytes | None = None
    capture = SqliteCapture(db)
    try:
        while time.monotonic() - started < seconds:
            if kill_times and time.monotonic() - started >= kill_times[0]:
                kill_times.pop(0)
                os.kill(writer.pid, signal.SIGKILL)
                writer.wait()
                before_kill = logged(log)
                image = capture.capture()
                check, k, rows = state_of(image[0 : len(image)], tmp_path / "scratch")
                assert check == ["ok"]
                assert k in (before_kill, before_kill + 1), (k, before_kill)
                assert rows == simulation.items_at(k)
                previous = image[0 : len(image)]
                writer = start_writer(db, log, seed + len(kill_times) + 1, slow=0.002)
                continue
            low = logged(log)
            image = capture.capture()
            data = image[0 : len(image)]
            high = logged(log)
            check, k, rows = state_of(data, tmp_path / "scratch")
            assert check == ["ok"], check
            assert low <= k <= high + 1, (low, k, high)
            assert rows == simulation.items_at(k), f"the state captured at k={k} is not the writer's"
            if capture.pinned:
                # The connection's read transaction sees the very same state (the integrity
                # check and row counts of a backup run there).
                assert capture.connection.execute("SELECT k FROM meta").fetchone()[0] == k
            if image.changed is not None and previous is not None:
                claims += 1
                missed = pages_differing(previous, data, image.page_size) - image.changed
                assert not missed, f"pages {sorted(missed)} changed but were not named"
            states.add(k)
            previous = data
            if image.wal_frames > 200:
                attempts += 1
                checkpoints += capture.checkpoint() is not None
            if rng.random() < 0.05:
                capture.release()
    finally:
        capture.close()
        writer.kill()
        writer.wait()
    assert len(states) >= 10, f"only {len(states)} distinct states were captured: the writer made no progress"
    assert claims >= 5, "the capture never proved continuity"
    assert checkpoints >= 1, f"the capture never took over a checkpoint ({attempts} attempts)"
