"""Issue 20, attacked: packs are named, written and fsynced by pack writer threads while the
sealing threads go on. A backup that writes several packs is killed (SIGKILL) just before each
I/O call on the repository's `data/` folder in turn (a write, an fsync, a rename: most of them in
the writer threads, two of which work at once), and afterwards `verify --read-data` passes (no
index names a pack that is not whole on disk), every snapshot restores exactly, and the next
backup succeeds.

Only with PHX_TEST_HEAVY=1 (a trial costs some 20 s; the default run's kill suite,
test_kill_points.py, already kills a backup at a random call).
"""

from __future__ import annotations

import random
import shutil
from pathlib import Path
from typing import Any

import pytest
from test_kill_points import HEAVY, SEED, _backup_check, run_hooked, world_from
from test_kill_points import template as template  # the module's fixture: the same world

pytestmark = pytest.mark.skipif(not HEAVY, reason="PHX_TEST_HEAVY=1: a backup killed at each of its pack I/O calls")


def _with_large_file(w: Any) -> None:
    """20 MB of new incompressible data: two full data packs and a partial one."""
    (w.sb.workspace / "recordings").mkdir(exist_ok=True)
    (w.sb.workspace / "recordings" / "call.bin").write_bytes(random.Random(SEED).randbytes(20_000_000))
    w.current = w.sb.state()


def test_a_backup_killed_at_each_pack_write(template: tuple[Path, dict[str, Any]], tmp_path: Path) -> None:
    calibration = world_from(template, tmp_path / "calibration")
    _with_large_file(calibration)
    match = f"{calibration.sb.repo}/data/"
    kind, total, _ = run_hooked(calibration, ["backup"], env={**calibration.sb.env, "PHX_KILL_MATCH": match})
    assert kind == "calls" and total >= 6, f"the backup made {total} I/O calls on packs"
    shutil.rmtree(calibration.sb.root)
    for at in range(1, total + 1):
        w = world_from(template, tmp_path / f"trial-{at}")
        _with_large_file(w)
        env = {**w.sb.env, "PHX_KILL_MATCH": f"{w.sb.repo}/data/"}
        kind, _n, call = run_hooked(w, ["backup"], kill_at=at, env=env)
        what = f"killed at pack I/O call {at} of {total}: {call}"
        if kind != "killed":
            what = f"kill point {at} of {total} not reached"
        _backup_check(w, what)
        shutil.rmtree(w.sb.root)
