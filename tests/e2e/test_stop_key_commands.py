"""Stop signals inside the commands that change the repository's keys or create it: `phx key
rotate`, `phx key add`, `phx key remove`, `phx init` (docs/reliability.md). Each runs with every
fsync and unlink in the repository slowed, and gets SIGTERM (or SIGINT, or a second SIGTERM) at its
Nth such call (`test_stop_signals.SLOW`). Afterwards the repository opens with the passphrase
(under the old or the new key set, never none), verifies, holds every snapshot it held, and no
lock of the stopped command stays in the way of the next command."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
from e2e_support import PHX, Sandbox, numbered_notes
from test_stop_signals import SLOW

from phoenix_backup.repo.pins import Pins

# The sandboxes' helpers (the backups that set a test up, the checks after) run phx in this process;
# the commands under test stay real `phx` processes (tests/e2e/conftest.py).
pytestmark = pytest.mark.phx_in_process

HEAVY = os.environ.get("PHX_TEST_HEAVY") == "1"


def stop_at(
    sb: Sandbox,
    tmp_path: Path,
    at: int,
    sig: signal.Signals,
    *args: str,
    env: dict[str, str] | None = None,
    again: float | None = None,
    below: Path | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run `phx ARGS`, send `sig` at its `at`th fsync or unlink below the repository (and `sig`
    again `again` seconds later); how it ended. A command that ends first is returned as it ended."""
    site = tmp_path / "count-site"
    site.mkdir(exist_ok=True)
    (site / "sitecustomize.py").write_text(SLOW)
    started = tmp_path / "count-started"
    started.unlink(missing_ok=True)
    env = dict(env if env is not None else sb.env)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(site), env.get("PYTHONPATH")]))
    below = below or sb.repo
    env |= {"SLOW_BELOW": str(below), "SLOW_MARK_BELOW": str(below), "SLOW_STARTED": str(started)}
    env |= {"SLOW_AT": str(at), "SLOW_SECONDS": "0.02"}
    cmd = [PHX, *args]
    proc = subprocess.Popen(
        cmd, env=env, cwd=sb.root, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    deadline = time.monotonic() + 120
    while not started.exists() and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.005)
    if proc.poll() is None:
        proc.send_signal(sig)
        if again is not None:
            time.sleep(again)
            proc.send_signal(sig)
    out, err = proc.communicate(timeout=120)
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def assert_ended_cleanly(res: subprocess.CompletedProcess[str], sig: signal.Signals, again: bool) -> None:
    # A second signal that comes once the stop is done, while Python exits, ends it as the signal
    # does by default (-sig; a shell says 128 + sig there too).
    assert res.returncode in (0, 128 + sig, *((-sig,) if again else ())), (res.returncode, res.stdout, res.stderr)
    assert "Traceback" not in res.stderr, res.stderr
    if res.returncode:
        # One line: what a stop undoes is its own business (a stopped rotation said "removed N
        # object(s) and the key slots of 1 other key(s)" of the slot it had just written).
        assert len(res.stderr.splitlines()) == 1, res.stderr
        last = res.stderr.splitlines()[-1]
        # A stop that is over before the second signal comes (a stop at the lock) ends as one.
        ends = ("phx: stopped at once", "phx: interrupted") if again else ("phx: interrupted",)
        assert last.startswith(ends), res.stderr


def assert_repository_whole(sb: Sandbox, snapshots: list[str], env: dict[str, str] | None = None) -> None:
    """It opens (taking a dead process's lock away), verifies, and holds the snapshots of times
    `snapshots`; the next backup finds no lock in its way (and adds one)."""
    env = env if env is not None else sb.env
    listed = sb.phx("list", "--json", env=env, check=False)
    assert listed.code == 0, listed
    # A rotation re-writes the snapshots (new ids): their times stay.
    assert sorted(s["time"] for s in listed.json()) == sorted(snapshots)
    res = sb.phx("verify", "--json", env=env, check=False)
    assert res.code == 0 and res.json()["ok"], {k: v for k, v in res.json().items() if k != "checked"}
    assert sb.phx("backup", env=env, check=False).code == 0  # no lock left in the way
    assert list((sb.repo / "locks").iterdir()) == [], "the lock is removed"
    snapshots.append(sb.snapshots()[-1]["time"])


# A rotation of the sandbox's repository makes about 31 such calls: 1-2 its lock, 3-5 the new slot,
# 6-9 the new packs, 10-13 the index and snapshot, 14-17 the lock moved to the new key, 18-19 the
# config (the commit point), 20-29 the old objects and slot deleted, 30-31 the lock released.
ROTATE_AT = [*range(1, 32, 2), 12, 22] if HEAVY else [12, 22]
# A slot added or removed: 1-2 the lock, 3-5 the slot, then the lock released.
SLOT_AT = [1, 2, 3, 4, 5, 6, 7] if HEAVY else [4]
CASES = (
    [(signal.SIGTERM, None), (signal.SIGINT, None), (signal.SIGTERM, 0.05), (signal.SIGINT, 0.05)]
    if HEAVY
    else [(signal.SIGTERM, None)]
)


@pytest.mark.parametrize(("sig", "again"), CASES)
@pytest.mark.parametrize("at", ROTATE_AT)
def test_a_stopped_key_rotate_leaves_a_repository_the_passphrase_opens(
    sandbox: Sandbox, tmp_path: Path, at: int, sig: signal.Signals, again: float | None
) -> None:
    sb = sandbox
    numbered_notes(sb, 40)
    sb.backup()
    before = [s["time"] for s in sb.snapshots()]
    res = stop_at(sb, tmp_path, at, sig, "key", "rotate", again=again)
    assert_ended_cleanly(res, sig, again is not None)
    if "stopped at once" in res.stderr:
        # As after a kill: it opens with every snapshot, and `phx key rotate` run again finishes.
        assert sorted(s["time"] for s in sb.snapshots()) == sorted(before)
        sb.phx("key", "rotate")
    assert_repository_whole(sb, before)


@pytest.mark.parametrize(("sig", "again"), CASES)
@pytest.mark.parametrize("at", SLOT_AT)
def test_a_stopped_key_add_and_remove_leave_the_old_or_the_new_key_set(
    sandbox: Sandbox, tmp_path: Path, at: int, sig: signal.Signals, again: float | None
) -> None:
    sb = sandbox
    sb.backup()
    before = [s["time"] for s in sb.snapshots()]
    other = "another passphrase, long enough"
    add_env = sb.env_with(PHX_NEW_PASSPHRASE=other)
    res = stop_at(sb, tmp_path, at, sig, "key", "add", "--method", "passphrase", env=add_env, again=again)
    assert_ended_cleanly(res, sig, again is not None)
    assert_repository_whole(sb, before)
    slots = sb.phx("key", "list", "--json").json()
    if res.returncode == 0 or len(slots["slots"] if isinstance(slots, dict) else slots) > 1:
        # The new slot is named complete: it opens the repository.
        assert_repository_whole(sb, [s["time"] for s in sb.snapshots()], sb.env_with(PHX_PASSPHRASE=other))
    else:
        return
    before = [s["time"] for s in sb.snapshots()]
    listing = sb.phx("key", "list", "--json").json()
    rows = listing["slots"] if isinstance(listing, dict) else listing
    mine = next(r for r in rows if not r.get("current"))
    res = stop_at(sb, tmp_path, at, sig, "key", "remove", str(mine["id"]), again=again)
    assert_ended_cleanly(res, sig, again is not None)
    assert_repository_whole(sb, before)


# `phx init` of a local repository: its key slot, its config (the commit point), a backup's lock.
INIT_AT = [1, 2, 3, 4, 5, 6, 8, 10, 12] if HEAVY else [4]


@pytest.mark.parametrize(("sig", "again"), CASES)
@pytest.mark.parametrize("at", INIT_AT)
def test_a_stopped_init_is_finished_by_the_next_init(
    sandbox: Sandbox, tmp_path: Path, at: int, sig: signal.Signals, again: float | None
) -> None:
    """A stopped `phx init` leaves no repository, or one that opens; `phx init` run again makes
    (or keeps) it, and backups then work."""
    sb = sandbox
    shutil.rmtree(sb.repo)
    Pins.for_env(sb.env).path.unlink()  # a user who never had a repository there
    res = stop_at(sb, tmp_path, at, sig, "init", again=again, below=sb.repo.parent)
    assert_ended_cleanly(res, sig, again is not None)
    again_res = sb.phx("init", check=False)
    assert again_res.code == 0 or "already" in again_res.err, again_res
    assert_repository_whole(sb, [])
