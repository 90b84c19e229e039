"""`phx key rotate` writes the index under the new key in parts of at most INDEX_PART_BLOBS blobs
(repo/repository.py `write_index_parts`), like every other writer of the index; SIGKILLed at any
change to the index (tests/e2e/killpoint.py, parts of 4 blobs here), the repository opens with the
owner's passphrase, verifies with its data read, restores every snapshot exactly, and the next
rotation finishes the job (tests/e2e/attack_support.py `assert_rotation_recovers`).

The default run kills at a sample of those changes; PHX_TEST_HEAVY=1 at every one.
"""

from __future__ import annotations

import os
import random
import shutil
import subprocess
import sys
from pathlib import Path

import killpoint
import pytest
from attack_support import assert_rotation_recovers, restored
from e2e_support import Sandbox

from phoenix_backup.repo import keys
from phoenix_backup.repo.repository import Repository
from phoenix_backup.sample import layout_for
from phoenix_backup.storage.local import LocalBackend

# The sandboxes' helpers (the backups that set a test up, the checks after) run phx in this process;
# the commands under test stay real `phx` processes (tests/e2e/conftest.py).
pytestmark = pytest.mark.phx_in_process

HEAVY = os.environ.get("PHX_TEST_HEAVY") == "1"
SEED = 20261206
PART = 4


def _index_sizes(sb: Sandbox) -> list[tuple[int, int]]:
    """The blobs and packs each index object lists (opened with the owner's passphrase)."""
    repo = Repository.open(LocalBackend(sb.repo), keys.Credentials(passphrase=sb.env["PHX_PASSPHRASE"]))
    names = sorted(p.name for p in (sb.repo / "index").iterdir() if not p.name.startswith("."))
    listed = [repo.read_index_object(f"index/{n}")[0] for n in names]
    return [(sum(map(len, packs.values())), len(packs)) for packs in listed]


def _in_parts(sizes: list[tuple[int, int]]) -> bool:
    """At most PART blobs an object, but for one pack holding more (never split)."""
    return all(blobs <= PART or packs == 1 for blobs, packs in sizes)


def _rotate_hooked(sb: Sandbox, point: int, report: Path) -> subprocess.CompletedProcess[str]:
    """`phx key rotate` with parts of PART blobs, its changes under index/ counted, SIGKILLed just
    before the `point`th (0: not killed)."""
    env = sb.env_with(
        PHX_KILL_AT=str(point),
        PHX_KILL_ONLY="changes",
        PHX_KILL_MATCH="/index/",
        PHX_KILL_REPORT=str(report),
        PHX_TEST_INDEX_PART_BLOBS=str(PART),
    )
    argv = [sys.executable, str(killpoint.SCRIPT), "key", "rotate"]
    return subprocess.run(argv, env=env, capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=300)


def _two_snapshots(sb: Sandbox) -> None:
    sb.backup()
    (sb.workspace / "MEMORY.md").write_text("# Memory\nsomething new the agent learned\n")
    sb.backup()


def test_key_rotate_writes_the_index_in_parts_and_a_kill_between_them_loses_nothing(
    make_sandbox, tmp_path: Path
) -> None:
    base: Sandbox = make_sandbox(root=tmp_path / "base")
    _two_snapshots(base)
    names = [s["name"] for s in base.snapshots()]
    expected = {n: restored(base, n, tmp_path / "expected") for n in names}
    blobs = sum(b for b, _p in _index_sizes(base))
    assert blobs > 3 * PART, blobs

    probe = tmp_path / "probe"
    shutil.copytree(base.root, probe, symlinks=True)
    sb = Sandbox(probe, layout_for(probe / "sample"))
    res = _rotate_hooked(sb, 0, tmp_path / "count")
    assert res.returncode == 0, res.stderr
    outcome, total, _call = killpoint.read_report(tmp_path / "count")
    sizes = _index_sizes(sb)
    assert _in_parts(sizes) and len(sizes) >= 2, sizes  # the rotation repacks into one pack a type
    # The parts written (a rename each) and the old objects deleted after the commit point.
    assert outcome == "calls" and total >= len(sizes) + 2, (total, sizes)
    shutil.rmtree(probe)

    points = range(1, total + 1)
    for point in points if HEAVY else sorted(random.Random(SEED).sample(points, 3)):
        where = tmp_path / f"kill{point}"
        shutil.copytree(base.root, where, symlinks=True)
        sb = Sandbox(where, layout_for(where / "sample"))
        res = _rotate_hooked(sb, point, tmp_path / f"report{point}")
        outcome, _n, call = killpoint.read_report(tmp_path / f"report{point}")
        assert res.returncode == -9 and outcome == "killed", (point, res.stderr)
        assert_rotation_recovers(sb, names, expected, tmp_path, f"before index change {point}: {call}")
        shutil.rmtree(where)


def _hooked(sb: Sandbox, report: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """`phx ARGS` under the hook with `env` (PHX_KILL_*, PHX_TEST_*)."""
    run_env = sb.env_with(PHX_KILL_REPORT=str(report), **env)
    argv = [sys.executable, str(killpoint.SCRIPT), *args]
    return subprocess.run(argv, env=run_env, capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=300)


@pytest.mark.parametrize(
    "kill_before",
    [
        # Before the commit point: the packs and the index re-sealed under the new key, no snapshot.
        "replace(*/snapshots/*",
        # After it: the config names the new key, the old index objects not deleted yet.
        "unlink(*/index/*",
    ],
)
def test_a_merge_of_the_index_during_an_unfinished_rotation_loses_nothing(
    make_sandbox, tmp_path: Path, kill_before: str
) -> None:
    """A rotation SIGKILLed half way (some objects re-sealed under the new key, the rest not), then
    backups until the daily prune would merge the index objects (more than 2 live here): the
    backups go on, prune refuses naming `phx key rotate` (docs/reliability.md), the repository
    opens with the owner's passphrase and verifies; the next rotation finishes the job, the next
    prune merges, and every snapshot restores exactly."""
    sb: Sandbox = make_sandbox()
    _two_snapshots(sb)
    res = _hooked(sb, tmp_path / "kill", "key", "rotate", PHX_KILL_AT="1", PHX_KILL_MATCH=kill_before)
    outcome, _n, call = killpoint.read_report(tmp_path / "kill")
    assert res.returncode == -9 and outcome == "killed", (res.returncode, outcome, res.stderr)
    for day in range(3):
        (sb.workspace / f"day{day}.md").write_text(f"written on day {day} after the kill\n")
        sb.backup()
    names = [s["name"] for s in sb.snapshots()]
    assert len(names) == 5, names
    expected = {n: restored(sb, n, tmp_path / "expected") for n in names}
    prune = _hooked(sb, tmp_path / "prune", "prune", "--json", PHX_TEST_MAX_INDEX_OBJECTS="2")
    assert prune.returncode != 0 and "phx key rotate" in prune.stdout + prune.stderr, (call, prune)
    doc = sb.verify("--read-data")
    assert doc["ok"], (call, doc)

    sb.phx("key", "rotate")
    for day in range(3, 6):
        (sb.workspace / f"day{day}.md").write_text(f"written on day {day} after the rotation\n")
        sb.backup()
    names = [s["name"] for s in sb.snapshots()]
    expected.update({n: restored(sb, n, tmp_path / "expected") for n in names[5:]})
    assert len([p for p in (sb.repo / "index").iterdir() if not p.name.startswith(".")]) >= 4
    merged = _hooked(sb, tmp_path / "merge", "prune", "--json", PHX_TEST_MAX_INDEX_OBJECTS="2")
    assert merged.returncode == 0, (call, merged)
    index = [p for p in (sb.repo / "index").iterdir() if not p.name.startswith(".")]
    assert len(index) <= 2, (call, index)
    doc = sb.verify("--read-data")
    assert doc["ok"] and [n for n in doc["notices"] if "leftover temporary file" not in n] == [], (call, doc)
    assert [s["name"] for s in sb.snapshots()] == names
    for name in names:
        assert restored(sb, name, tmp_path / "after") == expected[name], (call, name)
