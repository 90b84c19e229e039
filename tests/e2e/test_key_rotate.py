"""`phx key rotate` (issue 14, point 4): after it, old key slots, and copies of them such as a Git
target's history, open nothing written later; a SIGKILL at any point of it leaves a repository
that opens with the owner's passphrase and restores every snapshot exactly; a run after the kill
finishes the job; replicas follow."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from attack_support import assert_rotation_recovers, restored
from e2e_support import PHX, Sandbox, assert_error

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "integration"))
from moto_support import bare_repo, git

# The sandboxes' helpers (the backups that set a test up, the checks after) run phx in this process;
# the commands under test stay real `phx` processes (tests/e2e/conftest.py).
pytestmark = pytest.mark.phx_in_process

HEAVY = os.environ.get("PHX_TEST_HEAVY") == "1"
LEAKED = "the old passphrase that leaked"


def _two_snapshots(sb: Sandbox) -> None:
    sb.backup()
    (sb.workspace / "MEMORY.md").write_text("# Memory\nsomething new the agent learned\n")
    sb.backup()


def test_old_slots_and_copies_open_nothing_written_after_a_rotation(make_sandbox, tmp_path: Path) -> None:
    sb: Sandbox = make_sandbox()
    sb.backup()
    sb.phx("key", "add", "--method", "passphrase", env=sb.env_with(PHX_NEW_PASSPHRASE=LEAKED))
    # What someone keeps who once could read the storage: a copy of the keys and config.
    kept = tmp_path / "kept"
    shutil.copytree(sb.repo, kept)
    res = sb.phx("key", "rotate", "--json")
    doc = res.json()
    assert doc["snapshots"] == 1 and len(doc["dropped"]) == 1, doc
    assert doc["fingerprint"] != doc["previous"]
    # Progress: every pack resealed, counted with its bytes.
    resealing = [json.loads(line) for line in res.err.splitlines() if '"resealing packs"' in line][-1]
    assert resealing["done"] == resealing["total"] > 0 and resealing["bytesDone"] == resealing["bytesTotal"] > 0
    (sb.workspace / "MEMORY.md").write_text("# Memory\nwritten after the rotation\n")
    after = sb.backup()["name"]
    assert [s["name"] for s in sb.snapshots()][-1] == after

    thief = sb.env_with(PHX_PASSPHRASE=LEAKED, XDG_DATA_HOME=str(tmp_path / "thief-data"))
    # 1. The current repository with the old slot put back.
    for slot in (kept / "keys").iterdir():
        shutil.copy(slot, sb.repo / "keys" / slot.name)
    res = sb.phx("list", "--json", env=thief, check=None)
    assert after not in res.out + res.err
    assert_error(res, 1, "not authenticated")
    # 2. ...and the old config too (Git history holds both): the new objects do not open.
    shutil.copy(kept / "config", sb.repo / "config")
    res = sb.phx("list", "--json", env=thief, check=None)
    assert after not in res.out, res
    assert sb.phx("dump", after, "workspace/MEMORY.md", env=thief, check=None).code != 0


@pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")
def test_rotation_reaches_a_git_replica_and_its_history_opens_nothing_new(make_sandbox, tmp_path: Path) -> None:
    sb: Sandbox = make_sandbox()
    remote = bare_repo(sb.root / "remote.git")
    sb.env["PHX_DATA_DIR"] = str(sb.root / "data")
    sb.write_config(targets={"local": {"enabled": True}, "git": {"enabled": True, "repo": str(remote)}})
    _two_snapshots(sb)
    names = [s["name"] for s in sb.snapshots()]
    expected = {n: restored(sb, n, tmp_path / "before") for n in names}
    first_commit = git("rev-list", "--max-parents=0", "main", cwd=remote).strip()

    doc = sb.phx("key", "rotate", "--json").json()
    assert doc["targets"]["git"]["ok"] is True, doc
    after = sb.backup()["name"]

    # The Git target alone restores every snapshot, under the new key.
    git_only = sb.env_with(PHX_DATA_DIR=str(tmp_path / "fresh-clone"))
    sb.phx("key", "trust", doc["fingerprint"], "--target", "git", env=git_only)
    for name in names:
        assert restored(sb, name, tmp_path / "from-git", "--target", "git", env=git_only) == expected[name], name
    tree = git("ls-tree", "-r", "--name-only", "main", cwd=remote).split()
    assert len([n for n in tree if n.startswith("snapshots/")]) == 3, tree  # the old ones are gone

    # History: the keys and config of the first commit, beside today's objects.
    clone = tmp_path / "history"
    git("clone", "-q", str(remote), str(clone))
    git("checkout", "-q", first_commit, "--", "keys", "config", cwd=clone)
    old = sb.env_with(XDG_DATA_HOME=str(tmp_path / "thief-data"))
    sb.write_config(backupDir=str(clone), targets={"local": {"enabled": True, "path": str(clone)}})
    res = sb.phx("list", "--json", env=old, check=None)
    assert after not in res.out, res


def _kill_when(sb: Sandbox, seen: Callable[[], bool], timeout: float = 60) -> bool:
    """Start `phx key rotate`; SIGKILL it as soon as `seen()` holds. True if it was still running."""
    proc = subprocess.Popen(
        [PHX, "key", "rotate"], env=sb.env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    deadline = time.monotonic() + timeout
    while proc.poll() is None and time.monotonic() < deadline and not seen():
        time.sleep(0.001)
    running = proc.poll() is None
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    return running


def _files(folder: Path) -> set[str]:
    return {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file() and ".tmp-" not in p.name}


KILL_POINTS: dict[str, Callable[[Path, dict[str, set[str]]], bool]] = {
    "a new key slot written": lambda repo, before: len(_files(repo / "keys")) > len(before["keys"]),
    "the first new pack written": lambda repo, before: bool(_files(repo / "data") - before["data"]),
    "a re-sealed snapshot written": lambda repo, before: bool(_files(repo / "snapshots") - before["snapshots"]),
    "the config rewritten (commit point)": lambda repo, before: (repo / "config").read_bytes() != before["config_raw"],
    "an old pack deleted": lambda repo, before: bool(before["data"] - _files(repo / "data")),
    "an old key slot deleted": lambda repo, before: bool(before["keys"] - _files(repo / "keys")),
}
DEFAULT_POINTS = ["the first new pack written", "the config rewritten (commit point)", "an old pack deleted"]


@pytest.mark.parametrize("point", list(KILL_POINTS) if HEAVY else DEFAULT_POINTS)
def test_rotation_killed_at_any_point_leaves_every_snapshot_restorable(
    make_sandbox, tmp_path: Path, point: str
) -> None:
    sb: Sandbox = make_sandbox(size=8_000_000, seed=5)
    _two_snapshots(sb)
    names = [s["name"] for s in sb.snapshots()]
    expected = {n: restored(sb, n, tmp_path / "expected") for n in names}
    before = {k: _files(sb.repo / k) for k in ("keys", "data", "snapshots")}
    before["config_raw"] = (sb.repo / "config").read_bytes()  # type: ignore[assignment]
    condition = KILL_POINTS[point]
    assert _kill_when(sb, lambda: condition(sb.repo, before)), f"the rotation finished before {point}"

    assert_rotation_recovers(sb, names, expected, tmp_path, f"at {point}")
    assert [p for p in (sb.repo / "locks").iterdir() if not p.name.startswith(".tmp-")] == []
    sb.backup()  # and backups go on
