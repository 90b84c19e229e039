"""Issue #5, interruption: an in-place restore killed with SIGKILL at a random point leaves every
file and database either old or new (never torn, nothing half-written under its real name); the
same restore run again completes it; restoring the safety snapshot rolls everything back, deleting
the files the restore had created.

The delays are seeded: two anywhere in the measured duration of a whole restore (planning, blob
checks, safety snapshot), the others (two; four with PHX_TEST_HEAVY=1) at random points after the
safety snapshot is committed, so most kills land while files are written, deleted and databases
applied.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from e2e_support import DATABASES, PHX, Sandbox, db_dump, file_manifest, integrity
from safe_restore_support import assert_state, build_template, change_workspace, copy_template

from phoenix_backup.sample import layout_for

# Two kills anywhere in the run, the others after the safety snapshot's commit: two by default,
# four with PHX_TEST_HEAVY=1.
TRIALS = 6 if os.environ.get("PHX_TEST_HEAVY") == "1" else 4
RESTORE = ("restore", "--latest", "--yes", "--delete")


@pytest.fixture(scope="module")
def changed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any], dict[str, Any]]:
    """A backed-up sample changed by a day of agent work: (its folder, the snapshot's state, the state now)."""
    template = tmp_path_factory.mktemp("crash-template")
    build_template(template)
    root = tmp_path_factory.mktemp("crash-changed") / "sb"
    sb = copy_template(template, root)
    snapshot_state = sb.state()
    change_workspace(sb)
    return root, snapshot_state, sb.state()


def content(manifest: dict[str, tuple[Any, ...]]) -> dict[str, tuple[Any, ...]]:
    """What makes a file old or new: its bytes (size, SHA-256), or a link's target."""
    out = {}
    for rel, entry in manifest.items():
        if entry[0] == "file":
            out[rel] = ("file", entry[3], entry[4])
        elif entry[0] == "symlink":
            out[rel] = ("symlink", entry[1])
    return out


def assert_old_or_new(sb: Sandbox, before: dict[str, Any], snapshot: dict[str, Any], delay: float) -> None:
    old = content(before["workspace"])
    new = content(snapshot["workspace"])
    now = content(file_manifest(sb.workspace))
    leftovers = [rel for rel in now if Path(rel).name.startswith(".phx-tmp-")]
    for rel in sorted(set(old) | set(new) | set(now)):
        if rel in leftovers:
            continue  # a temporary file: never under a real name, removed by the next restore
        assert now.get(rel) in (old.get(rel), new.get(rel)), (
            f"killed after {delay:.2f} s: {rel} is neither old nor new: {now.get(rel)}"
        )
    for db in DATABASES:
        path = sb.db_path(db)
        assert integrity(path) == ["ok"], f"killed after {delay:.2f} s: {db} fails integrity_check"
        rows = db_dump(path)
        assert rows in (before["databases"][db], snapshot["databases"][db]), (
            f"killed after {delay:.2f} s: {db} is neither the old nor the restored database"
        )


def kill_restore(sb: Sandbox, delay: float, *, after_commit: bool, at_first_write: bool = False) -> bool:
    """Start the restore and SIGKILL it `delay` seconds after it started or, with `after_commit`,
    after its safety snapshot was committed (with `at_first_write`, then as soon as a file or
    database changes); True if it was still running then."""
    snapshots = sb.repo / "snapshots"
    count = len(list(snapshots.iterdir()))
    proc = subprocess.Popen(
        [PHX, *RESTORE], env=sb.env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    if after_commit:
        while proc.poll() is None and len(list(snapshots.iterdir())) == count:
            time.sleep(0.002)
    if at_first_write:
        seen = _fingerprint(sb)
        while proc.poll() is None and _fingerprint(sb) == seen:
            pass
    time.sleep(delay)
    running = proc.poll() is None
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    return running


def _fingerprint(sb: Sandbox) -> list[tuple[str, int, int]]:
    """Cheap signature of what a restore writes under real names: names, sizes and mtimes of files
    and databases (its temporary files, written first, and the folders' mtimes they move are not
    a change of the workspace)."""
    out = []
    for base in (sb.workspace, sb.layout.argentos):
        # os.walk, not rglob: a folder the restore removes between its listing and its reading is
        # skipped (rglob raised FileNotFoundError for it: the watcher failed, not the restore).
        for folder, dirs, files in os.walk(base):
            links = [d for d in dirs if os.path.islink(os.path.join(folder, d))]  # not walked into
            for name in files + links:
                if name.startswith(".phx-tmp-"):
                    continue
                path = os.path.join(folder, name)
                try:
                    st = os.lstat(path)
                except FileNotFoundError:
                    continue
                out.append((path, st.st_size, st.st_mtime_ns))
    return sorted(out)


def timeline(sb: Sandbox) -> tuple[float, float, float]:
    """Run one whole restore, watching it: (seconds until its safety snapshot was committed, until
    the last file or database changed, until it exited)."""
    snapshots = sb.repo / "snapshots"
    count = len(list(snapshots.iterdir()))
    started = time.monotonic()
    committed = last_change = 0.0
    seen = _fingerprint(sb)
    proc = subprocess.Popen([PHX, *RESTORE], env=sb.env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
    while proc.poll() is None:
        if not committed and len(list(snapshots.iterdir())) > count:
            committed = time.monotonic() - started
        now = _fingerprint(sb)
        if committed and now != seen:
            last_change = time.monotonic() - started
        seen = now
        time.sleep(0.002)
    duration = time.monotonic() - started
    assert proc.returncode == 0 and committed, "the restore failed or took no safety snapshot"
    return committed, max(last_change, committed + 0.05), duration


def test_sigkill_at_random_points(changed: tuple[Path, dict[str, Any], dict[str, Any]], tmp_path: Path) -> None:
    root, snapshot_state, before = changed

    probe = tmp_path / "probe"
    shutil.copytree(root, probe, symlinks=True)
    sb = Sandbox(probe, layout_for(probe / "sample"))
    committed, last_change, duration = timeline(sb)
    assert_state(snapshot_state, sb.state(), "an uninterrupted restore")
    shutil.rmtree(probe)

    # Two kills anywhere in the run; the others at random points after the safety snapshot is
    # committed, while files and databases are being written.
    rng = random.Random(5)
    plan = [(0.05 + (duration - 0.05) * (i + rng.random()) / 2, False) for i in range(2)]
    plan += [((last_change - committed) * rng.random(), True) for _ in range(TRIALS - 2)]
    done: list[tuple[float, bool, str]] = []
    for delay, after_commit in plan:
        done.append(trial(tmp_path / f"trial{len(done)}", root, snapshot_state, before, delay, after_commit))
    # Timing on a loaded machine varies (the writes may last a few hundredths of a second): if no
    # kill landed mid-write, a few more at the first change of a file or database after the commit.
    while not any(o == "partial" for _, _, o in done) and len(done) < TRIALS + 4:
        done.append(trial(tmp_path / f"trial{len(done)}", root, snapshot_state, before, 0.0, True, first_write=True))
    print(
        f"restore took {duration:.2f} s (safety snapshot at {committed:.2f} s, writes until {last_change:.2f} s); "
        "kills: " + ", ".join(f"{d:.2f} s{' after the commit' if c else ''} -> {o}" for d, c, o in done)
    )
    assert any(o == "partial" for _, _, o in done), "no kill landed while the restore was writing"


def trial(
    folder: Path,
    root: Path,
    snapshot_state: dict[str, Any],
    before: dict[str, Any],
    delay: float,
    after_commit: bool,
    *,
    first_write: bool = False,
) -> tuple[float, bool, str]:
    """Kill one restore of a fresh copy; check old-or-new, completion and rollback. Returns
    (the delay used, whether after the commit, what the kill left: untouched, partial, complete)."""
    shutil.copytree(root, folder, symlinks=True)
    sb = Sandbox(folder, layout_for(folder / "sample"))
    tries = 0
    while not kill_restore(sb, delay, after_commit=after_commit, at_first_write=first_write):
        tries += 1
        assert tries < 20, "every restore finished before its kill"
        # Finished before the kill: start again on a fresh copy, killing sooner.
        shutil.rmtree(folder)
        shutil.copytree(root, folder, symlinks=True)
        sb = Sandbox(folder, layout_for(folder / "sample"))
        delay /= 2
    assert_old_or_new(sb, before, snapshot_state, delay)
    now = (content(file_manifest(sb.workspace)), [db_dump(sb.db_path(db)) for db in DATABASES])
    if now == (content(before["workspace"]), [before["databases"][db] for db in DATABASES]):
        outcome = "untouched"
    elif now == (content(snapshot_state["workspace"]), [snapshot_state["databases"][db] for db in DATABASES]):
        outcome = "complete"
    else:
        outcome = "partial"

    # Running the same restore again completes it, leftovers included. (This and the rollback in
    # this process: the point is what the killed restore left, not the process boundary.)
    sb.phx_here(*RESTORE)
    assert_state(snapshot_state, sb.state(), f"the restore run again after a kill at {delay:.2f} s")
    assert list(folder.rglob(".phx-tmp-*")) == [], "leftover temporary files after the completed restore"

    # The first safety snapshot (the killed run's, if it got that far) undoes everything.
    safety = [s for s in sb.phx_here("list", "--json").json() if "pre-restore" in s["tags"]]
    assert safety, "no safety snapshot"
    sb.phx_here("restore", "--backup", safety[0]["id"], "--yes")
    assert_state(before, sb.state(), f"the rollback after a kill at {delay:.2f} s")
    shutil.rmtree(folder)
    return delay, after_commit, outcome
