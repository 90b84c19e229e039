"""Acceptance 7: a backup killed with SIGKILL at a random point leaves a repository that
`phx verify --read-data` passes (notices about leftovers allowed); the dead process's lock does not
block the next backup (it is removed with a notice); the next backup succeeds and restores
exactly; the killed run's temporary database copies are cleaned up.

Each trial gets a fresh repository (made by `phx init`), so every killed backup is a full one.
The delays are seeded: one anywhere in the span (PHX_TEST_HEAVY=1: one in each fifth of it) from 0.05 s to the
measured duration of a whole backup; a kill that comes too late (the backup had finished) is
retried sooner."""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import time
from pathlib import Path

from e2e_support import PHX, Sandbox, assert_restored

TRIALS = 5 if os.environ.get("PHX_TEST_HEAVY") == "1" else 1  # a trial costs 10 s of the CI budget
LOCK_NOTICE = "removed a lock left by a process that no longer runs"


def timeline(sb: Sandbox, repo: Path) -> dict[str, float]:
    """Run one whole backup into a new repository, noting when each kind of object first appears."""
    seen: dict[str, float] = {}
    started = time.monotonic()
    proc = subprocess.Popen([PHX, "backup"], env=sb.env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
    while proc.poll() is None:
        now = time.monotonic() - started
        for kind in ("locks", "data", "index", "snapshots"):
            if kind not in seen and (repo / kind).is_dir() and any(p.is_file() for p in (repo / kind).rglob("*")):
                seen[kind] = now
        time.sleep(0.005)
    seen["exit"] = time.monotonic() - started
    assert proc.returncode == 0
    return seen


def fresh_repository(sb: Sandbox, repo: Path, init_config: Path) -> None:
    shutil.rmtree(repo, ignore_errors=True)
    init_config.unlink(missing_ok=True)
    sb.write_config(backupDir=str(repo))
    sb.phx("init", "--config", init_config, "--workspace", sb.workspace, "--repo", repo, "--encryption", "passphrase")


def kill_backup_after(sb: Sandbox, delay: float) -> bool:
    """Start `phx backup`, SIGKILL it after `delay` seconds; True if it was still running."""
    proc = subprocess.Popen(
        [PHX, "backup", "--json"],
        env=sb.env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    time.sleep(delay)
    running = proc.poll() is None
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    return running


def test_backup_killed_at_random_points(make_sandbox, tmp_path: Path) -> None:
    sb: Sandbox = make_sandbox(size=40_000_000, seed=3)
    state = sb.state()

    fresh_repository(sb, tmp_path / "calibration", tmp_path / "init-calibration.json")
    phases = timeline(sb, tmp_path / "calibration")
    full = phases["exit"]
    print("a whole backup: " + ", ".join(f"{k} at {v:.2f} s" for k, v in phases.items()))

    rng = random.Random(20260315)
    report = []
    for trial in range(TRIALS):
        repo = tmp_path / f"repo-{trial}"
        lo = 0.05 + (full - 0.05) * trial / TRIALS
        delay = rng.uniform(lo, lo + (full - 0.05) / TRIALS)
        for _attempt in range(4):
            fresh_repository(sb, repo, tmp_path / f"init-{trial}.json")
            if kill_backup_after(sb, delay):
                break
            delay *= 0.7  # the backup had already finished: kill sooner
        else:
            raise AssertionError(f"trial {trial}: every backup finished before its kill")

        # A lock object, not the temporary file it is written through (".tmp-..."), if the kill hit then.
        locks = sorted(p for p in (repo / "locks").iterdir() if not p.name.startswith(".tmp-"))
        saved_locks = {p.name: p.read_bytes() for p in locks}
        packs = [p for p in (repo / "data").rglob("*") if p.is_file()]
        report.append(
            f"trial {trial}: killed after {delay:.2f} s, locks={len(locks)}, files in data/={len(packs)}, "
            f"index={len(list((repo / 'index').iterdir()))}, snapshots={len(list((repo / 'snapshots').iterdir()))}"
        )

        # The repository is valid as the crash left it.
        res = sb.phx("verify", "--read-data", "--json", check=None)
        assert res.code == 0, f"{report[-1]}: verify failed:\n{res}"
        doc = res.json()
        assert doc["ok"] is True and doc["errors"] == [], doc
        if saved_locks:
            assert LOCK_NOTICE in res.err, f"{report[-1]}: the dead backup's lock was not reported:\n{res}"
        assert [p for p in (repo / "locks").iterdir() if p in locks] == [], f"{report[-1]}: the dead lock stayed"

        # The dead process's lock does not block the next backup either.
        for name, data in saved_locks.items():
            (repo / "locks" / name).write_bytes(data)
        res = sb.phx("backup", "--json", check=None)
        assert res.code == 0, f"{report[-1]}: the backup after the crash failed:\n{res}"
        if saved_locks:
            assert LOCK_NOTICE in res.err, res
        after = res.json()
        assert after["incomplete"] == [] and all(d["integrity"] == "ok" for d in after["databases"])
        assert [p for p in (repo / "locks").iterdir() if not p.name.startswith(".tmp-")] == []

        # The killed run's temporary database copies are gone.
        stale = [p for p in sb.cache.rglob("*") if p.is_file() and p.suffix == ".db"]
        assert stale == [], f"{report[-1]}: leftover database copies in the cache: {stale}"

        dest = tmp_path / f"restored-{trial}"
        # In this process: the point is what the repository holds (the kill, the verify and the
        # next backup, which report the dead lock, are real `phx` processes).
        restored = sb.phx_here("restore", "--backup", after["id"], "--to", dest, "--json").json()
        assert restored["errors"] == []
        assert_restored(state, dest, f"{report[-1]}: restore after the crash")
        shutil.rmtree(dest)

    print("\n".join(report))
