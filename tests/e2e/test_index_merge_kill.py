"""The day's prune after a backup merges the index objects once more than MAX_INDEX_OBJECTS are
live, though it has nothing else to do (`retention.last: -1`: nothing is ever forgotten). Real
`phx backup` processes, SIGKILLed at the changes after the backup's commit point
(tests/e2e/killpoint.py): whatever the point, the repository verifies with its data read, every
snapshot restores exactly, and the next day's prune finishes the merge.

The default run kills at a sample of the points; PHX_TEST_HEAVY=1 at every one.
"""

from __future__ import annotations

import os
import random
import shutil
import time
from pathlib import Path
from typing import Any

import pytest
from e2e_support import Sandbox, assert_restored, new_sandbox, retention_only
from test_retention_adversary import _hooked_backup

from phoenix_backup.repo.prune import MAX_INDEX_OBJECTS
from phoenix_backup.sample import layout_for

HEAVY = os.environ.get("PHX_TEST_HEAVY") == "1"
SEED = 20261206
KILL_TRIALS = 1


def _index_objects(sb: Sandbox) -> int:
    return sum(1 for p in (sb.repo / "index").iterdir() if not p.name.startswith("."))


def _prune_due(sb: Sandbox) -> None:
    """A day later for the daily prune: its state forgotten, every pack older than the stale age."""
    (sb.home / ".argentos" / "backup" / "prune.json").unlink(missing_ok=True)
    when = time.time() - 2 * 3600
    for path in sb.repo.rglob("*"):
        if path.is_file() and (path.parts[-3] == "data" or path.name.startswith(".tmp-")):
            os.utime(path, (when, when))


@pytest.fixture(scope="module")
def piled(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, dict[str, Any]]]:
    """MAX_INDEX_OBJECTS + 1 backups, one index object each, and the state each snapshot holds."""
    root = tmp_path_factory.mktemp("index-merge") / "world"
    root.mkdir()
    sb = new_sandbox(root)
    sb.write_config(retention=retention_only(last=-1))
    states: dict[str, dict[str, Any]] = {}
    for day in range(MAX_INDEX_OBJECTS + 1):
        (sb.workspace / "day.txt").write_text(f"day {day}\n" * (day + 1))
        # In this process: the point is the pile of index objects (the backups whose prune merges
        # them, and their kills, are real `phx` processes).
        doc = sb.phx_here("backup", "--json").json()
        states[doc["id"]] = sb.state()
    assert _index_objects(sb) == MAX_INDEX_OBJECTS + 1
    shutil.rmtree(sb.cache)
    return root, states


def _copy(piled: tuple[Path, dict[str, dict[str, Any]]], dest: Path) -> Sandbox:
    shutil.copytree(piled[0], dest, symlinks=True)
    sb = Sandbox(dest, layout_for(dest / "sample"))
    (sb.workspace / "day.txt").write_text("the last day\n")
    _prune_due(sb)
    return sb


def _every_snapshot_restores(sb: Sandbox, states: dict[str, dict[str, Any]], out: Path, what: str) -> None:
    verify = sb.phx("verify", "--read-data", "--json", check=None)
    assert verify.code == 0 and verify.json()["ok"], f"{what}: {verify}"
    held = {s["id"] for s in sb.snapshots()}
    assert set(states) <= held, f"{what}: snapshots lost"
    # Each snapshot's restore in this process (the point is what the repository holds, not the
    # process boundary: verify above, the backups and the kills are real `phx` processes).
    for sid, state in states.items():
        doc = sb.phx_here("restore", "--backup", sid, "--to", out, "--json").json()
        assert doc["errors"] == [], f"{what}: {doc}"
        assert_restored(state, out, f"{what}, snapshot {sid[:8]}")
        shutil.rmtree(out)


def test_the_daily_prune_merges_the_index_objects(piled, tmp_path: Path) -> None:
    sb = _copy(piled, tmp_path / "sb")
    doc = sb.backup()
    assert doc["retention"]["pruned"] == {"local": 0}, doc["retention"]
    assert _index_objects(sb) == 1, "one index object replaces them all"
    _every_snapshot_restores(sb, {**piled[1], doc["id"]: sb.state()}, tmp_path / "out", "after the merge")


def test_killed_during_the_merge_loses_nothing(piled, tmp_path: Path) -> None:
    calibration = _copy(piled, tmp_path / "calibration")
    kind, total, _call, proc = _hooked_backup(calibration, 0, PHX_KILL_ONLY="changes")
    assert kind == "calls" and proc.returncode == 0, (kind, total, proc.stderr)
    # The lock, the merged index, every old index object, the lock's removal, the prune state.
    assert total >= MAX_INDEX_OBJECTS + 4 and _index_objects(calibration) == 1, total
    shutil.rmtree(calibration.root)

    every = range(1, total + 1)
    points = list(every) if HEAVY else sorted(random.Random(SEED).sample(every, KILL_TRIALS))
    for at in points:
        sb = _copy(piled, tmp_path / f"kill-{at}")
        kind, _n, call, proc = _hooked_backup(sb, at, PHX_KILL_ONLY="changes")
        what = f"killed at change {at} of {total} after the commit point, {call}"
        assert kind == "killed", f"{what}: not killed ({proc.returncode}, {proc.stderr})"
        new = [s["id"] for s in sb.snapshots() if s["id"] not in piled[1]]
        assert len(new) == 1, f"{what}: the committed snapshot is missing"
        states = {**piled[1], new[0]: sb.state()}
        _every_snapshot_restores(sb, states, tmp_path / "out", what)
        # The dead process's lock goes (it is this host's, its process gone); the next day's prune
        # finishes the merge.
        _prune_due(sb)
        pruned = sb.phx("prune", "--json").json()["targets"]["local"]
        assert pruned["ok"], f"{what}: {pruned}"
        assert _index_objects(sb) == 1, what
        _every_snapshot_restores(sb, states, tmp_path / "out", f"{what}, then the next prune")
        shutil.rmtree(sb.root)
