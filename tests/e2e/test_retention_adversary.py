"""The retention after a backup, attacked: forget and the day's prune run under one exclusive lock
(ops/prune.py `retention_after_backup`). Real `phx` processes on a real repository:

- a second backup, a `phx forget` and a `phx prune` started while the retention runs (during
  forget, between forget and prune, during prune) find the repository locked, and lose nothing;
- two backups finishing at once: the one whose retention finds the other's lock skips it as busy,
  the other forgets and prunes; both snapshots restore;
- SIGKILL at the I/O calls after the backup's commit point (tests/e2e/killpoint.py): the
  repository stays valid, every snapshot restores, the dead process's lock is removed with a
  notice, and a later prune removes what the killed one left (nothing is left for the next to do,
  and the repository is as small as after a run that was not killed).

The default run takes one sample of each; PHX_TEST_HEAVY=1 takes every pause point and kills at
every I/O call of the retention.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from e2e_support import Sandbox, assert_error, assert_restored, new_sandbox, retention_only
from killpoint import SCRIPT, read_report
from moto_support import MotoServer
from pause_support import Paused
from test_concurrency import s3_target
from test_restore_durability import _FD, STRACE, traced_phx

from phoenix_backup.sample import layout_for

# The repositories the commands leave are the point, not the process: the sandboxes' helpers run phx
# in this process (tests/e2e/conftest.py).
pytestmark = pytest.mark.phx_in_process

# A path in a traced call, in full: a local repository names its objects relative to a folder
# descriptor (`renameat2(5</repo/data/ab>, ".tmp-…", 5</repo/data/ab>, "…", 0)`).
_AT_PATH = re.compile(r'(?:-?\d+<(?P<dir>[^>]*)>, )?"(?P<s>[^"]*)"')

HEAVY = os.environ.get("PHX_TEST_HEAVY") == "1"
MB = 1024 * 1024
SEED = 20261205
KILL_TRIALS = 1  # the default run's sample of kill points (PHX_TEST_HEAVY=1: every one)


def _data_bytes(repo: Path) -> int:
    return sum(p.stat().st_size for p in (repo / "data").rglob("*") if p.is_file())


def _age(repo: Path, hours: float = 2) -> None:
    """Date every pack back: prune keeps packs younger than the lock stale age."""
    when = time.time() - hours * 3600
    for pack in (repo / "data").rglob("*"):
        if pack.is_file():
            os.utime(pack, (when, when))


def _make_prune_due(sb: Sandbox) -> None:
    """A day later, as far as the daily prune is concerned: the packs, and the temporary files of
    interrupted writes (a lock's, say), old enough to go."""
    (sb.home / ".argentos" / "backup" / "prune.json").unlink(missing_ok=True)
    _age(sb.repo)
    when = time.time() - 2 * 3600
    for path in sb.repo.rglob(".tmp-*"):
        os.utime(path, (when, when))


def _locks(sb: Sandbox) -> list[str]:
    return sorted(p.name for p in (sb.repo / "locks").iterdir()) if (sb.repo / "locks").is_dir() else []


def _retention_world(sb: Sandbox) -> tuple[dict[str, Any], str]:
    """Snapshot 2 holds a 2 MiB file that the workspace no longer has; the next backup (snapshot 3)
    forgets snapshot 2 (`last: 1`) and, the day's prune being due, frees that file's pack. Returns
    the state snapshot 3 is taken of, and snapshot 2's id."""
    sb.write_config(retention=retention_only(last=1))
    sb.backup()  # the day's prune runs here
    (sb.workspace / "big.bin").write_bytes(os.urandom(2 * MB))
    second = sb.backup()
    (sb.workspace / "big.bin").unlink()
    _make_prune_due(sb)
    return sb.state(), second["id"]


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any], str]:
    """The world above, made once (at the folder every copy is made at, then moved aside); each
    test copies it. Retention groups snapshots by workspace folder: a copy elsewhere would be a
    moved workspace, whose new snapshots form a group of their own and forget nothing."""
    base = tmp_path_factory.mktemp("retention-world")
    live = base / "world"
    live.mkdir()
    sb = new_sandbox(live)
    state, second = _retention_world(sb)
    shutil.rmtree(sb.cache)
    live.rename(base / "template")
    return base, state, second


def _copy(world: tuple[Path, dict[str, Any], str]) -> Sandbox:
    """A copy of the world at the folder it was made at (one copy at a time; a copy an earlier test
    left there is removed first)."""
    live = world[0] / "world"
    shutil.rmtree(live, ignore_errors=True)
    shutil.copytree(world[0] / "template", live, symlinks=True)
    sb = Sandbox(live, layout_for(live / "sample"))
    sb.write_config(retention=retention_only(last=1))
    _age(sb.repo)  # copytree kept the dates; made again in case the world is older than it was
    return sb


def _restores(sb: Sandbox, sid: str, state: dict[str, Any], dest: Path, what: str) -> None:
    doc = sb.restore_to(sid, dest)
    assert doc["errors"] == [], doc
    assert_restored(state, dest, what)
    shutil.rmtree(dest)


# -- commands started while the retention runs -----------------------------------------------------

# Where the backup is held: forget deleting the forgotten snapshot; forget done (its one snapshot
# deleted), the prune not started; the prune deleting the freed pack.
PAUSES = {
    "during-forget": "before:delete:snapshots/",
    "between-forget-and-prune": "after:delete:snapshots/",
    "during-prune": "before:delete:data/",
}


@pytest.mark.parametrize("point", [p for p in PAUSES if HEAVY or p == "between-forget-and-prune"])
def test_commands_started_during_the_retention_find_it_locked(
    world: tuple[Path, dict[str, Any], str], tmp_path: Path, point: str
) -> None:
    sb = _copy(world)
    state, second = world[1], world[2]
    before = _data_bytes(sb.repo)
    with Paused(["backup", "--json"], sb.env, tmp_path / "pause", at=PAUSES[point]) as run:
        run.wait_paused()
        other = sb.phx("backup", "--json", check=None)
        assert_error(other, 1, "locked", "forget and prune")
        forget = sb.phx("forget", "--json", check=None)
        assert forget.code == 1 and "forget and prune" in forget.json()["targets"]["local"]["error"], forget
        prune = sb.phx("prune", "--json", check=None)
        assert prune.code == 1 and "forget and prune" in prune.json()["targets"]["local"]["error"], prune
        assert run.finish() == 0, run.err
    doc: dict[str, Any] = json.loads(run.out)
    retention = doc["retention"]
    assert retention["busy"] == [] and retention["errors"] == [], retention
    assert retention["pruned"]["local"] > MB, retention
    assert _locks(sb) == [], "the retention's lock is still there"
    assert [s["id"] for s in sb.snapshots()] == [doc["id"]]
    assert second not in {s["id"] for s in sb.snapshots()}
    assert _data_bytes(sb.repo) < before - MB
    assert sb.verify("--read-data")["ok"]
    _restores(sb, doc["id"], state, tmp_path / "out", f"the snapshot whose retention was raced {point}")
    again = sb.backup()  # the backup that was refused runs now
    assert again["retention"]["busy"] == [], again["retention"]
    assert sb.verify("--read-data")["ok"]


def test_two_backups_finishing_at_once_prune_once_and_lose_nothing(
    world: tuple[Path, dict[str, Any], str], tmp_path: Path
) -> None:
    """Backup A has committed and still holds its shared lock when backup B, started later, ends
    first: B's retention finds A's lock and skips (busy, exit 0); A's then forgets and prunes."""
    sb = _copy(world)
    state, second = world[1], world[2]
    with Paused(["backup", "--json"], sb.env, tmp_path / "pause", at="after:write:snapshots/") as run:
        run.wait_paused()
        b = sb.backup()
        assert b["retention"]["busy"] == ["local"], b["retention"]
        assert b["retention"]["pruned"] == {}, b["retention"]
        assert run.finish() == 0, run.err
    a: dict[str, Any] = json.loads(run.out)
    assert a["retention"]["busy"] == [] and a["retention"]["pruned"]["local"] > MB, a["retention"]
    held = {s["id"] for s in sb.snapshots()}
    assert held == {a["id"], b["id"]}, "the new snapshot is protected and the newest kept; the old one goes"
    assert second not in held
    assert _locks(sb) == []
    assert sb.verify("--read-data")["ok"]
    for sid in (a["id"], b["id"]):
        _restores(sb, sid, state, tmp_path / f"out-{sid[:8]}", f"snapshot {sid[:8]} of two backups at once")
    # The day's prune ran once: the next backup skips it.
    third = sb.backup()
    assert third["retention"]["pruneSkipped"] == "the last prune ran less than a day ago", third["retention"]


# -- SIGKILL after the commit point --------------------------------------------------------------

COMMIT = "replace:/snapshots/"  # the backup's snapshot object renamed in place: its commit point


def _hooked_backup(sb: Sandbox, kill_at: int, **hook: str) -> tuple[str, int, str, subprocess.CompletedProcess[str]]:
    """`phx backup` killed at its `kill_at`-th counted call after the commit point; `hook`: more of
    killpoint.py's settings (PHX_KILL_ONLY="changes", say)."""
    report = sb.root / f"kill-report-{time.monotonic_ns()}"
    env = {
        **sb.env,
        "PHX_KILL_AT": str(kill_at),
        "PHX_KILL_REPORT": str(report),
        "PHX_KILL_AFTER": COMMIT,
        "PHX_KILL_SEED": str(sb.root),
        **hook,
    }
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "backup", "--json"],
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=180,
    )
    kind, n, call = read_report(report)
    report.unlink(missing_ok=True)
    return kind, n, call, proc


def _clean_bytes(sb: Sandbox) -> int:
    """What a later prune leaves: every pack old, the prune due; then nothing is left to do."""
    _make_prune_due(sb)
    pruned = sb.phx_here("prune", "--json").json()["targets"]["local"]
    assert pruned["ok"], pruned
    again = sb.phx_here("prune", "--dry-run", "--json").json()["targets"]["local"]
    packs = again["packs"]
    assert (packs["deleted"], packs["repacked"], packs["leftovers"], packs["youngLeftoversKept"]) == (0, 0, 0, 0), again
    assert again["indexesReplaced"] == 0 and again["temporaryFiles"] == 0, again
    return _data_bytes(sb.repo)


def test_killed_during_the_retention_leaves_a_valid_repository(
    world: tuple[Path, dict[str, Any], str], tmp_path: Path
) -> None:
    state, second = world[1], world[2]
    calibration = _copy(world)
    kind, total, _call, proc = _hooked_backup(calibration, 0)
    assert kind == "calls" and total > 10 and proc.returncode == 0, (kind, total, proc.stderr)
    clean = _clean_bytes(calibration)
    shutil.rmtree(calibration.root)

    every = range(1, total + 1)
    points = list(every) if HEAVY else sorted(random.Random(SEED).sample(every, KILL_TRIALS))
    for at in points:
        sb = _copy(world)
        kind, _n, call, proc = _hooked_backup(sb, at)
        what = f"killed at call {at} of {total} after the commit point, {call}"
        assert kind == "killed", f"{what}: not killed ({proc.returncode}, {proc.stderr})"
        ids = [s["id"] for s in sb.snapshots()]
        new = [sid for sid in ids if sid != second]
        assert len(new) == 1, f"{what}: the committed snapshot is missing: {ids}"
        verify = sb.phx("verify", "--read-data", "--json", check=None)
        assert verify.code == 0 and verify.json()["ok"], f"{what}: {verify}"
        _restores(sb, new[0], state, tmp_path / "out", what)
        if second in ids:
            restored = sb.restore_to(second, tmp_path / "second")
            assert restored["errors"] == [], f"{what}: {restored}"
            shutil.rmtree(tmp_path / "second")
        # The next forget finishes what was cut short; a later prune removes every leftover.
        sb.phx_here("forget")
        assert [s["id"] for s in sb.snapshots()] == new, what
        # Packs are cut differently on the two paths (a few bytes of headers); the freed file is 2 MiB.
        assert abs(_clean_bytes(sb) - clean) < 64 * 1024, f"{what}: a later prune leaves more than a clean run"
        assert sb.verify("--read-data")["ok"], what
        _restores(sb, new[0], state, tmp_path / "out", f"{what}, then the next prune")
        assert _locks(sb) == [], f"{what}: a lock is left"
        shutil.rmtree(sb.root)


# -- durability: the page-cache drop replaced no fsync ------------------------------------------------


@pytest.mark.skipif(STRACE is None, reason="strace is not installed")
def test_every_object_a_backup_and_its_retention_write_is_fsynced_before_its_rename(
    world: tuple[Path, dict[str, Any], str], tmp_path: Path
) -> None:
    """Each object is written to a temporary file, fsynced, renamed (or linked) into place, and
    its folder fsynced: a power cut keeps it whole or not at all. Data packs (1 MiB or more) also
    leave the page cache (fadvise DONTNEED), only once fsynced; small objects stay cached, synced
    all the same. Traced with strace: a backup writing a new 2 MiB file, and its forget and prune."""
    sb = _copy(world)
    (sb.workspace / "fresh.bin").write_bytes(os.urandom(2 * MB))
    calls = traced_phx(
        sb,
        tmp_path / "trace",
        "backup",
        "--json",
        calls="openat,fsync,fdatasync,rename,renameat,renameat2,link,linkat,fadvise64",
    )
    repo = str(sb.repo)
    synced: dict[str, int] = {}  # path -> index of its first fsync
    dropped: dict[str, int] = {}
    placed: list[tuple[int, str, str]] = []  # (index, temporary file, object)
    for i, (call, args, ret) in enumerate(calls):
        if ret != 0:
            continue
        fd = _FD.match(args)
        if call in ("fsync", "fdatasync") and fd is not None:
            synced.setdefault(fd["path"], i)
        elif call == "fadvise64" and fd is not None and "POSIX_FADV_DONTNEED" in args:
            dropped.setdefault(fd["path"], i)
        elif call in ("rename", "renameat", "renameat2", "link", "linkat"):
            names = [os.path.join(m["dir"] or "", m["s"]) for m in _AT_PATH.finditer(args)]
            if len(names) == 2 and names[1].startswith(repo + "/"):
                placed.append((i, names[0], names[1]))
    kinds = {Path(dst).relative_to(repo).parts[0] for _i, _src, dst in placed}
    assert {"data", "index", "snapshots", "locks"} <= kinds, f"the trace saw too little: {sorted(kinds)}"
    for i, src, dst in placed:
        assert src in synced and synced[src] < i, f"{dst} was put in place before its data was fsynced"
        parent = str(Path(dst).parent)
        assert any(
            c == "fsync" and (m := _FD.match(a)) is not None and m["path"] == parent and r == 0
            for c, a, r in calls[i + 1 :]
        ), f"the folder of {dst} was not fsynced after it was put in place"
        if src in dropped:
            assert synced[src] < dropped[src], f"{dst} left the page cache before it was fsynced"
    big = [dst for _i, src, dst in placed if src in dropped]
    assert big and all(Path(dst).parts[-3] == "data" for dst in big), f"dropped from the page cache: {big}"
    doc = json.loads(sb.phx_here("list", "--json").out)
    assert len(doc) == 1 and sb.verify("--read-data")["ok"]


# -- several targets, one of them busy -------------------------------------------------------------


@pytest.mark.skipif(not HEAVY, reason="four backups to three targets (~20 s): PHX_TEST_HEAVY=1")
@pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed (scripts/test.sh installs it)")
def test_retention_on_three_targets_skips_only_the_busy_one(
    make_sandbox: Callable[..., Sandbox], moto: MotoServer
) -> None:
    """Local, S3 (moto) and Git: while another process holds a lock on S3, the retention forgets
    and prunes on the two others and skips S3 as busy (the backup still exits 0); the next backup,
    S3 free again, forgets and prunes there too. Every target verifies, byte for byte."""
    from phoenix_backup import Environment, load_config
    from phoenix_backup.ops.context import open_repository

    sb = make_sandbox()
    remote = sb.root / "remote.git"
    subprocess.run(["git", "init", "-q", "--bare", str(remote)], check=True)
    sb.env["PHX_DATA_DIR"] = str(sb.root / "data")
    sb.env["AWS_EC2_METADATA_DISABLED"] = "true"
    sb.write_config(
        targets={
            "local": {"enabled": True},
            "s3": s3_target(moto, moto.make_bucket("retention")),
            "git": {"enabled": True, "repo": str(remote), "branch": "main", "autoCommit": True},
        },
    )
    sb.config_path.chmod(0o600)
    _retention_world(sb)
    second = sb.snapshots()[-1]["id"]
    cfg = load_config(sb.config_path, sb.env)
    envx = Environment(env=sb.env)
    other = open_repository(cfg, envx, target="s3")  # another phx (a restore) reading S3
    held = other.locks.acquire(False, "restore")
    try:
        third = sb.backup()
    finally:
        held.release()
        other.close()
    retention = third["retention"]
    assert retention["busy"] == ["s3"] and retention["errors"] == [], retention
    assert retention["forgotten"] == {"local": 1, "git": 1}, retention
    assert set(retention["pruned"]) == {"local", "git"} and retention["pruned"]["local"] > MB, retention
    listed = {t: [s["id"] for s in sb.phx_here("list", "--target", t, "--json").json()] for t in ("local", "s3", "git")}
    assert listed == {"local": [third["id"]], "s3": [second, third["id"]], "git": [third["id"]]}, listed
    fourth = sb.backup()
    retention = fourth["retention"]
    assert retention["busy"] == [] and retention["errors"] == [], retention
    assert retention["forgotten"]["s3"] == 2 and "s3" in retention["pruned"], retention
    for target in ("local", "s3", "git"):
        assert [s["id"] for s in sb.phx_here("list", "--target", target, "--json").json()] == [fourth["id"]], target
        assert sb.verify("--target", target, "--read-data")["ok"], target


# -- the lock the retention's forget and prune rely on ------------------------------------------------


def test_a_retention_whose_lock_was_removed_deletes_nothing_more(
    world: tuple[Path, dict[str, Any], str], tmp_path: Path
) -> None:
    """`phx unlock --all` by mistake while the retention runs (forget done, prune next): another
    backup may start now and rely on the data the prune would free. The prune, finding its lock
    gone before its commit point, deletes nothing; the backup says so (exit 3); a later prune
    frees the data."""
    sb = _copy(world)
    state = world[1]
    before = _data_bytes(sb.repo)
    with Paused(["backup", "--json"], sb.env, tmp_path / "pause", at=PAUSES["between-forget-and-prune"]) as run:
        run.wait_paused()
        removed = sb.phx_here("unlock", "--all", "--json").json()
        assert len(removed) == 1 and "exclusive lock by forget and prune" in removed[0]["description"], removed
        code = run.finish()
    doc = json.loads(run.out)
    retention = doc["retention"]
    assert code == 3 and "pruned" in retention and retention["pruned"] == {}, (code, retention)
    assert any("lock is gone" in e for e in retention["errors"]), retention
    assert _data_bytes(sb.repo) >= before, "the prune deleted data after its lock was removed"
    assert _locks(sb) == []
    assert sb.verify("--read-data")["ok"]
    _restores(sb, doc["id"], state, tmp_path / "out", "the snapshot whose retention lost its lock")
    assert _clean_bytes(sb) < before - MB, "a later prune frees the forgotten data"


def test_forget_and_prune_told_they_hold_a_lock_they_do_not_hold_delete_nothing(
    world: tuple[Path, dict[str, Any], str], tmp_path: Path
) -> None:
    """`locked=True` is the word of a caller that took the exclusive lock itself (the retention).
    A caller that says so without holding it (or holding a shared one) gets an error, and nothing
    is deleted."""
    from phoenix_backup import Environment, load_config
    from phoenix_backup.errors import RepositoryError
    from phoenix_backup.ops.context import open_repository
    from phoenix_backup.ops.forget import TargetForget, forget_repository
    from phoenix_backup.repo.prune import PruneState, TargetPrune, prune_repository
    from phoenix_backup.repo.retention import Policy

    sb = _copy(world)
    sb.write_config(retention=retention_only(last=5, prune=False))
    sb.backup()  # snapshots 2 and 3
    sb.write_config(retention=retention_only(last=1))
    cfg = load_config(sb.config_path, sb.env)
    envx = Environment(env=sb.env)
    policy = Policy.from_config(cfg.retention)
    held = sorted(p.name for p in (sb.repo / "snapshots").iterdir())
    assert len(held) == 2
    repo = open_repository(cfg, envx)

    def lock_or_not(shared: bool) -> contextlib.AbstractContextManager[object]:
        return repo.lock(exclusive=False, command="backup") if shared else contextlib.nullcontext()

    try:
        for shared in (False, True):  # no lock at all; a shared one
            with lock_or_not(shared), pytest.raises(RepositoryError, match="without the repository's exclusive lock"):
                forget_repository(
                    repo, policy, TargetForget("local"), dry_run=False, now=datetime.now(UTC), locked=True
                )
        assert sorted(p.name for p in (sb.repo / "snapshots").iterdir()) == held
        sb.phx_here("forget")  # snapshot 2 goes: its 2 MiB file is garbage now
        before = _data_bytes(sb.repo)
        state = PruneState.for_home(sb.home)
        for shared in (False, True):
            with lock_or_not(shared), pytest.raises(RepositoryError, match="without the repository's exclusive lock"):
                prune_repository(repo, TargetPrune("local"), dry_run=False, state=state, now=time.time(), locked=True)
        assert _data_bytes(sb.repo) == before
    finally:
        repo.close()
    assert _clean_bytes(sb) < before - MB, "`phx prune` frees it"


# -- a lock refreshed all through the retention ------------------------------------------------------

_REFRESHING = """
import sys
from phoenix_backup.repo import locks
locks.REFRESH_SECONDS = 0.01  # refreshed all the time: every step of the retention meets a refresh
from phoenix_backup.cli.main import main
sys.argv = ["phx", *sys.argv[1:]]
main()
"""


@pytest.mark.skipif(not HEAVY, reason="PHX_TEST_HEAVY=1")
def test_a_lock_refreshed_every_10_ms_through_the_retention_changes_nothing(
    world: tuple[Path, dict[str, Any], str], tmp_path: Path
) -> None:
    """The backup's shared lock and the retention's exclusive one are rewritten every 10 ms while
    forget and prune run (a long prune meets refreshes the same way): the retention forgets and
    prunes, confirms its lock, leaves no lock and no temporary lock file behind."""
    sb = _copy(world)
    state, second = world[1], world[2]
    proc = subprocess.run(
        [sys.executable, "-c", _REFRESHING, "backup", "--json"],
        env=sb.env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["retention"]["errors"] == [] and doc["retention"]["pruned"]["local"] > MB, doc["retention"]
    assert "lock" not in proc.stderr, proc.stderr
    assert [s["id"] for s in sb.snapshots()] == [doc["id"]] and second != doc["id"]
    assert list((sb.repo / "locks").iterdir()) == []
    assert sb.verify("--read-data")["ok"]
    _restores(sb, doc["id"], state, tmp_path / "out", "the snapshot whose retention was refreshed all along")
