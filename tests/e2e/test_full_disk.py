"""Acceptance 5 (part): a repository on a full disk. The backup fails with exit 1 and one line
naming "no space" (no traceback); once there is room again the repository still verifies and the
next backup succeeds and restores.

Needs a size-limited file system: a tmpfs mounted by the test (root only). Where mounting is not
permitted, the test is skipped with the reason, never faked."""

from __future__ import annotations

import random
import sqlite3
from collections.abc import Callable
from pathlib import Path

import pytest
from e2e_support import Sandbox, assert_error, assert_restored, mount
from moto_support import MotoServer

# The repositories the commands leave are the point, not the process: the sandboxes' helpers run phx
# in this process (tests/e2e/conftest.py).
pytestmark = pytest.mark.phx_in_process


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


def test_a_full_cache_disk_does_not_keep_a_changed_database_from_being_saved(
    backed_up: Sandbox, tmpfs: Callable[[str], Path], tmp_path: Path
) -> None:
    """The cache folder (PHX_CACHE_DIR) on a full disk: a changed database is still saved, exit 0,
    and restores with its new rows; only its page hashes for the next backup are not kept. Before,
    closing the file those hashes went to flushed them again, and the ENOSPC made the database
    "not saved: ...: No space left on device", exit 3."""
    sb = backed_up
    small_fs = tmpfs("1m")
    cache = small_fs / "cache"
    cache.mkdir()
    try:  # fill the file system to the last block
        with open(small_fs / "filler", "wb") as filler:
            while True:
                filler.write(b"\0" * 65536)
                filler.flush()
    except OSError:
        pass
    with sqlite3.connect(sb.db_path("home/.argentos/memory.db")) as con:
        con.execute("CREATE TABLE full_cache (n INTEGER)")
        con.executemany("INSERT INTO full_cache VALUES (?)", [(n,) for n in range(500)])
    con.close()
    state = sb.state()
    res = sb.phx("backup", "--json", env=sb.env_with(PHX_CACHE_DIR=str(cache)), check=None)
    assert res.code == 0, res
    doc = res.json()
    assert doc["incomplete"] == [], res
    dest = tmp_path / "restored"
    sb.restore_to(doc["id"], dest)
    assert_restored(state, dest, "a backup whose cache disk was full")


def _packs(repo: Path) -> set[str]:
    return {p.name for p in (repo / "data").rglob("*") if p.is_file()}


def test_failed_backup_removes_the_packs_no_index_names(
    sandbox: Sandbox, tmpfs: Callable[[str], Path], tmp_path: Path
) -> None:
    """A backup that fills the disk removes the packs it wrote (no index names them) before it
    exits, and says how much: the space is free again, so a smaller backup succeeds at once (no
    remount, no prune), the repository verifies and the earlier snapshot restores byte-equal.
    Before, the failed run's 16 MiB of packs stayed for 30 minutes and the next backup failed the
    same way (docs/reliability.md, "A failed run's packs")."""
    import os

    sb = sandbox
    small_fs = tmpfs("20m")
    (sb.workspace / "notes.md").write_text("the first snapshot\n" * 1000)
    repo = small_fs / "repo"
    sb.write_config(backupDir=str(repo))
    sb.init_repository()
    first_state = sb.state()
    first = sb.backup()
    packs = _packs(repo)
    free = os.statvfs(small_fs).f_bavail * os.statvfs(small_fs).f_frsize

    big = sb.workspace / "recording.bin"
    big.write_bytes(random.Random(7).randbytes(30_000_000))  # more than the 20 MiB disk holds
    res = sb.phx("backup", check=None)
    line = assert_error(res, 1, "no space", "free", "were removed: no index names them")
    assert "MiB" in line, line
    assert _packs(repo) == packs, "the failed backup left packs no index names"
    now = os.statvfs(small_fs).f_bavail * os.statvfs(small_fs).f_frsize
    assert now >= free - 1024 * 1024, f"{free - now} bytes are still held by the failed run"

    big.unlink()
    (sb.workspace / "recording.bin").write_bytes(random.Random(8).randbytes(4_000_000))
    second_state = sb.state()
    second = sb.backup()  # room for it: nothing of the failed run is left
    assert second["incomplete"] == []
    doc = sb.verify("--read-data")
    assert doc["ok"] is True and doc["errors"] == [], doc
    for snap, state in ((first, first_state), (second, second_state)):
        dest = tmp_path / f"restored-{snap['id']}"
        sb.restore_to(snap["id"], dest)
        assert_restored(state, dest, f"snapshot {snap['id']}")


def test_a_safety_snapshot_that_fills_the_disk_restores_nothing_and_leaves_no_pack(
    sandbox: Sandbox, tmpfs: Callable[[str], Path]
) -> None:
    """An in-place restore whose safety snapshot fills the disk after writing packs: the restore
    refuses (nothing overwritten), the safety snapshot's packs are removed (the space is free
    again), and the repository still verifies."""
    import os

    sb = sandbox
    small_fs = tmpfs("20m")
    big = sb.workspace / "recording.bin"
    big.write_bytes(random.Random(7).randbytes(4_000_000))
    repo = small_fs / "repo"
    sb.write_config(backupDir=str(repo))
    sb.init_repository()
    first = sb.backup()
    packs = _packs(repo)
    free = os.statvfs(small_fs).f_bavail * os.statvfs(small_fs).f_frsize

    changed = random.Random(8).randbytes(30_000_000)  # the safety snapshot must save it: no room
    big.write_bytes(changed)
    res = sb.phx("restore", "--backup", first["id"], "--yes", check=None)
    assert_error(
        res,
        1,
        "no space",
        "were removed: no index names them",
        "nothing was restored",
        "--no-safety-snapshot",
    )
    assert big.read_bytes() == changed, "the restore overwrote a file it could not save first"
    assert _packs(repo) == packs, "the failed safety snapshot left packs no index names"
    now = os.statvfs(small_fs).f_bavail * os.statvfs(small_fs).f_frsize
    assert now >= free - 1024 * 1024, f"{free - now} bytes are still held by the failed safety snapshot"
    doc = sb.verify("--read-data")
    assert doc["ok"] is True and doc["errors"] == [], doc


def test_a_failed_backup_to_two_targets_leaves_no_pack_on_either(
    sandbox: Sandbox, tmpfs: Callable[[str], Path], moto: MotoServer
) -> None:
    """`phx backup` to a full local disk and to S3: the packs go to S3 only once the snapshot is
    committed on the first target, so a failed run leaves none there, and its local packs are
    removed; the next backup reaches both and each verifies."""
    sb = sandbox
    small_fs = tmpfs("20m")
    bucket = moto.make_bucket("fullpacks")
    sb.env["AWS_EC2_METADATA_DISABLED"] = "true"
    repo = small_fs / "repo"
    sb.write_config(backupDir=str(repo), targets={"local": {"enabled": True}, "s3": moto.target(bucket)})
    sb.config_path.chmod(0o600)
    sb.init_repository()
    first = sb.backup()
    assert first["targets"]["s3"]["ok"], first
    local, remote = _packs(repo), set(moto.keys(bucket, "argent/data/"))
    assert local and len(remote) == len(local)

    big = sb.workspace / "recording.bin"
    big.write_bytes(random.Random(7).randbytes(30_000_000))
    assert_error(sb.phx("backup", check=None), 1, "no space", "were removed: no index names them")
    assert _packs(repo) == local
    assert set(moto.keys(bucket, "argent/data/")) == remote, "the failed run's packs reached S3"

    big.write_bytes(random.Random(8).randbytes(3_000_000))
    second = sb.backup()
    assert second["targets"]["s3"]["ok"], second
    assert len(set(moto.keys(bucket, "argent/data/"))) == len(_packs(repo))
    assert sb.verify("--read-data")["ok"] is True
