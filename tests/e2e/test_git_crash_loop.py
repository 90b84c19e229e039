"""Backups to a Git target (a local bare repository, replicated to after the local one), SIGKILLed at random points
of their I/O (tests/e2e/killpoint.py: every write, fsync, rename, unlink of the `phx` process and
every object the target writes or deletes), one after another in the same repository: after each
kill the next backup succeeds with nothing repaired by hand, `phx verify` passes on both targets,
and every snapshot committed so far restores byte for byte from each.

The default run kills 1 backup (then backs up again); PHX_TEST_HEAVY=1 kills 20.
"""

from __future__ import annotations

import os
import random
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import killpoint
from e2e_support import Sandbox, assert_restored

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "integration"))
from moto_support import bare_repo, git

HEAVY = os.environ.get("PHX_TEST_HEAVY") == "1"
SEED = 20261206
RUNS = 20 if HEAVY else 1


def _backup_hooked(sb: Sandbox, point: int, report: Path) -> subprocess.CompletedProcess[str]:
    env = sb.env_with(PHX_KILL_AT=str(point), PHX_KILL_REPORT=str(report), PHX_KILL_SEED=str(point))
    argv = [sys.executable, str(killpoint.SCRIPT), "backup", "--json"]
    return subprocess.run(argv, env=env, capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=300)


def _every_snapshot_restores(
    sb: Sandbox, states: dict[str, dict[str, Any]], restore: dict[str, dict[str, Any]], out: Path, what: str
) -> None:
    """Both targets verify and list every snapshot of `states`; those of `restore` restore exactly.
    In this process (`phx_here`): the point is what the targets hold, not the process boundary (the
    backups and their kills are real `phx` processes)."""
    for target in ("local", "git"):
        doc = sb.phx_here("verify", "--json", "--target", target).json()
        assert doc["ok"], f"{what}, {target}: {doc}"
        listed = sb.phx_here("list", "--json", "--target", target).json()
        held = {s["id"] for s in listed}
        assert set(states) <= held, f"{what}, {target}: snapshots lost: {sorted(set(states) - held)}"
        for sid, state in restore.items():
            restored = sb.phx_here("restore", "--backup", sid, "--to", out, "--json", "--target", target).json()
            assert restored["errors"] == [], f"{what}, {target}: {restored}"
            assert_restored(state, out, f"{what}, {target}, snapshot {sid[:8]}")
            shutil.rmtree(out)


def test_backups_to_a_git_target_killed_at_random_points_lose_nothing(make_sandbox, tmp_path: Path) -> None:
    sb: Sandbox = make_sandbox()
    remote = bare_repo(sb.root / "remote.git")
    sb.env["PHX_DATA_DIR"] = str(sb.root / "data")
    sb.write_config(targets={"local": {"enabled": True}, "git": {"enabled": True, "repo": str(remote)}})
    states = {sb.backup()["id"]: sb.state()}

    # How many counted calls a backup of one changed file makes (the kill points to draw from).
    (sb.workspace / "MEMORY.md").write_text("# Memory\ncalibration\n")
    res = _backup_hooked(sb, 0, tmp_path / "count")
    outcome, total, _ = killpoint.read_report(tmp_path / "count")
    assert res.returncode == 0 and outcome == "calls" and total > 20, (outcome, total, res.stderr)
    states[[s["id"] for s in sb.snapshots()][-1]] = sb.state()

    rng = random.Random(SEED)
    for run in range(RUNS):
        (sb.workspace / "MEMORY.md").write_text(f"# Memory\nrun {run}\n" + "x" * rng.randrange(50_000))
        (sb.workspace / f"notes-{run}.md").write_bytes(os.urandom(rng.randrange(1, 300_000)))
        point = rng.randrange(1, total + 1)
        res = _backup_hooked(sb, point, tmp_path / f"kill{run}")
        outcome, _n, call = killpoint.read_report(tmp_path / f"kill{run}")
        what = f"run {run}: killed at call {point} of {total}, {call}"
        if outcome != "killed":  # this backup made fewer calls: it finished
            assert res.returncode == 0, (what, res.stderr)
        else:
            assert res.returncode == -9, (what, res.returncode, res.stderr)
        doc = sb.backup()  # the next backup: nothing repaired by hand
        states[doc["id"]] = sb.state()
        # Every snapshot listed; the first and the last two (one may be the killed backup's)
        # restored now, every one at the end.
        kept = [*states][:1] + [*states][-2:]
        _every_snapshot_restores(sb, states, {sid: states[sid] for sid in kept}, tmp_path / "out", what)
    _every_snapshot_restores(sb, states, states, tmp_path / "out", "at the end")
    fsck = git("fsck", "--no-progress", cwd=remote)
    assert "error" not in fsck.lower(), fsck
