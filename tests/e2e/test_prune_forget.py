"""`phx forget` and `phx prune` through the command: dry runs that change nothing and say why,
space freed while every remaining snapshot still restores byte-for-byte and `verify --read-data`
passes, retention after every backup (prune at most daily), `pre-restore` safety snapshots kept
`keepSafetyDays`, and retention on every target (local and a Git remote)."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import time
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from e2e_support import Sandbox, assert_restored, retention_only

# The repositories the commands leave are the point, not the process: the sandboxes' helpers run phx
# in this process (tests/e2e/conftest.py).
pytestmark = pytest.mark.phx_in_process

MB = 1024 * 1024


def data_bytes(repo: Path) -> int:
    return sum(p.stat().st_size for p in (repo / "data").rglob("*") if p.is_file())


def age_packs(repo: Path, hours: float = 2) -> None:
    """Date the packs back as if written `hours` ago: prune keeps packs younger than the lock
    stale age, which a backup that lost its lock may still commit."""
    when = time.time() - hours * 3600
    for pack in (repo / "data").rglob("*"):
        if pack.is_file():
            os.utime(pack, (when, when))


def day(n: int) -> str:
    """A backup time n days before now (whole days, so periods are unambiguous)."""
    when = datetime.now().astimezone().replace(hour=2, minute=0, second=0, microsecond=0) - timedelta(days=n)
    return when.isoformat()


def test_forget_and_prune_free_space_and_the_rest_restores(
    make_sandbox: Callable[..., Sandbox], tmp_path: Path
) -> None:
    sb = make_sandbox()
    ws = sb.workspace
    states: dict[str, dict[str, Any]] = {}
    # Four nightly backups; two of them carry a big incompressible file that later goes away.
    (ws / "big-1.bin").write_bytes(os.urandom(3 * MB))
    states["a"] = sb.state()
    a = sb.backup("--time", day(4))
    (ws / "big-1.bin").unlink()
    (ws / "big-2.bin").write_bytes(os.urandom(3 * MB))
    b = sb.backup("--time", day(3))
    (ws / "big-2.bin").unlink()
    with open(ws / "MEMORY.md", "a") as f:
        f.write("\n- a fact learned on day 2\n")
    states["c"] = sb.state()
    c = sb.backup("--time", day(2))
    with open(ws / "MEMORY.md", "a") as f:
        f.write("\n- a fact learned on day 1\n")
    states["d"] = sb.state()
    d = sb.backup("--time", day(1))
    assert all(x["retention"]["forgotten"] == {"local": 0} for x in (a, b, c, d)), "the defaults keep all four"

    sb.write_config(retention=retention_only(daily=2, prune=False))
    # Dry run: every snapshot with its decision and reasons; nothing removed.
    plan = sb.phx_here("forget", "--dry-run", "--json").json()
    decisions = {s["id"]: s for s in plan["targets"]["local"]["snapshots"]}
    assert set(decisions) == {a["id"], b["id"], c["id"], d["id"]}
    assert [decisions[x["id"]]["keep"] for x in (a, b, c, d)] == [False, False, True, True]
    assert decisions[d["id"]]["reasons"][0]["rule"] == "daily"
    assert decisions[a["id"]]["reasons"] == []
    text = sb.phx_here("forget", "--dry-run").out
    assert "would remove 2 of 4" in text and "daily" in text
    assert len(sb.snapshots()) == 4

    sb.phx_here("forget")
    assert {s["id"] for s in sb.snapshots()} == {c["id"], d["id"]}

    # Fresh packs are kept: a running backup may still commit them.
    young = sb.phx_here("prune", "--dry-run", "--json").json()
    assert young["freed"] == 0 and young["targets"]["local"]["packs"]["youngUnusedKept"] > 0, young
    age_packs(sb.repo)  # the nightly backups were taken days ago
    before = data_bytes(sb.repo)
    dry = sb.phx_here("prune", "--dry-run", "--json").json()
    assert dry["dryRun"] and dry["freed"] > 5 * MB, dry
    assert data_bytes(sb.repo) == before, "a dry run changes nothing"
    done = sb.phx_here("prune", "--json").json()
    assert done["ok"] and done["freed"] > 5 * MB
    after = data_bytes(sb.repo)
    assert before - after > 5 * MB, (before, after)
    print(f"prune freed {before - after} bytes of data packs ({before} -> {after})")

    verified = sb.verify("--read-data")
    assert verified["ok"] and not verified["notices"], verified
    for key, snap in (("c", c), ("d", d)):
        dest = tmp_path / f"restore-{key}"
        sb.restore_to(snap["id"], dest)
        assert_restored(states[key], dest, f"snapshot {key} after prune")
    # A second prune has nothing left to do.
    again = sb.phx_here("prune", "--json").json()["targets"]["local"]
    assert again["packs"]["deleted"] == again["packs"]["repacked"] == 0


def test_retention_runs_after_each_backup_and_prune_at_most_daily(make_sandbox: Callable[..., Sandbox]) -> None:
    sb = make_sandbox()
    sb.write_config(retention=retention_only(last=1))
    first = sb.backup()
    assert first["retention"]["pruned"] == {"local": 0} and first["retention"]["ok"]
    # Each snapshot holds data and trees of its own, which the next one does not share (without
    # a change, what differs is only what the backups themselves touched, which is not certain).
    note = sb.workspace / "memory" / "today.md"
    note.write_text("the second snapshot's note\n")
    second = sb.backup()
    assert second["retention"]["forgotten"] == {"local": 1}
    assert second["retention"]["pruneSkipped"] == "the last prune ran less than a day ago"
    assert [s["id"] for s in sb.snapshots()] == [second["id"]]
    # A day later, the next backup prunes again (the record lives in the state folder).
    record_path = sb.home / ".argentos" / "backup" / "prune.json"
    record = json.loads(record_path.read_text())
    for entry in record.values():
        entry["lastPrune"] -= 25 * 3600
    record_path.write_text(json.dumps(record))
    age_packs(sb.repo, 25)
    note.write_text("the third snapshot's note\n")
    third = sb.backup()
    assert third["retention"]["forgotten"] == {"local": 1} and "local" in third["retention"]["pruned"]
    assert third["retention"]["pruned"]["local"] > 0, "the forgotten snapshots' trees are freed"
    sb.write_config(retention=retention_only(last=1, prune=False))
    fourth = sb.backup()
    assert fourth["retention"]["pruneSkipped"] == "retention.prune is false"
    assert sb.verify("--read-data")["ok"]


def test_pre_restore_snapshots_are_kept_keep_safety_days(make_sandbox: Callable[..., Sandbox]) -> None:
    sb = make_sandbox()
    sb.write_config(retention=retention_only(last=1, keepSafetyDays=7, prune=False))
    old_safety = sb.backup("--tag", "pre-restore", "--time", day(10))
    recent_safety = sb.backup("--tag", "pre-restore", "--time", day(3))
    newest_safety = sb.backup("--tag", "pre-restore", "--time", day(2))
    regular = sb.backup("--time", day(1))
    # The regular snapshot was never pushed out by the safety snapshots taken after it... and
    # retention after the last backup already applied the policy:
    kept = {s["id"] for s in sb.snapshots()}
    assert kept == {recent_safety["id"], newest_safety["id"], regular["id"]}
    assert old_safety["id"] not in kept
    plan = sb.phx_here("forget", "--dry-run", "--json").json()["targets"]["local"]["snapshots"]
    reasons = {s["id"]: [r["rule"] for r in s["reasons"]] for s in plan}
    assert reasons[recent_safety["id"]] == ["safety"]
    assert reasons[newest_safety["id"]] == ["safety", "last"]
    assert reasons[regular["id"]] == ["last"]


@pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed (scripts/test.sh installs it)")
def test_retention_applies_on_every_target(make_sandbox: Callable[..., Sandbox]) -> None:
    sb = make_sandbox()
    remote = sb.root / "remote.git"
    subprocess.run(["git", "init", "-q", "--bare", str(remote)], check=True)
    sb.env["PHX_DATA_DIR"] = str(sb.root / "data")
    sb.write_config(
        targets={
            "local": {"enabled": True},
            "git": {"enabled": True, "repo": str(remote), "branch": "main", "autoCommit": True},
        },
        retention=retention_only(last=2),
    )
    ids = [sb.backup("--time", day(n))["id"] for n in (3, 2, 1)]
    last = sb.backup("--json")
    assert set(last["targets"]) == {"local", "git"} and all(t["ok"] for t in last["targets"].values())
    assert last["retention"]["forgotten"] == {"local": 1, "git": 1}
    for target in ("local", "git"):
        listed = sb.phx_here("list", "--target", target, "--json").json()
        assert [s["id"] for s in listed] == [ids[2], last["id"]], target
    forget = sb.phx_here("forget", "--dry-run", "--json").json()
    assert set(forget["targets"]) == {"local", "git"}
    assert all(t["remove"] == 0 for t in forget["targets"].values())
    pruned = sb.phx_here("prune", "--target", "git", "--json").json()
    assert set(pruned["targets"]) == {"git"} and pruned["ok"]
    assert sb.verify("--target", "git", "--read-data")["ok"]


def _git_replica_missed_the_newest(sb: Sandbox) -> tuple[list[str], str]:
    """Two backups on the local and Git targets, then a newest the Git replica missed (disabled
    for it); both targets enabled again. The two kept ids, the newest's."""
    remote = sb.root / "remote.git"
    subprocess.run(["git", "init", "-q", "--bare", str(remote)], check=True)
    sb.env["PHX_DATA_DIR"] = str(sb.root / "data")
    git = {"enabled": True, "repo": str(remote), "branch": "main", "autoCommit": True}
    sb.write_config(targets={"local": {"enabled": True}, "git": git}, retention=retention_only(prune=False))
    kept = [sb.backup("--time", day(n))["id"] for n in (2, 1)]
    sb.write_config(targets={"local": {"enabled": True}, "git": {**git, "enabled": False}})
    newest = sb.backup()["id"]
    sb.write_config(targets={"local": {"enabled": True}, "git": git})
    return kept, newest


@pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed (scripts/test.sh installs it)")
def test_forget_latest_forgets_one_snapshot_on_every_target(make_sandbox: Callable[..., Sandbox]) -> None:
    """The Git replica missed the newest backup. `phx forget latest` removed the newest on the
    first target and, on the replica, its own latest: an older snapshot nobody named."""
    sb = make_sandbox()
    kept, newest = _git_replica_missed_the_newest(sb)
    out = sb.phx_here("forget", "latest", "--json").json()
    assert out["targets"]["local"]["removed"] == [newest]
    assert out["targets"]["git"]["removed"] == []
    assert "does not hold it" in out["targets"]["git"]["notices"][0]
    for target in ("local", "git"):
        listed = sb.phx_here("list", "--target", target, "--json").json()
        assert [s["id"] for s in listed] == kept, target


@pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed (scripts/test.sh installs it)")
def test_forget_latest_guesses_nothing_when_the_first_target_cannot_be_read(
    make_sandbox: Callable[..., Sandbox],
) -> None:
    """The first target cannot be read (a disk unplugged) and the Git replica missed the newest
    backup: `phx forget latest` forgot the replica's own newest, an older snapshot nobody named."""
    sb = make_sandbox()
    kept, _newest = _git_replica_missed_the_newest(sb)
    sb.repo.rename(sb.root / "unplugged")
    out = sb.phx_here("forget", "latest", "--json", code=1).json()
    assert out["targets"]["git"]["removed"] == [], out
    assert "`latest` is resolved on target local, which failed" in out["targets"]["git"]["error"], out
    listed = sb.phx_here("list", "--target", "git", "--json").json()
    assert [s["id"] for s in listed] == kept


def test_a_backup_starting_right_after_forget_does_not_cost_the_days_prune(
    make_sandbox: Callable[..., Sandbox], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Retention after a backup forgets, then prunes when a day has passed. A backup that starts
    between the two (its shared lock taken the moment forget lets go) used to make the day's prune
    skip as busy, so the forgotten snapshots' data stayed another day; forget and prune now run
    under one exclusive lock, which such a backup finds held, as it does during either of them."""
    from phoenix_backup import Environment, load_config
    from phoenix_backup.errors import RepositoryLocked
    from phoenix_backup.ops import forget as forget_op
    from phoenix_backup.ops.context import open_repository
    from phoenix_backup.ops.prune import retention_after_backup
    from phoenix_backup.state import TargetOutcome

    sb = make_sandbox()
    sb.write_config(retention=retention_only(last=1))
    sb.backup()
    (sb.workspace / "big.bin").write_bytes(os.urandom(2 * MB))
    second = sb.backup()  # the day's prune ran after the first backup: skipped here
    (sb.workspace / "big.bin").unlink()
    third = sb.backup()  # forgets the second; its big file is garbage once the prune runs
    assert third["retention"]["pruneSkipped"] == "the last prune ran less than a day ago"
    assert [s["id"] for s in sb.snapshots()] == [third["id"]]
    (sb.home / ".argentos" / "backup" / "prune.json").unlink()  # a day later: the prune is due
    age_packs(sb.repo, 25)

    cfg = load_config(sb.config_path, sb.env)
    envx = Environment(env=sb.env)
    repo = open_repository(cfg, envx)
    racer = open_repository(cfg, envx)  # another phx backup on this machine
    started: list[object] = []
    real_forget = forget_op.forget_repository

    def forget_then_a_backup_starts(*args: Any, **kwargs: Any) -> Any:
        report = real_forget(*args, **kwargs)
        # Still locked for the prune (RepositoryLocked): the backup is refused, as during forget.
        with contextlib.suppress(RepositoryLocked):
            started.append(racer.locks.acquire(False, "backup"))
        return report

    monkeypatch.setattr(forget_op, "forget_repository", forget_then_a_backup_starts)
    try:
        before = data_bytes(sb.repo)
        out = retention_after_backup(cfg, envx, repo, {"local": TargetOutcome(True)}, protect=(third["id"],))
    finally:
        for lock in started:
            lock.release()  # type: ignore[attr-defined]
        racer.close()
        repo.close()
    assert out.busy == [] and out.ok, (out.busy, out.errors)
    assert out.pruned["local"] > MB, "the second snapshot's big file is freed the same day"
    assert data_bytes(sb.repo) < before - MB
    assert second["id"] not in {s["id"] for s in sb.snapshots()}
    assert sb.verify("--read-data")["ok"]
