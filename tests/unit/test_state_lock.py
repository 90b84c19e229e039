"""The state file (`~/.argentos/backup/.last-backup`) is read, changed and written under a lock:
a `phx watch` recording a base's integrity check and a backup writing its outcome at the same
moment never lose each other's records (state.py `_locked`)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from phoenix_backup.state import TargetOutcome, integrity_checks, read_state, write_state

ROUNDS = 400 if os.environ.get("PHX_TEST_HEAVY") == "1" else 50

_WRITER = """
import sys
from pathlib import Path
from phoenix_backup.state import IntegrityCheck, TargetOutcome, record_integrity_checks, write_state
path, who, rounds = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
sys.stdout.write("ready\\n"); sys.stdout.flush(); sys.stdin.readline()
for i in range(rounds):
    if who == "backup":
        write_state(timestamp=1_700_000_000 + i, backup_path="/r", compression=True, success=True,
                    snapshot_id=f"s{i}", snapshot_name=f"n{i}", error=None,
                    targets={"local": TargetOutcome(True)}, scope="full", path=path)
    check = IntegrityCheck("2026-12-05T10:00:00+00:00", "ok", f"s{i}", "watch", "2026-12-05T10:00:01+00:00")
    record_integrity_checks({f"{who}/{i}.db": check}, path)
"""


def test_two_processes_writing_the_state_file_at_once_lose_no_record(tmp_path: Path) -> None:
    path = tmp_path / "backup" / ".last-backup"
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _WRITER, str(path), who, str(ROUNDS)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for who in ("backup", "watch")
    ]
    for p in procs:  # both started (the interpreter's start-up is slow), then both go at once
        assert p.stdout is not None and p.stdout.readline() == "ready\n"
    for p in procs:
        assert p.stdin is not None
        p.stdin.write("go\n")
        p.stdin.flush()
    for p in procs:
        assert p.wait(timeout=120) == 0
    checks = integrity_checks(path)
    missing = [f"{who}/{i}.db" for who in ("backup", "watch") for i in range(ROUNDS) if f"{who}/{i}.db" not in checks]
    assert missing == [], f"{len(missing)} of {2 * ROUNDS} integrity records were lost, e.g. {missing[:3]}"
    state = read_state(path)
    assert state is not None and state["snapshotId"] == f"s{ROUNDS - 1}"
    assert json.loads(path.read_text())["targetsLastSuccess"]["local"]["snapshotId"] == f"s{ROUNDS - 1}"


def test_a_state_folder_that_cannot_take_a_lock_file_still_gets_its_record(tmp_path: Path) -> None:
    folder = tmp_path / "backup"
    folder.mkdir()
    path = folder / ".last-backup"
    (folder / ".last-backup.lock").mkdir()  # not a file: the lock cannot be taken
    write_state(
        timestamp=1_700_000_000,
        backup_path="/r",
        compression=True,
        success=True,
        snapshot_id="s",
        snapshot_name="n",
        error=None,
        targets={"local": TargetOutcome(True)},
        scope="full",
        path=path,
    )
    state = read_state(path)
    assert state is not None and state["snapshotId"] == "s"
