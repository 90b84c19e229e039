"""A `phx prune` whose repack fails or is stopped after writing new packs, before the index that
names them: it removes those packs, as a failed backup removes its own (docs/reliability.md, "A
failed run's packs"). Before, they stayed on the target for the 30 minutes of the unreferenced-pack
grace period, holding the space of a full disk.

Real failures: a size-limited tmpfs that fills after the first repacked pack; SIGTERM and SIGKILL
at the first write of the new index (tests/e2e/killpoint.py). Each asserts the target's listing
and that every snapshot still restores; a SIGKILLed prune cannot clean up, and the next prunes
say what they keep and remove it once it is old."""

from __future__ import annotations

import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from e2e_support import Sandbox, assert_restored, new_sandbox
from killpoint import SCRIPT, read_report

from phoenix_backup.sample import layout_for

BLOB = 500_000  # random files of one chunk each (the chunker's minimum is larger)
FILES = 90


def _listing(repo: Path) -> list[str]:
    """Every object of the repository but its locks."""
    return sorted(str(p.relative_to(repo)) for p in repo.rglob("*") if p.is_file() and p.parts[-2] != "locks")


def _packs(repo: Path) -> set[str]:
    return {p.name for p in (repo / "data").rglob("*") if p.is_file() and not p.name.startswith(".")}


def _age(repo: Path) -> None:
    """Every pack two hours old: prune may delete and repack them (younger ones it keeps)."""
    when = time.time() - 2 * 3600
    for pack in (repo / "data").rglob("*"):
        os.utime(pack, (when, when))


@pytest.fixture(scope="module")
def repack_due(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, dict[str, Any]]]:
    """A sandbox with two snapshots of FILES random files, the second without two files of every
    three, and the first forgotten: each of its packs is about two-thirds unused, so prune repacks
    them, over 10 MB of used blobs into new packs (two data packs: 8 MiB, then the rest). Its root, and the
    state the snapshot left holds."""
    root = tmp_path_factory.mktemp("repack-due") / "world"
    root.mkdir()
    sb = new_sandbox(root)
    rnd = random.Random(20261206)
    folder = sb.workspace / "recordings"
    folder.mkdir()
    for i in range(FILES):
        (folder / f"r{i:02}.bin").write_bytes(rnd.randbytes(BLOB))
    first = sb.backup()
    for i in range(FILES):
        if i % 3:
            (folder / f"r{i:02}.bin").unlink()
    state = sb.state()
    second = sb.backup()
    sb.phx("forget", first["id"])
    shutil.rmtree(sb.cache)
    return root, {second["id"]: state}


def _copy(repack_due: tuple[Path, dict[str, dict[str, Any]]], dest: Path, repo: Path | None = None) -> Sandbox:
    """A copy of the world at `dest` (its repository at `repo` when given), its packs old enough
    for prune to repack them, which a dry run confirms."""
    shutil.copytree(repack_due[0], dest, symlinks=True)
    sb = Sandbox(dest, layout_for(dest / "sample"))
    if repo is not None:
        shutil.copytree(sb.repo, repo)
        shutil.rmtree(sb.repo)
        sb.repo = repo
        sb.write_config(backupDir=str(repo))
    _age(sb.repo)
    planned = sb.phx("prune", "--dry-run", "--json").json()["targets"]["local"]
    assert planned["packs"]["repacked"] >= 3 and planned["bytes"]["written"] > 10_000_000, planned
    return sb


def _every_snapshot_restores(sb: Sandbox, states: dict[str, dict[str, Any]], out: Path) -> None:
    assert {s["id"] for s in sb.snapshots()} == set(states)
    doc = sb.verify("--read-data")
    assert doc["ok"] is True and doc["errors"] == [], doc
    for sid, state in states.items():
        sb.restore_to(sid, out / sid)
        assert_restored(state, out / sid, f"snapshot {sid[:8]}")


def _prune_stopped(sb: Sandbox, sig: str, folder: str, at: int) -> subprocess.CompletedProcess[str]:
    """`phx prune` sent `sig` just before its `at`-th call that changes what is visible (a
    rename, an unlink) below the repository's `folder` (tests/e2e/killpoint.py)."""
    report = sb.root / f"kill-report-{sig}"
    env = {
        **sb.env,
        "PHX_KILL_AT": str(at),
        "PHX_KILL_MATCH": f"*{sb.repo}/{folder}/*",
        "PHX_KILL_ONLY": "changes",
        "PHX_KILL_SIGNAL": sig,
        "PHX_KILL_REPORT": str(report),
    }
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "prune"],
        env=env,
        cwd=sb.root,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=180,
    )
    kind, _n, call = read_report(report)
    assert kind == "killed" and f"{sb.repo}/{folder}/" in call, (kind, call, proc.returncode, proc.stderr)
    return proc


def test_a_prune_that_fills_the_disk_removes_the_packs_it_repacked_into(
    repack_due, tmpfs: Callable[[str], Path], tmp_path: Path
) -> None:
    small_fs = tmpfs("96m")
    sb, states = _copy(repack_due, tmp_path / "sb", small_fs / "repo"), repack_due[1]
    before = _listing(sb.repo)
    # Room for the first repacked pack (8 MiB and a blob) and the lock, not for the second.
    st = os.statvfs(small_fs)
    (small_fs / "filler").write_bytes(b"\0" * (st.f_bavail * st.f_frsize - 9_300_000))

    res = sb.phx("prune", check=None)
    assert res.code == 1, res
    (line,) = res.out.splitlines()
    assert line.startswith("target local: FAILED: no space left on the device"), res
    assert re.search(r"\(the 1 pack\(s\) this run wrote, 8\.\d MiB, were removed: no index names them\)$", line), res
    assert _listing(sb.repo) == before, "the failed prune left the pack it repacked into"

    (small_fs / "filler").unlink()
    _every_snapshot_restores(sb, states, tmp_path / "out")
    done = sb.phx("prune", "--json").json()["targets"]["local"]
    assert done["ok"] and done["packs"]["youngLeftoversKept"] == 0, done
    _every_snapshot_restores(sb, states, tmp_path / "out-after")


def test_a_prune_stopped_by_sigterm_before_its_index_removes_the_packs_it_repacked_into(
    repack_due, tmp_path: Path
) -> None:
    sb, states = _copy(repack_due, tmp_path / "sb"), repack_due[1]
    before = _listing(sb.repo)
    # Before the rename of its second repacked pack into place: the first is written, no index
    # names it yet.
    proc = _prune_stopped(sb, "TERM", "data", 2)
    assert proc.returncode == 128 + signal.SIGTERM, (proc.returncode, proc.stderr)
    assert proc.stderr.splitlines()[-1].startswith("phx: interrupted"), proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    assert _listing(sb.repo) == before, "the stopped prune left the packs it repacked into"
    assert list((sb.repo / "locks").iterdir()) == [], "its lock is removed"
    _every_snapshot_restores(sb, states, tmp_path / "out")


def test_a_prune_killed_before_its_index_leaves_its_packs_to_the_next_prunes(repack_due, tmp_path: Path) -> None:
    """SIGKILL leaves no chance to clean up: the new packs stay. The next prune keeps them while
    they are younger than the grace period (a backup whose lock was lost could still commit
    packs that young) and says so; verify names them as left by an interrupted prune; once they
    are old, a prune deletes them."""
    sb, states = _copy(repack_due, tmp_path / "sb"), repack_due[1]
    before_packs = _packs(sb.repo)
    # Before the rename of its new index into place: every repacked pack is written.
    proc = _prune_stopped(sb, "KILL", "index", 1)
    assert proc.returncode == -signal.SIGKILL, (proc.returncode, proc.stderr)
    left = _packs(sb.repo) - before_packs
    # At least two data packs (8 MiB, then the rest), and tree packs.
    assert len(left) >= 2 and before_packs <= _packs(sb.repo), "the repacked packs stay, the old ones too"
    _every_snapshot_restores(sb, states, tmp_path / "out")
    notices = sb.phx("verify", "--json").json().get("notices", [])
    for name in left:
        assert any(name in n and "interrupted" in n and "prune" in n for n in notices), notices

    kept = sb.phx("prune", "--json").json()["targets"]["local"]
    assert kept["ok"] and kept["packs"]["youngLeftoversKept"] == len(left), kept
    assert left <= _packs(sb.repo)
    _age(sb.repo)
    done = sb.phx("prune", "--json").json()["targets"]["local"]
    assert done["ok"] and done["packs"]["youngLeftoversKept"] == 0, done
    assert not left & _packs(sb.repo), "the killed prune's packs are deleted once old"
    _every_snapshot_restores(sb, states, tmp_path / "out-after")
