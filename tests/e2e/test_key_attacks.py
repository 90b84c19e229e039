"""An adversary's review of repository format 2 and `phx key rotate` (issue 14, points 1-4, 11):
someone who can write the storage (and perhaps holds a key the owner has since rotated away from)
against the owner's next commands; and a careless user. Each test is one attack, run with
Phoenix's own code against a real repository; the owner's side runs as `phx`."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from e2e_support import Sandbox, file_manifest

HEAVY = os.environ.get("PHX_TEST_HEAVY") == "1"
KILLER = Path(__file__).with_name("kill_at_io.py")
LEAKED = "the old passphrase that leaked"


def _phx_killed_at(sb: Sandbox, point: int, *args: str, log: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {**sb.env, "PHX_TEST_KILL_AT": str(point)}
    if log is not None:
        env["PHX_TEST_KILL_LOG"] = str(log)
    return subprocess.run(
        [sys.executable, str(KILLER), *args], env=env, capture_output=True, text=True, stdin=subprocess.DEVNULL
    )


def _restored(sb: Sandbox, name: str, dest: Path) -> dict[str, tuple[object, ...]]:
    shutil.rmtree(dest, ignore_errors=True)
    sb.phx("restore", "--backup", name, "--to", dest)
    return file_manifest(dest, skip_databases=False)


# Every change `phx key rotate` makes to the file system, in order, on the tiny sample with two
# snapshots and two passphrase slots (found by a counting run; the test checks the count).
ROTATE_CHANGES = 25
DEFAULT_KILLS = (12, 23)  # every new object written, the config not yet; after it, one old slot left


@pytest.mark.parametrize("point", range(1, ROTATE_CHANGES + 1) if HEAVY else DEFAULT_KILLS)
def test_rotation_killed_before_any_change_keeps_every_snapshot_and_revokes_the_old_key(
    make_sandbox, tmp_path: Path, point: int
) -> None:
    sb: Sandbox = make_sandbox()
    sb.backup()
    sb.phx("key", "add", "--method", "passphrase", env=sb.env_with(PHX_NEW_PASSPHRASE=LEAKED))
    (sb.workspace / "MEMORY.md").write_text("# Memory\nsecond\n")
    sb.backup()
    names = [s["name"] for s in sb.snapshots()]
    expected = {n: _restored(sb, n, tmp_path / "expected") for n in names}
    kept = tmp_path / "kept"  # what a thief of the old key keeps: the slots and config of today
    shutil.copytree(sb.repo, kept)

    log = tmp_path / "changes.log"
    res = _phx_killed_at(sb, point, "key", "rotate", log=log)
    changes = log.read_text().splitlines()
    assert res.returncode == -9, f"the rotation made only {len(changes)} changes:\n{res.stderr}"
    assert point < ROTATE_CHANGES or len(changes) == ROTATE_CHANGES, "the rotation changes more: update ROTATE_CHANGES"

    # Killed: the owner opens it on this machine, and every snapshot restores exactly.
    assert [s["name"] for s in sb.snapshots()] == names, f"killed before change {point}: {changes[-1]}"
    for name in names:
        assert _restored(sb, name, tmp_path / "after-kill") == expected[name], f"killed before {changes[-1]}"
    # Again: the rotation is finished, every byte reads, and one key is left.
    sb.phx("key", "rotate")
    doc = sb.verify("--read-data")
    assert doc["ok"] and [n for n in doc["notices"] if "leftover temporary file" not in n] == [], doc
    assert [s["status"] for s in sb.phx("key", "list", "--json").json()] == ["ok"]
    (sb.workspace / "MEMORY.md").write_text("# Memory\nwritten after the rotation\n")
    after = sb.backup()["name"]
    for name in names:
        assert _restored(sb, name, tmp_path / "after-rerun") == expected[name], name

    # The old key opens nothing written later, even with the old slots and config put back.
    thief_repo = tmp_path / "thief"
    shutil.copytree(sb.repo, thief_repo)
    shutil.rmtree(thief_repo / "keys")
    shutil.copytree(kept / "keys", thief_repo / "keys")
    shutil.copy(kept / "config", thief_repo / "config")
    sb.write_config(backupDir=str(thief_repo))
    thief = sb.env_with(PHX_PASSPHRASE=LEAKED, XDG_DATA_HOME=str(tmp_path / "thief-data"))
    res2 = sb.phx("list", "--json", env=thief, check=None)
    assert after not in res2.out, res2
    assert sb.phx("dump", after, "workspace/MEMORY.md", env=thief, check=None).code != 0
