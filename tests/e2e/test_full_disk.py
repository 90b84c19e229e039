"""Acceptance 5 (part): a repository on a full disk. The backup fails with exit 1 and one line
naming "no space" (no traceback); once there is room again the repository still verifies and the
next backup succeeds and restores.

Needs a size-limited file system: a tmpfs mounted by the test (root only). Where mounting is not
permitted, the test is skipped with the reason, never faked."""

from __future__ import annotations

import os
import random
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from e2e_support import Sandbox, assert_error, assert_restored


def _mount(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["mount", *args], capture_output=True, text=True, stdin=subprocess.DEVNULL)


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    """An 8 MiB tmpfs, unmounted afterwards."""
    if not shutil.which("mount") or not shutil.which("umount"):
        pytest.skip("mount/umount are not installed")
    if os.geteuid() != 0:
        pytest.skip("mounting a size-limited tmpfs needs root")
    mnt = tmp_path / "small-fs"
    mnt.mkdir()
    proc = _mount("-t", "tmpfs", "-o", "size=8m,mode=0755", "tmpfs", str(mnt))
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {proc.stderr.strip() or proc.returncode}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", str(mnt)], capture_output=True, stdin=subprocess.DEVNULL)
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True, stdin=subprocess.DEVNULL)


def test_backup_to_a_full_disk(sandbox: Sandbox, small_fs: Path, tmp_path: Path) -> None:
    sb = sandbox
    # 12 MB of incompressible data: more than the 8 MiB file system can hold, whatever compression does.
    (sb.workspace / "attachments").mkdir()
    (sb.workspace / "attachments" / "recording.bin").write_bytes(random.Random(5).randbytes(12_000_000))
    repo = small_fs / "repo"
    sb.write_config(backupDir=str(repo))
    sb.init_repository()

    res = sb.phx("backup", check=None)
    assert_error(res, 1, "no space", "free")  # the cause, and the fix

    # Room again.
    proc = _mount("-o", "remount,size=64m", str(small_fs))
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
