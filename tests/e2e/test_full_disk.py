"""Acceptance 5 (part): a repository on a full disk. The backup fails with exit 1 and one line
naming "no space" (no traceback); once there is room again the repository still verifies and the
next backup succeeds and restores.

Needs a size-limited file system: a tmpfs mounted by the test (root only). Where mounting is not
permitted, the test is skipped with the reason, never faked."""

from __future__ import annotations

import random
from collections.abc import Callable
from pathlib import Path

from e2e_support import Sandbox, assert_error, assert_restored, mount


def test_backup_to_a_full_disk(sandbox: Sandbox, tmpfs: Callable[[str], Path], tmp_path: Path) -> None:
    sb = sandbox
    small_fs = tmpfs("8m")
    # 12 MB of incompressible data: more than the 8 MiB file system can hold, whatever compression does.
    (sb.workspace / "attachments").mkdir()
    (sb.workspace / "attachments" / "recording.bin").write_bytes(random.Random(5).randbytes(12_000_000))
    repo = small_fs / "repo"
    sb.write_config(backupDir=str(repo))
    sb.init_repository()

    res = sb.phx("backup", check=None)
    assert_error(res, 1, "no space", "free")  # the cause, and the fix

    # Room again.
    proc = mount("-o", "remount,size=64m", str(small_fs))
    assert proc.returncode == 0, proc.stderr
    if (repo / "config").exists():
        doc = sb.verify("--read-data")
        assert doc["ok"] is True and doc["errors"] == [], doc
        assert doc["checked"]["snapshots"] == 0
        assert list((repo / "locks").iterdir()) == [], "the failed backup left its lock"
    state = sb.state()
    doc = sb.backup()
    assert doc["incomplete"] == []
    assert sb.verify("--read-data")["ok"] is True
    dest = tmp_path / "restored"
    sb.restore_to(doc["id"], dest)
    assert_restored(state, dest, "restore after the disk was full")


def test_data_folder_on_a_full_disk(backed_up: Sandbox, tmpfs: Callable[[str], Path]) -> None:
    """The pin file (PHX_DATA_DIR) on a full disk: exit 1 naming the disk and the fix (free space
    or another PHX_DATA_DIR), not exit 2 "make it a folder you can write"; no snapshot is taken
    and no temporary pin file is left behind."""
    sb = backed_up
    small_fs = tmpfs("1m")
    data = small_fs / "data"
    data.mkdir()
    with open(small_fs / "filler", "wb") as filler:  # fill the file system to the last block
        try:
            while True:
                filler.write(b"\0" * 65536)
                filler.flush()
        except OSError:
            pass
    before = len(sb.snapshots())
    res = sb.phx("backup", env=sb.env_with(PHX_DATA_DIR=str(data)), check=None)
    assert_error(res, 1, "No space left on device", str(data), "free space", "PHX_DATA_DIR")
    assert [p.name for p in data.rglob("*") if p.name.endswith(".tmp")] == []
    assert len(sb.snapshots()) == before
